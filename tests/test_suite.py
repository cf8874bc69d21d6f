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
    assert {e: s["query_label"] for e, s in full["experiments"].items()} == {
        "celeba_smile": 31, "celeba_young": 39, "celeba_smile_seed5": 31, "celeba_smile_seed6": 31}
    assert table_pairs(full, "table1") == [(e, m) for e in ("celeba_smile", "celeba_young")
                                           for m in ("dime", "ace", "svce", "ldce", "gcd")]
    # LDCE's LDM: both stages shrink at CI scale, the conditioning classes stay those of the full suite
    for stage in ("autoencoder", "diffusion"):
        assert ci["models"]["mini_ldm"]["train"][stage]["steps"] < full["models"]["mini_ldm"]["train"][stage]["steps"]
    assert ci["methods"]["ldce"]["conditioning"] == full["models"]["mini_ldm"]["train"]["classes"]


def test_schema_needs_exactly_one_task_kind_per_experiment():
    """An experiment is a binary query (query_label) or class pairs (class_targets, ImageNet indices), never both
    or neither; the paper suite (with its ImageNet pairs) is valid."""
    schema = yaml.safe_load((ROOT / "workflow/schemas/suite.schema.yaml").read_text())
    paper = {k: v for k, v in load_suite(ROOT / "workflow/suites/paper.yaml").items() if not k.startswith("_")}
    jsonschema.validate(paper, schema)
    base = {"dataset": "imagenet", "split": "val", "image_size": 256, "classifier": "c", "methods": ["ace"]}
    jsonschema.validate({**paper, "experiments": {"pair": {**base, "class_targets": {"340": 339}}}}, schema)
    for bad in (base, {**base, "query_label": 31, "class_targets": {"340": 339}},
                {**base, "class_targets": {"340": 1000}}, {**base, "class_targets": {"zebra": 339}}):
        with pytest.raises(jsonschema.ValidationError, match="pair|340|zebra|1000|oneOf|valid under"):
            jsonschema.validate({**paper, "experiments": {"pair": bad}}, schema)


def test_unknown_names_give_clear_errors(tmp_path):
    suite = load_suite(ROOT / "workflow/suites/mini.yaml")
    with pytest.raises(SuiteError, match="experiment 'nope' is not defined.*known: celeba_smile, celeba_smile_seed5"):
        section_entry(suite, "experiments", "nope")
    with pytest.raises(SuiteError, match="has no scale 'huge'"):
        load_suite(ROOT / "workflow/suites/mini.yaml", "huge")
    with pytest.raises(SuiteError, match="does not exist"):
        load_suite(tmp_path / "missing.yaml")


def test_sigma_l_seed_runs_and_metric_networks():
    from cfx.suite import metric_networks, seed_trees

    suite = load_suite(ROOT / "workflow/suites/mini.yaml")
    base = suite["experiments"]["celeba_smile"]
    derived = suite["experiments"]["celeba_smile_seed5"]
    assert derived["seed"] == 5 and derived["max_images"] == 8 and derived["seed_run_of"] == "celeba_smile"
    assert {k: v for k, v in derived.items() if k not in ("seed", "max_images", "seed_run_of")} == {
        k: v for k, v in base.items() if k != "max_images"}
    assert seed_trees(suite, "celeba_smile") == ["celeba_smile_seed5", "celeba_smile_seed6"]
    assert seed_trees(suite, "celeba_young") == []
    assert metric_networks(suite, "mnac", "celeba_smile") == {"oracle": {
        "name": "mini_oracle", "checkpoint": "resources/checkpoints/mini_oracle.pt",
        "spec": suite["models"]["mini_oracle"]}}
    assert metric_networks(suite, "cout", "celeba_young")["classifier"]["name"] == "mini_classifier"
    # COUT reads the classifier a method explains: SVCE's robust network
    assert metric_networks(suite, "cout", "celeba_young", "svce")["classifier"]["name"] == "mini_robust_classifier"
    assert metric_networks(suite, "cout", "celeba_young", "dime")["classifier"]["name"] == "mini_classifier"
    assert metric_networks(suite, "sigma_l", "celeba_smile")["lpips"]["checkpoint"] is None
    assert load_suite(ROOT / "workflow/suites/mini.yaml", "ci")["experiments"]["celeba_smile_seed6"]["max_images"] == 2


def test_unknown_metric_in_suite_is_named(tmp_path):
    spec = yaml.safe_load((ROOT / "workflow/suites/mini.yaml").read_text())
    spec["tables"]["table1"]["metrics"].append("fidd")
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(spec))
    with pytest.raises(SuiteError, match="tables: table1: metrics names unknown metric 'fidd'"):
        load_suite(path)
