"""LPIPS-VGG's VGG-16 trunk read from a named file (the paper suite's downloaded registry checkpoint
``resources/checkpoints/torchvision_vgg16.pth``) instead of ``$TORCH_HOME``: strict key mapping, the package's linear
heads, errors naming the file; GCD's direction search and the suite plumbing pass that file."""

from pathlib import Path

import pytest
import torch

from cfx.metrics import NetworkRef
from cfx.metrics.sigma_l import load_lpips, load_lpips_vgg_weights
from cfx.suite import load_suite, method_network, resolved_method_spec
from tests.published_formats import random_state, torchvision_vgg16_shapes

PAPER = Path(__file__).resolve().parent.parent / "workflow" / "suites" / "paper.yaml"


def _write_vgg16(path: Path, state: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    return path


@pytest.fixture(scope="module")
def vgg16_features(tmp_path_factory):
    """torchvision's VGG-16 trunk keys and shapes with random weights, plus a (shrunken) classifier head: the real
    head is 500 MB that LPIPS never reads; the loader must skip classifier.* whatever it holds."""
    state = random_state(torchvision_vgg16_shapes(with_classifier=False), seed=5)
    state["classifier.6.weight"] = torch.zeros(10, 4)
    state["classifier.6.bias"] = torch.zeros(10)
    path = _write_vgg16(tmp_path_factory.mktemp("vgg16") / "resources" / "checkpoints" / "torchvision_vgg16.pth", state)
    return path, state


def test_trunk_is_read_from_the_named_file_not_torch_home(vgg16_features, tmp_path, monkeypatch):
    path, state = vgg16_features
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty"))
    net, stand_in = load_lpips(NetworkRef("lpips", "torchvision_vgg16", path, {"kind": "lpips_vgg"}))
    assert stand_in == "" and not net.training
    trunk = net.net.state_dict()
    assert len(trunk) == 26
    for key, value in trunk.items():
        _, index, param = key.split(".", 2)
        assert torch.equal(value, state[f"features.{index}.{param}"]), key
    random_heads, _ = load_lpips(NetworkRef("lpips", "x", None, {"kind": "lpips_random", "seed": 0}))
    for name, value in random_heads.state_dict().items():  # the lpips package's published linear heads
        if name.startswith("lin"):
            assert torch.equal(net.state_dict()[name], value), name
    a, b = (torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(s)) * 2 - 1 for s in (0, 1))
    with torch.no_grad():
        assert float(net(a, b)) > 0 and float(net(a, a)) == 0
    with pytest.raises(FileNotFoundError, match=r"empty/hub/checkpoints/vgg16-397923af\.pth"):  # no file: TORCH_HOME
        load_lpips(NetworkRef("lpips", "x", None, {"kind": "lpips_vgg"}))


def test_wrong_vgg16_file_is_an_error_naming_it(vgg16_features, tmp_path):
    _, state = vgg16_features
    missing = _write_vgg16(tmp_path / "missing.pth", {k: v for k, v in state.items() if k != "features.28.bias"})
    with pytest.raises(ValueError, match=r"missing\.pth does not match LPIPS's VGG-16 trunk: 1 missing "
                                         r"\['features\.28\.bias'\]"):
        load_lpips_vgg_weights(missing)
    extra = _write_vgg16(tmp_path / "extra.pth", {**state, "features.30.weight": torch.zeros(1)})
    with pytest.raises(ValueError, match=r"extra\.pth does not match.*1 unexpected \['features\.30\.weight'\]"):
        load_lpips_vgg_weights(extra)
    shape = _write_vgg16(tmp_path / "shape.pth", {**state, "features.0.bias": torch.zeros(3)})
    with pytest.raises(ValueError, match=r"shape\.pth \[features\].*slice1\.0\.bias: file \(3,\)"):
        load_lpips_vgg_weights(shape)
    other = _write_vgg16(tmp_path / "other.pth", {**state, "fc.weight": torch.zeros(1)})
    with pytest.raises(ValueError, match=r"other\.pth is not torchvision's VGG-16.*fc\.weight"):
        load_lpips_vgg_weights(other)
    with pytest.raises(FileNotFoundError, match=r"nowhere\.pth"):
        load_lpips_vgg_weights(tmp_path / "nowhere.pth")


def test_paper_suite_gcd_lpips_is_the_registry_file():
    suite = load_suite(PAPER)
    network = method_network(suite, "gcd", "lpips")
    assert network == {"name": "torchvision_vgg16", "checkpoint": "resources/checkpoints/torchvision_vgg16.pth",
                       "spec": {"kind": "lpips_vgg"}}
    assert resolved_method_spec(suite, "gcd")["lpips"] == {"kind": "lpips_vgg"}
    assert suite["methods"]["gcd"]["lpips"] == "torchvision_vgg16"  # the suite itself is not changed
    suite["methods"]["gcd"]["lpips"] = {"kind": "lpips_random", "seed": 0}  # inline: no file
    assert method_network(suite, "gcd", "lpips")["checkpoint"] is None
    del suite["methods"]["gcd"]["lpips"]
    assert method_network(suite, "gcd", "lpips") is None and "lpips" not in resolved_method_spec(suite, "gcd")


def test_gcd_networks_read_lpips_from_the_checkpoint(vgg16_features, tmp_path, monkeypatch):
    """steps._gcd_networks passes checkpoint 'lpips' to the LPIPS loader (the workflow's gcd_direction input)."""
    import cfx.metrics.sigma_l as sigma_l
    from cfx.models.classifier import DenseNetClassifier, save_celeba_classifier
    from cfx.models.diffae import create_diffae, lightning_checkpoint
    from cfx.steps import _gcd_networks
    from tests.factories.networks import ARCH, DAE_FLAGS

    path, _ = vgg16_features
    save_celeba_classifier(DenseNetClassifier(**ARCH), tmp_path / "plain.pt")
    torch.save(lightning_checkpoint(create_diffae(None, **DAE_FLAGS)), tmp_path / "dae.ckpt")
    seen = []
    real = sigma_l.load_lpips
    monkeypatch.setattr(sigma_l, "load_lpips", lambda ref, device="cpu": seen.append(ref) or real(ref, device))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty"))
    experiment = {"query_label": 31, "classifier": "plain"}
    models = {"plain": {"kind": "classifier", "arch": ARCH}, "dae": {"kind": "diffae", "flags": DAE_FLAGS}}
    checkpoints = {"classifier": tmp_path / "plain.pt", "diffae": tmp_path / "dae.ckpt", "lpips": path}
    _, _, lpips = _gcd_networks(experiment, {"diffae": "dae", "lpips": {"kind": "lpips_vgg"}}, models, checkpoints,
                                "cpu")
    assert [ref.path for ref in seen] == [path] and seen[0].kind == "lpips_vgg"
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    assert lpips(x, x.flip(0)).shape == (2,)
    _, _, none = _gcd_networks(experiment, {"diffae": "dae"}, models, checkpoints, "cpu", with_lpips=False)
    assert none is None and len(seen) == 1  # BB-LIG loads no LPIPS
    with pytest.raises(ValueError, match=r"methods\.gcd\.lpips must be resolved"):
        _gcd_networks(experiment, {"diffae": "dae", "lpips": "torchvision_vgg16"}, models, checkpoints, "cpu")
