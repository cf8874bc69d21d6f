"""ℓ1 and ℓ2 closeness: flattened norms of ``x' − x`` on [0,1] images, averaged over pairs (LDCE dev repo
``compute_lpnorms.py``, docs/upstream/ldce_gcd_svce.md §1.10; computed from the saved images, not from LDCE's
truncated ``closness_*`` fields, P-L14). Read over every processed image, as LDCE's script reads every pair.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from cfx.metrics import ALL_SUBSETS, MetricContext, MetricMetadata
from cfx.metrics._common import collect_pairs, image_batches

_COMMON = dict(higher_is_better=False, reads="every processed image: Results/{method}/{CC,IC}/{CCF,ICF}/CF and its "
               "Original", upstream="LDCE dev repo scripts/compute_lpnorms.py")
METADATA_BY_NAME = {
    "l1": MetricMetadata(name="l1", **_COMMON),
    "l2": MetricMetadata(name="l2", **_COMMON),
}
METADATA = METADATA_BY_NAME["l1"]


def lp_distances(originals: torch.Tensor, cfs: torch.Tensor, p: int) -> torch.Tensor:
    """Per-pair ``‖x' − x‖_p`` over all C·H·W entries of [0,1] images."""
    return torch.linalg.vector_norm((cfs - originals).flatten(1).double(), ord=p, dim=1)


def compute_tree(tree_root: Path, method: str, ctx: MetricContext, norm: str = "l1") -> dict[str, Any]:
    if norm not in METADATA_BY_NAME:
        raise ValueError(f"norm must be one of {list(METADATA_BY_NAME)}")
    pairs = collect_pairs(tree_root, method, ALL_SUBSETS, norm)
    p = int(norm[1])
    distances = [lp_distances(x, x_cf, p) for x, x_cf in zip(
        image_batches([q["original_path"] for q in pairs], 64), image_batches([q["cf_path"] for q in pairs], 64),
        strict=True)]
    values = torch.cat(distances)
    return {"value": float(values.mean()), "n": len(values), "std": float(values.std()) if len(values) > 1 else 0.0}
