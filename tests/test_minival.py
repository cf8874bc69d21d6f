"""DiME's / ACE's CelebA mini-val (docs/upstream/dime_ace.md §3.3) on a generated stand-in of upstream's minival.csv."""

import pandas as pd
import pytest

from cfx.data import minival
from cfx.data.celeba import build_index
from cfx.data.minival import fetch_dime_minival, read_subset_ids, verify_dime_minival
from cfx.data.synthetic import write_synthetic_celeba
from cfx.generate import experiment_images
from cfx.runtime.download import ChecksumError, sha256_file


def _minival_like(path, image_ids):
    """A file in upstream's layout: pandas' unnamed index, ``index``, ``image_id``, then attributes as 0/1."""
    frame = pd.DataFrame({"index": range(len(image_ids)), "image_id": image_ids, "Smiling": 1})
    frame.to_csv(path)
    return path


def test_subset_experiment_takes_the_list_in_order_with_repeats(tmp_path):
    write_synthetic_celeba(tmp_path / "celeba", n_identities=10, images_per_identity=2, image_size=32, seed=0,
                           progress=False)
    index = build_index(tmp_path / "celeba", tmp_path / "index.csv")
    val = list(index[index["partition"] == 1]["image_id"])
    assert len(val) >= 2
    listed = [val[1], val[0], val[1]]  # drawn with replacement: repeats are kept, in file order
    path = _minival_like(tmp_path / "minival.csv", listed)
    experiment = {"split": "val", "subset": "dime_minival", "query_label": 31}
    assert read_subset_ids(path) == listed
    assert experiment_images(index, experiment, path) == listed
    assert experiment_images(index, {**experiment, "max_images": 2}, path) == listed[:2]
    with pytest.raises(FileNotFoundError, match="fetch_dime_minival"):
        experiment_images(index, experiment)
    train_image = index[index["partition"] == 0]["image_id"].iloc[0]
    with pytest.raises(ValueError, match="not in the index's val split"):
        experiment_images(index, experiment, _minival_like(tmp_path / "stray.csv", [val[0], train_image]))
    (tmp_path / "bad.csv").write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match="no image_id column"):
        read_subset_ids(tmp_path / "bad.csv")


def test_fetch_pins_the_upstream_file(tmp_path, monkeypatch):
    assert minival.DIME_MINIVAL_FILES["minival.csv"][0].startswith(
        "https://raw.githubusercontent.com/guillaumejs2403/DiME/")
    source = _minival_like(tmp_path / "minival.csv", ["000001.jpg"])
    monkeypatch.setattr(minival, "DIME_MINIVAL_FILES", {"minival.csv": (source.as_uri(), sha256_file(source))})
    folder = fetch_dime_minival(tmp_path / "resources", timeout=5)
    assert read_subset_ids(folder / "minival.csv") == ["000001.jpg"]
    (folder / "minival.csv").write_text("tampered")
    with pytest.raises(ValueError, match="re-download"):
        verify_dime_minival(folder)
    monkeypatch.setattr(minival, "DIME_MINIVAL_FILES", {"minival.csv": (source.as_uri(), "0" * 64)})
    with pytest.raises(ChecksumError, match="minival.csv"):
        fetch_dime_minival(tmp_path / "other", timeout=5)
    assert not (tmp_path / "other" / "minival.csv").exists()
