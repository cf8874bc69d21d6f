"""Rule fetch_dime_minival: DiME's utils/minival.csv (the CelebA mini-val) at its pinned commit."""
from pathlib import Path

from cfx.data.minival import fetch_dime_minival
from cfx.runtime.logs import log_to_rule_log

log_to_rule_log(snakemake)
fetch_dime_minival(Path(snakemake.output.subset).parent)
