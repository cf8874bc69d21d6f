"""STEEX's decision classifier (the CelebA-HQ classifier of ACE, LDCE and GCD): the published ``checkpoint.tar``
layout (random weights, tests/published_formats.py) loads strictly, the CelebA query label selects its output
(20/31/39 → 0/1/2), and generation, GCD and COUT load it through the suite kind ``steex_classifier``."""

import json

import pytest
import torch
import torchvision

from cfx.metrics import NetworkRef
from cfx.metrics.networks import load_classifier_logits
from cfx.models.classifier_kinds import load_query_classifier
from cfx.models.steex import load_steex_classifier, steex_output_index
from tests.published_formats import steex_decision_densenet_shapes, write_steex_decision_checkpoint

STEEX = {"kind": "steex_classifier", "dataset": "celebahq", "image_size": 256}


@pytest.fixture(scope="module")
def steex_tar(tmp_path_factory):
    path = tmp_path_factory.mktemp("steex") / "celebamaskhq" / "checkpoint.tar"
    state = write_steex_decision_checkpoint(path, num_classes=3, seed=3)
    return path, state


def _upstream_decision_model(state: dict) -> torch.nn.Module:
    """STEEX's DecisionDensenetModel rebuilt from torchvision directly (densenet121 with an Identity head, then the
    Linear head), as ACE/LDCE run it: [0,1] images through Normalize(0.5, 0.5)."""
    trunk = torchvision.models.densenet121(weights=None)
    trunk.classifier = torch.nn.Identity()
    trunk.load_state_dict({k.removeprefix("feat_extract.feat_extract."): v for k, v in state.items()
                           if k.startswith("feat_extract.")}, strict=True)
    head = torch.nn.Linear(1024, 3)
    head.load_state_dict({"weight": state["classifier.weight"], "bias": state["classifier.bias"]})
    return torch.nn.Sequential(torchvision.transforms.Normalize([0.5] * 3, [0.5] * 3), trunk, head).eval()


def test_published_layout_loads_strictly_and_matches_upstream_normalisation(steex_tar):
    path, state = steex_tar
    assert set(state) == set(steex_decision_densenet_shapes(3))
    model = load_steex_classifier(path)
    assert not model.training and model.classifier.out_features == 3
    loaded = model.state_dict()
    assert set(loaded) == set(state) and all(torch.equal(loaded[k], state[k]) for k in state)
    x01 = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours = model(x01 * 2 - 1)  # cfx feeds [-1,1]
        upstream = _upstream_decision_model(state)(x01)  # ACE/LDCE: Normalizer(0.5, 0.5) on [0,1]
    assert ours.shape == (2, 3) and torch.isfinite(ours).all()
    torch.testing.assert_close(ours, upstream, rtol=1e-4, atol=1e-4)


def test_query_label_selects_the_steex_output(steex_tar):
    path, _ = steex_tar
    assert [steex_output_index(q, 3, path) for q in (20, 31, 39)] == [0, 1, 2]
    classifier = load_query_classifier(STEEX, path, 39)
    assert classifier.query_label == 2
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(1)) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(classifier(x), classifier.model(x)[:, 2])
        logit, logits = classifier(x, get_other_attrs=True)
    assert logits.shape == (2, 3) and torch.equal(logit, logits[:, 2])


def test_unsupported_query_is_an_error_naming_label_and_file(steex_tar):
    path, _ = steex_tar
    with pytest.raises(ValueError, match=r"query label 15 .*checkpoint\.tar.*20 \(Male\).*31 \(Smiling\).*"
                                         r"39 \(Young\)"):
        load_query_classifier(STEEX, path, 15)
    with pytest.raises(ValueError, match=r"query label 4 .*bdd\.tar \(4 outputs"):
        steex_output_index(4, 4, "bdd.tar")
    assert steex_output_index(1, 4, "bdd.tar") == 1  # BDD: the query is the action index


def test_key_mismatch_or_wrong_format_is_an_error_naming_the_file(tmp_path, steex_tar):
    _, state = steex_tar
    renamed = {k.replace("feat_extract.feat_extract.", "feat_extract.", 1): v for k, v in state.items()}
    path = tmp_path / "renamed.tar"
    write_steex_decision_checkpoint(path, state=renamed)
    with pytest.raises(ValueError, match=r"renamed\.tar \[model_state_dict\] does not match.*"
                                         r"feat_extract\.feat_extract\.features"):
        load_steex_classifier(path)
    missing = {k: v for k, v in state.items() if k != "feat_extract.feat_extract.features.norm5.running_var"}
    path = tmp_path / "missing.tar"
    write_steex_decision_checkpoint(path, state=missing)
    with pytest.raises(ValueError, match=r"missing\.tar.*1 missing.*norm5\.running_var"):
        load_steex_classifier(path)
    torch.save({"feat_extract": {}, "classifier": {}}, tmp_path / "dime.pth")
    with pytest.raises(ValueError, match=r"dime\.pth is not a STEEX decision classifier.*model_state_dict"):
        load_steex_classifier(tmp_path / "dime.pth")
    with pytest.raises(ValueError, match=r"kind 'oracle' is not a classifier"):
        load_query_classifier({"kind": "oracle"}, tmp_path / "dime.pth", 31)


def test_generation_and_cout_load_it_by_suite_kind(steex_tar):
    from cfx.generate import load_generation_models

    path, _ = steex_tar
    experiment = {"dataset": "celebahq", "split": "test", "image_size": 256, "query_label": 39,
                  "classifier": "steex_celebahq_classifier"}
    models = load_generation_models(method_spec={"config": {}}, experiment=experiment,
                                    model_specs={"steex_celebahq_classifier": STEEX},
                                    checkpoints={"classifier": path}, device=torch.device("cpu"), method="svce")
    classifier = models["classifier"]
    assert classifier.query_label == 2
    assert not any(p.requires_grad for p in classifier.parameters())
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(2)) * 2 - 1
    with torch.no_grad():
        expected = classifier.model(x)[:, 2]
        torch.testing.assert_close(classifier(x), expected)
        cout = load_classifier_logits(NetworkRef("classifier", "steex_celebahq_classifier", path, STEEX), 39)
        torch.testing.assert_close(cout(x), expected)


def test_gcd_direction_search_uses_the_mapped_output(tmp_path, steex_tar):
    """GCD's proxy predicts the 3 STEEX logits and the direction's query is output 2 (Young), not 39."""
    from cfx.data.celeba import build_index
    from cfx.data.synthetic import write_synthetic_celeba
    from cfx.methods.gcd import load_direction
    from cfx.models.diffae import create_diffae, lightning_checkpoint
    from cfx.steps import gcd_direction
    from tests.factories.networks import DAE_FLAGS, GCD

    path, _ = steex_tar
    data = write_synthetic_celeba(tmp_path / "data", n_identities=4, images_per_identity=2, image_size=32, seed=0,
                                  progress=False)
    build_index(data, tmp_path / "index.csv")
    torch.manual_seed(0)
    dae = create_diffae(None, **DAE_FLAGS)
    with torch.no_grad():
        for p in dae.parameters():
            p.normal_(0, 0.05)
    torch.save(lightning_checkpoint(dae), tmp_path / "tiny_dae.ckpt")
    experiment = {"dataset": "d", "split": "train", "image_size": 32, "query_label": 39, "classifier": "steex",
                  "max_images": 1}
    spec = {**GCD, "config": {**GCD["config"], "n_iters": 1}}
    record = gcd_direction(experiment=experiment, method_spec=spec,
                           model_specs={"steex": STEEX, "tiny_dae": {"kind": "diffae", "flags": DAE_FLAGS}},
                           index_csv=tmp_path / "index.csv",
                           checkpoints={"classifier": path, "diffae": tmp_path / "tiny_dae.ckpt"},
                           out_path=tmp_path / "gcd" / "direction.pt", seed=0, device="cpu", threads=1)
    assert load_direction(tmp_path / "gcd" / "direction.pt").query == 2
    assert json.loads((tmp_path / "gcd" / "search.json").read_text())["chosen"]["query"] == 2
    assert record["n_directions"] == 3
