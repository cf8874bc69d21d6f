"""cfx.timings: the per-rule summary of the workflow's benchmark files, against sums computed by hand."""

from pathlib import Path

import pandas as pd
import pytest

from cfx.timings import read_benchmarks, summarise, write_timings

HEADER = "s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\n"
JOBS = {  # rule/job: (wall s, max_rss MB, mean load, cpu s), Snakemake's benchmark columns
    "train_model/mini_ddpm": (100.0, 900.0, 190.0, 190.0),
    "generate/celeba_smile/dime/0-of-2": (30.0, 500.0, 100.0, 30.0),
    "generate/celeba_smile/dime/1-of-2": (20.0, 520.0, 100.0, 20.0),
    "metric/celeba_smile/dime/fid": (4.0, 300.0, 50.0, 2.0),
}


def write_benchmarks(root: Path) -> None:
    for job, (wall, rss, load, cpu) in JOBS.items():
        path = root / f"{job}.tsv"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(HEADER + f"{wall}\t0:00:{wall:.0f}\t{rss}\t1000\t{rss}\t{rss}\t1\t2\t{load}\t{cpu}\n")


def test_summary_per_rule_matches_sums_by_hand(tmp_path):
    write_benchmarks(tmp_path / "bench")
    jobs = read_benchmarks(tmp_path / "bench")
    assert sorted(jobs["rule"]) == ["generate", "generate", "metric", "train_model"]
    summary = summarise(jobs).set_index("rule")
    assert list(summary.index) == ["train_model", "generate", "metric", "total"]  # most wall time first
    assert summary.loc["generate", "jobs"] == 2 and summary.loc["generate", "wall_s"] == 50.0
    assert summary.loc["generate", "cpu_s"] == 50.0 and summary.loc["generate", "longest_job_s"] == 30.0
    assert summary.loc["generate", "max_rss_mb"] == 520.0
    assert summary.loc["train_model", "share_pct"] == pytest.approx(round(100 * 100 / 154, 1))
    assert summary.loc["total", "wall_s"] == 154.0 and summary.loc["total", "jobs"] == 4
    assert summary.loc["total", "cpu_s"] == 242.0


def test_write_timings_writes_the_tables_and_the_figure(tmp_path):
    write_benchmarks(tmp_path / "bench")
    summary, written = write_timings(tmp_path / "bench", tmp_path / "out")
    assert [p.name for p in written] == ["summary.csv", "jobs.csv", "summary.md", "summary.png"]
    assert pd.read_csv(written[0])["rule"].tolist() == summary["rule"].tolist()
    assert written[2].read_text().splitlines()[0].startswith("| rule | jobs | wall_s")
    assert written[3].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_no_benchmarks_and_a_foreign_file_are_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="no benchmark files"):
        summarise(read_benchmarks(tmp_path))
    (tmp_path / "rule").mkdir()
    (tmp_path / "rule" / "x.tsv").write_text("a\tb\n1\t2\n")
    with pytest.raises(ValueError, match=r"x\.tsv is not a Snakemake benchmark file"):
        read_benchmarks(tmp_path)


def test_cli_prints_the_summary_and_writes_the_files(tmp_path):
    from click.testing import CliRunner

    from cfx.cli import main

    write_benchmarks(tmp_path / "bench")
    result = CliRunner().invoke(main, ["timings", "--benchmarks", str(tmp_path / "bench"), "--out",
                                       str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert "| train_model | 1 | 100.0 |" in result.output and (tmp_path / "out" / "summary.png").exists()
    empty = CliRunner().invoke(main, ["timings", "--benchmarks", str(tmp_path / "none")])
    assert empty.exit_code == 1 and "no benchmark files" in empty.output
