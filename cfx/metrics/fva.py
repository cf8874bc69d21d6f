"""FVA, face verification accuracy (DiME/ACE ``compute_FVA.py``; docs/upstream/dime_ace.md §4.1).

Per successful CF, ``cos = CosineSimilarity(dim=1)(f(x), f(x'))`` with ``f`` the VGGFace2 ResNet-50
``resnet50_ft`` pooled features (2048-d, ``include_top=False``) of the 224² BGR mean-subtracted images;
``FVA = mean 1[cos > 0.5]`` (strict), printed by upstream as a fraction and reported ×100 in the papers (here in
percent). ACE's script also prints ``mean dist`` = mean cosine, which ACE reports as FS (:mod:`cfx.metrics.fs`).
Upstream batches 15 pairs at a time (``batch_size`` is hard-coded); batching does not change the value.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from cfx.metrics import SUCCESSFUL, MetricContext, MetricMetadata
from cfx.metrics._common import collect_pairs
from cfx.metrics.networks import load_face_features

METADATA = MetricMetadata(
    name="fva",
    higher_is_better=True,
    reads="successful CFs: Results/{method}/{CC,IC}/CCF/CF and their Original",
    upstream="ACE compute_FVA.py (DiME compute_FVA.py, same computation)",
    networks=("identity",),
    unit="%",
)
BATCH_SIZE = 15  # upstream DataLoader batch size
IDENTITY_STAND_IN = "face verification: mini identity network trained here, not VGGFace2 ResNet-50"


@torch.no_grad()
def identity_cosines(tree_root: Path, method: str, ctx: MetricContext, metric: str) -> tuple[np.ndarray,
                                                                                           dict[str, Any]]:
    """Cosine similarity of the identity embeddings of each successful CF and its original, and what network
    gave them (``name``, ``stand_in``)."""
    pairs = collect_pairs(tree_root, method, SUCCESSFUL, metric)
    ref = ctx.network("identity", metric)
    embed = load_face_features(ref, ctx.device)
    cosines = []
    for start in range(0, len(pairs), BATCH_SIZE):
        batch = pairs[start:start + BATCH_SIZE]
        original = embed([p["original_path"] for p in batch]).float()
        cf = embed([p["cf_path"] for p in batch]).float()
        cosines.append(F.cosine_similarity(original, cf, dim=1).cpu())  # nn.CosineSimilarity(dim=1), eps 1e-8
    stand_in = IDENTITY_STAND_IN if ref.kind == "identity" else ""
    return torch.cat(cosines).double().numpy(), {"network": ref.name, "stand_in": stand_in}


def fva(cosines: np.ndarray) -> float:
    """Percentage of pairs with cosine strictly above 0.5."""
    return float(100.0 * np.mean(cosines > 0.5))


def compute_tree(tree_root: Path, method: str, ctx: MetricContext) -> dict[str, Any]:
    cosines, network = identity_cosines(tree_root, method, ctx, "fva")
    return {"value": fva(cosines), "n": int(len(cosines)), "std": float(100.0 * np.std(cosines > 0.5)), **network}
