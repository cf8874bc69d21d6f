"""``cfx estimate``: the GPU bill of table targets, before any dataset is downloaded.

For each table target (``results/tables/TABLE.csv``) the generation jobs the workflow plans for it are priced as
images × seconds per image from ``cfx bench`` JSONs (:mod:`cfx.bench`; shipped: ``benchmarks/h100/*.json``, one
H100):

* **Jobs** (``workflow/rules/generate.smk``): rule ``generate`` per (experiment, method) of the table
  (:func:`cfx.suite.table_pairs`) and chunk, rule ``ace_postprocess`` for ACE and its variants ``ace_<label>``
  (:func:`cfx.methods.implementation`), also for σ_L's extra-seed experiments when the table has the ``sigma_l``
  metric (:func:`cfx.suite.seed_trees`, added by :func:`cfx.suite.add_seed_experiments`). Jobs = ``chunks`` per
  (rule, experiment, method): config.yaml's ``chunks`` (default 2).
* **Images**: the workflow's own selection (:func:`cfx.generate.experiment_items`) on the dataset index
  ``results/data/<dataset>/index.csv`` when it exists (imported only then: cfx.generate needs torch); otherwise the
  split size the suite declares (``datasets.<dataset>.split_sizes``) with the experiment's declarative selection on
  top: ``subset`` (DiME's mini-val: 1 000 rows), ``class_targets`` (source classes × 50 ImageNet val images),
  ``max_images``. A binary experiment takes every image of its split (the query label selects no images). A count
  that needs the index (BDD-OIA's filter, SVCE's clusters) says so and is not guessed.
* **Seconds per image**: the bench run whose configuration is the job's (method, image size, DDPM flags and
  diffusion, respacing, classifier, method settings merged over the method's defaults, ACE's post-processing) and
  whose speed options are the workflow's (``precision``: auto = fp16 on CUDA as in generation; ``compile``), from
  its ``full_schedule`` extrapolation. DiME's time grows with the classifier scales tried until the decision flips:
  the estimate takes the bench's ``attempts_mean``, the range runs from 1 attempt to all scales. ACE's bench times
  the attack (``seconds_attack``) and the post-processing (``seconds_postprocess``) apart: each is billed to its own
  rule. A method or configuration without a matching bench run is "unknown", never guessed.

Job start-up and model loading are not included; the bench's random weights and images stand in for the real ones.
"""

from __future__ import annotations

import ast
import csv
import functools
import importlib.util
import io
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from cfx.data.ldce_targets import IMAGENET_VAL_PER_CLASS
from cfx.data.minival import SUBSETS
from cfx.data.wordnet import SVCE_CLUSTER_TARGETS
from cfx.methods import implementation
from cfx.suite import class_targets, image_targets_file, method_settings, section_entry, seed_trees, table_pairs

REPO = Path(__file__).resolve().parent.parent  # the checkout cfx runs from (as cfx.bench.REPO)
DEFAULT_BENCH = REPO / "benchmarks" / "h100"
DEFAULT_OUT = Path("results/estimates")
# config.yaml / workflow/schemas/config.schema.yaml: generation chunks, UNet precision, torch.compile
WORKFLOW_DEFAULTS: dict[str, Any] = {"chunks": 2, "precision": "auto", "compile": False}
# rows of an experiment's subset list: DiME's utils/minival.csv has 1 000 draws (utils/create-mini-val.py,
# cfx.data.minival; docs/upstream/dime_ace.md §3.3)
SUBSET_ROWS = {"dime_minival": 1000}
GENERATE, ACE_POSTPROCESS = "generate", "ace_postprocess"
TABLE_TARGET = re.compile(r"(?:\./)?results/tables/(?P<table>[A-Za-z0-9][A-Za-z0-9_-]*)\.(?:csv|md|tex)")
# ACE settings a bench run is chosen by rather than compared as configuration (each run records its own)
RUN_SETTINGS = ("checkpoint_backward_steps",)
# UNet flags that are speed options, not configuration (the precision option of the run stands for use_fp16)
SPEED_FLAGS = ("use_fp16",)


@dataclass
class Count:
    """Images of one experiment (None: not known without the index) and where the number comes from."""

    images: int | None
    source: str


@dataclass
class Cost:
    """Seconds per image of one job kind (estimate, lower and upper bound), peak GPU memory and provenance."""

    seconds: float
    low: float
    high: float
    peak_memory_gib: float
    bench: str
    device: str
    notes: list[str] = field(default_factory=list)


@dataclass
class Row:
    """One (rule, method, experiment) of a table: its jobs, images and cost (None where unknown)."""

    table: str
    rule: str
    method: str
    experiment: str
    jobs: int
    count: Count
    cost: Cost | None
    notes: list[str] = field(default_factory=list)

    @property
    def known(self) -> bool:
        return self.count.images is not None and self.cost is not None

    def gpu_hours(self, which: str = "seconds") -> float | None:
        """images × seconds per image / 3600 (``which``: seconds, low or high), None where unknown."""
        if not self.known:
            return None
        return self.count.images * getattr(self.cost, which) / 3600

    def record(self) -> dict[str, Any]:
        """The row as the CSV and JSON write it."""
        cost = self.cost
        return {
            "table": self.table, "rule": self.rule, "method": self.method, "experiment": self.experiment,
            "jobs": self.jobs, "images": self.count.images, "images_source": self.count.source,
            "status": "known" if self.known else "unknown",
            "bench": cost.bench if cost else None, "device": cost.device if cost else None,
            "seconds_per_image": _round(cost.seconds) if cost else None,
            "seconds_per_image_low": _round(cost.low) if cost else None,
            "seconds_per_image_high": _round(cost.high) if cost else None,
            "gpu_hours": _round(self.gpu_hours()), "gpu_hours_low": _round(self.gpu_hours("low")),
            "gpu_hours_high": _round(self.gpu_hours("high")),
            "peak_gpu_memory_gib": _round(cost.peak_memory_gib) if cost else None,
            "notes": [*self.notes, *(cost.notes if cost else [])],
        }


def _round(value: float | None, digits: int = 4) -> float | None:
    return None if value is None else float(f"{value:.{digits}g}")


# --- targets and settings ------------------------------------------------------------------------------------------


def target_table(suite: dict, target: str) -> str:
    """The table of a target ``results/tables/TABLE.csv`` (or ``.md``, ``.tex``); a ValueError names a target that
    is no table output or a table the suite does not define."""
    match = TABLE_TARGET.fullmatch(str(target))
    known = ", ".join(suite.get("tables") or {}) or "none"
    if not match:
        raise ValueError(f"target '{target}' is not a table target: give results/tables/TABLE.csv (tables of suite "
                         f"{suite.get('name')}: {known})")
    table = match["table"]
    if table not in (suite.get("tables") or {}):
        raise ValueError(f"target '{target}': suite {suite.get('name')} has no table '{table}'; its tables: {known}")
    return table


def workflow_settings(checkout: Path | None) -> dict[str, Any]:
    """``chunks``, ``precision`` and ``compile`` of the checkout's config.yaml (what the workflow runs with), else
    :data:`WORKFLOW_DEFAULTS`."""
    settings = dict(WORKFLOW_DEFAULTS)
    path = checkout / "config.yaml" if checkout else None
    if path and path.is_file():
        config = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        if not isinstance(config, dict):
            raise ValueError(f"{path} must hold a mapping (the workflow's config)")
        settings.update({k: config[k] for k in WORKFLOW_DEFAULTS if k in config})
    return settings


# --- bench reports -------------------------------------------------------------------------------------------------


@dataclass
class BenchReport:
    path: Path
    data: dict[str, Any]


def load_bench(path: str | Path) -> list[BenchReport]:
    """The ``cfx bench`` reports of a JSON file or of every ``*.json`` in a folder (sorted by name); a file that is
    not a bench report is an error naming it."""
    path = Path(path)
    if path.is_dir():
        files = sorted(path.glob("*.json"))
        if not files:
            raise FileNotFoundError(f"bench folder {path} holds no .json file (cfx bench writes them)")
    elif path.is_file():
        files = [path]
    else:
        raise FileNotFoundError(f"bench path {path} does not exist: give a cfx bench JSON or a folder of them "
                                f"(--bench)")
    reports = []
    for file in files:
        try:
            data = json.loads(file.read_text(encoding="utf-8"))
        except ValueError as err:
            raise ValueError(f"bench file {file} is not JSON: {err}") from err
        if not isinstance(data, dict) or not {"cfx_bench_version", "method", "settings", "runs"} <= set(data):
            raise ValueError(f"bench file {file} is not a cfx bench report (needs cfx_bench_version, method, settings "
                             f"and runs)")
        reports.append(BenchReport(file, data))
    return reports


@functools.cache
def source_defaults(module: str, name: str) -> dict[str, Any]:
    """The literal ``name`` of ``module``'s source — a module-level dict (a method's ``DEFAULTS``) or a function's
    keyword defaults (``cfx.models.adm.create_model``) — read with :mod:`ast`, without importing the module (the
    methods and models import torch, the estimate does not)."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.origin:
        raise LookupError(f"module {module} not found")
    tree = ast.parse(Path(spec.origin).read_text(encoding="utf-8"), filename=spec.origin)
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and node.name == name:
            args = node.args
            positional = [*args.posonlyargs, *args.args]
            pairs = list(zip(positional[len(positional) - len(args.defaults):], args.defaults, strict=True))
            pairs += [(a, d) for a, d in zip(args.kwonlyargs, args.kw_defaults, strict=True) if d is not None]
            return {arg.arg: ast.literal_eval(default) for arg, default in pairs}
        targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(node, ast.AnnAssign) \
            else []
        if any(isinstance(t, ast.Name) and t.id == name for t in targets) and node.value is not None:
            value = ast.literal_eval(node.value)
            if isinstance(value, dict):
                return value
    raise LookupError(f"{module} has no literal {name}")


def _defaults(module: str, name: str) -> dict[str, Any]:
    try:
        return source_defaults(module, name)
    except (LookupError, ValueError, SyntaxError, OSError):  # no literal: compare what both sides state
        return {}


def _same(a: Any, b: Any) -> bool:
    """Equal settings: numbers by value (8 and 8.0), sequences and mappings element by element."""
    numbers = (int, float)
    if isinstance(a, numbers) and isinstance(b, numbers) and not isinstance(a, bool) and not isinstance(b, bool):
        return math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=1e-12)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict) and isinstance(b, dict):
        return set(a) == set(b) and all(_same(a[k], b[k]) for k in a)
    return a == b


def _compare(what: str, job: dict, bench: dict, defaults: dict, skip: tuple[str, ...] = ()) -> list[str]:
    """``what KEY job ≠ bench`` for every key of either side (absent: the default) whose values differ."""
    out = []
    for key in sorted((set(job) | set(bench)) - set(skip)):
        mine, theirs = job.get(key, defaults.get(key)), bench.get(key, defaults.get(key))
        if not _same(mine, theirs):
            out.append(f"{what}{key} {mine!r} ≠ bench {theirs!r}")
    return out


def job_configuration(suite: dict, experiment: str, method: str) -> dict[str, Any]:
    """What a bench run must have timed to price a job of (experiment, method): the method's implementation, the
    experiment's image size, its DDPM's flags and diffusion, the method's respacing, classifier (kind, arch),
    settings (:func:`cfx.suite.method_settings`: its dataset's script merged in), post-processing and batch size."""
    spec = section_entry(suite, "experiments", experiment)
    settings = method_settings(suite, method, experiment)
    ddpm = section_entry(suite, "models", spec["ddpm"]) if spec.get("ddpm") else {}
    classifier = section_entry(suite, "models", settings.get("classifier") or spec["classifier"])
    return {
        "method": implementation(method), "image_size": spec["image_size"], "unet_flags": ddpm.get("flags"),
        "diffusion": ddpm.get("diffusion"), "timestep_respacing": str(settings.get("timestep_respacing", "")),
        "classifier_kind": str(classifier.get("kind") or "classifier"), "classifier_arch": classifier.get("arch") or {},
        "config": dict(settings.get("config") or {}), "postprocess": dict(settings.get("postprocess") or {}),
        "batch_size": int(settings.get("batch_size", 16)),
    }


def configuration_mismatches(job: dict[str, Any], report: dict[str, Any], rule: str = GENERATE) -> list[str]:
    """How a bench report's configuration (``settings``, :class:`cfx.bench.BenchSetup`) differs from a job's
    (:func:`job_configuration`); empty when its time stands for the job. The bench's shortened schedule
    (``schedule.shortened`` = ``schedule.run``) counts as the full one it extrapolates to; missing keys take the
    method's ``DEFAULTS`` and ADM's ``create_model`` defaults; ACE's post-processing is compared for its rule."""
    if report.get("method") != job["method"]:
        return [f"method {job['method']} ≠ bench {report.get('method')}"]
    setup = report["settings"]
    out = []
    if not _same(job["image_size"], setup.get("image_size")):
        out.append(f"image_size {job['image_size']!r} ≠ bench {setup.get('image_size')!r}")
    if job["unet_flags"] is None:
        out.append("the experiment names no DDPM")
    else:
        out += _compare("DDPM flag ", job["unet_flags"], setup.get("unet_flags") or {},
                        _defaults("cfx.models.adm", "create_model"), SPEED_FLAGS)
        out += _compare("diffusion ", job["diffusion"] or {}, setup.get("diffusion") or {}, {})
    if job["timestep_respacing"] != str(setup.get("timestep_respacing", "")):
        out.append(f"timestep_respacing {job['timestep_respacing']!r} ≠ bench {setup.get('timestep_respacing')!r}")
    # cfx.bench.build_models: DiME's CelebA DenseNet-121 (the models kind "classifier") with classifier_arch
    if job["classifier_kind"] != "classifier":
        out.append(f"classifier kind {job['classifier_kind']} ≠ bench classifier (DiME's DenseNet-121)")
    out += _compare("classifier arch ", job["classifier_arch"], setup.get("classifier_arch") or {}, {})
    defaults = _defaults(f"cfx.methods.{job['method']}", "DEFAULTS")
    config = dict(setup.get("config") or {})
    schedule = setup.get("schedule") or {}
    if schedule.get("shortened") in config:
        config[schedule["shortened"]] = schedule["full"]
    out += _compare("", job["config"], config, defaults, RUN_SETTINGS)
    if rule == ACE_POSTPROCESS:
        out += _compare("postprocess ", job["postprocess"], setup.get("postprocess") or {}, defaults, RUN_SETTINGS)
    return out


def wanted_options(precision: str, compile_unet: bool, device_type: str) -> frozenset[str]:
    """The speed options of generation on ``device_type`` (:func:`cfx.runtime.precision.resolve_precision`: auto =
    fp16 on CUDA, fp32 elsewhere; ``compile`` = torch.compile; einsum attention, no channels_last), fp32 left out as
    the absence of a precision option (as :func:`cfx.bench.parse_variants`)."""
    resolved = ("fp16" if device_type == "cuda" else "fp32") if precision == "auto" else precision
    return frozenset({resolved, *(["compile"] if compile_unet else [])} - {"fp32"})


def _run_options(run: dict[str, Any]) -> frozenset[str]:
    return frozenset(str(run.get("options", "")).split("+")) - {"fp32", ""}


def _scales(config: dict[str, Any]) -> int:
    scales = config["classifier_scales"]
    return len(scales.split(",")) if isinstance(scales, str) else len(scales)


def bench_cost(reports: list[BenchReport], job: dict[str, Any], rule: str, *, precision: str = "auto",
               compile_unet: bool = False) -> tuple[Cost | None, str]:
    """Seconds per image of ``rule`` for the job (:func:`job_configuration`) from the matching bench run, or None
    and why. Among several matching runs the one with the longest timed schedule (least extrapolation), then the
    most images, is used; the others are named in a note."""
    candidates, nearest = [], None
    checkpointing = {**_defaults("cfx.methods.ace", "DEFAULTS"), **job["config"]}.get("checkpoint_backward_steps")
    for report in reports:
        mismatches = configuration_mismatches(job, report.data, rule)
        if mismatches:
            if report.data.get("method") == job["method"] and (nearest is None or len(mismatches) < len(nearest[1])):
                nearest = (report, mismatches)
            continue
        wanted = wanted_options(precision, compile_unet, report.data.get("device", {}).get("type", ""))
        for run in report.data["runs"]:
            if run.get("status") != "ok" or _run_options(run) != wanted:
                continue
            if job["method"] == "ace" and run.get("checkpoint_backward_steps") != checkpointing:
                continue
            candidates.append((report, run))
    if not candidates:
        if nearest:
            return None, (f"no bench run has this configuration: {nearest[0].path.name} differs in "
                          f"{'; '.join(nearest[1][:3])}" + (f" (+{len(nearest[1]) - 3} more)" if len(nearest[1]) > 3
                                                             else ""))
        if any(r.data.get("method") == job["method"] for r in reports):
            wanted = "+".join(sorted(wanted_options(precision, compile_unet, "cuda"))) or "fp32"
            return None, f"no ok bench run of {job['method']} with this configuration has the options {wanted}"
        return None, f"no bench data for {job['method']}"
    report, run = max(candidates, key=lambda c: (c[0].data["settings"].get("schedule", {}).get("run", 0),
                                                 c[1].get("images", 0)))
    others = [f"{r.path.name} {o['options']} ({_summary(r, o)})" for r, o in candidates if o is not run]
    return _cost(report, run, job, rule, others), ""


def _summary(report: BenchReport, run: dict[str, Any]) -> str:
    """A run's full-schedule estimate and timed schedule, to name an alternative bench run."""
    schedule = report.data["settings"].get("schedule") or {}
    full = run.get("full_schedule") or {}
    seconds = full.get("estimated_seconds_per_image_per_attempt", full.get("estimated_seconds_per_image"))
    unit = " per attempt" if "estimated_seconds_per_image_per_attempt" in full else ""
    timed = f"{schedule.get('shortened')} {schedule.get('run')} of {schedule.get('full')}"
    return f"{seconds:.3g} s per image{unit}, {timed}"


def _cost(report: BenchReport, run: dict[str, Any], job: dict[str, Any], rule: str, others: list[str]) -> Cost:
    setup, device = report.data["settings"], report.data.get("device", {})
    schedule = setup.get("schedule") or {}
    images = int(run["images"])
    notes = []
    label = f"{report.path.name} {run['options']}"
    if job["method"] == "ace":
        label += f" ckpt={run.get('checkpoint_backward_steps')}"
    if job["method"] == "dime":
        per_attempt = run["full_schedule"]["estimated_seconds_per_image_per_attempt"]
        mean, scales = float(run["attempts_mean"]), _scales(setup["config"])
        seconds, low, high = per_attempt * mean, per_attempt, per_attempt * scales
        bound = (f"; its random classifier flipped {run.get('flipped')} of {images}, so every image ran all {scales} "
                 f"scales: the upper bound") if mean >= scales else ""
        notes.append(f"DiME: {per_attempt:.3g} s per image and attempt at τ = {schedule.get('full')} (timed at τ = "
                     f"{schedule.get('run')}, extrapolated: {run['full_schedule'].get('how', 'full_schedule')}); "
                     f"GPU-h assume the bench's mean {mean:g} attempts per image{bound}; range: 1 attempt (every image "
                     f"flips at the first scale) to {scales}")
    else:  # ACE: attack and post-processing timed apart (seconds_attack, seconds_postprocess) or together
        split = "seconds_attack" in run and "seconds_postprocess" in run
        if split:
            attack = run["seconds_attack"] * schedule["full"] / schedule["run"] / images
            post = run["seconds_postprocess"] / images
        else:
            attack, post = float(run["full_schedule"]["estimated_seconds_per_image"]), 0.0
        seconds = low = high = post if rule == ACE_POSTPROCESS else attack
        if rule == ACE_POSTPROCESS:
            notes.append("ACE post-processing: the bench's seconds_postprocess per image; peak memory of the whole "
                         "bench run (attack + post-processing), an upper bound" if split else
                         "ACE post-processing: the bench does not time it apart; its time is in the generate row")
        else:
            notes.append(f"ACE attack: the bench's seconds_attack per image, {schedule.get('run')} PGD iterations "
                         f"timed, extrapolated to {schedule.get('full')}; post-processing billed to ace_postprocess"
                         if split else "ACE: the bench does not separate attack and post-processing: the whole time "
                         "is billed here")
    if int(setup.get("batch_size", job["batch_size"])) != job["batch_size"]:
        notes.append(f"timed at batch {setup.get('batch_size')}; the suite runs batch {job['batch_size']} (seconds per "
                     f"image and peak memory as measured at the bench's batch)")
    if others:
        notes.append(f"used {label}; also matching: {', '.join(others)}")
    return Cost(seconds=seconds, low=low, high=high, peak_memory_gib=run["peak_memory_bytes"] / 2**30, bench=label,
                device=str(device.get("name", device.get("type", "?"))), notes=notes)


# --- image counts --------------------------------------------------------------------------------------------------


def index_path(suite: dict, experiment: str, root: Path = Path(".")) -> Path:
    """The dataset index an experiment's generation reads (``results/data/<dataset>/index.csv``)."""
    return Path(root) / "results" / "data" / section_entry(suite, "experiments", experiment)["dataset"] / "index.csv"


def count_images(suite: dict, experiment: str, root: Path = Path(".")) -> Count:
    """The experiment's images (instances): :func:`index_count` where the index exists, else
    :func:`declared_count`; an index whose selection fails falls back to the declared count, saying why."""
    index = index_path(suite, experiment, root)
    if not index.is_file():
        return declared_count(suite, experiment)
    counted = index_count(suite, experiment, index, root)
    if counted.images is not None:
        return counted
    declared = declared_count(suite, experiment)
    return Count(declared.images, f"{counted.source}; {declared.source}")


def index_count(suite: dict, experiment: str, index: Path, root: Path = Path(".")) -> Count:
    """The workflow's selection (:func:`cfx.generate.experiment_items`, torch imported here) on ``index``, with the
    subset and target files the workflow fetches (relative to ``root``)."""
    import pandas as pd

    from cfx.generate import experiment_items

    spec = section_entry(suite, "experiments", experiment)
    subset = Path(root) / SUBSETS[spec["subset"]] if spec.get("subset") in SUBSETS else None
    targets = image_targets_file(spec)
    try:
        frame = pd.read_csv(index, dtype={"image_id": str})
        image_ids, _ = experiment_items(frame, spec, subset, Path(root) / targets if targets else None)
    except (ValueError, KeyError, FileNotFoundError) as err:
        return Count(None, f"the workflow's selection on {index} failed: {str(err).splitlines()[0]}")
    return Count(len(image_ids), f"the workflow's selection on {index}")


def declared_count(suite: dict, experiment: str) -> Count:
    """Images from the split size the suite declares (``datasets.<dataset>.split_sizes.<split>``) with the
    experiment's declarative selection (:func:`cfx.generate.experiment_images`): a ``subset`` list's rows
    (:data:`SUBSET_ROWS`), ``class_targets``' source classes × 50 ImageNet val images, the whole split otherwise
    (``image_targets: ldce``, ``ldce_pets``, ``ldce_flowers`` order it), capped at ``max_images``. None where only the
    index knows (SVCE's WordNet clusters, a dataset without split_sizes)."""
    spec = section_entry(suite, "experiments", experiment)
    name, split = spec["dataset"], spec["split"]
    dataset = section_entry(suite, "datasets", name)
    where = f"datasets.{name}.split_sizes.{split}"
    if spec.get("image_targets") == SVCE_CLUSTER_TARGETS:
        return Count(None, "needs the index (and SVCE's WordNet files): instances per image follow its cluster")
    if spec.get("subset"):
        rows = SUBSET_ROWS.get(spec["subset"])
        if rows is None:
            return Count(None, f"needs the index: no known row count for subset {spec['subset']}")
        n, source = rows, f"subset {spec['subset']}: {rows} rows of {SUBSETS.get(spec['subset'], 'its list')}"
    elif (targets := class_targets(spec)) is not None:
        if dataset.get("layout") != "imagenet_val":
            return Count(None, f"needs the index: images per source class of a {dataset.get('layout')} dataset")
        n = len(targets) * IMAGENET_VAL_PER_CLASS
        source = f"{len(targets)} source classes × {IMAGENET_VAL_PER_CLASS} ImageNet val images"
    elif split in (dataset.get("split_sizes") or {}):
        n = int(dataset["split_sizes"][split])
        source = f"declared {split} split ({where} = {n})"
    else:
        return Count(None, f"needs the index results/data/{name}/index.csv: the suite declares no {where}")
    if spec.get("max_images") and int(spec["max_images"]) < n:
        n = int(spec["max_images"])
        source += f", max_images {n}"
    return Count(n, source)


# --- the plan ------------------------------------------------------------------------------------------------------


def table_jobs(suite: dict, table: str) -> list[tuple[str, str, str]]:
    """(rule, method, experiment) of the generation jobs a table needs: ``generate`` per pair, ``ace_postprocess``
    after ACE's (and its variants'), the same for σ_L's extra-seed runs when the table reads ``sigma_l``."""
    spec = section_entry(suite, "tables", table)
    pairs = table_pairs(suite, table)
    if "sigma_l" in spec.get("metrics", []):
        pairs += [(run, method) for experiment, method in table_pairs(suite, table)
                  for run in seed_trees(suite, experiment)]
    jobs = []
    for experiment, method in pairs:
        jobs.append((GENERATE, method, experiment))
        if implementation(method) == "ace":
            jobs.append((ACE_POSTPROCESS, method, experiment))
    return jobs


def estimate_rows(suite: dict, tables: list[str], reports: list[BenchReport], *, chunks: int = 2,
                  precision: str = "auto", compile_unet: bool = False, root: Path = Path(".")) -> list[Row]:
    """The priced jobs of ``tables`` (:func:`table_jobs`, :func:`count_images`, :func:`bench_cost`)."""
    if chunks < 1:
        raise ValueError(f"chunks must be >= 1, got {chunks}")
    counts: dict[str, Count] = {}
    rows = []
    for table in tables:
        for rule, method, experiment in table_jobs(suite, table):
            if experiment not in counts:
                counts[experiment] = count_images(suite, experiment, root)
            cost, reason = bench_cost(reports, job_configuration(suite, experiment, method), rule,
                                      precision=precision, compile_unet=compile_unet)
            notes = [] if cost else [f"unknown: {reason}"]
            base = section_entry(suite, "experiments", experiment).get("seed_run_of")
            if base:
                notes.insert(0, f"σ_L extra-seed run of {base} (metrics.sigma_l)")
            rows.append(Row(table, rule, method, experiment, chunks, counts[experiment], cost, notes))
    return rows


def totals(rows: list[Row]) -> dict[str, Any]:
    """Jobs, images and GPU-hours (estimate, low, high) of the known rows, and how many rows are unknown."""
    known = [r for r in rows if r.known]
    total = {"jobs": sum(r.jobs for r in rows), "rows": len(rows), "unknown": len(rows) - len(known)}
    for key, which in (("gpu_hours", "seconds"), ("gpu_hours_low", "low"), ("gpu_hours_high", "high")):
        total[key] = _round(sum(r.gpu_hours(which) for r in known)) if known else None
    return total


def grand_total(rows: list[Row]) -> dict[str, Any]:
    """:func:`totals` over the distinct (rule, method, experiment): a job two tables share runs once."""
    unique = {(r.rule, r.method, r.experiment): r for r in rows}
    return totals(list(unique.values()))


# --- output --------------------------------------------------------------------------------------------------------


def _hours(value: float | None) -> str:
    if value is None:
        return "unknown"
    return f"{value:.1f}" if value >= 10 else f"{value:.2f}"


def format_text(rows: list[Row], targets: dict[str, str], header: str) -> str:
    """The printed table: per target its rows (rule, method, experiment, jobs, images, s/image, GPU-h, range, peak
    GPU memory, bench run, note numbers) and total, then the grand total and the numbered notes."""
    notes: list[str] = []

    def refs(items: list[str]) -> str:
        numbers = []
        for item in items:
            if item not in notes:
                notes.append(item)
            numbers.append(str(notes.index(item) + 1))
        return ",".join(numbers)

    columns = ("rule", "method", "experiment", "jobs", "images", "s/image", "GPU-h", "GPU-h range", "peak GiB",
               "bench", "notes")
    lines = [header]
    for table, target in targets.items():
        body = []
        for row in (r for r in rows if r.table == table):
            cost = row.cost
            body.append((
                row.rule, row.method, row.experiment, str(row.jobs),
                str(row.count.images) if row.count.images is not None else "?",
                f"{cost.seconds:.3g}" if cost else "unknown", _hours(row.gpu_hours()),
                f"{_hours(row.gpu_hours('low'))}-{_hours(row.gpu_hours('high'))}" if row.known else "",
                f"{cost.peak_memory_gib:.1f}" if cost else "unknown", cost.bench if cost else "unknown",
                refs([row.count.source, *row.notes, *(cost.notes if cost else [])]),
            ))
        widths = [max(len(c), *(len(b[i]) for b in body)) for i, c in enumerate(columns)]
        lines += ["", target]
        for cells in (columns, *body):
            lines.append("  " + "  ".join(c.ljust(w) if i < 3 or i == 9 else c.rjust(w)
                                          for i, (c, w) in enumerate(zip(cells, widths, strict=True))).rstrip())
        lines.append("  " + _total_line(f"total {table}", totals([r for r in rows if r.table == table])))
    if len(targets) > 1:
        lines += ["", _total_line("grand total (jobs shared by tables counted once)", grand_total(rows))]
    lines += ["", "notes:"] + [f"  [{k}] {note}" for k, note in enumerate(notes, start=1)]
    return "\n".join(lines) + "\n"


def _total_line(label: str, total: dict[str, Any]) -> str:
    if total["gpu_hours"] is None:
        return f"{label}: {total['jobs']} jobs, GPU-h unknown (all {total['rows']} rows unknown)"
    line = (f"{label}: {total['jobs']} jobs, {_hours(total['gpu_hours'])} GPU-h (range {_hours(total['gpu_hours_low'])}"
            f"-{_hours(total['gpu_hours_high'])})")
    if total["unknown"]:
        line += f"; {total['unknown']} of {total['rows']} rows unknown: a lower bound"
    return line


CSV_FIELDS = ("table", "rule", "method", "experiment", "jobs", "images", "images_source", "status", "bench", "device",
              "seconds_per_image", "seconds_per_image_low", "seconds_per_image_high", "gpu_hours", "gpu_hours_low",
              "gpu_hours_high", "peak_gpu_memory_gib", "notes")


def write_estimate(rows: list[Row], text: str, meta: dict[str, Any], out_dir: Path, stem: str) -> list[Path]:
    """``out_dir/STEM.csv`` (one line per row, then a ``total`` line per table and the grand total), ``STEM.txt``
    (the printed text) and ``STEM.json`` (settings, rows, totals)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    records = [r.record() for r in rows]
    tables = list(dict.fromkeys(r.table for r in rows))
    table_totals = {t: totals([r for r in rows if r.table == t]) for t in tables}
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_FIELDS, lineterminator="\n")
    writer.writeheader()
    for record in records:
        writer.writerow({**record, "notes": " | ".join(record["notes"])})
    for label, total in [*table_totals.items(), ("all", grand_total(rows))]:
        writer.writerow({"table": label, "rule": "total", "jobs": total["jobs"],
                         "status": f"{total['unknown']} of {total['rows']} unknown",
                         **{k: total[k] for k in ("gpu_hours", "gpu_hours_low", "gpu_hours_high")}})
    paths = [out_dir / f"{stem}.csv", out_dir / f"{stem}.txt", out_dir / f"{stem}.json"]
    paths[0].write_text(buffer.getvalue(), encoding="utf-8")
    paths[1].write_text(text, encoding="utf-8")
    paths[2].write_text(json.dumps({**meta, "rows": records, "totals": table_totals, "grand_total": grand_total(rows)},
                                   indent=1, ensure_ascii=False), encoding="utf-8")
    return paths


def estimate(suite: dict, targets: list[str], bench: str | Path = DEFAULT_BENCH, *, chunks: int = 2,
             precision: str = "auto", compile_unet: bool = False, root: Path = Path("."),
             out_dir: Path | None = DEFAULT_OUT) -> tuple[str, list[Row], list[Path]]:
    """Price ``targets`` (``results/tables/TABLE.csv``) of ``suite`` with the bench reports of ``bench`` (a JSON or a
    folder); print text, rows and, unless ``out_dir`` is None, the files written (:func:`write_estimate`)."""
    if not targets:
        raise ValueError("name at least one target, e.g. results/tables/table1.csv")
    tables = {target_table(suite, t): t for t in targets}
    reports = load_bench(bench)
    rows = estimate_rows(suite, list(tables), reports, chunks=chunks, precision=precision, compile_unet=compile_unet,
                         root=root)
    devices = sorted({f"{r.data['device'].get('name')} ({r.data['device'].get('type')})" for r in reports})
    header = (f"GPU bill of the generation jobs: suite {suite.get('name')}, chunks {chunks}, precision {precision}, "
              f"compile {'on' if compile_unet else 'off'}; bench {bench} ({len(reports)} files, timed on "
              f"{', '.join(devices)}).\nSeconds per image from cfx bench with random weights; job start-up and "
              f"model loading not included; metrics, merges and GCD's direction search not counted.")
    text = format_text(rows, tables, header)
    meta = {"suite": suite.get("name"), "targets": list(tables.values()), "chunks": chunks, "precision": precision,
            "compile": compile_unet, "bench": [str(r.path) for r in reports], "devices": devices}
    paths = write_estimate(rows, text, meta, out_dir, "+".join(tables)) if out_dir is not None else []
    return text, rows, paths
