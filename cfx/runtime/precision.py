"""Compute precision of the diffusion UNet during generation (config ``precision``).

Upstream DiME and ACE run the UNet with ``--use_fp16 True``: ``model.convert_to_fp16()`` puts the
convolutions of the input, middle and output blocks in float16 while GroupNorm, the time embedding, the
output layer and the attention softmax stay float32 (guided-diffusion ``fp16_util.py``, ``unet.py``;
docs/upstream/dime_ace.md §1.1). ``auto`` does the same on CUDA and keeps float32 on the CPU, where float16
convolutions are slow. The classifier and the perceptual network always run in float32, as upstream.
"""

from __future__ import annotations

import torch

PRECISIONS = ("auto", "fp32", "fp16", "bf16")
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def resolve_precision(precision: str, device: torch.device | str) -> str:
    """``auto`` → ``fp16`` on CUDA (upstream's ``use_fp16``), ``fp32`` elsewhere; other values are returned."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got '{precision}'")
    if precision == "auto":
        return "fp16" if torch.device(device).type == "cuda" else "fp32"
    return precision


def apply_precision(unet: torch.nn.Module, precision: str) -> torch.nn.Module:
    """Convert the UNet's block convolutions to the resolved ``precision`` (``fp32`` undoes a conversion made by
    the model flag ``use_fp16``) and return it. ``precision`` must already be resolved (not ``auto``)."""
    if precision not in DTYPES:
        raise ValueError(f"resolve precision '{precision}' first (fp32, fp16 or bf16)")
    {"fp32": unet.convert_to_fp32, "fp16": unet.convert_to_fp16, "bf16": unet.convert_to_bf16}[precision]()
    return unet
