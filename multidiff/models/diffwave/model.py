"""DiffWave (Kong et al. 2021): net(x_t, t, mel=None, y=None) -> eps prediction, x_t [B, 1, L].

The architecture and parameter names are those of lmnt-com/diffwave, so its checkpoints load
as they are (`load_lmnt_checkpoint`): an input 1x1 conv, residual layers of a dilated conv
(kernel 3, dilation 2**(i % cycle)) + per-layer mel conditioner, a tanh*sigmoid gate and a 1x1
conv split into residual and skip halves, the skips summed and scaled by 1/sqrt(layers), and a
zero-initialised output conv. Three things differ, none in the parameters: the mel upsampler is
derived from the hop (transposed convs whose strides multiply to hop_length); it starts as linear
interpolation instead of PyTorch's default init, so the mel reaches every layer from the first
step (with the default init a run of minutes learns to ignore the mel; `upsampler_init = "lmnt"`
restores it); and an optional class / speaker label embedding is added to the step embedding.

Three code paths, one set of weights: the module path runs the layers as written above (the
reference, lmnt's code structure; `model.fast = False`); with gradients the same function runs as
one GEMM per layer with a hand-written backward (train_path.py, what training uses: 1.5-2x
faster on a CPU); under `torch.no_grad()` as a few GEMMs per layer with the weights repacked
(fast.py). fp32 agrees with the module path to ~1e-6, gradients included.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from ...nn import LabelEmbedding, check_class_dropout
from ...utils import added_key
from .fast import fast_forward
from .train_path import train_forward
from ..inputs import check_labels, check_timesteps

MAX_DERIVED_STRIDE = 32
EMBED_DIM = 512


@dataclass
class DiffWaveConfig:
    """The [model] section of an audio recipe's config.toml."""
    residual_channels: int = 64
    residual_layers: int = 30
    dilation_cycle: int = 10
    n_mels: int = 80                 # 0 = unconditional
    hop_length: int = 256            # audio samples per mel frame; the upsampler is derived from it
    upsample_strides: list[int] = field(default_factory=list)  # explicit factorisation of hop_length
    num_classes: int = 0             # > 0: label embedding; label num_classes is the null label
    class_dropout: float = added_key(0.1)  # training only: share of labels replaced by the null label (guidance)
    max_steps: int = 50              # training T: rows of the step-embedding table
    upsampler_init: str = "interpolate"  # or "lmnt" (PyTorch's default init); see SpectrogramUpsampler
    # a mel-shaped noise prior (models/diffwave/noise_prior.py): the noise the model is trained and sampled
    # with; the network itself is the same either way
    noise_prior: str = added_key("none")   # "none" | "mel_energy" (PriorGrad) | "mel_envelope" (SpecGrad-style)
    prior_std_min: float = added_key(0.1)  # the prior's floor (pauses; per bin for mel_envelope); 1 = the loudest frame


BASE = dict(residual_channels=64, residual_layers=30, dilation_cycle=10)
LARGE = dict(residual_channels=128, residual_layers=30, dilation_cycle=10)
UNCONDITIONAL = dict(residual_channels=256, residual_layers=36, dilation_cycle=12, n_mels=0)


# ---- mel upsampler -----------------------------------------------------------------------
def derive_upsample_strides(hop: int, max_stride: int = MAX_DERIVED_STRIDE) -> list[int]:
    """Strides whose product is `hop`: the fewest (two where possible, as lmnt's [16, 16] for 256),
    each <= max_stride, as equal as possible, ascending. 300 -> [15, 20], 16 -> [4, 4], 7 -> [7]."""
    if not isinstance(hop, int) or isinstance(hop, bool) or hop < 1:
        raise ValueError(f"[model] hop_length must be a positive integer, got {hop!r}")
    if hop == 1:
        return []
    primes, n = [], hop
    p = 2
    while p * p <= n:
        while n % p == 0:
            primes.append(p)
            n //= p
        p += 1
    if n > 1:
        primes.append(n)
    if max(primes) > max_stride:
        raise ValueError(
            f"[model] hop_length = {hop} = {' x '.join(map(str, primes))} cannot be split into upsampling strides "
            f"of at most {max_stride}; use a hop whose prime factors are all <= {max_stride} (e.g. 256 or 300), "
            f"or set [model] upsample_strides explicitly (their product must be {hop})")
    if len(primes) == 1:
        return primes
    for count in range(2, len(primes) + 1):
        best = _balanced_split(hop, count, max_stride)
        if best is not None:
            return best
    raise AssertionError("unreachable: the prime factorisation itself is a valid split")


def _balanced_split(hop: int, count: int, max_stride: int) -> list[int] | None:
    """The split of hop into `count` factors in [2, max_stride] with the smallest largest factor."""
    best = None

    def walk(rest, k, lo, acc):
        nonlocal best
        if k == 1:
            if lo <= rest <= max_stride:
                cand = acc + [rest]
                if best is None or (max(cand), -min(cand)) < (max(best), -min(best)):
                    best = cand
            return
        for f in range(lo, min(max_stride, rest) + 1):
            if rest % f == 0 and f ** (k - 1) <= rest:
                walk(rest // f, k - 1, f, acc + [f])

    walk(hop, count, 2, [])
    return best


def upsample_strides(cfg: DiffWaveConfig) -> list[int]:
    if cfg.upsample_strides:
        strides = [int(s) for s in cfg.upsample_strides]
        if any(s < 1 for s in strides) or math.prod(strides) != cfg.hop_length:
            raise ValueError(f"[model] upsample_strides = {cfg.upsample_strides} must be positive integers whose "
                             f"product is hop_length = {cfg.hop_length} (got {math.prod(strides)}); "
                             "leave it empty to derive them from the hop")
        return strides
    return derive_upsample_strides(cfg.hop_length)


class SpectrogramUpsampler(nn.Module):
    """[B, n_mels, frames] -> [B, n_mels, frames * prod(strides)]: ConvTranspose2d (kernel 3 over mel
    bins) + leaky ReLU(0.4) per stride, as lmnt's. Even stride s: kernel 2s, padding s/2 (lmnt's
    [3, 32] / [1, 8] for 16); odd s: kernel 2s + 1, padding (s + 1)/2. Either way each layer's
    output is exactly `stride` times longer than its input.

    init = "interpolate" (default) starts each layer as linear interpolation along time: a
    triangular kernel on the centre mel bin, zero elsewhere and zero bias, so the layers receive the
    mel itself from the first step. PyTorch's default init ("lmnt", what lmnt trains from) passes
    the mel scaled by ~1e-2 with a random comb across each frame: the conditioner then needs far
    more steps than a CPU budget has before it carries any signal (recipes/diffwave_espeak/README.md).
    Same parameters either way, so checkpoints load into both."""

    def __init__(self, strides: list[int], init: str = "interpolate"):
        super().__init__()
        if init not in ("interpolate", "lmnt"):
            raise ValueError(f"[model] upsampler_init must be 'interpolate' or 'lmnt', got {init!r}")
        self.strides = list(strides)
        for i, s in enumerate(self.strides):
            k, p = (2 * s, s // 2) if s % 2 == 0 else (2 * s + 1, (s + 1) // 2)
            conv = nn.ConvTranspose2d(1, 1, [3, k], stride=[1, s], padding=[1, p])
            if init == "interpolate":
                with torch.no_grad():
                    conv.weight.zero_()
                    conv.weight[0, 0, 1] = _interpolation_kernel(s)
                    conv.bias.zero_()
            self.add_module(f"conv{i + 1}", conv)

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        x = mel
        with torch.autocast(mel.device.type, enabled=False):  # one channel: fp32 costs nothing here
            for i, s in enumerate(self.strides):
                x = F.leaky_relu(_transposed_conv(x.to(self.conv1.weight.dtype), getattr(self, f"conv{i + 1}"), s), 0.4)
        return x


def _transposed_conv(x: torch.Tensor, conv: nn.ConvTranspose2d, s: int) -> torch.Tensor:
    """conv(x[:, None])[:, 0] for a one-channel ConvTranspose2d with kernel [3, k], stride [1, s] and
    padding [1, p], as a GEMM over the three mel taps and an overlap-add along time. PyTorch runs the
    transposed conv as a general 2-D convolution with one channel, ~20x slower on a CPU in fp32 and
    far slower again under bf16 autocast (half a second per training step at the recipe's size)."""
    B, M, Fr = x.shape
    w = conv.weight[0, 0]                                  # [3, k]
    k, p = w.shape[1], conv.padding[1]
    # output row i takes input rows i + 1 - kh: tap kh = 0 reads the row above, kh = 2 the row below
    taps = torch.stack([F.pad(x[:, 1:], (0, 0, 0, 1)), x, F.pad(x[:, :-1], (0, 0, 1, 0))], -1)
    chunks = -(-k // s)
    v = (taps @ F.pad(w, (0, chunks * s - k))).view(B, M, Fr, chunks, s)
    # frame f's chunk q lands on output frame f + q
    out = sum(F.pad(v[:, :, :, q], (0, 0, q, chunks - 1 - q)) for q in range(chunks))
    return out.reshape(B, M, -1)[..., p:p + Fr * s] + conv.bias


def _interpolation_kernel(s: int) -> torch.Tensor:
    """The transposed-conv kernel (length 2s, or 2s + 1 for odd s, with the padding above) that
    linearly interpolates between frame centres: a triangle of half-width s centred where an
    output sample sits at the centre of its frame. Any output's two taps sum to 1."""
    k = torch.arange(2 * s if s % 2 == 0 else 2 * s + 1, dtype=torch.float64)
    centre = s - 0.5 if s % 2 == 0 else float(s)
    return (1 - (k - centre).abs() / s).clamp_min(0).float()


# ---- diffusion-step embedding --------------------------------------------------------------
def _step_table(max_steps: int) -> torch.Tensor:
    """lmnt's table, computed with the same ops so fp32 values match bit for bit."""
    steps = torch.arange(max_steps).unsqueeze(1)
    dims = torch.arange(64).unsqueeze(0)
    table = steps * 10.0 ** (dims * 4.0 / 63.0)
    return torch.cat([torch.sin(table), torch.cos(table)], dim=1)


class DiffusionEmbedding(nn.Module):
    """128-d sinusoids tabulated at integer steps, linearly interpolated at fractional ones (lmnt's
    `_lerp_embedding`), then Linear-SiLU-Linear-SiLU to 512. Always fp32 (it is tiny)."""

    def __init__(self, max_steps: int):
        super().__init__()
        self.max_steps = max_steps
        self.register_buffer("embedding", _step_table(max_steps), persistent=False)
        self.projection1 = nn.Linear(128, EMBED_DIM)
        self.projection2 = nn.Linear(EMBED_DIM, EMBED_DIM)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        with torch.autocast(t.device.type, enabled=False):
            if t.dtype in (torch.int32, torch.int64):
                x = self.embedding[t]
            else:
                t = t.float()
                low = torch.floor(t).long()
                lo, hi = self.embedding[low], self.embedding[torch.ceil(t).long()]
                x = lo + (hi - lo) * (t - low).unsqueeze(-1)
            x = F.silu(self.projection1(x))
            return F.silu(self.projection2(x))


# ---- the network -------------------------------------------------------------------------------
def _conv1d(*args, **kw) -> nn.Conv1d:
    layer = nn.Conv1d(*args, **kw)
    nn.init.kaiming_normal_(layer.weight)  # lmnt's init
    return layer


class ResidualBlock(nn.Module):
    def __init__(self, n_mels: int, channels: int, dilation: int):
        super().__init__()
        self.dilation = dilation
        self.dilated_conv = _conv1d(channels, 2 * channels, 3, padding=dilation, dilation=dilation)
        self.diffusion_projection = nn.Linear(EMBED_DIM, channels)
        self.conditioner_projection = _conv1d(n_mels, 2 * channels, 1) if n_mels > 0 else None
        self.output_projection = _conv1d(channels, 2 * channels, 1)

    def forward(self, x, emb, cond=None):
        y = self.dilated_conv(x + self.diffusion_projection(emb).unsqueeze(-1))
        if self.conditioner_projection is not None:
            y = y + self.conditioner_projection(cond)
        gate, filt = y.chunk(2, dim=1)
        residual, skip = self.output_projection(torch.sigmoid(gate) * torch.tanh(filt)).chunk(2, dim=1)
        return (x + residual) * (1 / math.sqrt(2.0)), skip


class DiffWave(nn.Module):
    def __init__(self, cfg: DiffWaveConfig | None = None, **overrides):
        super().__init__()
        cfg = DiffWaveConfig(**{**(asdict(cfg) if cfg is not None else {}), **overrides})
        self.cfg = cfg = _check(cfg)
        C = cfg.residual_channels
        self.input_projection = _conv1d(1, C, 1)
        self.diffusion_embedding = DiffusionEmbedding(cfg.max_steps)
        self.label_embedding = LabelEmbedding(cfg.num_classes, EMBED_DIM, cfg.class_dropout) \
            if cfg.num_classes > 0 else None
        self.spectrogram_upsampler = SpectrogramUpsampler(upsample_strides(cfg), cfg.upsampler_init) if cfg.n_mels > 0 else None
        self.residual_layers = nn.ModuleList(
            ResidualBlock(cfg.n_mels, C, 2 ** (i % cfg.dilation_cycle)) for i in range(cfg.residual_layers))
        self.skip_projection = _conv1d(C, C, 1)
        self.output_projection = _conv1d(C, 1, 1)
        nn.init.zeros_(self.output_projection.weight)
        self.fast = True            # use the repacked GEMM path under no_grad
        self.cond_cache_mb = 1024   # largest conditioner cache (MiB); bigger inputs recompute it per call
        self._packs: dict = {}
        self._cond_cache: list = []
        self._cond_seen: list = []  # calls per mel so far (fast.py caches a conditioner from the third on)

    @property
    def null_label(self) -> int:
        """The label index meaning 'no class'; -1 for a model without labels."""
        return self.label_embedding.null_label if self.label_embedding is not None else -1

    def forward(self, x: torch.Tensor, t: torch.Tensor, mel: torch.Tensor | None = None,
                y: torch.Tensor | None = None) -> torch.Tensor:
        t = self._check_inputs(x, t, mel, y)
        emb = self.diffusion_embedding(t)
        if self.label_embedding is not None:  # y=None: the null label; class dropout in training (guidance needs it)
            emb = emb + self.label_embedding.embed(y, x.shape[0], x.device, self.cfg.class_dropout)
        if self.fast:
            return fast_forward(self, x, emb, mel) if not torch.is_grad_enabled() else train_forward(self, x, emb, mel)
        cond = self.spectrogram_upsampler(mel) if mel is not None else None
        h = F.relu(self.input_projection(x))
        skip = None
        for layer in self.residual_layers:
            h, s = layer(h, emb, cond)
            skip = s if skip is None else skip + s
        h = F.relu(self.skip_projection(skip * (1 / math.sqrt(len(self.residual_layers)))))
        return self.output_projection(h).to(x.dtype)

    def _check_inputs(self, x, t, mel, y) -> torch.Tensor:
        cfg = self.cfg
        if not isinstance(x, torch.Tensor) or x.ndim != 3 or x.shape[1] != 1:
            raise ValueError(f"DiffWave takes waveforms [B, 1, L], got {getattr(x, 'shape', type(x))}")
        B, _, L = x.shape
        t = check_timesteps(t, B, x.device)
        if B and (float(t.min()) < 0 or float(t.max()) > cfg.max_steps - 1):
            raise ValueError(f"timesteps t must lie in [0, {cfg.max_steps - 1}] (the model's step-embedding "
                             f"table, [model] max_steps = {cfg.max_steps}), got [{float(t.min())}, {float(t.max())}]")
        if cfg.n_mels > 0:
            if mel is None:
                raise ValueError(f"this DiffWave is conditioned on mel spectrograms [B, {cfg.n_mels}, L / "
                                 f"{cfg.hop_length}]: pass mel=...; set [model] n_mels = 0 for an unconditional model")
            if mel.ndim != 3 or mel.shape[0] != B or mel.shape[1] != cfg.n_mels:
                raise ValueError(f"mel must have shape [B, n_mels, frames] = [{B}, {cfg.n_mels}, frames], got "
                                 f"{tuple(mel.shape)}; check [model] n_mels against the data's mel bins")
            if mel.shape[2] * cfg.hop_length != L:
                raise ValueError(f"{mel.shape[2]} mel frames x hop_length {cfg.hop_length} = "
                                 f"{mel.shape[2] * cfg.hop_length} samples, but the audio has {L}; crop the audio to "
                                 f"frames * hop samples (or check [model] hop_length against the data's hop)")
        elif mel is not None:
            raise ValueError("mel= was given to an unconditional DiffWave ([model] n_mels = 0)")
        check_labels(y, B, cfg.num_classes, "DiffWave")
        return t if t.dtype in (torch.int32, torch.int64) else t.to(torch.float32)


def _check(cfg: DiffWaveConfig) -> DiffWaveConfig:
    for key in ("residual_channels", "residual_layers", "dilation_cycle", "hop_length", "max_steps"):
        v = getattr(cfg, key)
        if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
            raise ValueError(f"[model] {key} must be a positive integer, got {v!r}")
    for key in ("n_mels", "num_classes"):
        v = getattr(cfg, key)
        if not isinstance(v, int) or isinstance(v, bool) or v < 0:
            raise ValueError(f"[model] {key} must be an integer >= 0, got {v!r}")
    check_class_dropout(cfg.class_dropout)
    if cfg.max_steps < 2:
        raise ValueError(f"[model] max_steps must be >= 2 (the training T), got {cfg.max_steps}")
    if cfg.upsampler_init not in ("interpolate", "lmnt"):
        raise ValueError(f"[model] upsampler_init must be 'interpolate' or 'lmnt', got {cfg.upsampler_init!r}")
    if cfg.noise_prior not in ("none", "mel_energy", "mel_envelope"):
        raise ValueError(f"[model] noise_prior must be 'none', 'mel_energy' or 'mel_envelope', got {cfg.noise_prior!r}")
    if cfg.noise_prior != "none" and cfg.n_mels == 0:
        raise ValueError(f"[model] noise_prior = '{cfg.noise_prior}' shapes the noise by the mel: it needs a vocoder "
                         "(n_mels > 0); use noise_prior = 'none' for an unconditional model")
    if cfg.n_mels > 0:
        upsample_strides(cfg)  # raises a clear error for a hop it cannot build
    cfg.upsample_strides = [int(s) for s in cfg.upsample_strides]
    return cfg

