"""The CelebA classifier in DiME's checkpoint format, the mini oracle, and weights-only checkpoint loading."""

import pickle

import pytest
import torch

from cfx.models.classifier import DenseNetClassifier, QueryClassifier, load_celeba_classifier, save_celeba_classifier
from cfx.models.oracle import AttributeOracle, load_oracle, save_oracle
from cfx.runtime.checkpoints import load_checkpoint

MINI = dict(growth_rate=12, block_config=(2, 2, 2, 2), num_init_features=24)


def test_default_is_the_published_densenet121_layout():
    with torch.device("meta"):
        model = DenseNetClassifier()
    feat = {k: tuple(v.shape) for k, v in model.feat_extract.state_dict().items()}
    assert feat["features.conv0.weight"] == (64, 3, 7, 7)
    assert feat["features.denseblock4.denselayer16.conv2.weight"] == (32, 128, 3, 3)
    assert feat["features.norm5.weight"] == (1024,)
    assert not any(k.startswith("classifier") for k in feat)  # torchvision's head replaced by Identity
    assert dict(model.classifier.state_dict().items())["weight"].shape == (40, 1024)
    # exactly torchvision's densenet121 without its head: what DiME's feat_extract holds
    from torchvision.models import densenet121

    with torch.device("meta"):
        reference = densenet121(weights=None).state_dict()
    assert feat == {k: tuple(v.shape) for k, v in reference.items() if not k.startswith("classifier")}


def test_round_trip_query_logit_and_strict_errors(tmp_path):
    torch.manual_seed(0)
    model = DenseNetClassifier(**MINI).eval()
    path = save_celeba_classifier(model, tmp_path / "classifier.pth")
    state = torch.load(path, weights_only=True)
    assert set(state) == {"feat_extract", "classifier"}
    loaded = load_celeba_classifier(path, **MINI)
    x = torch.rand(3, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))
        assert torch.equal(QueryClassifier(loaded, 31)(x), model(x)[:, 31])
    with pytest.raises(ValueError, match=r"classifier\.pth \[feat_extract\] does not match"):
        load_celeba_classifier(path, growth_rate=16, block_config=(2, 2, 2, 2), num_init_features=24)
    torch.save({"model_state_dict": {}}, tmp_path / "steex.tar")
    with pytest.raises(ValueError, match="expected keys feat_extract, classifier; got \\['model_state_dict'\\]"):
        load_celeba_classifier(tmp_path / "steex.tar", **MINI)


def test_oracle_round_trip(tmp_path):
    torch.manual_seed(1)
    oracle = AttributeOracle().eval()
    loaded = load_oracle(save_oracle(oracle, tmp_path / "oracle.pth"))
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        assert torch.equal(oracle(x), loaded(x)) and loaded(x).shape == (2, 40)


class _Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_checkpoint_loading_is_weights_only_with_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        load_checkpoint(tmp_path / "missing.pt", "DDPM")
    with open(tmp_path / "evil.pt", "wb") as handle:
        pickle.dump(_Evil(), handle)
    torch.save({"x": _Evil()}, tmp_path / "evil2.pt")
    for name in ("evil.pt", "evil2.pt"):
        with pytest.raises(ValueError, match=name):
            load_checkpoint(tmp_path / name, "classifier")
    (tmp_path / "truncated.pt").write_bytes(b"PK\x03\x04 broken")
    with pytest.raises(ValueError, match="truncated.pt"):
        load_checkpoint(tmp_path / "truncated.pt", "classifier")
