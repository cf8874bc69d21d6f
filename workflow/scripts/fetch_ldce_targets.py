"""Rule fetch_ldce_targets: LDCE's image_idx_to_tgt.yaml and synset_closest_idx.yaml at their pinned commit."""
import sys
from pathlib import Path

from cfx.data.ldce_targets import fetch_ldce_target_files

sys.stderr = open(snakemake.log[0], "w", buffering=1)
fetch_ldce_target_files(Path(snakemake.output.targets).parent)
