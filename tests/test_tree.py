"""The upstream DiME/ACE output tree: folders, stems, Info format, quantisation, resume, summary."""

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from cfx.io.images import load_image, save_image_atomic, to_uint8
from cfx.io.tree import (
    LEAVES,
    SUBSETS,
    OutputTree,
    dime_summary,
    iter_instances,
    read_info,
    saliency_map,
    write_dime_summary,
)


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


def test_to_uint8_is_bitwise_the_upstream_expressions():
    # every value a CelebA pixel maps to through ToTensor + Normalize(0.5, 0.5), plus a dense grid
    u8 = torch.arange(256, dtype=torch.float32)
    from_dataset = (u8 / 255 - 0.5) / 0.5
    grid = torch.linspace(-1.2, 1.2, 30001)
    for x in (from_dataset, grid):
        img = x.view(1, 1, -1).expand(3, 1, -1)
        truncated = ((img / 2) + 0.5) * 255  # DiME main.py: I = img/2 + 0.5; (I*255).to(uint8)
        clamped = ((img + 1) * 127.5).clamp(0, 255)  # DiME main.py: CF and noise
        valid = x >= -1  # uint8 casts of negative floats are undefined: upstream never truncates them
        assert np.array_equal(to_uint8(img, mode="truncate")[0, valid.numpy(), 0],
                              truncated.to(torch.uint8)[0, 0, valid].numpy())
        assert np.array_equal(to_uint8(img, mode="clamp")[0, :, 0], clamped.to(torch.uint8)[0, 0].numpy())
    ace = torch.rand(3, 4, 4)
    assert np.array_equal(to_uint8(ace, (0, 1), mode="truncate"), (ace * 255).to(torch.uint8).permute(1, 2, 0).numpy())


def test_jpeg_is_pil_default_quality_and_png_is_lossless(tmp_path):
    rng = np.random.default_rng(0)
    array = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
    save_image_atomic(array, tmp_path / "a.jpg")
    Image.fromarray(array).save(tmp_path / "b.jpg")  # PIL's defaults, as DiME's ImageSaver
    assert (tmp_path / "a.jpg").read_bytes() == (tmp_path / "b.jpg").read_bytes()
    save_image_atomic(torch.from_numpy(array).permute(2, 0, 1), tmp_path / "c.png")
    assert np.array_equal(np.asarray(Image.open(tmp_path / "c.png")), array)
    assert torch.allclose(load_image(tmp_path / "c.png"), torch.from_numpy(array).permute(2, 0, 1).float() / 255)
    with pytest.raises(TypeError, match="to_uint8"):
        save_image_atomic(torch.rand(3, 4, 4), tmp_path / "d.png")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.jpg", "b.jpg", "c.png"]


def test_failed_write_leaves_neither_temp_nor_target(tmp_path, monkeypatch):
    def broken_save(self, fp, *args, **kwargs):
        with open(fp, "wb") as f:
            f.write(b"half")
        raise OSError("disk full")

    monkeypatch.setattr(Image.Image, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_image_atomic(np.zeros((4, 4, 3), np.uint8), tmp_path / "x.jpg")
    assert list(tmp_path.iterdir()) == []


def test_missing_image_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothere.png"):
        load_image(tmp_path / "nothere.png")


def test_info_values_and_l1_match_a_reference(tmp_path):
    tree = OutputTree(tmp_path, "dime")
    tree.prepare()
    torch.manual_seed(3)
    x, cf = torch.rand(3, 8, 8) * 2 - 1, torch.rand(3, 8, 8) * 2.4 - 1.2
    values = tree.write_instance("0000005", original=x, cf=cf, noise=x, label=0, pred=0, target=1, cf_pred=1,
                                 info={"bkl": 0.125})
    x_u8 = np.floor((x.numpy() / 2 + 0.5) * 255)
    cf_u8 = np.floor(np.clip((cf.numpy() + 1) * 127.5, 0, 255))
    assert values["l_1"] == pytest.approx(np.abs(x_u8 - cf_u8).mean() / 255, abs=1e-6)
    info = read_info(tmp_path / "Results/dime/CC/CCF/Info/0000005.txt")
    assert info == {"label": 0, "pred": 0, "target": 1, "cf_pred": 1, "bkl": 0.125, "l_1": values["l_1"]}
    sm = np.asarray(Image.open(tmp_path / "Results/dime/CC/CCF/SM/0000005.jpg"))
    assert sm.shape == (8, 8, 3)


def test_resume_needs_every_image_and_the_info_file(tmp_path):
    tree = OutputTree(tmp_path, "dime")
    tree.prepare()
    for stem in ("0000000", "0000001", "0000002", "0000003", "0000004"):
        _write(tree, stem, 1, 1, 0, 0)
    (tmp_path / "Results/dime/CC/CCF/Noise/0000001.jpg").unlink()
    (tmp_path / "Results/dime/CC/CCF/SM/0000002.jpg").unlink()
    (tmp_path / "Original/Correct/0000003.jpg").unlink()
    (tmp_path / "Results/dime/CC/CCF/Info/0000004.txt").unlink()
    assert tree.completed_stems() == {"0000000"}
    assert OutputTree(tmp_path, "dime", ext="png").completed_stems() == set()  # other extension: nothing done


def test_rewrite_into_another_folder_leaves_no_stale_copy(tmp_path):
    tree = OutputTree(tmp_path, "dime")
    tree.prepare()
    _write(tree, "0000007", 1, 1, 0, 0)  # CC/CCF, Original/Correct
    _write(tree, "0000007", 0, 1, 0, 1)  # now IC/ICF, Original/Incorrect
    files = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("0000007.*"))
    assert files == ["Original/Incorrect/0000007.jpg"] + [f"Results/dime/IC/ICF/{leaf}/0000007.{ext}" for leaf, ext in
                                                         (("CF", "jpg"), ("Info", "txt"), ("Noise", "jpg"),
                                                          ("SM", "jpg"))]
    found = list(iter_instances(tmp_path, "dime", subsets=("IC/ICF",)))
    assert [f["stem"] for f in found] == ["0000007"]
    assert found[0]["original_path"].exists() and found[0]["cf_path"].exists() and found[0]["info"]["cf_pred"] == 1
    assert list(iter_instances(tmp_path, "dime", subsets=("CC/CCF",))) == []


def test_summary_file_has_exactly_the_upstream_layout(tmp_path):
    records = [{"label": 1, "pred": 1, "target": 0, "cf_pred": 0, "bkl": 0.25, "l_1": 0.5},
               {"label": 1, "pred": 1, "target": 0, "cf_pred": 1, "bkl": 0.75, "l_1": 0.25},
               {"label": 0, "pred": 1, "target": 0, "cf_pred": 0, "bkl": 0.5, "l_1": 0.125}]
    summary = yaml.safe_load(write_dime_summary(tmp_path / "summary.yaml", records).read_text())
    block = {"bkl", "l_1", "n"}
    assert set(summary) == block | {"FVA", "MNAC", "clean acc", "cf acc", "class-cor", "class-inc", "cf-cor", "cf-inc"}
    for name in ("class-cor", "class-inc"):
        assert set(summary[name]) == block | {"cf-cor", "cf-inc"}
        assert set(summary[name]["cf-cor"]) == set(summary[name]["cf-inc"]) == block
    assert set(summary["cf-cor"]) == set(summary["cf-inc"]) == block
    assert summary["clean acc"] == pytest.approx(100 * 2 / 3) and summary["cf acc"] == pytest.approx(2 / 3)
    assert summary["n"] == 3 and summary["bkl"] == pytest.approx(0.5) and summary["l_1"] == pytest.approx(0.875 / 3)
    assert summary["class-cor"]["cf-inc"] == {"bkl": 0.75, "l_1": 0.25, "n": 1}
    assert summary["class-inc"]["cf-inc"] == {"bkl": 0, "l_1": 0, "n": 0}  # empty group: 0, as upstream's mean()
    assert not list(tmp_path.glob(".*"))


def test_shared_tree_pairs_each_cf_with_its_methods_original(tmp_path):
    """DiME (.jpg) and ACE (.png) write their own copy of the same original into one tree's Original/."""
    dime = OutputTree(tmp_path, "dime", ext="jpg")
    ace = OutputTree(tmp_path, "ace/explanation", ext="png", info_format="ace")
    for tree in (dime, ace):
        tree.prepare()
        _write(tree, "0000003", 1, 1, 0, 0)
    assert {p.name for p in (tmp_path / "Original/Correct").iterdir()} == {"0000003.jpg", "0000003.png"}
    (ace_instance,) = iter_instances(tmp_path, "ace/explanation")
    (dime_instance,) = iter_instances(tmp_path, "dime")
    assert ace_instance["original_path"].name == "0000003.png"
    assert dime_instance["original_path"].name == "0000003.jpg"
