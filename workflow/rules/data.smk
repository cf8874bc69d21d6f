# Dataset preparation: generated data (mini suite) and the per-dataset index every later rule reads.


rule synth_dataset:
    output:
        attributes="results/data/{dataset}/raw/list_attr_celeba.csv",
        partition="results/data/{dataset}/raw/list_eval_partition.csv",
        identities="results/data/{dataset}/raw/identity_CelebA.txt",
        images=directory("results/data/{dataset}/raw/img_align_celeba"),
    params:
        synthetic=synthetic_params,
    log:
        "logs/data/synth_{dataset}.log",
    benchmark:
        "results/benchmarks/synth_dataset/{dataset}.tsv"
    conda:
        ENV
    script:
        "../scripts/synth_dataset.py"


rule index_dataset:
    input:
        marker=dataset_marker,
    output:
        index="results/data/{dataset}/index.csv",
    params:
        root=dataset_root,
        layout=dataset_layout,
        key=lambda wildcards: wildcards.dataset,
    log:
        "logs/data/index_{dataset}.log",
    benchmark:
        "results/benchmarks/index_dataset/{dataset}.tsv"
    conda:
        ENV
    script:
        "../scripts/index_dataset.py"
