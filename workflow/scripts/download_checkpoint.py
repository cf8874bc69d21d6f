"""Rule download_checkpoint: fetch one registry checkpoint, verified (cfx download NAME)."""
import os
from pathlib import Path

from cfx.runtime.download import fetch_checkpoint
from cfx.runtime.logs import log_to_rule_log

log_to_rule_log(snakemake)
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
