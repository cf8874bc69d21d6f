"""The index-driven dataset generation and GCD read (cfx.data.index_dataset): each layout's upstream transform
against hand-computed expectations on tiny roots, CelebA identical to CelebADataset, and generation chunks on fake
CelebA-HQ and BDD100k roots (BDD at ACE's 256x512) with tiny random networks."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from PIL import Image

from cfx.data import layouts
from cfx.data.celeba import build_index
from cfx.data.celeba_dataset import CelebADataset
from cfx.data.index_dataset import IndexDataset
from cfx.data.layouts import build_layout_index, image_shape
from cfx.data.synthetic import write_synthetic_celeba
from cfx.generate import generate_chunk
from cfx.models.classifier import DenseNetClassifier, save_celeba_classifier
from cfx.postprocess import postprocess_chunk
from cfx.suite import SuiteError, load_suite
from tests.factories.datasets import fake_celebahq
from tests.factories.networks import ACE, BDD_FLAGS, DIFFUSION, FACE_FLAGS, save_unet, to_tensor

ROOT = Path(__file__).resolve().parent.parent
ARCH = dict(growth_rate=8, block_config=[1, 1], num_init_features=16)
DIME = {"timestep_respacing": "20", "batch_size": 2,
        "config": {"start_step": 3, "classifier_scales": [8], "l_perc": 0.0}}


def _pattern(path: Path, width: int, height: int, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, format="PNG")  # lossless, whatever the suffix says


def _bdd_root(root: Path, sizes: list[tuple[int, int]]) -> Path:
    for k, (width, height) in enumerate(sizes):
        _pattern(root / "images" / "100k" / "val" / f"b{k}.jpg", width, height, 50 + k)
    return root


def _celebahq_index(tmp_path: Path, width: int, height: int) -> pd.DataFrame:
    """Six fake CelebA-HQ images of width x height (random patterns) in tmp_path/hq, indexed as tmp_path/index.csv."""
    fake_celebahq(tmp_path / "hq", n=6)
    for i in range(6):
        _pattern(tmp_path / "hq" / "CelebA-HQ-img" / f"{i}.jpg", width, height, i)
    return build_layout_index("celebahq", tmp_path / "hq", tmp_path / "index.csv")


def _bdd_generation_setup(tmp_path: Path) -> None:
    """Two BDD images (64x36, 48x30) indexed as tmp_path/index.csv, the BDD UNet ddpm.pt and a random classifier.pt."""
    _bdd_root(tmp_path / "bdd", [(64, 36), (48, 30)])
    build_layout_index("bdd100k", tmp_path / "bdd", tmp_path / "index.csv")
    save_unet(BDD_FLAGS, tmp_path / "ddpm.pt")
    torch.manual_seed(0)
    save_celeba_classifier(DenseNetClassifier(**ARCH), tmp_path / "classifier.pt")


# ---------------------------------------------------------------------------------------------------- transforms


def test_celeba_layout_gives_celeba_dataset_tensors(tmp_path):
    data = write_synthetic_celeba(tmp_path / "celeba", n_identities=8, images_per_identity=3, image_size=32, seed=0,
                                  progress=False)
    build_index(data, tmp_path / "index.csv")
    for split in ("train", "val"):
        for query in (31, None):
            for normalize in (True, False):
                old = CelebADataset(data, split=split, image_size=16, query_label=query, normalize=normalize)
                new = IndexDataset(tmp_path / "index.csv", "celeba", split=split, image_size=16, query_label=query,
                                   normalize=normalize)
                assert len(old) == len(new) > 0
                for k in range(len(old)):
                    (i, image, label), (j, image2, label2) = old[k], new[k]
                    assert i == j and torch.equal(image, image2)
                    assert torch.equal(label, label2) and label.dtype == label2.dtype
    ids = list(pd.read_csv(tmp_path / "index.csv", dtype={"image_id": str}).query("partition == 1")["image_id"])
    old = CelebADataset(data, split="val", image_size=16, query_label=39, image_ids=ids[::-1])
    new = IndexDataset(tmp_path / "index.csv", "celeba", split="val", image_size=[16, 16], query_label=39,
                       image_ids=ids[::-1])
    assert all(torch.equal(old[k][1], new[k][1]) and old[k][2] == new[k][2] for k in range(len(ids)))


def test_celebahq_resize_short_side_center_crop_and_test_split(tmp_path):
    root = tmp_path / "hq"
    index = _celebahq_index(tmp_path, 10, 6)  # 10 wide, 6 high: Resize(4) -> 6x4, CenterCrop(4) keeps columns 1..4
    dataset = IndexDataset(tmp_path / "index.csv", "celebahq", split="test", image_size=4, query_label=31)
    # the mapping sends HQ image i to CelebA file 101 + 7i, whose partition is (101 + 7i) % 3: test = 2 -> 0 and 3
    assert list(dataset.frame["image_id"]) == ["0.jpg", "3.jpg"]
    anno = [line.split() for line in (root / "CelebAMask-HQ-attribute-anno.txt").read_text().splitlines()[2:]]
    for k, i in enumerate((0, 3)):
        position, image, label = dataset[k]
        with Image.open(root / "CelebA-HQ-img" / f"{i}.jpg") as raw:
            expected = to_tensor(raw.convert("RGB").resize((6, 4), Image.BILINEAR).crop((1, 0, 5, 4)))
        assert position == k and image.shape == (3, 4, 4)
        torch.testing.assert_close(image, expected, atol=1e-6, rtol=0)
        assert label.dtype == torch.long and int(label) == int(anno[i][1 + 31] == "1")
    everything = IndexDataset(index, "celebahq", split="test", image_size=4)[1][2]
    assert everything.tolist() == [(int(v) + 1) / 2 for v in anno[3][1:]]  # no query: all 40 as 0/1


def test_bdd100k_bicubic_256x512_and_label_1(tmp_path):
    root = _bdd_root(tmp_path / "bdd", [(64, 36), (40, 30)])
    build_layout_index("bdd100k", root, tmp_path / "index.csv")
    for size in ([256, 512], 256):  # [H, W] as the paper suite states it; ACE's --image_size 256 = 256x512
        dataset = IndexDataset(tmp_path / "index.csv", "bdd100k", split="val", image_size=size, query_label=0)
        assert len(dataset) == 2
        for k in range(2):
            position, image, label = dataset[k]
            with Image.open(root / "images" / "100k" / "val" / f"b{k}.jpg") as raw:
                expected = to_tensor(raw.convert("RGB").resize((512, 256), Image.BICUBIC))  # no crop
            assert position == k and image.shape == (3, 256, 512)
            torch.testing.assert_close(image, expected, atol=1e-6, rtol=0)
            assert label.dtype == torch.long and int(label) == 1
    unnormalized = IndexDataset(tmp_path / "index.csv", "bdd100k", image_size=[8, 16], normalize=False)[0][1]
    assert unnormalized.shape == (3, 8, 16) and unnormalized.min() >= 0  # ACE's normalize=False: [0,1]
    assert len(IndexDataset(tmp_path / "index.csv", "bdd100k", split="test", image_size=8)) == 0


def test_imagenet_resizes_of_each_method_and_class_labels(tmp_path):
    """ImageNet val: ACE's ImageFolder Resize(s) + CenterCrop(s) by default, LDCE's Resize((s, s)) ("stretch"),
    SVCE's bicubic Resize((s, s)); the label is the class index of the sorted wnid folders."""
    root = tmp_path / "val"
    sizes = {"n01440764": (40, 30), "n01443537": (24, 36)}
    for number, (wnid, size) in enumerate(sizes.items(), start=1):
        folder = root / wnid
        folder.mkdir(parents=True)
        pixels = np.random.default_rng(number).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"ILSVRC2012_val_{number:08d}.JPEG", quality=95)
    build_layout_index("imagenet_val", root, tmp_path / "index.csv")
    references = {
        None: lambda im: _center_crop(im.resize(_short_side(im.size, 8), Image.BILINEAR), 8),
        "stretch": lambda im: im.resize((8, 8), Image.BILINEAR),
        "stretch_bicubic": lambda im: im.resize((8, 8), Image.BICUBIC),
    }
    for resize, reference in references.items():
        dataset = IndexDataset(tmp_path / "index.csv", "imagenet_val", split="val", image_size=8, resize=resize)
        assert len(dataset) == 2
        for k, wnid in enumerate(sizes):
            _, image, label = dataset[k]
            with Image.open(next((root / wnid).iterdir())) as raw:
                expected = to_tensor(reference(raw.convert("RGB")))
            assert image.shape == (3, 8, 8) and int(label) == k
            torch.testing.assert_close(image, expected, atol=1e-6, rtol=0)


def _short_side(size: tuple[int, int], side: int) -> tuple[int, int]:
    """torchvision Resize(int): the short side to ``side``, the long one scaled and truncated."""
    w, h = size
    return (side, int(side * h / w)) if w <= h else (int(side * w / h), side)


def _center_crop(image: Image.Image, side: int) -> Image.Image:
    w, h = image.size
    left, top = int(round((w - side) / 2.0)), int(round((h - side) / 2.0))
    return image.crop((left, top, left + side, top + side))


def test_image_shapes_and_errors(tmp_path, monkeypatch):
    assert image_shape("celeba", 128) == (128, 128) and image_shape("celebahq", [256, 256]) == (256, 256)
    assert image_shape("bdd100k", 256) == (256, 512) and image_shape("bdd100k", [64, 128]) == (64, 128)
    assert image_shape("chexpert", 224) == (224, 224)
    for layout in ("celebahq", "chexpert"):
        with pytest.raises(ValueError, match="not square"):
            image_shape(layout, [256, 512])
    for bad in ("256", [0, 4], [1, 2, 3], True):
        with pytest.raises(ValueError, match="image_size"):
            image_shape("bdd100k", bad)
    frame = pd.DataFrame({"image_id": ["a.jpg"], "path": [str(tmp_path / "a.jpg")], "partition": [1], "label": [1]})
    with pytest.raises(ValueError, match="lacks the columns"):  # CheXpert reads its 14 finding columns
        IndexDataset(frame, "chexpert", image_size=224)
    monkeypatch.setitem(layouts.NO_TRANSFORM_YET, "bdd100k", "a reason")  # a layout indexed but not yet readable
    with pytest.raises(NotImplementedError, match="layout 'bdd100k' yet: a reason"):
        IndexDataset(frame, "bdd100k", image_size=224)
    monkeypatch.undo()
    with pytest.raises(ValueError, match="image_resize 'crop'"):
        IndexDataset(frame, "imagenet_val", image_size=224, resize="crop")
    with pytest.raises(ValueError, match="lacks the columns"):
        IndexDataset(frame, "celebahq", image_size=4)
    with pytest.raises(KeyError, match="b.jpg"):
        IndexDataset(frame, "bdd100k", image_size=4, image_ids=["b.jpg"])
    with pytest.raises(FileNotFoundError, match="a.jpg"):
        IndexDataset(frame, "bdd100k", image_size=4)[0]


def test_suite_rejects_a_non_square_face_experiment(tmp_path):
    suite = yaml.safe_load((ROOT / "workflow" / "suites" / "paper.yaml").read_text())
    assert load_suite(ROOT / "workflow" / "suites" / "paper.yaml")["experiments"]["bdd100k_forward"]["image_size"] \
        == [256, 512]
    suite["experiments"]["celebahq_smile"]["image_size"] = [256, 512]
    (tmp_path / "suite.yaml").write_text(yaml.safe_dump(suite))
    with pytest.raises(SuiteError, match="celebahq_smile.*not square"):
        load_suite(tmp_path / "suite.yaml")


# ---------------------------------------------------------------------------------------------------- generation


def _generate(root: Path, tree: Path, *, experiment: dict, method: str, spec: dict, flags: dict, layout: str) -> dict:
    return generate_chunk(
        experiment=experiment, method=method, method_spec=spec,
        model_specs={"ddpm": {"flags": flags, "diffusion": DIFFUSION}, "clf": {"kind": "classifier", "arch": ARCH}},
        index_csv=root / "index.csv", checkpoints={"classifier": root / "classifier.pt", "ddpm": root / "ddpm.pt"},
        chunk=0, chunks=1, seed=4, tree_root=tree, manifest_path=tree / "chunks" / method / "0-of-1.json",
        device="cpu", progress=False, layout=layout,
    )


def _written(tree: Path, folder: str, stem: str) -> list[Path]:
    return sorted(tree.glob(f"Results/{folder}/*/*/*/{stem}.*"))


def test_generation_chunk_on_a_celebahq_root(tmp_path):
    _celebahq_index(tmp_path, 24, 20)
    save_unet(FACE_FLAGS, tmp_path / "ddpm.pt")
    torch.manual_seed(0)
    save_celeba_classifier(DenseNetClassifier(**ARCH), tmp_path / "classifier.pt")
    experiment = {"dataset": "celebahq", "split": "test", "image_size": 16, "query_label": 31, "classifier": "clf",
                  "ddpm": "ddpm"}
    for method, spec in (("dime", DIME), ("ace", ACE)):
        tree = tmp_path / f"cf_{method}"
        manifest = _generate(tmp_path, tree, experiment=experiment, method=method, spec=spec, flags=FACE_FLAGS,
                             layout="celebahq")
        assert manifest["n"] == manifest["n_expected_total"] == 2
        assert [r["image_id"] for r in manifest["records"]] == ["0.jpg", "3.jpg"]
        folder = "dime" if method == "dime" else "ace/pre-explanation"
        for stem in ("0000000", "0000001"):
            original = next(tree.glob(f"Original/*/{stem}.*"))
            assert Image.open(original).size == (16, 16)
            kinds = {p.parent.name for p in _written(tree, folder, stem)}
            assert {"CF", "Info"} <= kinds
        assert json.loads((tree / "chunks" / method / "0-of-1.json").read_text())["n"] == 2


def test_cli_generate_reads_the_suite_layout(tmp_path):
    """`cfx generate` takes the layout from the experiment's dataset: a BDD100k experiment gets (H, W) images."""
    from click.testing import CliRunner

    from cfx.cli import main

    _bdd_root(tmp_path / "bdd", [(64, 36)])
    build_layout_index("bdd100k", tmp_path / "bdd", tmp_path / "index.csv")
    (tmp_path / "ckpt").mkdir()
    save_unet(FACE_FLAGS, tmp_path / "ckpt" / "ddpm.pt")
    save_celeba_classifier(DenseNetClassifier(**ARCH), tmp_path / "ckpt" / "clf.pt")
    suite = {"name": "t", "datasets": {"drive": {"layout": "bdd100k"}},
             "models": {"ddpm": {"kind": "ddpm", "dataset": "drive", "image_size": 16, "flags": FACE_FLAGS,
                                 "diffusion": DIFFUSION},
                        "clf": {"kind": "classifier", "dataset": "drive", "image_size": 16, "arch": ARCH}},
             "methods": {"dime": DIME},
             "experiments": {"e": {"dataset": "drive", "split": "val", "image_size": 8, "query_label": 0,
                                   "classifier": "clf", "ddpm": "ddpm", "methods": ["dime"]}},
             "tables": {}}
    (tmp_path / "suite.yaml").write_text(yaml.safe_dump(suite))
    result = CliRunner().invoke(main, ["generate", "--suite", str(tmp_path / "suite.yaml"), "--experiment", "e",
                                       "--method", "dime", "--index", str(tmp_path / "index.csv"), "--checkpoints",
                                       str(tmp_path / "ckpt"), "--tree", str(tmp_path / "cf"), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert Image.open(next((tmp_path / "cf").glob("Original/*/0000000.jpg"))).size == (16, 8)  # int 8 = (8, 16)


def test_ace_chunk_and_postprocessing_on_a_bdd100k_root_at_256x512(tmp_path):
    _bdd_generation_setup(tmp_path)
    experiment = {"dataset": "bdd100k", "split": "val", "image_size": [256, 512], "query_label": 0,
                  "classifier": "clf", "ddpm": "ddpm", "max_images": 1}
    spec = {**ACE, "batch_size": 1, "config": {**ACE["config"], "attack_iterations": 1, "sampling_time_fraction": 0.05}}
    tree = tmp_path / "cf"
    manifest = _generate(tmp_path, tree, experiment=experiment, method="ace", spec=spec, flags=BDD_FLAGS,
                         layout="bdd100k")
    assert manifest["n"] == 1 and manifest["records"][0]["label"] == 1
    assert Image.open(next(tree.glob("Original/*/0000000.png"))).size == (512, 256)
    assert Image.open(next(tree.glob("Results/ace/pre-explanation/*/*/CF/0000000.png"))).size == (512, 256)
    post = postprocess_chunk(
        experiment=experiment, method_spec=spec,
        model_specs={"ddpm": {"flags": BDD_FLAGS, "diffusion": DIFFUSION}, "clf": {"kind": "classifier", "arch": ARCH}},
        checkpoints={"classifier": tmp_path / "classifier.pt", "ddpm": tmp_path / "ddpm.pt"},
        pre_manifest=tree / "chunks" / "ace" / "0-of-1.json", seed=4, tree_root=tree,
        manifest_path=tree / "chunks" / "ace_explanation" / "0-of-1.json", device="cpu", progress=False)
    assert post["n"] == 1
    assert Image.open(next(tree.glob("Results/ace/explanation/*/*/CF/0000000.png"))).size == (512, 256)


def test_dime_chunk_on_non_square_bdd100k_images(tmp_path):
    """DiME's path (guided sampling, respaced diffusion) on H != W inputs, at a size the CPU affords."""
    _bdd_generation_setup(tmp_path)
    experiment = {"dataset": "bdd100k", "split": "val", "image_size": [16, 32], "query_label": 0,
                  "classifier": "clf", "ddpm": "ddpm"}
    manifest = _generate(tmp_path, tmp_path / "cf", experiment=experiment, method="dime", spec=DIME, flags=BDD_FLAGS,
                         layout="bdd100k")
    assert manifest["n"] == 2
    assert Image.open(next((tmp_path / "cf").glob("Results/dime/*/*/CF/0000000.jpg"))).size == (32, 16)


def test_gcd_steps_read_a_celebahq_root(tmp_path):
    """GCD's direction search and BB-LIG read their images through the layout (tiny DiffAE of test_gcd_pipeline)."""
    from cfx.steps import gcd_bblig, gcd_direction
    from tests.factories.networks import GCD, MODELS, save_tiny_gcd_models

    _celebahq_index(tmp_path, 40, 36)
    save_tiny_gcd_models(tmp_path)
    experiment = {"dataset": "celebahq", "split": "test", "image_size": 32, "query_label": 31, "classifier": "plain"}
    checkpoints = {"classifier": tmp_path / "plain.pt", "diffae": tmp_path / "tiny_dae.ckpt"}
    record = gcd_direction(experiment=experiment, method_spec=GCD, model_specs=MODELS, index_csv=tmp_path / "index.csv",
                           checkpoints=checkpoints, out_path=tmp_path / "gcd" / "direction.pt", seed=0, device="cpu",
                           threads=1, layout="celebahq")
    assert record["source_image_id"] == "0.jpg"
    rows = gcd_bblig(experiment=experiment, method_spec=GCD, model_specs=MODELS, index_csv=tmp_path / "index.csv",
                     checkpoints={**checkpoints, "direction": tmp_path / "gcd" / "direction.pt"},
                     out_dir=tmp_path / "bblig", n_images=2, device="cpu", threads=1, layout="celebahq")
    assert [r["image_id"] for r in rows] == ["0.jpg", "3.jpg"]
