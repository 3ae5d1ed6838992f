"""The video kinds: generation (pixels or an autoencoder's latents, frame by frame), and prediction /
interpolation with a frame-conditioned model compared against a plain model's completion.

A video run whose frame-conditioned model was trained with the "none" pattern too (MCVD-style, the
default of recipes/video_moving_digits) is one model for every job: its stages are prepare, train,
sample, evaluate (generation), predict (prediction and interpolation by the same model), and the
opt-in long_video (drift over clips longer than the trained ones: `--stage long_video`)."""
from __future__ import annotations

from pathlib import Path

from ..engine.config import ConfigError
from ..engine.distributed import DistInfo
from ..engine.runs import Run, load_run
from ..evaluation import long_video as long_video_eval
from ..evaluation import prediction as prediction_eval
from ..evaluation import video as video_eval
from ..modalities.autoencoder import load_autoencoder
from ..modalities.latent import LatentModality
from ..modalities.video import VIDEO, VideoSampleConfig
from ..pipelines.train import archive_training, train_model
from .base import (Kind, ModelRef, Stage, bf16_of, has_trained_model, load_role, only_kind, sample_stage_for,
                   train_first)


class VideoKind(Kind):
    name = "video"
    base = VIDEO
    completion_section = "predict"
    TRAINING = ["data", "model", "diffusion", "video", "train", "latent"]
    weights_keys = ("latent",)  # pixels or which autoencoder's latents

    def schema(self):
        return {**VIDEO.schema(), "sample": VideoSampleConfig, "eval": video_eval.VideoEvalConfig,
                "predict": prediction_eval.PredictConfig, "long_video": long_video_eval.LongVideoConfig}

    def modality(self, sections, device=None, bf16=False):
        path = sections["latent"].autoencoder
        return LatentModality(VIDEO, load_autoencoder(path, device, bf16)) if path else VIDEO

    def check(self, sections):
        if not sections["latent"].autoencoder:
            VIDEO.check(sections)  # (a latent run checks once its autoencoder is loaded)

    def model(self, run_dir, sections, role, device=None, bf16=False):
        m = self.modality(sections, device, bf16)
        check = (lambda: m.check_record(run_dir, required=True)) if isinstance(m, LatentModality) else None
        return ModelRef(m, sections, Path(run_dir), check)

    def train_stages(self, run, dist, resume) -> list[Stage]:
        m = self.modality(run.sections, dist.device, bf16_of(run, dist))
        m.check(run.sections)

        def train():
            if isinstance(m, LatentModality) and dist.is_main:
                m.write_record(run.dir, run["latent"].autoencoder)
            return train_model(run, m, dist, resume)
        return [Stage("prepare", ["data", "prep"], lambda: VIDEO.prepare(run), "main+wait"),
                Stage("train", self.TRAINING, train, reset=lambda: archive_training(run.dir))]

    def stages(self, run, dist, resume):
        stages = self.train_stages(run, dist, resume)
        if not VIDEO.generates(run.sections):
            return stages  # a model that only completes clips is sampled and scored by the prediction recipe
        dev, bf16 = dist.device, bf16_of(run, dist)
        stages += [sample_stage_for(self, run, dist, self.TRAINING),
                   Stage("evaluate", self.TRAINING + ["sample", "eval"], lambda: video_eval.evaluate(
                       run, load_role(self, run, dist), dev, bf16), "main")]
        if VIDEO.conditioned(run.sections):  # the same model predicts and interpolates, scored as the prediction recipe
            def predict():
                model = load_role(self, run, dist)
                return prediction_eval.evaluate(run, {"conditioned": model, "plain": model}, dev, bf16,
                                                name="predict")
            stages.append(Stage("predict", self.TRAINING + ["predict"], predict, "main"))
        return stages + [Stage("long_video", self.TRAINING + ["sample", "long_video"], lambda: long_video_eval.evaluate(
            run, load_role(self, run, dist), dev, bf16), "main", opt_in=True)]


class VideoPredictionKind(VideoKind):
    """A frame-conditioned model (this run) compared with replacement, RePaint and reconstruction
    guidance on a plain video model (predict.unconditional_run, trained by its recipe when missing)."""
    name = "video_prediction"

    def schema(self):
        return {**super().schema(), "predict": prediction_eval.PredictConfig}

    def check(self, sections):
        super().check(sections)
        if not VIDEO.conditioned(sections):
            raise ConfigError("a video_prediction recipe trains a frame-conditioned model: set video.known_patterns "
                              "(e.g. [\"prefix\", \"ends\"]) and model.extra_in_channels = data.channels + 1")

    def roles(self, sections):
        return ("conditioned", "plain")

    def default_method(self, sections):
        return "conditioned"  # this run's own model

    def model(self, run_dir, sections, role, device=None, bf16=False):
        if role == "conditioned":
            return super().model(run_dir, sections, role, device, bf16)
        plain_dir = Path(sections["predict"].unconditional_run)
        return VIDEO_KIND.model(plain_dir, plain_sections(plain_dir, sections), role, device, bf16)

    def stages(self, run, dist, resume):
        def evaluate():
            roles = ["conditioned"]
            if {"replace", "repaint", "reconstruction"} & set(run["predict"].methods):
                ensure_plain_video(run, dist, resume)
                roles.append("plain")
            models = {role: load_role(self, run, dist, role) for role in roles}
            return prediction_eval.evaluate(run, models, dist.device, bf16_of(run, dist))
        return self.train_stages(run, dist, resume) + [
            Stage("evaluate", ["data", "model", "diffusion", "video", "train", "predict"], evaluate, "main")]


def plain_sections(run_dir: Path, sections: dict) -> dict:
    """The config of the plain video run a prediction run compares with; it must fit this run's clips."""
    if not has_trained_model(run_dir):
        raise ConfigError(f"predict.unconditional_run '{run_dir}' holds no trained model: train it first "
                          f"(multidiff train {sections['predict'].unconditional_recipe or 'RECIPE'} --out {run_dir})")
    theirs = load_run(run_dir, only_kind(VIDEO_KIND, f"predict.unconditional_run '{run_dir}'"))
    diff = [k for k in ("frames", "size", "channels") if getattr(sections["data"], k) != getattr(theirs["data"], k)]
    if theirs["recipe"].kind != "video" or not VIDEO.generates(theirs) or diff:
        raise ConfigError(f"predict.unconditional_run '{run_dir}' does not fit this recipe: it must be a video run "
                          "that generates (plain, or frame-conditioned with the \"none\" pattern) on clips like this "
                          "recipe's" + (f" (data.{', data.'.join(diff)} differ)" if diff else ""))
    return theirs


def ensure_plain_video(run: Run, dist: DistInfo, resume: bool) -> None:
    """Train predict.unconditional_run by its recipe (prepare + train stages) when it holds no model yet."""
    p = run["predict"]
    run_dir = Path(p.unconditional_run)
    if has_trained_model(run_dir) or not p.unconditional_recipe:
        return  # (without a recipe, plain_sections() says what to do)
    def plain(file, sections):
        if not VIDEO.generates(sections):
            raise ConfigError(f"predict.unconditional_recipe '{file}' must be a video recipe that generates (no "
                              "video.known_patterns, or patterns with \"none\")")
    train_first(run, p.unconditional_recipe, run_dir, VIDEO_KIND, dist, resume, "predict.unconditional_recipe",
                stages=VIDEO_KIND.train_stages, check=plain, overrides=p.unconditional_overrides)



VIDEO_KIND = VideoKind()
