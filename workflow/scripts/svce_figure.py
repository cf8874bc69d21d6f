"""Rule svce_figure: SVCE's figure, original | counterfactual per radius | differences (cfx figure --radii)."""
import json
from pathlib import Path

from cfx.figures import svce_figure
from cfx.runtime.logs import log_to_rule_log

log_to_rule_log(snakemake)
class_names = list(snakemake.params.class_names)
if "class_index" in snakemake.input.keys():  # ImageNet: imagenet_class_index.json {"0": [wnid, name], ...}
    index = json.loads(Path(snakemake.input.class_index).read_text())
    class_names = [index[str(k)][1] for k in range(len(index))]
svce_figure(
    Path(snakemake.input.merged).parent,
    Path(snakemake.output.figure),
    n_images=snakemake.params.n_images,
    class_names=class_names,
    title=f"SVCE on {snakemake.wildcards.experiment}: target confidence per radius",
)
