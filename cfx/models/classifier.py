"""The CelebA attribute classifier of DiME/ACE: DenseNet-121 features + ``Linear(1024, 40)``.

Upstream (DiME ``core/classifier/densenet.py``, taken from DiVE's ``src/models/densenet.py``):
``ClassificationModel.feat_extract = DenseNet121()``, a wrapper whose own attribute ``feat_extract`` is
``torchvision.models.densenet121()`` with ``classifier = Identity`` (``output_size = 1024``), and
``ClassificationModel.classifier = Linear(1024, 40)``. The published ``classifier.pth`` (trained with DiVE's
``src/wrappers/classifier.py``, whose ``get_state_dict`` writes ``{'feat_extract': self.feat_extract.state_dict(),
'classifier': ..., 'optimizer': ...}``) therefore holds

* ``'feat_extract'``: keys ``feat_extract.features.conv0.weight`` … ``feat_extract.features.norm5.*`` (the
  wrapper's prefix, then torchvision's DenseNet names; no ``classifier.*`` since the head is an Identity),
* ``'classifier'``: ``weight`` (40, 1024) and ``bias`` (40,).

This module keeps that nesting so the file loads with ``strict=True``. Inputs are [−1,1] images fed without
further normalisation (DiME; ACE's ``Normalizer(0.5, 0.5)`` on [0,1] is the same map). The forward of the
query wrapper returns ``logit[:, query_label]`` as DiME's ``ClassificationModel`` (docs/upstream/dime_ace.md §5).

Mini suite: the same code at reduced width, ``growth_rate=12, block_config=(2, 2, 2, 2),
num_init_features=24`` (60-d features, ≈ 70 k parameters; workflow/suites/mini.yaml).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn
from torchvision.models import DenseNet

from cfx.runtime.checkpoints import load_feat_classifier, read_feat_classifier, save_feat_classifier


class DenseNetFeatures(nn.Module):
    """DiME/DiVE ``DenseNet121`` wrapper: ``self.feat_extract`` = torchvision DenseNet with an Identity head."""

    def __init__(self, growth_rate: int = 32, block_config: Sequence[int] = (6, 12, 24, 16),
                 num_init_features: int = 64) -> None:
        super().__init__()
        self.feat_extract = DenseNet(growth_rate=growth_rate, block_config=tuple(int(b) for b in block_config),
                                     num_init_features=num_init_features)
        self.output_size = self.feat_extract.classifier.in_features
        self.feat_extract.classifier = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.feat_extract(x)


class DenseNetClassifier(nn.Module):
    """``feat_extract`` (:class:`DenseNetFeatures`) + ``classifier`` (Linear → ``num_attributes`` logits).

    Defaults are DenseNet-121 with 40 CelebA attributes: the layout of DiME's ``classifier.pth``."""

    def __init__(self, num_attributes: int = 40, growth_rate: int = 32, block_config: Sequence[int] = (6, 12, 24, 16),
                 num_init_features: int = 64) -> None:
        super().__init__()
        self.feat_extract = DenseNetFeatures(growth_rate, block_config, num_init_features)
        self.output_size = self.feat_extract.output_size
        self.classifier = nn.Linear(self.output_size, num_attributes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """All attribute logits (B, num_attributes) of [−1,1] images (B, 3, H, W)."""
        return self.classifier(self.feat_extract(x))


class QueryClassifier(nn.Module):
    """The logit of one attribute, shape (B,) (DiME ``ClassificationModel.forward``; with
    ``get_other_attrs=True`` also all logits, as upstream)."""

    def __init__(self, model: nn.Module, query_label: int) -> None:
        super().__init__()
        self.model = model
        self.query_label = int(query_label)

    def forward(self, x: torch.Tensor, get_other_attrs: bool = False):
        logits = self.model(x)
        if get_other_attrs:
            return logits[:, self.query_label], logits
        return logits[:, self.query_label]


def save_celeba_classifier(model: DenseNetClassifier, path: str | Path) -> Path:
    """Write DiME's ``{'feat_extract', 'classifier'}`` format (atomically)."""
    return save_feat_classifier(model, path)


_PREFIX_HINT = ("the 'feat_extract' keys of DiME's classifier.pth start with 'feat_extract.' (DiVE's DenseNet121 "
                "wrapper); a bare torchvision DenseNet state dict (keys 'features.…') must be re-keyed; for the "
                "mini suite, a classifier trained before this layout must be retrained")


def load_celeba_classifier(path: str | Path, **arch) -> DenseNetClassifier:
    """Load DiME's ``classifier.pth`` format strictly into ``DenseNetClassifier(**arch)`` (eval mode).

    ``num_attributes`` is read from the file's ``classifier.weight``; ``arch`` gives the DenseNet widths
    (defaults: DenseNet-121). Errors name the file, the part and the first mismatching keys."""
    state = read_feat_classifier(path, "CelebA classifier")
    weight = state["classifier"].get("weight")
    if "num_attributes" not in arch and isinstance(weight, torch.Tensor) and weight.ndim == 2:
        arch["num_attributes"] = int(weight.shape[0])
    model = DenseNetClassifier(**arch)
    return load_feat_classifier(model, state, path, hint=_PREFIX_HINT)
