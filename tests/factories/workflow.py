"""Copying the Snakemake workflow into a temporary folder and running snakemake on it: the checkout's Snakefile,
config.yaml, workflow/, envs/ and profiles/ (:func:`copy_workflow`), snakemake as a subprocess (:func:`run_snakemake`;
:func:`snakemake` with this checkout's cfx first on PYTHONPATH) and the job counts and outputs of a dry-run
(:func:`parse_plan`)."""

import os
import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent  # the checkout (tests/factories/ -> tests/ -> root)
SNAKEMAKE = [sys.executable, "-m", "snakemake"]


def copy_workflow(dest: Path) -> Path:
    for name in ("Snakefile", "config.yaml"):
        shutil.copy(ROOT / name, dest / name)
    shutil.copytree(ROOT / "workflow", dest / "workflow")
    shutil.copytree(ROOT / "envs", dest / "envs")
    shutil.copytree(ROOT / "profiles", dest / "profiles")
    return dest


def run_snakemake(args: list[str], cwd: Path, timeout: int = 1200) -> subprocess.CompletedProcess:
    return subprocess.run(SNAKEMAKE + args, cwd=cwd, capture_output=True, text=True, timeout=timeout)


def snakemake(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    # the workflow imports cfx: the same package as this test's (a worktree's, not another editable install's)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    return subprocess.run([sys.executable, "-m", "snakemake", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300, env=env)


def parse_plan(text: str) -> tuple[Counter, dict[str, list[str]]]:
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
            # a flagged output is shown with its flag: "resources/checkpoints/x.pt (update)"
            outputs.setdefault(rule, []).extend(p.strip().removesuffix(" (update)")
                                                for p in line.split(":", 1)[1].split(","))
    return counts, outputs
