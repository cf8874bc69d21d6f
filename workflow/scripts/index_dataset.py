"""Rule index_dataset: validate a dataset's layout and write its index.csv (cfx data index)."""
import sys
from pathlib import Path

from cfx.data.layouts import build_layout_index

sys.stderr = open(snakemake.log[0], "w", buffering=1)
build_layout_index(snakemake.params.layout, Path(snakemake.params.root), Path(snakemake.output.index),
                   key=snakemake.params.key)
