"""Rule metric: one metric of one (experiment, method) as JSON (cfx metric)."""
import sys
from pathlib import Path

from cfx.metrics import compute_tree_metric

sys.stderr = open(snakemake.log[0], "w", buffering=1)
compute_tree_metric(
    snakemake.wildcards.metric,
    tree_root=Path(snakemake.input.merged).parent,
    method=snakemake.wildcards.method,
    out_path=Path(snakemake.output.metric),
)
