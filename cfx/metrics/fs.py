"""FS, face similarity (ACE ``compute_FVA.py``'s ``mean dist``; docs/upstream/dime_ace.md §4.1).

The mean over successful CFs of the cosine similarity between the VGGFace2 ``resnet50_ft`` features of the CF
and of its original — the same cosines as FVA (:mod:`cfx.metrics.fva`), averaged instead of thresholded. ACE
also prints their standard deviation (``std dist``), kept here as ``std``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from cfx.metrics import MetricContext, MetricMetadata
from cfx.metrics.fva import identity_cosines

METADATA = MetricMetadata(
    name="fs",
    higher_is_better=True,
    reads="successful CFs: Results/{method}/{CC,IC}/CCF/CF and their Original",
    upstream="ACE compute_FVA.py ('mean dist')",
    networks=("identity",),
)


def compute_tree(tree_root: Path, method: str, ctx: MetricContext) -> dict[str, Any]:
    cosines, network = identity_cosines(tree_root, method, ctx, "fs")
    return {"value": float(np.mean(cosines)), "n": int(len(cosines)), "std": float(np.std(cosines)), **network}
