"""FLOPs of network passes and the peak throughput of the device they run on (for ``cfx bench``, issue #21).

Counts come from :class:`torch.utils.flop_counter.FlopCounterMode`: matrix products (``mm``, ``addmm``, ``bmm``,
``baddbmm``), convolutions, scaled-dot-product attention and their backward ops, a multiply-add counted as 2 FLOPs
(a Conv2d forward is 2·C_in·C_out·k²·H_out·W_out per image); element-wise ops, normalisations and activations are
not counted. A backward pass is counted as the ops autograd runs for the gradient the methods take, the one w.r.t.
the image: a convolution's or linear layer's backward then costs its forward (the transposed product), not the 2×
of training, which also computes the weight gradient; attention's ``bmm`` backward needs both operands' gradients.
Passes are counted on a ``meta`` copy of the network (shapes only, no arithmetic), so counting the paper-size UNet
takes no compute.

Peaks: dense (no 2:4 sparsity) throughput of known GPUs from the vendor datasheets (:data:`GPU_PEAKS`), and the
measured throughput of large matrix products (:func:`measure_matmul_tflops`) for any other device, CPUs included.
"""

from __future__ import annotations

import copy
import re
import time
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

#: Dense peak TFLOP/s per precision of known GPUs, first matching pattern (a regular expression searched in
#: ``torch.cuda.get_device_name()``) wins. Tensor-core figures: the datasheets give TF32/FP16/BF16 "with sparsity"
#: (marked *), the dense figure is half of it. ``fp16``/``bf16`` are tensor-core rates with FP32 accumulation (what
#: torch's GEMMs and convolutions use); ``tf32`` is the tensor-core rate for float32 inputs; ``fp32`` is the
#: non-tensor CUDA-core rate. None: the GPU has no such unit.
GPU_PEAKS: list[dict[str, Any]] = [
    # NVIDIA H100 Tensor Core GPU datasheet (H100 NVL column): FP32 60, TF32 835*, BF16/FP16 1671*
    {"pattern": r"H100.*NVL", "name": "NVIDIA H100 NVL", "fp32": 60.0, "tf32": 417.5, "fp16": 835.5, "bf16": 835.5,
     "source": "NVIDIA H100 Tensor Core GPU datasheet (H100 NVL): sparse tensor figures halved"},
    # NVIDIA H100 datasheet (H100 PCIe column): FP32 51, TF32 756*, BF16/FP16 1513*
    {"pattern": r"H100.*PCIe", "name": "NVIDIA H100 PCIe", "fp32": 51.0, "tf32": 378.0, "fp16": 756.5,
     "bf16": 756.5, "source": "NVIDIA H100 Tensor Core GPU datasheet (H100 PCIe): sparse tensor figures halved"},
    # NVIDIA H100 datasheet (H100 SXM column): FP32 67, TF32 989*, BF16/FP16 1979*; torch names it 'NVIDIA H100
    # 80GB HBM3'
    {"pattern": r"H100", "name": "NVIDIA H100 SXM", "fp32": 67.0, "tf32": 494.5, "fp16": 989.5, "bf16": 989.5,
     "source": "NVIDIA H100 Tensor Core GPU datasheet (H100 SXM): sparse tensor figures halved"},
    # NVIDIA H200 Tensor Core GPU datasheet (H200 NVL column): FP32 60, TF32 835*, BF16/FP16 1671*
    {"pattern": r"H200.*NVL", "name": "NVIDIA H200 NVL", "fp32": 60.0, "tf32": 417.5, "fp16": 835.5, "bf16": 835.5,
     "source": "NVIDIA H200 Tensor Core GPU datasheet (H200 NVL): sparse tensor figures halved"},
    # NVIDIA H200 datasheet (H200 SXM column): FP32 67, TF32 989*, BF16/FP16 1979* (the H100 SXM's compute)
    {"pattern": r"H200", "name": "NVIDIA H200 SXM", "fp32": 67.0, "tf32": 494.5, "fp16": 989.5, "bf16": 989.5,
     "source": "NVIDIA H200 Tensor Core GPU datasheet (H200 SXM): sparse tensor figures halved"},
    # NVIDIA A100 Tensor Core GPU datasheet: FP32 19.5, TF32 156 (312*), BF16/FP16 312 (624*), the same for
    # the 40 GB and 80 GB, PCIe and SXM cards
    {"pattern": r"A100", "name": "NVIDIA A100 (40/80 GB, PCIe/SXM)", "fp32": 19.5, "tf32": 156.0, "fp16": 312.0,
     "bf16": 312.0, "source": "NVIDIA A100 Tensor Core GPU datasheet (dense figures)"},
    # NVIDIA A10 datasheet: FP32 31.2, TF32 62.5 (125*), BF16/FP16 125 (250*)
    {"pattern": r"\bA10\b", "name": "NVIDIA A10", "fp32": 31.2, "tf32": 62.5, "fp16": 125.0, "bf16": 125.0,
     "source": "NVIDIA A10 Tensor Core GPU datasheet (dense figures)"},
    # NVIDIA L40S datasheet: FP32 91.6, TF32 183 (366*), BF16/FP16 362.05 (733*)
    {"pattern": r"L40S", "name": "NVIDIA L40S", "fp32": 91.6, "tf32": 183.0, "fp16": 362.05, "bf16": 362.05,
     "source": "NVIDIA L40S datasheet (dense figures)"},
    # NVIDIA L40 datasheet: FP32 90.5, TF32 90.5 (181*), BF16/FP16 181.05 (362.1*)
    {"pattern": r"L40\b", "name": "NVIDIA L40", "fp32": 90.5, "tf32": 90.5, "fp16": 181.05, "bf16": 181.05,
     "source": "NVIDIA L40 datasheet (dense figures)"},
    # NVIDIA L4 datasheet: FP32 30.3, TF32 120*, BF16/FP16 242*
    {"pattern": r"\bL4\b", "name": "NVIDIA L4", "fp32": 30.3, "tf32": 60.0, "fp16": 121.0, "bf16": 121.0,
     "source": "NVIDIA L4 Tensor Core GPU datasheet: sparse tensor figures halved"},
    # NVIDIA Ada Lovelace GPU architecture whitepaper, GeForce RTX 4090: FP32 82.6, TF32 tensor 82.6 (165.2*),
    # FP16/BF16 tensor with FP32 accumulate 165.2 (330.4*)
    {"pattern": r"RTX 4090", "name": "NVIDIA GeForce RTX 4090", "fp32": 82.6, "tf32": 82.6, "fp16": 165.2,
     "bf16": 165.2, "source": "NVIDIA Ada Lovelace GPU architecture whitepaper (RTX 4090, FP32 accumulate, dense)"},
    # NVIDIA V100 Tensor Core GPU datasheet: V100S PCIe FP32 16.4, tensor 130; V100 PCIe 14, 112; V100 SXM2
    # 15.7, 125 (tensor = FP16 inputs, FP32 accumulate; Volta has neither TF32 nor BF16)
    {"pattern": r"V100S", "name": "NVIDIA V100S PCIe", "fp32": 16.4, "tf32": None, "fp16": 130.0, "bf16": None,
     "source": "NVIDIA V100 Tensor Core GPU datasheet (V100S PCIe)"},
    {"pattern": r"V100.*PCIE", "name": "NVIDIA V100 PCIe", "fp32": 14.0, "tf32": None, "fp16": 112.0, "bf16": None,
     "source": "NVIDIA V100 Tensor Core GPU datasheet (V100 PCIe)"},
    {"pattern": r"V100", "name": "NVIDIA V100 SXM2", "fp32": 15.7, "tf32": None, "fp16": 125.0, "bf16": None,
     "source": "NVIDIA V100 Tensor Core GPU datasheet (V100 SXM2)"},
    # NVIDIA T4 datasheet: FP32 8.1, mixed-precision FP16/FP32 tensor 65
    {"pattern": r"\bT4\b", "name": "NVIDIA T4", "fp32": 8.1, "tf32": None, "fp16": 65.0, "bf16": None,
     "source": "NVIDIA T4 datasheet"},
]
PRECISIONS = ("fp32", "tf32", "fp16", "bf16")
MATMUL_DTYPES = {"fp32": torch.float32, "tf32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
#: Side of the square matrices timed by :func:`measure_matmul_tflops` per device type (large enough for the BLAS
#: to reach its plateau: 2·8192³ = 1.1 TFLOP per product on a GPU, 2·2048³ = 17 GFLOP on a CPU).
MATMUL_SIZE = {"cuda": 8192, "cpu": 2048}


def datasheet_peaks(device_name: str) -> dict[str, Any] | None:
    """The :data:`GPU_PEAKS` entry whose pattern occurs in ``device_name`` (``torch.cuda.get_device_name()``), or
    None for an unknown device."""
    for entry in GPU_PEAKS:
        if re.search(entry["pattern"], device_name, flags=re.IGNORECASE):
            return dict(entry)
    return None


def meta_copy(module: nn.Module) -> nn.Module:
    """A copy of ``module`` whose parameters and buffers are ``meta`` tensors of the same shapes, dtypes and
    ``requires_grad`` (the original is neither copied nor moved)."""
    memo: dict[int, Any] = {}
    for param in module.parameters():
        memo[id(param)] = nn.Parameter(torch.empty_like(param, device="meta"), requires_grad=param.requires_grad)
    for buffer in module.buffers():
        memo[id(buffer)] = torch.empty_like(buffer, device="meta")
    return copy.deepcopy(module, memo)


def _first_tensor(output: Any) -> torch.Tensor:
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    raise TypeError(f"cannot differentiate a network output of type {type(output).__name__}")


def pass_flops(module: nn.Module, inputs: Sequence[torch.Tensor], backward: bool = True,
               on_meta: bool = True) -> dict[str, Any]:
    """FLOPs of one forward of ``module(*inputs)`` and of one backward of its (first) output to ``inputs[0]``
    (the gradient the methods take: w.r.t. the image only, never the weights), counted by
    ``FlopCounterMode``. ``inputs`` hold the shapes (batch 1 for per-image counts). ``on_meta`` counts on a
    :func:`meta_copy` (no arithmetic); if the network cannot run on meta tensors it is counted on its own device.
    Returns ``forward``, ``backward`` (None without ``backward``), ``counted_on`` and the FLOPs per op."""
    counted_on = _device_of(module, inputs)
    if on_meta:
        try:
            return _count(meta_copy(module), [t.detach().to("meta") for t in inputs], backward, "meta")
        except Exception as error:  # a network with data-dependent Python control flow cannot run on meta tensors
            counted_on += f" ({type(error).__name__} on meta tensors)"
    return _count(module, [t.detach() for t in inputs], backward, counted_on)


def _device_of(module: nn.Module, inputs: Sequence[torch.Tensor]) -> str:
    param = next(module.parameters(), None)
    return str(param.device if param is not None else inputs[0].device)


def _count(module: nn.Module, inputs: list[torch.Tensor], backward: bool, counted_on: str) -> dict[str, Any]:
    x = inputs[0].requires_grad_(backward)
    with torch.enable_grad():
        with FlopCounterMode(display=False) as forward_counter:
            out = _first_tensor(module(x, *inputs[1:]))
        result: dict[str, Any] = {"forward": int(forward_counter.get_total_flops()), "backward": None,
                                  "counted_on": counted_on, "ops": _ops(forward_counter)}
        if backward:
            with FlopCounterMode(display=False) as backward_counter:
                torch.autograd.grad(out, x, grad_outputs=torch.ones_like(out))
            result["backward"] = int(backward_counter.get_total_flops())
            result["ops"].update({f"{op} (backward)": n for op, n in _ops(backward_counter).items()})
    return result


def _ops(counter: FlopCounterMode) -> dict[str, int]:
    counts = counter.get_flop_counts().get("Global", {})
    return {str(op).removeprefix("aten."): int(n) for op, n in counts.items()}


def measure_matmul_tflops(device: torch.device | str, precision: str = "fp32", size: int | None = None,
                          repeats: int = 3) -> dict[str, Any]:
    """The measured throughput of ``size``×``size`` matrix products in ``precision``'s dtype on ``device``: the
    best of ``repeats`` timed products after one warm-up, 2·size³ FLOPs each. ``tf32`` allows TF32 matmuls while it
    runs (CUDA); ``fp32`` keeps torch's current setting."""
    device = torch.device(device)
    size = int(size or MATMUL_SIZE.get(device.type, 2048))
    dtype = MATMUL_DTYPES[precision]
    allow_tf32 = torch.backends.cuda.matmul.allow_tf32
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(size, size, generator=generator).to(device=device, dtype=dtype)
    b = torch.randn(size, size, generator=generator).to(device=device, dtype=dtype)
    try:
        if precision == "tf32":
            torch.backends.cuda.matmul.allow_tf32 = True
        best = float("inf")
        for index in range(repeats + 1):
            _sync(device)
            started = time.perf_counter()
            torch.mm(a, b)
            _sync(device)
            if index:  # the first product warms the BLAS up
                best = min(best, time.perf_counter() - started)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = allow_tf32
        del a, b
    return {"tflops": 2 * size**3 / best / 1e12, "dtype": str(dtype).removeprefix("torch."), "size": size,
            "repeats": repeats, "seconds_best": best}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
