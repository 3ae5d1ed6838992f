"""Image inpainting evaluation: every completion method on the same held-out images and masks --
PSNR / SSIM of the filled pixels, label agreement (digits), model calls per image (counted), seconds per image."""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from ..data.image import build_image_dataset, save_image_grid
from ..data.masks import make_mask
from ..metrics import psnr, ssim
from ..modalities.base import Trained
from ..modalities.student import student_completion
from ..pipelines.complete import METHODS, CompletionSampling, complete
from ..utils import added_key
from .image import digit_classifier, stack
from .model_calls import as_count, counting
from .tables import markdown_table, write_result


@dataclass
class InpaintConfig(CompletionSampling):
    """The [inpaint] section."""
    train_masks: list[str] = field(default_factory=lambda: ["mixture"])  # masks the conditioned model sees
    eval_masks: list[str] = field(default_factory=lambda: ["center", "left", "box", "strokes"])
    eval_n: int = 100                 # held-out images per mask kind
    methods: list[str] = field(default_factory=lambda: list(METHODS))
    # few-step students of the unconditional model (`multidiff distill RUN --steps 4,2 --out S`): run
    # directories whose rows join the table, filled with `student_methods` on their own steps
    students: list[str] = added_key([])
    student_methods: list[str] = added_key(["replace", "reconstruction", "ddnm", "pigdm"])

    def __post_init__(self):
        super().__post_init__()
        bad = [m for m in self.student_methods if m not in METHODS or METHODS[m].conditioned]
        if bad:
            raise ValueError(f"inpaint.student_methods: {bad} cannot use a student of the unconditional model; "
                             f"choose from {tuple(m for m in METHODS if not METHODS[m].conditioned)}")


def eval_masks(kind: str, n: int, size: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.stack([make_mask(kind, size, g) for _ in range(n)])


def evaluate(run, models: dict[str, Trained], device, bf16: bool, students: dict[str, Trained] | None = None) -> dict:
    """models: "plain" (the unconditional model) and "conditioned" (the mask-conditioned one); students: few-step
    students of the plain model by name ("4-step student"), each filling with cfg.student_methods."""
    cfg = run["inpaint"]
    role = {m: "conditioned" if METHODS[m].conditioned else "plain" for m in METHODS}
    names = {"plain": "unconditional", "conditioned": "conditioned"}
    entries = [(names[role[m]], m, models[role[m]], cfg) for m in cfg.methods]
    entries += [(name, m, student, student_completion(cfg, student.sections))
                for name, student in (students or {}).items() for m in cfg.student_methods]
    test = build_image_dataset(run["data"], "test")
    originals = stack(test, cfg.eval_n)
    labels = torch.tensor(test.labels[:len(originals)])
    clf = digit_classifier(run)[0] if run["data"].source == "digits" else None
    rows, panels = [], []
    for kind in cfg.eval_masks:
        mask = eval_masks(kind, len(originals), run["data"].size, cfg.seed)
        shown = [originals[:8], (originals * mask - (1 - mask))[:8]]  # holes drawn black
        for model_name, method, trained, method_cfg in entries:
            t0 = time.perf_counter()
            with counting(trained.model) as calls:
                x = torch.cat([complete(trained, method, originals[i:i + 100], mask[i:i + 100], method_cfg, device,
                                        bf16, torch.Generator().manual_seed(cfg.seed + i))
                               for i in range(0, len(originals), 100)])
            nfe, nfe_backward = calls.per_item(len(x))
            row = {"mask": kind, "model": model_name, "method": method, "n": len(x), "nfe": as_count(nfe),
                   "nfe_backward": as_count(nfe_backward),
                   "seconds_per_image": (time.perf_counter() - t0) / len(x),
                   "psnr_filled": float(psnr(x, originals, mask).mean()),
                   "ssim_filled": float(ssim(x, originals, mask, window=cfg.ssim_window).mean())}
            if clf is not None:
                with torch.no_grad():
                    row["label_agreement"] = float((clf(x).argmax(1) == labels).double().mean())
            rows.append(row)
            shown.append(x[:8])
            run.log(f"[evaluate] {kind}/{model_name}/{method}: psnr {row['psnr_filled']:.2f} "
                    f"ssim {row['ssim_filled']:.3f}"
                    + (f" labels {row['label_agreement']:.3f}" if clf is not None else ""))
        panels.append(torch.cat(shown))
    grid = save_image_grid(torch.cat(panels), run.dir / "samples" / "inpainting.png", nrow=8)
    layout = ("per mask kind: originals, masked, then one row per model and method "
              f"({', '.join(f'{n}/{m}' for n, m, _, _ in entries)})")
    result = {"rows": rows, "grid": str(grid), "layout": layout, "precision": "bf16" if bf16 else "fp32"}
    if clf is not None:
        with torch.no_grad():
            result["label_agreement_originals"] = float((clf(originals).argmax(1) == labels).double().mean())
    return write_result(run.dir, result, markdown_table(rows, COLUMNS))


COLUMNS = {"mask": "mask", "model": "model", "method": "method", "psnr_filled": ("PSNR filled (dB)", ".2f"),
           "ssim_filled": "SSIM filled", "label_agreement": "label agreement", "nfe": "model calls",
           "nfe_backward": "of which backward", "seconds_per_image": "s/image"}
