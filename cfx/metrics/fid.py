"""FID between the originals and the successful counterfactuals (DiME ``compute-fid.sh``, ACE ``compute_FID.sh``).

Both scripts copy ``Original/{Correct,Incorrect}/*`` (every processed image, whether its CF succeeded or not) into
``real`` and ``Results/EXP/{CC,IC}/CCF/CF/*`` into ``cf``, then run ``python -m pytorch_fid real cf``
(docs/upstream/dime_ace.md §4.4). cfx computes the same without copies, with pytorch-fid's conventions: images read
as RGB ``ToTensor`` ([0,1]), batches of 50, InceptionV3 pool3 (bilinear resize to 299 inside), activations in
float64, ``np.mean``/``np.cov(rowvar=False)`` and pytorch-fid's ``calculate_frechet_distance``.

Options (suite ``metrics.fid.options``): ``dims`` (pytorch-fid ``--dims``, default 2048), ``batch_size`` (50).
With a ``features`` network of kind ``oracle`` (mini suite) the distance is taken in that network's 128-d feature
space and labelled as a stand-in. Note: on a CPU, scipy's ``sqrtm`` of two 2048² covariances takes minutes.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cfx.metrics import ALL_SUBSETS, SUCCESSFUL, MetricContext, MetricMetadata, NotApplicable
from cfx.metrics._common import collect_pairs, image_batches
from cfx.metrics.networks import load_fid_features

METADATA = MetricMetadata(
    name="fid",
    higher_is_better=False,
    reads="real: every original of the method (Original/{Correct,Incorrect}); fake: successful CFs "
          "Results/{method}/{CC,IC}/CCF/CF",
    upstream="DiME compute-fid.sh; ACE compute_FID.sh (python -m pytorch_fid real cf)",
    networks=("features",),
)
BATCH_SIZE = 50  # pytorch-fid --batch-size default
ORACLE_STAND_IN = "Fréchet distance in the mini oracle's 128-d feature space, not Inception"


def folder_images(folder: Path) -> list[Path]:
    """The images pytorch-fid reads from a folder: ``sorted(path.glob('*.<ext>'))`` over its extensions."""
    from pytorch_fid.fid_score import IMAGE_EXTENSIONS

    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"image folder {folder} does not exist")
    return sorted(file for ext in IMAGE_EXTENSIONS for file in folder.glob(f"*.{ext}"))


class FeatureSpace:
    """The Fréchet feature extractor of a metric context: Inception (``dims``) or the mini oracle's features."""

    def __init__(self, ctx: MetricContext) -> None:
        self.ref = ctx.networks.get("features")
        self.dims = int(ctx.options.get("dims", 2048))
        self.batch_size = int(ctx.options.get("batch_size", BATCH_SIZE))
        self.extract = load_fid_features(self.ref, ctx.device, dims=self.dims)
        self.is_inception = self.ref is None or self.ref.kind == "inception"

    @property
    def stand_in(self) -> str:
        return "" if self.is_inception else ORACLE_STAND_IN

    def describe(self) -> dict[str, Any]:
        if self.is_inception:
            source = self.ref.path if self.ref is not None and self.ref.path is not None else "$TORCH_HOME"
            return {"features": f"pytorch-fid InceptionV3 ({self.dims}-d)", "features_weights": str(source)}
        return {"features": f"{self.ref.kind} network '{self.ref.name}'"}

    @torch.no_grad()
    def activations(self, files: Sequence[Path]) -> np.ndarray:
        """(N, d) float64 activations of ``files`` (pytorch-fid ``get_activations``)."""
        rows = [self.extract(batch).double().cpu().numpy() for batch in image_batches(list(files), self.batch_size)]
        return np.concatenate(rows) if rows else np.zeros((0, 0))


def frechet_distance(real: np.ndarray, fake: np.ndarray) -> float:
    """pytorch-fid: ``calculate_frechet_distance`` of the means and ``np.cov(rowvar=False)`` of two activation sets
    (at least 2 rows each)."""
    from pytorch_fid.fid_score import calculate_frechet_distance

    for name, act in (("real", real), ("fake", fake)):
        if act.shape[0] < 2:
            raise NotApplicable(f"FID needs at least 2 {name} images for a covariance, got {act.shape[0]}")
    return float(calculate_frechet_distance(np.mean(real, axis=0), np.cov(real, rowvar=False),
                                            np.mean(fake, axis=0), np.cov(fake, rowvar=False)))


def fid_of_files(real: Sequence[Path], fake: Sequence[Path], ctx: MetricContext) -> dict[str, Any]:
    """FID between two lists of image files."""
    space = FeatureSpace(ctx)
    value = frechet_distance(space.activations(real), space.activations(fake))
    return {"value": value, "n": len(fake), "n_real": len(real), **space.describe(), "stand_in": space.stand_in}


def compute_folders(real: Path, fake: Path, ctx: MetricContext) -> dict[str, Any]:
    """``python -m pytorch_fid real fake`` (with ctx's features network and options)."""
    return fid_of_files(folder_images(real), folder_images(fake), ctx)


def tree_sets(tree_root: Path, method: str, metric: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The instances behind the real set (every instance of the method: its originals) and the fake set (the
    successful ones: their CFs)."""
    every = collect_pairs(tree_root, method, ALL_SUBSETS, metric)
    successful = collect_pairs(tree_root, method, SUCCESSFUL, metric)
    return every, successful


def compute_tree(tree_root: Path, method: str, ctx: MetricContext) -> dict[str, Any]:
    """FID(every original of the method, its successful CFs)."""
    every, successful = tree_sets(tree_root, method, "fid")
    return fid_of_files([p["original_path"] for p in every], [p["cf_path"] for p in successful], ctx)
