"""The loss-curve PNG people look at while a run trains."""
from __future__ import annotations

import json
from pathlib import Path

from ..utils import atomic_path


def plot_loss_curve(metrics: Path, out: Path) -> None:
    if not metrics.exists():
        return
    rows = [json.loads(ln) for ln in metrics.read_text().splitlines() if ln.strip()]
    if not rows:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps, loss = [r["step"] for r in rows], [r["loss"] for r in rows]
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    ax.plot(steps, loss, lw=1, alpha=0.5, label="loss")
    k = max(1, len(loss) // 20)  # a running mean makes the trend readable
    smooth = [sum(loss[max(0, i - k + 1):i + 1]) / len(loss[max(0, i - k + 1):i + 1]) for i in range(len(loss))]
    ax.plot(steps, smooth, lw=2, label=f"mean of {k}")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    if min(loss) > 0:  # a GAN's generator term can make a total negative: then a linear axis
        ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


def plot_spectrograms(wavs: dict, sample_rate: int, out: Path, n_fft: int = 1024, hop: int = 256) -> None:
    """One log-magnitude spectrogram per named waveform, stacked on a shared 80 dB colour scale
    (0 dB = the first one's peak), so noise floors and harmonics compare by eye."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch

    window = torch.hann_window(n_fft)
    specs = {k: torch.stft(torch.as_tensor(w).float().reshape(-1), n_fft, hop, window=window,
                           return_complex=True).abs() for k, w in wavs.items()}
    ref = max(float(next(iter(specs.values())).max()), 1e-8)
    fig, axes = plt.subplots(len(specs), 1, figsize=(7, 1.8 * len(specs)), dpi=100, sharex=True, squeeze=False)
    for ax, (name, s) in zip(axes[:, 0], specs.items()):
        db = 20 * torch.log10(s.clamp(min=1e-8) / ref)
        ax.imshow(db.numpy(), origin="lower", aspect="auto", vmin=-80, vmax=0, cmap="magma",
                  extent=(0, s.shape[1] * hop / sample_rate, 0, sample_rate / 2000))
        ax.set_title(name, fontsize=9)
        ax.set_ylabel("kHz")
    axes[-1, 0].set_xlabel("seconds")
    fig.tight_layout()
    import io

    from PIL import Image

    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    with atomic_path(out) as tmp:  # a 64-colour palette: a noisy spectrogram PNG is ~4x smaller
        Image.open(buf).convert("RGB").quantize(64).save(tmp, format="png", optimize=True)
