"""Rule gcd_direction: GCD's direction search for one experiment (cfx.steps.gcd_direction)."""
from pathlib import Path

from cfx.runtime.logs import log_to_rule_log
from cfx.steps import gcd_direction

log_to_rule_log(snakemake)
gcd_direction(
    experiment=snakemake.params.experiment,
    method_spec=snakemake.params.method,
    model_specs=snakemake.params.models,
    index_csv=Path(snakemake.input.index),
    checkpoints={"classifier": Path(snakemake.input.classifier), "diffae": Path(snakemake.input.diffae),
                 **({"lpips": Path(snakemake.input.lpips)} if "lpips" in snakemake.input.keys() else {})},
    out_path=Path(snakemake.output.direction),
    seed=snakemake.params.seed,
    device=snakemake.params.device,
    threads=snakemake.threads,
    precision=snakemake.params.precision,
    layout=snakemake.params.layout,
)
