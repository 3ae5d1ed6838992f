"""What every recipe kind is made of: stages, the user's stage selection, where a run keeps its
models, and the runner of a list of stages (the registry of kinds: kinds/__init__.py)."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ..engine.checkpoint import latest_checkpoint
from ..engine.config import ConfigError
from ..engine.distributed import DistInfo, barrier
from ..engine.precision import resolve_precision
from ..engine.run_lock import run_lock
from ..engine.runs import Run, load_recipe, save_resolved, section_hash
from ..modalities.base import Modality, Trained, load_trained
from ..modalities.image import IMAGE
from ..modalities.student import StudentModality, is_student, student_completion, student_identity
from ..pipelines.complete import CompletionSampling
from ..pipelines.generate import sample_stage
from ..pipelines.train import archive_training, train_model
from .run_dir import check_run_dir

TRAINING = ["data", "model", "diffusion", "train"]


@dataclass
class Stage:
    name: str
    depends_on: list[str]
    fn: Callable[[], dict]
    ranks: str = "all"            # all (training) | main (rank 0 only) | main+wait (rank 0, the others wait for it)
    reset: Callable[[], object] | None = None   # what --force does first (train: keep the old weights aside)
    run: Run | None = None        # the Run whose sections its hash is taken of (default: the recipe's)
    opt_in: bool = False          # runs only when named by --stage or --force (a long, optional measurement)


@dataclass
class StageSelection:
    """--stage (only these), --force (again even if finished, and the stages after it), --skip."""
    only: list[str] = field(default_factory=list)
    force: list[str] = field(default_factory=list)
    skip: list[str] = field(default_factory=list)


@dataclass
class ModelRef:
    """Where a run keeps one trained model: its modality, its config, its directory."""
    modality: Modality
    sections: dict
    run_dir: Path
    before_load: Callable[[], None] | None = None   # e.g. the check that a latent model's autoencoder is unchanged

    def __post_init__(self):
        if is_student(self.sections):  # a distilled student samples on its own levels (modalities/student.py)
            self.modality = StudentModality(self.modality, self.sections)

    def load(self) -> Trained:
        if self.before_load is not None:
            self.before_load()
        return load_trained(self.modality, self.sections, self.run_dir)


class Kind:
    """A recipe kind; subclasses name its sections, stages and models."""
    name = "kind"
    base: Modality = IMAGE             # the modality (before any autoencoder)
    completion_section = "inpaint"     # the section holding its CompletionSampling keys, if it has one

    def schema(self) -> dict[str, type]:
        raise NotImplementedError

    def modality(self, sections: dict, device=None, bf16: bool = False) -> Modality:
        return self.base

    def check(self, sections: dict) -> None:
        """Refuse a config whose parts do not fit, before any stage runs."""
        self.base.check(sections)

    weights_keys: tuple[str, ...] = ()  # config keys besides the modality's fingerprint that change what is learned

    def weights_identity(self, sections: dict) -> str:
        """What a run's trained weights depend on in its config (not [train]: more steps resume the same weights);
        a config that changes it no longer describes them (kinds/run_dir.py refuses to write it over them)."""
        return (f"{self.name}:{self.base.fingerprint(sections)}:{section_hash(sections, self.weights_keys)}"
                + student_identity(sections))  # a distilled student: its teacher's checkpoint too

    def stages(self, run: Run, dist: DistInfo, resume: bool) -> list[Stage]:
        raise NotImplementedError

    def roles(self, sections: dict) -> tuple[str, ...]:
        """"conditioned" takes the known part as input; "plain" generates from noise (a conditioned model
        trained with nothing known too has both roles: one model for generation and completion)."""
        if not self.base.conditioned(sections):
            return ("plain",)
        return ("conditioned", "plain") if self.base.generates(sections) else ("conditioned",)

    def model(self, run_dir, sections: dict, role: str, device=None, bf16: bool = False) -> ModelRef:
        return ModelRef(self.modality(sections, device, bf16), sections, Path(run_dir))

    def default_method(self, sections: dict) -> str:
        return "conditioned" if self.roles(sections)[:1] == ("conditioned",) else self.base.default_completion

    def completion_config(self, sections: dict) -> CompletionSampling:
        return student_completion(sections.get(self.completion_section) or CompletionSampling(), sections)


def bf16_of(run: Run, dist: DistInfo) -> bool:
    return resolve_precision(run["train"].precision, dist.device)


def load_role(kind: Kind, run: Run, dist: DistInfo, role: str = "plain") -> Trained:
    return kind.model(run.dir, run.sections, role, dist.device, bf16_of(run, dist)).load()


def train_stage(run: Run, modality: Modality, dist, resume, deps, **options) -> Stage:
    return Stage("train", deps, lambda: train_model(run, modality, dist, resume, **options),
                 reset=lambda: archive_training(run.dir))


def sample_stage_for(kind: Kind, run: Run, dist: DistInfo, deps) -> Stage:
    return Stage("sample", deps + ["sample"], lambda: sample_stage(run, load_role(kind, run, dist), dist.device,
                                                                   bf16_of(run, dist)), "main")


def has_trained_model(run_dir: Path) -> bool:
    return latest_checkpoint(run_dir / "checkpoints") is not None and (run_dir / "stages" / "train.json").is_file()


def only_kind(kind: "Kind", what: str):
    """A schema function (engine.runs.load_recipe) that accepts recipes of `kind` only, naming `what` otherwise."""
    def schema(info):
        if info.kind != kind.name:
            raise ConfigError(f"{what} must be a {kind.name} recipe, not a {info.kind!r} one")
        return kind.schema()
    return schema


def train_first(run: Run, recipe, run_dir: Path, kind: "Kind", dist: DistInfo, resume: bool, what: str,
                stages=None, check=None, overrides=()) -> None:
    """Train another recipe of `kind` (with key=value `overrides`) into `run_dir` first: a model this run
    needs that does not exist yet (a latent run's autoencoder, a prediction run's plain model).
    `stages(run, dist, resume)` defaults to all of the kind's; `check(sections)` may refuse the recipe."""
    file, sections = load_recipe(recipe, list(overrides), only_kind(kind, what))
    if check is not None:
        check(file, sections)
    kind.check(sections)
    run.log(f"[{kind.name}] '{run_dir}' holds no trained model yet: training it with {file}")
    with run_lock(run_dir, dist.is_main):
        if dist.is_main:
            check_run_dir(run_dir, kind, sections, only_kind(kind, what))
        sub = Run(run_dir, sections, run.log, run.main)
        run_stages(sub, (stages or kind.stages)(sub, dist, resume), dist,
                   ready=(lambda: save_resolved(run_dir, sections)) if dist.is_main else None)
    barrier(dist)


def execute(run: Run, st: Stage, dist: DistInfo, force: bool) -> None:
    """One stage on the processes it runs on (its hash taken of st.run's sections, if it names one)."""
    if force and st.reset is not None and dist.is_main:
        kept = st.reset()
        if kept:
            run.log(f"[{st.name}] --force: the previous training is kept in {kept}")
    barrier(dist)
    if st.ranks == "all" or dist.is_main:
        (st.run or run).stage(st.name, st.depends_on, st.fn, force=force)
    if st.ranks == "main+wait":
        barrier(dist)


def run_stages(run: Run, stages: list[Stage], dist: DistInfo, selection: StageSelection | None = None,
               what: str = "this recipe", ready: Callable[[], None] | None = None) -> None:
    """Stages in order, finished ones skipped, with the user's --stage / --force / --skip. `ready()` runs
    once the selection is known to be valid, before the first stage (`multidiff train` writes the run's
    config.toml there: never for a command it then refuses)."""
    sel = selection or StageSelection()
    names = [st.name for st in stages]
    bad = [n for n in sel.only + sel.force + sel.skip if n not in names]
    if bad:
        raise ConfigError(f"{what} has no stage {', '.join(map(repr, bad))}; its stages are: {', '.join(names)}")
    last_wanted = max((names.index(n) for n in sel.only), default=len(names))
    forcing, plan = False, []
    for i, st in enumerate(stages):
        named = st.name in sel.only or st.name in sel.force
        if st.name in sel.skip or (sel.only and st.name not in sel.only) or (st.opt_in and not named):
            if sel.only and i < last_wanted and not st.opt_in and not (st.run or run).is_done(st.name, st.depends_on):
                raise ConfigError(f"stage '{st.name}' has not run with this config yet, and --stage "
                                  f"{' '.join(sel.only)} needs it: add --stage {st.name}, or leave out --stage")
            if st.opt_in and forcing and run.main:  # what it measured is stale: it runs again when next asked for
                ((st.run or run).dir / "stages" / f"{st.name}.json").unlink(missing_ok=True)
            continue
        forcing = forcing or st.name in sel.force
        plan.append((st, forcing))
    if ready is not None:
        ready()
    for st, force in plan:
        execute(run, st, dist, force=force)
