"""Rule merge_chunks: merge chunk manifests, write the upstream summary and check n and flip rate (cfx merge)."""
from pathlib import Path

from cfx.merge import merge_chunks
from cfx.runtime.logs import log_to_rule_log

log_to_rule_log(snakemake)
merge_chunks(
    [Path(p) for p in snakemake.input.manifests],
    tree_root=Path(snakemake.output.merged).parent,
    method=snakemake.wildcards.method,
    out_path=Path(snakemake.output.merged),
    min_flip_rate=float(snakemake.params.sanity.get("min_flip_rate", 0.0)),
)
