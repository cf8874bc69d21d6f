"""Rules fetch_ldce_targets, fetch_ldce_pets, fetch_ldce_flowers: one group of LDCE's data files at its pinned
commit (cfx.data.ldce_targets.LDCE_FILE_GROUPS)."""
from pathlib import Path

from cfx.data.ldce_targets import fetch_ldce_files
from cfx.runtime.logs import log_to_rule_log

log_to_rule_log(snakemake)
fetch_ldce_files(Path(snakemake.output.targets).parent, snakemake.params.group)
