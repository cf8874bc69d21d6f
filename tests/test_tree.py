"""The upstream DiME/ACE output tree: folders, stems, Info format, quantisation, resume, summary."""

import numpy as np
import pytest
import torch
import yaml

from cfx.io.images import load_image, to_uint8
from cfx.io.tree import LEAVES, SUBSETS, OutputTree, dime_summary, iter_instances, read_info, saliency_map


def _write(tree, stem, label, pred, target, cf_pred):
    torch.manual_seed(int(stem))
    x = torch.rand(3, 8, 8) * 2 - 1
    return tree.write_instance(stem, original=x, cf=-x, noise=x * 0.5, label=label, pred=pred, target=target,
                               cf_pred=cf_pred, info={"bkl": 0.25})


def test_prepare_creates_the_upstream_skeleton(tmp_path):
    tree = OutputTree(tmp_path, "dime")
    tree.prepare()
    assert (tmp_path / "Original/Correct").is_dir() and (tmp_path / "Original/Incorrect").is_dir()
    leaves = [p for p in (tmp_path / "Results/dime").glob("*/*/*") if p.is_dir()]
    assert len(leaves) == 16 == len(SUBSETS) * len(LEAVES)
    assert OutputTree.stem(42) == "0000042"


def test_instances_land_in_the_right_folders_with_dime_info(tmp_path):
    tree = OutputTree(tmp_path, "dime")
    tree.prepare()
    _write(tree, "0000000", 1, 1, 0, 0)  # correct, flipped
    _write(tree, "0000001", 0, 1, 0, 1)  # incorrect, not flipped
    assert (tmp_path / "Original/Correct/0000000.jpg").exists()
    assert (tmp_path / "Results/dime/CC/CCF/CF/0000000.jpg").exists()
    assert (tmp_path / "Original/Incorrect/0000001.jpg").exists()
    info = (tmp_path / "Results/dime/IC/ICF/Info/0000001.txt").read_text()
    assert info.split("\n")[:4] == ["label: 0", "pred: 1", "target: 0", "cf pred: 1"]
    assert info.split("\n")[4] == "BKL: 0.25" and info.split("\n")[5].startswith("l_1: ")
    assert read_info(tmp_path / "Results/dime/IC/ICF/Info/0000001.txt")["cf_pred"] == 1
    assert tree.completed_stems() == {"0000000", "0000001"}
    assert not list(tmp_path.rglob(".*tmp*"))
    found = {inst["stem"]: inst["subset"] for inst in iter_instances(tmp_path, "dime")}
    assert found == {"0000000": "CC/CCF", "0000001": "IC/ICF"}


def test_incomplete_instance_is_not_done(tmp_path):
    tree = OutputTree(tmp_path, "dime")
    tree.prepare()
    _write(tree, "0000003", 1, 1, 0, 0)
    (tmp_path / "Results/dime/CC/CCF/CF/0000003.jpg").unlink()
    assert tree.completed_stems() == set()


def test_quantisation_matches_upstream():
    x = torch.tensor([-1.0, -0.999, 0.0, 0.999, 1.0]).view(1, 1, 5).expand(3, 1, 5)
    assert to_uint8(x, mode="truncate")[0, :, 0].tolist() == [0, 0, 127, 254, 255]  # floor, not round
    over = torch.tensor([-1.5, 1.5]).view(1, 1, 2).expand(3, 1, 2)
    assert to_uint8(over, mode="clamp")[0, :, 0].tolist() == [0, 255]


def test_saliency_and_l1_values(tmp_path):
    a = np.zeros((2, 2, 3), np.uint8)
    b = a.copy()
    b[0, 0] = [10, 20, 30]
    sm = saliency_map(a, b)
    assert sm[0, 0].tolist() == [255, 255, 255] and sm[1, 1].tolist() == [0, 0, 0]
    assert saliency_map(a, a).max() == 0


def test_corrupt_image_is_named(tmp_path):
    bad = tmp_path / "x.jpg"
    bad.write_bytes(b"junk")
    with pytest.raises(ValueError, match="x.jpg"):
        load_image(bad)


def test_summary_has_dime_keys_and_units():
    records = [{"label": 1, "pred": 1, "target": 0, "cf_pred": 0, "bkl": 0.2, "l_1": 0.1},
               {"label": 0, "pred": 1, "target": 0, "cf_pred": 1, "bkl": 0.8, "l_1": 0.3}]
    summary = dime_summary(records)
    assert summary["clean acc"] == 50.0 and summary["cf acc"] == 0.5 and summary["n"] == 2
    assert summary["class-cor"]["cf-cor"]["n"] == 1 and summary["class-inc"]["cf-inc"]["n"] == 1
    assert summary["bkl"] == pytest.approx(0.5)
    assert set(yaml.safe_load(yaml.safe_dump(summary))) >= {"clean acc", "cf acc", "n", "bkl", "l_1", "FVA", "MNAC",
                                                             "class-cor", "class-inc", "cf-cor", "cf-inc"}
