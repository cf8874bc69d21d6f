"""Rule gcd_direction: GCD's direction search for one experiment (cfx.steps.gcd_direction)."""
import sys
from pathlib import Path

from cfx.steps import gcd_direction

sys.stderr = sys.stdout = open(snakemake.log[0], "w", buffering=1)
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
