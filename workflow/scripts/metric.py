"""Rule metric: one metric of one (experiment, method) as JSON (cfx metric)."""
from pathlib import Path

from cfx.metrics import MetricContext, NetworkRef, compute_tree_metric
from cfx.runtime.device import select_device
from cfx.runtime.logs import log_to_rule_log
from cfx.steps import data_root_from_index

log_to_rule_log(snakemake)
spec = snakemake.params.spec
networks = {
    role: NetworkRef(role=role, name=n["name"], path=Path(n["checkpoint"]) if n["checkpoint"] else None, spec=n["spec"])
    for role, n in spec["networks"].items()
}
ctx = MetricContext(
    experiment=spec["experiment"],
    networks=networks,
    options=spec["options"],
    device=str(select_device(snakemake.params.device)) if snakemake.wildcards.metric not in ("flip_rate", "l1", "l2")
    else "cpu",
    data_root=data_root_from_index(Path(snakemake.input.index)) if "index" in snakemake.input.keys() else None,
    seed_trees=[Path(p).parent for p in snakemake.input.get("seed_runs", [])],
)
compute_tree_metric(
    snakemake.wildcards.metric,
    tree_root=Path(snakemake.input.merged).parent,
    method=snakemake.wildcards.method,
    ctx=ctx,
    out_path=Path(snakemake.output.metric),
)
