"""FID and sFID: against the pytorch-fid CLI (random Inception weights where pytorch-fid looks), against hand
computations of the Fréchet distance, ACE's split recipe and LDCE's per-class split."""

import os
import random
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.linalg
import torch
from PIL import Image

from cfx.io.images import load_image
from cfx.io.tree import OutputTree
from cfx.metrics import MetricContext, NetworkRef, compute_folder_metric, compute_tree_metric
from cfx.metrics.sfid import random_split
from cfx.models.oracle import AttributeOracle, load_oracle, save_oracle
from tests.published_formats import write_random_fid_inception


@pytest.fixture(scope="module")
def torch_home(tmp_path_factory):
    """A TORCH_HOME whose hub/checkpoints holds random FID Inception weights (set for the module's tests)."""
    home = tmp_path_factory.mktemp("torch_home")
    write_random_fid_inception(home)
    patch = pytest.MonkeyPatch()
    patch.setenv("TORCH_HOME", str(home))
    yield home
    patch.undo()


def _folder(path: Path, n: int, seed: int, shift: int, size: int = 32) -> Path:
    path.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        pixels = rng.integers(0, 200, size=(size, size, 3)) + shift
        Image.fromarray(pixels.astype(np.uint8)).save(path / f"{i:07d}.png")
    return path


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("fid_folders")
    return _folder(root / "real", 10, 0, 0), _folder(root / "fake", 10, 1, 50)


def test_missing_inception_weights_name_the_path(tmp_path, monkeypatch):
    from cfx.models.fid_inception import load_fid_inception

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty"))
    expected = tmp_path / "empty" / "hub" / "checkpoints" / "pt_inception-2015-12-05-6726825d.pth"
    with pytest.raises(FileNotFoundError, match=re.escape(str(expected))):
        load_fid_inception()


def test_inception_reads_the_suites_checkpoint_file_not_torch_home(torch_home, tmp_path, monkeypatch):
    """The paper suite names the registry file (resources/checkpoints/fid_inception.pth, a workflow input): the
    metric reads that file, whatever TORCH_HOME holds; without it, pytorch-fid's TORCH_HOME cache as before."""
    from cfx.metrics.fid import FeatureSpace
    from cfx.metrics.networks import load_fid_features

    cached = torch_home / "hub" / "checkpoints" / "pt_inception-2015-12-05-6726825d.pth"
    registry = tmp_path / "resources" / "checkpoints" / "fid_inception.pth"
    registry.parent.mkdir(parents=True)
    registry.symlink_to(cached)
    ref = NetworkRef("features", "fid_inception", registry, {"kind": "inception"})
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        from_cache = load_fid_features(None, dims=64)(x)
        monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty"))
        from_file = load_fid_features(ref, dims=64)(x)
    assert torch.equal(from_cache, from_file)
    space = FeatureSpace(MetricContext(networks={"features": ref}, options={"dims": 64}))
    assert space.describe()["features_weights"] == str(registry) and not space.stand_in
    with pytest.raises(FileNotFoundError, match=r"TORCH_HOME"):  # no file named: the cache, which is empty now
        load_fid_features(None, dims=64)
    missing = NetworkRef("features", "fid_inception", tmp_path / "nowhere" / "fid_inception.pth", {"kind": "inception"})
    with pytest.raises(FileNotFoundError, match=r"nowhere/fid_inception\.pth does not exist.*"
                                                r"cfx download fid_inception"):
        load_fid_features(missing, dims=64)


def test_fid_of_folders_equals_the_pytorch_fid_cli(torch_home, folders):
    real, fake = folders
    # --dims 64 (pytorch-fid's first block, spatially averaged): the pool3 covariances (2048²) take minutes in
    # scipy's sqrtm on this CPU; image reading, Inception, statistics and the distance are the same code path
    cli = subprocess.run([sys.executable, "-m", "pytorch_fid", str(real), str(fake), "--device", "cpu", "--dims", "64",
                          "--num-workers", "0"], capture_output=True, text=True, check=True,
                         env={**os.environ, "TORCH_HOME": str(torch_home)})
    expected = float(re.search(r"FID:\s+(\S+)", cli.stdout).group(1))
    result = compute_folder_metric("fid", real=real, fake=fake, ctx=MetricContext(options={"dims": 64}))
    assert expected > 0.1
    assert result["value"] == pytest.approx(expected, abs=1e-3)
    assert result["n"] == 10 and result["n_real"] == 10 and not result.get("stand_in")


def test_pool3_features_are_pytorch_fids(torch_home, folders):
    from pytorch_fid.fid_score import get_activations
    from pytorch_fid.inception import InceptionV3

    from cfx.metrics.fid import FeatureSpace, folder_images

    files = folder_images(folders[0])[:1]
    ours = FeatureSpace(MetricContext()).activations(files)
    upstream = get_activations(files, InceptionV3([3]), batch_size=50, dims=2048, device="cpu", num_workers=0)
    assert ours.shape == (1, 2048) and np.abs(upstream).max() > 0
    assert np.allclose(ours, upstream, atol=1e-5)


@pytest.fixture()
def one_thread():
    """Tiny networks: one intra-op thread (thread hand-offs dominate a 16 px conv on a busy 2-core machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# --- tree metrics with the mini oracle's features (8-d here: non-singular covariances from a dozen images) --------

@pytest.fixture(scope="module")
def features_ref(tmp_path_factory):
    """A mini oracle (kind ``oracle``) with 8-d features."""
    torch.manual_seed(5)
    net = AttributeOracle(width=4, feature_dim=8)
    with torch.no_grad():  # default init maps every image to nearly the same point; ×2 spreads the features
        for p in net.parameters():
            p.mul_(2)
    path = save_oracle(net, tmp_path_factory.mktemp("oracle") / "oracle.pt")
    return NetworkRef("features", "mini_oracle", path, {"kind": "oracle", "arch": {"width": 4, "feature_dim": 8}})


def _features(ref: NetworkRef, paths) -> np.ndarray:
    net = load_oracle(ref.path, width=4, feature_dim=8)
    with torch.no_grad():
        return np.stack([net.feat_extract(load_image(p)[None] * 2 - 1)[0].double().numpy() for p in paths])


def _frechet(a: np.ndarray, b: np.ndarray) -> float:
    """‖μ_a − μ_b‖² + tr Σ_a + tr Σ_b − 2 tr (Σ_a^½ Σ_b Σ_a^½)^½ (the symmetric form, eigenvalues)."""
    s_a, s_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root = scipy.linalg.sqrtm(s_a).real
    eig = np.clip(np.linalg.eigvalsh(root @ s_b @ root), 0, None)
    diff = a.mean(0) - b.mean(0)
    return float(diff @ diff + np.trace(s_a) + np.trace(s_b) - 2 * np.sqrt(eig).sum())


def _tree(root: Path, n: int, failed: set[int]) -> Path:
    tree = OutputTree(root, "dime", ext="png")
    tree.prepare()
    g = torch.Generator().manual_seed(11)
    for i in range(n):
        original = torch.rand(3, 16, 16, generator=g) * 2 - 1
        cf = (original + 0.6 * torch.randn(3, 16, 16, generator=g)).clamp(-1, 1)
        label = i % 2
        pred = label if i % 5 else 1 - label
        tree.write_instance(tree.stem(i), original=original, cf=cf, noise=cf, label=label, pred=pred,
                            target=1 - pred, cf_pred=pred if i in failed else 1 - pred, info={})
    return root


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    return _tree(tmp_path_factory.mktemp("tree") / "exp", 26, failed={3, 8, 15})


def _sets(root: Path):
    originals = {p.stem: p for p in sorted((root / "Original").glob("*/*.png"))}
    cfs = {p.stem: p for sub in ("CC/CCF", "IC/CCF") for p in sorted((root / "Results/dime" / sub / "CF").glob("*"))}
    return originals, cfs


def test_fid_tree_compares_every_original_with_the_successful_cfs(tree, features_ref, one_thread):
    originals, cfs = _sets(tree)
    assert len(originals) == 26 and len(cfs) == 23
    ctx = MetricContext(networks={"features": features_ref})
    result = compute_tree_metric("fid", tree_root=tree, method="dime", ctx=ctx)
    expected = _frechet(_features(features_ref, originals.values()), _features(features_ref, cfs.values()))
    assert result["value"] == pytest.approx(expected, rel=1e-6) and expected > 0
    assert result["n"] == 23 and result["n_real"] == 26
    assert "128-d" in result["stand_in"] and result["metadata"]["stand_in"] == result["stand_in"]


def test_random_split_is_aces_recipe_seeded():
    names = [f"{i:07d}" for i in range(11)]
    split1, split2 = random_split(names, seed=4)
    assert len(split1) == len(split2) == 5 and not set(split1) & set(split2)  # N odd: one name dropped
    assert (split1, split2) == random_split(list(reversed(names)), seed=4)  # depends on the names, not their order
    assert set(random_split(names, seed=5)[0]) != set(split1)


def test_sfid_tree_is_the_mean_of_the_two_cross_half_fids(tree, features_ref, one_thread):
    originals, cfs = _sets(tree)
    seed = 3
    names = sorted(originals)  # ACE: list real/all, shuf (here seeded), tail/head ⌊N/2⌋
    random.Random(seed).shuffle(names)
    half = len(names) // 2
    split1, split2 = names[len(names) - half:], names[:half]

    def fid(real_names, fake_names):
        real = _features(features_ref, [originals[n] for n in sorted(real_names)])
        fake = _features(features_ref, [cfs[n] for n in sorted(fake_names) if n in cfs])
        return _frechet(real, fake)

    expected = (fid(split1, split2) + fid(split2, split1)) / 2
    ctx = MetricContext(networks={"features": features_ref}, options={"seed": seed})
    result = compute_tree_metric("sfid", tree_root=tree, method="dime", ctx=ctx)
    assert result["value"] == pytest.approx(expected, rel=1e-6)
    assert result["fid_real1_fake2"] == pytest.approx(fid(split1, split2), rel=1e-6)
    again = compute_tree_metric("sfid", tree_root=tree, method="dime", ctx=ctx)
    other = compute_tree_metric("sfid", tree_root=tree, method="dime",
                                ctx=MetricContext(networks={"features": features_ref}, options={"seed": seed + 1}))
    assert again["value"] == result["value"] and other["value"] != result["value"]


def test_sfid_of_folders_equals_two_fid_runs_on_split_copies(tree, features_ref, tmp_path, one_thread):
    """ACE compute_sFID.sh on real/all and cf/all: copies of each half, two FIDs, averaged by hand."""
    originals, cfs = _sets(tree)
    for name, files in (("real/all", originals), ("cf/all", cfs)):
        (tmp_path / name).mkdir(parents=True)
        for path in files.values():
            shutil.copy(path, tmp_path / name / path.name)
    split1, split2 = random_split(list(originals), seed=0)
    for index, split in ((1, split1), (2, split2)):
        for kind, files in (("real", originals), ("cf", cfs)):
            target = tmp_path / kind / f"split{index}"
            target.mkdir()
            for stem in split:
                if stem in files:  # rsync skips the names without a successful CF
                    shutil.copy(files[stem], target / files[stem].name)
    ctx = MetricContext(networks={"features": features_ref}, options={"seed": 0})
    fids = [compute_folder_metric("fid", real=tmp_path / f"real/split{a}", fake=tmp_path / f"cf/split{b}",
                                  ctx=ctx)["value"] for a, b in ((1, 2), (2, 1))]
    result = compute_folder_metric("sfid", real=tmp_path / "real/all", fake=tmp_path / "cf/all", ctx=ctx)
    assert result["value"] == pytest.approx(sum(fids) / 2, rel=1e-6)


def test_sfid_class_balanced_splits_each_source_class(tree, features_ref, tmp_path, one_thread):
    originals, cfs = _sets(tree)
    labels = {f"{i:07d}": i % 2 for i in range(26)}  # the tree's Info labels
    split1, split2 = [], []
    for cls in (0, 1):  # LDCE: per class, first ⌊n/2⌋ (sorted) vs the rest, no shuffle
        names = sorted(n for n in originals if labels[n] == cls)
        split1 += names[:len(names) // 2]
        split2 += names[len(names) // 2:]

    def fid(real_names, fake_names):
        return _frechet(_features(features_ref, [originals[n] for n in sorted(real_names)]),
                        _features(features_ref, [cfs[n] for n in sorted(fake_names) if n in cfs]))

    ctx = MetricContext(networks={"features": features_ref}, options={"class_balanced": True})
    result = compute_tree_metric("sfid", tree_root=tree, method="dime", ctx=ctx)
    assert result["value"] == pytest.approx((fid(split1, split2) + fid(split2, split1)) / 2, rel=1e-6)
    with pytest.raises(ValueError, match="class_balanced"):
        compute_folder_metric("sfid", real=tree / "Original/Correct", fake=tree / "Original/Incorrect", ctx=ctx)


def test_fid_with_too_few_images_is_not_applicable(tmp_path, features_ref, one_thread):
    root = _tree(tmp_path / "small", 3, failed={0, 1})
    result = compute_tree_metric("fid", tree_root=root, method="dime",
                                 ctx=MetricContext(networks={"features": features_ref}))
    assert result["value"] is None and "at least 2" in result["not_applicable"]
