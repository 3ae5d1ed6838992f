"""Sampler error vs number of model evaluations, against the exact Gaussian oracle.

For data N(mean, std^2) the optimal denoiser and the exact probability-flow ODE solution are
closed form (core/oracle.py), so the error left after sampling is the sampler's
discretisation error alone. Run: `multidiff bench accuracy`.
"""
from __future__ import annotations

import math

import torch

from ..core import Denoiser, Schedule, nfe, sample
from ..core.oracle import GaussianOracle

# the deterministic samplers, all on the same sigmas (karras or log-uniform, not each one's default
# spacing), so that the table compares the integrators alone
ODE_SAMPLERS = ("euler", "ddim", "heun", "dpmpp_2m")


def log_uniform_sigmas(sched: Schedule, steps: int) -> torch.Tensor:
    lo, hi = math.log(float(sched.sigmas[0])), math.log(float(sched.sigmas[-1]))
    return torch.linspace(hi, lo, steps, dtype=torch.float64).exp()


def ode_error(sched: Schedule, sampler: str, sigmas: torch.Tensor, mean=0.3, std=0.5, n=512, prediction="eps",
              seed=0) -> float:
    """RMS distance between the sampler's output and the exact ODE solution from the same start."""
    oracle = GaussianOracle(sched, mean, std, prediction)
    noise = torch.randn(n, 1, 2, 2, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    x = sample(Denoiser(oracle, sched, prediction), noise, sampler, sigmas=sigmas)
    s_max = float(sigmas[0])
    exact = oracle.ode_solution(noise * math.sqrt(1 + s_max**2), s_max)
    return float((x - exact).pow(2).mean().sqrt())


def error_table(sched: Schedule | None = None, spacing: str = "karras", steps=(5, 10, 20, 40, 80, 160),
                samplers=ODE_SAMPLERS) -> list[dict]:
    sched = sched or Schedule.linear(1000)
    rows = []
    for smp in samplers:
        for n in steps:
            sig = sched.karras_sigmas(n) if spacing == "karras" else log_uniform_sigmas(sched, n)
            rows.append({"sampler": smp, "steps": n, "nfe": nfe(smp, n), "rms_error": ode_error(sched, smp, sig)})
    return rows


def nfe_to_reach(rows: list[dict], sampler: str, target: float) -> float:
    """Model evaluations a sampler needs for RMS error <= target (log-log interpolation; inf if never)."""
    pts = sorted((r["nfe"], r["rms_error"]) for r in rows if r["sampler"] == sampler)
    if pts[0][1] <= target:
        return float(pts[0][0])
    for (n0, e0), (n1, e1) in zip(pts, pts[1:]):
        if e1 <= target < e0:
            w = (math.log(e0) - math.log(target)) / (math.log(e0) - math.log(e1))
            return math.exp(math.log(n0) + w * (math.log(n1) - math.log(n0)))
    return math.inf


def markdown(rows: list[dict], spacing: str) -> str:
    samplers = list(dict.fromkeys(r["sampler"] for r in rows))
    steps = list(dict.fromkeys(r["steps"] for r in rows))
    lines = [f"RMS error vs the exact ODE solution (linear schedule T=1000, {spacing} sigmas, "
             "data N(0.3, 0.5^2)); cells are `NFE: error`", "",
             "| steps | " + " | ".join(samplers) + " |", "|---" * (len(samplers) + 1) + "|"]
    by = {(r["sampler"], r["steps"]): r for r in rows}
    for n in steps:
        cells = [f"{by[s, n]['nfe']}: {by[s, n]['rms_error']:.2e}" for s in samplers]
        lines.append(f"| {n} | " + " | ".join(cells) + " |")
    def reach(s):
        n = nfe_to_reach(rows, s, 1e-2)
        return f"{n:.0f}" if math.isfinite(n) else f"> {max(r['nfe'] for r in rows if r['sampler'] == s)}"

    lines += ["", "NFE to reach RMS error 1e-2: " + ", ".join(f"{s} {reach(s)}" for s in samplers)]
    return "\n".join(lines)


def main(argv=None) -> None:
    import argparse

    ap = argparse.ArgumentParser(prog="multidiff bench accuracy", description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, nargs="+", default=[5, 10, 20, 40, 80, 160])
    args = ap.parse_args(argv)
    for spacing in ("karras", "log-uniform"):
        print(markdown(error_table(spacing=spacing, steps=tuple(args.steps)), spacing) + "\n")


if __name__ == "__main__":
    main()
