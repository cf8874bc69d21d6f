"""Rule table_figure: one summary figure per table (cfx figure --table)."""
import sys
from pathlib import Path

from cfx.figures import table_figure

sys.stderr = open(snakemake.log[0], "w", buffering=1)
table_figure(Path(snakemake.input.csv), Path(snakemake.output.figure), title=snakemake.params.title)
