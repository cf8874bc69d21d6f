"""Rule merge_chunks: merge chunk manifests, write the upstream summary and check n and flip rate (cfx merge)."""
import sys
from pathlib import Path

from cfx.merge import merge_chunks

sys.stderr = open(snakemake.log[0], "w", buffering=1)
merge_chunks(
    [Path(p) for p in snakemake.input.manifests],
    tree_root=Path(snakemake.output.merged).parent,
    method=snakemake.wildcards.method,
    out_path=Path(snakemake.output.merged),
    min_flip_rate=float(snakemake.params.sanity.get("min_flip_rate", 0.0)),
)
