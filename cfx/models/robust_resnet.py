"""SVCE's "Madry + FT" classifier: a torchvision ResNet-50 behind ImageNet normalisation and a temperature.

Upstream (``utils/load_trained_model.py:load_non_native_model('PytorchResNet50', 'l2_improved_3_ep')``,
``utils/model_normalization.py:ImageNetWrapper``, ``utils/temperature_wrapper.py:TemperatureWrapper``;
docs/upstream/ldce_gcd_svce.md §3.3): ``torchvision.models.resnet50()`` loads the plain state dict
``ImageNetModels/PytorchModels/ResNet50/l2_improved_3_ep.pt`` (from ``madry_ft.zip``) strictly, inputs in [0,1]
are normalised with mean (.485, .456, .406) and std (.229, .224, .225), and the logits are divided by
T = 0.7155761122703552. Here the file is read weights-only.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from torchvision.models import resnet50

from cfx.runtime.checkpoints import load_checkpoint, load_state_dict_strict

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
MADRY_FT_TEMPERATURE = 0.7155761122703552


class Normalized(nn.Module):
    """``model((x − mean) / std)`` for x in [0,1] (``NormalizationWrapper``)."""

    def __init__(self, model: nn.Module, mean: tuple[float, ...] = IMAGENET_MEAN,
                 std: tuple[float, ...] = IMAGENET_STD) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model((x - self.mean) / self.std)


class TemperatureWrapper(nn.Module):
    """logits / T (``utils/temperature_wrapper.py:TemperatureWrapper``)."""

    def __init__(self, model: nn.Module, temperature: float = 1.0) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        self.model = model
        self.temperature = float(temperature)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x) / self.temperature


def load_madry_ft_resnet50(path: str | Path, temperature: float = MADRY_FT_TEMPERATURE) -> nn.Module:
    """The Madry + FT classifier: [0,1] images (B, 3, H, W) → 1000 logits / T, eval mode, strict loading.

    ``path`` holds a torchvision ResNet-50 state dict (``l2_improved_3_ep.pt``); a dict with a ``state_dict`` or
    ``model`` entry, or ``module.``-prefixed keys, is refused with a message saying so."""
    state = load_checkpoint(path, "Madry + FT ResNet-50")
    network = resnet50()
    hint = ("expected a plain torchvision ResNet-50 state dict (keys conv1.weight, bn1.*, layer1.*, ..., fc.*), "
            "as SVCE's l2_improved_3_ep.pt from madry_ft.zip")
    if isinstance(state, dict) and any(isinstance(k, str) and k.startswith("module.") for k in state):
        raise ValueError(f"{path} has DataParallel 'module.' keys; {hint}")
    load_state_dict_strict(network, state, path, hint=hint)
    return TemperatureWrapper(Normalized(network), temperature).eval()
