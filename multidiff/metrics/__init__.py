"""Evaluation metrics: Frechet distance, feature extractors, per-image quality."""
from .digits import (DigitClassifier, digit_metrics, inception_scores, load_classifier, save_classifier,
                     train_digit_classifier)
from .frechet import feature_stats, frechet_distance
from .image_quality import psnr, ssim, ssim_map
from .inception import InceptionFeatures

__all__ = [
    "DigitClassifier", "digit_metrics", "inception_scores", "load_classifier", "save_classifier", "train_digit_classifier",
    "feature_stats", "frechet_distance", "psnr", "ssim", "ssim_map", "InceptionFeatures",
]
