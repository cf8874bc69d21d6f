"""Rule index_dataset: validate a dataset's layout and write its index.csv (cfx data index)."""
from pathlib import Path

from cfx.data.layouts import build_layout_index
from cfx.runtime.logs import log_to_rule_log

log_to_rule_log(snakemake)
build_layout_index(snakemake.params.layout, Path(snakemake.params.root), Path(snakemake.output.index),
                   key=snakemake.params.key)
