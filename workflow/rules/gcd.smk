# GCD: the direction search per (experiment = dataset + query, source image) and BB-LIG maps along the chosen
# direction. The transfer is rule generate with method gcd (per chunk of target images), which writes the common
# output tree; its inputs add the DiffAE and this direction (common.smk: generate_inputs).


rule gcd_direction:
    input:
        unpack(gcd_direction_inputs),
    output:
        direction="results/gcd/{experiment}/direction.pt",
        directions="results/gcd/{experiment}/directions.pt",
        search="results/gcd/{experiment}/search.json",
    params:
        experiment=experiment_params,
        layout=experiment_dataset_layout,
        method=gcd_spec,
        models=gcd_models,
        seed=experiment_seed,
        device=config["device"],
        precision=config["precision"],
    resources:
        gpu=1,
    log:
        "logs/gcd_direction/{experiment}.log",
    benchmark:
        "results/benchmarks/gcd_direction/{experiment}.tsv"
    conda:
        ENV
    script:
        "../scripts/gcd_direction.py"


rule gcd_bblig:
    input:
        unpack(gcd_bblig_inputs),
    output:
        summary=report(
            "results/figures/{experiment}/gcd_bblig/summary.json",
            caption="../report/gcd_bblig.rst",
            category="Figures",
            labels={"experiment": "{experiment}", "figure": "BB-LIG"},
        ),
    params:
        experiment=experiment_params,
        layout=experiment_dataset_layout,
        method=gcd_spec,
        models=gcd_models,
        n_images=4,
        device=config["device"],
        precision=config["precision"],
    resources:
        gpu=1,
    log:
        "logs/gcd_bblig/{experiment}.log",
    benchmark:
        "results/benchmarks/gcd_bblig/{experiment}.tsv"
    conda:
        ENV
    script:
        "../scripts/gcd_bblig.py"
