"""A small CNN digit classifier: the feature extractor for the digits recipes.

Inception weights are not available offline, so sample quality on the digits
recipes is measured in the feature space of this classifier instead: Frechet
distance between its penultimate features of generated and reference images,
the mean confidence of its predictions, and how many of the 10 classes the
generated samples cover. Numbers are comparable only between runs scored with
the same saved classifier file.

Training uses small random shifts and outlier exposure (Hendrycks et al. 2019):
a share of each batch is synthetic junk (white noise, smooth blobs, flat images)
trained towards the uniform distribution, so noisy or unformed samples get low
confidence instead of an arbitrary confident label.
"""
from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from .frechet import feature_stats, frechet_distance, limit_threads as _threads

FORMAT = "multidiff.DigitClassifier/1"


class DigitClassifier(nn.Module):
    """[B, 1, H, W] in [-1, 1] (square, any size >= 8) -> logits [B, 10].

    Inputs are resized (bilinear) to the working resolution `size` first, so one
    classifier scores samples of any resolution consistently.
    """

    def __init__(self, size: int = 16, width: int = 32, feat_dim: int = 128):
        super().__init__()
        if not 8 <= size <= 64:
            raise ValueError(f"DigitClassifier size must be in 8..64, got {size}")
        self.config = {"size": int(size), "width": int(width), "feat_dim": int(feat_dim)}
        self.size = size
        w = width

        def block(cin, cout):
            return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]

        self.body = nn.Sequential(
            *block(1, w), *block(w, w), nn.MaxPool2d(2),
            *block(w, 2 * w), *block(2 * w, 2 * w), nn.MaxPool2d(2),
            nn.AdaptiveAvgPool2d(4), nn.Flatten(),
            nn.Linear(2 * w * 16, feat_dim), nn.ReLU(),
        )
        self.head = nn.Sequential(nn.Dropout(0.3), nn.Linear(feat_dim, 10))

    def _prepare(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != 1 or x.shape[-1] != x.shape[-2] or x.shape[-1] < 8:
            raise ValueError("DigitClassifier expects grayscale square images [B, 1, H, W] "
                             f"with H = W >= 8, got {tuple(x.shape)}")
        x = x.float()
        if x.shape[-1] != self.size:
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear",
                              align_corners=False, antialias=x.shape[-1] > self.size)
        return x

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate activations [B, feat_dim], the space the Frechet distance is measured in."""
        return self.body(self._prepare(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def _check_images(x, what: str) -> torch.Tensor:
    if not torch.is_tensor(x) or x.ndim != 4 or x.shape[1] != 1:
        raise ValueError(f"{what} must be a tensor [N, 1, H, W] of digits in [-1, 1], "
                         f"got {tuple(getattr(x, 'shape', ()))}")
    x = x.detach().float().cpu()
    if not torch.isfinite(x).all():
        raise ValueError(f"{what} contains NaN/inf")
    if x.abs().max() > 1.5:
        raise ValueError(f"{what} has values in [{x.min():.3g}, {x.max():.3g}] but images must be "
                         "in [-1, 1]; rescale with x / 127.5 - 1 (uint8) or 2 * x - 1 ([0, 1])")
    return x


def _shift(x: torch.Tensor, max_shift: int, g: torch.Generator) -> torch.Tensor:
    """Translate each image by up to max_shift pixels, filling with background (-1)."""
    if max_shift == 0:
        return x
    B, _, H, W = x.shape
    p = max_shift
    padded = F.pad(x, (p, p, p, p), value=-1.0)
    dy, dx = (torch.randint(0, 2 * p + 1, (2, B), generator=g))
    rows = (dy[:, None] + torch.arange(H))[:, None, :, None]
    cols = (dx[:, None] + torch.arange(W))[:, None, None, :]
    return padded[torch.arange(B)[:, None, None, None], torch.zeros(1, 1, 1, 1, dtype=torch.long),
                  rows, cols]


def _junk(n: int, size: int, g: torch.Generator) -> torch.Tensor:
    """Synthetic non-digits: white noise, smooth random blobs and flat images, in [-1, 1]."""
    kind = torch.randint(0, 3, (n,), generator=g)
    white = (torch.randn(n, 1, size, size, generator=g) * torch.rand(n, 1, 1, 1, generator=g)
             + torch.rand(n, 1, 1, 1, generator=g) * 2 - 1)
    blobs = F.interpolate(torch.randn(n, 1, 4, 4, generator=g) * 1.5, size=(size, size),
                          mode="bilinear", align_corners=False)
    flat = torch.rand(n, 1, 1, 1, generator=g).expand(n, 1, size, size) * 2 - 1
    out = torch.where((kind == 0)[:, None, None, None], white,
                      torch.where((kind == 1)[:, None, None, None], blobs, flat))
    return out.clamp(-1, 1)


def train_digit_classifier(images, labels, *, epochs: int = 12, seed: int = 0, size: int | None = None,
                           batch_size: int = 64, lr: float = 3e-3, junk_share: float = 0.25,
                           threads: int | None = 1, verbose: bool = False) -> DigitClassifier:
    """Train a DigitClassifier on images [N, 1, H, W] in [-1, 1] and integer labels [N] in 0..9.

    size: working resolution (default: min(H, 16); the sklearn digits are 8x8, so 16 loses
    nothing and trains 4x faster than 32). Deterministic given seed; the global RNG is untouched.
    threads: intra-op threads while training (None = leave torch's setting).
    """
    x = _check_images(images, "images")
    y = torch.as_tensor(labels).long().cpu()
    if y.shape != (x.shape[0],) or y.min() < 0 or y.max() > 9:
        raise ValueError(f"labels must be [N] = [{x.shape[0]}] integers in 0..9, "
                         f"got shape {tuple(y.shape)}")
    size = size or min(x.shape[-1], 16)
    with torch.random.fork_rng(devices=[]), _threads(threads):
        torch.manual_seed(seed)
        clf = DigitClassifier(size=size)
        x = clf._prepare(x)
        g = torch.Generator().manual_seed(seed)
        opt = torch.optim.AdamW(clf.parameters(), lr=lr, weight_decay=1e-4)
        steps_per_epoch = -(-len(x) // batch_size)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, lr, total_steps=epochs * steps_per_epoch)
        n_junk = max(1, int(round(batch_size * junk_share))) if junk_share > 0 else 0
        max_shift = max(1, size // 8)
        t0 = time.perf_counter()
        clf.train()
        for epoch in range(epochs):
            order = torch.randperm(len(x), generator=g)
            total = 0.0
            for i in range(0, len(x), batch_size):
                idx = order[i:i + batch_size]
                xb = _shift(x[idx], max_shift, g)
                logits = clf(torch.cat([xb, _junk(n_junk, size, g)]) if n_junk else xb)
                loss = F.cross_entropy(logits[:len(idx)], y[idx])
                if n_junk:
                    # cross-entropy to the uniform distribution over the 10 classes
                    loss = loss - 0.5 * F.log_softmax(logits[len(idx):], 1).mean()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                total += float(loss.detach()) * len(idx)
            if verbose:
                print(f"epoch {epoch + 1}/{epochs} loss {total / len(x):.4f} "
                      f"({time.perf_counter() - t0:.1f}s)")
    clf.eval()
    return clf


@torch.no_grad()
def _run(clf: DigitClassifier, x: torch.Tensor, chunk: int = 512):
    clf.eval()
    feats, probs = [], []
    with _threads(1):
        for i in range(0, len(x), chunk):
            f = clf.features(x[i:i + chunk])
            feats.append(f)
            probs.append(clf.head(f).softmax(1))
    return torch.cat(feats), torch.cat(probs)


def inception_scores(probs: torch.Tensor) -> dict:
    """Class-prediction scores of generated samples from their class probabilities [N, K].

    inception_score: exp(E_x KL(p(y|x) || p(y))), p(y) the mean prediction (Salimans et al. 2016):
        K for confident predictions spread evenly over K classes, 1 for identical ones.
    modified_inception_score: exp(E KL(p(y|x_i) || p(y|x_j))) over pairs i != j predicted as the same
        class (Gurumurthy et al. 2017, the mIS of DiffWave's SC09 table): high when samples of a
        class are confidently told apart from each other too, i.e. within-class diversity.
    """
    p = torch.as_tensor(probs).double().clamp_min(1e-12)
    p = p / p.sum(1, keepdim=True)
    logp = p.log()
    kl_marginal = (p * (logp - p.mean(0).log())).sum(1)
    # mIS: E over samples x_i of the mean KL to the other samples x_j of x_i's predicted class
    total, n_paired, pred = 0.0, 0, p.argmax(1)
    for k in pred.unique():
        q, lq = p[pred == k], logp[pred == k]
        n = len(q)
        if n > 1:  # KL(q_i || q_j) for all i, j (the diagonal is 0)
            pair = (q * lq).sum(1)[:, None] - q @ lq.t()
            total += float(pair.sum()) / (n - 1)
            n_paired += n
    mis = math.exp(total / n_paired) if n_paired else float("nan")
    return {"inception_score": math.exp(float(kl_marginal.mean())), "modified_inception_score": mis}


def digit_metrics(clf: DigitClassifier, generated, reference, *, min_share: float = 0.5) -> dict:
    """Score generated digits against reference digits (both [N, 1, H, W] in [-1, 1]).

    fd:           Frechet distance between classifier features (lower is better)
    confidence:   mean max softmax probability on the generated images (higher is better)
    coverage:     fraction of the 10 classes predicted for at least min_share / 10 of the samples
    class_counts: how many generated images were predicted as each class 0..9
    inception_score, modified_inception_score: see inception_scores
    """
    if not 0 < min_share <= 10:
        raise ValueError(f"min_share must be in (0, 10] (a multiple of the uniform share 1/10), "
                         f"got {min_share}")
    gen = _check_images(generated, "generated")
    ref = _check_images(reference, "reference")
    if len(gen) < 2 or len(ref) < 2:
        raise ValueError("digit_metrics needs at least 2 generated and 2 reference images "
                         f"(got {len(gen)} and {len(ref)}); the FD is only meaningful for hundreds")
    f_gen, p_gen = _run(clf, gen)
    f_ref, _ = _run(clf, ref)
    counts = torch.bincount(p_gen.argmax(1), minlength=10)
    share = counts.double() / len(gen)
    return {
        "fd": frechet_distance(*feature_stats(f_gen), *feature_stats(f_ref)),
        "confidence": float(p_gen.max(1).values.mean()),
        "coverage": float((share >= min_share / 10).double().mean()),
        "class_counts": counts.tolist(),
        **inception_scores(p_gen),
    }


def save_classifier(clf: DigitClassifier, path) -> None:
    """Weights as safetensors with the config in its metadata; atomic (temp file + os.replace)."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    state = {k: v.detach().contiguous().cpu() for k, v in clf.state_dict().items()}
    save_file(state, str(tmp), metadata={"format": FORMAT, "config": json.dumps(clf.config)})
    os.replace(tmp, path)


def load_classifier(path) -> DigitClassifier:
    """Load a classifier written by save_classifier (never unpickles anything)."""
    from safetensors import safe_open

    path = Path(path)
    fix = "train one with multidiff.metrics.train_digit_classifier and save_classifier"
    if not path.is_file():
        raise FileNotFoundError(f"digit classifier file {path} does not exist; {fix}")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            state = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # safetensors raises its own error types for corrupt headers
        raise ValueError(f"{path} is not a readable safetensors file ({e}); {fix}") from None
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path} is not a multidiff digit classifier (metadata format "
                         f"{meta.get('format')!r}, expected {FORMAT!r}); {fix}")
    clf = DigitClassifier(**json.loads(meta["config"]))
    try:
        clf.load_state_dict(state)
    except RuntimeError as e:
        raise ValueError(f"{path}: weights do not match its config ({e}); {fix}") from None
    return clf.eval()
