"""Shared helpers of the metric modules: batched image loading and pair collection."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from cfx.io.images import load_image
from cfx.metrics import NotApplicable, iter_pairs


def collect_pairs(tree_root: Path, method: str, subsets: tuple[str, ...], metric: str) -> list[dict[str, Any]]:
    """The instances a metric reads; none makes the metric not applicable (the reason names the folders)."""
    pairs = list(iter_pairs(tree_root, method, subsets))
    if not pairs:
        raise NotApplicable(f"metric '{metric}' found no instances of method '{method}' under {tree_root}/Results in "
                         f"{', '.join(subsets)}")
    return pairs


def image_batches(paths: Sequence[Path], batch_size: int, desc: str = "") -> Iterator[torch.Tensor]:
    """[0,1] image batches (N,3,H,W) of ``paths`` in order (upstream loaders: ToTensor)."""
    for start in tqdm(range(0, len(paths), batch_size), desc=desc, unit="batch", disable=not desc, leave=False):
        yield torch.stack([load_image(p) for p in paths[start:start + batch_size]])


def stand_in_label(kind: str, role: str) -> str:
    """The table label of a mini stand-in network (empty for the paper's networks)."""
    labels = {
        ("oracle", "oracle"): "attribute oracle: mini oracle trained here, not DiME's VGGFace2 ResNet-50 oracle",
        ("classifier", "classifier"): "",
    }
    return labels.get((kind, role), "")
