"""Per-step overhead of our samplers vs diffusers' schedulers, same trivial model, same run.

The model is nearly free (a scaled copy of its input), so the time per step is the
sampler's own bookkeeping: level lookups, coefficient arithmetic, tensor updates.
Run: `multidiff bench overhead` (needs the `bench` extra for diffusers).
"""
from __future__ import annotations

import argparse

import torch

from ..core import Denoiser, Schedule, sample
from .throughput_harness import best_time

# our sampler -> (diffusers scheduler class, constructor kwargs) for the same settings
PAIRS = {
    "ddpm": ("DDPMScheduler", {"variance_type": "fixed_large"}),
    "ddim": ("DDIMScheduler", {"set_alpha_to_one": True, "clip_sample": False}),
    "euler": ("EulerDiscreteScheduler", {}),
    "euler_ancestral": ("EulerAncestralDiscreteScheduler", {}),
    "heun": ("HeunDiscreteScheduler", {}),
    "dpmpp_2m": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 2}),
}


def trivial_model(x, t, **_):
    return x * 0.1


def ours(sampler: str, steps: int, shape, sched: Schedule):
    den = Denoiser(trivial_model, sched, "eps")
    z = torch.randn(shape)
    return lambda: sample(den, z, sampler, steps=steps, spacing="leading", generator=torch.Generator().manual_seed(0))


def theirs(sampler: str, steps: int, shape):
    import diffusers

    cls_name, kw = PAIRS[sampler]
    sch = getattr(diffusers, cls_name)(num_train_timesteps=1000, beta_schedule="linear", beta_start=1e-4,
                                       beta_end=0.02, timestep_spacing="leading", **kw)
    z = torch.randn(shape)
    stochastic = sampler in ("ddpm", "euler_ancestral")

    def run():
        g = {"generator": torch.Generator().manual_seed(0)} if stochastic else {}
        sch.set_timesteps(steps)
        x = z * sch.init_noise_sigma
        for t in sch.timesteps:
            out = trivial_model(sch.scale_model_input(x, t), t)
            x = sch.step(out, t, x, **g).prev_sample
        return x

    return run


def table(steps: int = 100, shape=(1, 4, 8, 8), repeats: int = 5) -> list[dict]:
    torch.set_num_threads(1)
    sched = Schedule.linear(1000)
    rows = []
    for smp in PAIRS:
        calls = 2 * steps - 1 if smp == "heun" else steps
        a = best_time(ours(smp, steps, shape, sched), repeats) / calls * 1e6
        b = best_time(theirs(smp, steps, shape), repeats) / calls * 1e6
        rows.append({"sampler": smp, "ours_us": a, "diffusers_us": b, "speedup": b / a})
    return rows


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="multidiff bench overhead", description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args(argv)
    rows = table(args.steps, repeats=args.repeats)
    print(f"Per model call, {args.steps} steps, trivial model on [1, 4, 8, 8], 1 thread, best of {args.repeats}\n")
    print("| sampler | ours (us/call) | diffusers (us/call) | diffusers / ours |")
    print("|---|---|---|---|")
    for r in rows:
        print(f"| {r['sampler']} | {r['ours_us']:.0f} | {r['diffusers_us']:.0f} | {r['speedup']:.2f}x |")


if __name__ == "__main__":
    main()
