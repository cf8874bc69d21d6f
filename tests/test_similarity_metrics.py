"""FVA, FS and S³ on hand-made pairs with known cosines (stub networks), and with the mini stand-ins."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from cfx.io.images import load_image
from cfx.io.tree import OutputTree
from cfx.metrics import MetricContext, NetworkRef, compute_tree_metric
from cfx.models.oracle import AttributeOracle, load_oracle, save_oracle

SUBSET_ARGS = {  # label, pred, target, cf_pred landing in each folder
    "CC/CCF": (0, 0, 1, 1), "CC/ICF": (0, 0, 1, 0), "IC/CCF": (1, 0, 1, 1), "IC/ICF": (1, 0, 1, 0),
}


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny networks: one intra-op thread (thread hand-offs dominate a 16 px conv on a busy 2-core machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _tree(root, subsets: list[str], method_dir: str = "dime", ext: str = "png") -> list[str]:
    tree = OutputTree(root, method_dir, ext=ext)
    tree.prepare()
    g = torch.Generator().manual_seed(2)
    stems = []
    for i, subset in enumerate(subsets):
        label, pred, target, cf_pred = SUBSET_ARGS[subset]
        x = torch.rand(3, 16, 16, generator=g) * 2 - 1
        tree.write_instance(tree.stem(i), original=x, cf=(x + torch.rand(3, 16, 16, generator=g) - 0.5).clamp(-1, 1),
                            noise=x, label=label, pred=pred, target=target, cf_pred=cf_pred, info={})
        stems.append(tree.stem(i))
    return stems


# FVA / FS: the stub identity network returns these embeddings (original, CF) per stem
PAIRS = [
    ("CC/CCF", (1, 0, 0, 0), (1, 1, 1, 1)),  # cos 0.5 exactly: not verified (strict >)
    ("IC/CCF", (3, 4, 0, 0), (4, 3, 0, 0)),  # 0.96
    ("CC/CCF", (1, 0, 0, 0), (0, 1, 0, 0)),  # 0
    ("CC/CCF", (1, 0, 0, 0), (-1, 0, 0, 0)),  # -1
    ("CC/ICF", (1, 0, 0, 0), (1, 0, 0, 0)),  # failed CF: not read
    ("IC/ICF", (1, 0, 0, 0), (1, 0, 0, 0)),  # failed CF: not read
] + [("CC/CCF", (0, 0, 2, 0), (0, 0, 2, 0))] * 15  # cos 1; 19 successful pairs in all, more than one batch of 15


@pytest.fixture()
def identity_stub(tmp_path, monkeypatch):
    root = tmp_path / "exp"
    stems = _tree(root, [subset for subset, _, _ in PAIRS])
    table = {}
    for stem, (_, original, cf) in zip(stems, PAIRS, strict=True):
        table[("Original", stem)] = original
        table[("Results", stem)] = cf
    batches = []

    def fake_loader(ref, device="cpu"):
        def embed(paths):
            batches.append(len(paths))
            return torch.tensor([table[("Original" if "Original" in p.parts else "Results", p.stem)] for p in paths],
                                dtype=torch.float32)
        return embed

    monkeypatch.setattr("cfx.metrics.fva.load_face_features", fake_loader)
    ctx = MetricContext(networks={"identity": NetworkRef("identity", "stub", None, {"kind": "vggface2"})})
    return root, ctx, batches


def test_fva_counts_cosines_strictly_above_one_half(identity_stub):
    root, ctx, batches = identity_stub
    result = compute_tree_metric("fva", tree_root=root, method="dime", ctx=ctx)
    assert result["n"] == 19
    assert result["value"] == pytest.approx(100 * 16 / 19)  # 0.96 and the 15 identical pairs
    assert max(batches) == 15  # upstream's batch size
    assert result["metadata"]["unit"] == "%" and not result.get("stand_in")


def test_fs_is_the_mean_cosine(identity_stub):
    root, ctx, _ = identity_stub
    result = compute_tree_metric("fs", tree_root=root, method="dime", ctx=ctx)
    cosines = [0.5, 0.96, 0.0, -1.0] + [1.0] * 15
    assert result["n"] == 19
    assert result["value"] == pytest.approx(np.mean(cosines), abs=1e-6)
    assert result["std"] == pytest.approx(np.std(cosines), abs=1e-6)


def test_fva_without_successful_cfs_is_not_applicable(tmp_path, monkeypatch):
    _tree(tmp_path / "exp", ["CC/ICF", "IC/ICF"])
    ctx = MetricContext(networks={"identity": NetworkRef("identity", "stub", None, {"kind": "vggface2"})})
    result = compute_tree_metric("fva", tree_root=tmp_path / "exp", method="dime", ctx=ctx)
    assert result["value"] is None and "CC/CCF" in result["not_applicable"]


def _mini_ref(tmp_path, role: str, kind: str) -> NetworkRef:
    torch.manual_seed(9)
    net = AttributeOracle(width=4, feature_dim=8)
    with torch.no_grad():
        for p in net.parameters():
            p.mul_(2)
    path = save_oracle(net, tmp_path / f"{kind}.pt")
    return NetworkRef(role, f"mini_{kind}", path, {"kind": kind, "arch": {"width": 4, "feature_dim": 8}})


def _hand_cosines(ref: NetworkRef, pairs) -> np.ndarray:
    net = load_oracle(ref.path, num_attributes=40, width=4, feature_dim=8)
    with torch.no_grad():
        return np.array([float(F.cosine_similarity(net.feat_extract(load_image(o)[None] * 2 - 1),
                                                   net.feat_extract(load_image(c)[None] * 2 - 1))) for o, c in pairs])


def test_fva_and_fs_with_the_mini_identity_network_are_labelled(tmp_path):
    root = tmp_path / "exp"
    stems = _tree(root, ["CC/CCF", "IC/CCF", "CC/ICF", "CC/CCF"])
    ref = _mini_ref(tmp_path, "identity", "identity")
    pairs = [(next((root / "Original").glob(f"*/{s}.png")), next((root / "Results/dime").glob(f"*/CCF/CF/{s}.png")))
             for s in (stems[0], stems[1], stems[3])]
    cosines = _hand_cosines(ref, pairs)
    ctx = MetricContext(networks={"identity": ref})
    fva = compute_tree_metric("fva", tree_root=root, method="dime", ctx=ctx)
    fs = compute_tree_metric("fs", tree_root=root, method="dime", ctx=ctx)
    assert fva["n"] == fs["n"] == 3
    assert fs["value"] == pytest.approx(cosines.mean(), abs=1e-6)
    assert fva["value"] == pytest.approx(100 * np.mean(cosines > 0.5))
    assert "identity" in fva["stand_in"] and fva["stand_in"] == fs["stand_in"]


# S³: constant-colour images and a stub projector returning the mean colour: cosines of colour vectors
COLOURS = [
    ("CC/CCF", (255, 0, 0), (255, 255, 0)),  # 1/√2
    ("CC/ICF", (0, 0, 255), (0, 255, 0)),  # 0 (failed CFs of correctly classified inputs count)
    ("IC/CCF", (255, 0, 0), (0, 0, 255)),  # misclassified input: not read
    ("CC/CCF", (10, 20, 30), (30, 20, 10)),  # 1000/1400
]


def test_s3_is_the_mean_projector_cosine_over_correctly_classified_inputs(tmp_path, monkeypatch):
    root = tmp_path / "exp"
    stems = _tree(root, [subset for subset, _, _ in COLOURS], method_dir="ace/explanation")
    for stem, (subset, original, cf) in zip(stems, COLOURS, strict=True):
        Image.new("RGB", (16, 16), original).save(next((root / "Original").glob(f"*/{stem}.png")))
        Image.new("RGB", (16, 16), cf).save(root / "Results/ace/explanation" / subset / "CF" / f"{stem}.png")
    monkeypatch.setattr("cfx.metrics.s3.load_simsiam_projector", lambda ref, device="cpu": lambda x: x.mean((2, 3)))
    ctx = MetricContext(networks={"simsiam": NetworkRef("simsiam", "stub", None, {"kind": "simsiam"})})
    result = compute_tree_metric("s3", tree_root=root, method="ace", ctx=ctx)
    assert result["n"] == 3
    assert result["value"] == pytest.approx((1 / math.sqrt(2) + 0 + 1000 / 1400) / 3, abs=1e-6)
    assert not result.get("stand_in")


def test_s3_with_the_mini_oracle_is_labelled(tmp_path):
    root = tmp_path / "exp"
    stems = _tree(root, ["CC/CCF", "CC/ICF", "IC/CCF"])
    ref = _mini_ref(tmp_path, "simsiam", "oracle")
    pairs = [(next((root / "Original").glob(f"*/{stem}.png")),
              next((root / "Results/dime").glob(f"CC/*/CF/{stem}.png"))) for stem in stems[:2]]
    result = compute_tree_metric("s3", tree_root=root, method="dime", ctx=MetricContext(networks={"simsiam": ref}))
    assert result["n"] == 2
    assert result["value"] == pytest.approx(_hand_cosines(ref, pairs).mean(), abs=1e-6)
    assert "oracle" in result["stand_in"]
