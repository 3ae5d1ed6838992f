"""Audio recipes: a DiffWave vocoder (mel -> waveform) or unconditional DiffWave, on the shared core.

Stages: prepare (build the espeak corpus when the recipe can, validate the data, cache mels),
train, evaluate (vocoder: held-out resynthesis against Griffin-Lim; unconditional: samples).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import soundfile as sf
import torch

from ..core import Denoiser, sample
from ..data.audio import AudioData, AudioDataError, build_audio_dataset
from ..data.mel import MelConfig, silence_mel
from ..data.mel_consistency import MelConsistency
from ..models.diffwave import DiffWave, DiffWaveConfig
from ..models.diffwave.noise_prior import MelEnergyPrior, MelEnvelopePrior, NoisePriorModel
from ..engine import TrainConfig, Trainer, latest_checkpoint, load_ema_weights
from ..engine.config import ConfigError
from ..modalities.sections import DiffusionConfig, batch_loss
from ..engine.distributed import DistInfo, barrier
from ..engine.precision import InferenceModel, resolve_precision
from ..utils import added_key, atomic_path
from ..engine.runs import Run, section_hash

# lmnt-com/diffwave's fast 6-step inference schedule (Kong et al. 2021, Table 8)
FAST_BETAS = [1e-4, 1e-3, 1e-2, 0.05, 0.2, 0.5]


@dataclass
class AudioPrepConfig:
    """The [prep] section: how `prepare` makes the data when it is missing."""
    build: str = ""                   # "" = the data must exist | "espeak": synthesise the corpus with espeak-ng
    utterances: int = 300
    seed: int = 0


@dataclass
class VocodeConfig:
    """The [vocode] section: default inference settings."""
    steps: int = 6                    # 6 = the fast schedule FAST_BETAS aligned to training steps; else T-step ddpm
    sampler: str = "ddpm"
    chunk_frames: int = 0             # > 0: vocode long inputs in overlapping chunks of this many frames
    overlap_frames: int = 16
    seed: int = 0
    consistency: int = added_key(0)   # > 0: mel-consistency iterations on every clean estimate (data/mel_consistency.py)


@dataclass
class AudioEvalConfig:
    """The [eval] section."""
    n: int = 20                       # held-out utterances (vocoder) or generated clips (unconditional)
    steps: list[int] = field(default_factory=lambda: [6, 50])
    griffin_lim_iters: int = 64
    save_wavs: int = 4
    consistency: list[int] = added_key([])  # also evaluate 6 steps with these mel-consistency iterations
    # unconditional models (audio_uncond_eval.py): clip length, clips per sampling batch, and the epochs
    # of the classifier trained on the real train clips that scores them
    seconds: float = added_key(1.0)
    batch: int = added_key(16)
    classifier_epochs: int = added_key(12)
    guidance: float = added_key(1.0)  # class-conditional models: classifier-free guidance scale (1 = off)


SCHEMA = {"data": AudioData, "model": DiffWaveConfig, "diffusion": DiffusionConfig, "train": TrainConfig,
          "prep": AudioPrepConfig, "vocode": VocodeConfig, "eval": AudioEvalConfig}


def write_wav(path, wav: torch.Tensor, sample_rate: int) -> None:
    with atomic_path(path) as tmp:
        sf.write(tmp, wav.reshape(-1).float().numpy(), sample_rate, subtype="PCM_16", format="WAV")


def method_table(rows: list[dict], columns: dict[str, str], first: str = "method") -> str:
    """An evaluation's rows as a markdown table: one row per r["method"], the `columns` (key -> header)
    any row has, "-" where a row lacks one (e.g. PESQ without the `eval` extra)."""
    keys = [k for k in columns if any(k in r for r in rows)]
    lines = [f"| {first} | " + " | ".join(columns[k] for k in keys) + " |", "|---|" + "---|" * len(keys)]
    for r in rows:
        lines.append(f"| {r['method']} | " + " | ".join(f"{r[k]:.3f}" if k in r else "-" for k in keys) + " |")
    return "\n".join(lines) + "\n"


def mel_config(sections: dict) -> MelConfig:
    d = sections["data"]
    return MelConfig.preset(d.mel, sample_rate=d.sample_rate, hop_length=sections["model"].hop_length)


def is_vocoder(sections: dict) -> bool:
    return sections["model"].n_mels > 0


def check_config(sections: dict) -> None:
    m, mc = sections["model"], mel_config(sections)
    if m.n_mels and m.n_mels != mc.n_mels:
        raise ConfigError(f"model.n_mels = {m.n_mels} but the {sections['data'].mel} mel has {mc.n_mels} bands")


def fingerprint(sections: dict) -> str:
    return section_hash(sections, ["data", "model", "diffusion"])


def cache_dir(run: Run) -> Path:
    return Path(run["data"].cache_dir) if run["data"].cache_dir else run.dir / "mel_cache"


class AudioTask:
    """Loss for DiffWave: random aligned crops (drawn from the step's random numbers, so resumable
    and independent of the number of processes), noise, the core's diffusion loss. With a noise
    prior, the noise is the prior's and the error is weighted by its whitening (models/diffwave/noise_prior.py)."""

    channels_last = False

    def __init__(self, sections: dict, device: torch.device, prior: torch.nn.Module | None = None):
        self.s, self.device, self.prior = sections, device, prior
        self.sched = sections["diffusion"].build_schedule()
        self.mel = mel_config(sections)
        self.frames = sections["data"].crop_frames

    @staticmethod
    def collate(items):
        return items  # variable-length clips: cropped in loss() with the step's draws

    def crop(self, items, offsets: torch.Tensor):
        hop, audio, mels = self.mel.hop_length, [], []
        for (a, m, _), u in zip(items, offsets.tolist()):
            n = m.shape[-1]
            if n >= self.frames:
                start = min(int(u * (n - self.frames + 1)), n - self.frames)
                audio.append(a[:, start * hop:(start + self.frames) * hop])
                mels.append(m[:, start:start + self.frames])
            else:  # short clip: pad with silence, as at the end of an utterance
                audio.append(torch.nn.functional.pad(a, (0, (self.frames - n) * hop)))
                pad = silence_mel(self.mel)[:, None].expand(-1, self.frames - n)
                mels.append(torch.cat([m, pad], 1))
        return torch.stack(audio), torch.stack(mels)

    def loss(self, net, batch, rand):
        offsets = rand.rand()
        if self.frames > 0:
            audio, mel = self.crop(batch, offsets)
        else:
            audio, mel = torch.stack([a for a, _, _ in batch]), torch.stack([m for _, m, _ in batch])
        cond, audio = {}, audio.to(self.device)
        if is_vocoder(self.s):
            cond["mel"] = mel.to(self.device)
        prior = {}
        if self.prior is not None:
            mel = cond["mel"]
            prior = dict(noise_color=lambda z: self.prior.color(z, mel), error_map=lambda r: self.prior.whiten(r, mel))
        if self.s["model"].num_classes:
            cond["y"] = torch.tensor([y for _, _, y in batch], device=self.device)
        return batch_loss(net, self.s["diffusion"], self.sched, audio, rand, cond, **prior)

    def preview(self, model, path: Path) -> None:
        return None  # audio previews are the evaluate stage's WAVs


def build_model(sections: dict) -> DiffWave | NoisePriorModel:
    """The DiffWave; with a [model] noise_prior, together with its (to be fitted) prior."""
    m = sections["model"]
    net = DiffWave(m)
    if m.noise_prior == "none":
        return net
    kind = MelEnergyPrior if m.noise_prior == "mel_energy" else MelEnvelopePrior
    return NoisePriorModel(net, kind(mel_config(sections), m.prior_std_min))


def load_trained(run_dir: Path, sections: dict):
    ckpt = latest_checkpoint(Path(run_dir) / "checkpoints")
    if ckpt is None:
        raise ConfigError(f"'{run_dir}' has no checkpoint yet: train it first (multidiff train ...)")
    return load_ema_weights(ckpt, build_model(sections)), ckpt


def denoiser(sections: dict, model, device, bf16) -> Denoiser:
    d = sections["diffusion"]
    return Denoiser(InferenceModel(model, device, bf16), d.build_schedule(), d.prediction)


def levels_kwargs(sections: dict, steps: int) -> dict:
    """steps == 6: the fast schedule (inference betas with aligned fractional training steps);
    otherwise `steps` evenly spaced training steps."""
    sched = sections["diffusion"].build_schedule()
    if steps == len(FAST_BETAS):
        from ..core import Schedule

        fast = Schedule.from_betas(FAST_BETAS)
        return {"timesteps": sched.align_betas(FAST_BETAS).flip(0), "sigmas": fast.sigmas.flip(0)}
    return {"steps": steps, "spacing": "linspace" if steps < sched.T else "leading"}


def generate_audio(sections: dict, model, n_samples: int, mel: torch.Tensor | None, steps: int, device, bf16: bool,
                   generator: torch.Generator, sampler: str = "ddpm", mask=None, known=None,
                   labels=None, batch: int = 1, consistency: int = 0, guidance: float = 1.0, **extra) -> torch.Tensor:
    """[B, 1, n_samples] waveforms: vocoded from `mel` [B, n_mels, frames], or unconditional (B = batch).
    `consistency` > 0: that many mel-consistency iterations on every clean estimate (vocoders only).
    `labels` [B] (class-conditional models) with `guidance` != 1: classifier-free guidance against the
    null label (the model learns it through [model] class_dropout).
    `extra`: sample()'s repaint= / reconstruction= for filling the mask == 0 part of `known`."""
    B = mel.shape[0] if mel is not None else (known.shape[0] if known is not None else batch)
    cond = {}
    if mel is not None:
        cond["mel"] = mel
    if labels is not None:
        cond["y"] = labels
        if guidance != 1.0:
            extra.update(guidance_scale=guidance, uncond={**cond, "y": torch.full_like(labels, sections["model"].num_classes)})
    elif guidance != 1.0:
        raise ValueError("guidance needs class labels: it applies to class-conditional models ([model] num_classes > 0)")
    if getattr(model, "prior", None) is not None:
        extra["noise_color"] = model.noise_color(mel)
    if consistency > 0:
        if mel is None:
            raise ValueError("mel consistency needs a mel: it applies to vocoders, not unconditional models")
        project = MelConsistency(mel.to(device), mel_config(sections), consistency)
        extra["x0_projection"] = lambda x0, sigma: project(x0)
    noise = torch.randn(B, 1, n_samples, generator=generator)
    kw = {"variance": "posterior"} if sampler == "ddpm" else {}
    x = sample(denoiser(sections, model, device, bf16), noise, sampler, generator=generator, cond=cond or None,
               mask=mask, known=known, **levels_kwargs(sections, steps), **kw, **extra)
    return x.clamp(-1, 1)


def vocode(sections: dict, model, mel: torch.Tensor, steps: int, device, bf16: bool, generator,
           sampler: str = "ddpm", chunk_frames: int = 0, overlap: int = 16, consistency: int = 0) -> torch.Tensor:
    """mel [n_mels, frames] -> waveform [1, frames * hop]. Long inputs go in overlapping chunks
    (one batch) joined with linear cross-fades, so memory stays bounded and no seam is audible."""
    hop = sections["model"].hop_length
    frames = mel.shape[-1]
    if chunk_frames <= 0 or frames <= chunk_frames:
        return generate_audio(sections, model, frames * hop, mel[None], steps, device, bf16, generator, sampler,
                              consistency=consistency)[0]
    if overlap >= chunk_frames:
        raise ValueError(f"overlap ({overlap} frames) must be smaller than the chunk ({chunk_frames} frames)")
    stride = chunk_frames - overlap
    starts = list(range(0, frames - overlap, stride))
    pad = starts[-1] + chunk_frames - frames
    padded = torch.cat([mel, silence_mel(mel_config(sections))[:, None].expand(-1, pad)], 1) if pad > 0 else mel
    chunks = torch.stack([padded[:, s:s + chunk_frames] for s in starts])
    audio = generate_audio(sections, model, chunk_frames * hop, chunks, steps, device, bf16, generator, sampler,
                           consistency=consistency)
    out = torch.zeros(1, (starts[-1] + chunk_frames) * hop)
    weight = torch.zeros_like(out)
    ramp = torch.ones(chunk_frames * hop)
    fade = torch.linspace(0, 1, overlap * hop + 2)[1:-1]
    for i, s in enumerate(starts):
        w = ramp.clone()
        if i > 0:
            w[:overlap * hop] = fade
        if i < len(starts) - 1:
            w[-overlap * hop:] = fade.flip(0)
        out[:, s * hop:(s + chunk_frames) * hop] += audio[i] * w
        weight[:, s * hop:(s + chunk_frames) * hop] += w
    return (out / weight.clamp(min=1e-8))[:, :frames * hop]


# ---- the pipeline -----------------------------------------------------------------------
def prepare(run: Run) -> dict:
    data, prep = run["data"], run["prep"]
    root = Path(data.root)
    if prep.build == "espeak" and not (root / "metadata.csv").exists():
        from data_prep import espeak_corpus

        run.log(f"[prepare] building the espeak-ng corpus in {root} ({prep.utterances} utterances)")
        if espeak_corpus.main(["--out", str(root), "--n", str(prep.utterances), "--seed", str(prep.seed)]) != 0:
            raise AudioDataError(f"could not build the espeak corpus in '{root}' (see the message above)")
    out = {}
    splits = ("train", "dev", "eval") if data.layout != "folder" or (root / "splits").exists() else ("train",)
    for split in splits:
        try:
            ds = build_audio_dataset(data, split, cache_dir=cache_dir(run))
        except AudioDataError:
            if split == "train":
                raise
            continue
        for i in range(len(ds)):  # computes and caches every mel once, up front
            ds[i]
        out[split] = {"items": len(ds), "skipped": [f"{p}: {r}" for p, r in ds.skipped]}
    return out


def train(run: Run, dist: DistInfo, resume: bool) -> dict:
    s = run.sections
    check_config(s)
    ds = build_audio_dataset(s["data"], "train", cache_dir=cache_dir(run))
    if s["model"].num_classes and s["model"].num_classes != ds.num_classes:
        raise ConfigError(f"model.num_classes = {s['model'].num_classes} but the data has {ds.num_classes} classes")
    model = build_model(s)
    prior = getattr(model, "prior", None)
    if prior is not None:  # the training set's energy range (a resumed run loads the same from its checkpoint)
        prior.fit(ds[i][1] for i in range(len(ds)))
        run.log(f"[train] {s['model'].noise_prior} noise prior fitted on {len(ds)} training mels")
    trainer = Trainer(model, ds, AudioTask(s, dist.device, prior), s["train"], run.dir, dist=dist,
                      fingerprint=fingerprint(s))
    ckpt = trainer.fit(resume=resume)
    return {"checkpoint": str(ckpt), "precision": "bf16" if trainer.bf16 else "fp32"}


def run_recipe(run: Run, dist: DistInfo, resume: bool) -> None:
    from .audio_eval import evaluate

    check_config(run.sections)
    if dist.is_main:
        run.stage("prepare", ["data", "prep"], lambda: prepare(run))
    barrier(dist)  # the other processes wait for the data the first one prepares
    run.stage("train", ["data", "model", "diffusion", "train"], lambda: train(run, dist, resume))
    if dist.is_main:
        run.stage("evaluate", ["data", "model", "diffusion", "train", "eval"], lambda: evaluate(run, dist))


def device_and_precision(precision: str = "auto"):
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return dev, resolve_precision(precision, dev)
