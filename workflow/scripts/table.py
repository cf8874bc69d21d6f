"""Rule table: assemble one paper table as CSV, Markdown and LaTeX (cfx table)."""
import sys
from pathlib import Path

from cfx.tables import build_table

sys.stderr = open(snakemake.log[0], "w", buffering=1)
build_table(
    snakemake.wildcards.table,
    snakemake.params.spec,
    metric_files=[Path(p) for p in snakemake.input.metrics],
    merged_files=[Path(p) for p in snakemake.input.merged],
    out_csv=Path(snakemake.output.csv),
    suite=snakemake.params.suite,
    scale=snakemake.params.scale,
)
