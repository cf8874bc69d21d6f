"""CD, correlation difference (DiME's metric; ACE ``compute_CD.py``, the generic version).

Reference correlations ``ρ_data[i] = Pearson(a_q, a_i)`` over the dataset's **train** partition labels (−1 → 0);
CF correlations ``ρ_cf[i] = Pearson over successful CFs of (Δ_i, Δ_q)`` with ``Δ = o(x') − o(x)`` the oracle
decision change; ``CD = Σ_i |ρ_cf[i] − ρ_data[i]|`` (docs/upstream/dime_ace.md §4.3). An undefined ``ρ_cf`` (an
attribute the CFs never change) is 0 as in ACE (DiME's script propagates NaN); an undefined ``ρ_data`` (an
attribute constant on the train split, which real CelebA never has but the generated data does) is 0 too.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from cfx.metrics import MetricContext, MetricMetadata
from cfx.metrics._common import stand_in_label
from cfx.metrics.mnac import oracle_decisions

METADATA = MetricMetadata(
    name="cd",
    higher_is_better=False,
    reads="successful CFs: Results/{method}/{CC,IC}/CCF/CF and their Original; train-split labels of the dataset",
    upstream="ACE compute_CD.py (query label generic, NaN -> 0); DiME eval_utils/compute_CD.py (smile only)",
    networks=("oracle",),
)


def pearson_or_zero(a: np.ndarray, b: np.ndarray) -> float:
    """``np.corrcoef(a, b)[0, 1]``, or 0 where it is undefined (a constant input), as ACE's guard."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if len(a) < 2 or a.std() == 0 or b.std() == 0:
        return 0.0
    return float(np.corrcoef(a, b)[0, 1])


def data_correlations(labels: np.ndarray, query: int) -> np.ndarray:
    """``ρ_data``: Pearson of each attribute with the query over label rows in {0,1} (n, 40)."""
    return np.array([pearson_or_zero(labels[:, query], labels[:, i]) for i in range(labels.shape[1])])


def cf_correlations(original_decisions: np.ndarray, cf_decisions: np.ndarray, query: int) -> np.ndarray:
    """``ρ_cf``: Pearson over CFs of each attribute's decision change with the query's (ACE ``diff=True``)."""
    deltas = cf_decisions.astype(np.float64) - original_decisions.astype(np.float64)
    return np.array([pearson_or_zero(deltas[:, i], deltas[:, query]) for i in range(deltas.shape[1])])


def correlation_difference(rho_cf: np.ndarray, rho_data: np.ndarray) -> float:
    return float(np.sum(np.abs(rho_cf - rho_data)))


def train_labels(data_root: Path) -> np.ndarray:
    """The 40 attributes of the train partition (partition 0) in {0,1}, CelebA file order."""
    from cfx.data.celeba import CELEBA_ATTRIBUTES, read_celeba

    frame = read_celeba(Path(data_root))
    train = frame[frame["partition"] == 0]
    if train.empty:
        raise ValueError(f"{data_root} has no train-partition images (list_eval_partition.csv partition 0)")
    return (train[list(CELEBA_ATTRIBUTES)].to_numpy() > 0).astype(np.float64)


def compute_tree(tree_root: Path, method: str, ctx: MetricContext) -> dict[str, Any]:
    if ctx.data_root is None:
        raise ValueError("metric 'cd' needs the dataset root (its train-split labels give the reference "
                         "correlations): pass --data-root or run it through the workflow")
    query = int(ctx.experiment["query_label"])
    rho_data = data_correlations(train_labels(ctx.data_root), query)
    original, cf, ref = oracle_decisions(tree_root, method, ctx, "cd")
    rho_cf = cf_correlations(original, cf, query)
    return {"value": correlation_difference(rho_cf, rho_data), "n": int(len(cf)), "query_label": query,
            "oracle": ref["name"], "rho_data": [round(float(v), 5) for v in rho_data],
            "rho_cf": [round(float(v), 5) for v in rho_cf], "stand_in": stand_in_label(ref["kind"], "oracle")}
