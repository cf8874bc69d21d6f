"""The generated CelebA-layout dataset and the CelebA loader (the one the paper suite uses)."""

import hashlib
import re

import numpy as np
import pandas as pd
import pytest
import torch

from cfx.data.celeba import (
    CELEBA_ATTRIBUTES,
    CelebALayoutError,
    attribute_index,
    build_index,
    convert_official_celeba,
    read_celeba,
)
from cfx.data.celeba_dataset import CelebADataset
from cfx.data.synthetic import RENDERED_ATTRIBUTES, write_synthetic_celeba


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    return write_synthetic_celeba(tmp_path_factory.mktemp("synth"), n_identities=30, images_per_identity=6,
                                  image_size=32, seed=3, progress=False)


def test_layout_is_celeba(synth):
    attrs = pd.read_csv(synth / "list_attr_celeba.csv", dtype={"image_id": str})
    assert list(attrs.columns) == ["image_id", *CELEBA_ATTRIBUTES]
    assert attrs["image_id"].tolist() == [f"{i:06d}.jpg" for i in range(1, 181)]
    assert set(np.unique(attrs[CELEBA_ATTRIBUTES].to_numpy())) == {-1, 1}
    parts = pd.read_csv(synth / "list_eval_partition.csv", dtype={"image_id": str})
    assert list(parts.columns) == ["image_id", "partition"] and set(parts["partition"]) == {0, 1, 2}
    lines = (synth / "identity_CelebA.txt").read_text().split("\n")
    assert lines[0].split(" ")[0] == "000001.jpg" and lines[0].split(" ")[1].isdigit()
    frame = read_celeba(synth)
    # identity-disjoint partitions, several images per identity
    assert frame.groupby("identity")["partition"].nunique().max() == 1
    assert frame.groupby("identity").size().min() == 6
    assert attribute_index("Smiling") == 31 and attribute_index("Young") == 39 and attribute_index(20) == 20


def test_rendered_attributes_vary_and_the_rest_are_constant(synth):
    frame = read_celeba(synth)
    varying = {a for a in CELEBA_ATTRIBUTES if frame[a].nunique() > 1}
    assert len(varying) >= 12
    assert varying <= set(RENDERED_ATTRIBUTES)
    for attr in ("Smiling", "Young"):
        assert 0.25 < (frame[attr] == 1).mean() < 0.75


def test_correlations_have_celeba_signs(tmp_path):
    root = write_synthetic_celeba(tmp_path, n_identities=120, images_per_identity=4, image_size=32, seed=0,
                                  progress=False)
    corr = read_celeba(root)[CELEBA_ATTRIBUTES].corr()
    for a, b, sign in [("Smiling", "Mouth_Slightly_Open", 1), ("Smiling", "High_Cheekbones", 1),
                       ("Male", "No_Beard", -1), ("Male", "Goatee", 1), ("Male", "Heavy_Makeup", -1),
                       ("Male", "Wearing_Lipstick", -1), ("Young", "Gray_Hair", -1)]:
        assert np.sign(corr.loc[a, b]) == sign and abs(corr.loc[a, b]) > 0.1, (a, b, corr.loc[a, b])


def test_deterministic_from_seed(tmp_path):
    def digest(root):
        return hashlib.sha256(b"".join(p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file())).hexdigest()

    a = write_synthetic_celeba(tmp_path / "a", n_identities=4, images_per_identity=2, image_size=32, seed=1,
                               progress=False)
    b = write_synthetic_celeba(tmp_path / "b", n_identities=4, images_per_identity=2, image_size=32, seed=1,
                               progress=False)
    c = write_synthetic_celeba(tmp_path / "c", n_identities=4, images_per_identity=2, image_size=32, seed=2,
                               progress=False)
    assert digest(a) == digest(b) != digest(c)


def test_smile_and_age_are_visible(synth):
    frame = read_celeba(synth)
    dataset = CelebADataset(synth, "train", 32, None)
    images = torch.stack([dataset[i][1] for i in range(len(dataset))])
    train = frame[frame["partition"] == 0].reset_index(drop=True)
    mouth = images[:, :, 20:28, 10:22]
    hair = images[:, :, 2:8, 8:24]
    smile = torch.tensor((train["Smiling"] == 1).to_numpy())
    young = torch.tensor((train["Young"] == 1).to_numpy())
    # the mean mouth region differs clearly between smiling and non-smiling faces; hair brightness with age
    assert float((mouth[smile].mean(0) - mouth[~smile].mean(0)).abs().mean()) > 0.08
    assert float(hair[~young].mean() - hair[young].mean()) > 0.1


def test_loader_reproduces_dime_transform(synth):
    dataset = CelebADataset(synth, "val", 16, attribute_index("Smiling"))
    i, image, label = dataset[0]
    assert i == 0 and image.shape == (3, 16, 16) and image.min() >= -1 and image.max() <= 1
    assert label.dtype == torch.long and int(label) in (0, 1)
    raw = CelebADataset(synth, "val", 16, None, normalize=False)[0][1]
    assert torch.allclose(raw * 2 - 1, image, atol=1e-6)
    frame = read_celeba(synth)
    assert len(dataset) == int((frame["partition"] == 1).sum())
    ids = list(frame[frame["partition"] == 1]["image_id"])[:3][::-1]
    assert CelebADataset(synth, "val", 16, 31, image_ids=ids).frame["image_id"].tolist() == ids


def test_unknown_image_id_names_the_root(synth):
    """An image id outside the split names the CelebA root that was searched (not just "the index")."""
    with pytest.raises(KeyError, match=f"not in the val split of {re.escape(str(synth))}"):
        CelebADataset(synth, "val", 16, 31, image_ids=["no_such_image.jpg"])


def test_bad_inputs_give_clear_errors(tmp_path, synth):
    with pytest.raises(CelebALayoutError, match="does not exist"):
        read_celeba(tmp_path / "nowhere")
    (tmp_path / "official").mkdir()
    (tmp_path / "official" / "list_attr_celeba.txt").write_text("1\n" + " ".join(CELEBA_ATTRIBUTES) + "\n")
    with pytest.raises(CelebALayoutError, match="cfx data convert-celeba"):
        read_celeba(tmp_path / "official")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CelebALayoutError, match="list_attr_celeba.csv is missing"):
        read_celeba(tmp_path / "empty")
    broken = tmp_path / "broken"
    broken.mkdir()
    for name in ("list_attr_celeba.csv", "list_eval_partition.csv"):
        (broken / name).write_text((synth / name).read_text())
    (broken / "img_align_celeba").mkdir()
    parts = pd.read_csv(broken / "list_eval_partition.csv", dtype={"image_id": str})
    parts.iloc[::-1].to_csv(broken / "list_eval_partition.csv", index=False)
    with pytest.raises(CelebALayoutError, match="different order"):
        read_celeba(broken)
    parts.to_csv(broken / "list_eval_partition.csv", index=False)
    with pytest.raises(CelebALayoutError, match="images listed .* are missing"):
        build_index(broken, tmp_path / "index.csv")
    assert not (tmp_path / "index.csv").exists()


def test_corrupt_image_is_named(tmp_path, synth):
    import shutil

    root = tmp_path / "copy"
    shutil.copytree(synth, root)
    dataset = CelebADataset(root, "val", 16, 31)
    victim = root / "img_align_celeba" / dataset.frame["image_id"][0]
    victim.write_bytes(b"not a jpeg")
    with pytest.raises(ValueError, match=victim.name):
        dataset[0]


def test_convert_official_round_trip(tmp_path, synth):
    frame = pd.read_csv(synth / "list_attr_celeba.csv", dtype={"image_id": str})
    parts = pd.read_csv(synth / "list_eval_partition.csv", dtype={"image_id": str})
    official = tmp_path / "celeba"
    official.mkdir()
    rows = [" ".join([r.image_id, *(f"{v:2d}" for v in r[CELEBA_ATTRIBUTES])]) for _, r in frame.iterrows()]
    (official / "list_attr_celeba.txt").write_text(f"{len(frame)}\n" + " ".join(CELEBA_ATTRIBUTES) + "\n"
                                                   + "\n".join(rows) + "\n")
    (official / "list_eval_partition.txt").write_text(
        "\n".join(f"{a} {b}" for a, b in zip(parts.image_id, parts.partition, strict=True)) + "\n")
    convert_official_celeba(official)
    converted = pd.read_csv(official / "list_attr_celeba.csv", dtype={"image_id": str})
    pd.testing.assert_frame_equal(converted, frame)
    assert pd.read_csv(official / "list_eval_partition.csv", dtype={"image_id": str}).equals(parts)


def test_build_index_columns(tmp_path, synth):
    index = build_index(synth, tmp_path / "index.csv")
    on_disk = pd.read_csv(tmp_path / "index.csv", dtype={"image_id": str})
    assert list(on_disk.columns) == ["image_id", "path", "partition", "identity", *CELEBA_ATTRIBUTES]
    assert len(on_disk) == len(index) == 180
    assert all(p.startswith("/") for p in on_disk["path"])
