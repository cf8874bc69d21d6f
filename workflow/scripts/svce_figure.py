"""Rule svce_figure: SVCE's figure, original | counterfactual per radius | differences (cfx figure --radii)."""
import sys
from pathlib import Path

from cfx.figures import svce_figure

sys.stderr = open(snakemake.log[0], "w", buffering=1)
svce_figure(
    Path(snakemake.input.merged).parent,
    Path(snakemake.output.figure),
    n_images=snakemake.params.n_images,
    class_names=list(snakemake.params.class_names),
    title=f"SVCE on {snakemake.wildcards.experiment}: target confidence per radius",
)
