"""LDCE's ImageNet targets (reference/ldce_gcd_svce.md §1.5) on small hand-made files in upstream's formats."""

import random

import pytest
import yaml

from cfx.data import ldce_targets
from cfx.data.ldce_targets import (
    IMAGENET_CLASS_PAIRS,
    closest_class_target,
    fetch_ldce_target_files,
    image_target,
    imagefolder_positions,
    ldce_unique_id,
    pair_target,
    read_closest_classes,
    read_image_targets,
    verify_ldce_target_files,
)
from cfx.runtime.download import ChecksumError, sha256_file


def test_imagefolder_positions_sort_by_wnid_then_file_not_by_val_number():
    # the standard val order (by ILSVRC number) differs from ImageFolder's (class folder, then file name)
    paths = ["n02/ILSVRC2012_val_00000001.JPEG", "n01/ILSVRC2012_val_00000002.JPEG",
             "n02/ILSVRC2012_val_00000003.JPEG", "n01/ILSVRC2012_val_00000004.JPEG"]
    assert imagefolder_positions(paths) == [2, 0, 3, 1]
    with pytest.raises(ValueError, match="<wnid>/<file>"):
        imagefolder_positions(["flat.JPEG"])


def test_unique_ids_interleave_one_image_per_class_per_block():
    # upstream: concat over k of samples[k::50]; position c*50 + k -> id k*1000 + c
    assert ldce_unique_id(0) == 0 and ldce_unique_id(49) == 49_000 and ldce_unique_id(50) == 1
    assert ldce_unique_id(340 * 50 + 7) == 7340
    ids = [ldce_unique_id(p) for p in range(50_000)]
    assert sorted(ids) == list(range(50_000))
    interleaved = [p for k in range(50) for p in range(50_000)[k::50]]  # upstream's re-ordering of positions
    assert [ldce_unique_id(p) for p in interleaved] == list(range(50_000))


def test_per_image_targets_read_in_both_upstream_forms_and_checked_against_the_closest_classes(tmp_path):
    closest_file = tmp_path / "synset_closest_idx.yaml"
    closest_file.write_text(yaml.safe_dump({0: [1, 2], 1: [0, 2], 2: [0, 1]}))
    as_dict, as_list = tmp_path / "dict.yaml", tmp_path / "list.yaml"
    as_dict.write_text(yaml.safe_dump({0: 1, 1: 2, 2: 0, 3: 2}))
    as_list.write_text(yaml.safe_dump([1, 2, 0, 2]))
    closest = read_closest_classes(closest_file)
    assert read_image_targets(as_dict) == read_image_targets(as_list) == [1, 2, 0, 2]
    targets = read_image_targets(as_dict)
    # two images per class in ImageFolder order: positions 0, 1 are class 0; 2, 3 class 1
    assert [image_target(p, targets, p // 2, closest) for p in range(4)] == [1, 2, 0, 2]
    with pytest.raises(ValueError, match="not among the closest classes"):
        image_target(0, targets, label=1, closest={1: [2]})
    with pytest.raises(IndexError, match="ImageFolder order"):
        image_target(4, targets)


@pytest.mark.parametrize("content, message", [
    ({0: 1, 2: 3}, "are missing"),
    ({0: 1000}, "not an ImageNet class number"),
    ("just text", "not a mapping"),
])
def test_bad_target_files_name_the_file(tmp_path, content, message):
    path = tmp_path / "image_idx_to_tgt.yaml"
    path.write_text(yaml.safe_dump(content))
    with pytest.raises(ValueError, match=message) as info:
        read_image_targets(path)
    assert str(path) in str(info.value)
    with pytest.raises(FileNotFoundError, match="fetch_ldce_target_files"):
        read_image_targets(tmp_path / "absent.yaml")


def test_closest_class_fallback_and_class_pairs():
    closest = {5: [6, 7, 8, 9]}
    draws = [closest_class_target(5, closest, random.Random(0)) for _ in range(3)]
    assert draws[0] == draws[1] == draws[2] == random.Random(0).choice([6, 7, 8, 9])
    with pytest.raises(KeyError, match="class 4"):
        closest_class_target(4, closest, random.Random(0))
    assert IMAGENET_CLASS_PAIRS["zebra_sorrel"] == (340, 339)
    assert pair_target(340, "zebra_sorrel") == 339 and pair_target(339, "zebra_sorrel") == 340
    assert pair_target(293, "cheetah_cougar") == 286 and pair_target(283, "egyptian_persian") == 285
    with pytest.raises(ValueError, match="not in the pair"):
        pair_target(1, "zebra_sorrel")


def test_fetch_downloads_atomically_and_verifies_the_pinned_digests(tmp_path, monkeypatch):
    # stand-in files served from file:// URLs; the real URLs and digests are pinned in the module
    source = tmp_path / "upstream"
    source.mkdir()
    (source / "image_idx_to_tgt.yaml").write_text(yaml.safe_dump({0: 1}))
    (source / "synset_closest_idx.yaml").write_text(yaml.safe_dump({0: [1]}))
    files = {name: ((source / name).as_uri(), sha256_file(source / name)) for name in ldce_targets.LDCE_TARGET_FILES}
    monkeypatch.setattr(ldce_targets, "LDCE_TARGET_FILES", files)
    folder = fetch_ldce_target_files(tmp_path / "resources", timeout=5)
    assert read_image_targets(folder / "image_idx_to_tgt.yaml") == [1]
    (folder / "synset_closest_idx.yaml").write_text("tampered")
    with pytest.raises(ValueError, match="re-download"):
        verify_ldce_target_files(folder)
    (folder / "synset_closest_idx.yaml").unlink()
    with pytest.raises(FileNotFoundError, match="synset_closest_idx.yaml is missing"):
        verify_ldce_target_files(folder)
    bad = {**files, "synset_closest_idx.yaml": (files["synset_closest_idx.yaml"][0], "0" * 64)}
    monkeypatch.setattr(ldce_targets, "LDCE_TARGET_FILES", bad)
    with pytest.raises(ChecksumError, match="synset_closest_idx.yaml"):
        fetch_ldce_target_files(tmp_path / "other", timeout=5)
    assert not (tmp_path / "other" / "synset_closest_idx.yaml").exists()
