"""The tts kind: text -> mel acoustic model (modalities/tts.py) and the DiffWave vocoder run it feeds.

    prepare -> train -> [vocoder] -> [finetune_vocoder] -> sample -> evaluate

prepare: the corpus phonemized once (symbol table in RUN/symbols.json), mels in the vocoder's mel
configuration (RUN/tts_data/); train: encoder + duration predictor + decoder; vocoder (when
[vocoder] run is set): check that run, or train it first from [vocoder] recipe (its prepare and train
stages) when it holds no model yet; finetune_vocoder (when [vocoder] finetune_steps > 0): the vocoder
continued on this model's ground-truth-aligned mels into RUN/vocoder; sample: [sample] sentences said
into RUN/samples/say/; evaluate: MCD-DTW, duration errors and real-time factor on held-out sentences
(evaluation/tts.py).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..engine.checkpoint import latest_checkpoint
from ..engine.config import ConfigError
from ..engine.plots import plot_spectrograms
from ..engine.runs import load_run
from ..evaluation.tts import TTSEvalConfig, evaluate
from ..modalities.audio import AUDIO, is_vocoder
from ..modalities.base import load_trained
from ..modalities.tts import TTS
from ..pipelines.finetune_vocoder import finetune_vocoder
from ..pipelines.say import FINETUNED_VOCODER, check_pair, speak, write_speech
from ..pipelines.train import archive_training
from .audio import AudioKind
from .base import TRAINING, Kind, Stage, bf16_of, load_role, train_first, train_stage

DEPS = TRAINING + ["text"]


@dataclass
class VocoderConfig:
    """The [vocoder] section: the DiffWave vocoder run the sample and evaluate stages (and `multidiff say`,
    by default) speak with; none: Griffin-Lim in the stages, and say needs --vocoder."""
    run: str = ""                   # a trained audio vocoder run with this run's mel configuration
    recipe: str = ""                # trains `run` first (prepare and train stages) when it holds no model yet
    steps: int = 0                  # vocoder sampling steps for this run's speech (0: the vocoder's [vocode] steps)
    consistency: int = -1           # its mel-consistency iterations (-1: the vocoder's [vocode] consistency)
    finetune_steps: int = 0         # > 0: the finetune_vocoder stage (into RUN/vocoder)
    finetune_lr: float = 1e-4
    finetune_batch: int = 8

    def __post_init__(self):
        if self.steps < 0 or self.consistency < -1:
            raise ValueError("vocoder.steps >= 0 (0: the vocoder's own) and vocoder.consistency >= -1 (-1: its own)")
        if self.finetune_steps < 0 or self.finetune_batch < 1 or not self.finetune_lr > 0:
            raise ValueError("vocoder.finetune_steps >= 0, vocoder.finetune_batch >= 1 and vocoder.finetune_lr > 0")
        if self.finetune_steps and not self.run:
            raise ValueError("vocoder.finetune_steps needs vocoder.run: the vocoder run to fine-tune")


def _audio_schema(info):
    if info.kind != "audio":
        raise ConfigError(f"must be an audio (vocoder) run, not a {info.kind!r} one")
    return AudioKind().schema()


class TTSKind(Kind):
    name = "tts"
    base = TTS

    def schema(self):
        return {**TTS.schema(), "eval": TTSEvalConfig, "vocoder": VocoderConfig}

    def vocoder_sections(self, run) -> dict:
        v = run["vocoder"]
        if not (Path(v.run) / "config.toml").is_file():
            raise ConfigError(f"vocoder.run = '{v.run}' holds no vocoder run: train one (multidiff train "
                              "recipes/diffwave_espeak), or set vocoder.recipe to have it trained first")
        sections = load_run(v.run, _audio_schema)
        if not is_vocoder(sections):
            raise ConfigError(f"vocoder.run = '{v.run}' is an unconditional audio model, not a vocoder")
        check_pair(run.sections, run.dir, sections, v.run)
        return sections

    def vocoders(self, run, dist) -> dict:
        """name -> the vocoder(s) this run speaks with (None: Griffin-Lim)."""
        v = run["vocoder"]
        if not v.run:
            return {"griffin-lim": None}
        out = {"vocoder": load_trained(AUDIO, self.vocoder_sections(run), v.run)}
        tuned = run.dir / FINETUNED_VOCODER
        if v.finetune_steps and latest_checkpoint(tuned / "checkpoints") is not None:
            out["fine-tuned vocoder"] = load_trained(AUDIO, load_run(tuned, _audio_schema), tuned)
        return out

    def stages(self, run, dist, resume):
        v = run["vocoder"]
        bf16 = bf16_of(run, dist)

        def vocoder():
            if latest_checkpoint(Path(v.run) / "checkpoints") is None:
                if not v.recipe:
                    raise ConfigError(f"vocoder.run = '{v.run}' holds no trained vocoder: train it first "
                                      "(multidiff train recipes/diffwave_espeak), or set vocoder.recipe")
                kind = AudioKind()
                train_first(run, v.recipe, Path(v.run), kind, dist, resume, "vocoder.recipe",
                            stages=lambda sub, d, r: kind.stages(sub, d, r)[:2])
            self.vocoder_sections(run)
            return {"vocoder": v.run, "checkpoint": str(latest_checkpoint(Path(v.run) / "checkpoints"))}

        def finetune():
            vocoder = load_trained(AUDIO, self.vocoder_sections(run), v.run)
            return finetune_vocoder(run, load_role(self, run, dist), vocoder, v, dist, resume, bf16)

        def sample():
            vocs = self.vocoders(run, dist)
            name, voc = list(vocs.items())[-1]  # the fine-tuned vocoder where there is one
            tts = load_role(self, run, dist)
            groups = speak(tts, run.dir, voc, run["sample"].sentences, run["sample"], dist.device, bf16,
                           vocoder_steps=v.steps or None, consistency=None if v.consistency < 0 else v.consistency)
            sr = run["data"].sample_rate
            written = write_speech(groups, str(run.dir / "samples" / "say") + "/", sr, run["sample"].pause, "sentence")
            plot_spectrograms({f"{k + 1}: {g[0].text[:50]}": g[0].wav for k, g in enumerate(groups)}, sr,
                              run.dir / "samples" / "say_spectrograms.png", hop=run["data"].hop_length)
            return {"written": written, "vocoder": name}

        def evaluate_stage():
            return evaluate(run, load_role(self, run, dist), self.vocoders(run, dist), dist.device, bf16)

        stages = [Stage("prepare", ["data", "text", "prep"], lambda: TTS.prepare(run), "main+wait"),
                  train_stage(run, TTS, dist, resume, DEPS)]
        if v.run:
            stages.append(Stage("vocoder", ["vocoder.run", "vocoder.recipe"], vocoder))
        if v.run and v.finetune_steps:
            keys = ["vocoder.run", "vocoder.finetune_steps", "vocoder.finetune_lr", "vocoder.finetune_batch",
                    "sample.sampler", "sample.steps", "sample.spacing", "sample.temperature", "sample.seed"]
            stages.append(Stage("finetune_vocoder", DEPS + keys, finetune,
                                reset=lambda: archive_training(run.dir / FINETUNED_VOCODER)))
        return stages + [Stage("sample", DEPS + ["sample", "vocoder"], sample, "main"),
                         Stage("evaluate", DEPS + ["sample", "vocoder", "eval"], evaluate_stage, "main")]


TTS_KIND = TTSKind()
