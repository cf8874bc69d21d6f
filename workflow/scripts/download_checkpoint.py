"""Rule download_checkpoint: fetch one registry checkpoint, verified (cfx download NAME)."""
import logging
import os
import sys
from pathlib import Path

from cfx.runtime.download import fetch_checkpoint

sys.stderr = open(snakemake.log[0], "w", buffering=1)
logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
out = Path(snakemake.output.checkpoint)
path = fetch_checkpoint(
    snakemake.params.name,
    snakemake.params.entry,
    out.parent,
    lock_path=Path(snakemake.params.lock),
    retries=int(os.environ.get("CFX_DOWNLOAD_RETRIES", 4)),
    backoff=float(os.environ.get("CFX_DOWNLOAD_BACKOFF", 2.0)),
    progress=False,
)
assert path == out, (path, out)
