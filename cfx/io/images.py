"""Image quantisation, atomic saving and loading exactly as the upstream savers do it.

Quantisation (docs/upstream/dime_ace.md §1.6, §2.9): DiME writes the input as ``uint8(255·(x/2 + 0.5))``
(truncation, no clamp; ``main.py``), the CF and the noise as ``uint8(clamp((x'+1)·127.5, 0, 255))``; ACE writes
``uint8(255·v)`` for v in [0,1]. DiME saves JPEG at PIL's default quality (75), ACE PNG.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from cfx.runtime.files import atomic_path


def to_uint8(x: torch.Tensor, value_range: tuple[float, float] = (-1.0, 1.0), mode: str = "clamp") -> np.ndarray:
    """CHW tensor → HWC uint8 array, cast by truncation toward zero as ``tensor.to(torch.uint8)`` upstream.

    ``truncate``: DiME's original ``uint8(255·(x/2 + 0.5))`` (no clamp, no rounding); ``clamp``: DiME's CF
    ``uint8(clamp((x+1)·127.5, 0, 255))``. For [0,1] inputs (ACE) use ``value_range=(0, 1)``: ``uint8(255·v)``
    (clamped to [0,255] in ``clamp`` mode). The arithmetic is the upstream expressions' (float32), so the bytes
    are identical to upstream's for the same input tensor.
    """
    if mode not in ("clamp", "truncate"):
        raise ValueError(f"mode must be 'clamp' or 'truncate', got {mode!r}")
    if x.dim() != 3:
        raise ValueError(f"to_uint8 expects one CHW image, got shape {tuple(x.shape)}")
    x = x.detach().float().cpu()
    low, high = float(value_range[0]), float(value_range[1])
    if (low, high) == (-1.0, 1.0):
        scaled = (x / 2 + 0.5) * 255 if mode == "truncate" else (x + 1) * 127.5
    elif (low, high) == (0.0, 1.0):
        scaled = x * 255
    else:
        scaled = (x - low) / (high - low) * 255
    if mode == "clamp":
        scaled = scaled.clamp(0, 255)
    return scaled.to(torch.uint8).permute(1, 2, 0).contiguous().numpy()


def uint8_l1(original_u8: np.ndarray, cf_u8: np.ndarray) -> float:
    """``mean |x_u8/255 − x'_u8/255|`` in float32 over the HWC-ordered pixels, as DiME ``main.py`` computes the
    ``l_1`` of its Info files and ``summary.yaml`` (on CPU, after quantisation)."""
    a = torch.from_numpy(np.ascontiguousarray(original_u8)).float().view(1, -1) / 255
    b = torch.from_numpy(np.ascontiguousarray(cf_u8)).float().view(1, -1) / 255
    return float((a - b).abs().mean(dim=1)[0])


def _as_image(image: np.ndarray | torch.Tensor | Image.Image) -> Image.Image:
    if isinstance(image, Image.Image):
        return image
    if isinstance(image, torch.Tensor):
        if image.dtype != torch.uint8:
            raise TypeError(f"save_image_atomic needs uint8 pixels, got a {image.dtype} tensor: quantise it with "
                            f"cfx.io.images.to_uint8 first")
        image = image.detach().cpu()
        if image.dim() == 3 and image.shape[0] in (1, 3) and image.shape[2] not in (1, 3):
            image = image.permute(1, 2, 0)  # CHW → HWC
        image = image.contiguous().numpy()
    if image.dtype != np.uint8:
        raise TypeError(f"save_image_atomic needs uint8 pixels, got {image.dtype}: quantise with to_uint8 first")
    # upstream ``ImageSaver.preprocess``: drop a trailing channel axis of size 1 (grayscale)
    return Image.fromarray(image.squeeze(2) if image.ndim == 3 and image.shape[2] == 1 else image)


def save_image_atomic(image: np.ndarray | torch.Tensor | Image.Image, path: Path, quality: int = 75) -> Path:
    """Write ``image`` (HWC uint8 array / uint8 tensor / PIL image) to ``path`` atomically: a temporary file in the
    same folder, then ``os.replace``. ``.jpg``/``.jpeg``: JPEG at ``quality`` (75 = PIL's default, DiME's
    outputs); any other suffix: PIL's format for it (PNG is lossless). A reader never sees a partial file."""
    path = Path(path)
    pil = _as_image(image)
    with atomic_path(path) as tmp:
        if path.suffix.lower() in (".jpg", ".jpeg"):
            pil.save(tmp, format="JPEG", quality=quality)
        else:
            pil.save(tmp)
    return path


def load_image(path: Path) -> torch.Tensor:
    """RGB image as a float CHW tensor in [0,1]; a missing or corrupt file is an error naming it."""
    path = Path(path)
    try:
        with Image.open(path) as image:
            array = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    except FileNotFoundError as err:
        raise FileNotFoundError(f"image {path} does not exist (was its chunk generated?)") from err
    except (UnidentifiedImageError, OSError, SyntaxError) as err:
        raise ValueError(f"image {path} is corrupt or unreadable ({err}); delete it together with its Info file "
                         f"and rerun the chunk to regenerate it") from err
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()
