"""Flip rate: the fraction of processed images whose counterfactual is classified as the target.

DiME ``main.py`` writes it as ``cf acc`` in ``summary.yaml`` (``#(pred_cf == target) / n``), ACE as ``cf``;
the papers report it ×100 as "FR" (docs/upstream/dime_ace.md §1.6, §2.9). Read here from the Info files of the
tree: an image is flipped iff it sits under ``CCF`` (``cf pred == target``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cfx.io.tree import iter_instances
from cfx.methods import evaluated_results
from cfx.metrics import MetricContext, MetricMetadata

METADATA = MetricMetadata(
    name="flip_rate",
    higher_is_better=True,
    reads="all processed images: Results/{method}/{CC,IC}/{CCF,ICF}/Info (ACE: Results/ace/explanation)",
    upstream="DiME main.py summary.yaml 'cf acc'; ACE main.py summary 'cf'",
    unit="%",
)


def flip_rate(cf_preds: list[int], targets: list[int]) -> float:
    """``#(cf_pred == target) / n`` as a percentage (0 for no images)."""
    if len(cf_preds) != len(targets):
        raise ValueError("cf_preds and targets differ in length")
    if not targets:
        return 0.0
    return 100.0 * sum(int(p == t) for p, t in zip(cf_preds, targets, strict=True)) / len(targets)


def compute_tree(tree_root: Path, method: str, ctx: MetricContext | None = None) -> dict[str, Any]:
    """Flip rate over every instance of ``Results/{method}``; checks the folder agrees with the Info record."""
    cf_preds, targets = [], []
    for instance in iter_instances(tree_root, evaluated_results(method)):
        info = instance["info"]
        in_ccf = instance["subset"].endswith("CCF") and not instance["subset"].endswith("ICF")
        if in_ccf != (int(info["cf_pred"]) == int(info["target"])):
            raise ValueError(f"{instance['info_path']} disagrees with its folder {instance['subset']}")
        cf_preds.append(int(info["cf_pred"]))
        targets.append(int(info["target"]))
    if not targets:
        raise ValueError(f"no instances of method '{method}' under {tree_root}/Results/{evaluated_results(method)}")
    return {"value": flip_rate(cf_preds, targets), "n": len(targets)}
