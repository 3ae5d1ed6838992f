"""Datasets, transforms and inpainting masks for each modality (images: `image.py`, masks: `masks.py`)."""
from .image import (ImageData, ImageDataError, ImageDataset, build_image_dataset, load_image, random_hflip,
                    save_image_grid)
from .masks import MASK_KINDS, load_mask, make_mask, mask_kind_names, random_masks

__all__ = ["ImageData", "ImageDataError", "ImageDataset", "build_image_dataset", "load_image", "random_hflip",
           "save_image_grid", "MASK_KINDS", "load_mask", "make_mask", "mask_kind_names", "random_masks"]
