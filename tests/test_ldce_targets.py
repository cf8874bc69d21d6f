"""LDCE's ImageNet targets (docs/upstream/ldce_gcd_svce.md §1.5) on small hand-made files in upstream's formats."""

import random

import pytest
import yaml

from cfx.data import ldce_targets
from cfx.data.ldce_targets import (
    IMAGENET_CLASS_PAIRS,
    closest_class_target,
    fetch_ldce_files,
    image_target,
    imagefolder_positions,
    ldce_unique_id,
    pair_target,
    read_closest_classes,
    read_image_targets,
    read_openai_class_names,
    verify_ldce_files,
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
    with pytest.raises(FileNotFoundError, match="fetch_ldce_files"):
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
    (source / "imagenet_classnames.py").write_text(f"openai_imagenet_classes = {['n'] * 1000!r}\n")
    files = {name: ((source / name).as_uri(), sha256_file(source / name)) for name in ldce_targets.LDCE_TARGET_FILES}
    monkeypatch.setitem(ldce_targets.LDCE_FILE_GROUPS, "targets", files)
    folder = fetch_ldce_files(tmp_path / "resources", "targets", timeout=5)
    assert read_image_targets(folder / "image_idx_to_tgt.yaml") == [1]
    (folder / "synset_closest_idx.yaml").write_text("tampered")
    with pytest.raises(ValueError, match="re-download"):
        verify_ldce_files(folder, "targets")
    (folder / "synset_closest_idx.yaml").unlink()
    with pytest.raises(FileNotFoundError, match="synset_closest_idx.yaml is missing"):
        verify_ldce_files(folder, "targets")
    bad = {**files, "synset_closest_idx.yaml": (files["synset_closest_idx.yaml"][0], "0" * 64)}
    monkeypatch.setitem(ldce_targets.LDCE_FILE_GROUPS, "targets", bad)
    with pytest.raises(ChecksumError, match="synset_closest_idx.yaml"):
        fetch_ldce_files(tmp_path / "other", "targets", timeout=5)
    assert not (tmp_path / "other" / "synset_closest_idx.yaml").exists()
    with pytest.raises(KeyError, match="unknown group of LDCE files 'cub'"):
        fetch_ldce_files(tmp_path / "other", "cub", timeout=5)


def _full_val_index(shuffle_seed: int = 0):
    """An index of a full ImageNet val (1000 wnid folders x 50 images), rows in val-number order as
    read_imagenet_val writes them: val numbers are dealt to classes in a shuffled order, as in the real val set."""
    import pandas as pd

    numbers = list(range(1, 50_001))
    random.Random(shuffle_seed).shuffle(numbers)
    rows = [(n, f"n{c:08d}", c) for c in range(1000) for n in sorted(numbers[c * 50:(c + 1) * 50])]
    rows.sort()
    return pd.DataFrame({"image_id": [f"ILSVRC2012_val_{n:08d}.JPEG" for n, _, _ in rows],
                         "path": [f"/val/{w}/ILSVRC2012_val_{n:08d}.JPEG" for n, w, _ in rows], "partition": 1,
                         "wnid": [w for _, w, _ in rows], "label": [c for _, _, c in rows]})


def test_table1_experiment_takes_ldce_order_and_per_image_targets(tmp_path):
    """LDCE's Table 1 experiment (image_targets: ldce): the val set re-interleaved (id k*1000 + class), the first
    max_images, each image's target read from image_idx_to_tgt.yaml at its ImageFolder position."""
    from cfx.generate import experiment_images, experiment_targets

    index = _full_val_index()
    experiment = {"split": "val", "image_targets": "ldce", "max_images": 2500}
    image_ids = experiment_images(index, experiment)
    assert len(image_ids) == 2500
    by_id = index.set_index("image_id")
    # ImageFolder order: class folder, then file name; the k-th image of class c has LDCE id k*1000 + c
    folder_order = index.sort_values(["wnid", "image_id"]).reset_index(drop=True)
    expected = [folder_order.loc[c * 50 + k, "image_id"] for k in range(3) for c in range(1000)][:2500]
    assert image_ids == expected
    assert [int(by_id.loc[i, "label"]) for i in image_ids[:1000]] == list(range(1000))
    targets = [(p * 7 + 3) % 1000 for p in range(50_000)]  # a target per ImageFolder position
    path = tmp_path / "image_idx_to_tgt.yaml"
    path.write_text(yaml.safe_dump(dict(enumerate(targets))))
    chosen = experiment_targets(index, experiment, image_ids[:4], path)
    position = {row.image_id: i for i, row in folder_order.iterrows()}
    assert chosen == {i: targets[position[i]] for i in image_ids[:4]}
    with pytest.raises(FileNotFoundError, match="fetch_ldce_targets"):
        experiment_targets(index, experiment, image_ids[:4], tmp_path / "absent.yaml")
    with pytest.raises(ValueError, match="49999 images in 1000 class folders"):
        experiment_images(index.iloc[1:], experiment)
    # class pairs: the partner class; binary experiments: none (the method takes 1 - prediction)
    pair = {"split": "val", "class_targets": {"340": 339, "339": 340}}
    pair_ids = experiment_images(index, pair)
    assert [int(by_id.loc[i, "label"]) for i in pair_ids] == [339] * 50 + [340] * 50
    assert set(experiment_targets(index, pair, pair_ids).values()) == {339, 340}
    assert all(experiment_targets(index, pair, pair_ids)[i] != by_id.loc[i, "label"] for i in pair_ids)
    assert experiment_targets(index, {"split": "val", "query_label": 31}, pair_ids) is None


def test_class_names_are_read_as_a_literal_never_executed(tmp_path):
    """LDCE-txt's prompt names: openai_imagenet_classes of data/imagenet_classnames.py (1000 names), parsed with ast;
    code in the file does not run (a marker file it would write stays absent)."""
    names = [f"class {k}" for k in range(1000)]
    marker = tmp_path / "executed"
    path = tmp_path / "imagenet_classnames.py"
    path.write_text(f"import pathlib\npathlib.Path({str(marker)!r}).write_text('x')\nname_map = {{0: 'tench'}}\n"
                    f"openai_imagenet_classes = {names!r}\n")
    assert read_openai_class_names(path) == names and not marker.exists()
    for content, message in ((f"openai_imagenet_classes = {names[:999]!r}", "must list 1000"),
                             ("openai_imagenet_classes = sorted(x)", "not a literal"),
                             ("other = [1]", "defines no openai_imagenet_classes"), ("def (", "re-download")):
        path.write_text(content)
        with pytest.raises(ValueError, match=message):
            read_openai_class_names(path)
    with pytest.raises(FileNotFoundError, match="fetch_ldce_targets"):
        read_openai_class_names(tmp_path / "absent.py")
