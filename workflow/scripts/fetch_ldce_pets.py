"""Rule fetch_ldce_pets: LDCE's pets_closest_indices.json and pets_idx_to_label.json at their pinned commit."""
import sys
from pathlib import Path

from cfx.data.ldce_targets import fetch_ldce_pets_files

sys.stderr = open(snakemake.log[0], "w", buffering=1)
fetch_ldce_pets_files(Path(snakemake.output.targets).parent)
