"""Device and thread selection for training and generation jobs."""

from __future__ import annotations

import torch


def select_device(device: str = "auto") -> torch.device:
    """``auto`` → CUDA when available, else CPU; ``cuda`` without a GPU is a clear error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(
            f"device '{device}' was requested but torch sees no CUDA GPU; set device: auto or cpu in config.yaml"
        )
    return torch.device(device)


def set_threads(threads: int | None) -> None:
    """Use the cores Snakemake gave the job (torch otherwise takes every core of the machine)."""
    if threads and threads > 0:
        torch.set_num_threads(int(threads))
