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
Run: `python benchmarks/unet3d_throughput.py` (needs video-diffusion-pytorch for the peer); on a
machine shared with other jobs add `--threads 1`: two OpenMP threads on two busy cores wait on each
other at every op, which hurts the models with many small ops most (the peer's bf16 path above all).
"""
from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from ..models.unet3d import UNet3D, UNet3DConfig
from .unet2d_throughput import _cpu_name, measure_peaks

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


def forward_gflops(model, call, frames: int) -> float:
    """Forward GFLOP per clip (FlopCounterMode: convs, matmuls, attention)."""
    model.eval()
    x, t = torch.randn(2, 1, frames, SIZE, SIZE), torch.tensor([10.0, 500.5])
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        call(model, x, t)
    return fc.get_total_flops() / 2 / 1e9


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
class Run:
    """One (model, mode): a training step and a sampling step as closures, and their timings."""

    def __init__(self, key: str, mode: str, frames: int, train_batch: int, sample_batch: int):
        self.key, self.mode = key, mode
        self.label, build = MODELS[key]
        model, call = build(frames)
        self.gflops = forward_gflops(model, call, frames)
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
        ctx = (lambda: torch.autocast("cpu", torch.bfloat16)) if fast else contextlib.nullcontext

        def train():
            model.train()
            with ctx():
                loss = (call(model, xt, tt).float() - target).pow(2).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        def sample():
            model.eval()
            with torch.no_grad(), ctx():
                call(model, xs, ts)

        self.model, self.train, self.sample = model, train, sample
        self.batches = {"train": train_batch, "sample": sample_batch}
        self.times = {"train": [], "sample": []}

    def rate(self, what: str) -> float:
        return self.batches[what] / statistics.median(self.times[what])


def _table(runs: list[Run], peak: float) -> str:
    best = {w: max(r.rate(w) for r in runs if r.key in PEERS) for w in ("train", "sample")} \
        if any(r.key in PEERS for r in runs) else None
    head = ("| model | mode | GFLOP/clip (fwd) | params | train clips/s | train TFLOP/s | % peak | vs fastest peer "
            "| sample clips/s | sample TFLOP/s | % peak | vs fastest peer |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in runs:
        cells = [r.label, r.mode, f"{r.gflops:.1f}", f"{r.params / 1e6:.1f} M"]
        for what, mult in (("train", 3), ("sample", 1)):
            cps = r.rate(what)
            tf = cps * r.gflops * mult / 1e3
            cells += [f"{cps:.2f}", f"{tf:.3f}", f"{100 * tf / peak:.0f}%",
                      f"{cps / best[what]:.2f}x" if best else "-"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


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
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    keys, modes = args.models.split(","), args.modes.split(",")
    for k in keys:
        if k not in MODELS:
            ap.error(f"unknown model {k!r}; choose from {', '.join(MODELS)}")
    for m in modes:
        if m not in MODES:
            ap.error(f"unknown mode {m!r}; choose from {MODES}")

    t_start = time.perf_counter()
    print(f"# UNet3D throughput: {_cpu_name()}, {torch.get_num_threads()} threads, torch {torch.__version__}, "
          f"load average before {os.getloadavg()[0]:.2f}")
    if os.getloadavg()[0] > 0.5:
        print("note: other processes are using the CPU; rounds are interleaved, so the ratios between rows "
              "hold up better than the absolute numbers")
    peaks0 = measure_peaks()
    runs = [Run(k, m, args.frames, args.train_batch, args.sample_batch) for k in keys for m in modes]
    flops = [r.gflops for r in runs]
    spread = max(flops) / min(flops)
    print("forward GFLOP/clip: " + ", ".join(f"{MODELS[k][0]} {r.gflops:.1f}" for k, r in
                                            {r.key: r for r in runs}.items())
          + f" (max/min {spread:.2f}{'' if spread <= 1.2 else ' -- NOT within 20%'})")
    for r in runs:  # warm-up: first calls build oneDNN primitives
        r.train()
        r.sample()
    t_rounds, rounds = time.perf_counter(), 0
    while rounds < max(args.rounds, 1) and (rounds < args.min_rounds or time.perf_counter() - t_rounds < args.budget):
        rounds += 1
        for r in runs:
            for what in ("train", "sample"):
                t0 = time.perf_counter()
                getattr(r, what)()
                r.times[what].append(time.perf_counter() - t0)
    # measured again at the end, best of both: one burst of load from another process must not lower the peak
    peaks = {k: max(v, peaks0[k]) for k, v in measure_peaks().items()}
    peak = peaks["conv"]
    print(f"measured bf16 peaks (best of start and end): conv {peaks['conv']:.3f} TFLOP/s, matmul "
          f"{peaks['matmul']:.3f} TFLOP/s; % peak below is against the conv peak")
    print(f"train: batch {args.train_batch} clips of {args.frames}x{SIZE}x{SIZE}, forward + backward + AdamW step; "
          f"sample: batch {args.sample_batch}, no-grad forward; median of {rounds} interleaved rounds\n")
    print(_table(runs, peak))
    peer_runs = [r for r in runs if r.key in PEERS]
    for r in runs:
        if r.key == "ours" and r.mode == "bf16 CL3d" and peer_runs:
            best = max(peer_runs, key=lambda p: p.rate("train"))
            ratio = r.rate("train") / best.rate("train")
            s_best = max(peer_runs, key=lambda p: p.rate("sample"))
            s_ratio = r.rate("sample") / s_best.rate("sample")
            frac = r.rate("train") * r.gflops * 3 / 1e3 / peak
            print(f"\n{r.label}, {r.mode}: training {ratio:.2f}x the fastest peer configuration "
                  f"({best.label}, {best.mode}; target >= 5x: {'met' if ratio >= 5 else 'NOT met'}), "
                  f"{100 * frac:.0f}% of the measured bf16 conv peak; sampling {s_ratio:.2f}x the fastest peer "
                  f"configuration ({s_best.label}, {s_best.mode})")
    if args.profile:
        fast = [r for r in runs if r.key == "ours" and r.mode == "bf16 CL3d"]
        if fast:
            _profile(fast[0], args.profile)
    print(f"\nload average after {os.getloadavg()[0]:.2f}; total {time.perf_counter() - t_start:.0f} s")


if __name__ == "__main__":
    main()
