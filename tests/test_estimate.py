"""`cfx estimate`: image counts from declared split sizes and from an index, bench matching, unknowns, the CLI."""

import copy
import csv
import inspect
import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from cfx.cli import main
from cfx.estimate import (
    DEFAULT_BENCH,
    bench_cost,
    count_images,
    declared_count,
    estimate_rows,
    job_configuration,
    load_bench,
    source_defaults,
    table_jobs,
    totals,
)
from cfx.schema import SchemaError, validate
from cfx.suite import add_seed_experiments, load_suite

REPO = Path(__file__).resolve().parent.parent
PAPER = REPO / "workflow" / "suites" / "paper.yaml"
SCHEMA = REPO / "workflow" / "schemas" / "suite.schema.yaml"
CELEBA_VAL = 19867  # CelebA's official list_eval_partition, partition 1


@pytest.fixture(scope="module")
def paper():
    return load_suite(PAPER)


@pytest.fixture(scope="module")
def reports():
    return load_bench(DEFAULT_BENCH)


def _run(name: str, options: str, **match):
    """The run of a shipped bench file with these options (and e.g. checkpoint_backward_steps)."""
    data = json.loads((DEFAULT_BENCH / name).read_text())
    runs = [r for r in data["runs"] if r["options"] == options and all(r.get(k) == v for k, v in match.items())]
    assert len(runs) == 1
    return data, runs[0]


def _key(row):
    return row.rule, row.method, row.experiment


def test_table1_from_declared_split_sizes_matches_a_hand_computation(paper, reports, tmp_path):
    """table1 = (smile, age) x (DiME, ACE) on CelebA val: 4 generate + 2 ace_postprocess rows of 19 867 images,
    priced from the fp16 eager runs (precision auto on CUDA, compile off) of the shipped H100 bench files."""
    rows = estimate_rows(paper, ["table1"], reports, chunks=3, root=tmp_path)  # tmp_path: no index anywhere
    assert [_key(r) for r in rows] == [
        ("generate", "dime", "celeba_smile"), ("generate", "ace", "celeba_smile"),
        ("ace_postprocess", "ace", "celeba_smile"), ("generate", "dime", "celeba_young"),
        ("generate", "ace", "celeba_young"), ("ace_postprocess", "ace", "celeba_young")]
    assert all(r.known and r.jobs == 3 and r.count.images == CELEBA_VAL for r in rows)
    assert "split_sizes.val" in rows[0].count.source
    # DiME: seconds per image and attempt at the full tau = 60 x the bench's mean attempts (3.0: the random
    # classifier never flips, so all three scales), range 1..3 attempts; the longer-timed of two matching files
    _, dime = _run("dime-paper-cuda.json", "fp16")
    per_attempt = dime["full_schedule"]["estimated_seconds_per_image_per_attempt"]
    assert rows[0].cost.bench == "dime-paper-cuda.json fp16"
    assert rows[0].gpu_hours() == pytest.approx(CELEBA_VAL * per_attempt * 3.0 / 3600)
    assert rows[0].gpu_hours("low") == pytest.approx(CELEBA_VAL * per_attempt / 3600)
    assert rows[0].gpu_hours("high") == pytest.approx(CELEBA_VAL * per_attempt * 3 / 3600)
    assert rows[0].cost.peak_memory_gib == pytest.approx(dime["peak_memory_bytes"] / 2**30)
    # ACE: the attack timed for 10 of 50 PGD iterations on 3 images, extrapolated; post-processing timed apart
    _, ace = _run("ace-paper-cuda.json", "fp16", checkpoint_backward_steps=None)
    attack = ace["seconds_attack"] * 50 / 10 / 3
    post = ace["seconds_postprocess"] / 3
    assert rows[1].gpu_hours() == pytest.approx(CELEBA_VAL * attack / 3600)
    assert rows[2].gpu_hours() == pytest.approx(CELEBA_VAL * post / 3600)
    total = totals(rows)
    assert total["jobs"] == 18 and total["unknown"] == 0
    assert total["gpu_hours"] == pytest.approx(2 * CELEBA_VAL * (3 * per_attempt + attack + post) / 3600, rel=1e-3)
    assert 200 < total["gpu_hours"] < 260  # about 235 GPU-hours on one H100


def test_declared_counts_apply_the_experiments_selection(paper):
    """Split sizes with the declarative selection on top; what only the index knows is said, not guessed."""
    expected = {
        "celeba_smile_minival": 1000,  # DiME's utils/minival.csv rows
        "celebahq_young": 2824,  # CelebA-HQ test
        "imagenet_zebra_sorrel": 100,  # 2 source classes x 50 val images
        "imagenet_ldce_all": 10000,  # val 50 000 capped at max_images
        "chexpert_pneumonia": 234,
        "pets": 3669,
        "flowers": 6149,
        "bdd100k_forward": 10000,
    }
    for experiment, images in expected.items():
        assert declared_count(paper, experiment).images == images, experiment
    for experiment in ("bdd_oia_forward", "imagenet_svce"):  # BDD-OIA's filter, SVCE's clusters
        count = declared_count(paper, experiment)
        assert count.images is None and "needs the index" in count.source


def test_an_index_changes_the_count(paper, reports, tmp_path):
    """An existing results/data/<dataset>/index.csv is counted with the workflow's own selection."""
    index = tmp_path / "results" / "data" / "celeba" / "index.csv"
    index.parent.mkdir(parents=True)
    lines = ["image_id,path,partition,Smiling"] + [f"{k:06d}.jpg,/x/{k:06d}.jpg,{k % 3},1" for k in range(30)]
    index.write_text("\n".join(lines) + "\n")
    count = count_images(paper, "celeba_smile", tmp_path)
    assert count.images == 10 and str(index) in count.source  # partition 1 = val: every third row
    capped = copy.deepcopy(paper)
    capped["experiments"]["celeba_smile"]["max_images"] = 4
    assert count_images(capped, "celeba_smile", tmp_path).images == 4
    rows = estimate_rows(paper, ["table1"], reports, root=tmp_path)
    assert {r.count.images for r in rows} == {10}
    hand = estimate_rows(paper, ["table1"], reports, root=tmp_path / "elsewhere")
    assert totals(rows)["gpu_hours"] == pytest.approx(totals(hand)["gpu_hours"] * 10 / CELEBA_VAL, rel=1e-3)


def test_methods_and_configurations_without_bench_data_are_unknown(paper, reports, tmp_path):
    """LDCE and GCD have no bench file; DiME and ACE on CelebA-HQ 256 differ from the CelebA-128 bench."""
    rows = {_key(r): r for r in estimate_rows(paper, ["table6"], reports, root=tmp_path)}
    for method in ("ldce", "gcd"):
        row = rows[("generate", method, "celebahq_smile")]
        assert not row.known and row.count.images == 2824
        assert row.notes == [f"unknown: no bench data for {method}"]
    dime = rows[("generate", "dime", "celebahq_smile")]
    assert not dime.known and "image_size 256 ≠ bench 128" in dime.notes[0]
    assert totals(list(rows.values()))["gpu_hours"] is None
    assert ("ace_postprocess", "ace", "celebahq_young") in rows
    record = dime.record()
    assert record["status"] == "unknown" and record["gpu_hours"] is None


def test_the_run_follows_precision_and_compile(paper, reports):
    """compile on: DiME's fp16+compile run (the compile file); ACE has no compiled run: unknown. fp32: fp32 runs."""
    dime, ace = job_configuration(paper, "celeba_smile", "dime"), job_configuration(paper, "celeba_smile", "ace")
    cost, _ = bench_cost(reports, dime, "generate", compile_unet=True)
    assert cost.bench == "dime-paper-cuda-compile.json fp16+compile"
    cost, reason = bench_cost(reports, ace, "generate", compile_unet=True)
    assert cost is None and "compile" in reason
    cost, _ = bench_cost(reports, ace, "generate", precision="fp32")
    assert cost.bench == "ace-paper-cuda.json fp32 ckpt=None"
    # ACE's checkpoint_backward_steps picks the run; another l1 weight is another configuration
    variant = copy.deepcopy(ace)
    variant["config"]["checkpoint_backward_steps"] = 1
    assert bench_cost(reports, variant, "generate")[0].bench == "ace-paper-cuda.json fp16 ckpt=1"
    variant["config"]["dist_l1"] = 0.002
    cost, reason = bench_cost(reports, variant, "generate")
    assert cost is None and "dist_l1 0.002 ≠ bench 0.001" in reason


def test_sigma_l_extra_seed_runs_are_counted(paper, reports, tmp_path):
    """A table reading sigma_l plans the extra-seed experiments add_seed_experiments makes (max_images each)."""
    suite = copy.deepcopy(paper)
    suite["metrics"]["sigma_l"] = {"seeds": [5, 6], "max_images": 8, "experiments": ["celeba_smile"]}
    suite["tables"]["sigma"] = {"title": "t", "methods": ["dime"], "tasks": {"smile": "celeba_smile"},
                                "metrics": ["sigma_l"]}
    add_seed_experiments(suite)
    assert table_jobs(suite, "sigma") == [("generate", "dime", "celeba_smile"),
                                          ("generate", "dime", "celeba_smile_seed5"),
                                          ("generate", "dime", "celeba_smile_seed6")]
    rows = estimate_rows(suite, ["sigma"], reports, root=tmp_path)
    assert [r.count.images for r in rows] == [CELEBA_VAL, 8, 8]
    assert all(r.known for r in rows) and "σ_L extra-seed run of celeba_smile" in rows[1].notes[0]


def test_cli_prints_gpu_hours_per_rule_and_writes_the_files(tmp_path, monkeypatch):
    """No dataset anywhere: the paper suite's table1 is priced from its declared split sizes."""
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, ["estimate", "results/tables/table1.csv", "--suite", "paper", "--chunks", "4"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert any(line.split()[:3] == ["generate", "dime", "celeba_smile"] and line.split()[3] == "4" for line in lines)
    assert any(line.split()[:2] == ["ace_postprocess", "ace"] for line in lines)
    assert any(line.strip().startswith("total table1: 24 jobs,") and "GPU-h" in line for line in lines)
    out = tmp_path / "results" / "estimates"
    with (out / "table1.csv").open() as handle:
        records = list(csv.DictReader(handle))
    assert [r["rule"] for r in records].count("total") == 2 and records[0]["gpu_hours"]
    assert (out / "table1.txt").read_text().startswith("GPU bill")
    assert json.loads((out / "table1.json").read_text())["grand_total"]["unknown"] == 0
    assert not (tmp_path / "results" / "data").exists()


def test_cli_errors_name_the_bad_target_or_bench_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run = CliRunner().invoke
    result = run(main, ["estimate", "results/tables/nope.csv", "--suite", "paper"])
    assert result.exit_code == 1
    assert "target 'results/tables/nope.csv': suite paper has no table 'nope'" in result.output
    result = run(main, ["estimate", "results/cf/x/dime.merged.json", "--suite", "paper"])
    assert "'results/cf/x/dime.merged.json' is not a table target" in result.output
    result = run(main, ["estimate", "results/tables/table1.csv", "--suite", "paper", "--bench", "missing"])
    assert result.exit_code == 1 and "bench path missing does not exist" in result.output
    (tmp_path / "other.json").write_text("{}")
    result = run(main, ["estimate", "results/tables/table1.csv", "--suite", "paper", "--bench", "other.json"])
    assert "bench file other.json is not a cfx bench report" in result.output


def test_estimate_is_torch_free():
    code = ("import sys; from cfx.estimate import estimate; from cfx.suite import load_suite; "
            f"estimate(load_suite({str(PAPER)!r}), ['results/tables/table1.csv'], out_dir=None); "
            "assert 'torch' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, cwd="/")


def test_defaults_read_from_source_are_the_modules():
    from cfx.methods import ace, dime
    from cfx.models.adm import create_model

    assert source_defaults("cfx.methods.dime", "DEFAULTS") == dime.DEFAULTS
    assert source_defaults("cfx.methods.ace", "DEFAULTS") == ace.DEFAULTS
    signature = {k: p.default for k, p in inspect.signature(create_model).parameters.items()
                 if p.default is not inspect.Parameter.empty}
    assert source_defaults("cfx.models.adm", "create_model") == signature


def test_split_sizes_in_the_schema(paper):
    validate(paper, SCHEMA, "paper")
    bad = copy.deepcopy(paper)
    bad["datasets"]["celeba"]["split_sizes"] = {"val": 0}
    with pytest.raises(SchemaError, match="split_sizes"):
        validate(bad, SCHEMA, "bad")
