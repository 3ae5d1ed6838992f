"""The image kinds: plain (class-conditional) generation, inpainting with two models, latent diffusion
on an autoencoder's latents, and the autoencoder itself."""
from __future__ import annotations

import dataclasses
from pathlib import Path

from ..engine.distributed import DistInfo
from ..engine.runs import Run, load_sections, save_resolved
from ..errors import UserError
from ..evaluation import autoencoder as autoencoder_eval
from ..evaluation import image as image_eval
from ..evaluation import inpainting as inpainting_eval
from ..modalities.autoencoder import AUTOENCODER, INFO_FILE, compute_scale, load_autoencoder
from ..modalities.image import IMAGE
from ..modalities.latent import LatentConfig, LatentModality
from ..modalities.sections import SampleConfig
from ..modalities.student import default_steps, is_student
from ..pipelines.train import archive_training, train_model
from ..utils import read_json, write_json
from .base import TRAINING, Kind, ModelRef, Stage, bf16_of, load_role, sample_stage_for, train_first, train_stage


class ImageKind(Kind):
    name = "image"

    def schema(self):
        return {**IMAGE.schema(), "sample": SampleConfig, "eval": image_eval.ImageEvalConfig}

    def stages(self, run, dist, resume):
        stages = [Stage("prepare", ["data"], lambda: IMAGE.prepare(run), "main+wait"),
                  train_stage(run, IMAGE, dist, resume, TRAINING)]
        if self.roles(run.sections) == ("plain",):  # a mask-conditioned model needs images to fill
            stages += [sample_stage_for(self, run, dist, TRAINING),
                       Stage("evaluate", TRAINING + ["eval"], lambda: image_eval.evaluate(
                           run, load_role(self, run, dist), dist.device, bf16_of(run, dist)), "main")]
        return stages


class ImageInpaintingKind(ImageKind):
    """One unconditional model (filled by RePaint, replacement or reconstruction guidance) and one
    mask-conditioned model, trained on the same data into RUN/unconditional and RUN/conditioned."""
    name = "image_inpainting"
    SUBRUNS = {"plain": "unconditional", "conditioned": "conditioned"}
    weights_keys = ("inpaint.train_masks",)

    def schema(self):
        return {**super().schema(), "inpaint": inpainting_eval.InpaintConfig}

    def sub_sections(self, sections: dict, role: str) -> dict:
        """The plain image config of one of the two models (what its own run directory holds)."""
        out = {k: v for k, v in sections.items() if k in ImageKind().schema()}
        out["recipe"] = dataclasses.replace(sections["recipe"], kind="image")
        if role == "conditioned":
            out["model"] = dataclasses.replace(sections["model"], extra_in_channels=sections["data"].channels + 1)
        return out

    def roles(self, sections):
        return ("plain", "conditioned")

    def model(self, run_dir, sections, role, device=None, bf16=False):
        return ModelRef(IMAGE, self.sub_sections(sections, role), Path(run_dir) / self.SUBRUNS[role])

    def default_method(self, sections):
        return "repaint"

    def stages(self, run, dist, resume):
        stages = [Stage("prepare", ["data"], lambda: IMAGE.prepare(run), "main+wait")]
        for role, name in self.SUBRUNS.items():
            sub = Run(run.dir / name, self.sub_sections(run.sections, role), run.log, run.main)
            masks = {"mask_kinds": run["inpaint"].train_masks} if role == "conditioned" else {}

            def train(sub=sub, masks=masks):
                if dist.is_main:
                    save_resolved(sub.dir, sub.sections)
                return train_model(sub, IMAGE, dist, resume, **masks)
            stages.append(Stage(f"train_{name}", TRAINING + (["inpaint.train_masks"] if masks else []), train,
                                reset=lambda d=sub.dir: archive_training(d)))
        stages.append(Stage("evaluate", TRAINING + ["inpaint"], lambda: inpainting_eval.evaluate(
            run, {role: load_role(self, run, dist, role) for role in self.SUBRUNS}, dist.device, bf16_of(run, dist),
            self.load_students(run)), "main"))
        return stages

    def load_students(self, run) -> dict:
        """[inpaint] students: few-step students of this run's unconditional model, by a name saying what they are."""
        plain, out = self.sub_sections(run.sections, "plain"), {}
        for path in run["inpaint"].students:
            where = Path(path)
            if not (where / "config.toml").is_file():
                raise UserError(f"inpaint.students: '{where}' is not a run directory (no config.toml): make the "
                                f"student with multidiff distill {run.dir} --steps 4 --out {where}")
            sections = load_sections(where, ImageKind().schema())
            if sections["recipe"].kind != "image" or not is_student(sections) or not same_model(sections, plain):
                raise UserError(f"inpaint.students: '{where}' is not a distilled student of "
                                f"{run.dir / 'unconditional'} (its model, data or schedule differ): make one with "
                                f"multidiff distill {run.dir} --steps 4 --out STUDENT")
            d = sections["distill"]
            name = f"{d.method} student, {default_steps(d)} steps"
            out[name if name not in out else f"{name} ({where})"] = ImageKind().model(
                where, sections, "plain").load()
        return out


def same_model(student: dict, teacher: dict) -> bool:
    """Whether a student's network, data and schedule are its teacher's (a student never drops labels itself)."""
    return (student["data"] == teacher["data"] and student["diffusion"] == teacher["diffusion"]
            and dataclasses.replace(student["model"], class_dropout=0.0)
            == dataclasses.replace(teacher["model"], class_dropout=0.0))


class LatentKind(ImageKind):
    """The image pipeline on the latents of a trained autoencoder run ([latent] autoencoder); when that run
    does not exist yet and [latent] autoencoder_recipe names a recipe, it is trained first."""
    name = "latent"
    weights_keys = ("latent.train_masks",)  # (which autoencoder: RUN/latent.json is checked against it)

    def schema(self):
        return {**super().schema(), "latent": LatentConfig}

    def modality(self, sections, device=None, bf16=False):
        return LatentModality(IMAGE, load_autoencoder(sections["latent"].autoencoder, device, bf16))

    def check(self, sections):
        pass  # needs the autoencoder: checked in stages(), once it exists

    def model(self, run_dir, sections, role, device=None, bf16=False):
        m = self.modality(sections, device, bf16)
        return ModelRef(m, sections, Path(run_dir), lambda: m.check_record(run_dir, required=True))

    def stages(self, run, dist, resume):
        ensure_autoencoder(run, dist, resume)
        m = LatentModality(IMAGE, load_autoencoder(run["latent"].autoencoder, dist.device,
                                                   precision=run["train"].precision))
        m.check(run.sections)
        m.check_record(run.dir, required=False)
        masks = {"mask_kinds": run["latent"].train_masks} if run["latent"].train_masks else {}
        deps = TRAINING + ["latent", "autoencoder"]

        def train():
            dataset, report = m.cached_split(run, "train", dist)
            if dist.is_main:
                m.write_record(run.dir, run["latent"].autoencoder)
            return {**train_model(run, m, dist, resume, dataset=dataset, **masks), "latent_cache": report}

        def evaluate():
            summary = image_eval.evaluate(run, load_role(self, run, dist), dist.device, bf16_of(run, dist))
            result = read_json(run.dir / "eval.json")  # ... naming the autoencoder and its own held-out quality
            ae_eval = Path(m.codec.info["run_dir"]) / "eval.json"
            result["autoencoder"] = {**m.codec.identity(), "run_dir": m.codec.info["run_dir"],
                                     **({"held_out": read_json(ae_eval)} if ae_eval.exists() else {})}
            write_json(run.dir / "eval.json", result)
            return summary
        stages = [Stage("prepare", ["data"], lambda: IMAGE.prepare(run), "main+wait"),
                  Stage("train", deps, train, reset=lambda: archive_training(run.dir))]
        if not masks:  # a mask-conditioned model needs images to fill
            stages += [sample_stage_for(self, run, dist, deps),
                       Stage("evaluate", deps + ["sample", "eval"], evaluate, "main")]
        # stage hashes include the autoencoder's identity: a retrained autoencoder re-runs them
        ident = Run(run.dir, {**run.sections, "autoencoder": m.identity()}, run.log, run.main)
        return [dataclasses.replace(st, run=ident) for st in stages]


def ensure_autoencoder(run: Run, dist: DistInfo, resume: bool) -> None:
    """Train the autoencoder a latent run names when it is missing and [latent] autoencoder_recipe says how."""
    cfg = run["latent"]
    ae_dir = Path(cfg.autoencoder)
    if (ae_dir / INFO_FILE).exists() or not cfg.autoencoder_recipe:
        return
    train_first(run, cfg.autoencoder_recipe, ae_dir, AUTOENCODER_KIND, dist, resume, "latent.autoencoder_recipe")


class AutoencoderKind(Kind):
    name = "autoencoder"
    base = AUTOENCODER

    def schema(self):
        return AUTOENCODER.schema()

    def roles(self, sections):
        return ()

    def stages(self, run, dist, resume):
        deps = ["data", "model", "loss", "train"]
        return [Stage("prepare", ["data"], lambda: AUTOENCODER.prepare(run), "main+wait"),
                train_stage(run, AUTOENCODER, dist, resume, deps),
                Stage("scale", deps, lambda: compute_scale(run, dist), "main"),
                Stage("evaluate", deps + ["eval"],
                      lambda: autoencoder_eval.evaluate(run, dist.device, bf16_of(run, dist)), "main")]



AUTOENCODER_KIND = AutoencoderKind()
