# Networks: trained here in the mini suite (download_checkpoint takes this place in the paper suite, which trains
# only LDCE's unpublished Flowers-102 linear head: kind dino_linear, cfx.models.dino_linear).


rule train_model:
    input:
        unpack(model_inputs),
    output:
        checkpoint="resources/checkpoints/{model}.pt",
        log_json="resources/checkpoints/{model}.train.json",
    params:
        spec=model_spec,
        device=config["device"],
    # capped at --cores locally; torch uses this many threads
    threads: 4
    log:
        "logs/train/{model}.log",
    benchmark:
        "results/benchmarks/train_model/{model}.tsv"
    conda:
        ENV
    script:
        "../scripts/train_model.py"
