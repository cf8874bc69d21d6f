"""σ_L, the diversity of counterfactuals across seeds (DiME ``eval_utils/compute_LPIPS.py``).

The same experiment is run with K seeds; for every stem present (with a CF, successful or not) in all K
trees, ``σ = mean_{i<j} LPIPS_vgg(x'_i, x'_j)`` on [−1,1] images (``lpips.LPIPS(net='vgg')``,
``normalize=False``); ``σ_L`` = mean over stems (reference/dime_ace.md §4.5). The workflow runs the extra
seeds as experiments ``{experiment}_seed{s}`` (suite key ``metrics.sigma_l.seeds``) and passes their trees.
"""

from __future__ import annotations

import itertools
import os
import warnings
from pathlib import Path
from typing import Any

import torch

from cfx.io.images import load_image
from cfx.metrics import ALL_SUBSETS, MetricContext, MetricMetadata, NetworkRef, iter_pairs

METADATA = MetricMetadata(
    name="sigma_l",
    higher_is_better=True,
    reads="CFs of every stem present in all seed runs: Results/{method}/{CC,IC}/{CCF,ICF}/CF",
    upstream="DiME eval_utils/compute_LPIPS.py (ACE keeps a copy)",
    networks=("lpips",),
)
VGG16_WEIGHTS = "vgg16-397923af.pth"  # torchvision's VGG-16 ImageNet file, which lpips.LPIPS(net='vgg') loads


def load_lpips(ref: NetworkRef | None, device: str = "cpu") -> tuple[torch.nn.Module, str]:
    """LPIPS-VGG and its stand-in label. Kind ``lpips_vgg`` (or none): the paper's network, whose VGG-16 trunk
    torchvision reads from ``$TORCH_HOME/hub/checkpoints`` (never downloaded here); kind ``lpips_random``
    (mini): LPIPS's published linear heads on a VGG-16 trunk with seeded random weights."""
    import lpips

    kind = ref.kind if ref is not None else "lpips_vgg"
    if kind == "lpips_vgg":
        weights = Path(torch.hub.get_dir()) / "checkpoints" / VGG16_WEIGHTS
        if not weights.exists():
            raise FileNotFoundError(f"LPIPS-VGG needs torchvision's VGG-16 ImageNet weights at {weights} "
                                    f"(https://download.pytorch.org/models/{VGG16_WEIGHTS}); set TORCH_HOME or put "
                                    f"the file there")
        return lpips.LPIPS(net="vgg", spatial=False, verbose=False).to(device).eval(), ""
    if kind == "lpips_random":
        seed = int(ref.spec.get("seed", 0))
        with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*(pretrained|weight enum).*", category=UserWarning)
            torch.manual_seed(seed)
            net = lpips.LPIPS(net="vgg", pnet_rand=True, spatial=False, verbose=False)
        return net.to(device).eval(), f"LPIPS heads on a random VGG-16 trunk (seed {seed}), not ImageNet VGG-16"
    raise ValueError(f"network '{ref.name}' of kind '{kind}' is not an LPIPS network (kinds: lpips_vgg, "
                     f"lpips_random)")


def _cf_paths(tree_root: Path, method: str) -> dict[str, Path]:
    return {p["stem"]: p["cf_path"] for p in iter_pairs(tree_root, method, ALL_SUBSETS)}


@torch.no_grad()
def sigma_lpips(cf_sets: list[dict[str, Path]], distance, device: str = "cpu") -> tuple[float, int]:
    """Mean over common stems of the mean pairwise distance between the K runs' CFs, and the stem count."""
    stems = sorted(set.intersection(*(set(s) for s in cf_sets)))
    if not stems:
        raise ValueError("no stem has a counterfactual in every seed run")
    per_stem = []
    for stem in stems:
        images = [load_image(s[stem]).unsqueeze(0).to(device) * 2 - 1 for s in cf_sets]
        pairs = [float(distance(a, b).flatten()[0]) for a, b in itertools.combinations(images, 2)]
        per_stem.append(sum(pairs) / len(pairs))
    return sum(per_stem) / len(per_stem), len(stems)


def compute_tree(tree_root: Path, method: str, ctx: MetricContext) -> dict[str, Any]:
    if not ctx.seed_trees:
        raise ValueError("metric 'sigma_l' needs the trees of the other seed runs (suite key metrics.sigma_l.seeds; "
                         "CLI: --seed-tree DIR, repeated)")
    net, stand_in = load_lpips(ctx.networks.get("lpips"), ctx.device)
    trees = [Path(tree_root), *map(Path, ctx.seed_trees)]
    value, n = sigma_lpips([_cf_paths(t, method) for t in trees], net, ctx.device)
    return {"value": value, "n": n, "runs": len(trees), "trees": [os.fspath(t) for t in trees], "stand_in": stand_in}
