"""The paper networks in their published checkpoint formats (random weights, real loading code) and the metric
loaders by role: VGGFace2 pickle, DiME oracle.pth, STEEX checkpoint.tar, SimSiam checkpoint_0099.pth.tar."""

import copy
import pickle

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from cfx.metrics import NetworkRef
from cfx.metrics.networks import load_face_features, load_oracle_probabilities, load_simsiam_projector
from tests.published_formats import (
    cydonia_resnet50_shapes,
    dag_resnet50_shapes,
    py2_pickle_of_arrays,
    random_state,
    simsiam_shapes,
)


def _vggface2_arrays(num_classes: int) -> dict[str, np.ndarray]:
    state = random_state(cydonia_resnet50_shapes(num_classes), seed=1, bn_gamma=0.5)
    return {k: v.numpy() for k, v in state.items()}


@pytest.fixture(scope="module")
def vggface2_pkl(tmp_path_factory):
    """``resnet50_ft_weight.pkl``: a Python-2 pickle of float32 arrays, no ``num_batches_tracked``, published
    shapes (8631 identities)."""
    arrays = _vggface2_arrays(8631)
    path = tmp_path_factory.mktemp("vggface2") / "resnet50_ft_weight.pkl"
    path.write_bytes(py2_pickle_of_arrays(arrays))
    return path, arrays


@pytest.fixture(scope="module")
def small_vggface2_pkl(tmp_path_factory):
    """The same layout with a 10-identity head (smaller file, for the error and role tests)."""
    arrays = _vggface2_arrays(10)
    path = tmp_path_factory.mktemp("vggface2_small") / "resnet50_ft_weight.pkl"
    path.write_bytes(py2_pickle_of_arrays(arrays))
    return path, arrays


def test_py2_pickle_writer_is_what_the_upstream_loader_reads(vggface2_pkl):
    path, arrays = vggface2_pkl
    with open(path, "rb") as handle:  # cydonia999 utils.load_state_dict: pickle.load(f, encoding='latin1')
        upstream = pickle.load(handle, encoding="latin1")
    assert list(upstream) == list(arrays)
    assert all(np.array_equal(upstream[k], arrays[k]) for k in arrays)


def test_vggface2_pickle_loads_strictly(vggface2_pkl):
    from cfx.models.vggface2 import load_vggface2_weights

    path, arrays = vggface2_pkl
    net = load_vggface2_weights(path)
    assert not net.training
    state = net.state_dict()
    assert {k for k in state if not k.endswith("num_batches_tracked")} == set(arrays)
    assert all(np.array_equal(state[k].numpy(), arrays[k]) for k in arrays)
    with torch.no_grad():
        out = net(torch.randn(1, 3, 224, 224) * 40)
    assert out.shape == (1, 2048, 1, 1) and torch.isfinite(out).all() and out.abs().sum() > 0


def test_vggface2_pickle_missing_or_misshaped_key_is_an_error(tmp_path, small_vggface2_pkl):
    from cfx.models.vggface2 import load_vggface2_weights

    _, arrays = small_vggface2_pkl
    missing = {k: v for k, v in arrays.items() if k != "layer3.2.bn2.running_var"}
    path = tmp_path / "missing.pkl"
    path.write_bytes(py2_pickle_of_arrays(missing))
    with pytest.raises(ValueError, match=r"missing.pkl.*layer3\.2\.bn2\.running_var"):
        load_vggface2_weights(path)
    wrong = {**arrays, "fc.bias": np.zeros(11, dtype=np.float32)}
    path = tmp_path / "wrong.pkl"
    path.write_bytes(py2_pickle_of_arrays(wrong))
    with pytest.raises(ValueError, match=r"wrong.pkl.*fc\.bias"):
        load_vggface2_weights(path)


class _Exploit:
    def __reduce__(self):
        import os

        return (os.system, ("touch EXPLOITED",))


def test_restricted_unpickler_refuses_a_malicious_pickle(tmp_path, monkeypatch):
    from cfx.models.vggface2 import load_vggface2_weights

    monkeypatch.chdir(tmp_path)
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps({"conv1.weight": _Exploit()}, protocol=2))
    with pytest.raises(ValueError, match=r"evil\.pkl.*(posix|os)\.system"):
        load_vggface2_weights(path)
    assert not (tmp_path / "EXPLOITED").exists()
    path.write_bytes(pickle.dumps({"conv1.weight": np.zeros(3)}, protocol=4))  # a modern numpy pickle loads
    with pytest.raises(ValueError, match="does not match the architecture"):
        load_vggface2_weights(path)


def test_vggface2_input_by_hand():
    from cfx.models.vggface2 import vggface2_input

    mean_bgr = np.array([91.4953, 103.8827, 131.0912])
    flat = vggface2_input(Image.new("RGB", (128, 128), (10, 200, 30)))  # bilinear resize keeps a flat colour
    assert flat.shape == (3, 224, 224) and flat.dtype == torch.float32
    for channel, value in enumerate((30, 200, 10)):  # B, G, R
        assert torch.allclose(flat[channel], torch.tensor(np.float32(value - mean_bgr[channel])))
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, size=(224, 224, 3), dtype=np.uint8)  # already 224: no resampling
    out = vggface2_input(Image.fromarray(pixels)).numpy()
    for y, x in ((0, 0), (17, 200), (223, 5)):
        r, g, b = (float(v) for v in pixels[y, x])
        expected = np.array([b, g, r], dtype=np.float32) - mean_bgr
        assert np.allclose(out[:, y, x], expected.astype(np.float32), atol=1e-5)


def _oracle_file(tmp_path, with_tracked: bool):
    shapes = {**dag_resnet50_shapes(with_tracked), "feat_extract.weight": (128, 2048, 1, 1)}
    features = random_state(shapes, 2, bn_gamma=0.5)
    classifier = random_state({"weight": (40, 128), "bias": (40,)}, 3)
    path = tmp_path / f"oracle{int(with_tracked)}.pth"
    torch.save({"feat_extract": features, "classifier": classifier, "optimizer": {"state": {}, "param_groups": []}},
               path)
    return path, features, classifier


@pytest.fixture(scope="module")
def oracle_file(tmp_path_factory):
    return _oracle_file(tmp_path_factory.mktemp("oracle"), True)


@pytest.mark.parametrize("with_tracked", [True, False])
def test_celeba_oracle_loads_the_dime_format(tmp_path, oracle_file, with_tracked):
    from cfx.models.vggface2 import load_celeba_oracle

    path, features, classifier = oracle_file if with_tracked else _oracle_file(tmp_path, False)
    oracle = load_celeba_oracle(path)
    assert not oracle.training
    own = oracle.feat_extract.state_dict()
    assert {k for k in own if with_tracked or not k.endswith("num_batches_tracked")} == set(features)
    assert all(torch.equal(own[k], features[k]) for k in features)
    assert torch.equal(oracle.classifier.weight, classifier["weight"])
    if with_tracked:
        with torch.no_grad():
            logits = oracle(torch.rand(1, 3, 128, 128) * 2 - 1)
        assert logits.shape == (1, 40) and torch.isfinite(logits).all()


def test_celeba_oracle_preprocessing_by_hand():
    from cfx.models.vggface2 import celeba_oracle_input

    rgb = torch.tensor([-0.5, 0.25, 0.75])
    x = rgb.view(1, 3, 1, 1).expand(1, 3, 128, 128).contiguous()
    out = celeba_oracle_input(x)
    assert out.shape == (1, 3, 224, 224)
    # DiME Resnet50_128.forward: BGR order, then (131.0912, 103.8827, 91.4953)/255 off channels (B, G, R)
    expected = [(0.75 + 1) / 2 - 131.0912 / 255, (0.25 + 1) / 2 - 103.8827 / 255, (-0.5 + 1) / 2 - 91.4953 / 255]
    for channel, value in enumerate(expected):
        assert torch.allclose(out[0, channel], torch.tensor(value), atol=1e-6)


def test_celeba_oracle_wrong_layout_names_the_file(tmp_path):
    from cfx.models.vggface2 import load_celeba_oracle

    torch.save({"model_state_dict": {}}, tmp_path / "x.pth")
    with pytest.raises(ValueError, match=r"x\.pth.*feat_extract"):
        load_celeba_oracle(tmp_path / "x.pth")


def _steex_file(tmp_path):
    state = {f"feat_extract.{k}": v for k, v in random_state(dag_resnet50_shapes(True), 4, bn_gamma=0.5).items()}
    state.update({f"classifier.{k}": v for k, v in random_state({"weight": (40, 2048), "bias": (40,)}, 5).items()})
    path = tmp_path / "checkpoint.tar"
    torch.save({"epoch": 12, "optimizer_state_dict": {"state": {}, "param_groups": [{"lr": 1e-4, "params": [0]}]},
                "loss": 0.173, "model_state_dict": state}, path)
    return path, state


@pytest.fixture(scope="module")
def steex_file(tmp_path_factory):
    return _steex_file(tmp_path_factory.mktemp("steex"))


@pytest.fixture(scope="module")
def simsiam_file(tmp_path_factory):
    return _simsiam_file(tmp_path_factory.mktemp("simsiam"))


def test_steex_oracle_loads_and_resizes_inside(steex_file):
    from cfx.models.steex import load_steex_oracle

    path, state = steex_file
    oracle = load_steex_oracle(path)
    own = oracle.state_dict()
    assert set(own) == set(state) and all(torch.equal(own[k], state[k]) for k in state)
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        p = oracle(x)
        p_224 = oracle(F.interpolate(x, size=(224, 224), mode="bicubic", align_corners=False))
    assert p.shape == (2, 40) and ((p > 0) & (p < 1)).all()
    assert torch.allclose(p, p_224, atol=1e-6)  # the input is resized bicubically to 224 inside


def _simsiam_file(tmp_path):
    state = random_state(simsiam_shapes(), 6)
    path = tmp_path / "checkpoint_0099.pth.tar"
    torch.save({"epoch": 100, "arch": "resnet50", "state_dict": {f"module.{k}": v for k, v in state.items()},
                "optimizer": {"state": {}, "param_groups": [{"lr": 0.05, "momentum": 0.9, "params": [0]}]}}, path)
    return path, state


def test_simsiam_loads_and_projects(simsiam_file):
    from cfx.models.simsiam import load_simsiam, simsiam_input

    path, state = simsiam_file
    net = load_simsiam(path)
    own = net.state_dict()
    assert set(own) == set(state) and all(torch.equal(own[k], state[k]) for k in state)
    x = torch.rand(2, 3, 32, 32)
    normalised = simsiam_input(x)
    mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
    assert torch.allclose(normalised, (x - mean.view(3, 1, 1)) / std.view(3, 1, 1), atol=1e-6)
    with torch.no_grad():
        z = net.project(normalised)
        # eval-mode projector output: the last BatchNorm1d (no affine) standardises with the running statistics
        trunk = copy.deepcopy(net.encoder)
        trunk.fc = net.encoder.fc[:7]
        h = trunk(normalised)
    expected = (h - state["encoder.fc.7.running_mean"]) / torch.sqrt(state["encoder.fc.7.running_var"] + 1e-5)
    assert z.shape == (2, 2048) and torch.allclose(z, expected, atol=1e-4)


def test_simsiam_without_state_dict_is_refused(tmp_path):
    from cfx.models.simsiam import load_simsiam

    torch.save({"model": {}}, tmp_path / "bad.pth.tar")
    with pytest.raises(ValueError, match=r"bad\.pth\.tar.*state_dict"):
        load_simsiam(tmp_path / "bad.pth.tar")


def test_role_loaders_use_the_paper_kinds(tmp_path, small_vggface2_pkl, oracle_file, steex_file, simsiam_file):
    path, _ = small_vggface2_pkl
    Image.new("RGB", (32, 32), (200, 10, 10)).save(tmp_path / "face.png")
    embed = load_face_features(NetworkRef("identity", "vggface2", path, {"kind": "vggface2"}))
    with torch.no_grad():
        feats = embed([tmp_path / "face.png"])
    assert feats.shape == (1, 2048)

    oracle_path, _, _ = oracle_file
    probs = load_oracle_probabilities(NetworkRef("oracle", "dime_oracle", oracle_path, {"kind": "celeba_oracle"}))
    steex_path, _ = steex_file
    steex = load_oracle_probabilities(NetworkRef("oracle", "steex", steex_path, {"kind": "steex_oracle"}))
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        for p in (probs(x), steex(x)):
            assert p.shape == (1, 40) and ((p > 0) & (p < 1)).all()

    simsiam_path, _ = simsiam_file
    project = load_simsiam_projector(NetworkRef("simsiam", "simsiam", simsiam_path, {"kind": "simsiam"}))
    with torch.no_grad():
        assert project(torch.rand(2, 3, 32, 32)).shape == (2, 2048)
