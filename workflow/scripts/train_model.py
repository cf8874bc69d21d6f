"""Rule train_model: train one mini-suite network from its suite entry (cfx train)."""
import sys
from pathlib import Path

from cfx.steps import train_from_spec

sys.stderr = open(snakemake.log[0], "w", buffering=1)
train_from_spec(
    snakemake.params.spec,
    index_csv=Path(snakemake.input.index),
    out_path=Path(snakemake.output.checkpoint),
    device=snakemake.params.device,
    threads=snakemake.threads,
    init_checkpoint=Path(snakemake.input.init) if snakemake.input.get("init") else None,
)
