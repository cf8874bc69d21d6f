"""MNAC, mean number of attributes changed (DiME ``eval_utils/compute_MNAC.py``; ACE ``compute_MNAC.py``).

``MNAC = mean over successful CFs of Σ_{i<40} 1[(p_i(x) > 0.5) ≠ (p_i(x') > 0.5)]`` with ``p`` the attribute
oracle's probabilities; the query attribute counts too (docs/upstream/dime_ace.md §4.2). Images are read as the
upstream loader does: ToTensor + Normalize(0.5, 0.5), i.e. [−1,1]. ACE's CelebA-HQ script adds a second
(0.5, 0.5) normalisation on top; STEEX's own evaluation does not, and neither does cfx (README.md "Deviations from
upstream").
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from cfx.metrics import SUCCESSFUL, MetricContext, MetricMetadata
from cfx.metrics._common import collect_pairs, image_batches, stand_in_label
from cfx.metrics.networks import load_oracle_probabilities

METADATA = MetricMetadata(
    name="mnac",
    higher_is_better=False,
    reads="successful CFs: Results/{method}/{CC,IC}/CCF/CF and their Original",
    upstream="DiME eval_utils/compute_MNAC.py; ACE compute_MNAC.py (CelebA and CelebA-HQ oracles)",
    networks=("oracle",),
)
BATCH_SIZE = 15  # upstream DataLoader batch size (does not change the value)


@torch.no_grad()
def oracle_decisions(tree_root: Path, method: str, ctx: MetricContext, metric: str) -> tuple[np.ndarray, np.ndarray,
                                                                                             dict[str, Any]]:
    """Oracle decisions ``p > 0.5`` (n, 40) of the originals and of the successful CFs, and the oracle's ref."""
    pairs = collect_pairs(tree_root, method, SUCCESSFUL, metric)
    ref = ctx.network("oracle", metric)
    oracle = load_oracle_probabilities(ref, ctx.device)
    decisions = {}
    for key in ("original_path", "cf_path"):
        paths = [p[key] for p in pairs]
        probs = [oracle(x * 2 - 1).float().cpu() for x in image_batches(paths, BATCH_SIZE, f"{metric} {key[:-5]}")]
        decisions[key] = (torch.cat(probs) > 0.5).numpy()
    return decisions["original_path"], decisions["cf_path"], {"kind": ref.kind, "name": ref.name}


def mnac(original_decisions: np.ndarray, cf_decisions: np.ndarray) -> float:
    """Mean over pairs of the number of attributes whose decision differs."""
    return float(np.mean(np.sum(original_decisions != cf_decisions, axis=1)))


def compute_tree(tree_root: Path, method: str, ctx: MetricContext) -> dict[str, Any]:
    original, cf, ref = oracle_decisions(tree_root, method, ctx, "mnac")
    per_attribute = (original != cf).mean(axis=0)
    return {"value": mnac(original, cf), "n": int(len(cf)), "oracle": ref["name"],
            "changed_fraction_per_attribute": [round(float(v), 4) for v in per_attribute],
            "stand_in": stand_in_label(ref["kind"], "oracle")}
