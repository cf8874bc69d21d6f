"""The CelebA classifier in DiME's checkpoint format, the mini oracle, and weights-only checkpoint loading."""

import pickle

import pytest
import torch
import torchvision
from torch import nn

from cfx.models.classifier import DenseNetClassifier, QueryClassifier, load_celeba_classifier, save_celeba_classifier
from cfx.models.oracle import AttributeOracle, load_oracle, save_oracle
from cfx.runtime.checkpoints import load_checkpoint, load_state_dict_strict, save_checkpoint_atomic

MINI = dict(growth_rate=12, block_config=(2, 2, 2, 2), num_init_features=24)


class _DiVEDenseNet121(nn.Module):
    """The structure of DiME's ``core/classifier/densenet.py:DenseNet121`` (DiVE's wrapper), rebuilt here from its
    description to produce the published ``feat_extract`` state dict: torchvision densenet121, Identity head."""

    def __init__(self):
        super().__init__()
        self.feat_extract = torchvision.models.densenet121(weights=None)
        self.feat_extract.classifier = nn.Identity()

    def forward(self, x):
        return self.feat_extract(x)


def test_default_is_the_published_densenet121_layout():
    with torch.device("meta"):
        model = DenseNetClassifier()
        reference = _DiVEDenseNet121()
    feat = {k: tuple(v.shape) for k, v in model.feat_extract.state_dict().items()}
    assert feat == {k: tuple(v.shape) for k, v in reference.state_dict().items()}
    # conv0 + norm0 (1 + 5) + 58 dense layers × (2 BN × 5 + 2 conv) + 3 transitions × (5 + 1) + norm5 (5)
    assert len(feat) == 6 + 58 * 12 + 3 * 6 + 5 == 725
    assert feat["feat_extract.features.conv0.weight"] == (64, 3, 7, 7)
    assert feat["feat_extract.features.denseblock1.denselayer1.norm1.running_var"] == (64,)
    assert feat["feat_extract.features.denseblock4.denselayer16.conv2.weight"] == (32, 128, 3, 3)
    assert feat["feat_extract.features.transition3.conv.weight"] == (512, 1024, 1, 1)
    assert feat["feat_extract.features.norm5.weight"] == (1024,)
    assert not any(".classifier" in k for k in feat)  # torchvision's head is an Identity
    assert {k: tuple(v.shape) for k, v in model.classifier.state_dict().items()} == {"weight": (40, 1024),
                                                                                       "bias": (40,)}


def test_a_dime_format_densenet121_file_loads_strictly_with_the_same_outputs(tmp_path):
    torch.manual_seed(0)
    features, head = _DiVEDenseNet121().eval(), nn.Linear(1024, 40)
    # DiVE's trainer also writes the optimizer state; DiME's loader ignores it, so do we
    torch.save({"feat_extract": features.state_dict(), "classifier": head.state_dict(),
                "optimizer": {"state": {}, "param_groups": [{"lr": 1e-4, "params": [0, 1]}]}},
               tmp_path / "classifier.pth")
    model = load_celeba_classifier(tmp_path / "classifier.pth")
    assert not model.training
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        expected = head(features(x))
        assert torch.equal(model(x), expected)
        assert torch.equal(QueryClassifier(model, 39)(x), expected[:, 39])


def test_round_trip_query_logit_and_strict_errors(tmp_path):
    torch.manual_seed(0)
    model = DenseNetClassifier(**MINI).eval()
    path = save_celeba_classifier(model, tmp_path / "classifier.pth")
    state = torch.load(path, weights_only=True)
    assert set(state) == {"feat_extract", "classifier"}
    assert "feat_extract.features.conv0.weight" in state["feat_extract"]
    loaded = load_celeba_classifier(path, **MINI)
    x = torch.rand(3, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        logits = model(x)
        assert logits.shape == (3, 40)
        assert torch.equal(loaded(x), logits)
        assert torch.equal(QueryClassifier(loaded, 31)(x), logits[:, 31])
        query, others = QueryClassifier(loaded, 20)(x, get_other_attrs=True)
        assert torch.equal(query, logits[:, 20]) and torch.equal(others, logits)
    # another width: the error names the file, the part and mismatching keys with their shapes
    with pytest.raises(ValueError, match=r"classifier\.pth \[feat_extract\] does not match.*"
                                         r"feat_extract\.features\.conv0\.weight: file \(24, 3, 7, 7\)"):
        load_celeba_classifier(path, growth_rate=16, block_config=(2, 2, 2, 2), num_init_features=16)
    # a bare torchvision DenseNet state dict (no DiVE wrapper prefix) is refused with the keys and a hint
    bare = {"feat_extract": model.feat_extract.feat_extract.state_dict(), "classifier": model.classifier.state_dict()}
    torch.save(bare, tmp_path / "bare.pth")
    with pytest.raises(ValueError, match=r"bare\.pth \[feat_extract\].*missing \['feat_extract\.features\..*"
                                         r"unexpected \['features\..*start with 'feat_extract\.'"):
        load_celeba_classifier(tmp_path / "bare.pth", **MINI)
    torch.save({"model_state_dict": {}}, tmp_path / "steex.tar")
    with pytest.raises(ValueError, match=r"steex\.tar is not a CelebA classifier checkpoint.*\['model_state_dict'\]"):
        load_celeba_classifier(tmp_path / "steex.tar", **MINI)


def test_oracle_is_another_architecture_in_the_same_format(tmp_path):
    torch.manual_seed(1)
    oracle = AttributeOracle().eval()
    assert not any(isinstance(m, torchvision.models.densenet._DenseLayer) for m in oracle.modules())
    path = save_oracle(oracle, tmp_path / "oracle.pth")
    assert set(torch.load(path, weights_only=True)) == {"feat_extract", "classifier"}
    loaded = load_oracle(path)
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        assert loaded(x).shape == (2, 40) and torch.equal(oracle(x), loaded(x))
    with pytest.raises(ValueError, match=r"oracle\.pth \[feat_extract\] does not match"):
        load_oracle(path, width=16)


class _Evil:
    def __reduce__(self):
        return (print, ("pwned",))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_checkpoint_loading_is_weights_only_with_clear_errors(tmp_path, capsys):
    with pytest.raises(FileNotFoundError, match=r"DDPM .*missing\.pt does not exist: put it there.*training/download"):
        load_checkpoint(tmp_path / "missing.pt", "DDPM")
    with open(tmp_path / "evil.pt", "wb") as handle:
        pickle.dump(_Evil(), handle)
    torch.save({"x": _Evil()}, tmp_path / "evil2.pt")
    capsys.readouterr()
    for name in ("evil.pt", "evil2.pt"):
        with pytest.raises(ValueError, match=rf"{name} is not a weights-only checkpoint"):
            load_checkpoint(tmp_path / name, "classifier")
    assert "pwned" not in capsys.readouterr().out  # nothing was executed
    (tmp_path / "truncated.pt").write_bytes(b"PK\x03\x04 broken")
    with pytest.raises(ValueError, match=r"truncated\.pt is not a readable torch checkpoint"):
        load_checkpoint(tmp_path / "truncated.pt", "classifier")


def test_atomic_save_and_strict_state_dict_errors(tmp_path):
    path = save_checkpoint_atomic({"w": torch.ones(2)}, tmp_path / "sub" / "a.pt")
    assert torch.equal(load_checkpoint(path)["w"], torch.ones(2))
    assert sorted(p.name for p in path.parent.iterdir()) == ["a.pt"]  # no temporary file left behind
    module = nn.Sequential(*[nn.Linear(2, 2) for _ in range(12)])
    state = {f"{i}.weight": torch.zeros(2, 2) for i in range(12)}  # 12 biases missing
    state["0.weight"] = torch.zeros(3, 2)
    state["extra"] = torch.zeros(1)
    with pytest.raises(ValueError) as err:
        load_state_dict_strict(module, state, "x.pt", hint="try other flags")
    message = str(err.value)
    assert message.startswith("x.pt does not match") and message.endswith("; try other flags")
    assert "12 missing" in message and message.count(".bias'") == 10  # at most 10 keys listed
    assert "1 unexpected ['extra']" in message and "0.weight: file (3, 2) vs model (2, 2)" in message
