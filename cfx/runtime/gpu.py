"""GPU leasing for jobs that Snakemake starts side by side (``--resources gpu=N``).

Snakemake counts GPU jobs but never assigns devices (snakemake issue #281; docs/upstream/anchors.md C1), so each
GPU job leases a free device itself: a non-blocking ``flock`` on ``gpu<ID>.lock`` in a node-local folder,
held for the life of the process and released by the kernel on any exit, SIGKILL included. An existing
``CUDA_VISIBLE_DEVICES`` (Slurm, a user) is respected: the lease picks one device within it, and
``position`` is its index as torch numbers the visible devices (``cuda:<position>``).
"""

from __future__ import annotations

import fcntl
import os
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass
class GpuLease:
    """A held device: ``device_id`` as CUDA_VISIBLE_DEVICES names it; the lock lives as long as ``handle``."""

    device_id: str
    position: int
    lock_path: Path
    handle: object

    def release(self) -> None:
        handle = self.handle
        if handle is not None:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
            handle.close()
            self.handle = None


def default_lock_dir() -> Path:
    return Path(os.environ.get("CFX_GPU_LOCK_DIR", f"/tmp/cfx-gpu-locks-{os.getuid()}"))


def candidate_devices(visible: str | None, device_count: int) -> list[str]:
    """Devices a job may take: the entries of CUDA_VISIBLE_DEVICES when set, else ``0..device_count-1``."""
    if visible is not None and visible.strip() != "":
        return [d.strip() for d in visible.split(",") if d.strip() != ""]
    return [str(i) for i in range(device_count)]


def visible_gpu_count(visible: str | None = None, dev: str | Path = "/dev") -> int:
    """GPUs a job on this machine may use, without importing torch or starting CUDA: the entries of
    CUDA_VISIBLE_DEVICES when it is set (CUDA stops at the first invalid entry such as -1), else the NVIDIA device
    files ``/dev/nvidia<N>``. The default profile (profiles/default/config.yaml) makes this the ``gpu`` resource, so
    ``snakemake --cores all`` never starts more GPU jobs than there are GPUs."""
    if visible is None:
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        count = 0
        for entry in visible.split(","):
            entry = entry.strip()
            if not entry or entry.startswith("-") or entry == "NoDevFiles":
                break
            count += 1
        return count
    return sum(1 for path in Path(dev).glob("nvidia*") if path.name[len("nvidia"):].isdigit())


def lease_gpu(*, visible: str | None = None, device_count: int | None = None, lock_dir: Path | None = None,
              timeout: float = 600.0, poll: float = 1.0, set_env: bool = False) -> GpuLease | None:
    """Lease one free device, waiting up to ``timeout`` seconds; ``None`` when the machine has no GPU.

    With ``set_env`` the process's CUDA_VISIBLE_DEVICES becomes the leased device (for child processes such as
    upstream scripts; torch itself caches the device list, so use ``cuda:<position>`` in this process)."""
    if visible is None:
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if device_count is None:
        import torch

        device_count = torch.cuda.device_count() if visible in (None, "") else len(visible.split(","))
    candidates = candidate_devices(visible, device_count)
    if not candidates:
        return None
    lock_dir = Path(lock_dir or default_lock_dir())
    lock_dir.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + timeout
    while True:
        for position, device in enumerate(candidates):
            path = lock_dir / f"gpu{device}.lock"
            handle = open(path, "a+")  # noqa: SIM115 - held open for the lease's lifetime
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.close()
                continue
            handle.seek(0)
            handle.truncate()
            handle.write(f"{os.getpid()}\n")
            handle.flush()
            if set_env:
                os.environ["CUDA_VISIBLE_DEVICES"] = device
            return GpuLease(device, position, path, handle)
        if time.monotonic() >= deadline:
            raise TimeoutError(
                f"no free GPU among {candidates} after {timeout:.0f} s (locks in {lock_dir}); run fewer GPU jobs "
                f"at once (--resources gpu=N) or remove stale locks only if no cfx job is running"
            )
        time.sleep(poll)
