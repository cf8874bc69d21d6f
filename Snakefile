# cfx: reproduce the result tables of DiME, ACE, LDCE, GCD and SVCE. See README.md.
from snakemake.utils import min_version

min_version("9.20")


configfile: "config.yaml"


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/models.smk"
include: "workflow/rules/resources.smk"
include: "workflow/rules/generate.smk"
include: "workflow/rules/gcd.smk"
include: "workflow/rules/metrics.smk"
include: "workflow/rules/tables.smk"


rule all:
    default_target: True
    input:
        get_final_outputs(),
