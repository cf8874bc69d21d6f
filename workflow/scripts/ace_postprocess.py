"""Rule ace_postprocess: ACE explanations from one chunk of pre-explanations (cfx postprocess)."""
from pathlib import Path

from cfx.runtime.logs import log_to_rule_log
from cfx.runtime.retry import retry_only_out_of_memory

log_to_rule_log(snakemake)
# only an out-of-memory failure is retried (with half the batch: batch_divisor = 2^(attempt-1))
with retry_only_out_of_memory(snakemake.output.manifest, snakemake.resources.batch_divisor.bit_length()):
    from cfx.postprocess import postprocess_chunk

    postprocess_chunk(
        experiment=snakemake.params.experiment,
        method=snakemake.wildcards.method,
        method_spec={**snakemake.params.method, "batch_size": snakemake.params.batch_size},
        model_specs=snakemake.params.models,
        checkpoints={"classifier": Path(snakemake.input.classifier), "ddpm": Path(snakemake.input.ddpm)},
        pre_manifest=Path(snakemake.input.pre),
        seed=snakemake.params.seed,
        tree_root=Path(snakemake.output.manifest).parents[2],
        manifest_path=Path(snakemake.output.manifest),
        device=snakemake.params.device,
        threads=snakemake.threads,
        precision=snakemake.params.precision,
        compile_unet=snakemake.params.compile,
        batch_divisor=snakemake.resources.batch_divisor,
    )
