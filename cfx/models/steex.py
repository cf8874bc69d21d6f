"""STEEX's CelebA-HQ attribute oracle (ACE's MNAC/CD on CelebA-HQ; reference/dime_ace.md §4.2, §5).

STEEX ``models/OracleResnetModel.py`` (copied as ACE ``eval_utils/oracle_celebahq_metrics.py``):
``OracleResnet.feat_extract`` = ``Resnet50_ft_dag`` (the VGGFace2 ResNet-50 in the flat "dag" layout, see
:mod:`cfx.models.vggface2`) whose 8631-way ``classifier`` conv is replaced by an identity, then
``classifier = Linear(2048, 40)`` and a sigmoid: the forward returns probabilities. ACE's copy resizes the input
bicubically to 224×224 inside ``Resnet50_ft_dag.forward`` (STEEX resizes with PIL before); there is no mean
subtraction. Inputs are [−1,1] images (STEEX ``compute_mnac.py``: Normalize(0.5, 0.5)).

Checkpoint ``checkpoints_oracle_attribute/celebamaskhq/checkpoint.tar`` (STEEX ``train_vggface2_oracle.py``):
``{'epoch', 'optimizer_state_dict', 'loss', 'model_state_dict'}`` with ``model_state_dict`` keys
``feat_extract.conv1_7x7_s2.weight`` … ``feat_extract.conv5_3_1x1_increase_bn.*``, ``classifier.weight`` (40, 2048),
``classifier.bias``.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from cfx.models.vggface2 import CaffeResNet50Dag, load_strict_bn_optional
from cfx.runtime.checkpoints import load_checkpoint


class SteexOracle(nn.Module):
    """``OracleResnet``: [−1,1] images (any size; bicubic resize to 224 inside) → 40 attribute probabilities."""

    def __init__(self, num_attributes: int = 40) -> None:
        super().__init__()
        self.feat_extract = CaffeResNet50Dag(feature_dim=None)
        self.classifier = nn.Linear(2048, num_attributes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, size=(224, 224), mode="bicubic", align_corners=False)
        return torch.sigmoid(self.classifier(self.feat_extract(x)))


def load_steex_oracle(path: str | Path) -> SteexOracle:
    """STEEX's ``checkpoint.tar`` (a torch dict with ``model_state_dict``), loaded weights-only and strictly into
    :class:`SteexOracle`; eval mode."""
    checkpoint = load_checkpoint(path, "STEEX attribute oracle (checkpoint.tar)")
    if not isinstance(checkpoint, dict) or "model_state_dict" not in checkpoint:
        keys = list(checkpoint)[:5] if isinstance(checkpoint, dict) else type(checkpoint).__name__
        raise ValueError(f"{path} is not a STEEX checkpoint (expected a dict with 'model_state_dict'; got {keys})")
    state = checkpoint["model_state_dict"]
    weight = state.get("classifier.weight") if isinstance(state, dict) else None
    oracle = SteexOracle(num_attributes=int(weight.shape[0]) if weight is not None else 40)
    return load_strict_bn_optional(oracle, state, path, "model_state_dict").eval()
