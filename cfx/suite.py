"""Suite files (workflow/suites/*.yaml): loading, scale overrides and lookups with clear errors."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import yaml

SUITE_SECTIONS = ("datasets", "models", "methods", "experiments", "tables")
# Names that become path segments (results/cf/{experiment}/, resources/checkpoints/{name}.{ext}, Results/{method}/,
# results/tables/{table}.csv, ...): letters, digits, '_' and '-', starting with a letter or digit, so that no name from
# a suite file can reach outside the project ('..', '/', absolute paths) or into a hidden file
SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")
SAFE_EXTENSION = re.compile(r"[a-z0-9]+(\.[a-z0-9]+)*")
NAMED_SECTIONS = (*SUITE_SECTIONS, "checkpoints", "metrics", "figures")


class SuiteError(ValueError):
    """A suite file is missing, malformed, or refers to something it does not define."""


def deep_merge(base: dict, override: dict) -> dict:
    """Return ``base`` updated recursively with ``override`` (dicts merge, everything else replaces)."""
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def load_suite(path: str | Path, scale: str | None = None) -> dict[str, Any]:
    """Read a suite file and apply the overrides of ``scales[scale]`` (e.g. ``ci``) when given."""
    path = Path(path)
    if not path.is_file():
        raise SuiteError(f"suite file {path} does not exist; known suites live in workflow/suites/")
    with path.open() as handle:
        suite = yaml.safe_load(handle) or {}
    if not isinstance(suite, dict):
        raise SuiteError(f"suite file {path} must hold a mapping at the top level")
    for section in SUITE_SECTIONS:
        suite.setdefault(section, {})
    scales = suite.pop("scales", {}) or {}
    if scale and scale != "default":
        if scale not in scales:
            raise SuiteError(
                f"suite {path} has no scale '{scale}'; available: {', '.join(['default', *scales])}"
            )
        suite = deep_merge(suite, scales[scale])
    suite["_path"] = str(path)
    suite["_scale"] = scale or "default"
    suite["metrics"] = suite.get("metrics") or {}
    check_names(suite, path)
    _check_metric_names(suite, path)
    _check_image_sizes(suite, path)
    add_seed_experiments(suite)
    return suite


def check_name(name: Any, where: str) -> str:
    """``name`` if it is a safe path segment (:data:`SAFE_NAME`), else a :class:`SuiteError` naming ``where``."""
    if not isinstance(name, str) or not SAFE_NAME.fullmatch(name):
        raise SuiteError(f"{where}: name {name!r} is not allowed: names become file and folder names, so use only "
                         f"letters, digits, '_' and '-', starting with a letter or digit")
    return name


def check_names(suite: dict, path: str | Path) -> None:
    """Every name a suite defines or refers to that becomes part of a path (:data:`NAMED_SECTIONS`, the experiments
    and methods of tables, figures and experiments, the datasets, networks and sigma_l runs they name, checkpoint
    extensions) is a :data:`SAFE_NAME`; the workflow and every ``cfx`` command load suites through here."""
    for section in NAMED_SECTIONS:
        entries = suite.get(section) or {}
        if not isinstance(entries, dict):
            raise SuiteError(f"{path}: section '{section}' must be a mapping of names to entries")
        for name in entries:
            check_name(name, f"{path}: {section}")
    for name, entry in (suite.get("checkpoints") or {}).items():
        ext = str((entry or {}).get("ext") or "pt")
        if not SAFE_EXTENSION.fullmatch(ext):
            raise SuiteError(f"{path}: checkpoints: {name}: ext {ext!r} is not allowed (lower-case letters and digits, "
                             f"dot-separated, e.g. pt or pth.tar)")
    for section, keys in (("models", ("dataset", "init")), ("methods", ("classifier", "diffae", "ldm"))):
        for name, entry in (suite.get(section) or {}).items():
            for key in keys:
                if isinstance(entry, dict) and isinstance(entry.get(key), str):
                    check_name(entry[key], f"{path}: {section}: {name}: {key}")
    for name, experiment in (suite.get("experiments") or {}).items():
        for key in ("dataset", "classifier", "ddpm"):
            if (experiment or {}).get(key) is not None:
                check_name(experiment[key], f"{path}: experiments: {name}: {key}")
        for method in (experiment or {}).get("methods") or []:
            check_name(method, f"{path}: experiments: {name}: methods")
    for name, table in (suite.get("tables") or {}).items():
        for experiment in ((table or {}).get("tasks") or {}).values():
            check_name(experiment, f"{path}: tables: {name}: tasks")
        for method in (table or {}).get("methods") or []:
            check_name(method, f"{path}: tables: {name}: methods")
    for experiment, methods in (suite.get("figures") or {}).items():
        for method in methods or []:
            check_name(method, f"{path}: figures: {experiment}")
    for experiment in ((suite.get("metrics") or {}).get("sigma_l") or {}).get("experiments") or []:
        check_name(experiment, f"{path}: metrics: sigma_l: experiments")


def _check_metric_names(suite: dict, path: Path) -> None:
    from cfx.metrics import METRICS

    named = [(f"metrics: {name}", name) for name in suite["metrics"]]
    named += [(f"tables: {table}: metrics", name) for table, spec in (suite.get("tables") or {}).items()
              for name in (spec or {}).get("metrics", [])]
    for where, name in named:
        if name not in METRICS:
            raise SuiteError(f"{path}: {where} names unknown metric '{name}'; known: {', '.join(sorted(METRICS))}")


def _check_image_sizes(suite: dict, path: Path) -> None:
    """Each experiment's ``image_size`` fits its dataset's layout (:func:`cfx.data.layouts.image_shape`: square for
    CelebA, CelebA-HQ, ImageNet and CheXpert, an int or [H, W] for BDD100k and BDD-OIA); layouts generation cannot
    read yet are left to the run. A BDD-OIA experiment's ``query_label`` is one of its four actions, a CheXpert
    experiment's one of the 14 outputs of GCD's classifier."""
    from cfx.data.layouts import (
        ACTION_LAYOUTS,
        BDD_OIA_ACTIONS,
        FINDING_LAYOUTS,
        GCD_CHEXPERT_OUTPUTS,
        IMAGE_LAYOUTS,
        image_shape,
    )

    for name, experiment in (suite.get("experiments") or {}).items():
        layout = ((suite.get("datasets") or {}).get(experiment.get("dataset")) or {}).get("layout")
        query = experiment.get("query_label")
        if layout in ACTION_LAYOUTS and isinstance(query, int) and not 0 <= query < len(BDD_OIA_ACTIONS):
            raise SuiteError(f"{path}: experiment '{name}': query_label {query} is not a BDD-OIA action (0..3: "
                             f"{', '.join(BDD_OIA_ACTIONS)})")
        if layout in FINDING_LAYOUTS and isinstance(query, int) and not 0 <= query < len(GCD_CHEXPERT_OUTPUTS):
            raise SuiteError(f"{path}: experiment '{name}': query_label {query} is not an output of GCD's CheXpert "
                             f"classifier (0..13: {', '.join(GCD_CHEXPERT_OUTPUTS)})")
        if layout in IMAGE_LAYOUTS and "image_size" in experiment:
            try:
                image_shape(layout, experiment["image_size"])
            except ValueError as err:
                raise SuiteError(f"{path}: experiment '{name}': {err}") from err


def seed_experiment_name(experiment: str, seed: int) -> str:
    return f"{experiment}_seed{seed}"


def add_seed_experiments(suite: dict) -> None:
    """Add the extra-seed runs σ_L needs (``metrics.sigma_l``: ``seeds``, ``experiments``, ``max_images``) as
    experiments ``{experiment}_seed{s}``: the same settings with another seed and at most ``max_images``."""
    spec = (suite.get("metrics") or {}).get("sigma_l") or {}
    for experiment in spec.get("experiments", []):
        base = section_entry(suite, "experiments", experiment)
        for seed in spec.get("seeds", []):
            derived = copy.deepcopy(base)
            derived["seed"] = int(seed)
            if spec.get("max_images"):
                derived["max_images"] = min(int(spec["max_images"]), int(base.get("max_images") or spec["max_images"]))
            derived["seed_run_of"] = experiment
            suite["experiments"][seed_experiment_name(experiment, seed)] = derived


def seed_trees(suite: dict, experiment: str) -> list[str]:
    """Experiments holding the extra-seed runs of ``experiment`` (empty when σ_L does not cover it)."""
    spec = (suite.get("metrics") or {}).get("sigma_l") or {}
    if experiment not in spec.get("experiments", []):
        return []
    return [seed_experiment_name(experiment, s) for s in spec.get("seeds", [])]


def network_checkpoint(suite: dict, name: str) -> str:
    """The checkpoint file of network ``name``: the published file ``resources/checkpoints/NAME.EXT`` when the
    suite's ``checkpoints:`` registry names it (downloaded, never trained), else ``resources/checkpoints/NAME.pt``
    (a network trained here)."""
    from cfx.runtime.download import checkpoint_filename

    registry = suite.get("checkpoints") or {}
    if name in registry:
        return f"resources/checkpoints/{checkpoint_filename(name, registry[name])}"
    return f"resources/checkpoints/{name}.pt"


def _named_network(suite: dict, name: str) -> dict[str, Any]:
    """A network a metric names: a ``models:`` entry, or else a registry checkpoint used as it is published (its
    spec is ``{kind: <the registry's loader>}``, e.g. ``steex_oracle``, ``vggface2``, ``inception``)."""
    models = suite.get("models") or {}
    registry = suite.get("checkpoints") or {}
    if name not in models and name in registry:
        spec = {"kind": registry[name]["loader"]}
    else:
        spec = section_entry(suite, "models", name)
    return {"name": name, "checkpoint": network_checkpoint(suite, name), "spec": spec}


def _network(suite: dict, value: str | dict, inline_name: str) -> dict[str, Any]:
    """A network named by a string (:func:`_named_network`) or given inline as a mapping (no checkpoint)."""
    if isinstance(value, str):
        return _named_network(suite, value)
    return {"name": inline_name, "checkpoint": None, "spec": dict(value)}


def metric_networks(suite: dict, metric: str, experiment: str, method: str | None = None) -> dict[str, dict[str, Any]]:
    """Networks of a metric by role: ``{role: {"name", "checkpoint" (or None), "spec"}}``. A string in
    ``metrics.<metric>.networks`` names a ``models:`` entry or a ``checkpoints:`` registry entry (checkpoint:
    :func:`network_checkpoint`), a mapping is an inline network without checkpoint;
    ``metrics.<metric>.datasets.<the experiment's dataset>.networks`` replaces roles for that dataset (DiME's oracle
    on CelebA, STEEX's on CelebA-HQ); COUT's ``classifier`` is the classifier ``method`` explains: its own
    (``methods.<method>.classifier``, SVCE's robust network) or the experiment's."""
    spec = (suite.get("metrics") or {}).get(metric) or {}
    dataset = ((suite.get("experiments") or {}).get(experiment) or {}).get("dataset")
    per_dataset = ((spec.get("datasets") or {}).get(dataset) or {}).get("networks") or {}
    roles = {**(spec.get("networks") or {}), **per_dataset}
    networks: dict[str, dict[str, Any]] = {}
    for role, value in roles.items():
        networks[role] = _network(suite, value, f"{metric}.{role}")
    if metric == "cout":
        own = (suite.get("methods") or {}).get(method, {}).get("classifier") if method else None
        name = own or section_entry(suite, "experiments", experiment)["classifier"]
        networks.setdefault("classifier", _named_network(suite, name))
    return networks


def method_network(suite: dict, method: str, key: str) -> dict[str, Any] | None:
    """A network a method's suite entry names under ``key`` (GCD's ``lpips``), as :func:`metric_networks` gives
    them: a string names a ``models:`` entry or a ``checkpoints:`` registry entry (e.g. ``torchvision_vgg16``, spec
    ``{kind: lpips_vgg}``, checkpoint ``resources/checkpoints/torchvision_vgg16.pth``, downloaded), a mapping is an
    inline network without checkpoint (e.g. ``{kind: lpips_random, seed: 0}``); None when the key is absent."""
    value = section_entry(suite, "methods", method).get(key)
    return None if value is None else _network(suite, value, f"{method}.{key}")


def resolved_method_spec(suite: dict, method: str, experiment: str | None = None) -> dict[str, Any]:
    """A method's settings for ``experiment`` (:func:`method_settings`) with its named networks (``lpips``) replaced
    by their specs, as the cfx steps take them; their files are :func:`method_network`'s ``checkpoint``."""
    spec = copy.deepcopy(method_settings(suite, method, experiment))
    network = method_network(suite, method, "lpips")
    if network is not None:
        spec["lpips"] = network["spec"]
    return spec


def section_entry(suite: dict, section: str, name: str) -> dict:
    """Look up ``suite[section][name]`` or raise a SuiteError naming the file and the known names."""
    entries = suite.get(section) or {}
    if name not in entries:
        known = ", ".join(sorted(entries)) or "none"
        raise SuiteError(f"{section[:-1]} '{name}' is not defined in {suite.get('_path')}; known: {known}")
    return entries[name]


def experiment_layout(suite: dict, experiment: str) -> str:
    """The on-disk layout (``datasets.<dataset>.layout``) of an experiment's dataset: which transform reads its
    images (:class:`cfx.data.index_dataset.IndexDataset`)."""
    dataset = section_entry(suite, "experiments", experiment)["dataset"]
    return str(section_entry(suite, "datasets", dataset).get("layout", "celeba"))


def experiment_methods(suite: dict) -> list[tuple[str, str]]:
    """All (experiment, method) pairs the suite generates."""
    return [(exp, m) for exp, spec in suite["experiments"].items() for m in spec.get("methods", [])]


def table_pairs(suite: dict, table: str) -> list[tuple[str, str]]:
    """(experiment, method) pairs a table needs."""
    spec = section_entry(suite, "tables", table)
    return [(exp, m) for exp in spec["tasks"].values() for m in spec["methods"]]


def method_settings(suite: dict, method: str, experiment: str | None = None) -> dict:
    """``methods.<method>`` with ``methods.<method>.datasets.<the experiment's dataset>`` deep-merged over it (the
    upstream script of each method x dataset pair, e.g. ACE's celeba-attack.sh vs celebahq-attack.sh) and the
    ``datasets`` key itself removed, so one dataset's settings never change another's job parameters; then the
    experiment's own ``method_settings.<method>`` (LDCE's Table 1 and Table 2 runs differ on the same dataset)."""
    spec = section_entry(suite, "methods", method)
    base = {k: v for k, v in spec.items() if k != "datasets"}
    if experiment is None:
        return base
    entry = section_entry(suite, "experiments", experiment)
    merged = deep_merge(base, (spec.get("datasets") or {}).get(entry["dataset"]) or {})
    return deep_merge(merged, (entry.get("method_settings") or {}).get(method) or {})


def class_targets(experiment: dict[str, Any]) -> dict[int, int] | None:
    """An experiment's ``class_targets`` (source class → target class, ImageNet class indices in sorted-wnid order)
    with integer keys, or None for a binary ``query_label`` experiment."""
    table = experiment.get("class_targets")
    if not table:
        return None
    return {int(source): int(target) for source, target in table.items()}


def image_targets_file(experiment: dict[str, Any]) -> str | None:
    """The upstream data file an experiment's ``image_targets`` reads (a generation input, relative to the workflow):
    LDCE's per-image target lists (rules fetch_ldce_targets, fetch_ldce_pets, fetch_ldce_flowers) or, for SVCE's
    WordNet clusters, ``imagenet_class_index.json`` of the hierarchy folder (rule fetch_svce_hierarchy; generation
    reads the folder); None without image_targets."""
    from cfx.data.ldce_targets import IMAGE_TARGET_FILES
    from cfx.data.wordnet import SVCE_CLUSTER_TARGETS, SVCE_HIERARCHY_DIR

    kind = experiment.get("image_targets")
    if not kind:
        return None
    if kind == SVCE_CLUSTER_TARGETS:
        return f"{SVCE_HIERARCHY_DIR}/imagenet_class_index.json"
    if kind not in IMAGE_TARGET_FILES:
        known = ", ".join([*IMAGE_TARGET_FILES, SVCE_CLUSTER_TARGETS])
        raise SuiteError(f"unknown image_targets '{kind}'; known: {known}")
    return IMAGE_TARGET_FILES[kind]
