"""Rule verify_checkpoint: check a checkpoint's sha256 (registry, or trust on first use) and write a sha256sum line."""
import logging
import sys
from pathlib import Path

from cfx.runtime.download import verify_checkpoint

sys.stderr = open(snakemake.log[0], "w", buffering=1)
logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
path = Path(snakemake.input.checkpoint)
digest = verify_checkpoint(path, snakemake.params.name, snakemake.params.entry, snakemake.params.lock)
Path(snakemake.output.stamp).write_text(f"{digest}  {path.name}\n")
