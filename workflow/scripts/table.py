"""Rule table: assemble one paper table as CSV, Markdown and LaTeX (cfx table)."""
from pathlib import Path

from cfx.runtime.logs import log_to_rule_log
from cfx.tables import build_table

log_to_rule_log(snakemake)
build_table(
    snakemake.wildcards.table,
    snakemake.params.spec,
    metric_files=[Path(p) for p in snakemake.input.metrics],
    merged_files=[Path(p) for p in snakemake.input.merged],
    out_csv=Path(snakemake.output.csv),
    suite=snakemake.params.suite,
    scale=snakemake.params.scale,
)
