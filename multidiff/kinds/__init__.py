"""Recipe kinds: a kind names its config sections, its stages [(name, depends_on, fn)] and where its
trained models are; the only package that knows both the modalities and their evaluations.

    image             prepare -> train -> sample -> evaluate      (mask-conditioned: prepare -> train)
    image_inpainting  prepare -> train_unconditional -> train_conditioned -> evaluate  (both, compared)
    latent            [the autoencoder's own stages] -> prepare -> train -> sample -> evaluate
    autoencoder       prepare -> train -> scale -> evaluate
    audio             prepare -> train -> evaluate                 (vocoder or unconditional DiffWave)
    video             prepare -> train -> sample -> evaluate [-> predict] [-> long_video, opt-in]
                      (predict: a frame-conditioned model that also generates; one that only completes:
                      prepare -> train)
    video_prediction  prepare -> train -> evaluate                 (trains its plain model's recipe first)
    tts               prepare -> train -> [vocoder -> finetune_vocoder] -> sample -> evaluate  (text -> mel)

A recipe whose [distill] steps are set gets a last stage, distill: few-step students of its model in
RUN/students/ (kinds/distill.py; `multidiff distill RUN` makes them from any finished run).

A run's models have roles: "plain" generates from noise (and fills with replace / repaint /
reconstruction), "conditioned" takes the known part as input. Stages are idempotent
(engine/runs.py): a re-run skips what finished with the same config; `multidiff train RECIPE
--stage NAME / --force NAME / --skip NAME` picks them (StageSelection).
"""
from __future__ import annotations

import importlib

from ..engine.config import ConfigError
from ..engine.distributed import DistInfo
from ..engine.runs import Run, load_run, save_resolved
from ..modalities.base import Modality
from ..modalities.sections import SampleConfig
from ..pipelines.train import archive_training
from .audio import AudioKind
from .base import (TRAINING, Kind, ModelRef, Stage, StageSelection, bf16_of, load_role, run_stages, sample_stage_for,
                   train_stage)
from .distill import distill as _distill, recipe_stages as distill_stages
from .images import AUTOENCODER_KIND, ImageInpaintingKind, ImageKind, LatentKind
from .pretrained import FOLDER_KIND, folder_sections, is_model_folder
from .run_dir import check_run_dir, retrains
from .tts import TTS_KIND
from .video import VIDEO_KIND, VideoPredictionKind

__all__ = ["KINDS", "Kind", "ModelRef", "Stage", "StageSelection", "distill", "kind_of", "open_run", "run_recipe",
           "schema_of", "schemas"]


class ModalityKind(Kind):
    """The kind of a modality multidiff does not ship ([recipe] modality = "package.module:NAME"):
    prepare -> train -> sample (-> evaluate, when the modality has `evaluate(run, trained, device, bf16)`)."""

    def __init__(self, name: str, modality: Modality):
        self.name, self.base = name, modality

    def schema(self):
        return {**self.base.schema(), "sample": SampleConfig}

    def stages(self, run, dist, resume):
        m = self.base
        stages = [Stage("prepare", ["data"], lambda: m.prepare(run), "main+wait"),
                  train_stage(run, m, dist, resume, TRAINING)]
        if self.roles(run.sections) == ("plain",):
            stages.append(sample_stage_for(self, run, dist, TRAINING))
            if hasattr(m, "evaluate"):
                stages.append(Stage("evaluate", TRAINING + ["sample"], lambda: m.evaluate(
                    run, load_role(self, run, dist), dist.device, bf16_of(run, dist)), "main"))
        return stages


def _import_modality(spec: str) -> Modality:
    module, _, attr = spec.partition(":")
    try:
        obj = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError, ValueError) as e:
        raise ConfigError(f"recipe.modality = {spec!r} cannot be imported ({e}); write it as \"package.module:NAME\" "
                          "of a Modality object, with the package installed or on PYTHONPATH") from None
    if not isinstance(obj, Modality):
        raise ConfigError(f"recipe.modality = {spec!r} is a {type(obj).__name__}, not a multidiff Modality")
    return obj


# ---- the registry ------------------------------------------------------------------------------
KINDS: dict[str, Kind] = {k.name: k for k in (ImageKind(), ImageInpaintingKind(), LatentKind(), AUTOENCODER_KIND,
                                               AudioKind(), VIDEO_KIND, VideoPredictionKind(), TTS_KIND)}


def schemas() -> dict[str, dict[str, type]]:
    """The sections of every kind multidiff ships."""
    return {name: kind.schema() for name, kind in KINDS.items()}


def schema_of(info) -> dict[str, type]:
    """The sections of a recipe's kind ([recipe] section `info`); a `modality` from outside is registered
    here as a kind of its own, so its runs train, sample and complete through the same commands."""
    if info.modality:
        if info.kind in KINDS and not isinstance(KINDS[info.kind], ModalityKind):
            raise ConfigError(f"recipe.kind = {info.kind!r} is a kind multidiff ships; give your modality's kind "
                              "another name")
        KINDS[info.kind] = ModalityKind(info.kind, _import_modality(info.modality))
    if info.kind not in KINDS:
        raise ConfigError(f"recipe.kind = {info.kind!r} is not one of {sorted(KINDS)} (or set recipe.modality to "
                          "your own modality, see docs/extending.md)")
    return KINDS[info.kind].schema()


# kinds of model folders opened as runs (no recipe, nothing to train): not in KINDS, whose kinds recipes name
OPENED: dict[str, Kind] = {FOLDER_KIND.name: FOLDER_KIND}


def kind_of(sections: dict) -> Kind:
    name = sections["recipe"].kind
    return KINDS[name] if name in KINDS else OPENED[name]


def open_run(run_dir) -> dict:
    """The config of a run directory -- or of a pretrained diffusers model folder, opened as a run
    (kinds/pretrained.py): what `multidiff sample` and `multidiff inpaint` read."""
    if is_model_folder(run_dir):
        return folder_sections(run_dir)
    return load_run(run_dir, schema_of)


def run_recipe(run: Run, dist: DistInfo, resume: bool, selection: StageSelection | None = None,
               overwrite_config: bool = False) -> None:
    """The kind's stages in order, finished ones skipped, with the user's --stage / --force / --skip.
    RUN/config.toml is written once every check passed, just before the first stage (kinds/run_dir.py:
    a hand-edited one is replaced only with `overwrite_config`). Hold the run's lock around this."""
    kind, sel = kind_of(run.sections), selection or StageSelection()
    kind.check(run.sections)
    replaces = run.main and check_run_dir(run.dir, kind, run.sections, schema_of, retrain=retrains(sel.force),
                                          resume=resume, overwrite_config=overwrite_config)

    def write_config():
        if replaces and retrains(sel.force):  # the weights leave with the config they were trained with
            kept = archive_training(run.dir)
            if kept:
                run.log(f"[train] --force: the previous training and its config.toml are kept in {kept}")
        save_resolved(run.dir, run.sections)
    stages = kind.stages(run, dist, resume)
    stages += distill_stages(kind, run, stages, dist, resume, schema_of, kind_of)  # when [distill] steps are set
    run_stages(run, stages, dist, sel, f"a {kind.name} recipe", ready=write_config if run.main else None)


def distill(run_dir, out, method, steps, overrides, dist: DistInfo, resume: bool = False,
            selection: StageSelection | None = None) -> dict:
    """`multidiff distill`: few-step students of a trained run (kinds/distill.py); {steps: student run directory}."""
    return _distill(run_dir, out, method, steps, overrides, dist, resume, selection, schema_of, kind_of)
