"""The `cfx` command line: one subcommand per step a workflow rule runs."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import click

from cfx.suite import load_suite, section_entry

REPO_SUITES = Path(__file__).resolve().parent.parent / "workflow" / "suites"


def _suite(name_or_path: str, scale: str) -> dict:
    path = Path(name_or_path)
    if not path.suffix:
        path = REPO_SUITES / f"{name_or_path}.yaml"
    return load_suite(path, scale)


suite_option = click.option("--suite", default="mini", show_default=True, help="Suite name or suite YAML path.")
scale_option = click.option("--scale", default="default", show_default=True, help="Suite scale (default, ci).")


@click.group()
@click.option("-v", "--verbose", is_flag=True, help="Log progress messages.")
def main(verbose: bool) -> None:
    """cfx: reproduce visual counterfactual explanation papers (DiME, ACE, LDCE, GCD, SVCE)."""
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(message)s")


@main.group()
def data() -> None:
    """Datasets: generate, convert, index."""


@data.command("synth")
@click.argument("root", type=click.Path(path_type=Path))
@click.option("--n-identities", default=300, show_default=True)
@click.option("--images-per-identity", default=8, show_default=True)
@click.option("--image-size", type=click.Choice(["32", "64"]), default="64", show_default=True)
@click.option("--seed", default=0, show_default=True)
def data_synth(root: Path, n_identities: int, images_per_identity: int, image_size: str, seed: int) -> None:
    """Write the generated face dataset in CelebA's layout to ROOT."""
    from cfx.data.synthetic import write_synthetic_celeba

    write_synthetic_celeba(
        root, n_identities=n_identities, images_per_identity=images_per_identity,
        image_size=int(image_size), seed=seed,
    )
    click.echo(f"wrote {root}")


@data.command("convert-celeba")
@click.argument("root", type=click.Path(exists=True, file_okay=False, path_type=Path))
def data_convert(root: Path) -> None:
    """Write Kaggle-style CSVs from CelebA's official list_attr_celeba.txt / list_eval_partition.txt."""
    from cfx.data.celeba import convert_official_celeba

    convert_official_celeba(root)
    click.echo(f"wrote CSV annotations in {root}")


@data.command("index")
@click.argument("root", type=click.Path(path_type=Path))
@click.argument("out", type=click.Path(path_type=Path))
def data_index(root: Path, out: Path) -> None:
    """Validate a CelebA-layout dataset at ROOT and write its index CSV to OUT."""
    from cfx.data.celeba import build_index

    index = build_index(root, out)
    click.echo(f"indexed {len(index)} images into {out}")


@main.command()
@suite_option
@scale_option
@click.option("--model", required=True, help="Model name in the suite's models: section.")
@click.option("--index", "index_csv", required=True, type=click.Path(exists=True, path_type=Path))
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Checkpoint path to write.")
@click.option("--device", default="auto", show_default=True)
def train(suite: str, scale: str, model: str, index_csv: Path, out: Path, device: str) -> None:
    """Train one network of a suite (mini suite: DDPM, classifier, oracle)."""
    from cfx.steps import train_from_spec

    spec = section_entry(_suite(suite, scale), "models", model)
    result = train_from_spec(spec, index_csv=index_csv, out_path=out, device=device)
    click.echo(json.dumps(result, indent=1, default=str))


@main.command()
@suite_option
@scale_option
@click.option("--experiment", required=True)
@click.option("--method", required=True)
@click.option("--chunk", default=0, show_default=True)
@click.option("--chunks", default=1, show_default=True)
@click.option("--seed", default=4, show_default=True)
@click.option("--index", "index_csv", required=True, type=click.Path(exists=True, path_type=Path))
@click.option("--checkpoints", "checkpoint_dir", default="resources/checkpoints", show_default=True,
              type=click.Path(path_type=Path))
@click.option("--tree", required=True, type=click.Path(path_type=Path), help="Output tree, results/cf/EXPERIMENT.")
@click.option("--manifest", type=click.Path(path_type=Path), help="Chunk manifest path (default under --tree).")
@click.option("--device", default="auto", show_default=True)
@click.option("--precision", type=click.Choice(["auto", "fp32", "fp16", "bf16"]), default="auto", show_default=True,
              help="UNet precision: auto = fp16 on CUDA (upstream use_fp16), fp32 on CPU.")
@click.option("--batch-divisor", default=1, show_default=True, help="Divide the method's batch size (OOM retries).")
def generate(suite, scale, experiment, method, chunk, chunks, seed, index_csv, checkpoint_dir, tree, manifest,
             device, precision, batch_divisor) -> None:
    """Generate the counterfactuals of one chunk of one (experiment, method)."""
    from cfx.generate import generate_chunk

    spec = _suite(suite, scale)
    exp = section_entry(spec, "experiments", experiment)
    names = [exp["classifier"]] + ([exp["ddpm"]] if exp.get("ddpm") else [])
    checkpoints = {"classifier": checkpoint_dir / f"{exp['classifier']}.pt"}
    if exp.get("ddpm"):
        checkpoints["ddpm"] = checkpoint_dir / f"{exp['ddpm']}.pt"
    manifest = manifest or tree / "chunks" / method / f"{chunk}-of-{chunks}.json"
    result = generate_chunk(
        experiment=exp, method=method, method_spec=section_entry(spec, "methods", method),
        model_specs={n: section_entry(spec, "models", n) for n in names}, index_csv=index_csv,
        checkpoints=checkpoints, chunk=chunk, chunks=chunks, seed=seed, tree_root=tree, manifest_path=manifest,
        device=device, precision=precision, batch_divisor=batch_divisor,
    )
    click.echo(f"{result['n']} images, {result['flipped']} flipped; manifest {manifest}")


@main.command()
@click.argument("manifests", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@click.option("--tree", required=True, type=click.Path(path_type=Path))
@click.option("--method", required=True)
@click.option("--out", required=True, type=click.Path(path_type=Path))
@click.option("--min-flip-rate", default=0.0, show_default=True)
def merge(manifests, tree, method, out, min_flip_rate) -> None:
    """Merge chunk MANIFESTS, write the upstream summary.yaml and check n and the flip rate."""
    from cfx.merge import merge_chunks

    merged = merge_chunks(list(manifests), tree_root=tree, method=method, out_path=out, min_flip_rate=min_flip_rate)
    click.echo(f"n={merged['n']} flip rate={merged['flip_rate']:.3f}")


@main.command()
@click.argument("name")
@click.option("--tree", type=click.Path(exists=True, path_type=Path), help="Experiment tree results/cf/EXP.")
@click.option("--method", help="Method whose Results/ folder to read (tree metrics).")
@click.option("--out", type=click.Path(path_type=Path), help="Also write the JSON here.")
def metric(name, tree, method, out) -> None:
    """Compute metric NAME and print it as JSON."""
    from cfx.metrics import compute_tree_metric

    if tree is None or method is None:
        raise click.UsageError("tree metrics need --tree results/cf/EXPERIMENT and --method METHOD")
    click.echo(json.dumps(compute_tree_metric(name, tree_root=tree, method=method, out_path=out), indent=1))


@main.command()
@click.argument("name")
@suite_option
@scale_option
@click.option("--results", default="results", show_default=True, type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(path_type=Path), help="CSV path (default results/tables/NAME.csv).")
def table(name, suite, scale, results, out) -> None:
    """Build table NAME of a suite from results/metrics and results/cf (CSV, Markdown, LaTeX)."""
    from cfx.suite import table_pairs
    from cfx.tables import build_table

    spec = _suite(suite, scale)
    table_spec = section_entry(spec, "tables", name)
    pairs = table_pairs(spec, name)
    metric_files = [results / "metrics" / e / m / f"{k}.json" for e, m in pairs for k in table_spec["metrics"]]
    merged = [results / "cf" / e / f"{m}.merged.json" for e, m in pairs]
    missing = [str(p) for p in metric_files + merged if not p.exists()]
    if missing:
        raise click.ClickException(f"missing inputs (run `snakemake results/tables/{name}.csv`): {missing[:5]}")
    out = out or results / "tables" / f"{name}.csv"
    df = build_table(name, table_spec, metric_files=metric_files, merged_files=merged, out_csv=out,
                     suite=spec["name"], scale=spec["_scale"])
    click.echo(df.to_string(index=False))


@main.command()
@click.option("--tree", required=True, type=click.Path(exists=True, path_type=Path))
@click.option("--method", required=True)
@click.option("--out", required=True, type=click.Path(path_type=Path))
@click.option("--n-images", default=8, show_default=True)
def figure(tree, method, out, n_images) -> None:
    """Original | counterfactual | difference grid of one (experiment, method)."""
    from cfx.figures import grid_figure

    click.echo(grid_figure(tree, method, out, n_images=n_images, title=f"{method} on {tree.name}"))


@main.command()
@click.option("--method", type=click.Choice(["dime", "ace"]), required=True)
@click.option("--size", type=click.Choice(["mini", "paper"]), default="mini", show_default=True,
              help="paper: the CelebA-128 configuration of the papers; mini: the mini suite's.")
@click.option("--device", default="auto", show_default=True)
@click.option("--n-images", type=int, help="Images to run (default: one batch).")
@click.option("--batch-size", type=int, help="Default: the configuration's (paper: DiME 50, ACE 3).")
@click.option("--options", default="auto", show_default=True,
              help="Comma-separated speed variants, options joined by +: fp32, fp16, bf16, autocast_fp16, "
                   "autocast_bf16, channels_last, sdpa, compile (auto: fp32 on CPU, fp32,fp16 on CUDA).")
@click.option("--max-steps", type=int, help="Shorten the schedule (DiME tau, ACE PGD iterations); recorded.")
@click.option("--checkpoint-steps", default="none,1", show_default=True,
              help="ACE: checkpoint_backward_steps settings to compare (none = plain backprop).")
@click.option("--seed", default=0, show_default=True)
@click.option("--out", default="results/bench", show_default=True, type=click.Path(path_type=Path),
              help="Directory (file {method}-{size}-{device}.json) or a .json path.")
def bench(method, size, device, n_images, batch_size, options, max_steps, checkpoint_steps, seed, out) -> None:
    """Images/s, UNet forwards/s and peak memory of METHOD with random weights; writes a JSON."""
    from cfx.bench import run_bench, summary_lines

    report, path = run_bench(method, size, device=device, n_images=n_images, batch_size=batch_size, options=options,
                             max_steps=max_steps, checkpoint_steps=checkpoint_steps, seed=seed, out=out)
    click.echo("\n".join(summary_lines(report)))
    click.echo(f"wrote {path}")


if __name__ == "__main__":
    main()
