"""Suite files: scale overrides, lookups with clear errors, the shipped mini suite against its schema."""

from pathlib import Path

import jsonschema
import pytest
import yaml

from cfx.suite import SuiteError, deep_merge, load_suite, section_entry, table_pairs

ROOT = Path(__file__).resolve().parent.parent


def test_deep_merge_overrides_nested_only():
    base = {"a": {"b": 1, "c": 2}, "d": [1, 2]}
    assert deep_merge(base, {"a": {"b": 5}, "d": [3]}) == {"a": {"b": 5, "c": 2}, "d": [3]}
    assert base == {"a": {"b": 1, "c": 2}, "d": [1, 2]}


def test_mini_suite_valid_and_ci_scale_smaller():
    schema = yaml.safe_load((ROOT / "workflow/schemas/suite.schema.yaml").read_text())
    full = load_suite(ROOT / "workflow/suites/mini.yaml")
    ci = load_suite(ROOT / "workflow/suites/mini.yaml", "ci")
    for suite in (full, ci):
        jsonschema.validate(suite, schema)
    assert ci["models"]["mini_ddpm"]["train"]["steps"] < full["models"]["mini_ddpm"]["train"]["steps"]
    assert ci["models"]["mini_ddpm"]["train"]["lr"] == full["models"]["mini_ddpm"]["train"]["lr"]
    assert {e: s["query_label"] for e, s in full["experiments"].items()} == {"celeba_smile": 31, "celeba_young": 39}
    assert table_pairs(full, "table1") == [("celeba_smile", "dime"), ("celeba_smile", "ace"),
                                           ("celeba_young", "dime"), ("celeba_young", "ace")]


def test_unknown_names_give_clear_errors(tmp_path):
    suite = load_suite(ROOT / "workflow/suites/mini.yaml")
    with pytest.raises(SuiteError, match="experiment 'nope' is not defined.*known: celeba_smile, celeba_young"):
        section_entry(suite, "experiments", "nope")
    with pytest.raises(SuiteError, match="has no scale 'huge'"):
        load_suite(ROOT / "workflow/suites/mini.yaml", "huge")
    with pytest.raises(SuiteError, match="does not exist"):
        load_suite(tmp_path / "missing.yaml")
