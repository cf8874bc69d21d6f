# One job per (experiment, method, metric); each writes a JSON with the value, its metadata and the networks used.


rule metric:
    input:
        unpack(metric_inputs),
    output:
        metric="results/metrics/{experiment}/{method}/{metric}.json",
    params:
        spec=metric_params,
        device=config["device"],
    resources:
        gpu=metric_gpu,
    log:
        "logs/metrics/{experiment}/{method}/{metric}.log",
    benchmark:
        "results/benchmarks/metric/{experiment}/{method}/{metric}.tsv"
    conda:
        ENV
    script:
        "../scripts/metric.py"
