"""Audio: DiffWave on waveforms [1, L] in [-1, 1] -- a vocoder (mel -> waveform) or an unconditional
(optionally class-conditional) generator of short clips."""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch

from data_prep import espeak_corpus

from ..core import Schedule
from ..data.audio import AudioData, AudioDataError, build_audio_dataset, read_audio, write_wav
from ..data.mel import MelConfig, mel_spectrogram, silence_mel
from ..data.mel_check import check_vocoder_mel
from ..engine.config import ConfigError
from ..models.diffwave import DiffWave, DiffWaveConfig, MelEnergyPrior, MelEnvelopePrior, NoisePriorModel
from ..outputs import OutputSpec
from ..utils import added_key, read_npy
from .base import Known, Modality, Prepared
from .image import is_folder
from .sections import SampleConfig, SamplerEta, batch_loss

# lmnt-com/diffwave's fast 6-step inference schedule (Kong et al. 2021, Table 8)
FAST_BETAS = [1e-4, 1e-3, 1e-2, 0.05, 0.2, 0.5]


@dataclass
class AudioPrepConfig:
    """The [prep] section: how `prepare` makes the data when it is missing."""
    build: str = ""                   # "" = the data must exist | "espeak": synthesise the corpus with espeak-ng
    utterances: int = 300
    seed: int = 0


@dataclass
class VocodeConfig(SamplerEta):
    """The [vocode] section: default inference settings."""
    steps: int = 6                    # 6 = the fast schedule FAST_BETAS aligned to training steps; else T-step ddpm
    sampler: str = "ddpm"
    chunk_frames: int = 0             # > 0: vocode long inputs in overlapping chunks of this many frames
    overlap_frames: int = 16
    seed: int = 0
    consistency: int = added_key(0)   # > 0: mel-consistency iterations per clean estimate (data/mel_consistency.py)
    eta: float = added_key(-1.0)      # ddim's noise scale; < 0: the sampler's default (ddim 0; ddpm takes none)


def mel_config(sections: dict) -> MelConfig:
    d = sections["data"]
    return MelConfig.preset(d.mel, sample_rate=d.sample_rate, hop_length=sections["model"].hop_length)


def is_vocoder(sections: dict) -> bool:
    return sections["model"].n_mels > 0


def cache_dir(run) -> Path:
    return Path(run["data"].cache_dir) if run["data"].cache_dir else run.dir / "mel_cache"


def levels_kwargs(sections: dict, steps: int) -> dict:
    """steps == 6 on DiffWave's own (VP) objective: the fast schedule (inference betas with aligned
    fractional training steps); otherwise `steps` evenly spaced levels of the objective."""
    sched = sections["diffusion"].build_schedule()
    if steps == len(FAST_BETAS) and sections["diffusion"].objective == "vp":
        fast = Schedule.from_betas(FAST_BETAS)
        return {"timesteps": sched.align_betas(FAST_BETAS).flip(0), "sigmas": fast.sigmas.flip(0)}
    return {"steps": steps, "spacing": "linspace" if steps < sched.T else "leading"}


def build_espeak_corpus(run, prep, root: Path) -> Path:
    """`[prep] build = "espeak"`: the espeak-ng corpus in `root` when it has no metadata.csv yet (the vocoder
    and the text-to-speech recipes read the same corpus)."""
    if prep.build == "espeak" and not (root / "metadata.csv").exists():
        run.log(f"[prepare] building the espeak-ng corpus in {root} ({prep.utterances} utterances)")
        if espeak_corpus.main(["--out", str(root), "--n", str(prep.utterances), "--seed", str(prep.seed)]) != 0:
            raise AudioDataError(f"could not build the espeak corpus in '{root}' (see the message above)")
    return root


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
        p = self.prepare_batch(batch, rand)
        return batch_loss(net, self.s["diffusion"], self.sched, p.x0, rand, p.cond, **p.loss_kw)

    def prepare_batch(self, batch, rand) -> Prepared:
        """The micro-batch as the loss sees it (crops, mels, labels, the noise prior), from the step's draws."""
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
        return Prepared(audio, cond, prior)

    def preview(self, model, path: Path) -> None:
        return None  # audio previews are the evaluate stage's WAVs


def parse_gap(text: str) -> tuple[float, float]:
    try:
        a, b = (float(v) for v in text.split(":"))
    except ValueError:
        raise ConfigError(f"--gap must look like START:END in seconds (e.g. 1.20:1.45), got {text!r}") from None
    if not (math.isfinite(a) and math.isfinite(b)):
        raise ConfigError(f"--gap {text}: START and END must be finite numbers of seconds (e.g. 1.20:1.45)")
    if not 0 <= a < b:
        raise ConfigError(f"--gap {text}: need 0 <= START < END")
    return a, b


def bridged_mel(wav: torch.Tensor, mask: torch.Tensor, s0: int, s1: int, sections: dict) -> torch.Tensor:
    """The mel a vocoder fills a gap with: the gap's own frames are unknown, so they are interpolated
    linearly between the frames at its edges."""
    hop = sections["model"].hop_length
    m = mel_spectrogram(wav * mask, mel_config(sections))
    f0, f1 = s0 // hop, min(-(-s1 // hop), m.shape[1] - 1)
    left, right = m[:, max(f0 - 1, 0)], m[:, f1]
    w = torch.linspace(0, 1, f1 - f0 + 2)[1:-1]
    m[:, f0:f1] = left[:, None] * (1 - w) + right[:, None] * w
    return m[None]


class AudioModality(Modality):
    name = "audio"
    data_section, model_section = AudioData, DiffWaveConfig
    extra_sections = {"prep": AudioPrepConfig, "vocode": VocodeConfig}

    def check(self, sections: dict) -> None:
        m, mc = sections["model"], mel_config(sections)
        if m.n_mels and m.n_mels != mc.n_mels:
            raise ConfigError(f"model.n_mels = {m.n_mels} but the {sections['data'].mel} mel has {mc.n_mels} bands")

    def prepare(self, run) -> dict:
        data = run["data"]
        root = build_espeak_corpus(run, run["prep"], Path(data.root))
        out = {}
        splits = ("train", "dev", "eval") if data.layout != "folder" or (root / "splits").exists() else ("train",)
        for split in splits:
            try:
                ds = self.dataset(run, split)
            except AudioDataError:
                if split == "train":
                    raise
                continue
            for i in range(len(ds)):  # computes and caches every mel once, up front
                ds[i]
            out[split] = {"items": len(ds), "skipped": [f"{p}: {r}" for p, r in ds.skipped]}
        return out

    def dataset(self, run, split: str):
        return build_audio_dataset(run["data"], split, cache_dir=cache_dir(run))

    def build_model(self, sections: dict) -> DiffWave | NoisePriorModel:
        """The DiffWave; with a [model] noise_prior, together with its (to be fitted) prior."""
        m = sections["model"]
        net = DiffWave(m)
        if m.noise_prior == "none":
            return net
        kind = MelEnergyPrior if m.noise_prior == "mel_energy" else MelEnvelopePrior
        return NoisePriorModel(net, kind(mel_config(sections), m.prior_std_min))

    def fit_model(self, run, model, dataset) -> None:
        prior = getattr(model, "prior", None)
        if prior is not None:  # the training set's energy range (a resumed run loads the same from its checkpoint)
            prior.fit(dataset[i][1] for i in range(len(dataset)))
            run.log(f"[train] {run['model'].noise_prior} noise prior fitted on {len(dataset)} training mels")

    def task(self, sections, device, bf16, preview=None, model=None):
        return AudioTask(sections, device, getattr(model, "prior", None))

    def sample_shape(self, sections: dict, length: int | None = None) -> tuple[int, ...]:
        return 1, int(length)

    def sample_settings(self, sections: dict) -> SampleConfig:
        """Unconditional clips: DiffWave's ancestral sampler over every training step."""
        return SampleConfig(sampler="ddpm", steps=sections["diffusion"].timesteps, spacing="leading", clip_x0=0.0,
                            n=8)

    def sampling(self, sections: dict, sampler: str, steps: int, spacing=None, eta=None) -> dict:
        kw = {"sampler": sampler, **levels_kwargs(sections, steps)}
        if sampler == "ddpm":
            kw["variance"] = "posterior"
        if eta is not None:
            kw["eta"] = eta
        return kw

    def estimate_clip(self, sections: dict) -> None:
        return None  # DiffWave's samplers run unclamped; the waveform is clamped at the end

    def sample_extras(self, model, cond, device) -> dict:
        if getattr(model, "prior", None) is not None:
            return {"noise_color": model.noise_color((cond or {}).get("mel"))}
        return {}

    def generation_refusal(self, sections: dict, run_dir) -> str | None:
        if is_vocoder(sections):
            return f"'{run_dir}' is a vocoder (it needs mels): use `multidiff vocode`"
        return None

    def generation_length(self, sections: dict, request) -> int:
        sr, hop = sections["data"].sample_rate, sections["model"].hop_length
        if not request.seconds or request.seconds <= 0 or int(sr * request.seconds) < hop:
            raise ConfigError(f"--seconds {request.seconds}: give a clip length of at least {hop / sr:.3f} s "
                              f"(one hop of {hop} samples at {sr} Hz)")
        return int(sr * request.seconds) // hop * hop

    def sample_output(self, sections: dict, n: int) -> OutputSpec:
        return OutputSpec((".wav",) if n == 1 else (), folder=True,
                          why="" if n == 1 else f"{n} clips are written one WAV each; a file name fits --n 1 only")

    def completed_output(self, sections: dict) -> OutputSpec:
        return OutputSpec((".wav",))

    def write_samples(self, x, out: str, sections: dict, labels, request) -> str:
        if not is_folder(out):  # one clip to the file named
            write_wav(out, x[0], sections["data"].sample_rate)
            return str(out)
        for i in range(len(x)):
            write_wav(Path(out) / f"sample_{i:04d}.wav", x[i], sections["data"].sample_rate)
        return f"{len(x)} WAVs to {out}"

    def read_known(self, request, sections: dict) -> Known:
        if not request.input or not request.gap:
            raise ConfigError("audio inpainting needs --input x.wav and --gap START:END (seconds)")
        sr, hop = sections["data"].sample_rate, sections["model"].hop_length
        wav = read_audio(request.input, sr)
        wav = wav[:, :wav.shape[1] // hop * hop]
        a, b = parse_gap(request.gap)
        s0, s1 = int(a * sr), min(int(b * sr), wav.shape[1])
        if s1 <= s0 or s1 > wav.shape[1]:
            raise ConfigError(f"--gap {request.gap} lies outside '{request.input}' ({wav.shape[1] / sr:.2f} s)")
        mask = torch.ones_like(wav)
        mask[:, s0:s1] = 0
        cond = {"mel": bridged_mel(wav, mask, s0, s1, sections)} if is_vocoder(sections) else None
        return Known(wav[None], mask[None], f"{(s1 - s0) / sr:.3f} s filled", cond)

    def completion_steps(self, sections: dict, known: Known) -> int:
        """A vocoder fills gaps in its fast schedule, an unconditional model over every training step."""
        return sections["vocode"].steps if known.extra_cond else sections["diffusion"].timesteps

    def write_completed(self, x, out: str, sections: dict, known: Known, request) -> str:
        write_wav(out, x[0], sections["data"].sample_rate)
        return str(out)

    def read_mel(self, path: Path, sections: dict) -> torch.Tensor:
        """A vocoder's input: a mel .npy [n_mels, frames] of this vocoder's configuration, or speech to re-vocode."""
        cfg = mel_config(sections)
        if path.suffix.lower() == ".npy":
            mel = torch.from_numpy(read_npy(path, "mel")).float()
            if mel.ndim != 2 or mel.shape[0] != cfg.n_mels or mel.shape[1] == 0:
                raise ConfigError(f"mel '{path}' has shape {tuple(mel.shape)}; this vocoder expects [{cfg.n_mels}, "
                                  f"frames] {cfg.style} mels with frames >= 1 (hop {cfg.hop_length}, "
                                  f"{cfg.sample_rate} Hz)")
            if not bool(torch.isfinite(mel).all()):
                raise ConfigError(f"mel '{path}' holds NaN or inf values")
            check_vocoder_mel(mel, cfg, f"mel '{path}'")  # another tool's convention: one message, not noise
            return mel
        wav = read_audio(path, sections["data"].sample_rate)
        return mel_spectrogram(wav, cfg)


AUDIO = AudioModality()

