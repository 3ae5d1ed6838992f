"""`multidiff distill RUN --method progressive|consistency --steps N [N ...] --out STUDENT`, and the distill
stage `multidiff train` adds to a recipe whose [distill] steps are set: the teacher's checks, the plan of
rounds, each student's config and stages.

A student is an ordinary run of its teacher's kind (modalities/student.py: it samples on its own levels).
Progressive distillation halves distill.start_steps round by round, and every round is a run of its own,
the next round's teacher:

    STUDENT/                  the student with the fewest steps (the last round)
    STUDENT/rounds/steps_K/   the rounds before it (K = start_steps / 2, start_steps / 4, ...)

The students asked for (--steps) run their kind's stages after training -- sample, evaluate, what the
teacher's recipe runs, on the student's own sampler and steps -- and the other rounds only train. A
consistency student is one run that samples with any number of steps, evaluated at each of --steps.
A recipe's students go to RUN/students/<method>/.
"""
from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

from ..engine.checkpoint import latest_checkpoint, read_state
from ..engine.config import ConfigError, from_dict, parse_override
from ..engine.distributed import DistInfo
from ..engine.precision import resolve_precision
from ..engine.run_lock import run_lock
from ..engine.runs import Run, load_run, save_resolved
from ..errors import UserError
from ..modalities.sections import DistillConfig
from ..modalities.student import is_student
from ..pipelines.distill import student_sections, teacher_identity, train_student
from ..pipelines.train import archive_training
from .base import Kind, ModelRef, Stage, StageSelection, run_stages
from .run_dir import check_run_dir, retrains

# a student keeps what its weights are; its training length and rate are [distill]'s
FIXED_SECTIONS = ("recipe", "data", "model", "diffusion")
TRAIN_KEYS = {"steps": "round_steps", "lr": "lr", "warmup_steps": "warmup_steps"}


# ---- the teacher --------------------------------------------------------------------------------------------
def open_teacher(run_dir, schema_of, kind_of) -> tuple[Kind, ModelRef]:
    """The student's kind and the teacher (the run's own model: its first role), refused (one line) when there
    is no finished diffusion model in `run_dir` to distill."""
    sections = load_run(run_dir, schema_of)
    kind = kind_of(sections)
    roles = kind.roles(sections)
    if "distill" not in sections or not roles:
        raise UserError(f"'{run_dir}' is a {kind.name} run: it holds no diffusion model to distill (students are made "
                        "of image, latent, audio and video runs, and of plug-in modalities)")
    ref = kind.model(run_dir, sections, roles[0])
    check_finished(ref, run_dir)
    return kind_of(ref.sections), ref


def check_finished(ref: ModelRef, run_dir) -> None:
    ckpt = latest_checkpoint(ref.run_dir / "checkpoints")
    if ckpt is None:
        raise UserError(f"'{run_dir}' holds no trained model yet (no checkpoint in '{ref.run_dir / 'checkpoints'}'): "
                        f"train it first (multidiff train RECIPE --out {run_dir}), then distill it")
    step, want = read_state(ckpt).get("step", 0), ref.sections["train"].steps
    if step < want:
        raise UserError(f"'{run_dir}' holds a training stopped at step {step} of {want}: a student learns what its "
                        f"teacher knows, so finish it first (multidiff train RECIPE --out {run_dir} --resume), then "
                        "distill it")


# ---- the students' configs ------------------------------------------------------------------------------------
# [distill] keys a progressive chain keeps from its first round: a round from a student refuses another value
KEPT_BY_A_CHAIN = {
    "level_power": "its students halve those levels",
    "teacher_solver": "a student's jumps are its own DDIM steps, so the solver applies to a chain's first round only",
}


def distill_config(base: dict, method: str | None, steps: list[int] | None,
                   overrides: list[str], resumed=None) -> tuple[DistillConfig, dict]:
    """[distill] for `multidiff distill`: the teacher's -- or, continuing a distillation (`resumed`: the [distill]
    of the student being resumed), the settings it was started with -- with --method, --steps and distill.*
    overrides; and the other overrides (section -> {key: value}) for the students' sampling, evaluation and
    [train] sections."""
    table = {**dataclasses.asdict(base["distill"]), "teacher": "", "teacher_checkpoint": ""}
    if resumed is not None:  # `--resume` alone continues the chain as started (its start_steps, rounds, lr, ...)
        table.update({k: v for k, v in dataclasses.asdict(resumed).items()
                      if k not in ("steps", "teacher", "teacher_checkpoint")})
    changes: dict[str, dict] = {}
    for ov in overrides:
        section, key, value = parse_override(ov)
        if section in FIXED_SECTIONS:
            raise ConfigError(f"{ov}: a student keeps its teacher's [{section}] (its weights start as the teacher's); "
                              "change it in the teacher's recipe and train the teacher again")
        if section == "train" and key in TRAIN_KEYS:
            raise ConfigError(f"{ov}: a student's train.{key} is distill.{TRAIN_KEYS[key]}; give "
                              f"distill.{TRAIN_KEYS[key]}={value}")
        if section == "distill" and key in ("teacher", "teacher_checkpoint"):
            raise ConfigError(f"{ov}: distill.{key} is the RUN given to multidiff distill and its checkpoint")
        if section == "distill":
            table[key] = value
        else:
            changes.setdefault(section, {})[key] = value
    if method:
        table["method"] = method
    if steps:
        table["steps"] = list(steps)
    if is_student(base):
        if table["method"] != "progressive":
            raise UserError(f"the teacher is itself a {base['distill'].method} student, whose few steps are not its "
                            f"teacher's ODE: distill its teacher ('{base['distill'].teacher}') with --method "
                            f"{table['method']} instead")
        table["start_steps"] = base["distill"].steps[0]  # its own steps, halved further
        for key, why in KEPT_BY_A_CHAIN.items():
            theirs = getattr(base["distill"], key)
            try:
                same = type(theirs)(table[key]) == theirs
            except (TypeError, ValueError):
                same = False  # not even of the key's type: refused all the same
            if not same:
                raise UserError(f"the teacher is a student distilled with distill.{key} = {theirs}: {why}, so drop "
                                f"distill.{key}={table[key]} (or distill its teacher anew with it)")
    try:
        cfg = from_dict(DistillConfig, table, "distill")
    except ValueError as e:
        raise ConfigError(str(e)) from None
    if not cfg.steps:
        raise UserError("give the students' sampling steps: --steps 2 (or several, e.g. --steps 4 2 1)")
    return cfg, changes


def plan(cfg: DistillConfig) -> list[tuple[list[int], bool]]:
    """The students to train, in order: (their steps, asked for). Progressive: every halving of start_steps down
    to the fewest steps asked for; consistency: one student for all of them."""
    if cfg.method == "consistency":
        return [(sorted(cfg.steps, reverse=True), True)]
    n, halvings = cfg.start_steps, []
    while n % 2 == 0 and n // 2 >= min(cfg.steps):
        n //= 2
        halvings.append(n)
    bad = sorted(set(cfg.steps) - set(halvings))
    if bad:
        raise UserError(f"progressive distillation halves the teacher's distill.start_steps = {cfg.start_steps} DDIM "
                        f"steps round by round ({', '.join(map(str, halvings)) or 'no halving'} steps): {bad[0]} is "
                        f"not among them; choose among them, or set distill.start_steps={bad[0] * 32}")
    return [([k], k in cfg.steps) for k in halvings]


def apply_changes(sections: dict, changes: dict, kind: Kind) -> dict:
    out = dict(sections)
    for name, table in changes.items():
        if name not in out:
            raise ConfigError(f"unknown section [{name}] for a {kind.name} student; its sections: "
                              f"{', '.join(f'[{s}]' for s in out)}")
        try:
            out[name] = from_dict(type(out[name]), {**dataclasses.asdict(out[name]), **table}, name)
        except ValueError as e:
            raise ConfigError(str(e)) from None
    return out


# ---- the students' runs ----------------------------------------------------------------------------------------
def student_stages(kind: Kind, run: Run, dist: DistInfo, resume: bool, train, asked: bool) -> list[Stage]:
    """The kind's stages for the student's config, its "train" stage replaced by `train` (named distill), its
    "prepare" left out (the student learns on its teacher's prepared data; what it is evaluated on is read when
    it is); every stage depends on [distill] too (a new teacher makes a new student). A round not asked for
    only trains."""
    stages = kind.stages(run, dist, resume)
    if "train" not in [st.name for st in stages]:
        raise UserError(f"a {kind.name} run has no training stage that distillation could take the place of")
    out = []
    for st in stages:
        deps = [*st.depends_on, "distill"]
        if st.name == "prepare":
            continue
        if st.name == "train":
            out.append(dataclasses.replace(st, name="distill", fn=train, depends_on=deps, ranks="all",
                                           reset=lambda: archive_training(run.dir)))
        elif asked:
            out.append(dataclasses.replace(st, depends_on=deps))
    return out


def round_selection(sel: StageSelection, asked: bool) -> StageSelection | None:
    """The user's --stage / --force / --skip for one round (None: skip the round, it is not wanted)."""
    if asked:
        return sel
    if sel.only and "distill" not in sel.only:
        return None
    return StageSelection(force=["distill"] if "distill" in sel.force else [])


def run_chain(kind: Kind, ref: ModelRef, cfg: DistillConfig, changes: dict, out: Path, dist: DistInfo, resume: bool,
              selection: StageSelection | None, schema_of, log=print) -> dict:
    """Distill `ref` (a finished model of `kind`) into the students of `cfg` under `out` (module docstring); hold
    out's lock around this. Returns {steps: run directory} of the students asked for."""
    base, sel, main = ref.sections, selection or StageSelection(), dist.is_main
    rounds = plan(cfg)
    dirs = [out if i == len(rounds) - 1 else out / "rounds" / f"steps_{steps[0]}"
            for i, (steps, _) in enumerate(rounds)]
    K = ref.modality.num_classes(base)
    label_dropout = float(getattr(base["model"], "class_dropout", 0.0) or 0.0)
    data_run = Run(ref.run_dir, base, log, main)

    def config(steps, teacher_dir, identity):
        return apply_changes(student_sections(base, cfg, steps, teacher_dir, identity, K), changes, kind)

    if main and not (out / "config.toml").is_file():  # out is the final student's run from the start; its
        first = config(rounds[-1][0], dirs[-2] if len(dirs) > 1 else ref.run_dir, "")  # teacher is known later
        check_run_dir(out, kind, first, schema_of)
        save_resolved(out, first)
    teacher, made = ref, {}
    for (steps, asked), d in zip(rounds, dirs):
        round_sel = round_selection(sel, asked)
        if round_sel is not None:
            trained = teacher.load()
            sections = config(steps, teacher.run_dir, teacher_identity(trained.checkpoint))
            _train_round(kind, sections, d, trained, data_run, dist, resume, round_sel, asked, label_dropout,
                         schema_of, log)
        else:
            sections = load_run(d, schema_of)  # (its stages were left out: it must exist for the next round)
        if asked:
            made["/".join(map(str, steps))] = str(d)
        teacher = kind.model(d, sections, kind.roles(sections)[0])
    return made


def _train_round(kind, sections, d: Path, trained, data_run, dist, resume, sel, asked, label_dropout, schema_of, log):
    main = dist.is_main
    run = Run(d, sections, log, main)
    m = kind.modality(sections, dist.device, resolve_precision(sections["train"].precision, dist.device))

    def train():
        if main and hasattr(m, "write_record"):  # a latent model's autoencoder record (latent.json)
            m.write_record(d, sections["latent"].autoencoder)
        return train_student(run, m, trained, data_run, dist, resume, label_dropout)

    def ready():
        save_resolved(d, sections)
        cache = Path(data_run.dir) / "eval"  # the teacher's evaluation caches (classifiers): the same yardstick
        if asked and cache.is_dir() and not (d / "eval").exists():
            shutil.copytree(cache, d / "eval")
    stages = student_stages(kind, run, dist, resume, train, asked)
    if main:
        check_run_dir(d, kind, sections, schema_of, retrain="distill" in sel.force or retrains(sel.force),
                      resume=resume)
    log(f"[distill] {d}: {sections['recipe'].description}")
    run_stages(run, stages, dist, sel, f"a {kind.name} student", ready=ready if main else None)


# ---- the two entry points -------------------------------------------------------------------------------------
def distill(run_dir, out, method, steps, overrides, dist: DistInfo, resume: bool, selection: StageSelection | None,
            schema_of, kind_of) -> dict:
    """`multidiff distill`: the students of the run in `run_dir`, the last one in `out` (a new run directory)."""
    kind, ref = open_teacher(run_dir, schema_of, kind_of)
    out = Path(out)
    resumed = None
    if resume and (out / "config.toml").is_file():
        saved = load_run(out, schema_of)
        resumed = saved["distill"] if is_student(saved) else None
    cfg, changes = distill_config(ref.sections, method, steps, overrides, resumed)
    if out.resolve() in (Path(run_dir).resolve(), ref.run_dir.resolve()):
        raise UserError(f"--out '{out}' is the teacher's run: give a new directory for the student")
    with run_lock(out, dist.is_main):
        return run_chain(kind, ref, cfg, changes, out, dist, resume, selection, schema_of,
                         print if dist.is_main else (lambda *a: None))


def recipe_stages(kind: Kind, run: Run, stages: list[Stage], dist: DistInfo, resume: bool, schema_of,
                  kind_of) -> list[Stage]:
    """The distill stage of a recipe whose [distill] steps are set (none otherwise): its students go to
    RUN/students/<method>/ once the teacher's stages are done."""
    d = run.sections.get("distill")
    if d is None or not d.steps:
        return []
    if is_student(run.sections):
        raise ConfigError("this config is a distilled student's ([distill] teacher is set): sample it with multidiff "
                          "sample, or distill its teacher with multidiff distill")
    roles = kind.roles(run.sections)
    if not roles:
        raise ConfigError(f"distill.steps is set, but a {kind.name} recipe has no diffusion model to distill")
    deps = sorted({dep for st in stages if st.name.startswith("train") for dep in st.depends_on} | {"distill"})

    def fn():
        ref = kind.model(run.dir, run.sections, roles[0])
        check_finished(ref, run.dir)
        return {"students": run_chain(kind_of(ref.sections), ref, d, {}, run.dir / "students" / d.method, dist,
                                      resume, None, schema_of, run.log)}
    return [Stage("distill", deps, fn, "all")]
