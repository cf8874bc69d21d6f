"""Tables: long CSV with provenance, wide Markdown/LaTeX with the best value per column in bold."""

import json
from pathlib import Path

import pandas as pd
import pytest

from cfx.metrics.flip_rate import flip_rate
from cfx.tables import CSV_COLUMNS, build_table

SPEC = {
    "title": "Test table",
    "methods": ["dime", "ace"],
    "tasks": {"smile": "celeba_smile", "age": "celeba_young"},
    "metrics": ["flip_rate"],
    "published": {"smile": {"dime": {"flip_rate": {"value": 97.2, "source": "ACE paper Table 1"}}}},
}
VALUES = {("celeba_smile", "dime"): 90.0, ("celeba_smile", "ace"): 95.0,
          ("celeba_young", "dime"): 80.0, ("celeba_young", "ace"): 70.0}


def _write_inputs(root: Path) -> tuple[list[Path], list[Path]]:
    metric_files, merged_files = [], []
    for (experiment, method), value in VALUES.items():
        path = root / "metrics" / experiment / method / "flip_rate.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"metric": "flip_rate", "method": method, "value": value, "n": 10,
                                    "metadata": {"stand_in": ""}}))
        metric_files.append(path)
        merged = root / "cf" / experiment / f"{method}.merged.json"
        merged.parent.mkdir(parents=True, exist_ok=True)
        merged.write_text(json.dumps({"method": method, "n": 10, "flip_rate": value / 100}))
        merged_files.append(merged)
    return metric_files, merged_files


def test_build_table_writes_csv_md_tex(tmp_path):
    metric_files, merged_files = _write_inputs(tmp_path)
    out = tmp_path / "tables" / "t.csv"
    build_table("t", SPEC, metric_files=metric_files, merged_files=merged_files, out_csv=out, suite="mini")
    df = pd.read_csv(out)
    assert list(df.columns) == CSV_COLUMNS
    assert len(df) == 4
    row = df[(df.task == "smile") & (df.method == "dime")].iloc[0]
    assert row.value == 90.0 and row.published == 97.2
    assert row.difference == pytest.approx(90.0 - 97.2)
    assert row.published_source == "ACE paper Table 1"
    other = df[(df.task == "age") & (df.method == "ace")].iloc[0]
    assert pd.isna(other.published) and other.published_source == "no published value known"
    assert set(df.suite) == {"mini"} and (df.n == 10).all()
    md = out.with_suffix(".md").read_text()
    # best flip rate per column is bold: ace on smile (95), dime on age (80)
    assert "| dime | 90.00 | **80.00** |" in md
    assert "| ace | **95.00** | 70.00 |" in md
    tex = out.with_suffix(".tex").read_text()
    assert "\\toprule" in tex and "\\textbf{95.00}" in tex and "\\textbf{80.00}" in tex


def test_flip_rate_reference():
    assert flip_rate([1, 0, 1, 1], [1, 1, 1, 0]) == pytest.approx(50.0)
    assert flip_rate([], []) == 0.0
    with pytest.raises(ValueError):
        flip_rate([1], [1, 0])


def test_not_applicable_and_lower_is_better(tmp_path):
    """A metric with no instances to read is n/a with its reason; MNAC (lower is better) bolds the minimum."""
    from cfx.io.tree import OutputTree
    from cfx.metrics import MetricContext, compute_tree_metric

    tree = OutputTree(tmp_path / "cf" / "celeba_smile", "dime")
    tree.prepare()  # no instance at all: nothing to read
    na = compute_tree_metric("mnac", tree_root=tree.root, method="dime", ctx=MetricContext())
    assert na["value"] is None and "found no instances" in na["not_applicable"]
    spec = {"title": "MNAC", "methods": ["dime", "ace", "gcd"], "tasks": {"smile": "celeba_smile"},
            "metrics": ["mnac"]}
    metric_files, merged_files = [], []
    for method, result in (("dime", na), ("ace", {"value": 3.5, "n": 4}), ("gcd", {"value": 2.0, "n": 4})):
        path = tmp_path / "metrics" / "celeba_smile" / method / "mnac.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"metric": "mnac", "method": method, **result}))
        metric_files.append(path)
        merged = tmp_path / "cf" / "celeba_smile" / f"{method}.merged.json"
        merged.write_text(json.dumps({"method": method, "n": 4, "flip_rate": 0.5}))
        merged_files.append(merged)
    out = tmp_path / "tables" / "t.csv"
    df = build_table("t", spec, metric_files=metric_files, merged_files=merged_files, out_csv=out, suite="mini")
    assert pd.isna(df.iloc[0].value) and "found no instances" in df.iloc[0].not_applicable
    md = out.with_suffix(".md").read_text()
    assert "| dime | n/a |" in md and "| ace | 3.50 |" in md and "| gcd | **2.00** |" in md
    assert "n/a: smile dime mnac:" in md


def test_table_figure_png(tmp_path):
    from PIL import Image

    from cfx.figures import table_figure

    metric_files, merged_files = _write_inputs(tmp_path)
    out = tmp_path / "tables" / "t.csv"
    build_table("t", SPEC, metric_files=metric_files, merged_files=merged_files, out_csv=out, suite="mini")
    png = table_figure(out, tmp_path / "fig" / "t.png", title="Test table")
    with Image.open(png) as image:
        assert image.format == "PNG" and image.size[0] >= 300
    assert not list((tmp_path / "fig").glob(".*tmp*"))


def test_table_figure_all_cells_not_applicable(tmp_path):
    """A table whose every cell is n/a still gets a figure (no bars, so no legend) instead of a crash."""
    from PIL import Image

    from cfx.figures import table_figure

    spec = {"title": "all n/a", "methods": ["dime", "ace"], "tasks": {"smile": "celeba_smile"}, "metrics": ["fva"]}
    metric_files, merged_files = [], []
    for method in ("dime", "ace"):
        path = tmp_path / "metrics" / "celeba_smile" / method / "fva.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"metric": "fva", "method": method, "value": None, "n": 0,
                                    "not_applicable": "no successful counterfactual"}))
        metric_files.append(path)
        merged = tmp_path / "cf" / "celeba_smile" / f"{method}.merged.json"
        merged.parent.mkdir(parents=True, exist_ok=True)
        merged.write_text(json.dumps({"method": method, "n": 4, "flip_rate": 0.0}))
        merged_files.append(merged)
    out = tmp_path / "tables" / "t.csv"
    build_table("t", spec, metric_files=metric_files, merged_files=merged_files, out_csv=out, suite="mini")
    png = table_figure(out, tmp_path / "fig" / "t.png")
    with Image.open(png) as image:
        assert image.format == "PNG"
