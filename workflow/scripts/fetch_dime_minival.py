"""Rule fetch_dime_minival: DiME's utils/minival.csv (the CelebA mini-val) at its pinned commit."""
import sys
from pathlib import Path

from cfx.data.minival import fetch_dime_minival

sys.stderr = open(snakemake.log[0], "w", buffering=1)
fetch_dime_minival(Path(snakemake.output.subset).parent)
