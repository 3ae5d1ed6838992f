"""`multidiff sample` and `multidiff inpaint` for image runs."""
from __future__ import annotations

from pathlib import Path

import torch

from .cli_common import sample_settings
from .data.image import load_image, save_image_grid
from .data.masks import MASK_KINDS, load_mask, make_mask
from .recipes import image, latent, registry
from .recipes.image_inpainting import inpaint, load_for_inpaint, sub_sections, with_steps
from .engine.runs import load_run
from .engine.distributed import DistInfo
from .engine.precision import resolve_precision


def _device():
    return DistInfo(device=torch.device("cuda" if torch.cuda.is_available() else "cpu")).device


def _refuse_autoencoder(sections: dict, run_dir) -> None:
    if sections["recipe"].kind == "autoencoder":
        raise ValueError(f"'{run_dir}' is an autoencoder run: use a latent run that uses it (recipes/latent_*)")


def sample_command(args) -> int:
    sections = load_run(args.run_dir, registry.schemas())
    run_dir = Path(args.run_dir)
    dev = _device()
    bf16 = resolve_precision(args.precision, dev)
    codec = None
    _refuse_autoencoder(sections, args.run_dir)
    if sections["recipe"].kind == "latent":  # sample latents, decode them with the run's autoencoder
        codec = latent.codec_of_run(run_dir, sections, dev, bf16)
        sections = latent.latent_view(sections, codec)
    if sections["recipe"].kind == "image_inpainting":
        sections, run_dir = sub_sections(sections, False), run_dir / "unconditional"
    if sections["model"].extra_in_channels:
        raise ValueError(f"'{args.run_dir}' holds a mask-conditioned model: use `multidiff inpaint` with it")
    model, ckpt = image.load_trained(run_dir, sections)
    cfg, labels = sample_settings(args, sections)
    x = image.generate(sections, model, cfg, args.n, dev, bf16, labels=labels, guidance=args.guidance,
                       decode=codec.decode if codec else None)
    out = Path(args.out)
    if args.out.endswith(("/", "\\")) or out.is_dir():
        for i, xi in enumerate(x):
            save_image_grid(xi, out / f"sample_{i:04d}.png", padding=0)
        print(f"wrote {len(x)} PNGs to {out}/ (from {ckpt})")
    else:
        ten = sections["model"].num_classes == 10 and labels is None and args.n % 10 == 0
        save_image_grid(x, out, nrow=10 if ten else None)
        print(f"wrote {out} (from {ckpt})")
    return 0


def inpaint_command(args) -> int:
    _refuse_autoencoder(load_run(args.run_dir, registry.schemas()), args.run_dir)
    sections, model, cfg = load_for_inpaint(Path(args.run_dir), args.method, registry.schemas())
    size, C = sections["data"].size, sections["data"].channels
    known = load_image(args.image, size, C)[None]
    if args.mask:
        mask = load_mask(args.mask, size)[None]
    else:
        if args.mask_kind not in MASK_KINDS or args.mask_kind == "mixture":
            raise ValueError(f"--mask-kind must be one of {', '.join(k for k in MASK_KINDS if k != 'mixture')}")
        mask = make_mask(args.mask_kind, size, torch.Generator().manual_seed(args.seed))[None]
    if args.steps:
        cfg = with_steps(cfg, args.steps)
    dev = _device()
    bf16, gen = resolve_precision(args.precision, dev), torch.Generator().manual_seed(args.seed)
    if sections["recipe"].kind == "latent":  # fill in latent space, decode, keep the known pixels
        codec = latent.codec_of_run(args.run_dir, sections, dev, bf16)
        x = latent.inpaint(args.method, sections, model, known, mask, cfg, dev, bf16, gen, codec)
    else:
        x = inpaint(args.method, sections, model, known, mask, cfg, dev, bf16, gen)
    save_image_grid(x, args.out, padding=0)
    print(f"wrote {args.out} ({args.method}, {int((mask == 0).sum())} of {size * size} pixels filled)")
    return 0
