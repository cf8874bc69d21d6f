"""GPU leases with fake device lists: distinct devices, CUDA_VISIBLE_DEVICES respected, freed on SIGKILL."""

import os
import signal
import subprocess
import sys
import time

import pytest

from cfx.runtime.gpu import candidate_devices, lease_gpu


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
