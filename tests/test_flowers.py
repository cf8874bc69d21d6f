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

# imagelabels.mat: the class (1..102) of image numbers 1..9; setid.mat: the splits' image numbers, not sorted
LABELS = [3, 1, 102, 3, 50, 1, 102, 7, 50]
SETID = {"trnid": [2, 5, 9], "valid": [4, 8], "tstid": [7, 1, 6, 3]}
FLOWER_NAMES = ["pink primrose", "hard-leaved pocket orchid", *[f"flower {k}" for k in range(3, 102)], "last flower"]
# per test image (tstid order), 5 classes (the target is the first), as flowers_closest_indices.json
CLOSEST = [[94, 97, 45, 17, 88], [76, 82, 81, 85, 69], [97, 79, 63, 14, 88], [0, 101, 5, 6, 7]]


def fake_flowers(root: Path) -> Path:
    """torchvision's Flowers102 root: flowers-102/imagelabels.mat, setid.mat and jpg/image_<5 digits>.jpg (MATLAB
    1×N rows, as the official files store them)."""
    from scipy.io import savemat

    folder = root / "flowers-102"
    (folder / "jpg").mkdir(parents=True, exist_ok=True)
    savemat(folder / "imagelabels.mat", {"labels": np.array([LABELS], dtype=np.uint8)})
    savemat(folder / "setid.mat", {name: np.array([ids], dtype=np.uint16) for name, ids in SETID.items()})
    for number in range(1, len(LABELS) + 1):
        pixels = np.random.default_rng(number).integers(0, 256, (24 + number, 30, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / "jpg" / f"image_{number:05d}.jpg", quality=95)
    return root


def write_flowers_resources(folder: Path) -> tuple[Path, Path]:
    """Stand-ins of flowers_closest_indices.json (keys "0".."n-1") and flowers_idx_to_label.json (keys "1".."102")."""
    folder.mkdir(parents=True, exist_ok=True)
    closest, labels = folder / "flowers_closest_indices.json", folder / "flowers_idx_to_label.json"
    closest.write_text(json.dumps({str(k): v for k, v in enumerate(CLOSEST)}, indent=4))
    labels.write_text(json.dumps({str(k + 1): v for k, v in enumerate(FLOWER_NAMES)}, indent=4))
    return closest, labels


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
