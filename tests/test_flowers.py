"""LDCE's Oxford Flowers-102 table (table10): the ``flowers102`` layout against torchvision's ``Flowers102`` on a
generated stand-in (``.mat`` label and split files written with scipy, as the official ones), LDCE's per-image Flowers
targets (``image_targets: ldce_flowers``) and its class names, whose keys start at 1. The stand-in JSON files have
upstream's format, not its content. The DINO classifier and its trained head: tests/test_dino_linear.py."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from cfx.data.layouts import DatasetLayoutError, build_layout_index
from tests.factories.datasets import CLOSEST, FLOWER_NAMES, LABELS, SETID, fake_flowers, write_flowers_resources

# ------------------------------------------------------------------------------------------------------ layout


def test_flowers_index_follows_torchvisions_splits(tmp_path, monkeypatch):
    from torchvision.datasets import Flowers102

    root = fake_flowers(tmp_path / "flowers")
    frame = build_layout_index("flowers102", root, tmp_path / "index.csv")
    written = pd.read_csv(tmp_path / "index.csv")
    assert list(written["image_id"]) == list(frame["image_id"])
    # torchvision checks the official files' md5, which the stand-ins cannot match; everything else is its own code
    monkeypatch.setattr(Flowers102, "_check_integrity", lambda self: True)
    for split, partition in (("train", 0), ("val", 1), ("test", 2)):
        reference = Flowers102(root, split=split, download=False)
        rows = written[written["partition"] == partition]
        assert [Path(p).name for p in rows["path"]] == [Path(p).name for p in reference._image_files]
        assert list(rows["label"]) == list(reference._labels)
    test = written[written["partition"] == 2]
    assert list(test["image_id"]) == [f"image_{n:05d}.jpg" for n in SETID["tstid"]]  # setid.mat's order
    assert list(test["label"]) == [LABELS[n - 1] - 1 for n in SETID["tstid"]] == [101, 2, 0, 101]
    # the flowers-102 folder itself is accepted as the root too
    again = build_layout_index("flowers102", root / "flowers-102", tmp_path / "again.csv")
    assert list(again["path"]) == list(frame["path"])


def test_flowers_images_read_as_ldce_stretches_them(tmp_path):
    from torchvision import transforms

    from cfx.data.index_dataset import IndexDataset

    root = fake_flowers(tmp_path / "flowers")
    build_layout_index("flowers102", root, tmp_path / "index.csv")
    dataset = IndexDataset(tmp_path / "index.csv", "flowers102", split="test", image_size=16)
    assert len(dataset) == len(SETID["tstid"])
    _, image, label = dataset[0]
    assert image.shape == (3, 16, 16) and int(label) == 101  # Resize((16, 16)), no crop
    source = Image.open(root / "flowers-102" / "jpg" / "image_00007.jpg").convert("RGB")
    expected = transforms.ToTensor()(transforms.Resize((16, 16))(source)) * 2 - 1
    assert torch.allclose(image, expected, atol=1e-6)


@pytest.mark.parametrize("missing", ["imagelabels.mat", "setid.mat", "jpg"])
def test_flowers_missing_files_say_what_to_download(tmp_path, missing):
    import shutil

    root = fake_flowers(tmp_path / "flowers")
    target = root / "flowers-102" / missing
    shutil.rmtree(target) if target.is_dir() else target.unlink()
    with pytest.raises(DatasetLayoutError, match="robots.ox.ac.uk/~vgg/data/flowers/102") as error:
        build_layout_index("flowers102", root, tmp_path / "index.csv", key="flowers102")
    assert missing in str(error.value) and "data_roots: {flowers102:" in str(error.value)


def test_flowers_bad_files_are_named(tmp_path):
    from scipy.io import savemat

    root = fake_flowers(tmp_path / "flowers")
    folder = root / "flowers-102"
    (folder / "jpg" / "image_00006.jpg").unlink()
    with pytest.raises(DatasetLayoutError, match="image_00006.jpg"):
        build_layout_index("flowers102", root, tmp_path / "index.csv")
    (folder / "setid.mat").write_bytes(b"not a mat file")
    with pytest.raises(DatasetLayoutError, match="setid.mat"):
        build_layout_index("flowers102", root, tmp_path / "index.csv")
    savemat(folder / "setid.mat", {"trnid": np.array([[1]]), "valid": np.array([[2]])})
    with pytest.raises(DatasetLayoutError, match="no 'tstid'"):
        build_layout_index("flowers102", root, tmp_path / "index.csv")
    savemat(folder / "setid.mat", {"trnid": np.array([[1]]), "valid": np.array([[2]]), "tstid": np.array([[40]])})
    with pytest.raises(DatasetLayoutError, match="lists image 40"):
        build_layout_index("flowers102", root, tmp_path / "index.csv")
    with pytest.raises(DatasetLayoutError, match="does not exist"):
        build_layout_index("flowers102", tmp_path / "nowhere", tmp_path / "index.csv")


# ----------------------------------------------------------------------------------------------------- targets


def test_flowers_targets_and_names_as_ldce_reads_them(tmp_path):
    from cfx.data.ldce_targets import (
        LDCE_FLOWERS_FILES,
        read_class_names,
        read_flowers_class_names,
        read_pets_class_names,
    )
    from cfx.generate import experiment_images, experiment_targets, ldce_conditioning

    closest_file, labels_file = write_flowers_resources(tmp_path / "res")
    # keys "1".."102" -> class indices 0..101 (scripts/ldce.py: {int(k) - 1: v})
    assert read_flowers_class_names(labels_file) == FLOWER_NAMES == read_class_names(labels_file)
    with pytest.raises(ValueError, match="keys must be 0..101"):
        read_pets_class_names(labels_file)  # the Pets reader wants keys from 0 and 37 names
    zero_based = tmp_path / "flowers_zero_based.json"
    zero_based.write_text(json.dumps({str(k): v for k, v in enumerate(FLOWER_NAMES)}))
    with pytest.raises(ValueError, match="keys must be 1..102"):
        read_flowers_class_names(zero_based)
    assert set(LDCE_FLOWERS_FILES) == {"flowers_closest_indices.json", "flowers_idx_to_label.json"}
    assert all("65195978cf84ac56a492fa4f93bc14e42d304cb3/data/" in url and len(sha) == 64
               for url, sha in LDCE_FLOWERS_FILES.values())

    root = fake_flowers(tmp_path / "flowers")
    index = build_layout_index("flowers102", root, tmp_path / "index.csv")
    experiment = {"dataset": "flowers102", "split": "test", "image_size": 32, "image_targets": "ldce_flowers"}
    image_ids = experiment_images(index, experiment)
    assert image_ids == [f"image_{n:05d}.jpg" for n in SETID["tstid"]]
    chunk = image_ids[::2]
    assert experiment_targets(index, experiment, chunk, closest_file) == {
        image_id: CLOSEST[2 * k][0] for k, image_id in enumerate(chunk)}
    short = tmp_path / "short.json"
    short.write_text(json.dumps({str(k): v for k, v in enumerate(CLOSEST[:-1])}))
    with pytest.raises(ValueError, match="Flowers-102 test split \\(6149 images\\)"):
        experiment_targets(index, experiment, chunk, short)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({str(k): [102] for k in range(len(CLOSEST))}))
    with pytest.raises(ValueError, match="class indices 0..101"):
        experiment_targets(index, experiment, chunk, bad)
    # LDCE-txt's prompts name each class by its Flowers name
    spec = {"class_prompt": "a photo of a {}, a type of flower.", "class_names": str(labels_file)}
    prompts = ldce_conditioning(spec, None, labels_file)
    assert len(prompts) == 102 and prompts[0] == "a photo of a pink primrose, a type of flower."
    assert prompts[101] == "a photo of a last flower, a type of flower."


# -------------------------------------------------------------------------------------------------- classifier


def _tiny_dino_files(tmp_path: Path, img: int = 32, num_classes: int = 102) -> tuple[Path, Path]:
    """A tiny DINO ViT (64 wide, 2 blocks, 8 px patches at ``img`` px) in the published key layout and a random head
    in LDCE's dino_flowers_linear.pth format."""
    from tests.factories.networks import dino_state

    backbone, head = tmp_path / "dino_vits8.pth", tmp_path / "dino_flowers_linear.pt"
    torch.save(dino_state(embed=64, depth=2, patch=8, img=img, seed=7), backbone)
    g = torch.Generator().manual_seed(8)
    torch.save({"linear.weight": 0.5 * torch.randn(num_classes, 64, generator=g),
                "linear.bias": 0.1 * torch.randn(num_classes, generator=g)}, head)
    return backbone, head


def _hand_dino_logits(backbone_file: Path, head_file: Path, images: torch.Tensor, crop: int) -> torch.Tensor:
    """[−1,1] → [0,1], centre crop by slicing, ImageNet mean/std, the final-norm CLS token, W·f + b."""
    from cfx.models.dino_linear import load_dino_backbone

    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    x01 = (images + 1) / 2
    top, left = (x01.shape[-2] - crop) // 2, (x01.shape[-1] - crop) // 2
    x01 = x01[..., top:top + crop, left:left + crop]
    head = torch.load(head_file, weights_only=True)
    with torch.no_grad():
        features = load_dino_backbone(backbone_file)((x01 - mean) / std)
    return features @ head["linear.weight"].T + head["linear.bias"]


def test_dino_linear_kind_loads_for_generation_and_cout(tmp_path):
    from cfx.metrics import NetworkRef
    from cfx.metrics.networks import load_classifier_logits
    from cfx.models.classifier_kinds import load_experiment_classifier

    backbone, head = _tiny_dino_files(tmp_path)
    spec = {"kind": "dino_linear", "backbone_weights": str(backbone), "n_last_blocks": 1, "num_classes": 102}
    experiment = {"image_targets": "ldce_flowers"}
    images = torch.rand(2, 3, 40, 40) * 2 - 1  # the classifier crops its backbone's input size (here 32, LDCE 224)
    expected = _hand_dino_logits(backbone, head, images, 32)
    classifier = load_experiment_classifier(spec, head, experiment)
    with torch.no_grad():
        assert torch.allclose(classifier(images), expected, atol=1e-5)
    ref = NetworkRef(role="classifier", name="dino_flowers_linear", path=head, spec=spec)
    assert torch.allclose(load_classifier_logits(ref, None)(images), expected, atol=1e-5)
    with pytest.raises(ValueError, match="multi-class"):
        load_experiment_classifier(spec, head, {"query_label": 31})
    with pytest.raises(ValueError, match="backbone_weights"):
        load_experiment_classifier({"kind": "dino_linear"}, head, experiment)
    with pytest.raises(ValueError, match=r"dino_flowers_linear\.pt"):  # a head for another class count
        load_experiment_classifier({**spec, "num_classes": 37}, head, experiment)


def test_train_model_trains_the_flowers_head_from_the_index(tmp_path):
    """The paper suite's train_model path (cfx.steps.train_from_spec, kind dino_linear) on the flowers102 index:
    the train partition trains, the val partition is scored, the head lands in LDCE's format next to its log."""
    from cfx.models.dino_linear import LinearHead
    from cfx.steps import train_from_spec
    from tests.factories.networks import dino_state

    root = fake_flowers(tmp_path / "flowers")
    index_csv = tmp_path / "index.csv"
    build_layout_index("flowers102", root, index_csv)
    backbone = tmp_path / "dino_vits8.pth"
    torch.save(dino_state(embed=64, depth=1, patch=16, img=224, seed=1), backbone)
    spec = {"kind": "dino_linear", "dataset": "flowers102", "image_size": 256, "backbone_weights": str(backbone),
            "n_last_blocks": 1, "num_classes": 102,
            "train": {"epochs": 2, "batch_size": 2, "base_lr": 0.008, "augment": False, "seed": 0}}
    out = tmp_path / "dino_flowers_linear.pt"
    log = train_from_spec(spec, index_csv=index_csv, out_path=out, device="cpu", threads=1)
    state = torch.load(out, weights_only=True)
    assert set(state) == {"linear.weight", "linear.bias"} and state["linear.weight"].shape == (102, 64)
    LinearHead(64, 102).load_state_dict(state, strict=True)
    assert (log["n_train_images"], log["n_val_images"]) == (len(SETID["trnid"]), len(SETID["valid"]))
    assert log["augment"] is False and len(log["history"]) == 2 and log["lr"] == pytest.approx(0.008 * 2 / 256)
    assert json.loads(out.with_suffix(".train.json").read_text())["epochs"] == 2
    with pytest.raises(ValueError, match="backbone_weights"):
        train_from_spec({**spec, "backbone_weights": None}, index_csv=index_csv, out_path=tmp_path / "x.pt")


# -------------------------------------------------------------------------------------------------- generation


def test_ldce_txt_chunk_prompts_each_flowers_target_by_name(tmp_path, monkeypatch):
    """LDCE-txt on the Flowers stand-in: each test image's target is its closest-class entry, the LDM is prompted "a
    photo of a {name}, a type of flower." with the target's name (flowers_idx_to_label.json's keys shifted by one),
    and the classifier's predictions are the DINO head's on the stretched 32² image. A tiny class-conditional LDM
    stands in for miniSD: a spy maps each prompt back to its class."""
    from cfx.data.index_dataset import IndexDataset
    from cfx.generate import generate_chunk
    from cfx.models.ldm import build_ldm, save_ldm_checkpoint
    from tests.factories.networks import spy_on_prompts, tiny_class_ldm_config

    root = fake_flowers(tmp_path / "flowers")
    index_csv = tmp_path / "index.csv"
    build_layout_index("flowers102", root, index_csv)
    closest_file, labels_file = write_flowers_resources(tmp_path / "res")
    backbone, head = _tiny_dino_files(tmp_path)
    config = tiny_class_ldm_config()
    torch.manual_seed(0)
    save_ldm_checkpoint(build_ldm(config), tmp_path / "ldm.ckpt")
    prefix, suffix = "a photo of a ", ", a type of flower."
    prompted = spy_on_prompts(monkeypatch, FLOWER_NAMES, prefix, suffix)
    experiment = {"dataset": "flowers102", "split": "test", "image_size": 32, "image_targets": "ldce_flowers",
                  "classifier": "dino"}
    spec = {"batch_size": 2, "ldm": "ldm", "class_prompt": prefix + "{}" + suffix, "class_names": str(labels_file),
            "config": {"ddim_steps": 50, "strength": 0.06}}
    dino_spec = {"kind": "dino_linear", "backbone_weights": str(backbone), "num_classes": 102}
    tree = tmp_path / "cf"
    manifest = generate_chunk(
        experiment=experiment, method="ldce_txt", method_spec=spec,
        model_specs={"ldm": {"config": config}, "dino": dino_spec}, index_csv=index_csv,
        checkpoints={"classifier": head, "ldm": tmp_path / "ldm.ckpt", "class_names": labels_file},
        chunk=0, chunks=1, seed=4, tree_root=tree, manifest_path=tree / "chunks" / "ldce_txt" / "0-of-1.json",
        device="cpu", progress=False, layout="flowers102", targets_file=closest_file)
    records = manifest["records"]
    assert manifest["n"] == len(SETID["tstid"])
    assert [r["target"] for r in records] == [c[0] for c in CLOSEST]
    assert [r["label"] for r in records] == [LABELS[n - 1] - 1 for n in SETID["tstid"]]
    assert prompted == [[f"{prefix}{FLOWER_NAMES[c[0]]}{suffix}" for c in CLOSEST[k:k + 2]] for k in (0, 2)]
    dataset = IndexDataset(index_csv, "flowers102", split="test", image_size=32)
    images = torch.stack([dataset[k][1] for k in range(len(dataset))])
    assert [r["pred"] for r in records] == _hand_dino_logits(backbone, head, images, 32).argmax(1).tolist()
    assert Image.open(next(tree.glob("Results/ldce_txt/*/*/CF/0000000.png"))).size == (32, 32)


# ---------------------------------------------------------------------------------------------------- workflow


def test_workflow_trains_the_flowers_head_on_a_placed_backbone(tmp_path):
    """Snakemake (not a dry-run) builds the Flowers head of the paper suite: the flowers102 index of a stand-in
    root, the hand-placed DINO backbone verified (trust on first use: its sha256 recorded), train_model on the train
    split with the suite's recipe (epochs shortened here), the head in LDCE's format next to its log."""
    import hashlib

    import yaml

    from cfx.models.dino_linear import load_linear_head
    from tests.factories.networks import dino_state
    from tests.factories.workflow import copy_workflow, snakemake

    wf = copy_workflow(tmp_path)
    suite_file = wf / "workflow" / "suites" / "paper.yaml"
    suite = yaml.safe_load(suite_file.read_text())
    recipe = suite["models"]["dino_flowers_linear"]["train"]
    assert recipe == {"epochs": 30, "batch_size": 32, "base_lr": 0.008, "augment": False, "seed": 0}
    recipe.update(epochs=2, batch_size=2)
    suite_file.write_text(yaml.safe_dump(suite, sort_keys=False))
    backbone = wf / "resources" / "checkpoints" / "dino_vits8.pth"
    backbone.parent.mkdir(parents=True, exist_ok=True)
    torch.save(dino_state(embed=64, depth=1, patch=16, img=224, seed=3), backbone)
    root = fake_flowers(tmp_path / "flowers")
    result = snakemake(["--cores", "1", "--config", "suite=paper", "device=cpu", f"data_roots={{flowers102: {root}}}",
                        "--", "resources/checkpoints/dino_flowers_linear.pt"], wf)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    assert "download_checkpoint" not in result.stdout + result.stderr  # placed by hand: never downloaded
    lock = yaml.safe_load((wf / "resources" / "checkpoints" / "sha256.lock.yaml").read_text())["checkpoints"]
    assert lock["dino_vits8"]["sha256"] == hashlib.sha256(backbone.read_bytes()).hexdigest()
    head = wf / "resources" / "checkpoints" / "dino_flowers_linear.pt"
    assert load_linear_head(head, 64, 102).linear.weight.shape == (102, 64)
    log = json.loads(head.with_suffix(".train.json").read_text())
    assert (log["epochs"], log["batch_size"], log["augment"]) == (2, 2, False)
    assert (log["n_train_images"], log["n_val_images"]) == (len(SETID["trnid"]), len(SETID["valid"]))
    assert (wf / "logs" / "train" / "dino_flowers_linear.log").exists()
