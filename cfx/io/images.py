"""Image quantisation and atomic saving exactly as the upstream savers do it."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError


def to_uint8(x: torch.Tensor, value_range: tuple[float, float] = (-1.0, 1.0), mode: str = "clamp") -> np.ndarray:
    """CHW tensor → HWC uint8. ``truncate``: DiME's original ``uint8(255·(x/2+0.5))`` (no clamp, no rounding);
    ``clamp``: DiME's CF ``uint8(clamp((x+1)·127.5, 0, 255))``. For [0,1] inputs (ACE) use value_range (0, 1)."""
    low, high = value_range
    scaled = (x.detach().float().cpu() - low) / (high - low) * 255.0
    if mode == "clamp":
        scaled = scaled.clamp(0, 255)
    elif mode != "truncate":
        raise ValueError(f"mode must be clamp or truncate, got {mode}")
    return scaled.to(torch.uint8).permute(1, 2, 0).contiguous().numpy()


def save_image_atomic(image: np.ndarray | Image.Image, path: Path, quality: int = 75) -> Path:
    """Write via a temporary file in the same folder and rename. JPEG at PIL's default quality 75 (DiME)."""
    path = Path(path)
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image.squeeze(2) if image.ndim == 3 and image.shape[2] == 1 else image)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp{os.getpid()}{path.suffix}")
    if path.suffix.lower() in (".jpg", ".jpeg"):
        image.save(tmp, format="JPEG", quality=quality)
    else:
        image.save(tmp)
    os.replace(tmp, path)
    return path


def load_image(path: Path) -> torch.Tensor:
    """RGB image as a float CHW tensor in [0,1]; a missing or corrupt file is an error naming it."""
    try:
        with Image.open(path) as image:
            array = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    except FileNotFoundError as err:
        raise FileNotFoundError(f"image {path} does not exist") from err
    except (UnidentifiedImageError, OSError) as err:
        raise ValueError(f"image {path} is corrupt or unreadable: {err}") from err
    return torch.from_numpy(array).permute(2, 0, 1)
