"""Rule table_figure: one summary figure per table (cfx figure --table)."""
from pathlib import Path

from cfx.figures import table_figure
from cfx.runtime.logs import log_to_rule_log

log_to_rule_log(snakemake)
table_figure(Path(snakemake.input.csv), Path(snakemake.output.figure), title=snakemake.params.title)
