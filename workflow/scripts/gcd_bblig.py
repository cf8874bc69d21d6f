"""Rule gcd_bblig: BB-LIG maps along an experiment's GCD direction (cfx.steps.gcd_bblig)."""
from pathlib import Path

from cfx.runtime.logs import log_to_rule_log
from cfx.steps import gcd_bblig

log_to_rule_log(snakemake)
gcd_bblig(
    experiment=snakemake.params.experiment,
    method_spec=snakemake.params.method,
    model_specs=snakemake.params.models,
    index_csv=Path(snakemake.input.index),
    checkpoints={"classifier": Path(snakemake.input.classifier), "diffae": Path(snakemake.input.diffae),
                 "direction": Path(snakemake.input.direction)},
    out_dir=Path(snakemake.output.summary).parent,
    n_images=int(snakemake.params.n_images),
    device=snakemake.params.device,
    threads=snakemake.threads,
    precision=snakemake.params.precision,
    layout=snakemake.params.layout,
)
