"""Per-image random streams: one ``torch.Generator`` per image, seeded from (seed, method, image id).

Upstream seeds once per process and walks its chunk, so each image's noise depends on the chunk count and
the batch (docs/upstream/anchors.md A8, docs/upstream/dime_ace.md §7 item 21). Drawing every random number of an image
from its own generator makes results independent of chunking, batch size and which GPU ran what.

The generators live on the CPU and draws are moved to the compute device, so the noise is bit-identical on
every machine. CPU draws are the cost of that (≈0.7 ms per 3×128×128 draw on one slow core; DiME τ = 60 makes
≈1 770 draws per image and attempt), so a batch's draws run on ``torch.get_num_threads()`` threads — each
generator is used by one thread at a time, which leaves the numbers unchanged.
"""

from __future__ import annotations

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor

import torch

_POOL: tuple[int, int, ThreadPoolExecutor] | None = None  # (pid, workers, pool)


def image_seed(seed: int, method: str, image_id: str | int) -> int:
    """A stable 63-bit seed: the first 8 bytes of sha256(f"{seed}/{method}/{image_id}"), top bit cleared."""
    digest = hashlib.sha256(f"{seed}/{method}/{image_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") & ((1 << 63) - 1)


def image_generators(seed: int, method: str, image_ids: list[str] | list[int],
                     device: torch.device | str = "cpu") -> list[torch.Generator]:
    """One generator per image, in ``image_ids`` order. They are CPU generators whatever ``device`` is: the
    draws of :func:`randn_per_image` are moved to the device, so the noise does not depend on the hardware."""
    return [torch.Generator(device="cpu").manual_seed(image_seed(seed, method, i)) for i in image_ids]


def _pool(workers: int) -> ThreadPoolExecutor:
    global _POOL
    if _POOL is None or _POOL[0] != os.getpid() or _POOL[1] != workers:  # new process (fork) or thread budget
        _POOL = (os.getpid(), workers, ThreadPoolExecutor(max_workers=workers, thread_name_prefix="cfx-noise"))
    return _POOL[2]


def randn_per_image(generators: list[torch.Generator], shape_per_image: tuple[int, ...],
                    device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``(len(generators), *shape_per_image)``: one float32 standard-normal draw from each image's generator,
    stacked, then moved to ``device``/``dtype``. Row k depends only on generator k's state."""
    shape = tuple(shape_per_image)

    def draw(generator: torch.Generator) -> torch.Tensor:
        return torch.randn(shape, generator=generator, dtype=torch.float32)

    workers = min(len(generators), torch.get_num_threads())
    numel = 1
    for size in shape:
        numel *= size
    distinct = len({id(g) for g in generators}) == len(generators)  # a shared generator must be drawn in order
    if workers > 1 and numel >= 4096 and distinct:
        draws = list(_pool(workers).map(draw, generators))
    else:
        draws = [draw(g) for g in generators]
    return torch.stack(draws).to(device=device, dtype=dtype)
