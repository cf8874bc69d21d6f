"""Rule train_model: train one mini-suite network from its suite entry (cfx train)."""
from pathlib import Path

from cfx.runtime.logs import log_to_rule_log
from cfx.steps import train_from_spec

log_to_rule_log(snakemake)
train_from_spec(
    snakemake.params.spec,
    index_csv=Path(snakemake.input.index),
    out_path=Path(snakemake.output.checkpoint),
    device=snakemake.params.device,
    threads=snakemake.threads,
    init_checkpoint=Path(snakemake.input.init) if snakemake.input.get("init") else None,
)
