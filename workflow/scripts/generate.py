"""Rule generate: counterfactuals for one chunk of one (experiment, method) (cfx generate)."""
from pathlib import Path

from cfx.runtime.logs import log_to_rule_log
from cfx.runtime.retry import retry_only_out_of_memory

log_to_rule_log(snakemake)
# only an out-of-memory failure is retried (with half the batch: batch_divisor = 2^(attempt-1))
with retry_only_out_of_memory(snakemake.output.manifest, snakemake.resources.batch_divisor.bit_length()):
    from cfx.generate import generate_chunk

    generate_chunk(
        experiment=snakemake.params.experiment,
        method=snakemake.wildcards.method,
        method_spec={**snakemake.params.method, "batch_size": snakemake.params.batch_size},
        model_specs=snakemake.params.models,
        index_csv=Path(snakemake.input.index),
        checkpoints={"classifier": Path(snakemake.input.classifier), "ddpm": Path(snakemake.input.get("ddpm", "")),
                     "diffae": Path(snakemake.input.get("diffae", "")),
                     "direction": Path(snakemake.input.get("direction", "")),
                     "ldm": Path(snakemake.input.get("ldm", "")),
                     **({"class_names": Path(snakemake.input.class_names)} if "class_names" in snakemake.input.keys()
                        else {})},
        chunk=int(snakemake.wildcards.chunk),
        chunks=int(snakemake.wildcards.chunks),
        seed=snakemake.params.seed,
        tree_root=Path(snakemake.output.manifest).parents[2],
        manifest_path=Path(snakemake.output.manifest),
        device=snakemake.params.device,
        threads=snakemake.threads,
        precision=snakemake.params.precision,
        layout=snakemake.params.layout,
        compile_unet=snakemake.params.compile,
        batch_divisor=snakemake.resources.batch_divisor,
        targets_file=Path(snakemake.input.targets) if "targets" in snakemake.input.keys() else None,
        subset_file=Path(snakemake.input.subset) if "subset" in snakemake.input.keys() else None,
    )
