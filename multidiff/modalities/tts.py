"""Text-to-speech: an acoustic model (text -> mel, models/tts/) whose signal is the mel [n_mels, frames]
of the vocoder's own mel configuration and whose conditioning is the text encoding aligned to the
frames. The decoder is an ordinary denoiser of the core -- `net(x_t, c_noise, mu=..., mask=..., spk=...)`
-- so every [diffusion] objective trains it and every sampler draws from it; `multidiff say`
(pipelines/say.py) puts the text front end before it and a DiffWave vocoder after it."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch


from ..core.samplers import SAMPLERS
from ..core.schedule import SPACINGS
from ..data.tts import TTSData, TTSDataset, collate, prepare_corpus, read_speaker_names, tts_mel_config
from ..engine.config import ConfigError
from ..engine.runs import section_hash
from ..models.tts import TTSModel, TTSModelConfig
from ..text import TextConfig
from ..text.symbols import INVENTORY
from .audio import AudioPrepConfig, build_espeak_corpus
from .base import Known, Modality

DEFAULT_SENTENCES = ["Hello world, this is multidiff.",
                     "The quick brown fox jumps over the lazy dog.",
                     "On March 3rd, 2024, Dr. Smith paid $12.50 for 3 books."]


@dataclass
class TTSSampleConfig:
    """The [sample] section: how speech is synthesised (the sample stage, the evaluation, `multidiff say`)."""
    sampler: str = "euler"          # flow matching: euler on evenly spaced t is Matcha-TTS's ODE solver
    steps: int = 4
    spacing: str = "linspace"
    temperature: float = 0.667      # scale of the starting noise (Matcha-TTS / Grad-TTS use < 1)
    speed: float = 1.0              # > 1 speaks faster (durations / speed)
    seed: int = 0
    pause: float = 0.25             # seconds of silence between sentences in one WAV
    sentences: list[str] = field(default_factory=lambda: list(DEFAULT_SENTENCES))

    def __post_init__(self):
        if self.sampler not in SAMPLERS:
            raise ValueError(f"sample.sampler = {self.sampler!r} is not one of {SAMPLERS}")
        if self.spacing not in SPACINGS:
            raise ValueError(f"sample.spacing = {self.spacing!r} is not one of {SPACINGS}")
        if self.steps < 1 or not self.temperature >= 0 or not self.speed > 0 or self.pause < 0:
            raise ValueError("sample.steps >= 1, sample.temperature >= 0, sample.speed > 0 and sample.pause >= 0")


class TTSTask:
    """The trainer's task: duration + prior + diffusion losses, computed in the model's own forward call."""

    channels_last = False
    collate = staticmethod(collate)

    def __init__(self, sections: dict, device: torch.device):
        self.device = device
        self.objective = sections["diffusion"].build_objective()
        self.speakers = sections["model"].n_speakers > 0
        self.sums, self.count = {}, 0

    def loss(self, net, batch, rand):
        ids, x_len, mel, y_len, spk = batch
        offsets = rand.rand()  # the decoder's crop (model.segment_frames), drawn first: resumable
        dev = self.device
        parts = net(None, losses=dict(ids=ids.to(dev), x_lengths=x_len.to(dev), mel=mel.to(dev),
                                      y_lengths=y_len.to(dev), objective=self.objective, draws=rand,
                                      spk=spk.to(dev) if self.speakers else None, offsets=offsets))
        for k, v in parts.items():
            self.sums[k] = self.sums.get(k, 0.0) + float(v.detach())
        self.count += 1
        return sum(parts.values())

    def prepare_batch(self, batch, rand):
        raise ConfigError("a tts run's decoder learns on its own encoder's alignment of each batch, which a separate "
                          "student cannot prepare: distillation of tts runs is not supported; its flow-matching "
                          "decoder already samples in 2-4 steps (multidiff say --steps 2)")

    def log_values(self) -> dict:
        out = {f"loss_{k}": v / max(self.count, 1) for k, v in self.sums.items()}
        self.sums, self.count = {}, 0
        return out

    def preview(self, model, path: Path) -> None:
        return None  # speech previews are the sample stage's WAVs


class TTSModality(Modality):
    name = "tts"
    data_section, model_section = TTSData, TTSModelConfig
    extra_sections = {"text": TextConfig, "prep": AudioPrepConfig, "sample": TTSSampleConfig}
    final_samples = "say/"

    def check(self, sections: dict) -> None:
        m, mc = sections["model"], tts_mel_config(sections["data"])
        if m.n_mels != mc.n_mels:
            raise ConfigError(f"model.n_mels = {m.n_mels} but the {mc.style} mel has {mc.n_mels} bands")
        if m.n_symbols < len(INVENTORY):
            raise ConfigError(f"model.n_symbols = {m.n_symbols} is smaller than the symbol table ({len(INVENTORY)} "
                              f"symbols): set model.n_symbols >= {len(INVENTORY)}")

    def fingerprint(self, sections: dict, **options) -> str:
        return section_hash(sections, ["data", "model", "diffusion", "text"])

    def prepare(self, run) -> dict:
        data = run["data"]
        build_espeak_corpus(run, run["prep"], Path(data.root))
        return prepare_corpus(run.dir, data, run["text"], run.log)

    def dataset(self, run, split: str) -> TTSDataset:
        return TTSDataset(run.dir, split)

    def build_model(self, sections: dict) -> TTSModel:
        return TTSModel(sections["model"])

    def fit_model(self, run, model: TTSModel, dataset: TTSDataset) -> None:
        n = len(read_speaker_names(run.dir))
        want = run["model"].n_speakers
        if want and not n:
            raise ConfigError("model.n_speakers > 0 but the corpus names no speakers: set data.speaker_file (e.g. "
                              "\"utterances.csv\" for the espeak corpus) or model.n_speakers = 0")
        if n and want != n:
            raise ConfigError(f"the training split has {n} speakers but model.n_speakers = {want}: set "
                              f"model.n_speakers = {n} (or 0 to ignore them)")
        model.fit_statistics(dataset.mel_frames())
        run.log(f"[train] mel statistics of {len(dataset)} training utterances: mean "
                f"{float(model.mel_mean):.3f}, std {float(model.mel_std):.3f}")

    def task(self, sections, device, bf16, preview=None, model=None, **options):
        return TTSTask(sections, device)

    def sample_shape(self, sections: dict, length: int | None = None) -> tuple[int, ...]:
        return sections["model"].n_mels, int(length)

    def estimate_clip(self, sections: dict) -> None:
        return None  # mels are modelled normalised, not in [-1, 1]

    def generation_refusal(self, sections: dict, run_dir) -> str:
        return (f"'{run_dir}' is a text-to-speech run: use multidiff say {run_dir} --vocoder VOCODER_RUN "
                "--text \"...\" --out speech.wav")

    def read_known(self, request, sections: dict) -> Known:
        raise ConfigError("a text-to-speech run fills no gaps; use `multidiff say` with it, or inpaint with its "
                          "vocoder run")


TTS = TTSModality()
