"""The mini suite's 40-attribute oracle: a small residual CNN, a different architecture from the classifier.

Same ``{'feat_extract', 'classifier'}`` checkpoint format as DiME's ``oracle.pth`` (whose feature extractor
is VGGFace2's ResNet-50 with a 128-d projection; that loader comes with the metrics). 128-d features, as
``Resnet50_128``, then ``Linear(128, 40)``; input in [−1,1].
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from cfx.runtime.checkpoints import load_feat_classifier, read_feat_classifier, save_feat_classifier


class _Residual(nn.Module):
    def __init__(self, channels_in: int, channels_out: int, stride: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels_in, channels_out, 3, stride, 1, bias=False), nn.BatchNorm2d(channels_out),
            nn.ReLU(inplace=True), nn.Conv2d(channels_out, channels_out, 3, 1, 1, bias=False),
            nn.BatchNorm2d(channels_out),
        )
        self.skip = (nn.Identity() if stride == 1 and channels_in == channels_out else nn.Sequential(
            nn.Conv2d(channels_in, channels_out, 1, stride, bias=False), nn.BatchNorm2d(channels_out)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.body(x) + self.skip(x))


class OracleFeatures(nn.Module):
    def __init__(self, width: int = 32, feature_dim: int = 128) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(True))
        self.blocks = nn.Sequential(_Residual(width, width, 1), _Residual(width, 2 * width, 2),
                                    _Residual(2 * width, 4 * width, 2), _Residual(4 * width, 4 * width, 2))
        self.project = nn.Conv2d(4 * width, feature_dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.project(self.blocks(self.stem(x))).mean(dim=(2, 3))


class AttributeOracle(nn.Module):
    """40 attribute logits from [−1,1] images."""

    def __init__(self, num_attributes: int = 40, width: int = 32, feature_dim: int = 128) -> None:
        super().__init__()
        self.feat_extract = OracleFeatures(width, feature_dim)
        self.classifier = nn.Linear(feature_dim, num_attributes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.feat_extract(x))


def save_oracle(model: AttributeOracle, path: str | Path) -> Path:
    """Write the ``{'feat_extract', 'classifier'}`` format."""
    return save_feat_classifier(model, path)


def load_oracle(path: str | Path, **arch) -> AttributeOracle:
    """Load the mini oracle strictly into ``AttributeOracle(**arch)``."""
    return load_feat_classifier(AttributeOracle(**arch), read_feat_classifier(path, "attribute oracle"), path)
