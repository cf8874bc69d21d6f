# One job per (experiment, method, metric); each writes a JSON with the value and its metadata.


rule metric:
    input:
        merged="results/cf/{experiment}/{method}.merged.json",
    output:
        metric="results/metrics/{experiment}/{method}/{metric}.json",
    log:
        "logs/metrics/{experiment}/{method}/{metric}.log",
    conda:
        ENV
    script:
        "../scripts/metric.py"
