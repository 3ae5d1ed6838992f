"""A fourth modality defined only through the protocol, outside the package: 1-D signals that are sums
of sines, with a small 1-D conv denoiser. A recipe names it with [recipe] modality =
"helpers.sines:SINES"; `multidiff train / sample / inpaint` then run it like the shipped modalities
(tests/test_extending.py; docs/extending.md walks through this file)."""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from multidiff.engine.config import ConfigError
from multidiff.modalities.base import Known, Modality, Prepared
from multidiff.modalities.sections import batch_loss
from multidiff.nn import LabelEmbedding, TimestepEmbedding
from multidiff.outputs import OutputSpec
from multidiff.utils import atomic_path, read_npy

# a run small enough for tests of the run directory and the stages: trains in about a second
TINY = {"data": {"n": 64, "length": 32}, "model": {"channels": 8, "layers": 2}, "diffusion": {"timesteps": 50},
        "train": {"steps": 4, "batch_size": 16, "warmup_steps": 1, "checkpoint_every": 4, "log_every": 2},
        "sample": {"steps": 3, "n": 4}}


def write_recipe(path, sections: dict = TINY, **changes) -> Path:
    """A recipe TOML naming this modality: `sections` (section -> {key: value}), with `changes`
    (section -> {key: value}) merged in."""
    merged = {name: {**sections.get(name, {}), **changes.get(name, {})} for name in {*sections, *changes}}
    text = '[recipe]\nkind = "sines"\nmodality = "helpers.sines:SINES"\n'
    for name, table in merged.items():
        text += f"[{name}]\n" + "".join(f"{k} = {v!r}\n".replace("'", '"') for k, v in table.items())
    Path(path).write_text(text)
    return Path(path)


# ---- the data source -------------------------------------------------------------------------
@dataclass
class SinesData:
    """The [data] section: `n` signals of `length` samples, each the sum of `components` sines with random
    frequency (1-4 cycles), phase and amplitude, scaled into [-1, 1]; the label is the number of cycles of
    the strongest sine minus 1."""
    n: int = 512
    length: int = 64
    components: int = 2
    seed: int = 0


class SinesDataset(torch.utils.data.Dataset):
    num_classes = 4

    def __init__(self, cfg: SinesData, split: str):
        g = torch.Generator().manual_seed(cfg.seed + (0 if split == "train" else 1))
        n, k = (cfg.n if split == "train" else max(1, cfg.n // 4)), cfg.components
        cycles = torch.randint(1, 5, (n, k), generator=g).float()
        phase = torch.rand(n, k, 1, generator=g) * 2 * math.pi
        amp = torch.rand(n, k, 1, generator=g) + 0.2
        grid = torch.linspace(0, 2 * math.pi, cfg.length)
        x = (amp * torch.sin(cycles[..., None] * grid + phase)).sum(1)
        self.x = (x / x.abs().amax(1, keepdim=True))[:, None].float()   # [n, 1, length] in [-1, 1]
        self.labels = (cycles.gather(1, amp[..., 0].argmax(1, keepdim=True))[:, 0] - 1).long().tolist()

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i], self.labels[i]


# ---- the denoiser: net(x_t, c_noise, y=None) -> raw prediction, the one contract ------------
@dataclass
class SinesNetConfig:
    """The [model] section."""
    channels: int = 32
    layers: int = 4
    kernel: int = 5
    num_classes: int = 0
    class_dropout: float = 0.1


class SinesNet(nn.Module):
    def __init__(self, cfg: SinesNetConfig):
        super().__init__()
        self.cfg = cfg
        c = cfg.channels
        self.embed = TimestepEmbedding(c)
        self.label_embed = LabelEmbedding(cfg.num_classes, c, cfg.class_dropout) if cfg.num_classes else None
        self.inp = nn.Conv1d(1, c, cfg.kernel, padding=cfg.kernel // 2)
        self.convs = nn.ModuleList(nn.Conv1d(c, c, cfg.kernel, padding=cfg.kernel // 2) for _ in range(cfg.layers))
        self.out = nn.Conv1d(c, 1, cfg.kernel, padding=cfg.kernel // 2)

    def middle_block(self) -> nn.Module:
        """A layer half way through: what a feature discriminator reads (distill.adversarial; optional)."""
        return self.convs[len(self.convs) // 2]

    def forward(self, x, t, y=None):
        emb = self.embed(t)
        if self.label_embed is not None:
            emb = emb + self.label_embed.embed(y, x.shape[0], x.device, self.cfg.class_dropout)
        h = self.inp(x) + emb[:, :, None]
        for conv in self.convs:
            h = h + conv(torch.nn.functional.silu(h))
        return self.out(torch.nn.functional.silu(h))


# ---- the modality: what the shared engine, pipelines and command line need -------------------
class SinesTask:
    channels_last = False

    def __init__(self, sections, device):
        self.s, self.device = sections, device
        self.sched = sections["diffusion"].build_schedule()

    def loss(self, net, batch, rand):
        p = self.prepare_batch(batch, rand)
        return batch_loss(net, self.s["diffusion"], self.sched, p.x0, rand, p.cond, **p.loss_kw)

    def prepare_batch(self, batch, rand):
        """The batch as the loss sees it (what distillation trains on too)."""
        x0, y = batch
        cond = {"y": y.to(self.device)} if self.s["model"].num_classes else {}
        return Prepared(x0.to(self.device), cond, {})

    def preview(self, model, path):
        pass


def save_npy(path, x: torch.Tensor) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, x.numpy())


class SinesModality(Modality):
    name = "sines"
    data_section, model_section = SinesData, SinesNetConfig
    final_samples = "final.npy"

    def check(self, sections):
        if sections["data"].length < 8:
            raise ConfigError(f"data.length = {sections['data'].length}: give at least 8 samples")

    def prepare(self, run):
        return {"train_items": len(self.dataset(run, "train"))}

    def dataset(self, run, split):
        return SinesDataset(run["data"], split)

    def build_model(self, sections):
        return SinesNet(sections["model"])

    def task(self, sections, device, bf16, preview=None, model=None):
        return SinesTask(sections, device)

    def sample_shape(self, sections, length=None):
        return 1, length or sections["data"].length

    def generation_length(self, sections, request):
        return request.frames  # --frames N: signals of N samples

    def write_samples(self, x, out, sections, labels, request):
        save_npy(out, x[:, 0])
        return f"{out} ({len(x)} signals of {x.shape[-1]} samples)"

    def sample_output(self, sections, n):
        return OutputSpec((".npy",))  # one file, checked before sampling

    def completed_output(self, sections):
        return OutputSpec((".npy",))

    def read_known(self, request, sections):
        """--input signal.npy [length] and --gap START:END in samples."""
        if not request.input or not request.gap:
            raise ConfigError("sines completion needs --input signal.npy and --gap START:END (samples)")
        x = torch.from_numpy(read_npy(request.input, "signal")).float().reshape(1, 1, -1)
        try:
            a, b = (int(v) for v in request.gap.split(":"))
        except ValueError:
            raise ConfigError(f"--gap must look like START:END in samples (e.g. 20:36), got {request.gap!r}") from None
        if not 0 <= a < b <= x.shape[-1]:
            raise ConfigError(f"--gap {request.gap}: need 0 <= START < END <= {x.shape[-1]} (the signal's length)")
        mask = torch.ones_like(x)
        mask[..., a:b] = 0
        return Known(x, mask, f"{b - a} of {x.shape[-1]} samples filled")

    def write_completed(self, x, out, sections, known, request):
        save_npy(out, x[0, 0])
        return str(out)


SINES = SinesModality()
