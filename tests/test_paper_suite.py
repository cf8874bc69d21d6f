"""The paper suite's table6 (LDCE Table 6, CelebA-HQ smile and age; DiME, ACE, LDCE, GCD) as a dry-run: with a fake
CelebA-HQ root in the upstream layout the whole DAG is planned from the suite file (index, checkpoint downloads, one
generation job per experiment, method and chunk, ACE's post-processing, merges, metrics, the table) and no published
network is trained; without data_roots the run stops saying what to download."""

import os
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import yaml

from cfx.suite import load_suite, method_network, metric_networks, network_checkpoint
from tests.test_layouts import fake_celebahq
from tests.test_workflow import _copy_workflow

ROOT = Path(__file__).resolve().parent.parent
PAPER = ROOT / "workflow" / "suites" / "paper.yaml"


def _snakemake(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    # the workflow imports cfx: the same package as this test's (a worktree's, not another editable install's)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    return subprocess.run([sys.executable, "-m", "snakemake", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300, env=env)


def _plan(text: str) -> tuple[Counter, dict[str, list[str]]]:
    """Job counts per rule and the outputs of each rule from a dry-run's job blocks."""
    counts: Counter = Counter()
    outputs: dict[str, list[str]] = {}
    rule = None
    for line in text.splitlines():
        match = re.match(r"^(?:local)?rule (\w+):$", line.strip())
        if match:
            rule = match.group(1)
            counts[rule] += 1
        elif rule and line.strip().startswith("output:"):
            outputs.setdefault(rule, []).extend(p.strip() for p in line.split(":", 1)[1].split(","))
    return counts, outputs


def _table6_needs(suite: dict, chunks: int) -> dict[str, object]:
    """What table6 needs, derived from the suite file: (experiment, method) pairs, checkpoints, metric count."""
    spec = suite["tables"]["table6"]
    experiments = list(spec["tasks"].values())
    pairs = [(e, m) for e in experiments for m in spec["methods"]]
    checkpoints = set()
    for experiment in experiments:
        exp = suite["experiments"][experiment]
        checkpoints.add(network_checkpoint(suite, exp["classifier"]))
        if {"dime", "ace"} & set(spec["methods"]):
            checkpoints.add(network_checkpoint(suite, exp["ddpm"]))
        for metric in spec["metrics"]:
            for network in metric_networks(suite, metric, experiment).values():
                if network["checkpoint"]:
                    checkpoints.add(network["checkpoint"])
    for method, key in (("ldce", "ldm"), ("gcd", "diffae")):
        if method in spec["methods"]:
            checkpoints.add(network_checkpoint(suite, suite["methods"][method][key]))
    if "dime" in spec["methods"] and suite["methods"]["dime"]["config"].get("l_perc", 0) > 0:
        checkpoints.add(suite["methods"]["dime"]["vgg19_weights"])
    lpips = method_network(suite, "gcd", "lpips") if "gcd" in spec["methods"] else None
    if lpips and lpips["checkpoint"]:  # GCD's direction search reads LPIPS's VGG-16 from the registry file
        checkpoints.add(lpips["checkpoint"])
    return {
        "experiments": experiments,
        "generate": {f"results/cf/{e}/chunks/{m}/{c}-of-{chunks}.json" for e, m in pairs for c in range(chunks)},
        "ace_postprocess": len(experiments) * chunks if "ace" in spec["methods"] else 0,
        "merge_chunks": len(pairs),
        "metric": len(pairs) * len(spec["metrics"]),
        "checkpoints": checkpoints,
    }


def test_paper_models_are_published_checkpoints_and_metrics_use_the_registry():
    suite = load_suite(PAPER)
    registry = suite["checkpoints"]
    # every network a paper experiment loads is a registry file: downloaded, never trained (train_model writes .pt)
    for name in suite["models"]:
        assert name in registry, name
    classifier = network_checkpoint(suite, "steex_celebahq_classifier")
    assert classifier == "resources/checkpoints/steex_celebahq_classifier.tar"
    mnac = metric_networks(suite, "mnac", "celebahq_smile")["oracle"]
    assert mnac["checkpoint"] == "resources/checkpoints/steex_celebahq_oracle.tar"
    assert mnac["spec"] == {"kind": "steex_oracle"}
    assert metric_networks(suite, "fva", "celebahq_smile")["identity"]["spec"] == {"kind": "vggface2"}
    assert metric_networks(suite, "fid", "celebahq_young")["features"]["checkpoint"].endswith("fid_inception.pth")
    cout = metric_networks(suite, "cout", "celebahq_young", "ldce")["classifier"]
    assert cout["name"] == "steex_celebahq_classifier" and cout["checkpoint"].endswith(".tar")
    # generation, GCD and COUT load STEEX's 3-output classifier with its own loader (the registry's), not DiME's
    assert cout["spec"]["kind"] == registry["steex_celebahq_classifier"]["loader"] == "steex_classifier"
    # every published number names its source
    for task in suite["tables"]["table6"]["published"].values():
        for method in task.values():
            for entry in method.values():
                assert entry["value"] > 0 and "reference/" in entry["source"]


def test_table6_dry_run_plans_the_whole_table(tmp_path):
    wf = _copy_workflow(tmp_path)
    fake_celebahq(tmp_path / "hq")
    result = _snakemake(["-n", "--config", "suite=paper", f"data_roots={{celebahq: {tmp_path / 'hq'}}}",
                         "--", "results/tables/table6.csv"], wf)
    assert result.returncode == 0, result.stderr
    counts, outputs = _plan(result.stdout + result.stderr)
    chunks = int(yaml.safe_load((wf / "config.yaml").read_text())["chunks"])
    needs = _table6_needs(load_suite(wf / "workflow" / "suites" / "paper.yaml"), chunks)
    assert counts["index_dataset"] == 1
    assert "train_model" not in counts, "a published network must be downloaded, never trained"
    assert set(outputs["download_checkpoint"]) == needs["checkpoints"]
    assert counts["download_checkpoint"] == len(needs["checkpoints"])
    assert set(outputs["generate"]) == needs["generate"] and counts["generate"] == len(needs["generate"])
    assert counts["ace_postprocess"] == needs["ace_postprocess"]
    assert counts["merge_chunks"] == needs["merge_chunks"]
    assert counts["metric"] == needs["metric"]
    assert counts["gcd_direction"] == len(needs["experiments"])  # one direction search per task
    assert outputs["table"] == ["results/tables/table6.csv", "results/tables/table6.md", "results/tables/table6.tex"]
    # table6 as it reads today (the other numbers follow from the suite file): 9 checkpoints (with GCD's LPIPS VGG-16
    # and the FID Inception read from resources/checkpoints, not $TORCH_HOME), 2 tasks x 4 methods
    assert "resources/checkpoints/torchvision_vgg16.pth" in needs["checkpoints"]
    assert "resources/checkpoints/fid_inception.pth" in needs["checkpoints"]
    assert len(needs["checkpoints"]) == 9 and needs["merge_chunks"] == 8 and needs["metric"] == 64


def test_table6_without_data_root_says_what_to_download(tmp_path):
    wf = _copy_workflow(tmp_path)
    result = _snakemake(["-n", "--config", "suite=paper", "--", "results/tables/table6.csv"], wf)
    assert result.returncode != 0
    message = result.stdout + result.stderr
    for needed in ("CelebAMask-HQ-attribute-anno.txt", "https://github.com/switchablenorms/CelebAMask-HQ",
                   "list_eval_partition.csv", "data_roots: {celebahq:"):
        assert needed in message, message
