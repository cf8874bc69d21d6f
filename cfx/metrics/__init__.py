"""Metrics, one module per metric, each with declarative metadata (as Quantus does).

Every metric module defines ``METADATA`` (a :class:`MetricMetadata`) and ``compute_tree(tree_root, method)``
returning a dict with at least ``value`` and ``n``.
"""

from __future__ import annotations

import importlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

METRICS = {
    "flip_rate": "cfx.metrics.flip_rate",
}


@dataclass(frozen=True)
class MetricMetadata:
    """What a metric is and where it comes from."""

    name: str
    higher_is_better: bool
    reads: str
    upstream: str
    networks: tuple[str, ...] = field(default_factory=tuple)
    unit: str = ""
    stand_in: str = ""


def get_metric(name: str):
    """The metric module registered under ``name``."""
    if name not in METRICS:
        raise KeyError(f"unknown metric '{name}'; known metrics: {', '.join(sorted(METRICS))}")
    return importlib.import_module(METRICS[name])


def metric_metadata(name: str) -> MetricMetadata:
    return get_metric(name).METADATA


def compute_tree_metric(name: str, *, tree_root: Path, method: str, out_path: Path | None = None) -> dict[str, Any]:
    """Compute a metric on ``tree_root`` (the upstream tree of one experiment) and write it as JSON."""
    module = get_metric(name)
    result = module.compute_tree(Path(tree_root), method)
    result = {"metric": name, "method": method, "tree": str(tree_root), **result, "metadata": asdict(module.METADATA)}
    if out_path is not None:
        out_path = Path(out_path)
        out_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = out_path.with_name(f".{out_path.name}.tmp{os.getpid()}")
        tmp.write_text(json.dumps(result, indent=1))
        os.replace(tmp, out_path)
    return result
