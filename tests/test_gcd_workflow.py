"""GCD's rules plan correctly in the mini suite, which lists the method."""

import shutil
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent


def test_dry_run_plans_gcd_direction_transfer_and_bblig(tmp_path):
    """The mini suite lists GCD (counts of the whole plan: tests/test_workflow.py): a transfer chunk waits for the
    task's direction search, which waits for the workflow-trained DiffAE; the BB-LIG figures are a target of all."""
    for name in ("Snakefile", "config.yaml"):
        shutil.copy(ROOT / name, tmp_path / name)
    for folder in ("workflow", "envs", "profiles"):
        shutil.copytree(ROOT / folder, tmp_path / folder)
    suite = yaml.safe_load((tmp_path / "workflow" / "suites" / "mini.yaml").read_text())
    assert suite["methods"]["gcd"]["diffae"] == "mini_diffae" and suite["models"]["mini_diffae"]["kind"] == "diffae"
    result = subprocess.run([sys.executable, "-m", "snakemake", "-n", "--quiet", "rules", "--",
                             "results/figures/celeba_young/gcd_bblig/summary.json"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    plan = result.stdout + result.stderr
    # the BB-LIG job of one task: the index, the classifier and the DiffAE trained, one direction search
    for rule, count in [("train_model", 2), ("gcd_direction", 1), ("gcd_bblig", 1)]:
        assert any(line.split()[:2] == [rule, str(count)] for line in plan.splitlines()), (rule, plan)
    detail = subprocess.run([sys.executable, "-m", "snakemake", "-n", "-p", "results/cf/celeba_smile/chunks/gcd/"
                             "0-of-2.json"], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert detail.returncode == 0, detail.stderr
    text = detail.stdout + detail.stderr
    assert "results/gcd/celeba_smile/direction.pt" in text and "resources/checkpoints/mini_diffae.pt" in text
