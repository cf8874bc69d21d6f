"""Rule fetch_ldce_flowers: LDCE's flowers_closest_indices.json and flowers_idx_to_label.json at their pinned
commit."""
import sys
from pathlib import Path

from cfx.data.ldce_targets import fetch_ldce_flowers_files

sys.stderr = open(snakemake.log[0], "w", buffering=1)
fetch_ldce_flowers_files(Path(snakemake.output.targets).parent)
