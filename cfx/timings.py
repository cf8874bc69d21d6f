"""Where a workflow run's time goes: the per-job ``benchmark:`` files of every rule, summed per rule.

Every rule writes Snakemake's benchmark file ``results/benchmarks/<rule>/<job>.tsv`` (one line: wall seconds ``s``,
``cpu_time``, ``max_rss`` in MB, ``mean_load``, ...). :func:`read_benchmarks` reads them all, :func:`summarise`
gives per rule the jobs, wall and CPU seconds, peak memory and each rule's share of the summed wall time, and
:func:`timings_figure` draws it. ``cfx timings`` runs the three after a run. Jobs that ran side by side overlap, so
the summed wall time exceeds the run's elapsed time; the share says where the work is, not the critical path.
Torch-free.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from cfx.runtime.files import atomic_path

DEFAULT_BENCHMARKS = Path("results/benchmarks")
COLUMNS = ["rule", "job", "wall_s", "cpu_s", "max_rss_mb", "mean_load"]


def read_benchmarks(root: str | Path = DEFAULT_BENCHMARKS) -> pd.DataFrame:
    """One row per benchmark file under ``root``: its rule (the first folder), job (the rest of the path), wall and
    CPU seconds, peak resident memory and mean CPU load; the last line of a file counts (``repeat`` writes more).
    A file that is not a Snakemake benchmark table is an error naming it."""
    root = Path(root)
    rows = []
    for path in sorted(root.rglob("*.tsv")):
        relative = path.relative_to(root)
        if len(relative.parts) < 2:
            continue
        try:
            table = pd.read_csv(path, sep="\t")
            last = table.iloc[-1]
            rows.append({"rule": relative.parts[0], "job": str(Path(*relative.parts[1:]).with_suffix("")),
                         "wall_s": float(last["s"]), "cpu_s": float(pd.to_numeric(last.get("cpu_time"),
                                                                                  errors="coerce")),
                         "max_rss_mb": float(pd.to_numeric(last.get("max_rss"), errors="coerce")),
                         "mean_load": float(pd.to_numeric(last.get("mean_load"), errors="coerce"))})
        except (KeyError, IndexError, ValueError, pd.errors.ParserError) as err:
            raise ValueError(f"{path} is not a Snakemake benchmark file (expected columns s, cpu_time, max_rss): "
                             f"{err}") from err
    return pd.DataFrame(rows, columns=COLUMNS)


def summarise(jobs: pd.DataFrame) -> pd.DataFrame:
    """Per rule, most wall time first: jobs, wall and CPU seconds (sums), the longest job, peak memory (MB), the
    rule's share of all jobs' wall seconds (%), and a total row."""
    if jobs.empty:
        raise ValueError("no benchmark files: run the workflow first (every rule writes results/benchmarks/...)")
    grouped = jobs.groupby("rule")
    summary = pd.DataFrame({
        "jobs": grouped.size(),
        "wall_s": grouped["wall_s"].sum(),
        "cpu_s": grouped["cpu_s"].sum(min_count=1),
        "longest_job_s": grouped["wall_s"].max(),
        "max_rss_mb": grouped["max_rss_mb"].max(),
    }).sort_values("wall_s", ascending=False)
    total_wall = float(summary["wall_s"].sum())
    summary["share_pct"] = 100.0 * summary["wall_s"] / total_wall if total_wall > 0 else 0.0
    total = pd.DataFrame({"jobs": [int(summary["jobs"].sum())], "wall_s": [total_wall],
                          "cpu_s": [float(summary["cpu_s"].sum())], "longest_job_s": [float(jobs["wall_s"].max())],
                          "max_rss_mb": [float(summary["max_rss_mb"].max())], "share_pct": [100.0]}, index=["total"])
    return pd.concat([summary, total]).rename_axis("rule").reset_index().round(
        {"wall_s": 1, "cpu_s": 1, "longest_job_s": 1, "max_rss_mb": 0, "share_pct": 1})


def timings_figure(summary: pd.DataFrame, out_path: str | Path, title: str = "") -> Path:
    """A horizontal bar per rule: wall seconds (bar) and CPU seconds (marker), labelled with jobs and share."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rules = summary[summary["rule"] != "total"].iloc[::-1]
    fig, ax = plt.subplots(figsize=(7, 0.35 * len(rules) + 1.2))
    ax.barh(rules["rule"], rules["wall_s"], color="steelblue", label="wall s (all jobs)")
    ax.plot(rules["cpu_s"], rules["rule"], "k|", markersize=12, label="CPU s")
    for y, (_, row) in enumerate(rules.iterrows()):
        ax.text(row["wall_s"], y, f"  {int(row['jobs'])} jobs, {row['share_pct']:.0f} %", va="center", fontsize=7)
    ax.set_xlabel("seconds, summed over the rule's jobs")
    ax.set_xlim(0, float(max(rules["wall_s"].max(), rules["cpu_s"].max())) * 1.35 or 1.0)
    total = summary[summary["rule"] == "total"].iloc[0]
    ax.set_title(title or f"where the time goes: {int(total['jobs'])} jobs, {total['wall_s']:.0f} s of job wall time",
                 fontsize=9)
    ax.legend(fontsize=7, loc="lower right")
    ax.tick_params(labelsize=7)
    fig.tight_layout()
    out_path = Path(out_path)
    with atomic_path(out_path) as tmp:
        fig.savefig(tmp, dpi=120)
    plt.close(fig)
    return out_path


def markdown_table(frame: pd.DataFrame) -> str:
    """``frame`` as a GitHub Markdown table (for the docs)."""
    lines = ["| " + " | ".join(map(str, frame.columns)) + " |", "|" + "---|" * len(frame.columns)]
    lines += ["| " + " | ".join(map(str, row)) + " |" for row in frame.itertuples(index=False)]
    return "\n".join(lines) + "\n"


def write_timings(benchmarks: str | Path, out_dir: str | Path) -> tuple[pd.DataFrame, list[Path]]:
    """Read, summarise and write ``summary.csv``, ``jobs.csv``, ``summary.md`` and ``summary.png`` to ``out_dir``."""
    jobs = read_benchmarks(benchmarks)
    summary = summarise(jobs)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = [out_dir / "summary.csv", out_dir / "jobs.csv", out_dir / "summary.md", out_dir / "summary.png"]
    summary.to_csv(written[0], index=False)
    jobs.sort_values("wall_s", ascending=False).to_csv(written[1], index=False)
    written[2].write_text(markdown_table(summary))
    timings_figure(summary, written[3])
    return summary, written
