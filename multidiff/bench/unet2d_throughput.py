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
Run: `python benchmarks/unet2d_throughput.py` (needs the `bench` extra for the peers).
"""
from __future__ import annotations

import argparse
import contextlib
import os
import platform
import statistics
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from ..models.unet2d import UNet2D, UNet2DConfig

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


def forward_gflops(model, call) -> float:
    model.eval()
    x, t = torch.randn(2, 3, 32, 32), torch.tensor([10.0, 500.5])
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        call(model, x, t)
    return fc.get_total_flops() / 2 / 1e9


# ---------------------------------------------------------------------------- peaks
def _best_time(fn, reps: int) -> float:
    fn()
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def measure_peaks(reps: int = 5) -> dict:
    """bf16 conv (128->128 3x3 on [32, 128, 32, 32], autocast + channels_last) and 4096^2 matmul, TFLOP/s."""
    conv = torch.nn.Conv2d(128, 128, 3, padding=1).to(memory_format=torch.channels_last)
    x = torch.randn(32, 128, 32, 32).to(memory_format=torch.channels_last)

    def run_conv():
        with torch.no_grad(), torch.autocast("cpu", torch.bfloat16):
            conv(x)

    a, b = torch.randn(4096, 4096, dtype=torch.bfloat16), torch.randn(4096, 4096, dtype=torch.bfloat16)
    return {"conv": 2 * 32 * 32 * 32 * 128 * 128 * 9 / _best_time(run_conv, reps) / 1e12,
            "matmul": 2 * 4096**3 / _best_time(lambda: a @ b, reps) / 1e12}


# ---------------------------------------------------------------------------- runs
class Run:
    """One (model, mode): a training step and a sampling step as closures, and their timings."""

    def __init__(self, key: str, mode: str, dropout: float, train_batch: int, sample_batch: int, compile_: bool):
        self.key, self.mode = key, mode
        self.label, build = MODELS[key]
        model, call = build(dropout)
        self.gflops = forward_gflops(model, call)
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
        ctx = (lambda: torch.autocast("cpu", torch.bfloat16)) if fast else contextlib.nullcontext

        def train():
            model.train()
            with ctx():
                loss = (call(fn, xt, tt).float() - target).pow(2).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        def sample():
            model.eval()
            with torch.no_grad(), ctx():
                call(fn, xs, ts)

        self.train, self.sample = train, sample
        self.batches = {"train": train_batch, "sample": sample_batch}
        self.times = {"train": [], "sample": []}

    def rate(self, what: str) -> float:
        return self.batches[what] / statistics.median(self.times[what])


def _cpu_name() -> str:
    with contextlib.suppress(OSError):
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def _table(runs: list[Run], peak: float) -> str:
    best = {w: max(r.rate(w) for r in runs if r.key in PEERS) for w in ("train", "sample")} \
        if any(r.key in PEERS for r in runs) else None
    head = ("| model | mode | GFLOP/img (fwd) | params | train img/s | train TFLOP/s | % peak | vs best peer "
            "| sample img/s | sample TFLOP/s | % peak | vs best peer |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in runs:
        cells = [r.label, r.mode, f"{r.gflops:.2f}", f"{r.params / 1e6:.1f} M"]
        for what, mult in (("train", 3), ("sample", 1)):
            ips = r.rate(what)
            tf = ips * r.gflops * mult / 1e3
            cells += [f"{ips:.1f}", f"{tf:.3f}", f"{100 * tf / peak:.0f}%",
                      f"{ips / best[what]:.2f}x" if best else "-"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


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
    print(f"# UNet2D throughput: {_cpu_name()}, {torch.get_num_threads()} threads, torch {torch.__version__}, "
          f"load average before {os.getloadavg()[0]:.2f}")
    if os.getloadavg()[0] > 0.5:
        print("note: other processes are using the CPU; rounds are interleaved, so the ratios between rows "
              "hold up better than the absolute numbers")
    peaks0 = measure_peaks()
    runs = [Run(k, m, args.dropout, args.train_batch, args.sample_batch, False) for k in keys for m in modes]
    if args.compile:
        runs.append(Run("ours", "bf16 CL", args.dropout, args.train_batch, args.sample_batch, True))
    flops = [r.gflops for r in runs]
    spread = max(flops) / min(flops)
    print(f"forward GFLOP/img: " + ", ".join(f"{MODELS[k][0]} {r.gflops:.2f}" for k, r in
                                             {r.key: r for r in runs}.items())
          + f" (max/min {spread:.2f}{'' if spread <= 1.2 else ' -- NOT within 20%'})")
    for r in runs:  # warm-up: first calls build oneDNN primitives (and compile, with --compile)
        r.train()
        r.sample()
    for _ in range(args.rounds):
        for r in runs:
            for what in ("train", "sample"):
                t0 = time.perf_counter()
                getattr(r, what)()
                r.times[what].append(time.perf_counter() - t0)
    # measured again at the end, best of both: one burst of load from another process must not lower the peak
    peaks = {k: max(v, peaks0[k]) for k, v in measure_peaks().items()}
    peak = max(peaks.values())
    print(f"measured bf16 peaks (best of start and end): conv {peaks['conv']:.3f} TFLOP/s, matmul "
          f"{peaks['matmul']:.3f} TFLOP/s; % peak below is against {peak:.3f}")
    print(f"train: batch {args.train_batch}, forward + backward + AdamW step; sample: batch {args.sample_batch}, "
          f"no-grad forward; dropout {args.dropout}; median of {args.rounds} interleaved rounds\n")
    print(_table(runs, peak))
    peer_runs = [r for r in runs if r.key in PEERS]
    for r in runs:
        if r.key == "ours" and r.mode == "bf16 CL" and peer_runs:
            best = max(peer_runs, key=lambda p: p.rate("train"))
            ratio = r.rate("train") / best.rate("train")
            frac = r.rate("train") * r.gflops * 3 / 1e3 / peak
            s_ratio = r.rate("sample") / max(p.rate("sample") for p in peer_runs)
            print(f"\n{r.label}, {r.mode}: training {ratio:.2f}x the fastest peer configuration "
                  f"({best.label}, {best.mode}; target >= 5x: {'met' if ratio >= 5 else 'NOT met'}), "
                  f"{100 * frac:.0f}% of the measured bf16 peak "
                  f"(target >= 40%: {'met' if frac >= 0.4 else 'NOT met'}); "
                  f"sampling {s_ratio:.2f}x the fastest peer configuration")
    print(f"\nload average after {os.getloadavg()[0]:.2f}; total {time.perf_counter() - t_start:.0f} s")


if __name__ == "__main__":
    main()
