"""Reliability of the user-facing surface (issue #20): one-line CLI errors, short schema errors, the checkout's
suite files, and a summary figure whose subtitle does not overlap its title."""

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml
from click.testing import CliRunner

from cfx.cli import main
from cfx.schema import SchemaError, validate
from tests.factories.workflow import copy_workflow

ROOT = Path(__file__).resolve().parent.parent
CONFIG_SCHEMA = ROOT / "workflow" / "schemas" / "config.schema.yaml"
SUITE_SCHEMA = ROOT / "workflow" / "schemas" / "suite.schema.yaml"


# item 8: one-line errors, tracebacks with -v, --version

def test_user_error_is_one_line_without_traceback(tmp_path):
    (tmp_path / "s.yaml").write_text(yaml.safe_dump({"name": "s", "tables": {"t1": {"metrics": []}}}))
    result = CliRunner().invoke(main, ["table", "nope", "--suite", str(tmp_path / "s.yaml")])
    assert result.exit_code == 1
    assert result.stdout == ""
    assert result.stderr.strip().splitlines() == [
        f"cfx: error: table 'nope' is not defined in {tmp_path / 's.yaml'}; known: t1"]
    assert "Traceback" not in result.output


def test_verbose_keeps_the_exception_for_the_traceback(tmp_path):
    (tmp_path / "s.yaml").write_text(yaml.safe_dump({"name": "s"}))
    result = CliRunner().invoke(main, ["-v", "table", "nope", "--suite", str(tmp_path / "s.yaml")])
    assert result.exit_code == 1
    assert isinstance(result.exception, ValueError) and "'nope'" in str(result.exception)


def test_console_entry_prints_one_line_for_a_missing_suite_file(tmp_path):
    """The installed `cfx` script (a subprocess: no CliRunner in between)."""
    cfx = Path(sys.executable).parent / "cfx"
    result = subprocess.run([str(cfx), "table", "t", "--suite", str(tmp_path / "absent.yaml")], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        f"cfx: error: suite file {tmp_path / 'absent.yaml'} does not exist; known suites live in workflow/suites/"]


def test_key_error_message_is_shown_without_quotes(tmp_path):
    result = CliRunner().invoke(main, ["metric", "no_such_metric", "--real", str(tmp_path), "--fake", str(tmp_path),
                                       "--device", "cpu"])
    assert result.exit_code == 1
    assert result.stderr.startswith("cfx: error: unknown metric 'no_such_metric'; known metrics: ")


def test_usage_errors_keep_clicks_handling():
    result = CliRunner().invoke(main, ["table"])
    assert result.exit_code == 2 and "Missing argument 'NAME'" in result.output


def test_version():
    from importlib.metadata import version

    result = CliRunner().invoke(main, ["--version"])
    assert result.exit_code == 0 and result.output.strip() == f"cfx, version {version('cfx')}"


# item 8: schema errors of config.yaml and the suite files

@pytest.mark.parametrize(("config", "expected"), [
    ({"suite": "mini", "precision": "fp8"}, "config: precision: 'fp8' is not allowed; allowed: auto, fp32, fp16, bf16"),
    ({"suite": "nope"}, "config: suite: 'nope' is not allowed; allowed: mini, paper"),
    ({"suite": "mini", "chunks": 0}, "config: chunks: 0 is not allowed; allowed: at least 1"),
    ({"suite": "mini", "seed": "x"}, "config: seed: 'x' is not allowed; allowed: a value of type integer"),
    ({"suite": "mini", "bogus_key": 1}, "config: top level: unknown key bogus_key; allowed: suite, scale, chunks, "
                                        "seed, device, precision, compile, tables, data_roots"),
])
def test_config_schema_error_is_one_line(config, expected):
    with pytest.raises(SchemaError) as caught:
        validate(config, CONFIG_SCHEMA, "config")
    assert str(caught.value) == expected


def _suite(**sections: dict) -> dict:
    return {"name": "s", "datasets": {}, "models": {}, "methods": {}, "experiments": {}, "tables": {}, **sections}


def test_suite_schema_error_names_the_file_and_the_key_path():
    suite = _suite(methods={"dime": {"config": {}, "batch_size": 0}})
    with pytest.raises(SchemaError, match=r"^/x/s\.yaml: methods\.dime\.batch_size: 0 is not allowed; allowed: at "
                                          r"least 1$"):
        validate(suite, SUITE_SCHEMA, "/x/s.yaml")
    suite = _suite(methods={"dime": {"config": {}, "datasets": {"d": {"batch_sise": 2}}}})
    with pytest.raises(SchemaError, match=r"methods\.dime\.datasets\.d: unknown key batch_sise; allowed: batch_size, "):
        validate(suite, SUITE_SCHEMA, "/x/s.yaml")
    suite = _suite(experiments={"e": {"dataset": "d", "split": "val", "image_size": "big", "classifier": "c",
                                      "methods": [], "query_label": 0}})
    with pytest.raises(SchemaError, match=r"experiments\.e\.image_size: none of the allowed forms matches 'big': "
                                          r"integer; array$"):
        validate(suite, SUITE_SCHEMA, "/x/s.yaml")


def test_schema_defaults_are_filled_as_snakemakes_validate_does():
    from snakemake.utils import validate as snakemake_validate

    for data, schema in [({"suite": "paper"}, CONFIG_SCHEMA),
                         (yaml.safe_load((ROOT / "workflow" / "suites" / "paper.yaml").read_text()), SUITE_SCHEMA)]:
        ours, theirs = yaml.safe_load(yaml.safe_dump(data)), yaml.safe_load(yaml.safe_dump(data))
        assert validate(ours, schema, "data") is ours
        snakemake_validate(theirs, str(schema))
        assert ours == theirs and ours != data


def test_dry_run_prints_the_short_schema_message(tmp_path):
    wf = copy_workflow(tmp_path)
    result = subprocess.run([sys.executable, "-m", "snakemake", "-n", "--config", "precision=fp8"], cwd=wf,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    (text,) = [stream for stream in (result.stdout, result.stderr) if "SchemaError" in stream]
    assert "config: precision: 'fp8' is not allowed; allowed: auto, fp32, fp16, bf16" in text
    assert "description" not in text and "$schema" not in text  # no schema dump
    error = text[text.index("SchemaError"):].strip().splitlines()  # the message, then a two-line traceback
    assert len(error) < 5, error


# item 11: a bare suite name reads the checkout's suite file

def test_bare_suite_name_reads_the_checkout_holding_the_working_directory(tmp_path, monkeypatch):
    checkout = tmp_path / "checkout"
    (checkout / "workflow" / "suites").mkdir(parents=True)
    (checkout / "Snakefile").write_text("")
    mini = yaml.safe_load((ROOT / "workflow" / "suites" / "mini.yaml").read_text())
    mini["checkpoints"] = {"edited_here": {"url": "https://example.org/edited_here.pt"}}
    suite_path = checkout / "workflow" / "suites" / "mini.yaml"
    suite_path.write_text(yaml.safe_dump(mini))
    (checkout / "deeper").mkdir()
    monkeypatch.chdir(checkout / "deeper")
    result = CliRunner().invoke(main, ["download", "--list", "--suite", "mini", "--dir", str(tmp_path / "c")])
    assert result.exit_code == 0, result.output
    assert "edited_here" in result.stdout
    assert f"cfx: suite mini from {suite_path.resolve()}" in result.stderr


def test_bare_suite_name_outside_a_checkout_reads_the_package_copy(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, ["download", "--list", "--suite", "paper", "--dir", str(tmp_path / "c")])
    assert result.exit_code == 0, result.output
    assert f"cfx: suite paper from {ROOT / 'workflow' / 'suites' / 'paper.yaml'}" in result.stderr


def test_unknown_suite_name_lists_the_known_ones(tmp_path, monkeypatch):
    checkout = tmp_path / "checkout"
    (checkout / "workflow" / "suites").mkdir(parents=True)
    (checkout / "Snakefile").write_text("")
    (checkout / "workflow" / "suites" / "mine.yaml").write_text("name: mine\n")
    monkeypatch.chdir(checkout)
    result = CliRunner().invoke(main, ["table", "t", "--suite", "mini"])
    assert result.exit_code == 1
    assert result.stderr.startswith("cfx: error: suite 'mini' not found: ")
    assert result.stderr.rstrip().endswith("known suites in " f"{(checkout / 'workflow' / 'suites').resolve()}: mine")


# item 10: the summary figure's subtitle sits below its title

def _table_csv(path: Path, metrics: list[str]) -> Path:
    rows = [{"metric": metric, "task": task, "method": method, "value": 50.0 + k, "published": 60.0,
             "higher_is_better": True, "unit": "%", "stand_ins": "mini oracle"}
            for k, metric in enumerate(metrics) for task in ("smile", "age") for method in ("dime", "ace")]
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


@pytest.mark.parametrize("metrics", [["flip_rate"], ["fid", "sfid", "fva", "fs", "mnac"]])
def test_table_figure_subtitle_overlaps_neither_title_nor_panels(tmp_path, monkeypatch, metrics):
    import matplotlib.pyplot as plt

    from cfx.figures import table_figure

    close, figures = plt.close, []
    monkeypatch.setattr(plt, "close", figures.append)  # keep the figure table_figure saved to measure it
    table_figure(_table_csv(tmp_path / "t.csv", metrics), tmp_path / "t.png", title="Table 1")
    (fig,) = figures
    renderer = fig.canvas.get_renderer()
    texts = {text.get_text(): text.get_window_extent(renderer) for text in fig.texts}
    title, subtitle = texts["Table 1"], texts["mini stand-in networks: see the table's stand_ins column"]
    assert subtitle.y1 < title.y0  # below the title, not over it
    panel_titles = [ax.title.get_window_extent(renderer) for ax in fig.axes if ax.get_title()]
    assert len(panel_titles) == len(metrics)
    for box in panel_titles:
        assert box.y1 < subtitle.y0 and not box.overlaps(title)
    assert title.y1 <= fig.bbox.y1 and subtitle.x0 >= 0 and subtitle.x1 <= fig.bbox.x1
    close(fig)
