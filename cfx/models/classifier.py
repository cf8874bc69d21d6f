"""The CelebA attribute classifier of DiME/ACE: DenseNet-121 features + ``Linear(1024, 40)``.

DiME's ``classifier.pth`` (trained with DiVE's code) is a dict ``{'feat_extract': <torchvision densenet121
state dict with classifier = Identity>, 'classifier': <Linear(1024, 40) state dict>}``; DiME's
``ClassificationModel`` feeds [−1,1] images without further normalisation and returns the logit of the
query attribute (reference/dime_ace.md §5). The mini suite uses the same code at reduced width
(growth_rate 12, block_config (2,2,2,2), num_init_features 24 → 60-d features).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from torchvision.models import DenseNet

from cfx.runtime.checkpoints import load_feat_classifier, read_feat_classifier, save_feat_classifier


class DenseNetClassifier(nn.Module):
    """``feat_extract`` (torchvision DenseNet, classifier = Identity) + ``classifier`` (Linear → attributes)."""

    def __init__(self, num_attributes: int = 40, growth_rate: int = 32, block_config: tuple = (6, 12, 24, 16),
                 num_init_features: int = 64) -> None:
        super().__init__()
        self.feat_extract = DenseNet(growth_rate=growth_rate, block_config=tuple(block_config),
                                     num_init_features=num_init_features)
        self.output_size = self.feat_extract.classifier.in_features
        self.feat_extract.classifier = nn.Identity()
        self.classifier = nn.Linear(self.output_size, num_attributes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.feat_extract(x))


class QueryClassifier(nn.Module):
    """The logit of one attribute, shape (B,) (DiME ``ClassificationModel``)."""

    def __init__(self, model: nn.Module, query_label: int) -> None:
        super().__init__()
        self.model = model
        self.query_label = int(query_label)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)[:, self.query_label]


def save_celeba_classifier(model: DenseNetClassifier, path: str | Path) -> Path:
    """Write DiME's ``{'feat_extract', 'classifier'}`` format."""
    return save_feat_classifier(model, path)


def load_celeba_classifier(path: str | Path, **arch) -> DenseNetClassifier:
    """Load DiME's ``classifier.pth`` format strictly into ``DenseNetClassifier(**arch)``."""
    state = read_feat_classifier(path, "CelebA classifier")
    weight = state["classifier"].get("weight")
    model = DenseNetClassifier(num_attributes=int(weight.shape[0]) if weight is not None else 40, **arch)
    return load_feat_classifier(model, state, path)
