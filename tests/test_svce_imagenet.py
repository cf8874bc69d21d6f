"""SVCE's ImageNet run (experiment imagenet_svce, image_targets: svce_clusters): upstream's class order within a
cluster (a Python set of class numbers), its seeded image draw and one instance per (image, cluster class), checked
against a re-run of upstream's loop with the global torch generator; a generation chunk on a random Madry + FT
ResNet-50 that writes every instance at every radius; the workflow plans it and its figure."""

import json
import random
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from cfx.data.wordnet import WordNetHierarchy, cluster_targets, upstream_class_order, wordnet_clusters
from tests.factories.datasets import IS_A

# the small hierarchy's ten ImageNet classes under class numbers of which some exceed the set's hash table (32
# slots), so upstream's set order is not ascending, and no two share a slot, so it does not depend on the insertion
# order either (root's ten classes: 0, 33, 2, 4, 6, 7, 8, 9, 44, 45)
NUMBERS = {"c0": 45, "c1": 0, "c2": 9, "c3": 33, "c4": 8, "c5": 2, "c6": 7, "c7": 44, "c8": 6, "c9": 4}
PER_CLASS_IMAGES = 3


def write_hierarchy(folder: Path) -> Path:
    """The IN_info files of tests/test_svce_resources.py's hierarchy (upstream's formats) with NUMBERS."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "wordnet.is_a.txt").write_text(IS_A)
    (folder / "words.txt").write_text("".join(f"{w}\tname of {w}\n" for w in sorted(set(IS_A.split()))))
    index = {str(num): [wnid, f"label_{wnid}"] for wnid, num in NUMBERS.items()}
    (folder / "imagenet_class_index.json").write_text(json.dumps(index))
    return folder


def write_index(folder: Path) -> Path:
    """A val index of PER_CLASS_IMAGES small JPEGs per class, listed by val number (not ImageFolder order)."""
    rows, number = [], 0
    for label in sorted(NUMBERS.values(), reverse=True):
        for _ in range(PER_CLASS_IMAGES):
            number += 1
            name = f"ILSVRC2012_val_{(number * 7919) % 10007:08d}.JPEG"
            path = folder / f"n{label:08d}" / name
            path.parent.mkdir(parents=True, exist_ok=True)
            pixels = np.random.default_rng(number).integers(0, 256, (20, 24, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(path, quality=95)
            rows.append({"image_id": name, "path": str(path), "partition": 1, "label": label,
                         "wnid": f"n{label:08d}"})
    frame = pd.DataFrame(rows).sort_values("image_id")  # the index's own order: by val number
    frame.to_csv(folder / "index.csv", index=False)
    return folder / "index.csv"


@pytest.fixture
def no_sha256_check(monkeypatch):
    """The stand-in hierarchy cannot match the pinned sha256 of SVCE's files."""
    monkeypatch.setattr("cfx.data.wordnet.verify_hierarchy", lambda folder: Path(folder))


def test_class_order_is_cpythons_set_order():
    # small tables: slot = value mod 8 (3-4 classes) or mod 32 (5-10 classes), the next free slot on a collision
    assert upstream_class_order([10, 40, 3]) == [40, 10, 3]
    assert upstream_class_order(list(NUMBERS.values())) == [0, 33, 2, 4, 6, 7, 8, 9, 44, 45]
    assert upstream_class_order([45, 0, 9, 33, 8, 2, 7, 40, 6, 4])[6:9] == [8, 9, 40]  # 40 collides with 8
    # without two classes in one slot the order does not depend on the insertion order (upstream's is hash-random)
    classes = [851, 3, 77, 250, 12, 999, 468]
    for seed in range(5):
        shuffled = random.Random(seed).sample(classes, len(classes))
        assert upstream_class_order(classes) == list(set(shuffled))


def test_instances_follow_upstreams_loop(tmp_path, no_sha256_check):
    """svce_cluster_items against imagenet_visual_transfer_hierachy.py's loop run here: torch.manual_seed(0), then
    per cluster and class (set order) torch.randperm over the class's images in ImageFolder order."""
    from cfx.generate import experiment_items

    hierarchy = write_hierarchy(tmp_path / "IN_info")
    index_csv = write_index(tmp_path / "val")
    index = pd.read_csv(index_csv, dtype={"image_id": str})
    experiment = {"dataset": "imagenet", "split": "val", "image_size": 32, "image_targets": "svce_clusters",
                  "samples_per_class": 2}
    image_ids, targets = experiment_items(index, experiment, targets_file=hierarchy / "imagenet_class_index.json")

    folder_order = index.sort_values(["wnid", "image_id"]).reset_index(drop=True)  # ImageFolder's
    in_targets = torch.LongTensor(list(folder_order["label"]))
    clusters = wordnet_clusters(WordNetHierarchy.from_folder(hierarchy, verify=False))
    assert [c.wnid for c in clusters] == ["root"]  # 10 classes: one cluster of 3-10
    torch.manual_seed(0)
    expected = []
    for cluster in clusters:
        subclasses = set(random.Random(1).sample(list(cluster.classes), len(cluster.classes)))
        for class_idx in subclasses:
            idcs = torch.nonzero(in_targets == class_idx, as_tuple=False).squeeze()
            chosen = idcs[torch.randperm(len(idcs))][:2]
            for img_idx in chosen.tolist():
                expected += [(folder_order["image_id"][img_idx], t) for t in subclasses]
    assert list(zip(image_ids, targets, strict=True)) == expected
    assert len(expected) == 10 * 2 * 10
    # include_source: false leaves each image's own class out; max_images caps the instances
    label = dict(zip(index["image_id"], index["label"], strict=True))
    ids, tgts = experiment_items(index, {**experiment, "include_source": False, "max_images": 40},
                                 targets_file=hierarchy / "imagenet_class_index.json")
    assert len(ids) == 40 and all(label[i] != t for i, t in zip(ids, tgts, strict=True))
    assert cluster_targets(44, clusters, include_source=False) == [c for c in upstream_class_order(
        clusters[0].classes) if c != 44]
    with pytest.raises(FileNotFoundError, match="fetch_svce_hierarchy"):
        experiment_items(index, experiment, targets_file=tmp_path / "absent.json")
    from cfx.generate import experiment_images

    with pytest.raises(ValueError, match="several instances"):
        experiment_images(index, experiment)


def test_svce_chunk_writes_every_instance_at_every_radius(tmp_path, no_sha256_check):
    """One chunk of SVCE on the stand-in with a random Madry + FT ResNet-50 (the published file's layout): each
    instance has its image's label and its own cluster target, and is written at the three radii."""
    from torchvision.models import resnet50

    from cfx.generate import experiment_items, generate_chunk

    hierarchy = write_hierarchy(tmp_path / "IN_info")
    index_csv = write_index(tmp_path / "val")
    torch.manual_seed(0)
    torch.save(resnet50().state_dict(), tmp_path / "svce_madry_ft.pt")
    experiment = {"dataset": "imagenet", "split": "val", "image_size": 32, "image_targets": "svce_clusters",
                  "samples_per_class": 1, "max_images": 12, "classifier": "svce_madry_ft"}
    spec = {"classifier": "svce_madry_ft", "batch_size": 4, "image_resize": "stretch_bicubic",
            "config": {"norm": 1.5, "radii": [50, 75, 100], "radii_reference_size": 224, "n_iter": 2}}
    tree = tmp_path / "cf"
    manifest = generate_chunk(
        experiment=experiment, method="svce", method_spec=spec,
        model_specs={"svce_madry_ft": {"kind": "madry_ft", "dataset": "imagenet", "image_size": 224}},
        index_csv=index_csv, checkpoints={"classifier": tmp_path / "svce_madry_ft.pt"}, chunk=1, chunks=2, seed=0,
        tree_root=tree, manifest_path=tree / "chunks" / "svce" / "1-of-2.json", device="cpu", progress=False,
        layout="imagenet_val", targets_file=hierarchy / "imagenet_class_index.json")
    index = pd.read_csv(index_csv, dtype={"image_id": str})
    image_ids, targets = experiment_items(index, experiment, targets_file=hierarchy / "imagenet_class_index.json")
    positions = list(range(1, 12, 2))
    label = dict(zip(index["image_id"], index["label"], strict=True))
    records = manifest["records"]
    assert [r["stem"] for r in records] == [f"{i:07d}" for i in positions]
    assert [r["image_id"] for r in records] == [image_ids[i] for i in positions]
    assert [r["target"] for r in records] == [targets[i] for i in positions]
    assert [r["label"] for r in records] == [label[image_ids[i]] for i in positions]
    assert manifest["n_expected_total"] == 12 and set(manifest["variants"]) == {"radius_50", "radius_75"}
    for name in ("radius_50", "radius_75"):
        assert [r["target"] for r in manifest["variants"][name]] == [targets[i] for i in positions]
    cfs = sorted(tree.glob("Results/svce/*/*/CF/*.png"))
    assert len(cfs) == len(positions) and Image.open(cfs[0]).size == (32, 32)


def test_every_image_targets_kind_names_its_fetched_file():
    """The file the workflow (generation inputs, SVCE's figure) and `cfx generate` pass for each image_targets kind:
    the outputs of the fetch_* rules."""
    from cfx.suite import SuiteError, image_targets_file

    assert image_targets_file({"query_label": 31}) is None
    svce = image_targets_file({"image_targets": "svce_clusters"})
    assert svce == "resources/data/svce/IN_info/imagenet_class_index.json"
    assert image_targets_file({"image_targets": "ldce"}) == "resources/data/ldce/image_idx_to_tgt.yaml"
    assert image_targets_file({"image_targets": "ldce_flowers"}) == "resources/data/ldce/flowers_closest_indices.json"
    with pytest.raises(SuiteError, match="unknown image_targets 'nope'"):
        image_targets_file({"image_targets": "nope"})
