"""SVCE through the common machinery: chunk generation with one result folder per radius, resume, merge, figure,
and the adversarially trained classifier it explains in the mini suite."""

import json

import pytest
import torch

from cfx.data.celeba import build_index
from cfx.data.synthetic import write_synthetic_celeba
from cfx.figures import svce_figure
from cfx.generate import generate_chunk
from cfx.io.tree import OutputTree, read_info
from cfx.merge import merge_chunks
from cfx.models.classifier import DenseNetClassifier, load_celeba_classifier, save_celeba_classifier
from cfx.train import load_split, pgd_l2, train_robust_classifier

ARCH = dict(growth_rate=8, block_config=[1, 1], num_init_features=16)
SVCE = {"classifier": "tiny_robust", "batch_size": 3,
        "config": {"radii": [50, 100], "radii_reference_size": 224, "n_iter": 6}}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("svce")
    data = write_synthetic_celeba(root / "data", n_identities=30, images_per_identity=3, image_size=32, seed=0,
                                  progress=False)
    build_index(data, root / "index.csv")
    torch.manual_seed(0)
    save_celeba_classifier(DenseNetClassifier(**ARCH), root / "tiny_robust.pt")
    return root


def _chunk(setup, tree, chunk, chunks=2):
    experiment = {"dataset": "d", "split": "val", "image_size": 32, "query_label": 31, "classifier": "plain",
                  "ddpm": "no_such_ddpm", "max_images": 5}
    return generate_chunk(experiment=experiment, method="svce", method_spec=SVCE,
                          model_specs={"tiny_robust": {"kind": "robust_classifier", "arch": ARCH}},
                          index_csv=setup / "index.csv", checkpoints={"classifier": setup / "tiny_robust.pt"},
                          chunk=chunk, chunks=chunks, seed=4, tree_root=tree,
                          manifest_path=tree / "chunks" / "svce" / f"{chunk}-of-{chunks}.json", device="cpu",
                          threads=1, progress=False)


def test_chunks_write_every_radius_with_confidences_resume_and_merge(setup):
    tree = setup / "tree"
    manifests = [_chunk(setup, tree, c) for c in range(2)]  # the experiment's DDPM is neither needed nor loaded
    main = OutputTree(tree, "svce", ext="png", info_format="svce")
    other = OutputTree(tree, "svce/radius_50", ext="png", info_format="svce")
    assert main.completed_stems() == other.completed_stems() == {str(i).zfill(7) for i in range(5)}
    info = read_info(main.info_path("0000000"))
    assert info["radius"] == 100 and info["eps"] == pytest.approx(100 * (1024 / 50176) ** (2 / 3))
    assert 0 <= info["p_target"] <= 1 and info["bkl"] == pytest.approx(1 - info["p_target"], abs=1e-6)
    assert info["l_p"] <= info["eps"] * (1 + 1e-4)
    assert read_info(other.info_path("0000000"))["radius"] == 50
    records = manifests[0]["records"] + manifests[1]["records"]
    assert {r["stem"] for r in records} == {str(i).zfill(7) for i in range(5)}
    assert all("p_target_original" in r for r in records)
    assert len(manifests[0]["variants"]["radius_50"]) == len(manifests[0]["records"])

    # a job killed between the radius_50 image and the main Info file: only that image is redone, identically
    victim = main.info_path("0000002")
    victim.unlink()
    rerun = _chunk(setup, tree, 0)
    assert rerun["generated_now"] == 1
    before = manifests[0]["records"] + manifests[0]["variants"]["radius_50"]
    after = rerun["records"] + rerun["variants"]["radius_50"]
    for old, new in zip(before, after, strict=True):  # same up to float rounding (a batch of 1 instead of 3)
        assert {k: old[k] for k in ("stem", "label", "pred", "target", "cf_pred", "radius")} == {
            k: new[k] for k in ("stem", "label", "pred", "target", "cf_pred", "radius")}
        assert new["p_target"] == pytest.approx(old["p_target"], abs=1e-4)
        assert new["l_p"] == pytest.approx(old["l_p"], rel=1e-3)

    merged = merge_chunks([tree / "chunks" / "svce" / f"{c}-of-2.json" for c in range(2)], tree_root=tree,
                          method="svce", out_path=tree / "svce.merged.json")
    assert merged["n"] == 5 and set(merged["variants"]) == {"radius_50"}
    assert merged["variants"]["radius_50"]["n"] == 5
    assert (tree / "Results/svce/summary.yaml").exists() and (tree / "Results/svce/radius_50/summary.yaml").exists()
    figure = svce_figure(tree, setup / "svce.png", n_images=3, class_names=["not Smiling", "Smiling"])
    assert figure.stat().st_size > 1000


def test_pgd_l2_stays_in_the_ball_and_the_box_and_raises_the_loss(setup):
    torch.manual_seed(0)
    model = DenseNetClassifier(**ARCH).eval()
    images, attrs = load_split(setup / "data", "val", 32)
    x, y = images[:6], attrs[:6]
    adv = pgd_l2(model, x, y, eps=0.5, steps=3)
    assert torch.all(((adv - x) / 2).flatten(1).norm(dim=1) <= 0.5 + 1e-5)  # eps in [0,1] units
    assert torch.all(adv >= -1) and torch.all(adv <= 1)
    bce = torch.nn.functional.binary_cross_entropy_with_logits
    with torch.no_grad():
        assert bce(model(adv), y) > bce(model(x), y)


def test_robust_classifier_fine_tunes_from_its_init_and_logs_robust_accuracy(setup, tmp_path):
    log = train_robust_classifier(setup / "data", tmp_path / "robust.pt", arch=ARCH, steps=2, batch_size=8, lr=1e-3,
                                  adversarial={"eps": 0.5, "steps": 1}, image_size=32,
                                  init_checkpoint=setup / "tiny_robust.pt", device="cpu")
    assert json.loads((tmp_path / "robust.train.json").read_text()) == log
    assert log["kind"] == "robust_classifier" and log["init"].endswith("tiny_robust.pt")
    assert log["adversarial"] == {"eps": 0.5, "steps": 1, "clean_steps": 0, "norm": 2}
    assert 0 <= log["val_robust_accuracy_Smiling"] <= 1
    model = load_celeba_classifier(tmp_path / "robust.pt", **ARCH)  # DiME's format: every loader reads it
    start = load_celeba_classifier(setup / "tiny_robust.pt", **ARCH)
    moved = [not torch.equal(a, b) for a, b in zip(model.state_dict().values(), start.state_dict().values(),
                                                     strict=True)]
    assert any(moved)
    with pytest.raises(ValueError, match="adversarial"):
        train_robust_classifier(setup / "data", tmp_path / "x.pt", arch=ARCH, steps=1, batch_size=4, lr=1e-3,
                                adversarial={}, image_size=32, device="cpu")
