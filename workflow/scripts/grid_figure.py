"""Rule grid_figure: original | counterfactual | difference grid for one (experiment, method) (cfx figure)."""
from pathlib import Path

from cfx.figures import grid_figure
from cfx.runtime.logs import log_to_rule_log

log_to_rule_log(snakemake)
grid_figure(
    Path(snakemake.input.merged).parent,
    snakemake.wildcards.method,
    Path(snakemake.output.figure),
    n_images=snakemake.params.n_images,
    title=f"{snakemake.wildcards.method} on {snakemake.wildcards.experiment}",
)
