"""The `cfx` command line: one subcommand per step a workflow rule runs."""

from __future__ import annotations

import json
import logging
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import click

from cfx.runtime.download import DownloadError
from cfx.suite import SuiteError, experiment_layout, image_targets_file, load_suite, method_settings, section_entry

log = logging.getLogger(__name__)

PACKAGE_SUITES = Path(__file__).resolve().parent.parent / "workflow" / "suites"
# what a user gets wrong (a name, a file, a download): one line on stderr, the traceback only with -v.
# DownloadError covers ChecksumError; SuiteError is a ValueError.
USER_ERRORS: tuple[type[Exception], ...] = (ValueError, KeyError, FileNotFoundError, DownloadError)


def find_checkout(start: Path | None = None) -> Path | None:
    """The cfx checkout holding ``start`` (default: the working directory): the first of it and its parents with a
    ``Snakefile`` and a ``workflow/suites/`` folder, or None."""
    start = (start or Path.cwd()).resolve()
    for folder in (start, *start.parents):
        if (folder / "Snakefile").is_file() and (folder / "workflow" / "suites").is_dir():
            return folder
    return None


def suite_file(name_or_path: str) -> Path:
    """The suite file ``--suite`` names: a path as given; a bare name (``mini``) the checkout's
    ``workflow/suites/NAME.yaml`` when the working directory is inside a cfx checkout, else the package's copy."""
    path = Path(name_or_path)
    if path.suffix or path.parent != Path("."):
        return path
    checkout = find_checkout()
    folder = checkout / "workflow" / "suites" if checkout else PACKAGE_SUITES
    path = folder / f"{name_or_path}.yaml"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in folder.glob("*.yaml"))) or "none"
        raise SuiteError(f"suite '{name_or_path}' not found: {path} does not exist; known suites in {folder}: {known}")
    return path


def _suite(name_or_path: str, scale: str) -> dict:
    path = suite_file(name_or_path)
    log.info("suite %s from %s", name_or_path, path)
    if path != Path(name_or_path):  # a bare name: say which copy was read
        click.echo(f"cfx: suite {name_or_path} from {path}", err=True)
    return load_suite(path, scale)


def _error_message(err: BaseException) -> str:
    """The user-facing text of ``err`` (a KeyError's message without the quotes ``str`` adds)."""
    if isinstance(err, KeyError) and len(err.args) == 1 and isinstance(err.args[0], str):
        return err.args[0]
    return str(err) or type(err).__name__


class UserError(click.ClickException):
    """An expected error shown as one line, ``cfx: error: MESSAGE``, exit status 1."""

    def show(self, file: Any = None) -> None:
        click.echo(f"cfx: error: {self.format_message()}", file=file or sys.stderr)


class CfxGroup(click.Group):
    """The ``cfx`` group: a user error of any subcommand becomes :class:`UserError` (one line) unless ``-v`` asked
    for the traceback; click's usage errors keep click's handling."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except USER_ERRORS as err:
            if ctx.params.get("verbose"):
                raise
            raise UserError(_error_message(err)) from err


def package_version() -> str:
    """The installed cfx distribution's version, or "unknown" outside an installation."""
    try:
        return version("cfx")
    except PackageNotFoundError:
        return "unknown"


suite_option = click.option("--suite", default="mini", show_default=True,
                            help="Suite name (workflow/suites/NAME.yaml of the checkout holding the working "
                                 "directory, else of the package) or suite YAML path.")
scale_option = click.option("--scale", default="default", show_default=True, help="Suite scale (default, ci).")


@click.group(cls=CfxGroup)
@click.version_option(package_version(), "--version", prog_name="cfx")
@click.option("-v", "--verbose", is_flag=True, help="Log progress messages; show the traceback of errors.")
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
@click.option("--compile", "compile_unet", is_flag=True, help="torch.compile the diffusion UNet (worth it on CUDA).")
@click.option("--ldm", type=click.Path(path_type=Path), help="LDCE: LDM checkpoint (default: in CHECKPOINTS).")
@click.option("--diffae", type=click.Path(path_type=Path), help="GCD: DiffAE checkpoint (default: in CHECKPOINTS).")
@click.option("--direction", type=click.Path(path_type=Path),
              help="GCD: direction file (default results/gcd/EXPERIMENT/direction.pt).")
def generate(suite, scale, experiment, method, chunk, chunks, seed, index_csv, checkpoint_dir, tree, manifest,
             device, precision, batch_divisor, compile_unet, ldm, diffae, direction) -> None:
    """Generate the counterfactuals of one chunk of one (experiment, method)."""
    from cfx.data.ldce_targets import LDCE_CLASS_NAMES_FILE
    from cfx.data.minival import SUBSETS
    from cfx.generate import generate_chunk, method_classifier
    from cfx.methods import implementation, own_model_key, uses_ddpm

    spec = _suite(suite, scale)
    exp = section_entry(spec, "experiments", experiment)
    classifier = method_classifier(section_entry(spec, "methods", method), exp)
    ddpm = exp.get("ddpm") if uses_ddpm(method) else None
    names = [classifier] + ([ddpm] if ddpm else [])
    checkpoints = {"classifier": _checkpoint_file(spec, checkpoint_dir, classifier)}
    if ddpm:
        checkpoints["ddpm"] = _checkpoint_file(spec, checkpoint_dir, ddpm)
    role = own_model_key(method)
    if role:  # GCD's DiffAE, LDCE's LDM (--diffae / --ldm override the file)
        own = method_settings(spec, method, experiment)[role]
        names.append(own)
        checkpoints[role] = {"diffae": diffae, "ldm": ldm}[role] or _checkpoint_file(spec, checkpoint_dir, own)
    if implementation(method) == "gcd":
        checkpoints["direction"] = direction or Path("results/gcd") / experiment / "direction.pt"
    settings = method_settings(spec, method, experiment)
    # upstream data files the workflow fetches (rules fetch_ldce_*, fetch_svce_hierarchy, fetch_dime_minival)
    if settings.get("class_prompt"):
        checkpoints["class_names"] = Path(settings.get("class_names") or LDCE_CLASS_NAMES_FILE)
    targets = image_targets_file(exp)
    resources = {"targets_file": Path(targets) if targets else None,
                 "subset_file": Path(SUBSETS[exp["subset"]]) if exp.get("subset") in SUBSETS else None}
    manifest = manifest or tree / "chunks" / method / f"{chunk}-of-{chunks}.json"
    result = generate_chunk(
        experiment=exp, method=method, method_spec=settings, **resources,
        model_specs={n: section_entry(spec, "models", n) for n in names}, index_csv=index_csv,
        checkpoints=checkpoints, chunk=chunk, chunks=chunks, seed=seed, tree_root=tree, manifest_path=manifest,
        device=device, precision=precision, batch_divisor=batch_divisor, compile_unet=compile_unet,
        layout=experiment_layout(spec, experiment),
    )
    click.echo(f"{result['n']} images, {result['flipped']} flipped; manifest {manifest}")


@main.group()
def gcd() -> None:
    """GCD's direction search and BB-LIG maps (the transfer is `cfx generate --method gcd`)."""


def _checkpoint_file(suite: dict, checkpoint_dir: Path, name: str) -> Path:
    """Network ``name``'s file in ``checkpoint_dir``: the registry file name (e.g. STEEX's ``.tar``) or NAME.pt."""
    from cfx.suite import network_checkpoint

    return checkpoint_dir / Path(network_checkpoint(suite, name)).name


def _gcd_setup(suite: str, scale: str, experiment: str, checkpoint_dir: Path, diffae: Path | None):
    from cfx.suite import method_network, resolved_method_spec

    spec = _suite(suite, scale)
    exp = section_entry(spec, "experiments", experiment)
    method_spec = resolved_method_spec(spec, "gcd", experiment)
    names = [exp["classifier"], method_spec["diffae"]]
    checkpoints = {"classifier": _checkpoint_file(spec, checkpoint_dir, exp["classifier"]),
                   "diffae": diffae or _checkpoint_file(spec, checkpoint_dir, method_spec["diffae"])}
    lpips = method_network(spec, "gcd", "lpips")
    if lpips and lpips["checkpoint"]:
        checkpoints["lpips"] = checkpoint_dir / Path(lpips["checkpoint"]).name
    models = {n: section_entry(spec, "models", n) for n in names}
    return exp, method_spec, models, checkpoints, experiment_layout(spec, experiment)


@gcd.command("direction")
@suite_option
@scale_option
@click.option("--experiment", required=True)
@click.option("--index", "index_csv", required=True, type=click.Path(exists=True, path_type=Path))
@click.option("--checkpoints", "checkpoint_dir", default="resources/checkpoints", show_default=True,
              type=click.Path(path_type=Path))
@click.option("--diffae", type=click.Path(path_type=Path), help="DiffAE checkpoint (default: in CHECKPOINTS).")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Direction file to write.")
@click.option("--seed", default=4, show_default=True)
@click.option("--device", default="auto", show_default=True)
def gcd_direction_cmd(suite, scale, experiment, index_csv, checkpoint_dir, diffae, out, seed, device) -> None:
    """Search GCD directions around the experiment's source image and write the chosen one."""
    from cfx.steps import gcd_direction

    exp, method_spec, models, checkpoints, layout = _gcd_setup(suite, scale, experiment, checkpoint_dir, diffae)
    record = gcd_direction(experiment=exp, method_spec=method_spec, model_specs=models, index_csv=index_csv,
                           checkpoints=checkpoints, out_path=out, seed=seed, device=device, layout=layout)
    click.echo(json.dumps(record["chosen"], indent=1))


@gcd.command("bblig")
@suite_option
@scale_option
@click.option("--experiment", required=True)
@click.option("--index", "index_csv", required=True, type=click.Path(exists=True, path_type=Path))
@click.option("--checkpoints", "checkpoint_dir", default="resources/checkpoints", show_default=True,
              type=click.Path(path_type=Path))
@click.option("--diffae", type=click.Path(path_type=Path), help="DiffAE checkpoint (default: in CHECKPOINTS).")
@click.option("--direction", required=True, type=click.Path(exists=True, path_type=Path))
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Folder for the .npz files and figures.")
@click.option("--n-images", default=4, show_default=True)
@click.option("--device", default="auto", show_default=True)
def gcd_bblig_cmd(suite, scale, experiment, index_csv, checkpoint_dir, diffae, direction, out, n_images,
                  device) -> None:
    """BB-LIG maps of the experiment's first images along a GCD direction."""
    from cfx.steps import gcd_bblig

    exp, method_spec, models, checkpoints, layout = _gcd_setup(suite, scale, experiment, checkpoint_dir, diffae)
    checkpoints["direction"] = direction
    rows = gcd_bblig(experiment=exp, method_spec=method_spec, model_specs=models, index_csv=index_csv,
                     checkpoints=checkpoints, out_dir=out, n_images=n_images, device=device, layout=layout)
    click.echo(json.dumps(rows, indent=1))


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


def _network_option(value: str) -> tuple[str, str, Path | None]:
    """``ROLE=KIND:PATH`` (or ``ROLE=KIND`` for a network without checkpoint)."""
    if "=" not in value:
        raise click.BadParameter(f"'{value}' is not ROLE=KIND:PATH (e.g. oracle=celeba_oracle:models/oracle.pth)")
    role, rest = value.split("=", 1)
    kind, _, path = rest.partition(":")
    return role, kind, Path(path) if path else None


@main.command()
@click.argument("name")
@click.option("--real", type=click.Path(exists=True, file_okay=False, path_type=Path), help="Folder of real images.")
@click.option("--fake", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Folder of generated images.")
@click.option("--tree", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Experiment tree results/cf/EXPERIMENT.")
@click.option("--method", help="Method whose Results/ folder to read (tree metrics).")
@click.option("--suite", "suite_name", help="Take networks and options from this suite's metrics: section "
              "(with --experiment; checkpoints relative to the working directory).")
@scale_option
@click.option("--experiment", help="Suite experiment (query label, classifier) of the tree; default: the tree's name.")
@click.option("--network", "networks", multiple=True,
              help="ROLE=KIND:PATH, e.g. identity=vggface2:resnet50_ft_weight.pkl (repeatable; overrides the suite).")
@click.option("--query-label", type=int, help="Query attribute (CD, COUT) when no suite is given.")
@click.option("--data-root", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Dataset root in CelebA layout (CD's train-split correlations).")
@click.option("--seed-tree", "seed_trees", multiple=True, type=click.Path(exists=True, path_type=Path),
              help="Tree of another seed run (σ_L; repeatable).")
@click.option("--option", "options", multiple=True, help="KEY=VALUE metric option (e.g. seed=0 for sfid).")
@click.option("--device", default="auto", show_default=True)
@click.option("--out", type=click.Path(path_type=Path), help="Also write the JSON here.")
def metric(name, real, fake, tree, method, suite_name, scale, experiment, networks, query_label, data_root, seed_trees,
           options, device, out) -> None:
    """Compute metric NAME on two folders (--real, --fake: FID, sFID) or on a results tree (--tree, --method) and
    print it as JSON."""
    from cfx.metrics import MetricContext, NetworkRef, compute_folder_metric, compute_tree_metric
    from cfx.runtime.device import select_device
    from cfx.suite import metric_networks

    ctx = MetricContext(device=str(select_device(device)), data_root=data_root, seed_trees=list(seed_trees))
    if suite_name:
        spec = _suite(suite_name, scale)
        experiment = experiment or (tree.name if tree else None)
        if experiment is None:
            raise click.UsageError("--suite needs --experiment (or --tree named after the experiment)")
        ctx.experiment = dict(section_entry(spec, "experiments", experiment))
        ctx.options = dict((spec["metrics"].get(name) or {}).get("options", {}))
        for role, n in metric_networks(spec, name, experiment, method).items():
            ctx.networks[role] = NetworkRef(role, n["name"], Path(n["checkpoint"]) if n["checkpoint"] else None,
                                            n["spec"])
    for value in networks:
        role, kind, path = _network_option(value)
        ctx.networks[role] = NetworkRef(role, f"{role} (--network)", path, {"kind": kind})
    if query_label is not None:
        ctx.experiment["query_label"] = query_label
    for value in options:
        key, _, raw = value.partition("=")
        try:
            ctx.options[key] = json.loads(raw)
        except json.JSONDecodeError:
            ctx.options[key] = raw
    if real is not None or fake is not None:
        if real is None or fake is None:
            raise click.UsageError("folder metrics need both --real and --fake")
        result = compute_folder_metric(name, real=real, fake=fake, ctx=ctx, out_path=out)
    elif tree is not None and method is not None:
        result = compute_tree_metric(name, tree_root=tree, method=method, ctx=ctx, out_path=out)
    else:
        raise click.UsageError("give --real A --fake B (folder metrics) or --tree results/cf/EXPERIMENT --method "
                               "METHOD (tree metrics)")
    click.echo(json.dumps(result, indent=1, default=str))


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
@click.option("--tree", type=click.Path(exists=True, path_type=Path), help="Experiment tree (grid figure).")
@click.option("--method", help="Method of the grid figure.")
@click.option("--table", "table_csv", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="A table CSV (summary figure, one panel per metric).")
@click.option("--out", required=True, type=click.Path(path_type=Path))
@click.option("--n-images", default=8, show_default=True)
@click.option("--radii", is_flag=True, help="SVCE's figure: the counterfactual and difference at every radius.")
def figure(tree, method, table_csv, out, n_images, radii) -> None:
    """Original | counterfactual | difference grid of one (experiment, method), SVCE's radii figure (--radii), or a
    table's summary figure."""
    from cfx.figures import grid_figure, svce_figure, table_figure

    if table_csv is not None:
        click.echo(table_figure(table_csv, out))
    elif tree is not None and radii:
        click.echo(svce_figure(tree, out, method=method or "svce", n_images=n_images, title=f"SVCE on {tree.name}"))
    elif tree is not None and method is not None:
        click.echo(grid_figure(tree, method, out, n_images=n_images, title=f"{method} on {tree.name}"))
    else:
        raise click.UsageError("give --tree and --method (grid figure) or --table CSV (summary figure)")


@main.command("download")
@click.argument("names", nargs=-1)
@click.option("--suite", default="paper", show_default=True, help="Suite name or YAML path holding the registry.")
@scale_option
@click.option("--list", "list_only", is_flag=True, help="List the registry (file, status, digest origin, source).")
@click.option("--all", "fetch_all", is_flag=True, help="Fetch every checkpoint of the registry.")
@click.option("--dir", "directory", default="resources/checkpoints", show_default=True,
              type=click.Path(file_okay=False, path_type=Path))
@click.option("--lock", "lock_path", type=click.Path(dir_okay=False, path_type=Path),
              help="sha256 lock file (default DIR/sha256.lock.yaml).")
@click.option("--retries", default=4, show_default=True, help="Retries per source (exponential back-off).")
@click.option("--backoff", default=2.0, show_default=True, help="First back-off in seconds (then doubled).")
def download_cmd(names, suite, scale, list_only, fetch_all, directory, lock_path, retries, backoff) -> None:
    """Download and verify registry checkpoints NAMES into DIR/NAME.EXT (a file already there is verified, never
    downloaded again; a digest the registry lacks is recorded in the lock file at first use and enforced after)."""
    from cfx.runtime.download import fetch_checkpoint, registry_status

    spec = _suite(suite, scale)
    registry = spec.get("checkpoints") or {}
    if list_only:
        rows = registry_status(registry, directory, lock_path)
        width = max([len(r["name"]) for r in rows] + [4])
        click.echo(f"{'name':<{width}}  {'status':<13}  {'sha256':<8}  file / source")
        for r in rows:
            click.echo(f"{r['name']:<{width}}  {r['status']:<13}  {r['sha256']:<8}  {r['file']}  <-  {r['source']}")
        return
    if fetch_all:
        names = tuple(registry)
    if not names:
        raise click.UsageError("name checkpoints to download, or give --all or --list")
    failed = []
    for name in names:
        try:
            entry = section_entry(spec, "checkpoints", name)
            click.echo(fetch_checkpoint(name, entry, directory, lock_path=lock_path, retries=retries,
                                        backoff=backoff))
        except (DownloadError, SuiteError) as err:
            failed.append(name)
            click.echo(f"error: {err}", err=True)
    if failed:
        raise click.ClickException(f"{len(failed)} of {len(names)} checkpoints failed: {', '.join(failed)}")


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


@main.command("estimate")
@click.argument("targets", nargs=-1, required=True)
@suite_option
@scale_option
@click.option("--bench", "bench_path", type=click.Path(path_type=Path),
              help="A cfx bench JSON or a folder of them [default: benchmarks/h100 of the checkout cfx runs from].")
@click.option("--chunks", type=click.IntRange(min=1),
              help="Generation chunks per (experiment, method) [default: config.yaml's chunks, else 2].")
@click.option("--precision", type=click.Choice(["auto", "fp32", "fp16", "bf16"]),
              help="UNet precision of generation [default: config.yaml's, else auto = fp16 on CUDA].")
@click.option("--compile/--no-compile", "compile_unet", default=None,
              help="torch.compile in generation [default: config.yaml's compile, else off].")
@click.option("--out", default="results/estimates", show_default=True, type=click.Path(file_okay=False, path_type=Path),
              help="Folder for TABLES.csv, TABLES.txt (the printed text) and TABLES.json.")
def estimate_cmd(targets, suite, scale, bench_path, chunks, precision, compile_unet, out) -> None:
    """GPU-hours of the generation jobs of table TARGETS (results/tables/TABLE.csv) from cfx bench JSONs, per rule,
    method and experiment, before any dataset is downloaded."""
    from cfx.estimate import DEFAULT_BENCH, estimate, workflow_settings

    spec = _suite(suite, scale)
    settings = workflow_settings(find_checkout())
    text, _, paths = estimate(
        spec, list(targets), bench_path or DEFAULT_BENCH, chunks=int(chunks or settings["chunks"]),
        precision=precision or str(settings["precision"]),
        compile_unet=bool(settings["compile"]) if compile_unet is None else compile_unet, out_dir=out,
    )
    click.echo(text, nl=False)
    click.echo("wrote " + ", ".join(str(p) for p in paths))


@main.command("timings")
@click.option("--benchmarks", default="results/benchmarks", show_default=True,
              type=click.Path(file_okay=False, path_type=Path), help="The benchmark files every rule writes.")
@click.option("--out", default="results/timings", show_default=True, type=click.Path(file_okay=False, path_type=Path),
              help="Folder for summary.csv, jobs.csv, summary.md and summary.png.")
def timings_cmd(benchmarks: Path, out: Path) -> None:
    """Where a workflow run's time went: jobs, wall and CPU seconds, peak memory and share per rule."""
    from cfx.timings import markdown_table, write_timings

    summary, paths = write_timings(benchmarks, out)
    click.echo(markdown_table(summary), nl=False)
    click.echo("wrote " + ", ".join(str(p) for p in paths))


if __name__ == "__main__":
    main()
