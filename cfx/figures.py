"""Figures: the per-experiment grid (original | counterfactual | difference) for one method."""

from __future__ import annotations

import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from cfx.io.tree import iter_instances  # noqa: E402
from cfx.methods import EVALUATED_RESULTS  # noqa: E402


def _rgb(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0


def grid_figure(tree_root: Path, method: str, out_path: Path, *, n_images: int = 8, title: str = "") -> Path:
    """Save a 3-row grid: originals, counterfactuals and |x − x'| (amplified to the grid's maximum)."""
    found = iter_instances(Path(tree_root), EVALUATED_RESULTS.get(method, method))
    instances = sorted(found, key=lambda inst: inst["stem"])[:n_images]
    if not instances:
        raise ValueError(f"no instances of method '{method}' under {tree_root}")
    originals = [_rgb(inst["original_path"]) for inst in instances]
    cfs = [_rgb(inst["cf_path"]) for inst in instances]
    diffs = [np.abs(o - c).mean(axis=2) for o, c in zip(originals, cfs, strict=True)]
    scale = max(float(d.max()) for d in diffs) or 1.0
    n = len(instances)
    fig, axes = plt.subplots(3, n, figsize=(1.3 * n + 0.8, 4.3), squeeze=False)
    for k, inst in enumerate(instances):
        info = inst["info"]
        axes[0, k].imshow(originals[k])
        axes[0, k].set_title(f"{inst['stem'][-4:]}: {info['pred']}→{info['cf_pred']}", fontsize=7)
        axes[1, k].imshow(cfs[k])
        axes[2, k].imshow(diffs[k] / scale, cmap="magma", vmin=0, vmax=1)
        for row in range(3):
            axes[row, k].set_xticks([])
            axes[row, k].set_yticks([])
    for row, label in enumerate(["original", "counterfactual", "|difference|"]):
        axes[row, 0].set_ylabel(label, fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(f".{out_path.stem}.tmp{os.getpid()}.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, out_path)
    return out_path
