"""COUT, counterfactual transition (C3LT; ACE ``eval_utils/cout_metrics.py`` and ``compute_COUT.py``).

Per image: ``m = Σ_c |x' − x|`` min–max normalised, pixels ranked by ``m`` descending; with ``s = max(1, HW//50)``
the next ``s`` pixels of the CF are inserted into the original at each step, ``x_k = x'⊙M_k + x⊙(1−M_k)``.
Binary: ``c_k = σ(±logit(x_k))`` = p(original prediction), ``c'_k = 1 − c_k``; multiclass (ImageNet pairs):
the softmax of each image's source class (its prediction, = its label for the correctly classified inputs read here)
and of its target class, both from its Info file, so the two directions of a pair are scored in one pass (LDCE's
dev scripts average the directions; the mean over images weights them by their counts).
``AUC(c) = (c_0/2 + Σ c_{1..n−1} + c_n/2)·s/HW``; ``COUT = mean(AUC(c') − AUC(c))`` over correctly classified inputs
(docs/upstream/dime_ace.md §4.6). Inputs in [0,1] as upstream, fed to the classifier as [−1,1] (ACE wraps it in
``Normalizer(0.5, 0.5)``: the same thing).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cfx.metrics import CORRECTLY_CLASSIFIED, MetricContext, MetricMetadata
from cfx.metrics._common import collect_pairs, image_batches
from cfx.metrics.networks import load_classifier_logits

METADATA = MetricMetadata(
    name="cout",
    higher_is_better=True,
    reads="correctly classified inputs: Results/{method}/CC/{CCF,ICF}/CF and their Original",
    upstream="ACE eval_utils/cout_metrics.py (from C3LT) via compute_COUT.py",
    networks=("classifier",),
)
NUM_STEPS = 50  # upstream cout_num_steps
BATCH_SIZE = 16


def difference_masks(originals: torch.Tensor, cfs: torch.Tensor) -> torch.Tensor:
    """``Σ_c |x' − x|`` min–max normalised per image (N, H·W); an image equal to its CF gets zeros (upstream
    divides by zero there; the ranking is then irrelevant because inserting changes nothing)."""
    masks = (cfs - originals).abs().sum(1).flatten(1)
    masks = masks - masks.min(1, keepdim=True).values
    peak = masks.max(1, keepdim=True).values
    return torch.where(peak > 0, masks / peak.clamp_min(torch.finfo(masks.dtype).tiny), torch.zeros_like(masks))


def _probabilities(logits: torch.Tensor, original_positive: torch.Tensor | None, query: int | torch.Tensor | None,
                   target: int | torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    if logits.ndim == 1:  # binary: the curve of the original prediction (ACE get_probs, binary=True)
        sign = original_positive.float() * 2 - 1
        c = torch.sigmoid(sign * logits)
        return c, 1 - c
    probs = torch.softmax(logits, dim=1)
    rows = torch.arange(len(probs), device=probs.device)
    return probs[rows, torch.as_tensor(query, device=probs.device)], probs[rows, torch.as_tensor(target,
                                                                                               device=probs.device)]


def auc(curve: torch.Tensor) -> torch.Tensor:
    """Trapezoid sum ``c_0/2 + Σ c_{1..n−1} + c_n/2`` along dim 0 (unit spacing; ACE ``auc``)."""
    return curve[0] / 2 + curve[1:-1].sum(0) + curve[-1] / 2


@torch.no_grad()
def cout_scores(originals: torch.Tensor, cfs: torch.Tensor, classifier: Callable[[torch.Tensor], torch.Tensor], *,
                query: int | torch.Tensor | None = None, target: int | torch.Tensor | None = None,
                num_steps: int = NUM_STEPS) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-image COUT of [0,1] batches, and the mean c and c' curves. ``classifier`` takes [0,1] images and
    returns binary logits (N,) or class logits (N, C); then ``query`` and ``target`` are class indices, one for the
    batch or one per image."""
    n, _, height, width = originals.shape
    num_pixels = height * width
    step = max(1, num_pixels // num_steps)
    order = torch.argsort(difference_masks(originals, cfs), dim=1, descending=True, stable=True)
    logits = classifier(originals)
    positive = logits > 0 if logits.ndim == 1 else None
    curves = [_probabilities(logits, positive, query, target)]
    mask = torch.zeros(n, num_pixels, dtype=originals.dtype, device=originals.device)
    rows = torch.arange(n, device=originals.device).unsqueeze(1)
    for start in range(0, num_pixels, step):
        mask[rows, order[:, start:start + step]] = 1
        m = mask.view(n, 1, height, width)
        curves.append(_probabilities(classifier(cfs * m + originals * (1 - m)), positive, query, target))
    c = torch.stack([pair[0] for pair in curves])
    c_prime = torch.stack([pair[1] for pair in curves])
    scale = step / num_pixels
    return (auc(c_prime) - auc(c)) * scale, c.mean(1), c_prime.mean(1)


def compute_tree(tree_root: Path, method: str, ctx: MetricContext) -> dict[str, Any]:
    pairs = collect_pairs(tree_root, method, CORRECTLY_CLASSIFIED, "cout")
    ref = ctx.network("classifier", "cout")
    query_label = ctx.experiment.get("query_label")
    logits = load_classifier_logits(ref, query_label, ctx.device)
    scores, c_curves, c_prime_curves = [], [], []
    originals = image_batches([p["original_path"] for p in pairs], BATCH_SIZE, "cout")
    cfs = image_batches([p["cf_path"] for p in pairs], BATCH_SIZE)
    for start, (x, x_cf) in enumerate(zip(originals, cfs, strict=True)):
        batch = pairs[start * BATCH_SIZE:(start + 1) * BATCH_SIZE]
        # multiclass: each image's own source (its prediction) and target class, as written in its Info file
        query = torch.tensor([int(p["info"]["pred"]) for p in batch])
        target = torch.tensor([int(p["info"]["target"]) for p in batch])
        per_image, c, c_prime = cout_scores(x.to(ctx.device), x_cf.to(ctx.device), lambda z: logits(z * 2 - 1),
                                            query=query, target=target)
        scores.append(per_image.cpu())
        c_curves.append(c.cpu() * len(x))
        c_prime_curves.append(c_prime.cpu() * len(x))
    scores_all = torch.cat(scores).double()
    n = len(scores_all)
    return {"value": float(scores_all.mean()), "n": n, "std": float(scores_all.std()) if n > 1 else 0.0,
            "c_curve": np.round((torch.stack(c_curves).sum(0) / n).numpy(), 5).tolist(),
            "c_prime_curve": np.round((torch.stack(c_prime_curves).sum(0) / n).numpy(), 5).tolist()}
