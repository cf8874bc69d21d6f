"""GCD on CheXpert (table8): GCD's DenseNetCheXpert (MONAI DenseNet-264) from a random-weight file in the published
key layout, the grayscale CheXpert transform and labels on a stand-in CheXpert root, and GCD's direction search,
transfer into the output tree, BB-LIG and COUT on a tiny one-channel DiffAE with a tiny classifier of the same
layout."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

import cfx.methods.gcd as gcd_module
from cfx.data.index_dataset import IndexDataset
from cfx.data.layouts import GCD_CHEXPERT_OUTPUTS, build_layout_index, chexpert_positive
from cfx.generate import generate_chunk
from cfx.io.tree import OutputTree, read_info
from cfx.metrics import MetricContext, NetworkRef, NotApplicable
from cfx.models.chexpert import GCDCheXpertClassifier, load_gcd_chexpert_classifier
from cfx.models.classifier import QueryClassifier
from cfx.models.classifier_kinds import load_query_classifier
from cfx.models.diffae import create_diffae, lightning_checkpoint
from cfx.steps import gcd_bblig, gcd_direction
from tests.factories.datasets import fake_chexpert
from tests.published_formats import monai_densenet_shapes, random_state, write_gcd_chexpert_checkpoint

TINY = dict(growth_rate=8, block_config=[1, 1], init_features=16, bn_size=2)


# --- the classifier -----------------------------------------------------------------------------------------------

def test_published_densenet264_layout_loads_strictly(tmp_path):
    shapes = monai_densenet_shapes()  # DenseNet264(spatial_dims=2, in_channels=3, out_channels=14), 'classifier.'
    assert len(shapes) == 1591
    assert sum(int(np.prod(s)) for k, s in shapes.items() if not k.endswith(("running_mean", "running_var",
                                                                           "num_batches_tracked"))) == 30_686_350
    assert shapes["classifier.features.conv0.weight"] == (64, 3, 7, 7)
    assert shapes["classifier.features.denseblock3.denselayer64.layers.conv2.weight"] == (32, 128, 3, 3)
    # 64 + 6*32 = 256 -> 128; + 12*32 = 512 -> 256; + 64*32 = 2304 -> 1152; + 48*32 = 2688
    assert shapes["classifier.features.transition3.conv.weight"] == (1152, 2304, 1, 1)
    assert shapes["classifier.features.norm5.weight"] == (2688,)
    assert shapes["classifier.class_layers.out.weight"] == (14, 2688)
    written = write_gcd_chexpert_checkpoint(tmp_path / "weights.ckpt", seed=1)
    model = load_gcd_chexpert_classifier(tmp_path / "weights.ckpt")
    own = model.state_dict()
    assert list(own) == list(shapes)  # MONAI's module order, GCD's wrapper prefix
    assert all(torch.equal(own[k], written[k]) for k in shapes)
    assert not model.training
    x = torch.rand(1, 1, 64, 64) * 2 - 1
    with torch.no_grad():
        logits = model(x)
        assert logits.shape == (1, 14)
        # one grayscale channel is repeated to three (upstream x.repeat(1, 3, 1, 1)); an RGB copy gives the same
        assert torch.equal(model(x.repeat(1, 3, 1, 1)), logits)
    with pytest.raises(ValueError, match="grayscale"):
        model(torch.zeros(1, 2, 64, 64))


def test_classifier_file_errors_name_the_file(tmp_path):
    state = random_state(monai_densenet_shapes(**TINY), seed=0)
    missing = dict(state)
    missing.pop("classifier.features.denseblock2.denselayer1.layers.conv1.weight")
    write_gcd_chexpert_checkpoint(tmp_path / "missing.ckpt", state=missing)
    with pytest.raises(ValueError, match=r"missing\.ckpt.*1 missing.*denseblock2\.denselayer1\.layers\.conv1"):
        load_gcd_chexpert_classifier(tmp_path / "missing.ckpt", **TINY)
    bare = {k.removeprefix("classifier."): v for k, v in state.items()}  # a bare MONAI state dict
    write_gcd_chexpert_checkpoint(tmp_path / "bare.ckpt", state=bare)
    with pytest.raises(ValueError, match=r"bare\.ckpt.*'classifier\.' prefix"):
        load_gcd_chexpert_classifier(tmp_path / "bare.ckpt", **TINY)
    torch.save({"model_state_dict": state}, tmp_path / "other.ckpt")
    with pytest.raises(ValueError, match=r"other\.ckpt.*'state_dict'"):
        load_gcd_chexpert_classifier(tmp_path / "other.ckpt", **TINY)
    with pytest.raises(ValueError, match="shape mismatches"):  # the published widths, not this file's
        load_gcd_chexpert_classifier(tmp_path / "missing.ckpt", block_config=[1, 1])
    with pytest.raises(FileNotFoundError, match="absent.ckpt"):
        load_gcd_chexpert_classifier(tmp_path / "absent.ckpt")


def test_query_classifier_selects_the_finding(tmp_path):
    write_gcd_chexpert_checkpoint(tmp_path / "w.ckpt", **TINY)
    spec = {"kind": "gcd_chexpert_classifier", "arch": TINY}
    query = load_query_classifier(spec, tmp_path / "w.ckpt", 9)
    assert isinstance(query, QueryClassifier) and isinstance(query.model, GCDCheXpertClassifier)
    assert query.query_label == 9 and GCD_CHEXPERT_OUTPUTS[9] == "Pleural Effusion"
    x = torch.rand(3, 1, 32, 32) * 2 - 1
    with torch.no_grad():
        assert torch.equal(query(x), query.model(x)[:, 9])
    with pytest.raises(ValueError, match="13 Support Devices"):
        load_query_classifier(spec, tmp_path / "w.ckpt", 14)


# --- the transform and labels -------------------------------------------------------------------------------------

def test_chexpert_transform_and_labels(tmp_path):
    root = tmp_path / "CheXpert-v1.0-small"
    ids = fake_chexpert(root)
    build_layout_index("chexpert", root, tmp_path / "index.csv")
    dataset = IndexDataset(tmp_path / "index.csv", "chexpert", split="val", image_size=16, query_label=9)
    assert len(dataset) == 4 and list(dataset.frame["image_id"]) == ids
    # Pleural Effusion: 1 positive, 0 negative, -1 uncertain -> 0, blank -> 0
    assert [int(dataset[k][2]) for k in range(4)] == [1, 0, 0, 0]
    assert dataset[0][2].dtype == torch.long
    # grayscale 1x16x16 in [-1, 1]: Resize(16) on the short side (40x48 -> 16x19, bilinear) + CenterCrop(16)
    image = dataset[1][1]
    assert image.shape == (1, 16, 16)
    with Image.open(root / "valid" / ids[1]) as pil:
        resized = np.asarray(pil.convert("L").resize((16, 19), Image.BILINEAR), dtype=np.float32)
    expected = torch.from_numpy(resized[2:18] / 255 * 2 - 1)
    assert torch.allclose(image[0], expected, atol=1e-6)
    stretched = IndexDataset(tmp_path / "index.csv", "chexpert", image_size=16, query_label=0, resize="stretch")
    assert stretched[0][1].shape == (1, 16, 16)
    # no query: the 14 findings in GCD's output order as a float vector
    frame = pd.read_csv(tmp_path / "index.csv")
    every = IndexDataset(frame, "chexpert", image_size=8)[2][2]
    assert every.dtype == torch.float32 and every.shape == (14,)
    assert every.tolist() == [float(chexpert_positive(frame.loc[2, name])) for name in GCD_CHEXPERT_OUTPUTS]
    with pytest.raises(ValueError, match="0 Atelectasis"):
        IndexDataset(frame, "chexpert", image_size=8, query_label=14)
    with pytest.raises(ValueError, match="lacks the columns"):
        IndexDataset(frame.drop(columns=["Pneumonia"]), "chexpert", image_size=8)
    assert [chexpert_positive(v) for v in (1, 1.0, 0.0, -1.0, float("nan"), None)] == [1, 1, 0, 0, 0, 0]
    with pytest.raises(ValueError, match="not 1, 0, -1"):
        chexpert_positive(2.0)


# --- GCD on a tiny one-channel DiffAE -----------------------------------------------------------------------------

DAE_FLAGS = dict(img_size=32, in_channels=1, net_ch=32, net_ch_mult=[1, 2], net_enc_channel_mult=[1, 2],
                 net_attn=[16], style_ch=32, net_beatgans_embed_channels=32)
GCD = {"diffae": "tiny_dae", "lpips": {"kind": "lpips_random", "seed": 0}, "batch_size": 2,
       "config": {"n_iters": 2, "n_steps_dae": 1, "dae_batch_size": 24, "proxy_batch_size": 8, "n_steps_proxy": 5,
                  "proxy_hidden": [8], "n_hessian_eigenvecs": 1, "line_search_batch_size": 6, "T_encode": 2,
                  "T_render": 2, "transfer_batch_size": 4, "bblig_n_steps": 4, "bblig_path_length": 3}}
MODELS = {"chex": {"kind": "gcd_chexpert_classifier", "arch": TINY}, "tiny_dae": {"kind": "diffae",
                                                                                 "flags": DAE_FLAGS}}
EXPERIMENT = {"dataset": "chexpert", "split": "val", "image_size": 32, "query_label": 9, "classifier": "chex",
              "max_images": 3}


@pytest.fixture(scope="module")
def chexpert_setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("chexpert_gcd")
    fake_chexpert(root / "CheXpert-v1.0-small")
    build_layout_index("chexpert", root / "CheXpert-v1.0-small", root / "index.csv")
    write_gcd_chexpert_checkpoint(root / "chex.ckpt", seed=3, **TINY)
    torch.manual_seed(0)
    dae = create_diffae(None, **DAE_FLAGS)
    with torch.no_grad():
        for p in dae.parameters():
            p.normal_(0, 0.05)
    torch.save(lightning_checkpoint(dae), root / "tiny_dae.ckpt")
    return root


def test_gcd_search_transfer_bblig_and_cout_on_grayscale(chexpert_setup, monkeypatch):
    root = chexpert_setup
    shapes = []

    class RecordingProxy(gcd_module.ProxyMLP):
        def __init__(self, sizes):
            shapes.append(list(sizes))
            super().__init__(sizes)

    monkeypatch.setattr(gcd_module, "ProxyMLP", RecordingProxy)
    checkpoints = {"classifier": root / "chex.ckpt", "diffae": root / "tiny_dae.ckpt"}
    record = gcd_direction(experiment=EXPERIMENT, method_spec=GCD, model_specs=MODELS, index_csv=root / "index.csv",
                           checkpoints=checkpoints, out_path=root / "gcd" / "direction.pt", seed=0, device="cpu",
                           threads=1, layout="chexpert")
    assert record["source_image_id"] == "patient64541/study1/view1_frontal.jpg"
    # the proxy predicts the classifier's 14 finding logits + LPIPS (GCD's CheXpert shapes [..., 15])
    assert shapes and all(s[0] == 32 and s[-1] == 15 for s in shapes)
    assert json.loads((root / "gcd" / "search.json").read_text())["chosen"]["query"] == 9

    checkpoints["direction"] = root / "gcd" / "direction.pt"
    tree = root / "tree"
    manifest = generate_chunk(experiment=EXPERIMENT, method="gcd", method_spec=GCD, model_specs=MODELS,
                              index_csv=root / "index.csv", checkpoints=checkpoints, chunk=0, chunks=1, seed=0,
                              tree_root=tree, manifest_path=tree / "chunks" / "gcd" / "0-of-1.json", device="cpu",
                              threads=1, progress=False, layout="chexpert")
    out = OutputTree(tree, "gcd", ext="png")
    assert manifest["n"] == 3 and out.completed_stems() == {"0000000", "0000001", "0000002"}
    labels = [read_info(out.info_path(s))["label"] for s in ("0000000", "0000001", "0000002")]
    assert labels == [1, 0, 0]  # Pleural Effusion of the first three rows: 1, 0, -1 (uncertain -> 0)
    cf = next(tree.glob("Results/gcd/*/*/CF/0000000.png"))
    original = next(tree.glob("Original/*/0000000.png"))
    for path in (cf, original):
        with Image.open(path) as image:
            assert image.mode == "L" and image.size == (32, 32)

    rows = gcd_bblig(experiment=EXPERIMENT, method_spec=GCD, model_specs=MODELS, index_csv=root / "index.csv",
                     checkpoints=checkpoints, out_dir=root / "bblig", n_images=1, device="cpu", threads=1,
                     layout="chexpert")
    assert [r["stem"] for r in rows] == ["0000000"]
    arrays = np.load(root / "bblig" / "0000000.npz")
    assert arrays["sig"].shape == (1, 32, 32) and arrays["map"].shape == (32, 32)

    # COUT reads the tree's grayscale PNGs as RGB (equal channels) through the same loader
    from cfx.metrics import cout

    ctx = MetricContext(experiment=EXPERIMENT, networks={"classifier": NetworkRef(
        "classifier", "chex", root / "chex.ckpt", MODELS["chex"])}, device="cpu")
    correct = sorted(tree.glob("Results/gcd/CC/*/CF/*.png"))
    if not correct:  # no correctly classified input among three random-network predictions: COUT is not applicable
        with pytest.raises(NotApplicable):
            cout.compute_tree(tree, "gcd", ctx)
        return
    result = cout.compute_tree(tree, "gcd", ctx)
    assert result["n"] == len(correct) and np.isfinite(result["value"])


def test_suite_rejects_a_chexpert_query_outside_the_classifier(tmp_path):
    import yaml

    from cfx.suite import SuiteError, load_suite

    paper = Path(__file__).resolve().parent.parent / "workflow" / "suites" / "paper.yaml"
    for field, value, message in (("query_label", 14, "not an output of GCD's CheXpert classifier"),
                                  ("image_size", [224, 256], "not square")):
        suite = yaml.safe_load(paper.read_text())
        suite["experiments"]["chexpert_pneumonia"][field] = value
        (tmp_path / "suite.yaml").write_text(yaml.safe_dump(suite))
        with pytest.raises(SuiteError, match=f"chexpert_pneumonia.*{message}"):
            load_suite(tmp_path / "suite.yaml")
