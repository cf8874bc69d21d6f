"""Rule fetch_svce_hierarchy: SVCE's IN_info files (wordnet.is_a.txt, words.txt, imagenet_class_index.json) at
their pinned commit."""
import sys
from pathlib import Path

from cfx.data.wordnet import fetch_hierarchy

sys.stderr = open(snakemake.log[0], "w", buffering=1)
fetch_hierarchy(Path(snakemake.output.class_index).parent)
