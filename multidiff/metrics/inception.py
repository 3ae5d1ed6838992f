"""Inception-v3 pool features for FID, from weights the user already has on disk.

Nothing is downloaded at run time. Pass the path of torchvision's ImageNet
state dict, `inception_v3_google-0cc3c7bd.pth`, fetched once on a machine with
internet from https://download.pytorch.org/models/inception_v3_google-0cc3c7bd.pth
(or found in ~/.cache/torch/hub/checkpoints/ after any torchvision
`inception_v3(weights="DEFAULT")` call).

Caveats: these are torchvision's port of the Google weights, not the TF
"pt_inception-2015-12-05" graph that pytorch-fid / clean-fid use, so absolute
FID values differ somewhat from published numbers; compare runs with each other.
The offline tests check shapes, loading and error messages with randomly
initialised weights only — true FID values cannot be checked offline.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

WEIGHTS_NAME = "inception_v3_google-0cc3c7bd.pth"
WEIGHTS_URL = f"https://download.pytorch.org/models/{WEIGHTS_NAME}"


def _bad_weights(path, why: str) -> ValueError:
    return ValueError(
        f"Inception weights {path}: {why}. Expected torchvision's Inception-v3 ImageNet state "
        f"dict ({WEIGHTS_NAME}); download it on a machine with internet from {WEIGHTS_URL} "
        "and pass its local path")


class InceptionFeatures(nn.Module):
    """[B, 3 or 1, H, W] in [-1, 1] -> [B, 2048] pool features (eval mode, no grad needed).

    Images are resized to 299x299 (bilinear) and fed as [-1, 1], which is the range
    the Google weights were trained on (torchvision's `transform_input` maps
    ImageNet-normalised input to this same range). Grayscale is replicated to RGB.
    """

    def __init__(self, weights_path):
        super().__init__()
        from torchvision.models import inception_v3

        path = Path(weights_path)
        if not path.is_file():
            raise FileNotFoundError(
                f"Inception weights not found at {path}. Expected torchvision's Inception-v3 "
                f"ImageNet state dict ({WEIGHTS_NAME}); download it on a machine with internet "
                f"from {WEIGHTS_URL} and pass its local path")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # corrupt file, or a pickle that is not plain tensors
            raise _bad_weights(path, f"cannot be read as a torch state dict ({type(e).__name__})") from None
        if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
            raise _bad_weights(path, "is not a state dict of tensors")
        state = {k: v for k, v in state.items() if not k.startswith("AuxLogits.")}
        net = inception_v3(weights=None, aux_logits=False, init_weights=False, transform_input=False)
        expected = set(net.state_dict())
        missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
        if missing or unexpected:
            some = (missing or unexpected)[:3]
            raise _bad_weights(path, f"{len(missing)} missing and {len(unexpected)} unexpected keys "
                                     f"(e.g. {some})")
        try:
            net.load_state_dict(state, strict=True)  # also catches shape mismatches
        except RuntimeError as e:
            raise _bad_weights(path, f"tensor shapes do not match Inception-v3 ({str(e)[:200]})") from None
        net.fc = nn.Identity()  # the 2048-d average-pool output is the FID feature
        self.net = net.eval()
        self.requires_grad_(False)

    def train(self, mode: bool = True):
        return super().train(False)  # batch-norm statistics must stay the pretrained ones

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] not in (1, 3):
            raise ValueError(f"InceptionFeatures expects [B, 3 or 1, H, W] in [-1, 1], got {tuple(x.shape)}")
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        x = x.float()
        if x.shape[-2:] != (299, 299):
            x = F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
        return self.net(x)
