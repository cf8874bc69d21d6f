"""The mini suite's 40-attribute oracle: a small residual CNN, a different architecture from the classifier.

Same ``{'feat_extract', 'classifier'}`` checkpoint format as DiME's ``oracle.pth`` (whose feature extractor
is VGGFace2's ResNet-50 with a 128-d projection; that loader comes with the metrics). 128-d features, as
``Resnet50_128``, then ``Linear(128, 40)``; input in [−1,1].
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from cfx.runtime.checkpoints import load_checkpoint, load_state_dict_strict, save_checkpoint_atomic


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
    return save_checkpoint_atomic(
        {"feat_extract": model.feat_extract.state_dict(), "classifier": model.classifier.state_dict()}, path
    )


def load_oracle(path: str | Path, **arch) -> AttributeOracle:
    state = load_checkpoint(path, "attribute oracle")
    if not isinstance(state, dict) or set(state) != {"feat_extract", "classifier"}:
        raise ValueError(f"{path} is not an oracle checkpoint (expected keys feat_extract, classifier)")
    model = AttributeOracle(**arch)
    load_state_dict_strict(model.feat_extract, state["feat_extract"], path, "feat_extract")
    load_state_dict_strict(model.classifier, state["classifier"], path, "classifier")
    return model.eval()
