"""Per-image random streams: one ``torch.Generator`` per image, seeded from (seed, method, image id).

Upstream seeds once per process and walks its chunk, so each image's noise depends on the chunk count and
the batch (reference/anchors.md A8). Drawing every random number of an image from its own generator makes
results independent of chunking, batch size and which GPU ran what.
"""

from __future__ import annotations

import hashlib

import torch


def image_seed(seed: int, method: str, image_id: str | int) -> int:
    """A stable 63-bit seed: the first 8 bytes of sha256(f"{seed}/{method}/{image_id}")."""
    digest = hashlib.sha256(f"{seed}/{method}/{image_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") & ((1 << 63) - 1)


def image_generators(seed: int, method: str, image_ids: list[str] | list[int],
                     device: torch.device | str = "cpu") -> list[torch.Generator]:
    """One CPU generator per image (draws are moved to ``device``: CPU draws are device-independent)."""
    return [torch.Generator(device="cpu").manual_seed(image_seed(seed, method, i)) for i in image_ids]


def randn_per_image(generators: list[torch.Generator], shape_per_image: tuple[int, ...],
                    device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Stack one standard-normal draw of ``shape_per_image`` from each image's generator."""
    draws = [torch.randn(shape_per_image, generator=g, dtype=torch.float32) for g in generators]
    return torch.stack(draws).to(device=device, dtype=dtype)
