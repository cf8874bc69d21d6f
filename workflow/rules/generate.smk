# Counterfactual generation per (experiment, method, chunk) and the merge + sanity check of all chunks.
# A CUDA out-of-memory error fails a generation job; Snakemake retries it (retries) and the script divides the
# method's batch size by the resource batch_divisor = 2^(attempt-1). Images already written are kept (resume).
# The divisor is a resource, not a param: params must not change between attempts (params are a rerun trigger).


rule generate:
    input:
        unpack(generate_inputs),
    output:
        manifest="results/cf/{experiment}/chunks/{method}/{chunk}-of-{chunks}.json",
    params:
        experiment=experiment_params,
        layout=experiment_dataset_layout,
        method=generation_method_spec,
        batch_size=generation_batch_size,
        models=generation_models,
        seed=experiment_seed,
        device=config["device"],
        precision=config["precision"],
        compile=config["compile"],
    resources:
        gpu=1,
        batch_divisor=lambda wildcards, attempt: 2 ** (attempt - 1),
    retries: 3
    log:
        "logs/generate/{experiment}/{method}/{chunk}-of-{chunks}.log",
    benchmark:
        "results/benchmarks/generate/{experiment}/{method}/{chunk}-of-{chunks}.tsv"
    conda:
        ENV
    script:
        "../scripts/generate.py"


# ACE and its variants (ace_<label>): {method}_explanation
rule ace_postprocess:
    input:
        unpack(postprocess_inputs),
    output:
        manifest="results/cf/{experiment}/chunks/{method}_explanation/{chunk}-of-{chunks}.json",
    wildcard_constraints:
        method=ACE_METHODS,
    params:
        experiment=experiment_params,
        method=ace_spec,
        batch_size=generation_batch_size,
        models=generation_models,
        seed=experiment_seed,
        device=config["device"],
        precision=config["precision"],
        compile=config["compile"],
    resources:
        gpu=1,
        batch_divisor=lambda wildcards, attempt: 2 ** (attempt - 1),
    retries: 3
    log:
        "logs/ace_postprocess/{experiment}/{method}/{chunk}-of-{chunks}.log",
    benchmark:
        "results/benchmarks/ace_postprocess/{experiment}/{method}/{chunk}-of-{chunks}.tsv"
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
    benchmark:
        "results/benchmarks/merge_chunks/{experiment}/{method}.tsv"
    conda:
        ENV
    script:
        "../scripts/merge_chunks.py"
