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
    """LPIPS-VGG and its stand-in label. Kind ``lpips_vgg`` (or none): the paper's network; its VGG-16 trunk is
    read from the network's checkpoint file when it has one (the paper suite's registry ``torchvision_vgg16``,
    downloaded to ``resources/checkpoints``: :func:`load_lpips_vgg_weights`), else torchvision reads it from
    ``$TORCH_HOME/hub/checkpoints`` (never downloaded here); kind ``lpips_random`` (mini): LPIPS's published linear
    heads on a VGG-16 trunk with seeded random weights."""
    import lpips

    kind = ref.kind if ref is not None else "lpips_vgg"
    if kind == "lpips_vgg":
        if ref is not None and ref.path is not None:
            return load_lpips_vgg_weights(ref.path).to(device).eval(), ""
        weights = Path(torch.hub.get_dir()) / "checkpoints" / VGG16_WEIGHTS
        if not weights.exists():
            raise FileNotFoundError(f"LPIPS-VGG needs torchvision's VGG-16 ImageNet weights at {weights} "
                                    f"(https://download.pytorch.org/models/{VGG16_WEIGHTS}); set TORCH_HOME or put "
                                    f"the file there")
        return lpips.LPIPS(net="vgg", spatial=False, verbose=False).to(device).eval(), ""
    if kind == "lpips_random":
        seed = int(ref.spec.get("seed", 0))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            net = _lpips_vgg_random_trunk()
        return net.to(device).eval(), f"LPIPS heads on a random VGG-16 trunk (seed {seed}), not ImageNet VGG-16"
    raise ValueError(f"network '{ref.name}' of kind '{kind}' is not an LPIPS network (kinds: lpips_vgg, "
                     f"lpips_random)")


def _lpips_vgg_random_trunk() -> torch.nn.Module:
    """``lpips.LPIPS(net='vgg')`` with its published linear heads and a randomly initialised VGG-16 trunk."""
    import lpips

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*(pretrained|weight enum).*", category=UserWarning)
        return lpips.LPIPS(net="vgg", pnet_rand=True, spatial=False, verbose=False)


def load_lpips_vgg_weights(path: str | Path) -> torch.nn.Module:
    """``lpips.LPIPS(net='vgg')`` whose VGG-16 trunk is read from torchvision's ``vgg16-397923af.pth`` at ``path``
    (weights-only, strict): LPIPS's ``slice1..5`` keep torchvision's ``features`` indices, so file key
    ``features.{i}.{weight,bias}`` is trunk key ``slice{k}.{i}.*``; the file's ``classifier.*`` (VGG's ImageNet head)
    is not part of LPIPS and is skipped, any other key is an error naming the file. The linear heads are the ones
    the lpips package ships (as upstream)."""
    from cfx.runtime.checkpoints import load_checkpoint, load_state_dict_strict

    path = Path(path)
    state = load_checkpoint(path, "torchvision VGG-16 weights (LPIPS-VGG trunk)")
    if not isinstance(state, dict):
        raise ValueError(f"{path} is not a torchvision VGG-16 state dict (got {type(state).__name__})")
    other = sorted(k for k in state if not k.startswith(("features.", "classifier.")))
    if other:
        raise ValueError(f"{path} is not torchvision's VGG-16 state dict: {len(other)} keys outside features.* and "
                         f"classifier.* {other[:10]}")
    with torch.random.fork_rng(devices=[]):
        net = _lpips_vgg_random_trunk()
    trunk = {}
    for key in net.net.state_dict():
        _, index, param = key.split(".", 2)  # slice{k}.{i}.{param}
        trunk[key] = state.get(f"features.{index}.{param}")
    missing = sorted(f"features.{k.split('.', 1)[1]}" for k, v in trunk.items() if v is None)
    unexpected = sorted(set(k for k in state if k.startswith("features."))
                        - {f"features.{k.split('.', 1)[1]}" for k in trunk})
    if missing or unexpected:
        raise ValueError(f"{path} does not match LPIPS's VGG-16 trunk: {len(missing)} missing {missing[:10]}, "
                         f"{len(unexpected)} unexpected {unexpected[:10]} (expected torchvision's vgg16 "
                         f"features.0 … features.28)")
    load_state_dict_strict(net.net, trunk, path, "features")
    return net.eval()


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
