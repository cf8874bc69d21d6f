# Counterfactual generation per (experiment, method, chunk) and the merge + sanity check of all chunks.


rule generate:
    input:
        unpack(generate_inputs),
    output:
        manifest="results/cf/{experiment}/chunks/{method}/{chunk}-of-{chunks}.json",
    params:
        experiment=experiment_params,
        method=generation_method_spec,
        models=generation_models,
        seed=experiment_seed,
        device=config["device"],
    resources:
        gpu=1,
    log:
        "logs/generate/{experiment}/{method}/{chunk}-of-{chunks}.log",
    conda:
        ENV
    script:
        "../scripts/generate.py"


rule ace_postprocess:
    input:
        unpack(postprocess_inputs),
    output:
        manifest="results/cf/{experiment}/chunks/ace_explanation/{chunk}-of-{chunks}.json",
    params:
        experiment=experiment_params,
        method=ace_spec,
        models=generation_models,
        seed=experiment_seed,
        device=config["device"],
    resources:
        gpu=1,
    log:
        "logs/ace_postprocess/{experiment}/{chunk}-of-{chunks}.log",
    conda:
        ENV
    script:
        "../scripts/ace_postprocess.py"


rule merge_chunks:
    input:
        manifests=chunk_manifests,
    output:
        merged="results/cf/{experiment}/{method}.merged.json",
    params:
        sanity=sanity_params,
    log:
        "logs/merge/{experiment}/{method}.log",
    conda:
        ENV
    script:
        "../scripts/merge_chunks.py"
