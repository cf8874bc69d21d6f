"""ImageNet classifiers as the methods feed them: [−1,1] images → 1000 logits.

* ``torchvision_resnet50``: ``torchvision.models.resnet50(pretrained=True)`` (IMAGENET1K_V1, ``resnet50-0676ba61.pth``)
  behind ImageNet mean/std on [0,1]. ACE (``core/attacks_and_models.py`` ``Normalizer``) feeds it the whole 256² image
  (docs/upstream/dime_ace.md §5); LDCE (``scripts/ldce.py:get_classifier_logits``) centre-crops 224 first
  (docs/upstream/ldce_gcd_svce.md §1.4): ``center_crop=224``.
* ``madry_ft``: SVCE's "Madry + FT" ResNet-50 with its temperature (:mod:`cfx.models.robust_resnet`).

Both checkpoints are plain torchvision state dicts, loaded strictly and weights-only.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from torchvision.models import resnet50
from torchvision.transforms.functional import center_crop as tv_center_crop

from cfx.models.robust_resnet import Normalized, load_madry_ft_resnet50
from cfx.runtime.checkpoints import load_checkpoint, load_state_dict_strict

MULTICLASS_KINDS = ("torchvision_resnet50", "madry_ft")


class ImageNetClassifier(nn.Module):
    """``network(crop((x + 1) / 2))`` for [−1,1] images: the network takes [0,1] images and normalises itself."""

    def __init__(self, network: nn.Module, center_crop: int | None = None) -> None:
        super().__init__()
        self.network = network
        self.center_crop = int(center_crop) if center_crop else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x01 = (x + 1) / 2
        if self.center_crop:
            x01 = tv_center_crop(x01, [self.center_crop, self.center_crop])
        return self.network(x01)


def load_torchvision_resnet50(path: str | Path) -> nn.Module:
    """torchvision's ResNet-50 from its published state dict, strict, behind ImageNet normalisation ([0,1] in)."""
    state = load_checkpoint(path, "torchvision ResNet-50")
    network = resnet50()
    load_state_dict_strict(network, state, path, hint="expected torchvision's resnet50-0676ba61.pth state dict "
                                                      "(keys conv1.weight, bn1.*, layer1.*, ..., fc.*)")
    return Normalized(network).eval()


def load_imagenet_classifier(kind: str, path: str | Path, center_crop: int | None = None) -> ImageNetClassifier:
    """The ImageNet classifier of suite kind ``kind`` (:data:`MULTICLASS_KINDS`) on [−1,1] images; ``center_crop``:
    the side of the centre crop taken before the network (LDCE: 224), none = the whole image (ACE)."""
    if kind == "torchvision_resnet50":
        network = load_torchvision_resnet50(path)
    elif kind == "madry_ft":
        network = load_madry_ft_resnet50(path)
    else:
        raise ValueError(f"classifier {path}: kind '{kind}' is not an ImageNet classifier (kinds: "
                         f"{', '.join(MULTICLASS_KINDS)})")
    return ImageNetClassifier(network, center_crop).eval()
