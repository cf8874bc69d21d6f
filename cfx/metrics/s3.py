"""S³, SimSiam similarity (ACE ``compute_SimSiamSimilarity.py``; docs/upstream/dime_ace.md §4.7).

For every correctly classified input (``CC/{CCF,ICF}``, successful or not), the cosine similarity of the SimSiam
ResNet-50 projector outputs ``z`` of the original and of the CF; images /255, ImageNet mean/std, no resize; eval
mode. S³ = mean over those pairs. The mini suite stands in the mini oracle's 128-d features for SimSiam.
Upstream batches 15 pairs (``--batch-size``); batching does not change the value.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from cfx.metrics import CORRECTLY_CLASSIFIED, MetricContext, MetricMetadata
from cfx.metrics._common import collect_pairs, image_batches
from cfx.metrics.networks import load_simsiam_projector

METADATA = MetricMetadata(
    name="s3",
    higher_is_better=True,
    reads="correctly classified inputs: Results/{method}/CC/{CCF,ICF}/CF and their Original",
    upstream="ACE compute_SimSiamSimilarity.py",
    networks=("simsiam",),
)
BATCH_SIZE = 15
ORACLE_STAND_IN = "cosine of the mini oracle's 128-d features, not SimSiam ResNet-50 projections"


@torch.no_grad()
def compute_tree(tree_root: Path, method: str, ctx: MetricContext) -> dict[str, Any]:
    pairs = collect_pairs(tree_root, method, CORRECTLY_CLASSIFIED, "s3")
    ref = ctx.network("simsiam", "s3")
    project = load_simsiam_projector(ref, ctx.device)
    originals = image_batches([p["original_path"] for p in pairs], BATCH_SIZE)
    cfs = image_batches([p["cf_path"] for p in pairs], BATCH_SIZE)
    cosines = torch.cat([F.cosine_similarity(project(x).float(), project(y).float(), dim=1).cpu()
                         for x, y in zip(originals, cfs, strict=True)]).double()
    return {"value": float(cosines.mean()), "n": int(len(cosines)), "std": float(cosines.std(unbiased=False)),
            "network": ref.name, "stand_in": ORACLE_STAND_IN if ref.kind == "oracle" else ""}
