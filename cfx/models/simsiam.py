"""SimSiam ResNet-50 for ACE's S³ (docs/upstream/dime_ace.md §4.7).

Architecture of facebookresearch/simsiam ``simsiam/builder.py`` (copied as ACE ``eval_utils/simsiam.py``):
``encoder`` = torchvision ``resnet50(num_classes=dim, zero_init_residual=True)`` whose ``fc`` becomes the 3-layer
projector ``Linear(2048, 2048, bias=False), BN, ReLU, Linear(2048, 2048, bias=False), BN, ReLU, <the original
fc: Linear(2048, dim)>, BatchNorm1d(dim, affine=False)``; ``predictor`` = ``Linear(dim, pred_dim, bias=False),
BN, ReLU, Linear(pred_dim, dim)``. ACE's S³ compares the projector outputs ``z = encoder(x)`` by cosine; the
predictor is unused but present in the checkpoint, so it is built for a strict load.

Checkpoint ``checkpoint_0099.pth.tar`` (``main_simsiam.py``'s ``save_checkpoint``): ``{'epoch', 'arch',
'state_dict', 'optimizer'}``, ``state_dict`` keys prefixed ``module.`` (DistributedDataParallel).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torchvision
from torch import nn
from torchvision.transforms import functional as TF

from cfx.runtime.checkpoints import load_checkpoint, load_state_dict_strict

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class SimSiam(nn.Module):
    """SimSiam with a ResNet-50 encoder, projector dimension ``dim`` and predictor width ``pred_dim``."""

    def __init__(self, dim: int = 2048, pred_dim: int = 512) -> None:
        super().__init__()
        self.encoder = torchvision.models.resnet50(num_classes=dim, zero_init_residual=True)
        prev_dim = self.encoder.fc.weight.shape[1]
        self.encoder.fc = nn.Sequential(
            nn.Linear(prev_dim, prev_dim, bias=False), nn.BatchNorm1d(prev_dim), nn.ReLU(inplace=True),
            nn.Linear(prev_dim, prev_dim, bias=False), nn.BatchNorm1d(prev_dim), nn.ReLU(inplace=True),
            self.encoder.fc, nn.BatchNorm1d(dim, affine=False),
        )
        self.predictor = nn.Sequential(nn.Linear(dim, pred_dim, bias=False), nn.BatchNorm1d(pred_dim),
                                       nn.ReLU(inplace=True), nn.Linear(pred_dim, dim))

    def project(self, x: torch.Tensor) -> torch.Tensor:
        """Projector output ``z`` (N, dim) of ImageNet-normalised images (ACE S³ compares these)."""
        return self.encoder(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.project(x)


def simsiam_input(x01: torch.Tensor) -> torch.Tensor:
    """ACE ``compute_SimSiamSimilarity.py`` ``CFDataset.transform``: [0,1] images normalised with the ImageNet
    mean/std, no resize."""
    return TF.normalize(x01, list(IMAGENET_MEAN), list(IMAGENET_STD))


def load_simsiam(path: str | Path) -> SimSiam:
    """The published SimSiam checkpoint (``state_dict`` with ``module.`` prefixes, stripped as ACE's
    ``get_simsiam_dist`` does), loaded weights-only and strictly; eval mode. Sizes are read from the file."""
    checkpoint = load_checkpoint(path, "SimSiam checkpoint (checkpoint_0099.pth.tar)")
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("state_dict"), dict):
        keys = list(checkpoint)[:5] if isinstance(checkpoint, dict) else type(checkpoint).__name__
        raise ValueError(f"{path} is not a SimSiam checkpoint (expected a dict with 'state_dict'; got {keys})")
    state = {(k[len("module."):] if k.startswith("module.") else k): v for k, v in checkpoint["state_dict"].items()}
    predictor = state.get("predictor.0.weight")
    dim, pred_dim = (int(predictor.shape[1]), int(predictor.shape[0])) if predictor is not None else (2048, 512)
    model = SimSiam(dim=dim, pred_dim=pred_dim)
    return load_state_dict_strict(model, state, path, "state_dict").eval()
