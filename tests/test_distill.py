"""Few-step students (issue 15): `multidiff distill` makes an ordinary run that samples, completes and vocodes
in 1-4 steps; progressive distillation beats its teacher at the student's steps, guidance is distilled in, a
consistency student samples in 1 and 2 steps, distillation resumes exactly and runs under DDP, a recipe's
[distill] steps add a stage, and bad requests are one line each. Tiny models on the sines plug-in modality
(tests/helpers/sines.py), a tiny image_digits run and a tiny DiffWave vocoder."""
import json
import math
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from multidiff import kinds
from multidiff.cli import main
from multidiff.core import Schedule, sample
from multidiff.core.distillation import grid_alpha_bar, grid_timesteps, progressive_timesteps
from multidiff.engine.adversarial import AdversarialTerm
from multidiff.engine.checkpoint import latest_checkpoint
from multidiff.engine.runs import load_run
from multidiff.engine.trainer import Trainer
from multidiff.nn.conditioning import null_condition

from helpers.ports import torchrun
from helpers.sines import SinesData, SinesDataset, write_recipe

pytestmark = pytest.mark.usefixtures("one_thread")
ROOT = Path(__file__).parent.parent
ENV = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'tests'}", "OMP_NUM_THREADS": "1"}
# a class-conditional teacher of sums of sines (4 classes, class dropout 0.1), good enough to sample in 20 steps
TEACHER = {"data": {"n": 256, "length": 64}, "model": {"channels": 32, "layers": 4, "num_classes": 4},
           "diffusion": {"schedule": "cosine", "timesteps": 200, "prediction": "v"},
           "train": {"steps": 300, "batch_size": 32, "lr": 2e-3, "warmup_steps": 20, "checkpoint_every": 300,
                     "log_every": 50, "threads": 1},
           "sample": {"steps": 10, "n": 8}}
ROUNDS = ["distill.start_steps=8", "distill.round_steps=150"]  # 8 -> 4 -> 2 teacher DDIM steps


def cli(*args):
    assert main([str(a) for a in args]) == 0


def refused(capsys, *args) -> str:
    """The one line a refused command prints (exit code 2)."""
    capsys.readouterr()
    assert main([str(a) for a in args]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    return err


def trained(run_dir):
    sections = load_run(run_dir, kinds.schema_of)
    kind = kinds.kind_of(sections)
    return kind.model(run_dir, sections, kind.roles(sections)[0]).load()


def rms(a, b) -> float:
    return float((a - b).square().mean().sqrt())


def low_frequency_share(x: torch.Tensor, cycles: int = 5) -> float:
    """~1 for these sums of 1-4-cycle sines, ~0.16 for white noise (as in test_extending.py)."""
    x = x.reshape(len(x), -1).numpy()
    p = np.abs(np.fft.rfft(x - x.mean(-1, keepdims=True), axis=-1)) ** 2
    return float((p[..., 1:cycles + 1].sum(-1) / p[..., 1:].sum(-1)).mean())


Z = torch.randn(128, 1, 64, generator=torch.Generator().manual_seed(0))
Y = {"y": torch.arange(128) % 4}


def student_samples(run_dir, steps: int, seed: int = 1) -> torch.Tensor:
    s = trained(run_dir)
    kw = s.modality.sampling(s.sections, s.modality.sample_settings(s.sections).sampler, steps)
    return s.sample(s.denoiser("cpu", False), Z, torch.Generator().manual_seed(seed), Y, "cpu", **kw)


def teacher_grid(teacher, steps: int, guidance: float = 1.0) -> torch.Tensor:
    """The teacher's DDIM on the students' levels (its own ODE, finely solved for many steps)."""
    den, sched = teacher.denoiser("cpu", False), teacher.sections["diffusion"].build_schedule()
    extra = {"guidance_scale": guidance, "uncond": null_condition(Y, 4)} if guidance != 1 else {}
    return sample(den, Z, "ddim", timesteps=progressive_timesteps(sched, steps), cond=Y, **extra)


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("distill")
    cli("train", write_recipe(tmp / "sines.toml", TEACHER), "--out", tmp / "teacher")
    return tmp


@pytest.fixture(scope="module")
def student2(teacher):
    cli("distill", teacher / "teacher", "--steps", 2, "--out", teacher / "s2", *ROUNDS)
    return teacher / "s2"


# ---- the math ---------------------------------------------------------------------------------------------------
def test_the_progressive_target_makes_one_ddim_step_land_on_two():
    """x0-space target: one DDIM step from z_t with it reaches what two teacher steps reached, for any levels, and
    the levels of 2N steps are the N-step levels and their midpoints."""
    from multidiff.core import Schedule
    from multidiff.core.denoiser import Estimate
    from multidiff.core.distillation import ddim_move, progressive_target

    g = torch.Generator().manual_seed(0)
    z_t, z_s = (torch.randn(5, 1, 8, generator=g, dtype=torch.float64) for _ in range(2))
    ab_t = torch.tensor([0.0, 0.1, 0.3, 0.5, 0.9], dtype=torch.float64)
    ab_s = torch.tensor([0.2, 0.5, 1.0, 0.7, 0.95], dtype=torch.float64)
    x = progressive_target(z_t, z_s, ab_t, ab_s)
    eps = (z_t - ab_t.sqrt().view(-1, 1, 1) * x) / (1 - ab_t).sqrt().view(-1, 1, 1)
    torch.testing.assert_close(ddim_move(Estimate(x, eps), ab_s, z_t), z_s)
    sched = Schedule.cosine(200)
    assert torch.equal(progressive_timesteps(sched, 8)[::2], progressive_timesteps(sched, 4))
    assert progressive_timesteps(sched, 1).tolist() == [199.0]


def test_the_dpmpp_2s_teacher_step_follows_the_exact_ode_better_than_ddim():
    """On Gaussian data the probability-flow ODE is closed form ((x - mean) scales by sqrt(std^2 + sigma^2) in
    x / alpha): a DPM-Solver++(2S) step of the exact denoiser over a large gap lands nearer it than a DDIM step
    (second order against first; a Heun step in sigma, tried first, lands 7x farther than DDIM on the first gap);
    it is the DDIM step where it ends on clean data or starts at pure noise."""
    from multidiff.core import Denoiser, Schedule
    from multidiff.core.distillation import ddim_move, dpmpp_2s_move
    from multidiff.core.oracle import GaussianOracle

    sched = Schedule.cosine(1000)
    oracle = GaussianOracle(sched, mean=0.3, std=0.5, prediction="v")
    den = Denoiser.of(oracle, oracle.objective)
    t_from = torch.tensor([950.0, 700.0, 400.0, 999.0, 600.0], dtype=torch.float64)
    t_to = torch.tensor([600.0, 300.0, 100.0, 800.0, 0.0], dtype=torch.float64)
    ab_from, ab_to = sched.alpha_bar_at(t_from), sched.alpha_bar_at(t_to)
    ab_from[3], ab_to[4] = 0.0, 1.0  # pure noise; clean data
    z = torch.randn(5, 1, 64, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    est = den.vp(z, t_from, ab_from)
    two = dpmpp_2s_move(est, lambda u, ab: den(u / ab.sqrt().view(-1, 1, 1), ((1 - ab) / ab).sqrt()), z, ab_from,
                        ab_to)
    ddim = ddim_move(est, ab_to, z)
    sig2 = lambda ab: ((1 - ab) / ab).view(-1, 1, 1)  # noqa: E731
    exact = ab_to.sqrt().view(-1, 1, 1) * (0.3 + (z / ab_from.sqrt().view(-1, 1, 1) - 0.3)
                                           * ((0.25 + sig2(ab_to)) / (0.25 + sig2(ab_from))).sqrt())
    for i in range(3):
        err_2s, err_d = rms(two[i], exact[i]), rms(ddim[i], exact[i])
        assert err_2s < 0.6 * err_d, (i, err_2s, err_d)  # measured: 0.50, 0.27, 0.27 of DDIM's error
    assert torch.equal(two[3:], ddim[3:])


def test_a_consistency_model_is_the_identity_at_sigma_min_and_samples_only_with_its_sampler():
    from multidiff.core import Denoiser, Schedule, nfe
    from multidiff.core.distillation import ConsistencyObjective, consistency_levels, consistency_range
    from multidiff.core.objectives import build_objective

    sched = Schedule.cosine(200)
    lo, hi = consistency_range(sched)
    net = lambda x, t, **c: torch.zeros_like(x)  # noqa: E731  (v = 0: the clean estimate is x * c_in^2)
    plain = Denoiser.of(net, build_objective(sched, "v"))
    cm = Denoiser.of(net, ConsistencyObjective(build_objective(sched, "v"), lo))
    x = torch.randn(3, 1, 8, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(cm(x, lo), x)                      # f(x, sigma_min) = x
    # f = c x + (1 - c) D: Song et al.'s c_skip on a raw EDM network, c_cm = 0.25 / ((sigma - sigma_min)^2 + 0.25),
    # around a denoiser that holds EDM's c_edm = 0.25 / (sigma^2 + 0.25): c = (c_cm - c_edm) / (1 - c_edm)
    for sigma in (lo * 2, 0.5, 70.0):
        c_cm, c_edm = 0.25 / ((sigma - lo) ** 2 + 0.25), 0.25 / (sigma**2 + 0.25)
        c = (c_cm - c_edm) / (1 - c_edm)
        torch.testing.assert_close(cm(x, sigma), c * x + (1 - c) * plain(x, sigma))
    # ~1 just above sigma_min, ~0 (f = the teacher's D) from the middle levels up
    c_of = cm.objective.c_skip
    assert c_of(lo * 1.001) > 0.99 and c_of(0.7) < 0.02 and c_of(70.0) < 1e-6 and c_of(float("inf")) == 0.0
    assert hi == 80.0 and len(consistency_levels(sched, 2)) == 2 and float(consistency_levels(sched, 1)[0]) == hi
    assert nfe("consistency", 2) == 2
    sample(cm, x, "consistency", sigmas=consistency_levels(sched, 2), generator=torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="consistency model: use sampler 'consistency'"):
        sample(cm, x, "ddim", steps=2)
    with pytest.raises(ValueError, match="samples consistency models"):
        sample(plain, x, "consistency", steps=2)


# ---- progressive distillation ---------------------------------------------------------------------------------
def test_a_2_step_student_beats_its_teachers_2_steps(teacher, student2):
    """From the same noise and labels, the student's 2 steps land much nearer the teacher's 128-step solution than
    the teacher's own 2 DDIM steps do (measured: 0.08 against 0.25); so does the 4-step round, which learned the
    teacher's 8 steps (0.07 against 0.12; the teacher's 8 steps: 0.06)."""
    t = trained(teacher / "teacher")
    best = teacher_grid(t, 128)
    for steps, run, ratio in ((2, student2, 0.6), (4, student2 / "rounds/steps_4", 0.8)):
        ours, theirs = rms(student_samples(run, steps), best), rms(teacher_grid(t, steps), best)
        assert ours < ratio * theirs, (steps, ours, theirs)


def test_a_first_round_on_the_teachers_second_order_steps(teacher, student2):
    """distill.teacher_solver = dpmpp_2s: the first round learns two DPM-Solver++(2S) steps of its teacher instead
    of two DDIM steps, so its 4-step student lands nearer the teacher's ODE (its 128-step solution) than the same
    round learning DDIM (student2's first round: 8 -> 4, 150 steps); it is another student (fingerprint)."""
    cli("distill", teacher / "teacher", "--steps", 4, "--out", teacher / "s4_2s", "distill.start_steps=8",
        "distill.round_steps=150", "distill.teacher_solver=dpmpp_2s", "--skip", "sample")
    assert load_run(teacher / "s4_2s", kinds.schema_of)["distill"].teacher_solver == "dpmpp_2s"
    best = teacher_grid(trained(teacher / "teacher"), 128)
    ours = rms(student_samples(teacher / "s4_2s", 4), best)
    ddim = rms(student_samples(student2 / "rounds/steps_4", 4), best)
    assert ours < 0.85 * ddim, (ours, ddim)  # measured: 0.052 against 0.073 (the teacher's 8 DDIM steps: 0.06)
    prints = [json.loads((latest_checkpoint(run / "checkpoints") / "state.json").read_text())["fingerprint"]
              for run in (teacher / "s4_2s", student2 / "rounds/steps_4")]
    assert prints[0] != prints[1]


def test_an_adversarial_round_trains_a_discriminator_on_its_teachers_features(teacher, student2, capsys):
    """distill.adversarial: the round's student also fools a discriminator made from its teacher's network (the GAN
    terms and the distillation loss logged beside the total, the discriminator -- a trained copy of the network
    and a head -- and its optimizer in each checkpoint); the distillation loss keeps it on its teacher's ODE -- as near the 128-step solution as the plain round's student -- and its samples stay sums of
    few-cycle sines; it is another student (fingerprint). Consistency distillation refuses the key."""
    cli("distill", teacher / "teacher", "--steps", 4, "--out", teacher / "s4_adv", "distill.start_steps=8",
        "distill.round_steps=150", "distill.adversarial=0.3", "--skip", "sample")
    rows = [json.loads(ln) for ln in (teacher / "s4_adv/metrics.jsonl").read_text().splitlines()]
    assert all({"d_loss", "g_loss", "g_weight", "distill_loss"} <= row.keys() for row in rows)
    assert rows[-1]["d_loss"] < 0.999, rows[-1]  # it learns (a head on frozen features stayed at chance: 1.000)
    ckpt = latest_checkpoint(teacher / "s4_adv/checkpoints")
    extra = load_file(str(ckpt / "extra.safetensors"))
    assert any(k.startswith("disc.backbone.") for k in extra) and any(k.startswith("disc.head.") for k in extra)
    assert any(k.startswith("disc_opt.") for k in extra)
    best = teacher_grid(trained(teacher / "teacher"), 128)
    ours, plain = student_samples(teacher / "s4_adv", 4), student_samples(student2 / "rounds/steps_4", 4)
    assert rms(ours, best) < 1.2 * rms(plain, best), (rms(ours, best), rms(plain, best))
    assert low_frequency_share(ours) > 0.9
    prints = [json.loads((latest_checkpoint(run / "checkpoints") / "state.json").read_text())["fingerprint"]
              for run in (teacher / "s4_adv", student2 / "rounds/steps_4")]
    assert prints[0] != prints[1]
    err = refused(capsys, "distill", teacher / "teacher", "--method", "consistency", "--steps", 2, "--out",
                  teacher / "c_adv", "distill.adversarial=0.3")
    assert "applies to progressive distillation" in err


def test_the_gan_term_can_judge_the_last_jump_or_the_students_own_samples_at_an_lr_of_its_own(teacher, tmp_path, monkeypatch):
    """distill.adversarial_jumps = "last": the discriminator sees only the micro-batch's samples at its lowest jump
    (here always the last, to clean data: 32 samples over 4 jumps), renoised within that jump's levels, so it costs
    a quarter of "all"; "sampled": a quarter of the batch's clips sampled by the student itself, judged within
    the same levels, or (distill.adversarial_noise) a share of them. distill.adversarial_lr is the head's lr, its
    network copy's a tenth of it. Each is another student (fingerprint)."""
    seen = []
    generator_loss = AdversarialTerm.generator_loss

    def spy(self, fake, real, **kw):
        seen.append((len(fake[0]), fake[1].clone(), [g["lr"] for g in self.opt.param_groups]))
        assert torch.equal(fake[1], real[1]) and len(real[0]) == len(fake[0]) == len(fake[3]["y"])
        return generator_loss(self, fake, real, **kw)
    monkeypatch.setattr(AdversarialTerm, "generator_loss", spy)
    cli("distill", teacher / "teacher", "--steps", 4, "--out", tmp_path / "last", "distill.start_steps=8",
        "distill.round_steps=6", "distill.adversarial=0.3", "distill.adversarial_jumps=last",
        "distill.adversarial_lr=1e-3", "--skip", "sample")
    last_level = grid_timesteps(load_run(teacher / "teacher", kinds.schema_of)["diffusion"].build_schedule(), 8)[1]
    assert len(seen) == 6 and all(0 < n < 16 for n, _, _ in seen)  # ~8 of 32
    assert all(float(u.max()) <= last_level for _, u, _ in seen), [u for _, u, _ in seen]
    assert all(lrs == pytest.approx([1e-3, 1e-4]) for _, _, lrs in seen)
    rows = [json.loads(ln) for ln in (tmp_path / "last/metrics.jsonl").read_text().splitlines()]
    assert all("d_loss" in row for row in rows)
    cli("distill", teacher / "teacher", "--steps", 4, "--out", tmp_path / "all", "distill.start_steps=8",
        "distill.round_steps=6", "distill.adversarial=0.3", "--skip", "sample")
    assert len(seen) == 12 and all(n == 32 for n, _, _ in seen[6:])
    assert seen[6][2] == pytest.approx([TEACHER["train"]["lr"] / 2, TEACHER["train"]["lr"] / 20])  # the round's lr
    # "sampled": a quarter of the batch (8 of 32) generated by the student itself, judged near clean data
    cli("distill", teacher / "teacher", "--steps", 4, "--out", tmp_path / "sampled", "distill.start_steps=8",
        "distill.round_steps=6", "distill.adversarial=0.3", "distill.adversarial_jumps=sampled", "--skip", "sample")
    assert len(seen) == 18 and all(n == 8 for n, _, _ in seen[12:])
    assert all(float(u.max()) <= last_level for _, u, _ in seen[12:])
    assert max(float(u.max()) for _, u, _ in seen[12:]) > last_level / 4
    # distill.adversarial_noise = 0.25: judged only in the quarter of the way from clean data to that midpoint
    cli("distill", teacher / "teacher", "--steps", 4, "--out", tmp_path / "sampled_q", "distill.start_steps=8",
        "distill.round_steps=6", "distill.adversarial=0.3", "distill.adversarial_jumps=sampled",
        "distill.adversarial_noise=0.25", "--skip", "sample")
    assert len(seen) == 24 and all(float(u.max()) <= last_level / 4 for _, u, _ in seen[18:])
    prints = [json.loads((latest_checkpoint(run / "checkpoints") / "state.json").read_text())["fingerprint"]
              for run in (tmp_path / "last", tmp_path / "all", tmp_path / "sampled", tmp_path / "sampled_q")]
    assert len(set(prints)) == 4


@pytest.mark.parametrize("power", [1.0, 1.5, 2.0])
def test_progressive_levels_of_any_power_nest(power):
    """distill.level_power: the 2N-step levels are the N-step levels and one between each two, for any power (a
    chain's rounds halve each other's levels); power 1 is the even grid; the grid's abar is the levels' abar."""
    sched = Schedule.cosine(200)
    four, eight = progressive_timesteps(sched, 4, power), progressive_timesteps(sched, 8, power)
    torch.testing.assert_close(eight[::2], four)
    torch.testing.assert_close(grid_alpha_bar(sched, 8, power)[1:].flip(0), sched.alpha_bar_at(eight))
    if power == 1.0:
        torch.testing.assert_close(four, torch.tensor([199.0, 149.25, 99.5, 49.75], dtype=torch.float64))
    else:  # shorter jumps near clean data
        assert (four[-1] < 49.75) and (four[-2] - four[-1]) < (four[0] - four[1])


def test_a_student_on_uneven_levels_samples_on_them_and_its_chain_keeps_them(teacher, student2, capsys):
    cli("distill", teacher / "teacher", "--steps", 4, "--out", teacher / "s4_p2", "distill.start_steps=8",
        "distill.round_steps=20", "distill.level_power=2", "--skip", "sample")
    s = trained(teacher / "s4_p2")
    kw = s.modality.sampling(s.sections, "ddim", 4)
    torch.testing.assert_close(kw["timesteps"], progressive_timesteps(s.sections["diffusion"].build_schedule(), 4, 2.0))
    prints = [json.loads((latest_checkpoint(run / "checkpoints") / "state.json").read_text())["fingerprint"]
              for run in (teacher / "s4_p2", student2 / "rounds/steps_4")]
    assert prints[0] != prints[1]
    err = refused(capsys, "distill", teacher / "s4_p2", "--steps", 2, "--out", teacher / "s2_p1",
                  "distill.level_power=1")
    assert "level_power = 2.0" in err and "drop distill.level_power=1" in err
    err = refused(capsys, "distill", teacher / "s4_p2", "--steps", 2, "--out", teacher / "s2_2s",
                  "distill.teacher_solver=dpmpp_2s")  # the chain's first round was DDIM: a student has no ODE to solve
    assert "teacher_solver = ddim" in err and "drop distill.teacher_solver=dpmpp_2s" in err


def test_a_student_is_an_ordinary_run_of_its_teachers_kind(teacher, student2, tmp_path, capsys):
    cfg = load_run(student2, kinds.schema_of)
    d = cfg["distill"]
    assert cfg["recipe"].kind == "sines" and d.method == "progressive" and d.steps == [2]
    assert d.teacher == str(student2 / "rounds/steps_4") and d.teacher_checkpoint.startswith("step_0000150:")
    assert (cfg["sample"].sampler, cfg["sample"].steps, cfg["model"].class_dropout) == ("ddim", 2, 0.0)
    assert load_run(student2 / "rounds/steps_4", kinds.schema_of)["distill"].teacher == str(teacher / "teacher")
    state = json.loads((latest_checkpoint(student2 / "checkpoints") / "state.json").read_text())
    assert "+student:" in state["fingerprint"]  # the teacher's checkpoint is part of what the weights are
    # multidiff sample / inpaint with no option: 2 steps on the student's levels
    cli("sample", student2, "--n", 3, "--out", tmp_path / "x.npy")
    x = np.load(tmp_path / "x.npy")
    assert x.shape == (3, 64) and np.isfinite(x).all()
    signal = SinesDataset(SinesData(n=256, length=64), "test").x[0, 0].numpy()
    np.save(tmp_path / "signal.npy", signal)
    for method in ("replace", "reconstruction", "repaint"):
        cli("inpaint", student2, "--input", tmp_path / "signal.npy", "--gap", "20:36", "--method", method,
            "--out", tmp_path / f"{method}.npy")
        out = np.load(tmp_path / f"{method}.npy")
        keep = np.r_[0:20, 36:64]
        assert np.array_equal(out[keep], signal[keep]) and np.isfinite(out).all()
    # its sample stage ran with its own steps
    assert (student2 / "stages/sample.json").is_file() and np.load(student2 / "samples/final.npy").shape == (8, 64)
    # fresh noise between its jumps (--eta): DDIM with that eta on its own levels, the same clean estimates
    s = trained(student2)
    kw = s.modality.sampling(s.sections, "ddim", 2, eta=1.0)
    assert kw["eta"] == 1.0 and torch.equal(kw["timesteps"], s.modality.sampling(s.sections, "ddim", 2)["timesteps"])
    den, g = s.denoiser("cpu", False), lambda: torch.Generator().manual_seed(5)
    stochastic = s.sample(den, Z, g(), Y, "cpu", **kw)
    assert torch.equal(stochastic, sample(den, Z, "ddim", timesteps=kw["timesteps"], eta=1.0, cond=Y, generator=g()))
    assert rms(stochastic, student_samples(student2, 2)) > 0.05
    cli("sample", student2, "--eta", 1, "--n", 2, "--out", tmp_path / "eta.npy")
    # another step count is one clear refusal naming the one it has
    err = refused(capsys, "sample", student2, "--steps", 4, "--out", tmp_path / "y.npy")
    assert "distilled for 2 sampling steps" in err and "--steps 2" in err
    assert "samples with ddim" in refused(capsys, "sample", student2, "--sampler", "heun", "--out", tmp_path / "y.npy")
    # distilling a student further halves its own steps
    cli("distill", student2, "--steps", 1, "--out", tmp_path / "s1", "distill.round_steps=4")
    assert load_run(tmp_path / "s1", kinds.schema_of)["distill"].start_steps == 2


def test_guidance_is_distilled_into_the_class_conditional_student(teacher, student2):
    """At guidance 3 the guided and unguided teachers differ; the student, sampled without guidance, lands near
    the guided teacher (its own 2 steps against the teacher's 128), nearer than the unguided teacher and its student."""
    cli("distill", teacher / "teacher", "--steps", 2, "--out", teacher / "guided", *ROUNDS, "distill.guidance=3")
    cfg = load_run(teacher / "guided", kinds.schema_of)
    assert cfg["distill"].guidance == 3.0 and cfg["sample"].guidance_scale == 1.0
    t = trained(teacher / "teacher")
    guided, plain = teacher_grid(t, 128, guidance=3.0), teacher_grid(t, 128)
    ours = rms(student_samples(teacher / "guided", 2), guided)
    # measured: 0.18 against 0.34 (the unguided teacher) and 0.37 (the unguided student)
    assert ours < 0.7 * rms(plain, guided), (ours, rms(plain, guided))
    assert ours < 0.7 * rms(student_samples(student2, 2), guided)


# ---- consistency distillation ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def consistency_student(teacher):
    cli("distill", teacher / "teacher", "--method", "consistency", "--steps", "1,2", "--out", teacher / "cd",
        "distill.round_steps=600")
    return teacher / "cd"


def test_a_consistency_student_samples_in_1_and_2_steps(teacher, consistency_student, tmp_path):
    cfg = load_run(teacher / "cd", kinds.schema_of)
    assert (cfg["distill"].steps, cfg["sample"].sampler, cfg["sample"].steps) == ([2, 1], "consistency", 2)
    real = SinesDataset(SinesData(n=256, length=64), "test").x
    one_step_teacher = teacher_grid(trained(teacher / "teacher"), 1)
    # measured: real 1.00, the teacher's single DDIM step 0.34 (a blur of amplitude 0.24), the student ~0.9
    assert low_frequency_share(real) > 0.99 and low_frequency_share(one_step_teacher) < 0.5
    for steps in (1, 2):
        x = student_samples(teacher / "cd", steps)
        assert low_frequency_share(x) > 0.8, steps
        assert float(x.abs().amax(-1).mean()) > float(one_step_teacher.abs().amax(-1).mean()) + 0.3
        cli("sample", teacher / "cd", "--steps", steps, "--n", 2, "--out", tmp_path / f"c{steps}.npy")
    np.save(tmp_path / "signal.npy", real[0, 0].numpy())
    cli("inpaint", teacher / "cd", "--input", tmp_path / "signal.npy", "--gap", "20:36", "--method", "replace",
        "--out", tmp_path / "filled.npy")
    assert np.array_equal(np.load(tmp_path / "filled.npy")[:20], real[0, 0, :20].numpy())


# ---- exact resume, DDP -----------------------------------------------------------------------------------------
class Stop(Exception):
    pass


@pytest.mark.parametrize("method, gan", [("progressive", []), ("consistency", []),
                                         ("progressive", ["distill.adversarial=0.3"]),
                                         ("progressive", ["distill.adversarial=0.3", "distill.adversarial_jumps=sampled"])])
def test_a_stopped_distillation_resumes_to_the_uninterrupted_weights(teacher, tmp_path, monkeypatch, capsys, method,
                                                                     gan):
    """Also with a GAN term: its discriminator and that one's optimizer (the extra file) resume exactly too."""
    args = ["--method", method, "--steps", 2, "distill.start_steps=8", "distill.round_steps=6",
            "train.checkpoint_every=2", "--skip", "sample", *gan]
    cli("distill", teacher / "teacher", "--out", tmp_path / "whole", *args)
    save = Trainer._checkpoint

    def stop_at_4(self, step):  # the last round stops right after its step-4 checkpoint, as a kill would
        save(self, step)
        if step == 4 and self.run_dir == tmp_path / "cut":
            raise Stop
    monkeypatch.setattr(Trainer, "_checkpoint", stop_at_4)
    with pytest.raises(Stop):
        main([str(a) for a in ["distill", teacher / "teacher", "--out", tmp_path / "cut", *args]])
    monkeypatch.setattr(Trainer, "_checkpoint", save)
    assert "pass --resume" in refused(capsys, "distill", teacher / "teacher", "--out", tmp_path / "cut", *args)
    # --resume alone continues the chain as it was started: its distill.* settings come from the stopped student
    resumed = [a for a in args if not str(a).startswith("distill.")]
    cli("distill", teacher / "teacher", "--out", tmp_path / "cut", *resumed, "--resume")
    if method == "progressive":  # (8 -> 4 -> 2, not the default 64 -> ... -> 2)
        assert sorted(p.name for p in (tmp_path / "cut/rounds").iterdir()) == ["steps_4"]
    a, b = latest_checkpoint(tmp_path / "whole/checkpoints"), latest_checkpoint(tmp_path / "cut/checkpoints")
    files = ["model", "ema"] + (["extra"] if method == "consistency" or gan else [])  # (+ target / discriminator)
    for name in files:
        wa, wb = load_file(str(a / f"{name}.safetensors")), load_file(str(b / f"{name}.safetensors"))
        assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa), name


@pytest.mark.parametrize("gan", [[], ["distill.adversarial=0.3"]])
def test_two_processes_distill_as_one(teacher, tmp_path, gan):
    """Also with a GAN term (its discriminator's gradients are averaged over the processes as the student's are)."""
    args = ["--steps", 2, "distill.start_steps=4", "distill.round_steps=6", "train.precision=fp32", "--skip", "sample",
            *gan]
    cli("distill", teacher / "teacher", "--out", tmp_path / "one", *args)
    cmd = [*torchrun(2), "-m", "multidiff.cli", "distill", teacher / "teacher", "--out", tmp_path / "two", *args]
    subprocess.run([str(c) for c in cmd], check=True, env=ENV, timeout=600, capture_output=True)
    a, b = latest_checkpoint(tmp_path / "one/checkpoints"), latest_checkpoint(tmp_path / "two/checkpoints")
    wa, wb = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    assert all(torch.allclose(wa[k], wb[k], atol=2e-5, rtol=0) for k in wa)  # gloo sums in another order
    if gan:
        da, db = load_file(str(a / "extra.safetensors")), load_file(str(b / "extra.safetensors"))
        assert da.keys() == db.keys() and all(torch.allclose(da[k], db[k], atol=2e-5, rtol=0) for k in da)
    assert json.loads((b / "state.json").read_text())["world_size"] == 2


# ---- a recipe stage, a real image kind, a vocoder ---------------------------------------------------------------
def test_image_digits_recipe_distills_its_students_after_training(tmp_path, capsys):
    """[distill] steps in a recipe: `multidiff train` adds a distill stage; the class-conditional digits teacher's
    guidance (1.5) goes into the students, which are sampled and evaluated on their own steps."""
    tiny = ["model.base_channels=16", "model.norm_groups=8", "model.channel_mult=[1, 2]", "model.num_res_blocks=1",
            "train.steps=4", "train.batch_size=16", "train.checkpoint_every=2", "train.warmup_steps=1",
            "train.log_every=1", "train.threads=1", "sample.n=10", "sample.steps=3", "eval.n=20", "eval.batch=10",
            'eval.table=["ddim:4"]', "eval.classifier_epochs=1", "distill.steps=[2, 1]", "distill.start_steps=4",
            "distill.round_steps=4"]
    cli("train", ROOT / "recipes/image_digits", "--out", tmp_path / "run", *tiny)
    students = tmp_path / "run/students/progressive"
    for run, steps in ((students, 1), (students / "rounds/steps_2", 2)):
        cfg = load_run(run, kinds.schema_of)
        assert (cfg["recipe"].kind, cfg["distill"].guidance, cfg["eval"].table) == ("image", 1.5, [f"ddim:{steps}"])
        ev = json.loads((run / "eval.json").read_text())
        assert [(r["sampler"], r["steps"]) for r in ev["rows"]] == [("ddim", steps)] and ev["rows"][0]["fd"] > 0
        assert (run / "samples/final.png").is_file()
    capsys.readouterr()
    cli("train", ROOT / "recipes/image_digits", "--out", tmp_path / "run", *tiny)
    assert capsys.readouterr().out.count("done already") == 5  # prepare, train, sample, evaluate, distill
    cli("sample", students, "--n", 10, "--class", 3, "--out", tmp_path / "threes.png")
    # multidiff bench fewstep: the teacher's rows, the student's with its own evaluation's FD, diffusers' DDIM
    cli("bench", "fewstep", "--teacher", tmp_path / "run", "--student", students, "--teacher-steps", 4,
        "--repeats", 1, "--wait-idle", 0, "--no-speech", "--threads", 1)
    table = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ")]
    fd1 = json.loads((students / "eval.json").read_text())["rows"][0]["fd"]
    assert [line.split(" | ")[1] for line in table[1:]] == ["dpmpp_2m:3 + CFG", "ddim:4 + CFG", "ddim:1", "ddim:4"]
    assert table[3].split(" | ")[2:4] == ["1", f"{fd1:.2f}"] and table[4].endswith("| 1.0x |")


def test_the_fewstep_benchmarks_diffusers_model_is_the_digits_teachers_size():
    from multidiff.benchmarks.fewstep import diffusers_like
    from multidiff.benchmarks.throughput_harness import forward_gflops
    from multidiff.models.unet2d import UNet2D

    cfg = load_run(ROOT / "recipes/image_digits", kinds.schema_of)["model"]
    _, theirs = diffusers_like(cfg, "v")
    x = torch.randn(2, 1, 16, 16)
    ours = forward_gflops(UNet2D(cfg), lambda m, x, t: m(x, t, y=torch.zeros(2, dtype=torch.long)), x)
    assert forward_gflops(theirs, lambda m, x, t: m(x, t).sample, x) == pytest.approx(ours, rel=0.03)


def test_a_vocoder_student_keeps_the_mel_conditioning_and_the_noise_prior(tmp_path, capsys):
    tiny = ["model.residual_channels=8", "model.residual_layers=4", "model.dilation_cycle=2", "train.steps=4",
            "train.batch_size=4", "train.checkpoint_every=2", "train.warmup_steps=1", "train.log_every=1",
            "train.threads=1", "data.crop_frames=8", "model.noise_prior=mel_envelope", "eval.n=1", "eval.steps=[6]",
            "eval.save_wavs=0", "eval.griffin_lim_iters=4", "eval.consistency=[]"]
    cli("train", ROOT / "recipes/diffwave_espeak", "--out", tmp_path / "teacher", f"data.root={tmp_path / 'corpus'}",
        "prep.utterances=16", *tiny)
    cli("distill", tmp_path / "teacher", "--steps", 2, "--out", tmp_path / "student", "distill.start_steps=4",
        "distill.round_steps=4")
    cfg = load_run(tmp_path / "student", kinds.schema_of)
    assert (cfg["vocode"].sampler, cfg["vocode"].steps, cfg["eval"].steps) == ("ddim", 2, [2])
    assert cfg["model"].n_mels == 80 and cfg["model"].noise_prior == "mel_envelope"
    ema = {run: load_file(str(latest_checkpoint(tmp_path / run / "checkpoints") / "ema.safetensors"))
           for run in ("teacher", "student")}
    prior = [k for k in ema["teacher"] if k.startswith("prior.")]
    assert prior and all(torch.equal(ema["teacher"][k], ema["student"][k]) for k in prior)
    rows = {r["method"]: r for r in json.loads((tmp_path / "student/eval.json").read_text())["rows"]}
    assert math.isfinite(rows["diffwave_2"]["log_mel_db"])
    wav = next((tmp_path / "corpus/wavs").glob("*.wav"))
    cli("vocode", tmp_path / "student", "--input", wav, "--out", tmp_path / "out.wav")
    assert (tmp_path / "out.wav").stat().st_size > 1000
    # fresh noise between the student's jumps: --eta, or [vocode] eta (here set when distilling; its evaluation too)
    cli("vocode", tmp_path / "student", "--input", wav, "--eta", 1, "--out", tmp_path / "eta.wav")
    assert (tmp_path / "eta.wav").read_bytes() != (tmp_path / "out.wav").read_bytes()
    cli("distill", tmp_path / "teacher", "--steps", 2, "--out", tmp_path / "student", "distill.start_steps=4",
        "distill.round_steps=4", "vocode.eta=1", "--force", "evaluate")
    assert load_run(tmp_path / "student", kinds.schema_of)["vocode"].eta == 1.0
    again = {r["method"]: r for r in json.loads((tmp_path / "student/eval.json").read_text())["rows"]}
    assert again["diffwave_2"]["log_mel_db"] != rows["diffwave_2"]["log_mel_db"]
    # the teacher's ancestral sampler takes no eta: one line, before its weights load
    capsys.readouterr()
    assert main([str(a) for a in ["vocode", tmp_path / "teacher", "--input", wav, "--eta", 1, "--out",
                                  tmp_path / "t.wav"]]) == 2
    assert "add --sampler ddim" in capsys.readouterr().err and not (tmp_path / "t.wav").exists()


# ---- bad input: one line each ----------------------------------------------------------------------------------
def test_what_cannot_be_distilled_or_sampled_is_one_clear_line(teacher, student2, consistency_student, tmp_path,
                                                                monkeypatch, capsys):
    out = ["--out", tmp_path / "s"]
    # a run that was never trained
    cli("train", write_recipe(tmp_path / "r.toml", TEACHER), "--out", tmp_path / "untrained", "--stage", "prepare")
    assert "no trained model yet" in refused(capsys, "distill", tmp_path / "untrained", "--steps", 2, *out)
    # a training that stopped half way
    save = Trainer._checkpoint

    def stop_at_2(self, step):
        save(self, step)
        if step == 2:
            raise Stop
    monkeypatch.setattr(Trainer, "_checkpoint", stop_at_2)
    with pytest.raises(Stop):
        main([str(a) for a in ["train", tmp_path / "r.toml", "--out", tmp_path / "half", "train.steps=4",
                                "train.checkpoint_every=2"]])
    monkeypatch.setattr(Trainer, "_checkpoint", save)
    assert "stopped at step 2 of 4" in refused(capsys, "distill", tmp_path / "half", "--steps", 2, *out)
    # a kind with no diffusion model
    cli("train", ROOT / "recipes/autoencoder_digits", "--out", tmp_path / "ae", "--stage", "prepare")
    assert "no diffusion model to distill" in refused(capsys, "distill", tmp_path / "ae", "--steps", 2, *out)
    # steps that halving never reaches, a consistency student as teacher, what a student cannot change
    assert "halves the teacher's distill.start_steps = 64" in refused(
        capsys, "distill", teacher / "teacher", "--steps", 3, *out)
    assert "keeps its teacher's [model]" in refused(
        capsys, "distill", teacher / "teacher", "--steps", 2, *out, "model.channels=8")
    assert "is distill.round_steps" in refused(capsys, "distill", teacher / "teacher", "--steps", 2, *out,
                                               "train.steps=9")
    assert "give the students' sampling steps" in refused(capsys, "distill", teacher / "teacher", *out)
    assert "is the teacher's run" in refused(capsys, "distill", teacher / "teacher", "--steps", 2, "--out",
                                             teacher / "teacher")
    assert "consistency student" in refused(capsys, "distill", consistency_student, "--steps", 1, *out)
    assert "already draws fresh noise" in refused(capsys, "sample", consistency_student, "--eta", 1,
                                                  "--out", tmp_path / "c.npy")
    # and a student asked for steps it was not distilled for (sample and inpaint alike)
    np.save(tmp_path / "signal.npy", np.zeros(64, dtype=np.float32))
    assert "distilled for 2 sampling steps" in refused(
        capsys, "inpaint", student2, "--input", tmp_path / "signal.npy", "--gap", "2:9", "--steps", 3,
        "--out", tmp_path / "f.npy")
    assert not (tmp_path / "s").exists()
