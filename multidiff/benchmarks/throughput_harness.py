"""What the U-Net throughput benchmarks (unet2d_throughput, unet3d_throughput) share: the bf16 peak
measurement, the interleaved timing rounds, a Run base class (train/sample closures and their timings),
and the printed header, table and "ours vs the fastest peer" summary. Each script keeps its models,
its inputs, its flags and its wording; `TableFormat` carries the wording.
"""
from __future__ import annotations

import contextlib
import os
import platform
import statistics
import time
from typing import NamedTuple

import torch
from torch.utils.flop_counter import FlopCounterMode


def cpu_name() -> str:
    with contextlib.suppress(OSError):
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def best_time(fn, reps: int) -> float:
    """Fastest of `reps` calls after one warm-up call: load from other processes only ever adds time."""
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
    return {"conv": 2 * 32 * 32 * 32 * 128 * 128 * 9 / best_time(run_conv, reps) / 1e12,
            "matmul": 2 * 4096**3 / best_time(lambda: a @ b, reps) / 1e12}


def forward_gflops(model, call, x: torch.Tensor) -> float:
    """Forward GFLOP per sample of the batch x (FlopCounterMode: convs, matmuls, attention)."""
    model.eval()
    t = torch.linspace(10.0, 500.5, len(x))
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        call(model, x, t)
    return fc.get_total_flops() / len(x) / 1e9


# ---------------------------------------------------------------------------- runs
class Run:
    """One (model, mode): a training step and a sampling step as closures, and their timings.
    Subclasses build the model and inputs, then call `_set_steps`."""

    key: str
    mode: str
    label: str
    gflops: float
    params: int

    def _set_steps(self, model, call, opt, train_inputs, sample_inputs, fast: bool, fn=None) -> None:
        """train_inputs = (x, t, target), sample_inputs = (x, t); `fast`: under bf16 autocast; `fn`: what gets
        called in place of the model (the compiled model), while train()/eval() and the optimizer act on `model`."""
        fn = model if fn is None else fn
        xt, tt, target = train_inputs
        xs, ts = sample_inputs
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
        self.batches = {"train": len(xt), "sample": len(xs)}
        self.times = {"train": [], "sample": []}

    def rate(self, what: str) -> float:
        return self.batches[what] / statistics.median(self.times[what])


# ---------------------------------------------------------------------------- the steps of main()
def parse_args(ap, argv, models: dict, all_modes: tuple):
    """Parses argv with the script's parser (which has --models, --modes, --threads), applies --threads and checks
    --models and --modes against the script's tables. Returns (args, model keys, modes)."""
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    keys, modes = args.models.split(","), args.modes.split(",")
    for k in keys:
        if k not in models:
            ap.error(f"unknown model {k!r}; choose from {', '.join(models)}")
    for m in modes:
        if m not in all_modes:
            ap.error(f"unknown mode {m!r}; choose from {all_modes}")
    return args, keys, modes


def start(title: str) -> tuple[float, dict]:
    """Prints the header and measures the bf16 peaks; returns (start time, peaks)."""
    t_start = time.perf_counter()
    print(f"# {title} throughput: {cpu_name()}, {torch.get_num_threads()} threads, torch {torch.__version__}, "
          f"load average before {os.getloadavg()[0]:.2f}")
    if os.getloadavg()[0] > 0.5:
        print("note: other processes are using the CPU; rounds are interleaved, so the ratios between rows "
              "hold up better than the absolute numbers")
    return t_start, measure_peaks()


class TableFormat(NamedTuple):
    """The wording of one benchmark's printout: per-sample unit, GFLOP and rate formats, peer column."""
    unit: str  # "img", "clip": GFLOP/<unit>
    units: str  # "img", "clips": <units>/s
    gflop: str  # format spec of GFLOP/<unit>
    rate: str  # format spec of <units>/s
    vs_peer: str  # header of the ratio-to-the-fastest-peer columns


def print_gflops(runs: list[Run], models: dict, fmt: TableFormat) -> None:
    flops = [r.gflops for r in runs]
    spread = max(flops) / min(flops)
    print(f"forward GFLOP/{fmt.unit}: " + ", ".join(f"{models[k][0]} {r.gflops:{fmt.gflop}}" for k, r in
                                                     {r.key: r for r in runs}.items())
          + f" (max/min {spread:.2f}{'' if spread <= 1.2 else ' -- NOT within 20%'})")


def time_rounds(runs: list[Run], max_rounds: int, min_rounds: int = 0, budget: float | None = None) -> int:
    """Warm up every run, then time rounds of every run in turn (round-robin, so a burst of load from another
    process hits every row alike) until max_rounds, or, with a budget in seconds, until it is spent once
    min_rounds are done. Returns the number of rounds."""
    for r in runs:  # warm-up: first calls build oneDNN primitives (and compile, under torch.compile)
        r.train()
        r.sample()
    t_rounds, rounds = time.perf_counter(), 0
    while rounds < max_rounds and (budget is None or rounds < min_rounds
                                   or time.perf_counter() - t_rounds < budget):
        rounds += 1
        for r in runs:
            for what in ("train", "sample"):
                t0 = time.perf_counter()
                getattr(r, what)()
                r.times[what].append(time.perf_counter() - t0)
    return rounds


def peak_at_end(start_peaks: dict, only: str | None = None) -> float:
    """Measures the peaks again, prints the best of start and end, and returns the peak that % peak is against:
    `only` that kind, else the best of all. Best of both: one burst of load must not lower the peak."""
    peaks = {k: max(v, start_peaks[k]) for k, v in measure_peaks().items()}
    peak = peaks[only] if only else max(peaks.values())
    print(f"measured bf16 peaks (best of start and end): conv {peaks['conv']:.3f} TFLOP/s, matmul "
          f"{peaks['matmul']:.3f} TFLOP/s; % peak below is against {f'the {only} peak' if only else f'{peak:.3f}'}")
    return peak


def markdown_table(runs: list[Run], peak: float, peers: tuple, fmt: TableFormat) -> str:
    best = {w: max(r.rate(w) for r in runs if r.key in peers) for w in ("train", "sample")} \
        if any(r.key in peers for r in runs) else None
    u, us = fmt.unit, fmt.units
    head = (f"| model | mode | GFLOP/{u} (fwd) | params | train {us}/s | train TFLOP/s | % peak | {fmt.vs_peer} "
            f"| sample {us}/s | sample TFLOP/s | % peak | {fmt.vs_peer} |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in runs:
        cells = [r.label, r.mode, f"{r.gflops:{fmt.gflop}}", f"{r.params / 1e6:.1f} M"]
        for what, mult in (("train", 3), ("sample", 1)):
            rate = r.rate(what)
            tf = rate * r.gflops * mult / 1e3
            cells += [f"{rate:{fmt.rate}}", f"{tf:.3f}", f"{100 * tf / peak:.0f}%",
                      f"{rate / best[what]:.2f}x" if best else "-"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def print_vs_fastest_peer(runs: list[Run], peers: tuple, fast_mode: str, peak: float, peak_name: str,
                          peak_target: float | None = None, name_sample_peer: bool = False) -> None:
    """One line per run of ours in `fast_mode`: its training and sampling rate against the fastest peer
    configuration, and its training TFLOP/s as a fraction of `peak` (the measured `peak_name`)."""
    peer_runs = [r for r in runs if r.key in peers]
    for r in runs:
        if r.key == "ours" and r.mode == fast_mode and peer_runs:
            best = max(peer_runs, key=lambda p: p.rate("train"))
            ratio = r.rate("train") / best.rate("train")
            s_best = max(peer_runs, key=lambda p: p.rate("sample"))
            s_ratio = r.rate("sample") / s_best.rate("sample")
            frac = r.rate("train") * r.gflops * 3 / 1e3 / peak
            target = "" if peak_target is None else \
                f" (target >= {100 * peak_target:.0f}%: {'met' if frac >= peak_target else 'NOT met'})"
            s_peer = f" ({s_best.label}, {s_best.mode})" if name_sample_peer else ""
            print(f"\n{r.label}, {r.mode}: training {ratio:.2f}x the fastest peer configuration "
                  f"({best.label}, {best.mode}; target >= 5x: {'met' if ratio >= 5 else 'NOT met'}), "
                  f"{100 * frac:.0f}% of the measured {peak_name}{target}; "
                  f"sampling {s_ratio:.2f}x the fastest peer configuration{s_peer}")


def print_footer(t_start: float) -> None:
    print(f"\nload average after {os.getloadavg()[0]:.2f}; total {time.perf_counter() - t_start:.0f} s")
