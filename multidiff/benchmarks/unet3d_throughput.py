"""Training and sampling throughput of our UNet3D vs video-diffusion-pytorch's Unet3D at
comparable forward FLOPs, same run, same machine.

Configurations (forward GFLOP/clip within a few % of each other): ours with base 64,
channel_mult (1, 2, 2), 2 ResBlocks per level with factorised (1,3,3) + (3,1,1) convs, spatial
and temporal attention at 8 px and in the middle; video-diffusion-pytorch's Unet3D with dim 72,
dim_mults (1, 2, 2) (its own design: (1,3,3) convs, spatial linear attention and temporal
attention at every level, full spatial attention in the middle, no temporal convs).
Each model runs in fp32 with the default NCDHW layout and in the CPU fast path (bf16
autocast + channels_last_3d, fp32 master weights; the peer's few 2-D weights go
channels_last). Training = forward + MSE loss + backward + AdamW step (fused, the same for
every model) on clips of grayscale 32x32 frames; sampling = one no-grad forward. Timed
iterations are interleaved across all configurations (round-robin), so a burst of load from
another process hits every row alike; each cell is the median over rounds.
TFLOP/s counts FlopCounterMode's forward FLOPs (x3 for a training step) and is compared with
the bf16 conv peak measured at the start and at the end (the best of both).
Run: `multidiff bench unet3d` (needs video-diffusion-pytorch for the peer); on a
machine shared with other jobs add `--threads 1`: two OpenMP threads on two busy cores wait on each
other at every op, which hurts the models with many small ops most (the peer's bf16 path above all).
"""
from __future__ import annotations

import argparse

import torch

from ..models.unet3d import UNet3D, UNet3DConfig
from . import throughput_harness as harness

MODES = ("fp32", "bf16 CL3d")
SIZE = 32


# ---------------------------------------------------------------------------- models
def ours(frames: int):
    cfg = UNet3DConfig(in_channels=1, base_channels=64, channel_mult=[1, 2, 2], num_res_blocks=2,
                       attention_resolutions=[8], num_heads=4, dropout=0.0, image_size=SIZE, frames=frames)
    return UNet3D(cfg), lambda m, x, t: m(x, t)


def vdp_unet3d(frames: int, dim: int = 72):
    from video_diffusion_pytorch.video_diffusion_pytorch import Unet3D

    return Unet3D(dim=dim, dim_mults=(1, 2, 2), channels=1), lambda m, x, t: m(x, t)


MODELS = {
    "ours": ("multidiff UNet3D", ours),
    "vdp": ("video-diffusion-pytorch Unet3D", vdp_unet3d),
}
PEERS = ("vdp",)


def restride(t: torch.Tensor, fmt: torch.memory_format) -> torch.Tensor:
    """t with canonical `fmt` strides. Not t.contiguous(memory_format=fmt): that keeps the NCDHW strides of
    a tensor with 1 channel, and oneDNN then picks NCDHW for the convs that read it."""
    return torch.empty_like(t, memory_format=fmt).copy_(t)


def channels_last_3d(model: torch.nn.Module) -> torch.nn.Module:
    """5-D weights channels_last_3d, 4-D ones channels_last (Module.to refuses the mix the peer has)."""
    for p in model.parameters():
        fmt = {5: torch.channels_last_3d, 4: torch.channels_last}.get(p.ndim)
        if fmt is not None:
            p.data = restride(p.data, fmt)
    return model


# ---------------------------------------------------------------------------- runs
class Run(harness.Run):
    """One (model, mode) on clips of grayscale SIZExSIZE frames."""

    def __init__(self, key: str, mode: str, frames: int, train_batch: int, sample_batch: int):
        self.key, self.mode = key, mode
        self.label, build = MODELS[key]
        model, call = build(frames)
        self.gflops = harness.forward_gflops(model, call, torch.randn(2, 1, frames, SIZE, SIZE))
        self.params = sum(p.numel() for p in model.parameters())
        fast = mode == "bf16 CL3d"
        if fast:
            model = channels_last_3d(model)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
        g = torch.Generator().manual_seed(0)
        fmt = torch.channels_last_3d if fast else torch.contiguous_format
        shape = (1, frames, SIZE, SIZE)
        xt = restride(torch.randn(train_batch, *shape, generator=g), fmt)
        tt = torch.rand(train_batch, generator=g) * 999
        target = restride(torch.randn(train_batch, *shape, generator=g), fmt)
        xs = restride(torch.randn(sample_batch, *shape, generator=g), fmt)
        ts = torch.rand(sample_batch, generator=g) * 999
        self._set_steps(model, call, opt, (xt, tt, target), (xs, ts), fast)
        self.model = model


TABLE = harness.TableFormat(unit="clip", units="clips", gflop=".1f", rate=".2f", vs_peer="vs fastest peer")


def _profile(run: Run, rows: int) -> None:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        run.train()
    print(f"\ntorch.profiler, one training step of {run.label} ({run.mode}):")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows))


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="unet3d_throughput", description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="ours,vdp", help="comma list of " + ", ".join(MODELS))
    ap.add_argument("--modes", default=",".join(MODES), help=f"comma list of {MODES}")
    ap.add_argument("--frames", type=int, default=8, help="frames per clip (32x32 grayscale)")
    ap.add_argument("--train-batch", type=int, default=4, help="clips per training step")
    ap.add_argument("--sample-batch", type=int, default=4, help="clips per sampling forward")
    ap.add_argument("--rounds", type=int, default=7, help="at most this many timed rounds (median), after 1 warm-up")
    ap.add_argument("--min-rounds", type=int, default=3, help="at least this many timed rounds")
    ap.add_argument("--budget", type=float, default=150.0,
                    help="seconds of timed rounds: no new round starts after this (once --min-rounds are done)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    ap.add_argument("--profile", type=int, default=0, metavar="ROWS",
                    help="after the table, profile one bf16 training step of ours (top ROWS ops)")
    args, keys, modes = harness.parse_args(ap, argv, MODELS, MODES)
    t_start, peaks0 = harness.start("UNet3D")
    runs = [Run(k, m, args.frames, args.train_batch, args.sample_batch) for k in keys for m in modes]
    harness.print_gflops(runs, MODELS, TABLE)
    rounds = harness.time_rounds(runs, max(args.rounds, 1), args.min_rounds, args.budget)
    peak = harness.peak_at_end(peaks0, only="conv")
    print(f"train: batch {args.train_batch} clips of {args.frames}x{SIZE}x{SIZE}, forward + backward + AdamW step; "
          f"sample: batch {args.sample_batch}, no-grad forward; median of {rounds} interleaved rounds\n")
    print(harness.markdown_table(runs, peak, PEERS, TABLE))
    harness.print_vs_fastest_peer(runs, PEERS, "bf16 CL3d", peak, "bf16 conv peak", name_sample_peer=True)
    if args.profile:
        fast = [r for r in runs if r.key == "ours" and r.mode == "bf16 CL3d"]
        if fast:
            _profile(fast[0], args.profile)
    harness.print_footer(t_start)


if __name__ == "__main__":
    main()
