"""σ_L, the diversity of counterfactuals across seeds (DiME ``eval_utils/compute_LPIPS.py``).

The same experiment is run with K seeds; for every stem present (with a CF, successful or not) in all K
trees, ``σ = mean_{i<j} LPIPS_vgg(x'_i, x'_j)`` on [−1,1] images (``lpips.LPIPS(net='vgg')``,
``normalize=False``); ``σ_L`` = mean over stems (docs/upstream/dime_ace.md §4.5). The workflow runs the extra
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
VGG16_SHA256_PREFIX = "397923af"  # the leading sha256 digits torchvision publishes in that file name
VGG16_REGISTRY_FILE = "resources/checkpoints/torchvision_vgg16.pth"  # the paper suite's registry checkpoint
LPIPS_VGG_HEADS = ("weights", "v0.1", "vgg.pth")  # the lpips package's linear heads, relative to its folder


def load_lpips(ref: NetworkRef | None, device: str = "cpu") -> tuple[torch.nn.Module, str]:
    """LPIPS-VGG and its stand-in label. Kind ``lpips_vgg`` (or none): the paper's network; its VGG-16 trunk is
    read weights-only (:func:`load_lpips_vgg_weights`) from the network's checkpoint file when it has one (the paper
    suite's registry ``torchvision_vgg16``, downloaded to ``resources/checkpoints``), else from torchvision's file in
    ``$TORCH_HOME/hub/checkpoints`` once its sha256 prefix checks out (:func:`cached_vgg16_weights`; never downloaded
    here, and never through torch.hub's loader, which unpickles with ``weights_only=False``); kind ``lpips_random``
    (mini): LPIPS's published linear heads on a VGG-16 trunk with seeded random weights."""
    kind = ref.kind if ref is not None else "lpips_vgg"
    if kind == "lpips_vgg":
        path = ref.path if ref is not None and ref.path is not None else cached_vgg16_weights()
        return load_lpips_vgg_weights(path).to(device).eval(), ""
    if kind == "lpips_random":
        seed = int(ref.spec.get("seed", 0))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            net = _lpips_vgg_random_trunk()
        return net.to(device).eval(), f"LPIPS heads on a random VGG-16 trunk (seed {seed}), not ImageNet VGG-16"
    raise ValueError(f"network '{ref.name}' of kind '{kind}' is not an LPIPS network (kinds: lpips_vgg, "
                     f"lpips_random)")


def cached_vgg16_weights() -> Path:
    """torchvision's VGG-16 file in the torch hub cache (``torch.hub.get_dir()/checkpoints/vgg16-397923af.pth``),
    checked against the sha256 prefix of its name: the trunk of an ``lpips_vgg`` network given without a file. A
    missing file is a one-line error naming the ``--network`` option and where the file goes."""
    from cfx.runtime.download import check_sha256, sha256_file

    weights = Path(torch.hub.get_dir()) / "checkpoints" / VGG16_WEIGHTS
    if not weights.is_file():
        raise FileNotFoundError(
            f"LPIPS-VGG needs torchvision's VGG-16 ImageNet weights: pass the file with --network "
            f"lpips=lpips_vgg:PATH (e.g. {VGG16_REGISTRY_FILE}, the registry checkpoint torchvision_vgg16: "
            f"`cfx download torchvision_vgg16`), or put https://download.pytorch.org/models/{VGG16_WEIGHTS} at "
            f"{weights} (set TORCH_HOME to move it)")
    check_sha256(sha256_file(weights), VGG16_SHA256_PREFIX, str(weights), "its published file name")
    return weights


def _lpips_vgg_random_trunk() -> torch.nn.Module:
    """``lpips.LPIPS(net='vgg')`` with its published linear heads and a randomly initialised VGG-16 trunk. The
    package's head file is read here, weights-only (``lpips.LPIPS(pretrained=True)`` would read it with a bare
    ``torch.load``, whose ``weights_only`` default an environment variable can turn off)."""
    import lpips

    from cfx.runtime.checkpoints import load_checkpoint, load_state_dict_strict

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*(pretrained|weight enum).*", category=UserWarning)
        net = lpips.LPIPS(net="vgg", pretrained=False, pnet_rand=True, spatial=False, verbose=False)
    heads_path = Path(lpips.__file__).parent.joinpath(*LPIPS_VGG_HEADS)
    heads = load_checkpoint(heads_path, "the lpips package's LPIPS-VGG linear heads")
    expected = {f"lin{k}.model.1.weight" for k in range(len(net.lins))}
    if not isinstance(heads, dict) or set(heads) != expected:
        found = sorted(heads)[:10] if isinstance(heads, dict) else type(heads).__name__
        raise ValueError(f"{heads_path} is not LPIPS-VGG's linear heads (expected {sorted(expected)}, got {found}): "
                         f"reinstall the lpips package")
    for k, head in enumerate(net.lins):  # net.lins[k] is net.lin{k}
        load_state_dict_strict(head, {"model.1.weight": heads[f"lin{k}.model.1.weight"]}, heads_path, f"lin{k}")
    return net.eval()


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
