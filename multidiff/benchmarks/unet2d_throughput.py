"""Training and sampling throughput of our UNet2D vs diffusers' UNet2DModel and
denoising-diffusion-pytorch's Unet, at comparable forward FLOPs, same run, same machine.

Configurations (forward GFLOP/img within a few % of each other): ours in the ADM layout
(base 64, channel_mult (1, 2, 2), 2 ResBlocks per level, attention at 8 px and in the
middle); diffusers' UNet2DModel with the same channels, blocks and attention placement;
denoising-diffusion-pytorch's Unet with dim 72, dim_mults (1, 2, 2) (its own design:
linear attention at every level, full attention at the lowest one).
Each model runs in its library's default mode (fp32, NCHW) and in the CPU fast path
(bf16 autocast + channels_last, fp32 master weights). Training = forward + MSE loss +
backward + AdamW step on 32x32 RGB; sampling = one no-grad forward. Timed iterations
are interleaved across all configurations (round-robin), so a burst of load from
another process hits every row alike; each cell is the median over rounds.
TFLOP/s counts FlopCounterMode's forward FLOPs (x3 for a training step) and is compared
with the bf16 conv and matmul peaks measured at the start (and again at the end: the best
of both counts, so load from another process cannot deflate the peak).
Run: `multidiff bench unet2d` (needs the `bench` extra for the peers).
"""
from __future__ import annotations

import argparse

import torch

from ..models.unet2d import UNet2D, UNet2DConfig
from . import throughput_harness as harness

MODES = ("fp32 NCHW", "bf16 CL")


# ---------------------------------------------------------------------------- models
def ours(dropout: float):
    cfg = UNet2DConfig(in_channels=3, base_channels=64, channel_mult=[1, 2, 2], num_res_blocks=2,
                       attention_resolutions=[8], num_heads=4, dropout=dropout, image_size=32)
    return UNet2D(cfg), lambda m, x, t: m(x, t)


def diffusers_unet(dropout: float):
    from diffusers import UNet2DModel

    m = UNet2DModel(sample_size=32, in_channels=3, out_channels=3, block_out_channels=(64, 128, 128),
                    layers_per_block=2, down_block_types=("DownBlock2D", "DownBlock2D", "AttnDownBlock2D"),
                    up_block_types=("AttnUpBlock2D", "UpBlock2D", "UpBlock2D"), attention_head_dim=32,
                    dropout=dropout)
    return m, lambda m, x, t: m(x, t).sample


def lucidrains_unet(dropout: float):
    from denoising_diffusion_pytorch import Unet

    return Unet(dim=72, dim_mults=(1, 2, 2), channels=3, dropout=dropout), lambda m, x, t: m(x, t)


MODELS = {
    "ours": ("multidiff UNet2D", ours),
    "diffusers": ("diffusers UNet2DModel", diffusers_unet),
    "ddpm": ("denoising-diffusion-pytorch Unet", lucidrains_unet),
}
PEERS = ("diffusers", "ddpm")


# ---------------------------------------------------------------------------- runs
class Run(harness.Run):
    """One (model, mode) on 32x32 RGB; with compile_, the model runs under torch.compile."""

    def __init__(self, key: str, mode: str, dropout: float, train_batch: int, sample_batch: int, compile_: bool):
        self.key, self.mode = key, mode
        self.label, build = MODELS[key]
        model, call = build(dropout)
        self.gflops = harness.forward_gflops(model, call, torch.randn(2, 3, 32, 32))
        self.params = sum(p.numel() for p in model.parameters())
        fast = mode == "bf16 CL"
        if fast:
            model = model.to(memory_format=torch.channels_last)
        fn = torch.compile(model) if compile_ else model
        if compile_:
            self.label += " (torch.compile)"
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
        g = torch.Generator().manual_seed(0)
        fmt = torch.channels_last if fast else torch.contiguous_format
        xt = torch.randn(train_batch, 3, 32, 32, generator=g).to(memory_format=fmt)
        tt = torch.rand(train_batch, generator=g) * 999
        target = torch.randn(train_batch, 3, 32, 32, generator=g).to(memory_format=fmt)
        xs = torch.randn(sample_batch, 3, 32, 32, generator=g).to(memory_format=fmt)
        ts = torch.rand(sample_batch, generator=g) * 999
        self._set_steps(model, call, opt, (xt, tt, target), (xs, ts), fast, fn)


TABLE = harness.TableFormat(unit="img", units="img", gflop=".2f", rate=".1f", vs_peer="vs best peer")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="unet2d_throughput", description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="ours,diffusers,ddpm", help="comma list of " + ", ".join(MODELS))
    ap.add_argument("--modes", default=",".join(MODES), help=f"comma list of {MODES}")
    ap.add_argument("--train-batch", type=int, default=32)
    ap.add_argument("--sample-batch", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=5, help="timed iterations per cell (median), after 1 warm-up")
    ap.add_argument("--dropout", type=float, default=0.1, help="the same dropout for every model")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    ap.add_argument("--compile", action="store_true", help="also time our model under torch.compile (bf16 CL)")
    args, keys, modes = harness.parse_args(ap, argv, MODELS, MODES)
    t_start, peaks0 = harness.start("UNet2D")
    runs = [Run(k, m, args.dropout, args.train_batch, args.sample_batch, False) for k in keys for m in modes]
    if args.compile:
        runs.append(Run("ours", "bf16 CL", args.dropout, args.train_batch, args.sample_batch, True))
    harness.print_gflops(runs, MODELS, TABLE)
    harness.time_rounds(runs, args.rounds)
    peak = harness.peak_at_end(peaks0)
    print(f"train: batch {args.train_batch}, forward + backward + AdamW step; sample: batch {args.sample_batch}, "
          f"no-grad forward; dropout {args.dropout}; median of {args.rounds} interleaved rounds\n")
    print(harness.markdown_table(runs, peak, PEERS, TABLE))
    harness.print_vs_fastest_peer(runs, PEERS, "bf16 CL", peak, "bf16 peak", peak_target=0.4)
    harness.print_footer(t_start)


if __name__ == "__main__":
    main()
