"""Rule fetch_svce_hierarchy: SVCE's IN_info files (wordnet.is_a.txt, words.txt, imagenet_class_index.json) at
their pinned commit."""
from pathlib import Path

from cfx.data.wordnet import fetch_hierarchy
from cfx.runtime.logs import log_to_rule_log

log_to_rule_log(snakemake)
fetch_hierarchy(Path(snakemake.output.class_index).parent)
