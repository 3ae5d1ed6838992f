"""The acoustic model of speech synthesis: text encoder + duration predictor + mel decoder in one
module (Matcha-TTS's design; Mehta et al. 2024), trained with three losses:

  * duration: the predicted log-durations against those of the monotonic alignment search (MAS)
    between the encoder's per-token means mu_x and the real mel;
  * prior (encoder): the real mel's Gaussian log-likelihood around the aligned means mu_y, as in
    Grad-TTS -- it makes mu_y a coarse mel and gives MAS something to align;
  * the decoder's diffusion loss through the run's [diffusion] objective (core/objectives.py): the
    decoder is the network the core's samplers see, `forward(x_t, c_noise, mu=..., mask=..., spk=...)`,
    conditioned on mu_y concatenated as channels. With objective = "flow" this is Matcha's
    conditional flow matching, sampled in 2-10 ODE steps by the core's euler / heun samplers.

Mels are modelled normalised, (mel - mel_mean) / mel_std with the training set's scalar statistics
(buffers, fitted before step 1, saved with the weights).

`forward(..., losses=dict)` computes the three losses inside the module's own forward call, so
the trainer's DistributedDataParallel wrapper sees all of them.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn

from .alignment import generate_path, monotonic_alignment, sequence_mask
from .decoder import MelDecoder
from .encoder import TextEncoder


@dataclass
class TTSModelConfig:
    """The [model] section of a tts recipe."""
    n_symbols: int = 200            # embedding rows (>= the symbol table's size, 177)
    n_speakers: int = 0             # > 0: a speaker embedding (the corpus' speakers, data.speaker_file)
    speaker_dim: int = 64
    n_mels: int = 80
    encoder_channels: int = 192
    encoder_layers: int = 6
    encoder_heads: int = 2
    encoder_ffn: int = 768
    encoder_kernel: int = 3
    prenet_layers: int = 3
    dropout: float = 0.1
    duration_channels: int = 256
    duration_kernel: int = 3
    duration_dropout: float = 0.1
    decoder_channels: list[int] = field(default_factory=lambda: [256, 256])
    decoder_blocks: int = 1         # residual blocks per U-Net level
    decoder_heads: int = 2          # attention heads per block (0 = convolutions only)
    decoder_dropout: float = 0.05
    segment_frames: int = 0         # > 0: the decoder's loss on random crops of this many frames (Grad-TTS)
    prior_loss: bool = True

    def __post_init__(self):
        for name in ("n_symbols", "n_mels", "encoder_channels", "encoder_heads", "encoder_ffn", "duration_channels",
                     "decoder_blocks"):
            if getattr(self, name) < 1:
                raise ValueError(f"model.{name} must be >= 1, got {getattr(self, name)}")
        if not self.decoder_channels or min(self.decoder_channels) < 1:
            raise ValueError(f"model.decoder_channels must be a non-empty list of positive widths, "
                             f"got {self.decoder_channels}")
        if self.encoder_channels % self.encoder_heads:
            raise ValueError(f"model.encoder_channels = {self.encoder_channels} must divide into "
                             f"model.encoder_heads = {self.encoder_heads}")
        if self.decoder_heads and any(c % self.decoder_heads for c in self.decoder_channels):
            raise ValueError(f"model.decoder_channels {self.decoder_channels} must each divide into "
                             f"model.decoder_heads = {self.decoder_heads}")
        if self.n_speakers < 0 or self.segment_frames < 0:
            raise ValueError("model.n_speakers and model.segment_frames must be >= 0")


class TTSModel(nn.Module):
    def __init__(self, cfg: TTSModelConfig):
        super().__init__()
        self.cfg = cfg
        spk = cfg.speaker_dim if cfg.n_speakers else 0
        self.speakers = nn.Embedding(cfg.n_speakers, spk) if spk else None
        self.encoder = TextEncoder(cfg.n_symbols, cfg.n_mels, cfg.encoder_channels, cfg.encoder_layers,
                                   cfg.encoder_heads, cfg.encoder_ffn, cfg.encoder_kernel, cfg.prenet_layers,
                                   cfg.dropout, spk, cfg.duration_channels, cfg.duration_kernel,
                                   cfg.duration_dropout)
        self.decoder = MelDecoder(cfg.n_mels, cfg.n_mels + spk, cfg.decoder_channels, cfg.decoder_blocks,
                                  cfg.decoder_heads, cfg.decoder_dropout)
        self.register_buffer("mel_mean", torch.zeros(()))
        self.register_buffer("mel_std", torch.ones(()))

    # ---- mels --------------------------------------------------------------------------------
    def fit_statistics(self, mels) -> None:
        """The training mels' scalar mean and standard deviation (the normalisation)."""
        n, s, s2 = 0, 0.0, 0.0
        for m in mels:
            m = m.double()
            n, s, s2 = n + m.numel(), s + float(m.sum()), s2 + float((m * m).sum())
        mean = s / n
        self.mel_mean.fill_(mean)
        self.mel_std.fill_(max(math.sqrt(max(s2 / n - mean * mean, 0.0)), 1e-3))

    def normalize(self, mel):
        return (mel - self.mel_mean) / self.mel_std

    def denormalize(self, y):
        return y * self.mel_std + self.mel_mean

    # ---- pieces -------------------------------------------------------------------------------
    def speaker_embedding(self, spk, batch: int, device):
        if self.speakers is None:
            return None
        if spk is None:
            raise ValueError("this model has speakers: give each item's speaker id")
        return self.speakers(spk.to(device).long().reshape(batch))

    def _cond(self, mu, spk_emb):
        if spk_emb is None:
            return mu
        return torch.cat([mu, spk_emb[:, :, None].expand(-1, -1, mu.shape[-1]).to(mu.dtype)], 1)

    def forward(self, x_t, c_noise=None, mu=None, mask=None, spk=None, *, losses: dict | None = None):
        """The decoder, as the core's samplers call it: raw prediction [B, n_mels, T]. With `losses`
        (the keywords of `training_losses`), the training losses instead."""
        if losses is not None:
            return self.training_losses(**losses)
        if mask is None:
            mask = torch.ones_like(x_t[:, :1])
        spk_emb = self.speaker_embedding(spk, x_t.shape[0], x_t.device) if self.speakers is not None else None
        return self.decoder(x_t, c_noise, self._cond(mu, spk_emb), mask.to(x_t.dtype))

    def encode(self, ids, lengths, spk=None):
        """(mu_x [B, n_mels, T_x], log-durations [B, T_x], x_mask [B, 1, T_x], speaker embedding or None)."""
        x_mask = sequence_mask(lengths, ids.shape[1])[:, None].to(torch.float32)
        spk_emb = self.speaker_embedding(spk, ids.shape[0], ids.device)
        _, mu_x, logw = self.encoder(ids, x_mask, spk_emb)
        return mu_x, logw, x_mask, spk_emb

    @staticmethod
    def log_likelihood(mu_x, y):
        """[B, T_x, T_y]: log N(y_j; mu_x_i, I) up to the constant, in fp32 (for MAS)."""
        with torch.autocast(mu_x.device.type, enabled=False):
            mu_x, y = mu_x.float(), y.float()
            return (torch.einsum("bci,bcj->bij", mu_x, y) - 0.5 * mu_x.square().sum(1)[:, :, None]
                    - 0.5 * y.square().sum(1)[:, None, :])

    @torch.no_grad()
    def align(self, ids, x_lengths, mel, y_lengths, spk=None):
        """Ground-truth alignment of real mels: (path [B, T_x, T_y], mu_y [B, n_mels, T_y] in normalised units)."""
        mu_x, _, _, _ = self.encode(ids, x_lengths, spk)
        y = self.normalize(mel)
        path = monotonic_alignment(self.log_likelihood(mu_x, y), x_lengths, y_lengths)
        return path, torch.einsum("bci,bij->bcj", mu_x.float(), path)

    @torch.no_grad()
    def predict_durations(self, ids, lengths, spk=None, length_scale: float = 1.0):
        """(whole-frame durations [B, T_x], mu_x, x_mask, speaker embedding) from the duration predictor."""
        mu_x, logw, x_mask, spk_emb = self.encode(ids, lengths, spk)
        w = torch.exp(logw.float()) * x_mask[:, 0] * length_scale
        d = torch.ceil(w) * x_mask[:, 0]
        # at least one frame per utterance
        d[:, 0] = torch.where(d.sum(1) < 1, torch.ones_like(d[:, 0]), d[:, 0])
        return d, mu_x, x_mask, spk_emb

    @torch.no_grad()
    def prior(self, ids, lengths, spk=None, length_scale: float = 1.0):
        """What the decoder is conditioned on at synthesis: (mu_y [B, n_mels, T_y], y_mask [B, 1, T_y],
        frames per item [B], durations [B, T_x])."""
        d, mu_x, x_mask, _ = self.predict_durations(ids, lengths, spk, length_scale)
        frames = d.sum(1).long()
        path = generate_path(d, x_mask[:, 0])
        mu_y = torch.einsum("bci,bij->bcj", mu_x.float(), path)
        return mu_y, sequence_mask(frames, path.shape[-1])[:, None].float(), frames, d

    # ---- training ------------------------------------------------------------------------------
    def training_losses(self, ids, x_lengths, mel, y_lengths, objective, draws, spk=None, offsets=None) -> dict:
        """{"duration", "prior", "diffusion"} for a padded batch: ids [B, T_x], mel [B, n_mels, T_y]."""
        mu_x, logw, x_mask, spk_emb = self.encode(ids, x_lengths, spk)
        y_mask = sequence_mask(y_lengths, mel.shape[-1])[:, None].to(torch.float32)
        y = self.normalize(mel) * y_mask
        path = monotonic_alignment(self.log_likelihood(mu_x.detach(), y), x_lengths, y_lengths)
        target = torch.log(1e-8 + path.sum(-1)) * x_mask[:, 0]
        duration = ((logw.float() - target) ** 2).sum() / x_lengths.sum()
        mu_y = torch.einsum("bci,bij->bcj", mu_x.float(), path)
        out = {"duration": duration}
        if self.cfg.prior_loss:
            out["prior"] = (0.5 * ((y - mu_y) ** 2 + math.log(2 * math.pi)) * y_mask).sum() / (
                y_mask.sum() * self.cfg.n_mels)
        seg = self.cfg.segment_frames
        if seg and offsets is not None:
            y, mu_y, y_mask = crop_segments(offsets, y_lengths, seg, y, mu_y, y_mask)
        cond = {"mu": mu_y, "mask": y_mask}
        if spk is not None and self.speakers is not None:
            cond["spk"] = spk
        decoder = lambda x_t, c_noise, **c: self.forward(x_t, c_noise, **c)  # noqa: E731  (not via DDP again)
        out["diffusion"] = objective.loss(decoder, y, draws, cond=cond, mask=y_mask)
        return out


def crop_segments(offsets, lengths, frames: int, *tensors):
    """The same random crop of `frames` frames of each item (offset u in [0, 1) of what fits) out of
    every [B, C, T] tensor; shorter items are taken whole and zero-padded (their mask says so)."""
    starts = (offsets.float().cpu() * (lengths.cpu() - frames + 1).clamp(min=1)).long().clamp(min=0)
    out = []
    for t in tensors:
        if t.shape[-1] < frames:
            t = torch.nn.functional.pad(t, (0, frames - t.shape[-1]))
        out.append(torch.stack([t[b, :, s:s + frames] for b, s in enumerate(starts.tolist())]))
    return out
