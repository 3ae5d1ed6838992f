"""DiffWave speed on this CPU: ours vs lmnt-com/diffwave (the PyPI `diffwave`), same run, same weights.

Vocoding: 1 s of 22.05 kHz audio (86 mel frames x hop 256 = 22,016 samples) with lmnt's 6-step
fast schedule, at BASE size (64 channels, 30 layers). Ours runs through the core sampler
(`sample(..., "ddpm")` on the aligned fractional timesteps, without grad) behind `InferenceModel`
(autocast when bf16); lmnt's runs its own `inference.py` loop. Each timed run gets a fresh mel
tensor, so our once-per-utterance conditioner cost is included. Training: one Adam step on a
batch of 16 crops of 62 frames (15,872 samples), lmnt's L1 loss on eps. Times are medians
after a warm-up. Run: `multidiff bench diffwave` (needs the `bench` extra).
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np
import torch

from ..core import Denoiser, Schedule, sample
from ..core.distillation import progressive_timesteps
from ..models.diffwave import DiffWave
from ..engine.precision import InferenceModel

SR, HOP, FRAMES = 22050, 256, 86
TRAIN_BETAS = np.linspace(1e-4, 0.05, 50)
FAST_BETAS = [0.0001, 0.001, 0.01, 0.05, 0.2, 0.5]


def _lmnt_model():
    from diffwave.model import DiffWave as LmntDiffWave
    from diffwave.params import AttrDict, params

    model = LmntDiffWave(AttrDict(params))
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():  # a "trained-looking" model: no zero output conv
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.02)
    return model


def lmnt_vocode(model, mel: torch.Tensor, bf16: bool, generator: torch.Generator) -> torch.Tensor:
    """lmnt's inference.py `predict(..., fast_sampling=True)`, on CPU."""
    talpha_cum = np.cumprod(1 - TRAIN_BETAS)
    beta = np.array(FAST_BETAS)
    alpha = 1 - beta
    alpha_cum = np.cumprod(alpha)
    T = []
    for s in range(len(beta)):
        for t in range(len(TRAIN_BETAS) - 1):
            if talpha_cum[t + 1] <= alpha_cum[s] <= talpha_cum[t]:
                tw = (talpha_cum[t] ** 0.5 - alpha_cum[s] ** 0.5) / (talpha_cum[t] ** 0.5 - talpha_cum[t + 1] ** 0.5)
                T.append(t + tw)
                break
    T = np.array(T, dtype=np.float32)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        audio = torch.randn(mel.shape[0], HOP * mel.shape[-1], generator=generator)
        for n in range(len(alpha) - 1, -1, -1):
            c1 = 1 / alpha[n] ** 0.5
            c2 = beta[n] / (1 - alpha_cum[n]) ** 0.5
            audio = c1 * (audio - c2 * model(audio, mel, torch.tensor([T[n]])).squeeze(1).float())
            if n > 0:
                sigma = ((1.0 - alpha_cum[n - 1]) / (1.0 - alpha_cum[n]) * beta[n]) ** 0.5
                audio += sigma * torch.randn(audio.shape, generator=generator)
            audio = torch.clamp(audio, -1.0, 1.0)
    return audio


def ours_vocode(model, mel: torch.Tensor, bf16: bool, generator: torch.Generator,
                student_steps: int | None = None) -> torch.Tensor:
    """lmnt's 6-step fast schedule through the core sampler, or (student_steps = N) what `multidiff vocode`
    runs for an N-step progressive student: deterministic DDIM on its N levels of the training schedule."""
    sched = Schedule.from_betas(TRAIN_BETAS)
    den = Denoiser(InferenceModel(model, torch.device("cpu"), bf16), sched, "eps")
    noise = torch.randn(mel.shape[0], 1, HOP * mel.shape[-1], generator=generator)
    if student_steps:
        return sample(den, noise, "ddim", timesteps=progressive_timesteps(sched, student_steps), generator=generator,
                      cond={"mel": mel})
    ac = np.cumprod(1 - np.array(FAST_BETAS))
    ts = sched.align_betas(FAST_BETAS).flip(0)
    sigmas = torch.tensor(np.sqrt((1 - ac) / ac)[::-1].copy())
    return sample(den, noise, "ddpm", timesteps=ts, sigmas=sigmas, variance="posterior", generator=generator,
                  cond={"mel": mel})


def _cpu_busy() -> tuple[float, float] | None:
    """(busy, total) CPU seconds of the whole machine so far, from /proc/stat (Linux)."""
    try:
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    hz = os.sysconf("SC_CLK_TCK")
    return (sum(v) - v[3] - v[4]) / hz, sum(v) / hz


def _wait_idle(timeout: float, threshold: float = 0.05) -> None:
    """Wait (at most `timeout` s) until other processes leave the CPU idle: on a 2-core machine one
    other busy thread turns every parallel op into a wait for the scheduler."""
    end = time.time() + timeout
    while time.time() < end:
        a = _cpu_busy()
        time.sleep(0.3)
        b = _cpu_busy()
        if a is None or b is None or (b[0] - a[0]) / max(b[1] - a[1], 1e-9) < threshold:
            return


class Timer:
    def __init__(self, wait: float):
        self.wait, self.others = wait, []

    def __call__(self, fn, repeats: int, warmup: int = 1) -> list[float]:
        """Wall times of `repeats` runs after `warmup`; records the share of the machine other
        processes used during each (busy CPU time minus ours, over wall time x cores)."""
        for _ in range(warmup):
            fn()
        out = []
        for _ in range(repeats):
            if self.wait > 0:
                _wait_idle(self.wait)
            a, c0, t0 = _cpu_busy(), time.process_time(), time.perf_counter()
            fn()
            wall, ours, b = time.perf_counter() - t0, time.process_time() - c0, _cpu_busy()
            out.append(wall)
            if a is not None and b is not None:
                self.others.append(max(0.0, (b[0] - a[0]) - ours) / (wall * (os.cpu_count() or 1)))
        return out


def train_step_fn(model, forward, bf16: bool, batch: int = 16, frames: int = 62):
    g = torch.Generator().manual_seed(0)
    audio = torch.rand(batch, frames * HOP, generator=g) * 2 - 1
    mel = torch.rand(batch, 80, frames, generator=g)
    ab = torch.tensor(np.cumprod(1 - TRAIN_BETAS), dtype=torch.float32)
    opt = torch.optim.Adam(model.parameters(), lr=2e-4)
    model.train()

    def step():
        t = torch.randint(0, len(TRAIN_BETAS), (batch,), generator=g)
        noise = torch.randn(audio.shape, generator=g)
        a = ab[t].unsqueeze(1)
        noisy = a.sqrt() * audio + (1 - a).sqrt() * noise
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            pred = forward(model, noisy, mel, t)
            loss = torch.nn.functional.l1_loss(pred.float(), noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def arithmetic_floor(seconds_of_audio: float, timer) -> dict:
    """A lower bound on the no-grad path at this CPU's measured rates: its matrix-multiply FLOPs (6
    calls + one conditioner) at the rate of the model's main GEMM ([L, 192] x [192, 128], output
    preallocated, best of 20), plus the gate's 2C sigmoids per sample per layer at the rate of one
    in-place fp32 sigmoid pass (best of 20). No exact fp32/bf16 implementation of this model beats
    the GEMM part; the gate part could only shrink with an approximate sigmoid."""
    L, C, M, n = HOP * FRAMES, 64, 80, 30
    flops = 6 * (n * 2 * L * (3 * C * 2 * C + 2 * C * C) - 2 * L * C * C) + 2 * L * M * 2 * C * n
    out = {"gflop": flops / 1e9}
    for dt in (torch.float32, torch.bfloat16):
        a, b = torch.randn(L, 3 * C, dtype=dt), torch.randn(3 * C, 2 * C, dtype=dt)
        o = torch.empty(L, 2 * C, dtype=dt)
        t = min(timer(lambda: torch.mm(a, b, out=o), 20, warmup=2))
        rate = 2 * L * 3 * C * 2 * C / t
        out[dt] = (rate / 1e9, flops / rate / seconds_of_audio)
    z = torch.randn(L, 2 * C)
    out["gate"] = 6 * n * min(timer(lambda: z.sigmoid_(), 20, warmup=2)) / seconds_of_audio
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="multidiff bench diffwave", description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5, help="timed vocoding runs per row (median reported)")
    ap.add_argument("--train-repeats", type=int, default=2, help="timed training steps per row; 0 skips training")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--wait-idle", type=float, default=60.0,
                    help="before each timed run, wait up to this many seconds for other processes to leave "
                         "the CPU idle (0: don't wait)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    lmnt = _lmnt_model().eval()
    ours = DiffWave().eval()
    ours.load_state_dict(lmnt.state_dict())
    audio_s = HOP * FRAMES / SR
    mel0 = torch.rand(1, 80, FRAMES, generator=torch.Generator().manual_seed(1))
    timer = Timer(args.wait_idle)

    # same noise, same model calls: how far apart are the outputs? (lmnt clamps x_t each step, ours x0 never;
    # so compare one model call rather than whole samples)
    x = torch.randn(1, 1, HOP * FRAMES, generator=torch.Generator().manual_seed(2)) * 0.5
    t = torch.tensor([10.4518])
    with torch.no_grad():
        ref = lmnt(x[:, 0], mel0, t)
        err32 = (ours(x, t, mel=mel0.clone()) - ref).abs().max().item()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            rel16 = ((ours(x, t, mel=mel0.clone()) - ref).norm() / ref.norm()).item()
            rel16_lmnt = ((lmnt(x[:, 0], mel0, t).float() - ref).norm() / ref.norm()).item()

    rows = []
    for name, model, vocode in (("lmnt diffwave 0.1.7", lmnt, lmnt_vocode), ("multidiff", ours, ours_vocode)):
        for bf16 in (False, True):
            g = torch.Generator().manual_seed(3)
            timer.others = []
            times = timer(lambda: vocode(model, mel0.clone(), bf16, g), args.repeats)
            rows.append(dict(name=name, prec="bf16 autocast" if bf16 else "fp32", med=statistics.median(times),
                             best=min(times), others=max(timer.others, default=float("nan"))))
    for n in (2, 1):  # a distilled student's sampling (multidiff distill RUN --steps N): N calls, no conditioner reuse
        g = torch.Generator().manual_seed(3)
        timer.others = []
        times = timer(lambda: ours_vocode(ours, mel0.clone(), True, g, student_steps=n), args.repeats)
        rows.append(dict(name=f"multidiff, {n}-step student", prec="bf16 autocast", med=statistics.median(times),
                         best=min(times), others=max(timer.others, default=float("nan")), student=True))
    if args.train_repeats > 0:
        fwd = {"lmnt diffwave 0.1.7": lambda m, a, mel, t: m(a, mel, t).squeeze(1),
               "multidiff": lambda m, a, mel, t: m(a.unsqueeze(1), t.float(), mel=mel).squeeze(1)}
        for r in (r for r in rows if not r.get("student")):  # (a student trains as its teacher does)
            model = _lmnt_model() if r["name"].startswith("lmnt") else DiffWave()
            timer.others = []
            times = timer(train_step_fn(model, fwd[r["name"]], r["prec"] != "fp32"), args.train_repeats)
            r["train"] = 1 / statistics.median(times)
            r["others_train"] = max(timer.others, default=float("nan"))
            del model

    floor = arithmetic_floor(audio_s, Timer(args.wait_idle))
    base = rows[0]["med"]
    print(f"DiffWave BASE (64 ch, 30 layers), 1 s of 22.05 kHz audio ({FRAMES} frames x hop {HOP}), 6-step fast "
          f"schedule (6 model calls); torch {torch.__version__}, {torch.get_num_threads()} threads; median of "
          f"{args.repeats} after a warm-up (training: median of {args.train_repeats} Adam steps, batch 16 x 15,872 "
          "samples)\n")
    print("| model | precision | s per 1 s of audio (median) | best | real-time factor | vs lmnt fp32 | "
          "train steps/s |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        tr = f"{r['train']:.3f}" if "train" in r else "-"
        print(f"| {r['name']} | {r['prec']} | {r['med']:.3f} | {r['best']:.3f} | {r['med'] / audio_s:.3f} | "
              f"{base / r['med']:.1f}x | {tr} |")
    print(f"\nOne model call vs lmnt fp32 on the same input: ours fp32 max |diff| {err32:.1e}; relative L2 error "
          f"under bf16 autocast: ours {rel16:.4f}, lmnt {rel16_lmnt:.4f}.")
    print(f"GEMM floor: the 6 calls + conditioner are {floor['gflop']:.0f} GFLOP of matrix multiplies; at this CPU's "
          f"measured rate on the model's main GEMM ({floor[torch.float32][0]:.0f} GFLOP/s fp32, "
          f"{floor[torch.bfloat16][0]:.0f} bf16) that alone is a real-time factor of "
          f"{floor[torch.float32][1]:.2f} (fp32) / {floor[torch.bfloat16][1]:.2f} (bf16); the gate's sigmoids "
          f"(fp32, in place) add {floor['gate']:.2f}: floor {floor[torch.bfloat16][1] + floor['gate']:.2f} in bf16.")
    others = [r[k] for r in rows for k in ("others", "others_train") if k in r and r[k] == r[k]]
    if others:
        print(f"Other processes' share of the {os.cpu_count()} cores during the timed runs: at most "
              f"{100 * max(others):.0f}% (per row, vocode/train: "
              + ", ".join(f"{100 * r['others']:.0f}%" + (f"/{100 * r['others_train']:.0f}%" if "others_train" in r
                                                         else "") for r in rows) + ")"
              + (" -- the machine was shared; those rows are slower than on an idle machine." if max(others) > 0.05
                 else "."))


if __name__ == "__main__":
    main()
