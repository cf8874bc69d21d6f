"""Reliability and safety of inputs (issue #20 items 4-6): corrupt dataset images stop the index step with one error
listing them all; atomically written files follow the umask; LPIPS-VGG and the CheXpert classifier are never read
with arbitrary unpickling."""

import argparse
import os
import shutil
import stat
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cfx.data.image_check import CorruptImagesError, bad_images_path, check_index_images
from cfx.data.layouts import build_layout_index
from cfx.data.synthetic import write_synthetic_celeba
from cfx.metrics import MetricContext, sigma_l
from cfx.models.chexpert import load_gcd_chexpert_classifier
from cfx.runtime.checkpoints import save_checkpoint_atomic
from cfx.runtime.download import ChecksumError, download, record_sha256, sha256_file
from tests.published_formats import random_state, torchvision_vgg16_shapes

# --- item 4: corrupt images are found at the index step -------------------------------------------------------------


@pytest.fixture(scope="module")
def celeba(tmp_path_factory):
    return write_synthetic_celeba(tmp_path_factory.mktemp("celeba"), n_identities=10, images_per_identity=3,
                                  image_size=32, seed=0, progress=False)


def test_corrupt_celeba_images_stop_the_index_with_one_error_naming_all(celeba, tmp_path):
    root = Path(shutil.copytree(celeba, tmp_path / "celeba"))
    truncated, garbage = root / "img_align_celeba" / "000004.jpg", root / "img_align_celeba" / "000017.jpg"
    data = truncated.read_bytes()
    truncated.write_bytes(data[: len(data) // 2])  # the header still parses: only a decode finds it
    garbage.write_bytes(b"\x00 not an image " * 40)
    out = tmp_path / "results" / "index.csv"
    with pytest.raises(CorruptImagesError) as caught:
        build_layout_index("celeba", root, out)  # what rule index_dataset runs
    message = str(caught.value)
    listing = bad_images_path(out)
    assert listing == tmp_path / "results" / "index.bad_images.txt"
    for needed in ("2 of the 30 images", str(truncated), str(garbage), "truncated", str(listing),
                   "Re-download or replace", "remove them from the dataset", f"{out} was not written"):
        assert needed in message, (needed, message)
    assert [line.split("\t")[0] for line in listing.read_text().splitlines()] == [str(truncated), str(garbage)]
    assert sorted(p.name for p in out.parent.iterdir()) == ["index.bad_images.txt"]  # no index, no half-written file
    truncated.write_bytes(data)
    shutil.copyfile(celeba / "img_align_celeba" / garbage.name, garbage)
    frame = build_layout_index("celeba", root, out)
    assert len(frame) == 30 and out.is_file() and not listing.exists()  # the stale list is gone


def test_every_layout_is_checked_grayscale_and_png_pass(tmp_path):
    """ImageNet val (any non-CelebA layout takes the same path): grayscale JPEGs (CheXpert's) and PNG bytes under a
    .JPEG name decode; an empty file does not."""
    root = tmp_path / "val"
    pixels = np.random.default_rng(0).integers(0, 255, (24, 24, 3), dtype=np.uint8)
    for number, wnid, mode, fmt in [(1, "n01440764", "RGB", "JPEG"), (2, "n01440764", "L", "JPEG"),
                                    (3, "n01443537", "RGB", "PNG")]:
        (root / wnid).mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).convert(mode).save(root / wnid / f"ILSVRC2012_val_{number:08d}.JPEG", format=fmt)
    empty = root / "n01443537" / "ILSVRC2012_val_00000004.JPEG"
    empty.write_bytes(b"")
    with pytest.raises(CorruptImagesError, match=r"1 of the 4 images(.|\n)*ILSVRC2012_val_00000004\.JPEG"):
        build_layout_index("imagenet_val", root, tmp_path / "index.csv")
    assert not (tmp_path / "index.csv").exists()
    empty.unlink()
    assert len(build_layout_index("imagenet_val", root, tmp_path / "index.csv")) == 3


def test_many_bad_images_message_shows_twenty_and_the_file_lists_all(tmp_path):
    paths = []
    for k in range(25):
        paths.append(tmp_path / f"bad{k:02d}.jpg")
        paths[-1].write_bytes(b"garbage")
    with pytest.raises(CorruptImagesError) as caught:
        check_index_images(paths, tmp_path / "index.csv", workers=2)
    message = str(caught.value)
    assert "25 of the 25 images" in message and "... and 5 more" in message
    assert "bad19.jpg" in message and "bad20.jpg" not in message
    assert len(bad_images_path(tmp_path / "index.csv").read_text().splitlines()) == 25


# --- item 5: files written through mkstemp follow the umask --------------------------------------------------------


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_downloaded_file_follows_umask(tmp_path, umask_022):
    source = tmp_path / "source.bin"
    source.write_bytes(b"weights" * 100)
    result = download(source.as_uri(), tmp_path / "shared" / "model.pt", sha256=sha256_file(source), progress=False)
    assert _mode(result.path) == 0o644
    lock = tmp_path / "shared" / "sha256.lock.yaml"
    record_sha256(lock, "model", result.sha256)
    assert _mode(lock) == 0o644
    os.umask(0o002)  # a group-shared folder
    again = download(source.as_uri(), tmp_path / "shared" / "again.pt", progress=False)
    assert _mode(again.path) == 0o664


def test_trainer_checkpoint_follows_umask(tmp_path, umask_022):
    path = save_checkpoint_atomic({"weight": torch.zeros(2)}, tmp_path / "ckpt" / "classifier.pt")
    assert _mode(path) == 0o644
    assert sorted(p.name for p in path.parent.iterdir()) == ["classifier.pt"]


# --- item 6: no weights_only=False anywhere on the LPIPS and CheXpert paths ---------------------------------------


@pytest.fixture
def weights_only_guard(monkeypatch):
    """Fail any torch.load without an explicit weights_only=True and any torch.hub download/loader call."""
    real_load, calls = torch.load, []

    def guarded_load(*args, **kwargs):
        calls.append(kwargs.get("weights_only"))
        if kwargs.get("weights_only") is not True:
            raise AssertionError(f"torch.load called with weights_only={kwargs.get('weights_only')!r}: {args[:1]}")
        return real_load(*args, **kwargs)

    def no_hub(*args, **kwargs):
        raise AssertionError(f"torch.hub.load_state_dict_from_url called: {args[:1]}")

    monkeypatch.setattr(torch, "load", guarded_load)
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_hub)
    return calls


def test_sigma_l_without_network_and_without_file_says_what_to_pass(tmp_path, monkeypatch, weights_only_guard):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    with pytest.raises(FileNotFoundError) as caught:
        sigma_l.compute_tree(tmp_path, "dime", MetricContext(seed_trees=[tmp_path]))
    message = str(caught.value)
    assert "\n" not in message
    for needed in ("--network lpips=lpips_vgg:PATH", "resources/checkpoints/torchvision_vgg16.pth",
                   str(tmp_path / "torch" / "hub" / "checkpoints" / "vgg16-397923af.pth")):
        assert needed in message, (needed, message)
    assert weights_only_guard == []


def test_sigma_l_without_network_reads_the_cached_file_weights_only(tmp_path, monkeypatch, weights_only_guard):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    cached = tmp_path / "torch" / "hub" / "checkpoints" / "vgg16-397923af.pth"
    cached.parent.mkdir(parents=True)
    state = random_state(torchvision_vgg16_shapes(with_classifier=False), seed=2)
    torch.save(state, cached)
    with pytest.raises(ChecksumError, match=r"sha256 prefix.*397923af"):  # not torchvision's file
        sigma_l.load_lpips(None)
    assert weights_only_guard == []
    monkeypatch.setattr(sigma_l, "VGG16_SHA256_PREFIX", sha256_file(cached)[:8])  # take this file for the real one
    net, stand_in = sigma_l.load_lpips(None)
    assert stand_in == "" and not net.training
    assert torch.equal(net.net.state_dict()["slice5.28.weight"], state["features.28.weight"])
    assert weights_only_guard == [True, True]  # the VGG-16 file and the package's linear heads


def test_chexpert_pickle_hint_warns_about_trust(tmp_path, weights_only_guard):
    path = tmp_path / "chexpert.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": argparse.Namespace(lr=0.1)}, path)
    with pytest.raises(ValueError) as caught:
        load_gcd_chexpert_classifier(path)
    message = str(caught.value)
    assert "only for a file from a source you trust (unpickling can run arbitrary code)" in message
    assert message.index("source you trust") < message.index("weights_only=False")
