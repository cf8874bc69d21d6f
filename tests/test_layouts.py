"""Real dataset layouts (CelebA-HQ, ImageNet val): fake roots in the upstream layouts are validated and indexed;
a missing file gives a message naming it, where to download it and the data_roots key."""

from pathlib import Path

import pandas as pd
import pytest

from cfx.data.celeba import CELEBA_ATTRIBUTES
from cfx.data.layouts import DatasetLayoutError, build_layout_index
from tests.factories.datasets import fake_celebahq, fake_imagenet_val, write_image


def test_celebahq_indexed(tmp_path):
    fake_celebahq(tmp_path / "hq")
    frame = build_layout_index("celebahq", tmp_path / "hq", tmp_path / "index.csv")
    written = pd.read_csv(tmp_path / "index.csv")
    assert list(written["image_id"]) == [f"{i}.jpg" for i in range(5)]
    assert list(written.columns[:4]) == ["image_id", "path", "partition", "identity"]
    assert list(written.columns[4:]) == CELEBA_ATTRIBUTES
    # partition comes from CelebA's file through the mapping: HQ i -> CelebA file (100 + 7 i + 1).jpg
    assert list(written["partition"]) == [(100 + 7 * i + 1) % 3 for i in range(5)]
    assert all(Path(p).is_file() and Path(p).is_absolute() for p in written["path"])
    assert frame[CELEBA_ATTRIBUTES].isin([-1, 1]).all().all()


@pytest.mark.parametrize("name", ["CelebAMask-HQ-attribute-anno.txt", "CelebA-HQ-to-CelebA-mapping.txt",
                                  "list_eval_partition.csv"])
def test_celebahq_missing_file_named(tmp_path, name):
    fake_celebahq(tmp_path / "hq")
    (tmp_path / "hq" / name).unlink()
    with pytest.raises(DatasetLayoutError, match=name) as error:
        build_layout_index("celebahq", tmp_path / "hq", tmp_path / "index.csv", key="celebahq256")
    assert "https://" in str(error.value) and "data_roots" in str(error.value) and "celebahq256" in str(error.value)
    assert not (tmp_path / "index.csv").exists()


def test_celebahq_missing_image_named(tmp_path):
    fake_celebahq(tmp_path / "hq")
    (tmp_path / "hq" / "CelebA-HQ-img" / "3.jpg").unlink()
    with pytest.raises(DatasetLayoutError, match="3.jpg"):
        build_layout_index("celebahq", tmp_path / "hq", tmp_path / "index.csv")


def test_missing_root_says_what_to_download(tmp_path):
    with pytest.raises(DatasetLayoutError, match="CelebAMask-HQ") as error:
        build_layout_index("celebahq", tmp_path / "nowhere", tmp_path / "index.csv", key="celebahq256")
    assert "data_roots: {celebahq256:" in str(error.value)
    with pytest.raises(DatasetLayoutError, match="image-net.org"):
        build_layout_index("imagenet_val", tmp_path / "nowhere", tmp_path / "index.csv")


def test_imagenet_val_standard_order(tmp_path):
    fake_imagenet_val(tmp_path / "val")
    build_layout_index("imagenet_val", tmp_path / "val", tmp_path / "index.csv")
    written = pd.read_csv(tmp_path / "index.csv")
    assert list(written["image_id"]) == [f"ILSVRC2012_val_{k:08d}.JPEG" for k in range(1, 6)]
    assert list(written["label"]) == [1, 0, 0, 1, 2]  # sorted wnids: n01440764=0, n01443537=1, n01484850=2
    assert list(written["wnid"]) == ["n01443537", "n01440764", "n01440764", "n01443537", "n01484850"]
    assert set(written["partition"]) == {1}


def test_imagenet_val_rejects_strays(tmp_path):
    fake_imagenet_val(tmp_path / "val")
    write_image(tmp_path / "val" / "n01440764" / "cat.png", 9)
    with pytest.raises(DatasetLayoutError, match="cat.png"):
        build_layout_index("imagenet_val", tmp_path / "val", tmp_path / "index.csv")
    (tmp_path / "val" / "n01440764" / "cat.png").unlink()
    (tmp_path / "val" / "misc").mkdir()
    with pytest.raises(DatasetLayoutError, match="misc"):
        build_layout_index("imagenet_val", tmp_path / "val", tmp_path / "index.csv")


def test_unknown_layout(tmp_path):
    with pytest.raises(ValueError, match="unknown dataset layout"):
        build_layout_index("mnist", tmp_path, tmp_path / "index.csv")


def test_bdd100k_indexed_sorted(tmp_path):
    for name in ["c.jpg", "a.jpg", "b.jpg"]:
        write_image(tmp_path / "bdd" / "images" / "100k" / "val" / name, ord(name[0]))
    build_layout_index("bdd100k", tmp_path / "bdd", tmp_path / "index.csv")
    written = pd.read_csv(tmp_path / "index.csv")
    assert list(written["image_id"]) == ["a.jpg", "b.jpg", "c.jpg"] and set(written["label"]) == {1}
    with pytest.raises(DatasetLayoutError, match="images/100k/val") as error:
        build_layout_index("bdd100k", tmp_path / "none", tmp_path / "index2.csv", key="bdd")
    assert "bdd-data.berkeley.edu" in str(error.value) and "data_roots: {bdd:" in str(error.value)


def test_chexpert_valid_indexed(tmp_path):
    from cfx.data.layouts import CHEXPERT_LABELS
    root = tmp_path / "CheXpert-v1.0-small"
    rows = []
    for patient, study in [(64541, 1), (64542, 1)]:
        relative = f"valid/patient{patient}/study{study}/view1_frontal.jpg"
        write_image(root / relative, patient)
        rows.append({"Path": f"CheXpert-v1.0-small/{relative}", **{c: 1.0 for c in CHEXPERT_LABELS}})
    rows[1]["Pleural Effusion"] = None
    root.mkdir(exist_ok=True)
    pd.DataFrame(rows).to_csv(root / "valid.csv", index=False)
    build_layout_index("chexpert", root, tmp_path / "index.csv")
    written = pd.read_csv(tmp_path / "index.csv")
    assert list(written["image_id"]) == [f"patient{p}/study1/view1_frontal.jpg" for p in (64541, 64542)]
    assert written["Pleural Effusion"].isna().tolist() == [False, True]
    (root / "valid/patient64542/study1/view1_frontal.jpg").unlink()
    with pytest.raises(DatasetLayoutError, match="patient64542"):
        build_layout_index("chexpert", root, tmp_path / "index2.csv")
    (root / "valid.csv").unlink()
    with pytest.raises(DatasetLayoutError, match="valid.csv"):
        build_layout_index("chexpert", root, tmp_path / "index2.csv")
