"""GPU leases with fake device lists: distinct devices, CUDA_VISIBLE_DEVICES respected, freed on SIGKILL."""

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cfx.runtime.gpu import candidate_devices, lease_gpu, visible_gpu_count

ROOT = Path(__file__).resolve().parent.parent


def test_candidates_respect_cuda_visible_devices():
    assert candidate_devices(None, 3) == ["0", "1", "2"]
    assert candidate_devices("", 2) == ["0", "1"]
    assert candidate_devices("5,7", 8) == ["5", "7"]


def test_four_jobs_get_four_different_devices(tmp_path):
    leases = [lease_gpu(visible=None, device_count=4, lock_dir=tmp_path, timeout=0) for _ in range(4)]
    assert sorted(lease.device_id for lease in leases) == ["0", "1", "2", "3"]
    with pytest.raises(TimeoutError, match="no free GPU"):
        lease_gpu(visible=None, device_count=4, lock_dir=tmp_path, timeout=0)
    leases[2].release()
    again = lease_gpu(visible=None, device_count=4, lock_dir=tmp_path, timeout=0)
    assert again.device_id == "2" and again.position == 2


def test_lease_within_visible_devices_and_position(tmp_path):
    first = lease_gpu(visible="3,6", lock_dir=tmp_path, timeout=0)
    second = lease_gpu(visible="3,6", lock_dir=tmp_path, timeout=0)
    assert (first.device_id, first.position) == ("3", 0)
    assert (second.device_id, second.position) == ("6", 1)
    assert lease_gpu(visible=None, device_count=0, lock_dir=tmp_path) is None


def test_lock_is_released_when_the_holder_is_killed(tmp_path):
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time; from cfx.runtime.gpu import lease_gpu; "
         f"l = lease_gpu(visible='0', lock_dir={str(tmp_path)!r}, timeout=0); print(l.device_id, flush=True); "
         "time.sleep(60)"],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "0"
        with pytest.raises(TimeoutError):
            lease_gpu(visible="0", lock_dir=tmp_path, timeout=0)
    finally:
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait()
    time.sleep(0.1)
    assert lease_gpu(visible="0", lock_dir=tmp_path, timeout=0).device_id == "0"


def test_visible_gpu_count_from_the_environment_or_the_device_files(tmp_path, monkeypatch):
    assert visible_gpu_count("0,1,3") == 3
    assert visible_gpu_count("") == 0 and visible_gpu_count("-1") == 0
    assert visible_gpu_count("0,-1,2") == 1  # CUDA stops at the first invalid entry
    for name in ("nvidia0", "nvidia1", "nvidiactl", "nvidia-uvm"):
        (tmp_path / name).touch()
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert visible_gpu_count(dev=tmp_path) == 2


TWO_GPU_JOBS = """
rule all:
    input: "a.txt", "b.txt"

rule gpu_job:
    output: "{name}.txt"
    resources: gpu=1
    shell: "date +%s.%N > {output}; sleep 1.5; date +%s.%N >> {output}"
"""


@pytest.mark.parametrize(("visible", "overlap"), [("0", False), ("", True)])
def test_default_profile_runs_one_gpu_job_per_visible_gpu(tmp_path, visible, overlap):
    """profiles/default sets the gpu resource to the visible GPUs: on a one-GPU machine two GPU jobs run one after
    the other although --cores allows both; without GPUs (CPU runs) only the cores limit them."""
    (tmp_path / "Snakefile").write_text(TWO_GPU_JOBS)
    (tmp_path / "profiles" / "default").mkdir(parents=True)
    shutil.copy(ROOT / "profiles" / "default" / "config.yaml", tmp_path / "profiles" / "default" / "config.yaml")
    result = subprocess.run([sys.executable, "-m", "snakemake", "--cores", "2"], cwd=tmp_path, capture_output=True,
                            text=True, timeout=120, env={**os.environ, "CUDA_VISIBLE_DEVICES": visible})
    assert result.returncode == 0, result.stderr[-2000:]
    (a0, a1), (b0, b1) = ([float(x) for x in (tmp_path / f"{n}.txt").read_text().split()] for n in "ab")
    assert (a0 < b1 and b0 < a1) == overlap
