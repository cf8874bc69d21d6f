# Paper tables (CSV + Markdown + LaTeX) and figures.


rule table:
    input:
        unpack(table_inputs),
    output:
        csv=report(
            "results/tables/{table}.csv",
            caption="../report/table.rst",
            category="Tables",
            labels={"table": "{table}", "view": "table"},
        ),
        markdown="results/tables/{table}.md",
        latex="results/tables/{table}.tex",
    params:
        spec=table_spec,
        suite=SUITE["name"],
        scale=SUITE["_scale"],
    log:
        "logs/tables/{table}.log",
    benchmark:
        "results/benchmarks/table/{table}.tsv"
    conda:
        ENV
    script:
        "../scripts/table.py"


# `snakemake results/tables/table6.csv` with a suite that has no table6: instead of "No rule to produce", an error
# that names the suites defining it and the --config suite=... to select one (table_not_in_suite in common.smk)
rule table_in_another_suite:
    input:
        table_not_in_suite,
    output:
        csv="results/tables/{other_table}.csv",
    wildcard_constraints:
        other_table=OTHER_TABLES,
    log:
        "logs/tables/{other_table}.log",
    benchmark:
        "results/benchmarks/table_in_another_suite/{other_table}.tsv"
    localrule: True
    conda:
        ENV
    shell:
        "exit 1"


rule grid_figure:
    input:
        merged="results/cf/{experiment}/{method}.merged.json",
    output:
        figure=report(
            "results/figures/{experiment}/{method}_grid.png",
            caption="../report/grid.rst",
            category="Figures",
            labels={"experiment": "{experiment}", "method": "{method}"},
        ),
    params:
        n_images=8,
    log:
        "logs/figures/{experiment}/{method}_grid.log",
    benchmark:
        "results/benchmarks/grid_figure/{experiment}/{method}_grid.tsv"
    conda:
        ENV
    script:
        "../scripts/grid_figure.py"


rule table_figure:
    input:
        csv="results/tables/{table}.csv",
    output:
        figure=report(
            "results/figures/tables/{table}.png",
            caption="../report/table_figure.rst",
            category="Tables",
            labels={"table": "{table}", "view": "figure"},
        ),
    params:
        title=lambda wildcards: table_spec(wildcards)["title"],
    log:
        "logs/figures/tables/{table}.log",
    benchmark:
        "results/benchmarks/table_figure/tables/{table}.tsv"
    conda:
        ENV
    script:
        "../scripts/table_figure.py"


rule svce_figure:
    input:
        unpack(svce_figure_inputs),
    output:
        figure=report(
            "results/figures/{experiment}/svce_radii.png",
            caption="../report/svce_figure.rst",
            category="Figures",
            labels={"experiment": "{experiment}", "method": "svce radii"},
        ),
    params:
        n_images=8,
        class_names=svce_class_names,
    log:
        "logs/figures/{experiment}/svce_radii.log",
    benchmark:
        "results/benchmarks/svce_figure/{experiment}/svce_radii.tsv"
    conda:
        ENV
    script:
        "../scripts/svce_figure.py"
