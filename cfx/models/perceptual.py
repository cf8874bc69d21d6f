"""DiME's perceptual loss network: torchvision VGG-19 ImageNet features up to ``l_perc_layer``.

DiME ``core/sample_utils.py`` builds ``vgg19(pretrained=True).features[:layer]`` (layer 18 = conv1_1 …
relu3_4) behind a normaliser that clamps to [−1,1], maps to [0,1] and applies the ImageNet mean/std
(docs/upstream/dime_ace.md §1.4). The weights are torchvision's ``vgg19-dcbb9e9d.pth``; upstream downloads them
at run time, here they are read from ``$TORCH_HOME/hub/checkpoints/`` (or a given path) and never fetched.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

VGG19_FILE = "vgg19-dcbb9e9d.pth"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def default_vgg19_path() -> Path:
    """Where torchvision keeps the VGG-19 weights (``$TORCH_HOME/hub/checkpoints``)."""
    torch_home = Path(os.environ.get("TORCH_HOME", Path.home() / ".cache" / "torch"))
    return torch_home / "hub" / "checkpoints" / VGG19_FILE


class PerceptualFeatures(nn.Module):
    """``features[:layer]`` of VGG-19 on inputs in [−1,1], normalised as DiME's ``Normalizer``."""

    def __init__(self, features: nn.Module) -> None:
        super().__init__()
        self.features = features
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = (x.clamp(-1, 1) + 1) / 2
        return self.features((x - self.mean) / self.std)


def load_vgg19_perceptual(layer: int = 18, weights_path: Path | None = None) -> PerceptualFeatures:
    """VGG-19 ImageNet features ``[:layer]`` from a local torchvision checkpoint (weights-only, strict)."""
    from torchvision.models import vgg19

    path = Path(weights_path) if weights_path else default_vgg19_path()
    if not path.is_file():
        raise FileNotFoundError(
            f"DiME's perceptual loss needs torchvision's VGG-19 ImageNet weights at {path} "
            f"(https://download.pytorch.org/models/{VGG19_FILE}); download it there, set TORCH_HOME, or set "
            f"l_perc: 0 in the method config to turn the term off"
        )
    model = vgg19(weights=None)
    state = torch.load(path, map_location="cpu", weights_only=True)
    model.load_state_dict(state, strict=True)
    features = model.features[:layer].eval()
    features.requires_grad_(False)
    return PerceptualFeatures(features).eval()
