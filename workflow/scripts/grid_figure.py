"""Rule grid_figure: original | counterfactual | difference grid for one (experiment, method) (cfx figure)."""
import sys
from pathlib import Path

from cfx.figures import grid_figure

sys.stderr = open(snakemake.log[0], "w", buffering=1)
grid_figure(
    Path(snakemake.input.merged).parent,
    snakemake.wildcards.method,
    Path(snakemake.output.figure),
    n_images=snakemake.params.n_images,
    title=f"{snakemake.wildcards.method} on {snakemake.wildcards.experiment}",
)
