"""Rule synth_dataset: write the generated CelebA-layout dataset (cfx data synth)."""
from pathlib import Path

from cfx.data.synthetic import write_synthetic_celeba
from cfx.runtime.logs import log_to_rule_log

log_to_rule_log(snakemake)
write_synthetic_celeba(Path(snakemake.output.attributes).parent, **snakemake.params.synthetic)
