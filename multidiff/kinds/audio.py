"""The audio kind: a DiffWave vocoder, or unconditional / class-conditional DiffWave."""
from __future__ import annotations

from ..evaluation.audio import AudioEvalConfig, evaluate as evaluate_vocoder
from ..evaluation.audio_uncond import evaluate_unconditional
from ..modalities.audio import AUDIO, is_vocoder
from .base import TRAINING, Kind, Stage, bf16_of, load_role, train_stage


class AudioKind(Kind):
    name = "audio"
    base = AUDIO

    def schema(self):
        return {**AUDIO.schema(), "eval": AudioEvalConfig}

    def stages(self, run, dist, resume):
        def evaluate():
            fn = evaluate_vocoder if is_vocoder(run.sections) else evaluate_unconditional
            return fn(run, load_role(self, run, dist), dist.device, bf16_of(run, dist))
        return [Stage("prepare", ["data", "prep"], lambda: AUDIO.prepare(run), "main+wait"),
                train_stage(run, AUDIO, dist, resume, TRAINING),
                Stage("evaluate", TRAINING + ["eval"], evaluate, "main")]
