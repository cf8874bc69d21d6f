"""sFID, the split FID of ACE (``compute_sFID.sh``): no counterfactual is compared with its own original.

Upstream (docs/upstream/dime_ace.md §4.4): list the originals, ``shuf`` them (unseeded), ``split1`` = the last
⌊N/2⌋ names, ``split2`` = the first ⌊N/2⌋ (one name dropped when N is odd); the CFs of a split are the successful
CFs with those names. ``sFID = (FID(real/split1, cf/split2) + FID(real/split2, cf/split1)) / 2``. cfx shuffles
the sorted names with ``random.Random(seed)`` (option ``seed``, default 0), so a value can be reproduced.

Option ``class_balanced`` (LDCE's sFID, docs/upstream/ldce_gcd_svce.md §1.10 (a), used for CelebA-HQ; in LDCE's
``compute_fid.py`` it is the branch taken when its ``--class_balanced`` flag is *off*): the instances are grouped
by source class (the tree's Info ``label``), each class's names sorted, its first ⌊n/2⌋ go to one half and the
rest to the other; no shuffling. A tree gives the classes; two bare folders do not, so
:func:`compute_folders` supports only the random split. Features and the other options as :mod:`cfx.metrics.fid`.
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cfx.metrics import MetricContext, MetricMetadata, NotApplicable
from cfx.metrics.fid import FeatureSpace, folder_images, frechet_distance, tree_sets

METADATA = MetricMetadata(
    name="sfid",
    higher_is_better=False,
    reads="originals of the method and its successful CFs (as FID), split in two halves of names",
    upstream="ACE compute_sFID.sh (two python -m pytorch_fid runs, averaged by hand); LDCE eval_utils/compute_fid.py "
             "(per-class split)",
    networks=("features",),
)


def random_split(names: Sequence[str], seed: int) -> tuple[list[str], list[str]]:
    """ACE's split with a seeded shuffle: ``split1`` = last ⌊N/2⌋, ``split2`` = first ⌊N/2⌋ of the shuffled names."""
    shuffled = sorted(names)
    random.Random(seed).shuffle(shuffled)
    half = len(shuffled) // 2
    return shuffled[len(shuffled) - half:], shuffled[:half]


def per_class_split(names_by_class: dict[Any, Sequence[str]]) -> tuple[list[str], list[str]]:
    """LDCE's split: per class (sorted), the first ⌊n/2⌋ sorted names to ``split1``, the rest to ``split2``."""
    split1: list[str] = []
    split2: list[str] = []
    for cls in sorted(names_by_class):
        names = sorted(names_by_class[cls])
        split1 += names[:len(names) // 2]
        split2 += names[len(names) // 2:]
    return split1, split2


def split_fid(real: dict[str, Path], fake: dict[str, Path], split1: Sequence[str], split2: Sequence[str],
              ctx: MetricContext) -> dict[str, Any]:
    """``(FID(real[split1], fake[split2]) + FID(real[split2], fake[split1])) / 2``; ``real``/``fake`` map names to
    files (names without a successful CF are simply absent from ``fake``, as rsync skips them upstream)."""
    space = FeatureSpace(ctx)
    real_names = sorted(real)
    fake_names = sorted(fake)
    real_act = dict(zip(real_names, space.activations([real[n] for n in real_names]), strict=True))
    fake_act = dict(zip(fake_names, space.activations([fake[n] for n in fake_names]), strict=True))

    def fid(real_split: Sequence[str], fake_split: Sequence[str]) -> tuple[float, int, int]:
        r = [real_act[n] for n in sorted(real_split) if n in real_act]
        f = [fake_act[n] for n in sorted(fake_split) if n in fake_act]
        if len(r) < 2 or len(f) < 2:
            raise NotApplicable(f"sFID needs at least 2 real and 2 fake images per half, got {len(r)} and {len(f)}")
        return frechet_distance(np.stack(r), np.stack(f)), len(r), len(f)

    fid_1, n_real_1, n_fake_2 = fid(split1, split2)
    fid_2, n_real_2, n_fake_1 = fid(split2, split1)
    return {"value": (fid_1 + fid_2) / 2, "n": n_fake_1 + n_fake_2,
            "fid_real1_fake2": fid_1, "fid_real2_fake1": fid_2,
            "n_real": [n_real_1, n_real_2], "n_fake": [n_fake_1, n_fake_2],
            **space.describe(), "stand_in": space.stand_in}


def compute_folders(real: Path, fake: Path, ctx: MetricContext) -> dict[str, Any]:
    """sFID of two folders whose files pair by name stem (ACE's ``real/all`` and ``cf/all``)."""
    if ctx.options.get("class_balanced"):
        raise ValueError("sfid option class_balanced needs the classes of the instances (Info labels): run it on a "
                         "results tree (--tree/--method), not on two folders")
    seed = int(ctx.options.get("seed", 0))
    real_files = {p.stem: p for p in folder_images(real)}
    fake_files = {p.stem: p for p in folder_images(fake)}
    split1, split2 = random_split(list(real_files), seed)
    return {**split_fid(real_files, fake_files, split1, split2, ctx), "seed": seed, "split": "random"}


def compute_tree(tree_root: Path, method: str, ctx: MetricContext) -> dict[str, Any]:
    """sFID of the method's originals and successful CFs; random (ACE) or per-class (LDCE) halves."""
    every, successful = tree_sets(tree_root, method, "sfid")
    real = {p["stem"]: p["original_path"] for p in every}
    fake = {p["stem"]: p["cf_path"] for p in successful}
    if ctx.options.get("class_balanced"):
        by_class: dict[int, list[str]] = defaultdict(list)
        for p in every:
            by_class[int(p["info"]["label"])].append(p["stem"])
        split1, split2 = per_class_split(by_class)
        return {**split_fid(real, fake, split1, split2, ctx), "split": "per source class (LDCE)"}
    seed = int(ctx.options.get("seed", 0))
    split1, split2 = random_split(list(real), seed)
    return {**split_fid(real, fake, split1, split2, ctx), "seed": seed, "split": "random"}
