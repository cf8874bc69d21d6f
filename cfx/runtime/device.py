"""Device and thread selection for training and generation jobs."""

from __future__ import annotations

import torch

_LEASES: list = []  # held for the life of the process (the kernel frees the locks on any exit)


def select_device(device: str = "auto") -> torch.device:
    """``auto`` → a leased free GPU when there is one, else CPU; ``cuda`` without a GPU is a clear error.

    GPU jobs lease their device (``cfx.runtime.gpu``): Snakemake runs several side by side but never says which
    GPU each may use."""
    if device == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        if device == "auto":
            return torch.device("cpu")
        raise RuntimeError(
            f"device '{device}' was requested but torch sees no CUDA GPU; set device: auto or cpu in config.yaml"
        )
    if device not in ("auto", "cuda"):
        return torch.device(device)  # an explicit cuda:N
    if not _LEASES:
        from cfx.runtime.gpu import lease_gpu

        lease = lease_gpu(device_count=torch.cuda.device_count())
        if lease is None:
            return torch.device("cpu") if device == "auto" else torch.device("cuda")
        _LEASES.append(lease)
    return torch.device(f"cuda:{_LEASES[0].position}")


def device_type(device: str) -> str:
    """``cuda`` or ``cpu``, as :func:`select_device` would choose, without leasing a GPU."""
    return "cuda" if str(device) != "cpu" and torch.cuda.is_available() else "cpu"


def set_threads(threads: int | None) -> None:
    """Use the cores Snakemake gave the job (torch otherwise takes every core of the machine)."""
    if threads and threads > 0:
        torch.set_num_threads(int(threads))
