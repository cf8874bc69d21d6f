"""Paper tables from metric JSON files: a long CSV with provenance, and wide Markdown / LaTeX views.

Tables are defined as data in the suite files (``tables:``): the methods (rows), the tasks (name →
experiment) and the metrics (columns). The best value per column is bold, by each metric's
``higher_is_better``.
"""

from __future__ import annotations

import json
import math
import subprocess
from pathlib import Path
from typing import Any

import pandas as pd

from cfx.metrics import metric_metadata
from cfx.runtime.files import write_text_atomic

CSV_COLUMNS = [
    "table", "task", "experiment", "method", "metric", "value", "unit", "higher_is_better", "n",
    "flip_rate", "published", "difference", "published_source", "stand_ins", "not_applicable", "suite", "scale",
    "commit",
]


def git_commit(cwd: Path | None = None) -> str:
    """Short commit of the working tree (``+dirty`` when it has changes), or ``unknown`` outside git."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=cwd, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd, capture_output=True, text=True
        ).stdout.strip()
        return commit + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _published(spec: dict, task: str, method: str, metric: str) -> tuple[float | None, str]:
    entry = (spec.get("published") or {}).get(task, {}).get(method, {}).get(metric)
    if entry is None:
        return None, ""
    if isinstance(entry, dict):
        return float(entry["value"]), str(entry.get("source", ""))
    return float(entry), str(spec.get("published_source", ""))


def table_rows(
    table: str, spec: dict, metrics: dict[tuple[str, str, str], dict], merged: dict[tuple[str, str], dict],
    *, suite: str, scale: str, commit: str,
) -> pd.DataFrame:
    """One row per (task, method, metric) in the table's order."""
    rows = []
    for task, experiment in spec["tasks"].items():
        for method in spec["methods"]:
            for metric in spec["metrics"]:
                result = metrics[(experiment, method, metric)]
                meta = metric_metadata(metric)
                published, source = _published(spec, task, method, metric)
                value = float("nan") if result.get("value") is None else float(result["value"])
                rows.append({
                    "table": table,
                    "task": task,
                    "experiment": experiment,
                    "method": method,
                    "metric": metric,
                    "value": value,
                    "unit": meta.unit,
                    "higher_is_better": meta.higher_is_better,
                    "n": int(result.get("n", merged[(experiment, method)]["n"])),
                    "flip_rate": round(100.0 * merged[(experiment, method)]["flip_rate"], 4),
                    "published": published,
                    "difference": None if published is None or math.isnan(value) else value - published,
                    "published_source": source if published is not None else "no published value known",
                    "stand_ins": result.get("metadata", {}).get("stand_in", "") or "",
                    "not_applicable": result.get("not_applicable", ""),
                    "suite": suite,
                    "scale": scale,
                    "commit": commit,
                })
    return pd.DataFrame(rows, columns=CSV_COLUMNS)


def _fmt(value: float) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:.2f}" if abs(value) >= 1 else f"{value:.4f}"


def wide_view(df: pd.DataFrame) -> tuple[list[str], list[list[str]], list[list[bool]]]:
    """Header, cell strings and bold flags of the methods × (task, metric) view."""
    columns = list(dict.fromkeys(zip(df["task"], df["metric"], strict=True)))
    methods = list(dict.fromkeys(df["method"]))
    header = ["method"] + [f"{task} {metric}" for task, metric in columns]
    cells, bold = [], []
    best = {}
    for task, metric in columns:
        sub = df[(df["task"] == task) & (df["metric"] == metric)]
        hib = bool(sub["higher_is_better"].iloc[0])
        best[(task, metric)] = sub["value"].max() if hib else sub["value"].min()  # NaN (n/a) skipped
    for method in methods:
        row, row_bold = [method], [False]
        for task, metric in columns:
            value = df[(df["method"] == method) & (df["task"] == task) & (df["metric"] == metric)]["value"].iloc[0]
            row.append(_fmt(value))
            row_bold.append(len(methods) > 1 and value == best[(task, metric)])
        cells.append(row)
        bold.append(row_bold)
    return header, cells, bold


def to_markdown(df: pd.DataFrame, title: str) -> str:
    header, cells, bold = wide_view(df)
    lines = [f"**{title}**", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row, flags in zip(cells, bold, strict=True):
        lines.append("| " + " | ".join(f"**{c}**" if b else c for c, b in zip(row, flags, strict=True)) + " |")
    meta = df.iloc[0]
    lines += ["", f"suite {meta['suite']} ({meta['scale']}), commit {meta['commit']}, n per task: "
              + ", ".join(f"{t}={n}" for t, n in df.groupby("task", sort=False)["n"].first().items())]
    stand_ins = sorted({s for s in df["stand_ins"] if s})
    if stand_ins:
        lines.append("stand-ins: " + "; ".join(stand_ins))
    for _, row in df[df["not_applicable"].astype(bool)].iterrows():
        lines.append(f"n/a: {row['task']} {row['method']} {row['metric']}: {row['not_applicable']}")
    return "\n".join(lines) + "\n"


def _tex_escape(text: str) -> str:
    for char in ("_", "%", "&", "#"):
        text = text.replace(char, "\\" + char)
    return text


def to_latex(df: pd.DataFrame, title: str) -> str:
    header, cells, bold = wide_view(df)
    lines = [
        "% generated by cfx; requires \\usepackage{booktabs}",
        "\\begin{table}[t]", "\\centering", f"\\caption{{{_tex_escape(title)}}}",
        "\\begin{tabular}{l" + "r" * (len(header) - 1) + "}", "\\toprule",
        " & ".join(_tex_escape(h) for h in header) + " \\\\", "\\midrule",
    ]
    for row, flags in zip(cells, bold, strict=True):
        lines.append(" & ".join(
            f"\\textbf{{{_tex_escape(c)}}}" if b else _tex_escape(c) for c, b in zip(row, flags, strict=True)
        ) + " \\\\")
    lines += ["\\bottomrule", "\\end{tabular}", "\\end{table}"]
    return "\n".join(lines) + "\n"


def build_table(
    table: str, spec: dict[str, Any], *, metric_files: list[Path], merged_files: list[Path], out_csv: Path,
    suite: str, scale: str = "default",
) -> pd.DataFrame:
    """Write ``out_csv`` and its ``.md`` / ``.tex`` siblings from the metric and merge JSON files."""
    metrics = {}
    for path in metric_files:
        data = json.loads(Path(path).read_text())
        experiment = Path(path).parent.parent.name
        metrics[(experiment, data["method"], data["metric"])] = data
    merged = {}
    for path in merged_files:
        data = json.loads(Path(path).read_text())
        merged[(Path(path).parent.name, data["method"])] = data
    df = table_rows(table, spec, metrics, merged, suite=suite, scale=scale, commit=git_commit())
    out_csv = Path(out_csv)
    write_text_atomic(out_csv, df.to_csv(index=False))
    write_text_atomic(out_csv.with_suffix(".md"), to_markdown(df, spec["title"]))
    write_text_atomic(out_csv.with_suffix(".tex"), to_latex(df, spec["title"]))
    return df
