"""BDD-OIA (ACE's ``BDDOIADataset``, from STEEX; docs/upstream/dime_ace.md §3.3): a generated stand-in of the lastframe
release (``val_25k_images_actions.json``, ``val_25k_images_reasons.json``, ``data/``) is indexed in upstream's order
and filter, read at 256x512 (bicubic, no crop) with the queried action as label, generation explains output
``query`` of a 4-output STEEX classifier (target = 1 - prediction), and a missing file says what to download."""

import json
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from PIL import Image

from cfx.data.index_dataset import IndexDataset
from cfx.data.layouts import BDD_OIA_ACTIONS, DatasetLayoutError, build_layout_index, image_shape
from cfx.suite import SuiteError, load_suite, method_settings
from tests.factories.datasets import IMAGES, SIZES, fake_bdd_oia
from tests.factories.networks import BDD_FLAGS, DIFFUSION, save_unet, to_tensor
from tests.published_formats import write_steex_decision_checkpoint

ROOT = Path(__file__).resolve().parent.parent
PAPER = ROOT / "workflow" / "suites" / "paper.yaml"


# ------------------------------------------------------------------------------------------------------- the index


def test_index_is_upstreams_filter_and_order(tmp_path, caplog):
    root = fake_bdd_oia(tmp_path / "oia")
    frame = build_layout_index("bdd_oia", root, tmp_path / "index.csv")
    written = pd.read_csv(tmp_path / "index.csv", dtype={"image_id": str})
    assert list(written.columns) == ["image_id", "path", "partition", *BDD_OIA_ACTIONS]
    assert list(BDD_OIA_ACTIONS) == ["forward", "stop", "left", "right"]
    # sorted by file name; c.jpg (5th label 1) dropped, e.jpg (not on disk) skipped as upstream's os.path.isfile
    assert list(written["image_id"]) == ["a.jpg", "b.jpg", "d.jpg"]
    categories = dict(IMAGES)
    for row in written.itertuples():
        assert [getattr(row, a) for a in BDD_OIA_ACTIONS] == categories[row.image_id][:4]
        assert Path(row.path).is_absolute() and Path(row.path) == (root / "data" / row.image_id).resolve()
    assert set(written["partition"]) == {1} and frame.shape == written.shape
    assert "e.jpg" in caplog.text and "1 of the images listed" in caplog.text


@pytest.mark.parametrize("name", ["val_25k_images_actions.json", "val_25k_images_reasons.json", "data"])
def test_missing_file_names_it_and_what_to_download(tmp_path, name):
    root = fake_bdd_oia(tmp_path / "oia")
    target = root / name
    if target.is_dir():
        for image in target.iterdir():
            image.unlink()
        target.rmdir()
    else:
        target.unlink()
    with pytest.raises(DatasetLayoutError, match=name) as error:
        build_layout_index("bdd_oia", root, tmp_path / "index.csv", key="oia")
    message = str(error.value)
    assert "github.com/Twizwei/bddoia_project" in message and "data_roots: {oia:" in message
    assert not (tmp_path / "index.csv").exists()
    with pytest.raises(DatasetLayoutError, match="bddoia_project"):
        build_layout_index("bdd_oia", tmp_path / "nowhere", tmp_path / "index.csv")


def test_wrong_formats_are_errors_naming_the_file(tmp_path):
    root = fake_bdd_oia(tmp_path / "oia")
    actions = root / "val_25k_images_actions.json"
    good = json.loads(actions.read_text())
    for broken, match in (({"images": good["images"]}, "'annotations'"),
                          ({**good, "annotations": good["annotations"][:2]}, "id 3"),
                          ({**good, "annotations": [{"category": [1, 0]}] * 5}, "at least 4 values")):
        actions.write_text(json.dumps(broken))
        with pytest.raises(DatasetLayoutError, match=match):
            build_layout_index("bdd_oia", root, tmp_path / "index.csv")
    actions.write_text("{not json")
    with pytest.raises(DatasetLayoutError, match="val_25k_images_actions.json is not JSON"):
        build_layout_index("bdd_oia", root, tmp_path / "index.csv")
    actions.write_text(json.dumps(good))
    for name in SIZES:
        (root / "data" / name).unlink()
    with pytest.raises(DatasetLayoutError, match="none of the val images"):
        build_layout_index("bdd_oia", root, tmp_path / "index.csv")


# ----------------------------------------------------------------------------------------------------- the dataset


def test_label_is_the_queried_action_and_images_bicubic_256x512(tmp_path):
    root = fake_bdd_oia(tmp_path / "oia")
    build_layout_index("bdd_oia", root, tmp_path / "index.csv")
    categories = dict(IMAGES)
    assert image_shape("bdd_oia", 256) == (256, 512) and image_shape("bdd_oia", [8, 20]) == (8, 20)
    for size in ([256, 512], 256):  # [H, W] as the paper suite states it; ACE's --image_size 256 = 256x512
        dataset = IndexDataset(tmp_path / "index.csv", "bdd_oia", split="val", image_size=size, query_label=0)
        assert len(dataset) == 3
        for k, name in enumerate(["a.jpg", "b.jpg", "d.jpg"]):
            position, image, label = dataset[k]
            with Image.open(root / "data" / name) as raw:
                expected = to_tensor(raw.convert("RGB").resize((512, 256), Image.BICUBIC))  # no crop
            assert position == k and image.shape == (3, 256, 512)
            torch.testing.assert_close(image, expected, atol=1e-6, rtol=0)
            assert label.dtype == torch.long and int(label) == categories[name][0]
    for query in range(4):  # upstream's target[query] of target[0:4]
        dataset = IndexDataset(tmp_path / "index.csv", "bdd_oia", image_size=[4, 8], query_label=query)
        assert [int(dataset[k][2]) for k in range(3)] == [categories[n][query] for n in ("a.jpg", "b.jpg", "d.jpg")]
    everything = IndexDataset(tmp_path / "index.csv", "bdd_oia", image_size=[4, 8])[1][2]
    assert everything.dtype == torch.float32 and everything.tolist() == [0, 1, 0, 1]  # b.jpg, no query: all four
    unnormalized = IndexDataset(tmp_path / "index.csv", "bdd_oia", image_size=[8, 16], normalize=False)[0][1]
    assert unnormalized.shape == (3, 8, 16) and unnormalized.min() >= 0  # ACE's normalize=False: [0,1]
    with pytest.raises(ValueError, match="query label 4 is not a BDD-OIA action"):
        IndexDataset(tmp_path / "index.csv", "bdd_oia", image_size=8, query_label=4)
    bdd100k_index = pd.DataFrame({"image_id": ["a.jpg"], "path": ["x"], "partition": [1], "label": [1]})
    with pytest.raises(ValueError, match="lacks the columns"):
        IndexDataset(bdd100k_index, "bdd_oia", image_size=8, query_label=0)


# ------------------------------------------------------------------------------------------------------ generation


def test_ace_explains_the_queried_steex_output(tmp_path):
    """ACE on a BDD-OIA root through generate_chunk: the label is the queried action, the classifier is STEEX's
    4-output checkpoint read at output ``query``, and the target is 1 - its prediction (binary, §2.6)."""
    from cfx.generate import generate_chunk
    from cfx.models.classifier_kinds import load_query_classifier

    root = fake_bdd_oia(tmp_path / "oia")
    build_layout_index("bdd_oia", root, tmp_path / "index.csv")
    save_unet(BDD_FLAGS, tmp_path / "ddpm.pt")
    write_steex_decision_checkpoint(tmp_path / "bdd" / "checkpoint.tar", num_classes=4, seed=1)
    clf = {"kind": "steex_classifier", "dataset": "bdd_oia", "image_size": 256}
    experiment = {"dataset": "bdd_oia", "split": "val", "image_size": [32, 64], "query_label": 1, "classifier": "clf",
                  "ddpm": "ddpm", "max_images": 2}
    spec = {"timestep_respacing": "20", "batch_size": 2,
            "config": {"attack_iterations": 1, "attack_step": 2.5, "dist_l1": 0.001, "sampling_time_fraction": 0.1}}
    manifest = generate_chunk(
        experiment=experiment, method="ace", method_spec=spec,
        model_specs={"ddpm": {"flags": BDD_FLAGS, "diffusion": DIFFUSION}, "clf": clf},
        index_csv=tmp_path / "index.csv",
        checkpoints={"classifier": tmp_path / "bdd" / "checkpoint.tar", "ddpm": tmp_path / "ddpm.pt"},
        chunk=0, chunks=1, seed=4, tree_root=tmp_path / "cf", manifest_path=tmp_path / "cf" / "0-of-1.json",
        device="cpu", progress=False, layout="bdd_oia")
    assert manifest["n"] == 2 and [r["image_id"] for r in manifest["records"]] == ["a.jpg", "b.jpg"]
    classifier = load_query_classifier(clf, tmp_path / "bdd" / "checkpoint.tar", 1)
    assert classifier.query_label == 1
    images = IndexDataset(tmp_path / "index.csv", "bdd_oia", image_size=[32, 64], query_label=1)
    for k, record in enumerate(manifest["records"]):
        _, image, label = images[k]
        with torch.no_grad():
            pred = int(classifier(image[None]).item() > 0)
        assert record["label"] == int(label) == dict(IMAGES)[record["image_id"]][1]
        assert record["pred"] == pred and record["target"] == 1 - pred
    assert Image.open(next((tmp_path / "cf").glob("Original/*/0000000.png"))).size == (64, 32)


# ----------------------------------------------------------------------------------------------------- paper suite


def test_paper_suite_bdd_oia_experiment_and_table5():
    suite = load_suite(PAPER)
    assert suite["datasets"]["bdd_oia"] == {"layout": "bdd_oia"}
    experiment = suite["experiments"]["bdd_oia_forward"]
    assert experiment == {"dataset": "bdd_oia", "split": "val", "image_size": [256, 512], "query_label": 0,
                          "classifier": "steex_bdd_classifier", "ddpm": "ace_bdd_ddpm", "methods": ["ace"]}
    # no BDD-OIA script upstream: BDD-attack.sh's settings, the same as on BDD100k
    ace = method_settings(suite, "ace", "bdd_oia_forward")
    assert ace == method_settings(suite, "ace", "bdd100k_forward")
    assert (ace["timestep_respacing"], ace["batch_size"], ace["postprocess"]["sampling_inpaint"]) == ("100", 1, 0.05)
    table = suite["tables"]["table5"]
    assert table["tasks"] == {"forward": "bdd_oia_forward"} and table["methods"] == ["ace"]
    assert table["metrics"] == suite["tables"]["table2"]["metrics"] == ["fid", "sfid", "cout", "flip_rate"]
    fid = table["published"]["forward"]["ace"]["fid"]
    assert fid["value"] == 2.09 and "docs/upstream/dime_ace.md §6.2" in fid["source"] and "unverified" in fid["source"]
    assert "BDD-OIA" in table["title"] and "ACE" in table["paper"]


def test_suite_rejects_a_query_that_is_not_an_action(tmp_path):
    suite = yaml.safe_load(PAPER.read_text())
    suite["experiments"]["bdd_oia_forward"]["query_label"] = 31
    (tmp_path / "suite.yaml").write_text(yaml.safe_dump(suite, allow_unicode=True))
    with pytest.raises(SuiteError, match="bdd_oia_forward.*query_label 31 is not a BDD-OIA action"):
        load_suite(tmp_path / "suite.yaml")
