"""Workflow steps that need more than one call: each rule script and `cfx` command calls one of these."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from cfx.runtime.device import set_threads


def data_root_from_index(index_csv: Path) -> Path:
    """Dataset root of a CelebA-layout index (``ROOT/img_align_celeba/NNNNNN.jpg``)."""
    index = pd.read_csv(index_csv, dtype={"image_id": str}, nrows=1)
    if index.empty:
        raise ValueError(f"{index_csv} lists no images")
    return Path(index["path"].iloc[0]).parent.parent


def train_from_spec(
    spec: dict[str, Any], *, index_csv: Path, out_path: Path, device: str = "auto", threads: int | None = None,
    init_checkpoint: Path | None = None,
) -> dict[str, Any]:
    """Train the network a suite ``models:`` entry describes and write its checkpoint. A spec with ``init`` (a
    robust classifier fine-tuned from another network) starts from ``init_checkpoint``, by default
    ``<init>.pt`` next to ``out_path``."""
    from cfx import train

    set_threads(threads)
    data_root = data_root_from_index(index_csv)
    options = dict(spec.get("train", {}))
    kind = spec["kind"]
    if kind == "ddpm":
        return train.train_ddpm(
            data_root, out_path, model_flags=spec["flags"], diffusion_flags=spec.get("diffusion", {}),
            image_size=int(spec["image_size"]), device=device, **options,
        )
    if kind == "classifier":
        return train.train_classifier(
            data_root, out_path, arch=spec.get("arch", {}), image_size=int(spec["image_size"]), device=device,
            **options,
        )
    if kind == "robust_classifier":
        if spec.get("init") and init_checkpoint is None:
            init_checkpoint = Path(out_path).parent / f"{spec['init']}.pt"
        return train.train_robust_classifier(
            data_root, out_path, arch=spec.get("arch", {}), image_size=int(spec["image_size"]), device=device,
            init_checkpoint=init_checkpoint, **options,
        )
    if kind == "oracle":
        return train.train_oracle(
            data_root, out_path, arch=spec.get("arch", {}), image_size=int(spec["image_size"]), device=device,
            **options,
        )
    if kind == "identity":
        return train.train_identity(
            data_root, out_path, arch=spec.get("arch", {}), image_size=int(spec["image_size"]), device=device,
            **options,
        )
    raise ValueError(f"unknown model kind '{kind}' (expected ddpm, classifier, robust_classifier, oracle or identity)")
