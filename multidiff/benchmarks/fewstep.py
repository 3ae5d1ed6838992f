"""Wall time to one sample at the teacher's quality: distilled few-step students vs the peers' many-step samplers.

Images: one 16x16 digit (batch 1) from the image_digits teacher and its progressive / consistency
students (finished runs, through the same `generate` that `multidiff sample` uses), beside diffusers'
DDIMPipeline on a UNet2DModel of the teacher's size (its channels, blocks and attention placement;
forward GFLOPs printed; random weights: only its time is used). Each row's quality is the FD and
class coverage of that run's own evaluate stage (eval.json) at the same sampler and steps, so a row
says "this quality, in this time". The diffusers row runs the teacher's DDIM step count: our
teacher's DDIM at those steps is the quality that pipeline would have with these weights.

Speech: 1 s of 22.05 kHz audio from DiffWave BASE (64 channels, 30 layers): lmnt-com/diffwave's
6-step fast inference (its fastest) vs ours on a 1- and 2-step progressive student's levels (the
sampler and levels `multidiff vocode` uses for such a student), same weights, bf16 autocast for both.
The student's quality at recipe size is diffwave_espeak's table (recipes/diffwave_espeak/README.md).

Times are medians after a warm-up, each timed run waiting for an idle CPU first.
Run: `multidiff bench fewstep --teacher runs/image_digits --student runs/image_digits_pd` (needs the
`bench` extra); the image part is skipped without --teacher.
"""
from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import torch

from .. import kinds
from ..core.samplers import default_spacing, nfe
from ..models.diffwave import DiffWave
from ..pipelines.generate import generate
from .diffwave_speed import FRAMES, HOP, SR, Timer, _lmnt_model, lmnt_vocode, ours_vocode
from .throughput_harness import cpu_name, forward_gflops

CPU = torch.device("cpu")


def load(run_dir: str, bf16: bool):
    sections = kinds.open_run(run_dir)
    kind = kinds.kind_of(sections)
    return kind.model(run_dir, sections, kind.roles(sections)[0], CPU, bf16).load()


def quality(run_dir: str, sampler: str, steps: int) -> dict:
    """The run's evaluate-stage row for sampler:steps (fd, coverage), or {} when it has none."""
    try:
        rows = json.loads((Path(run_dir) / "eval.json").read_text())["rows"]
    except (OSError, ValueError, KeyError):
        return {}
    return next((r for r in rows if r.get("sampler") == sampler and r.get("steps") == steps), {})


def diffusers_like(model_cfg, prediction: str):
    """diffusers' DDIMPipeline on a UNet2DModel with our U-Net's channels, blocks and attention levels."""
    from diffusers import DDIMPipeline, DDIMScheduler, UNet2DModel

    size, chans = model_cfg.image_size, [model_cfg.base_channels * m for m in model_cfg.channel_mult]
    attn = [size // 2 ** i in model_cfg.attention_resolutions for i in range(len(chans))]
    unet = UNet2DModel(sample_size=size, in_channels=model_cfg.in_channels, out_channels=model_cfg.in_channels,
                       block_out_channels=tuple(chans), layers_per_block=model_cfg.num_res_blocks,
                       down_block_types=tuple("AttnDownBlock2D" if a else "DownBlock2D" for a in attn),
                       up_block_types=tuple("AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attn)),
                       attention_head_dim=chans[0] // model_cfg.num_heads * 2, norm_num_groups=model_cfg.norm_groups)
    sched = DDIMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2",
                          prediction_type={"v": "v_prediction", "eps": "epsilon", "x0": "sample"}[prediction])
    pipe = DDIMPipeline(unet=unet.eval(), scheduler=sched)
    pipe.set_progress_bar_config(disable=True)
    return pipe, unet


def image_rows(args, timer) -> list[dict]:
    bf16 = args.precision == "bf16"
    teacher = load(args.teacher, bf16)
    s = teacher.sections
    specs = [(args.teacher, teacher, "teacher", s["sample"].sampler, s["sample"].steps),
             (args.teacher, teacher, "teacher", "ddim", args.teacher_steps)]
    for d in args.student:
        st = load(d, bf16)
        cfg = st.modality.sample_settings(st.sections)
        specs.append((d, st, f"{st.sections['distill'].method} student", cfg.sampler, cfg.steps))
    rows = []
    for run_dir, trained, what, sampler, steps in specs:
        sample_cfg = trained.sections["sample"]
        kw = {"sampler": sampler, "steps": steps, "spacing": default_spacing(sampler)}
        g = torch.Generator().manual_seed(0)
        times = timer(lambda: generate(trained, 1, sample_cfg, CPU, bf16, seed=int(torch.randint(9999, (1,), generator=g)),
                                       progress=False, sampler_kw=kw), args.repeats)
        q = quality(run_dir, sampler, steps)
        guided = trained.num_classes > 0 and sample_cfg.guidance_scale != 1.0
        rows.append(dict(name=f"multidiff {what} ({run_dir})", how=f"{sampler}:{steps}" + (" + CFG" if guided else ""),
                         calls=nfe(sampler, steps) * (2 if guided else 1), sec=statistics.median(times),
                         fd=q.get("fd"), coverage=q.get("coverage")))
    pipe, unet = diffusers_like(s["model"], s["diffusion"].prediction)
    size, ch = s["model"].image_size, s["model"].in_channels
    ours_gf = forward_gflops(teacher.model, lambda m, x, t: m(x, t, y=torch.zeros(len(x), dtype=torch.long)),
                             torch.randn(2, ch, size, size))
    theirs_gf = forward_gflops(unet, lambda m, x, t: m(x, t).sample, torch.randn(2, ch, size, size))
    g = torch.Generator().manual_seed(0)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        times = timer(lambda: pipe(batch_size=1, num_inference_steps=args.teacher_steps, generator=g, output_type="np"),
                      args.repeats)
    q = quality(args.teacher, "ddim", args.teacher_steps)
    rows.append(dict(name="diffusers DDIMPipeline, UNet2DModel of the teacher's size", how=f"ddim:{args.teacher_steps}",
                     calls=args.teacher_steps, sec=statistics.median(times), fd=q.get("fd"), coverage=q.get("coverage"),
                     note=f"forward {theirs_gf:.3f} GFLOP/img vs ours {ours_gf:.3f}"))
    return rows


def speech_rows(args, timer) -> list[dict]:
    lmnt = _lmnt_model().eval()
    ours = DiffWave().eval()
    ours.load_state_dict(lmnt.state_dict())
    mel = torch.rand(1, 80, FRAMES, generator=torch.Generator().manual_seed(1))
    bf16 = args.precision == "bf16"
    g = torch.Generator().manual_seed(3)
    rows = [dict(name="lmnt diffwave 0.1.7 (fast inference)", how="6-step fast schedule", calls=6,
                 sec=statistics.median(timer(lambda: lmnt_vocode(lmnt, mel.clone(), bf16, g), args.repeats)))]
    rows.append(dict(name="multidiff (lmnt's fast schedule)", how="6-step fast schedule", calls=6,
                     sec=statistics.median(timer(lambda: ours_vocode(ours, mel.clone(), bf16, g), args.repeats))))
    for n in (2, 1):
        rows.append(dict(name=f"multidiff {n}-step progressive student", how=f"ddim:{n}", calls=n,
                         sec=statistics.median(timer(lambda: ours_vocode(ours, mel.clone(), bf16, g, student_steps=n),
                                                     args.repeats))))
    return rows


def _table(rows: list[dict], base: dict, quality_cols: bool, per: str) -> str:
    head = "| model | sampler:steps | model calls | " + ("FD | coverage | " if quality_cols else "") + \
           f"s {per} (median) | speed-up vs {base['name'].split(',')[0]} |"
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        q = (f"{r['fd']:.2f} | {r['coverage']:.2f} | " if r.get("fd") is not None else "- | - | ") if quality_cols else ""
        lines.append(f"| {r['name']} | {r['how']} | {r['calls']} | {q}{r['sec']:.4f} | {base['sec'] / r['sec']:.1f}x |")
    return "\n".join(lines)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="multidiff bench fewstep", description=__doc__.splitlines()[0])
    ap.add_argument("--teacher", help="a finished image run (e.g. runs/image_digits); without it, speech only")
    ap.add_argument("--student", action="append", default=[], help="a student of --teacher (repeatable)")
    ap.add_argument("--teacher-steps", type=int, default=50, help="the DDIM steps of the teacher and diffusers rows")
    ap.add_argument("--repeats", type=int, default=7, help="timed samples per row (median reported)")
    ap.add_argument("--precision", choices=("bf16", "fp32"), default="bf16")
    ap.add_argument("--speech", action=argparse.BooleanOptionalAction, default=True,
                    help="the DiffWave rows (--no-speech: images only)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--wait-idle", type=float, default=30.0,
                    help="before each timed run, wait up to this many seconds for an idle CPU (0: don't)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    timer = Timer(args.wait_idle)
    print(f"{cpu_name()}, torch {torch.__version__}, {torch.get_num_threads()} threads, {args.precision}; "
          f"median of {args.repeats} after a warm-up\n")
    if args.teacher:
        rows = image_rows(args, timer)
        print("One 16x16 digit (batch 1); FD / coverage: each run's own evaluate stage at that sampler and steps\n")
        print(_table(rows, rows[-1], True, "per image"))
        print(f"\n{rows[-1]['note']}; diffusers' row: random weights of that size, its quality is our teacher's DDIM "
              "at the same steps.\n")
    if not args.speech:
        return
    rows = speech_rows(args, timer)
    audio_s = HOP * FRAMES / SR
    for r in rows:
        r["sec"] /= audio_s
    print("DiffWave BASE (64 ch, 30 layers), 1 s of 22.05 kHz audio; s per 1 s of audio = real-time factor\n")
    print(_table(rows, rows[0], False, "per 1 s of audio"))


if __name__ == "__main__":
    main()
