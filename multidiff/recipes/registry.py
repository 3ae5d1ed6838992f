"""Recipe kinds -> the module that runs them (each has SCHEMA and run_recipe)."""
from __future__ import annotations

import importlib

KINDS = {
    "image": "multidiff.recipes.image",
    "image_inpainting": "multidiff.recipes.image_inpainting",
    "audio": "multidiff.recipes.audio",
    "autoencoder": "multidiff.recipes.autoencoder",
    "latent": "multidiff.recipes.latent",
    "video": "multidiff.recipes.video",
    "video_prediction": "multidiff.recipes.video_prediction",
}


def module(kind: str):
    return importlib.import_module(KINDS[kind])


def schemas() -> dict:
    return {kind: module(kind).SCHEMA for kind in KINDS}
