"""Suite files (workflow/suites/*.yaml): loading, scale overrides and lookups with clear errors."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

SUITE_SECTIONS = ("datasets", "models", "methods", "experiments", "tables")


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
    return suite


def section_entry(suite: dict, section: str, name: str) -> dict:
    """Look up ``suite[section][name]`` or raise a SuiteError naming the file and the known names."""
    entries = suite.get(section) or {}
    if name not in entries:
        known = ", ".join(sorted(entries)) or "none"
        raise SuiteError(f"{section[:-1]} '{name}' is not defined in {suite.get('_path')}; known: {known}")
    return entries[name]


def experiment_methods(suite: dict) -> list[tuple[str, str]]:
    """All (experiment, method) pairs the suite generates."""
    return [(exp, m) for exp, spec in suite["experiments"].items() for m in spec.get("methods", [])]


def table_pairs(suite: dict, table: str) -> list[tuple[str, str]]:
    """(experiment, method) pairs a table needs."""
    spec = section_entry(suite, "tables", table)
    return [(exp, m) for exp in spec["tasks"].values() for m in spec["methods"]]
