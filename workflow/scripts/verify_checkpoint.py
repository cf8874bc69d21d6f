"""Rule verify_checkpoint: check a checkpoint's sha256 (registry, or trust on first use) and write a sha256sum line."""
from pathlib import Path

from cfx.runtime.download import verify_checkpoint
from cfx.runtime.logs import log_to_rule_log

log_to_rule_log(snakemake)
path = Path(snakemake.input.checkpoint)
digest = verify_checkpoint(path, snakemake.params.name, snakemake.params.entry, snakemake.params.lock)
Path(snakemake.output.stamp).write_text(f"{digest}  {path.name}\n")
