"""Rule synth_dataset: write the generated CelebA-layout dataset (cfx data synth)."""
import sys
from pathlib import Path

from cfx.data.synthetic import write_synthetic_celeba

sys.stderr = open(snakemake.log[0], "w", buffering=1)
write_synthetic_celeba(Path(snakemake.output.attributes).parent, **snakemake.params.synthetic)
