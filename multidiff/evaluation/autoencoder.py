"""Autoencoder evaluation: held-out reconstruction quality (PSNR / SSIM) and a picture of it."""
from __future__ import annotations

import torch

from ..data.image import build_image_dataset, save_image_grid
from ..metrics import psnr, ssim
from ..modalities.autoencoder import load_autoencoder, stack_images
from .tables import markdown_table, write_result


def evaluate(run, device, bf16: bool) -> dict:
    codec = load_autoencoder(run.dir, device, bf16)
    x = stack_images(build_image_dataset(run["data"], "test"), run["eval"].n)
    r = codec.reconstruct(x, batch=run["eval"].batch)
    result = {"n": len(x), "psnr": float(psnr(r, x).mean()),
              "ssim": float(ssim(r, x, window=run["eval"].ssim_window).mean()),
              "latent_shape": list(codec.latent_shape(run["data"].size)), "scale": codec.scale,
              "compression": x[0].numel() / (codec.latent_channels * (run["data"].size // codec.factor) ** 2)}
    grid = save_image_grid(torch.cat([x[:16], r[:16]]), run.dir / "samples" / "reconstructions.png", nrow=16)
    result["grid"] = str(grid)
    run.log(f"[evaluate] held-out PSNR {result['psnr']:.2f} dB, SSIM {result['ssim']:.4f}")
    row = {**result, "latent": "x".join(map(str, result["latent_shape"]))}
    write_result(run.dir, result, markdown_table([row], COLUMNS))
    return {"psnr": result["psnr"], "ssim": result["ssim"]}


COLUMNS = {"n": "held-out images", "psnr": ("PSNR (dB)", ".2f"), "ssim": ("SSIM", ".4f"), "latent": "latent",
           "scale": ("scale", ".4f")}
