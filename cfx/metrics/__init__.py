"""Metrics, one module per metric, each with declarative metadata (as Quantus does).

Every metric module defines ``METADATA`` (a :class:`MetricMetadata`) and
``compute_tree(tree_root, method, ctx) -> dict`` returning at least ``value`` and ``n`` (and ``stand_in``, a
label, when a mini stand-in network replaced the paper's). Folder metrics (FID, sFID) also define
``compute_folders(real, fake, ctx)``. ``ctx`` is a :class:`MetricContext`: the experiment's settings, the
networks by role (:class:`NetworkRef`), the metric's options from the suite file and the device.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from cfx.runtime.files import write_json_atomic

METRICS = {
    "flip_rate": "cfx.metrics.flip_rate",
    "fid": "cfx.metrics.fid",
    "sfid": "cfx.metrics.sfid",
    "fva": "cfx.metrics.fva",
    "fs": "cfx.metrics.fs",
    "mnac": "cfx.metrics.mnac",
    "cd": "cfx.metrics.cd",
    "cout": "cfx.metrics.cout",
    "s3": "cfx.metrics.s3",
    "sigma_l": "cfx.metrics.sigma_l",
    "l1": "cfx.metrics.closeness",
    "l2": "cfx.metrics.closeness",
}

# Which instances each metric reads (docs/upstream/dime_ace.md §4 table).
SUCCESSFUL = ("CC/CCF", "IC/CCF")
CORRECTLY_CLASSIFIED = ("CC/CCF", "CC/ICF")
ALL_SUBSETS = ("CC/CCF", "CC/ICF", "IC/CCF", "IC/ICF")


class NotApplicable(ValueError):
    """The metric is undefined on this tree (e.g. no successful counterfactual to read): the result JSON records
    the reason with ``value: null`` and the tables show "n/a" with it, instead of the workflow failing."""


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


@dataclass(frozen=True)
class NetworkRef:
    """A network a metric needs: its role (``oracle``, ``identity``, ``features``, ``classifier``, ``simsiam``,
    ``lpips``), the suite model name, the checkpoint path and the suite ``models:`` entry (``kind``, ``arch``,
    ``image_size``, ...)."""

    role: str
    name: str
    path: Path | None
    spec: dict[str, Any] = field(default_factory=dict)

    @property
    def kind(self) -> str:
        return str(self.spec.get("kind", ""))


@dataclass
class MetricContext:
    """Everything a metric may need besides the tree."""

    experiment: dict[str, Any] = field(default_factory=dict)
    networks: dict[str, NetworkRef] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)
    device: str = "cpu"
    data_root: Path | None = None
    seed_trees: list[Path] = field(default_factory=list)

    def network(self, role: str, metric: str) -> NetworkRef:
        """The network for ``role``; missing is an error naming the suite key to set."""
        if role not in self.networks:
            raise KeyError(f"metric '{metric}' needs a '{role}' network: set metrics: {{{metric}: {{networks: "
                           f"{{{role}: MODEL}}}}}} in the suite file (MODEL a key of models:)")
        return self.networks[role]


def get_metric(name: str):
    """The metric module registered under ``name``."""
    if name not in METRICS:
        raise KeyError(f"unknown metric '{name}'; known metrics: {', '.join(sorted(METRICS))}")
    return importlib.import_module(METRICS[name])


def metric_metadata(name: str) -> MetricMetadata:
    module = get_metric(name)
    meta = getattr(module, "METADATA_BY_NAME", {}).get(name)
    return meta or module.METADATA


def iter_pairs(tree_root: Path, method: str, subsets: tuple[str, ...]) -> Iterator[dict[str, Any]]:
    """The method's instances under ``subsets`` (see :func:`cfx.io.tree.iter_instances`)."""
    from cfx.io.tree import iter_instances
    from cfx.methods import evaluated_results

    yield from iter_instances(Path(tree_root), evaluated_results(method), subsets)


def _finish(name: str, result: dict[str, Any], extra: dict[str, Any], out_path: Path | None) -> dict[str, Any]:
    meta = asdict(metric_metadata(name))
    if result.get("stand_in"):
        meta["stand_in"] = result["stand_in"]
    result = {"metric": name, **extra, **result, "metadata": meta}
    if out_path is not None:
        write_json_atomic(out_path, result, default=str)
    return result


def compute_tree_metric(name: str, *, tree_root: Path, method: str, ctx: MetricContext | None = None,
                        out_path: Path | None = None) -> dict[str, Any]:
    """Compute a metric on ``tree_root`` (the upstream tree of one experiment) and write it as JSON."""
    module = get_metric(name)
    ctx = ctx or MetricContext()
    try:
        if name in ("l1", "l2"):
            result = module.compute_tree(Path(tree_root), method, ctx, norm=name)
        else:
            result = module.compute_tree(Path(tree_root), method, ctx)
    except NotApplicable as reason:
        result = {"value": None, "n": 0, "not_applicable": str(reason)}
    return _finish(name, result, {"method": method, "tree": str(tree_root)}, out_path)


def compute_folder_metric(name: str, *, real: Path, fake: Path, ctx: MetricContext | None = None,
                          out_path: Path | None = None) -> dict[str, Any]:
    """Compute a folder metric (FID, sFID) between two image folders."""
    module = get_metric(name)
    if not hasattr(module, "compute_folders"):
        raise ValueError(f"metric '{name}' reads a results tree, not two folders: use --tree and --method")
    result = module.compute_folders(Path(real), Path(fake), ctx or MetricContext())
    return _finish(name, result, {"real": str(real), "fake": str(fake)}, out_path)
