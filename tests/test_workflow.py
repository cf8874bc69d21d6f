"""The Snakemake workflow: config validation, planning, lint, and the mini suite end to end at CI scale."""

import json
import zipfile
from pathlib import Path

import pandas as pd
import pytest

from cfx.timings import write_timings
from tests.factories.workflow import copy_workflow, run_snakemake

ROOT = Path(__file__).resolve().parent.parent


def test_dry_run_plans_the_mini_dag(tmp_path):
    wf = copy_workflow(tmp_path)
    result = run_snakemake(["-n", "--quiet", "rules"], wf)
    assert result.returncode == 0, result.stderr
    plan = result.stdout + result.stderr
    # 2 tasks + sigma_L's 2 extra-seed runs of the smile task with DiME and ACE, SVCE, LDCE and GCD on the 2 tasks,
    # 2 chunks; 7 networks (DDPM, LDM, DiffAE, classifier, robust classifier, oracle, identity); metrics: table1
    # 8 x 10 (task, method) pairs + table_extra 4 x 2; GCD: one direction search and one BB-LIG job per task
    for rule, count in [("synth_dataset", 1), ("index_dataset", 1), ("train_model", 7), ("gcd_direction", 2),
                        ("gcd_bblig", 2), ("generate", 28), ("ace_postprocess", 8), ("merge_chunks", 14),
                        ("metric", 88), ("grid_figure", 10), ("svce_figure", 2), ("table", 2), ("table_figure", 2)]:
        assert any(line.split()[:2] == [rule, str(count)] for line in plan.splitlines()), (rule, plan)


def test_chunk_count_comes_from_config(tmp_path):
    wf = copy_workflow(tmp_path)
    result = run_snakemake(["-n", "--quiet", "rules", "--config", "chunks=5"], wf)
    assert result.returncode == 0, result.stderr
    # 14 generating (experiment, method) pairs (test_dry_run_plans_the_mini_dag: 28 jobs at 2 chunks) x 5 chunks
    assert any(line.split()[:2] == ["generate", "70"] for line in (result.stdout + result.stderr).splitlines())


def test_lint_is_clean(tmp_path):
    wf = copy_workflow(tmp_path)
    result = run_snakemake(["--lint"], wf)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Congratulations" in result.stdout + result.stderr


@pytest.mark.parametrize(
    ("override", "expected"),
    [("bogus_key=1", "bogus_key"), ("suite=nope", "nope"), ("chunks=0", "chunks")],
)
def test_bad_config_stops_with_a_message_naming_it(tmp_path, override, expected):
    wf = copy_workflow(tmp_path)
    result = run_snakemake(["-n", "--config", override], wf)
    assert result.returncode != 0
    assert expected in result.stdout + result.stderr


def test_unknown_table_target_is_refused(tmp_path):
    wf = copy_workflow(tmp_path)
    result = run_snakemake(["-n", "--config", "tables=[table99]"], wf)
    assert result.returncode != 0
    assert "table99" in result.stdout + result.stderr


def test_a_table_of_another_suite_names_that_suite(tmp_path):
    """The targeted rerun the README shows, in the default (mini) suite: an error naming the suite that defines
    table6 and the option selecting it, not Snakemake's "No rule to produce"."""
    wf = copy_workflow(tmp_path)
    result = run_snakemake(["-n", "results/tables/table6.csv"], wf)
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "table 'table6' is not in suite mini" in output and "--config suite=paper" in output, output[-2000:]
    planned = run_snakemake(["-n", "results/tables/table1.csv", "--quiet", "rules"], wf)  # the mini suite's own table
    assert planned.returncode == 0 and "table_in_another_suite" not in planned.stdout + planned.stderr


@pytest.mark.slow
def test_mini_suite_end_to_end_at_ci_scale(tmp_path):
    wf = copy_workflow(tmp_path)
    result = run_snakemake(["--cores", "2", "--config", "scale=ci"], wf)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    table = pd.read_csv(wf / "results/tables/table1.csv", keep_default_na=False, na_values=[""])
    assert set(table["task"]) == {"smile", "age"} and set(table["method"]) == {"dime", "ace", "svce", "ldce", "gcd"}
    assert set(table["metric"]) == {"fid", "sfid", "fva", "fs", "mnac", "cd", "cout", "flip_rate"}
    flips = table[table["metric"] == "flip_rate"]
    assert (flips["n"] == 6).all() and flips["value"].between(0, 100).all()
    # every cell is a number or n/a with its reason (e.g. no successful CF at CI scale)
    assert (table["value"].notna() | (table["not_applicable"] != "")).all()
    assert (table["n"] <= 6).all()
    # every MNAC that was computed names its stand-in (an n/a cell, e.g. no flip at CI scale, ran no network)
    mnac = table[(table["metric"] == "mnac") & table["value"].notna()]
    assert not mnac.empty and mnac["stand_ins"].str.contains("mini oracle").all()
    extra = pd.read_csv(wf / "results/tables/table_extra.csv", keep_default_na=False, na_values=[""])
    assert set(extra["metric"]) == {"sigma_l", "s3", "l1", "l2"} and set(extra["task"]) == {"smile"}
    sigma = extra[extra["metric"] == "sigma_l"]
    assert (sigma["value"].notna() & (sigma["n"] == 2)).all()  # stems in all three seed runs (2 at CI scale)
    for name in ("table1", "table_extra"):
        assert (wf / f"results/tables/{name}.md").exists() and (wf / f"results/tables/{name}.tex").exists()
        assert (wf / f"results/figures/tables/{name}.png").stat().st_size > 1000
    for experiment in ("celeba_smile", "celeba_young"):
        assert (wf / f"results/figures/{experiment}/dime_grid.png").stat().st_size > 1000
        tree = wf / "results/cf" / experiment
        originals = list((tree / "Original").glob("*/*.jpg"))
        cfs = list((tree / "Results/dime").glob("*/*/CF/*.jpg"))
        infos = list((tree / "Results/dime").glob("*/*/Info/*.txt"))
        assert len(originals) == len(cfs) == len(infos) == 6
        assert sorted(p.stem for p in cfs) == [str(i).zfill(7) for i in range(6)]
        assert (tree / "Results/dime/summary.yaml").exists()
        for stage in ("pre-explanation", "explanation"):
            assert len(list((tree / "Results/ace" / stage).glob("*/*/CF/*.png"))) == 6, stage
            assert len(list((tree / "Results/ace" / stage).glob("*/*/Info/*.txt"))) == 6, stage
        assert (tree / "Results/ace/explanation/summary.yaml").exists()
        # SVCE: the largest radius in Results/svce (the tables), the others next to it, each with confidences
        for folder in ("svce", "svce/radius_50", "svce/radius_75"):
            assert len(list((tree / "Results" / folder).glob("*/*/CF/*.png"))) == 6, folder
            info = next((tree / "Results" / folder).glob("*/*/Info/*.txt")).read_text()
            assert "p_target:" in info and "radius:" in info
        merged = json.loads((tree / "svce.merged.json").read_text())
        assert set(merged["variants"]) == {"radius_50", "radius_75"}
        assert (wf / f"results/figures/{experiment}/svce_radii.png").stat().st_size > 1000
        # GCD: the chosen direction of the task's search, its transfer in the common tree, BB-LIG maps of 4 images
        assert (wf / f"results/gcd/{experiment}/direction.pt").exists()
        assert len(list((tree / "Results/gcd").glob("*/*/CF/*.png"))) == 6
        bblig = wf / f"results/figures/{experiment}/gcd_bblig"
        assert len(list(bblig.glob("*.npz"))) == len(list(bblig.glob("*.png"))) == 4
        # LDCE: LDCE's own layout (PNG counterfactuals, DiME's Info keys) from the workflow-trained mini LDM
        assert len(list((tree / "Results/ldce").glob("*/*/CF/*.png"))) == 6
        assert "pred:" in next((tree / "Results/ldce").glob("*/*/Info/*.txt")).read_text()
        assert (wf / f"results/figures/{experiment}/ldce_grid.png").stat().st_size > 1000
    for log in ("logs/train/mini_ddpm.log", "logs/generate/celeba_smile/dime/0-of-2.log", "logs/tables/table1.log"):
        assert (wf / log).exists(), log
    # logs are line-oriented (progress bars as plain lines) and hold cfx's own log records
    logs = list((wf / "logs").rglob("*.log"))
    assert logs and not [log for log in logs if "\r" in log.read_text()]
    assert "INFO cfx.generate: chunk 0/2: 3 images" in (wf / "logs/generate/celeba_smile/dime/0-of-2.log").read_text()
    assert "[train_model mini_ddpm] train ddpm" in result.stderr  # progress on the terminal running snakemake
    # every rule that ran wrote its benchmark file, and cfx timings sums them per rule
    ran = {"synth_dataset", "index_dataset", "train_model", "gcd_direction", "gcd_bblig", "generate", "ace_postprocess",
           "merge_chunks", "metric", "grid_figure", "svce_figure", "table", "table_figure"}
    summary, _ = write_timings(wf / "results/benchmarks", wf / "results/timings")
    assert set(summary["rule"]) == ran | {"total"}
    assert summary.set_index("rule").loc["generate", "jobs"] == 28 and (summary["wall_s"] > 0).all()
    # nothing left to do on a rerun
    again = run_snakemake(["--cores", "2", "--config", "scale=ci", "-n"], wf)
    assert "Nothing to be done" in again.stdout + again.stderr
    # a job killed mid-chunk leaves no manifest and an instance without its Info file (written last): the rerun
    # regenerates that instance only, with the same per-image seed, so the records come out the same
    manifest = wf / "results/cf/celeba_smile/chunks/dime/1-of-2.json"
    first = json.loads(manifest.read_text())
    manifest.unlink()
    next((wf / "results/cf/celeba_smile/Results/dime").glob("*/*/Info/0000003.txt")).unlink()
    rerun = run_snakemake(["results/cf/celeba_smile/chunks/dime/1-of-2.json", "--cores", "2", "--config",
                           "scale=ci"], wf)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    resumed = json.loads(manifest.read_text())
    assert resumed["generated_now"] == 1
    for before, after in zip(first["records"], resumed["records"], strict=True):
        assert {k: before[k] for k in ("stem", "label", "pred", "target", "cf_pred")} == {
            k: after[k] for k in ("stem", "label", "pred", "target", "cf_pred")}
        assert after["bkl"] == pytest.approx(before["bkl"], abs=1e-3)
    # a post-processing parameter re-plans ACE's post-processing and what depends on it, never the attack
    suite = wf / "workflow/suites/mini.yaml"
    suite.write_text(suite.read_text().replace("sampling_dilation: 5", "sampling_dilation: 3"))
    plan = run_snakemake(["-n", "--quiet", "rules", "--config", "scale=ci"], wf)
    planned = {line.split()[0] for line in (plan.stdout + plan.stderr).splitlines()
               if len(line.split()) == 2 and line.split()[1].isdigit()}
    assert "ace_postprocess" in planned and "table" in planned
    assert "generate" not in planned and "train_model" not in planned
    # the report bundles tables and figures
    report = run_snakemake(["--report", "report.zip", "--config", "scale=ci"], wf)
    assert report.returncode == 0, report.stderr[-3000:]
    with zipfile.ZipFile(wf / "report.zip") as archive:
        names = archive.namelist()
    assert any(n.endswith("table1.csv") for n in names) and any(n.endswith("dime_grid.png") for n in names)
    assert any(n.endswith("table_extra.png") for n in names)
