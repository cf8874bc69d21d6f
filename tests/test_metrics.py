"""MNAC, CD, COUT, σ_L and ℓp closeness against independent computations on small hand-made trees."""

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from cfx.io.images import load_image
from cfx.io.tree import OutputTree
from cfx.metrics import MetricContext, NetworkRef, compute_tree_metric
from cfx.metrics import cd as cd_metric
from cfx.metrics import cout as cout_metric
from cfx.models.oracle import AttributeOracle, save_oracle


def _write_tree(root: Path, n: int, seed: int = 0, method_dir: str = "dime", ext: str = "png",
                flips: list[bool] | None = None, same_originals_seed: int = 0, size: int = 8) -> list[str]:
    """``n`` random ``size`` px instances; originals depend only on ``same_originals_seed``, CFs on ``seed``."""
    tree = OutputTree(root, method_dir, ext=ext)
    tree.prepare()
    g_orig = torch.Generator().manual_seed(same_originals_seed)
    g_cf = torch.Generator().manual_seed(1000 + seed)
    stems = []
    for i in range(n):
        original = torch.rand(3, size, size, generator=g_orig) * 2 - 1
        cf = (original + 0.5 * torch.randn(3, size, size, generator=g_cf)).clamp(-1, 1)
        flipped = True if flips is None else flips[i]
        label = i % 2
        stem = tree.stem(i)
        tree.write_instance(stem, original=original, cf=cf, noise=cf, label=label, pred=label if i % 3 else 1 - label,
                            target=1 - label, cf_pred=(1 - label) if flipped else label, info={})
        stems.append(stem)
    return stems


@pytest.fixture()
def tree(tmp_path):
    root = tmp_path / "celeba_smile"
    _write_tree(root, 9, flips=[True, True, False, True, True, True, False, True, True])
    return root


@pytest.fixture()
def oracle_ref(tmp_path):
    torch.manual_seed(3)
    net = AttributeOracle(width=4, feature_dim=8)
    with torch.no_grad():  # large weights: the decisions differ between nearby images
        for p in net.parameters():
            p.mul_(4)
    path = save_oracle(net, tmp_path / "oracle.pt")
    return NetworkRef("oracle", "test_oracle", path, {"kind": "oracle", "arch": {"width": 4, "feature_dim": 8}})


def _decisions(ref, paths):
    from cfx.models.oracle import load_oracle

    net = load_oracle(ref.path, width=4, feature_dim=8)
    with torch.no_grad():
        return np.stack([(torch.sigmoid(net(load_image(p)[None] * 2 - 1))[0] > 0.5).numpy() for p in paths])


def _successful(root: Path):
    pairs = []
    for subset in ("CC/CCF", "IC/CCF"):
        for cf in sorted((root / "Results/dime" / subset / "CF").glob("*.png")):
            pairs.append((next((root / "Original").glob(f"*/{cf.name}")), cf))
    return pairs


def test_mnac_against_direct_count(tree, oracle_ref):
    pairs = _successful(tree)
    original = _decisions(oracle_ref, [p for p, _ in pairs])
    cf = _decisions(oracle_ref, [c for _, c in pairs])
    expected = np.mean([np.sum(o != c) for o, c in zip(original, cf, strict=True)])
    result = compute_tree_metric("mnac", tree_root=tree, method="dime",
                                 ctx=MetricContext(networks={"oracle": oracle_ref}))
    assert result["n"] == 7  # the two failed CFs are not read
    assert result["value"] == pytest.approx(expected)
    assert expected > 0  # the oracle's decisions do change: the test can tell a wrong pairing
    assert result["metadata"]["stand_in"].startswith("attribute oracle: mini oracle")
    assert result["metadata"]["higher_is_better"] is False


def test_cd_correlations_known_cases():
    rng = np.random.default_rng(0)
    query = rng.integers(0, 2, 500)
    labels = np.stack([query, 1 - query, rng.integers(0, 2, 500), np.zeros(500, int)], axis=1).astype(float)
    rho = cd_metric.data_correlations(labels, 0)
    assert rho[0] == pytest.approx(1.0) and rho[1] == pytest.approx(-1.0)
    assert abs(rho[2]) < 0.15 and rho[3] == 0.0  # constant attribute: 0, not NaN
    assert rho[2] == pytest.approx(np.corrcoef(labels[:, 0], labels[:, 2])[0, 1])
    original = np.zeros((4, 3), bool)
    cf = np.array([[1, 1, 0], [1, 1, 0], [0, 0, 0], [0, 0, 0]], bool)  # attr 1 changes exactly with the query
    rho_cf = cd_metric.cf_correlations(original, cf, 0)
    assert rho_cf.tolist() == pytest.approx([1.0, 1.0, 0.0])  # attr 2 never changes: NaN -> 0 (ACE)
    assert cd_metric.correlation_difference(rho_cf, np.array([1.0, 0.5, -0.25])) == pytest.approx(0.75)


def test_cd_on_tree_uses_train_labels(tree, oracle_ref, tmp_path):
    from cfx.data.synthetic import write_synthetic_celeba

    data_root = write_synthetic_celeba(tmp_path / "data", n_identities=12, images_per_identity=2, image_size=32)
    ctx = MetricContext(experiment={"query_label": 31}, networks={"oracle": oracle_ref},
                        data_root=Path(data_root) if data_root else tmp_path / "data")
    result = compute_tree_metric("cd", tree_root=tree, method="dime", ctx=ctx)
    labels = cd_metric.train_labels(ctx.data_root)
    pairs = _successful(tree)
    delta = _decisions(oracle_ref, [c for _, c in pairs]).astype(float) - _decisions(
        oracle_ref, [p for p, _ in pairs]).astype(float)
    expected = 0.0
    for i in range(40):
        rc = np.corrcoef(delta[:, i], delta[:, 31])[0, 1] if delta[:, i].std() and delta[:, 31].std() else 0.0
        rd = np.corrcoef(labels[:, 31], labels[:, i])[0, 1] if labels[:, i].std() else 0.0
        expected += abs(rc - rd)
    assert result["value"] == pytest.approx(expected)
    assert result["rho_data"][31] == pytest.approx(1.0)


def _cout_reference(x, x_cf, logit_fn):
    """Straight re-statement of ACE's calculate_cout (binary) for one image, in numpy."""
    h, w = x.shape[1:]
    hw = h * w
    step = max(1, hw // 50)
    m = np.abs(x_cf - x).sum(0).reshape(-1)
    m = (m - m.min()) / (m.max() - m.min())
    order = np.argsort(-m, kind="stable")
    positive = logit_fn(x) > 0

    def p(img):
        z = logit_fn(img)
        return 1 / (1 + np.exp(-(z if positive else -z)))

    c = [p(x)]
    mask = np.zeros(hw)
    for start in range(0, hw, step):
        mask[order[start:start + step]] = 1
        mk = mask.reshape(1, h, w)
        c.append(p(x_cf * mk + x * (1 - mk)))
    c = np.array(c)
    c_prime = 1 - c
    auc = lambda curve: curve[0] / 2 + curve[1:-1].sum() + curve[-1] / 2  # noqa: E731
    return (auc(c_prime) - auc(c)) * step / hw


def test_cout_hand_computed():
    rng = np.random.default_rng(1)
    weights = rng.normal(size=(3, 10, 10))
    x = rng.uniform(size=(2, 3, 10, 10))
    x_cf = np.clip(x + rng.normal(scale=0.3, size=x.shape), 0, 1)
    logit_fn = lambda img: float((weights * (img - 0.5)).sum())  # noqa: E731
    expected = [_cout_reference(x[i], x_cf[i], logit_fn) for i in range(2)]
    classifier = lambda t: ((torch.as_tensor(weights) * (t.double() - 0.5)).sum(dim=(1, 2, 3)))  # noqa: E731
    scores, c, c_prime = cout_metric.cout_scores(torch.as_tensor(x), torch.as_tensor(x_cf), classifier)
    assert scores.tolist() == pytest.approx(expected, abs=1e-9)
    assert len(c) == 1 + len(range(0, 100, 2))  # step = max(1, 100 // 50) = 2
    assert torch.allclose(c + c_prime, torch.ones_like(c))
    # the fully inserted image is the CF: the curve ends at the CF's probability of the original class
    end = 1 / (1 + np.exp(-abs(logit_fn(x_cf[0])) * np.sign(logit_fn(x_cf[0]) * logit_fn(x[0]))))
    assert float(c[-1]) == pytest.approx((end + 1 / (1 + np.exp(-abs(logit_fn(x_cf[1])) * np.sign(
        logit_fn(x_cf[1]) * logit_fn(x[1]))))) / 2)


def test_cout_identical_images_is_zero():
    x = torch.rand(1, 3, 6, 6)
    scores, c, _ = cout_metric.cout_scores(x, x.clone(), lambda t: t.sum(dim=(1, 2, 3)) - 50)
    # nothing transitions: c stays at p(original class) over all 36 one-pixel steps, COUT = (1 - c) - c
    assert torch.isfinite(scores).all() and torch.allclose(c, c[0].expand_as(c))
    assert float(scores[0]) == pytest.approx(1 - 2 * float(c[0]), abs=1e-6)


def test_cout_multiclass_uses_query_and_target():
    x = torch.zeros(1, 3, 4, 4)
    x_cf = torch.ones(1, 3, 4, 4)
    classifier = lambda t: torch.stack([-t.mean(dim=(1, 2, 3)) * 5, t.mean(dim=(1, 2, 3)) * 5,  # noqa: E731
                                        torch.zeros(len(t))], dim=1)
    scores, c, c_prime = cout_metric.cout_scores(x, x_cf, classifier, query=0, target=1)
    assert float(c[0]) == pytest.approx(torch.softmax(torch.tensor([0.0, 0, 0]), 0)[0].item())
    assert float(c_prime[-1]) > float(c_prime[0]) and float(scores[0]) > 0


def test_cout_on_tree_reads_correctly_classified(tree, tmp_path):
    from cfx.models.classifier import DenseNetClassifier, save_celeba_classifier

    torch.manual_seed(0)
    arch = {"growth_rate": 4, "block_config": [1, 1], "num_init_features": 8}
    path = save_celeba_classifier(DenseNetClassifier(**arch), tmp_path / "clf.pt")
    ref = NetworkRef("classifier", "clf", path, {"kind": "classifier", "arch": arch})
    result = compute_tree_metric("cout", tree_root=tree, method="dime",
                                 ctx=MetricContext(experiment={"query_label": 31}, networks={"classifier": ref}))
    n_cc = sum(1 for s in ("CC/CCF", "CC/ICF") for _ in (tree / "Results/dime" / s / "Info").glob("*.txt"))
    assert result["n"] == n_cc and -1 <= result["value"] <= 1
    assert len(result["c_curve"]) == 1 + len(range(0, 64, 1))


def test_sigma_l_mean_pairwise_over_common_stems(tmp_path):
    from cfx.metrics.sigma_l import _cf_paths, sigma_lpips

    roots = [tmp_path / f"run{k}" for k in range(3)]
    for k, root in enumerate(roots):
        _write_tree(root, 4 if k == 0 else 3, seed=k)
    distance = lambda a, b: (a - b).abs().mean()  # noqa: E731
    value, n = sigma_lpips([_cf_paths(r, "dime") for r in roots], distance)
    assert n == 3  # stem 0000003 exists only in the first run
    expected = []
    for stem in ("0000000", "0000001", "0000002"):
        images = [load_image(next((r / "Results/dime").glob(f"*/*/CF/{stem}.png"))) * 2 - 1 for r in roots]
        expected.append(np.mean([float((a - b).abs().mean()) for a, b in itertools.combinations(images, 2)]))
    assert value == pytest.approx(np.mean(expected))


def test_sigma_l_with_lpips_stand_in(tmp_path):
    roots = [tmp_path / f"run{k}" for k in range(2)]
    for k, root in enumerate(roots):
        _write_tree(root, 2, seed=k, size=32)  # VGG-16's five stages need at least 32 px
    ctx = MetricContext(networks={"lpips": NetworkRef("lpips", "x", None, {"kind": "lpips_random", "seed": 0})},
                        seed_trees=[roots[1]])
    result = compute_tree_metric("sigma_l", tree_root=roots[0], method="dime", ctx=ctx)
    again = compute_tree_metric("sigma_l", tree_root=roots[0], method="dime", ctx=ctx)
    assert result["value"] > 0 and result["value"] == again["value"]  # seeded trunk: reproducible
    assert "random VGG-16" in result["metadata"]["stand_in"]
    with pytest.raises(ValueError, match="seed runs"):
        compute_tree_metric("sigma_l", tree_root=roots[0], method="dime", ctx=MetricContext())


def test_lpips_vgg_missing_weights_names_path(tmp_path, monkeypatch):
    from cfx.metrics.sigma_l import load_lpips

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    with pytest.raises(FileNotFoundError, match="vgg16-397923af.pth"):
        load_lpips(NetworkRef("lpips", "x", None, {"kind": "lpips_vgg"}))


def test_closeness_norms(tree):
    results = {p: compute_tree_metric(p, tree_root=tree, method="dime") for p in ("l1", "l2")}
    pairs = [(load_image(next((tree / "Original").glob(f"*/{cf.name}"))), load_image(cf))
             for cf in sorted((tree / "Results/dime").glob("*/*/CF/*.png"))]
    assert results["l1"]["n"] == len(pairs) == 9
    assert results["l1"]["value"] == pytest.approx(np.mean([float((c - o).abs().sum()) for o, c in pairs]))
    assert results["l2"]["value"] == pytest.approx(np.mean([float(((c - o) ** 2).sum().sqrt()) for o, c in pairs]))
    assert results["l2"]["metadata"]["name"] == "l2"


def test_missing_network_names_suite_key(tree):
    with pytest.raises(KeyError, match=r"metrics: \{mnac: \{networks: \{oracle: MODEL\}\}\}"):
        compute_tree_metric("mnac", tree_root=tree, method="dime", ctx=MetricContext())


def test_cli_tree_metric_writes_json(tree, oracle_ref, tmp_path):
    from cfx.cli import main

    out = tmp_path / "mnac.json"
    result = CliRunner().invoke(main, ["metric", "mnac", "--tree", str(tree), "--method", "dime", "--device", "cpu",
                                       "--network", f"oracle=oracle:{oracle_ref.path}", "--out", str(out)])
    assert result.exit_code == 0, result.output
    printed = json.loads(result.stdout)
    assert printed["value"] == json.loads(out.read_text())["value"] and printed["n"] == 7
    bad = CliRunner().invoke(main, ["metric", "mnac", "--tree", str(tree)])
    assert bad.exit_code != 0 and "--method" in bad.output


def test_identity_network_trains_and_embeds(tmp_path):
    from cfx.data.synthetic import write_synthetic_celeba
    from cfx.metrics.networks import load_face_features
    from cfx.train import train_identity

    write_synthetic_celeba(tmp_path / "data", n_identities=20, images_per_identity=3, image_size=32)
    log = train_identity(tmp_path / "data", tmp_path / "identity.pt", arch={"width": 4}, steps=3, batch_size=8,
                         lr=1e-3, image_size=32, device="cpu")
    assert log["n_identities"] > 1 and 0 <= log["val_verification_accuracy"] <= 1
    ref = NetworkRef("identity", "mini_identity", tmp_path / "identity.pt",
                     {"kind": "identity", "arch": {"width": 4}, "image_size": 32})
    images = sorted((tmp_path / "data" / "img_align_celeba").glob("*.jpg"))[:3]
    assert load_face_features(ref)(images).shape == (3, 128)
