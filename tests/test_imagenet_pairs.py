"""ImageNet class pairs: the torchvision ResNet-50 loader and its [−1,1] wrapper against a hand computation, the
selection of a pair experiment's images on an ``imagenet_val`` index, ACE and LDCE generation chunks that give each
image its class's target, and multiclass COUT with per-image source and target classes.

The ResNet-50 is random (torchvision's ``resnet50()`` at seed 0) and saved as the published
``resnet50-0676ba61.pth`` is: a plain state dict. Images are 32 px (crop 24 where LDCE's 224 crop applies) so that
everything runs on a CPU."""

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from torchvision.models import resnet50

from cfx.data.index_dataset import IndexDataset
from cfx.data.layouts import build_layout_index
from cfx.generate import experiment_images, generate_chunk
from cfx.io.images import load_image
from cfx.io.tree import OutputTree, read_info
from cfx.metrics import MetricContext, NetworkRef, compute_tree_metric
from cfx.metrics import cout as cout_metric
from cfx.metrics.networks import load_classifier_logits
from cfx.models.classifier_kinds import load_experiment_classifier
from cfx.models.imagenet_classifier import ImageNetClassifier, load_imagenet_classifier, load_torchvision_resnet50
from cfx.postprocess import postprocess_chunk
from tests.factories.datasets import fake_wnid, write_jpeg
from tests.factories.networks import ACE, DIFFUSION, FACE_FLAGS, save_unet, spy_on_prompts, tiny_class_ldm_config

MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
SIZE, CROP = 32, 24  # images of SIZE px; LDCE-style centre crop of CROP px: rows/columns 4..27
PAIR = {"340": 339, "339": 340}  # as the suite writes it (zebra <-> sorrel): string keys
# val numbers of the source classes' images, out of class order: the index (by val number) interleaves them
SOURCE_IMAGES = {339: (7, 3), 340: (5, 1)}
SIZES = {1: (40, 32), 3: (36, 44), 5: (32, 32), 7: (48, 36)}  # (width, height) per val number
EXPECTED_IDS = ["ILSVRC2012_val_00000003.JPEG", "ILSVRC2012_val_00000007.JPEG",  # class 339, then 340
                "ILSVRC2012_val_00000001.JPEG", "ILSVRC2012_val_00000005.JPEG"]
ADM_FLAGS = {**FACE_FLAGS, "image_size": SIZE}


def _hand_logits(net: torch.nn.Module, x: torch.Tensor, crop: int | None = None) -> torch.Tensor:
    """``resnet((crop((x + 1) / 2) − mean) / std)`` for [−1,1] images, the crop by slicing."""
    x01 = (x + 1) / 2
    if crop:
        top = (x01.shape[-1] - crop) // 2
        x01 = x01[..., top:top + crop, top:top + crop]
    with torch.no_grad():
        return net((x01 - MEAN) / STD)


@pytest.fixture(scope="module")
def resnet(tmp_path_factory):
    """(path, network): a random torchvision ResNet-50 in eval mode and its plain state dict on disk (~100 MB)."""
    torch.manual_seed(0)
    net = resnet50().eval()
    path = tmp_path_factory.mktemp("resnet") / "resnet50-0676ba61.pth"
    torch.save(net.state_dict(), path)
    return path, net


@pytest.fixture(scope="module")
def imagenet(tmp_path_factory):
    """(root, index csv, index frame): 1000 wnid folders; the source classes hold the SOURCE_IMAGES, every other
    folder one 8 px filler (an index only sees folders with images: all 1000 must have one)."""
    base = tmp_path_factory.mktemp("imagenet")
    root = base / "val"
    for k in range(1000):
        numbers = SOURCE_IMAGES.get(k, (1000 + k,))
        for number in numbers:
            width, height = SIZES.get(number, (8, 8))
            write_jpeg(root / fake_wnid(k) / f"ILSVRC2012_val_{number:08d}.JPEG", width, height, number)
    frame = build_layout_index("imagenet_val", root, base / "index.csv")
    return root, base / "index.csv", frame


# ---------------------------------------------------------------------------------------------------- loader


def test_resnet50_state_dict_loads_and_wrapper_equals_hand_computation(resnet):
    path, net = resnet
    x = torch.rand(3, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1)) * 2 - 1
    network = load_torchvision_resnet50(path)
    assert not network.training
    with torch.no_grad():  # the loaded network takes [0,1] and normalises itself
        torch.testing.assert_close(network((x + 1) / 2), _hand_logits(net, x), rtol=1e-5, atol=1e-5)
    for crop in (None, CROP):
        expected = _hand_logits(net, x, crop)
        wrapped = ImageNetClassifier(network, center_crop=crop)
        loaded = load_imagenet_classifier("torchvision_resnet50", path, center_crop=crop)
        via_suite = load_experiment_classifier({"kind": "torchvision_resnet50"}, path, {"class_targets": PAIR},
                                               center_crop=crop)
        for model in (wrapped, loaded, via_suite):
            with torch.no_grad():
                out = model(x)
            assert out.shape == (3, 1000)
            torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    # the crop changes the decision of this network on these images: the comparison above can tell them apart
    assert not torch.allclose(_hand_logits(net, x, CROP), _hand_logits(net, x), atol=1e-2)
    # the metric classifier (COUT) reads the whole image, all 1000 logits
    logits = load_classifier_logits(NetworkRef("classifier", "resnet", path, {"kind": "torchvision_resnet50"}), None)
    with torch.no_grad():
        torch.testing.assert_close(logits(x), _hand_logits(net, x), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="class_targets"):  # 1000 classes cannot answer a binary query
        load_experiment_classifier({"kind": "torchvision_resnet50"}, path, {"query_label": 31})


def test_resnet50_file_with_missing_or_renamed_key_names_the_file(resnet, tmp_path):
    path, net = resnet
    state = net.state_dict()
    missing = {k: v for k, v in state.items() if k != "fc.bias"}
    renamed = {("classifier.weight" if k == "fc.weight" else k): v for k, v in state.items()}
    for name, broken, keys in (("missing.pth", missing, ["fc.bias"]),
                               ("renamed.pth", renamed, ["fc.weight", "classifier.weight"])):
        file = tmp_path / name
        torch.save(broken, file)
        for load in (load_torchvision_resnet50, lambda p: load_imagenet_classifier("torchvision_resnet50", p)):
            with pytest.raises(ValueError) as err:
                load(file)
            assert str(file) in str(err.value)
            assert all(key in str(err.value) for key in keys), str(err.value)
        file.unlink()
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path / "absent.pth"))):
        load_torchvision_resnet50(tmp_path / "absent.pth")


# ---------------------------------------------------------------------------------------------------- selection


def test_pair_experiment_takes_source_classes_by_class_then_val_number(imagenet):
    _, _, frame = imagenet
    assert frame["wnid"].nunique() == 1000 and len(frame) == 998 + 4
    rows = frame.set_index("image_id")
    assert [int(rows.loc[i, "label"]) for i in EXPECTED_IDS] == [339, 339, 340, 340]
    # the index is in val-number order, which interleaves the two classes: class order is a real reordering
    in_index_order = [i for i in frame["image_id"] if i in EXPECTED_IDS]
    assert in_index_order != EXPECTED_IDS
    experiment = {"split": "val", "class_targets": PAIR}
    assert experiment_images(frame, experiment) == EXPECTED_IDS
    assert experiment_images(frame, {**experiment, "class_targets": {"339": 340, "340": 339}}) == EXPECTED_IDS
    assert experiment_images(frame, {**experiment, "max_images": 3}) == EXPECTED_IDS[:3]
    assert experiment_images(frame, {**experiment, "class_targets": {"340": 339}}) == EXPECTED_IDS[2:]
    assert len(experiment_images(frame, {"split": "val", "query_label": 0})) == len(frame)  # no pair: every image


def test_pair_experiment_needs_all_1000_classes_and_images_of_its_sources(imagenet, tmp_path):
    _, _, frame = imagenet
    experiment = {"split": "val", "class_targets": PAIR}
    # a root with only some class folders numbers its classes 0, 1, ...: not ImageNet's indices
    for k in (339, 340, 500):
        write_jpeg(tmp_path / "few" / fake_wnid(k) / f"ILSVRC2012_val_{k:08d}.JPEG", 8, 8, k)
    few = build_layout_index("imagenet_val", tmp_path / "few", tmp_path / "few.csv")
    assert sorted(few["label"]) == [0, 1, 2]
    for index in (few, pd.read_csv(tmp_path / "few.csv", dtype={"image_id": str})):
        with pytest.raises(ValueError, match="index has 3 class folders"):
            experiment_images(index, {**experiment, "class_targets": {"0": 1, "1": 0}})
    # a class without images is invisible to the index (an empty folder included): 999 classes
    with pytest.raises(ValueError, match="index has 999 class folders"):
        experiment_images(frame[frame["label"] != 339], experiment)
    # a source class that names no class (the suite schema allows any digits as a key)
    with pytest.raises(ValueError, match=r"no image of source classes \[1000\]"):
        experiment_images(frame, {**experiment, "class_targets": {"1000": 339, "339": 340}})


# ---------------------------------------------------------------------------------------------------- generation


def _written_infos(tree: Path, folder: str) -> dict[str, dict]:
    return {p.stem: read_info(p) for p in tree.glob(f"Results/{folder}/*/*/Info/*.txt")}


def _dataset_images(index_csv: Path, resize: str | None) -> torch.Tensor:
    dataset = IndexDataset(index_csv, "imagenet_val", split="val", image_size=SIZE, image_ids=EXPECTED_IDS,
                           resize=resize)
    return torch.stack([dataset[k][1] for k in range(len(dataset))])


def _check_pair_records(manifest: dict, infos: dict[str, dict]) -> None:
    """Every record: the source class's target, predictions among the 1000 classes, the Info file's values."""
    records = manifest["records"]
    assert [r["image_id"] for r in records] == EXPECTED_IDS
    assert [r["stem"] for r in records] == [f"{i:07d}" for i in range(4)]
    assert sorted(infos) == [r["stem"] for r in records]
    for record in records:
        assert record["target"] == PAIR[str(record["label"])]
        assert 0 <= record["pred"] < 1000 and 0 <= record["cf_pred"] < 1000
        assert {k: infos[record["stem"]][k] for k in ("label", "pred", "target", "cf_pred")} == \
               {k: record[k] for k in ("label", "pred", "target", "cf_pred")}
    assert [r["label"] for r in records] == [339, 339, 340, 340]


def test_ace_chunk_and_postprocessing_give_each_image_its_class_target(resnet, imagenet, tmp_path):
    path, net = resnet
    _, index_csv, _ = imagenet
    save_unet(ADM_FLAGS, tmp_path / "ddpm.pt")
    experiment = {"dataset": "imagenet", "split": "val", "image_size": SIZE, "class_targets": PAIR,
                  "classifier": "resnet", "ddpm": "ddpm"}
    model_specs = {"ddpm": {"flags": ADM_FLAGS, "diffusion": DIFFUSION}, "resnet": {"kind": "torchvision_resnet50"}}
    spec = {**ACE, "config": {**ACE["config"], "attack_iterations": 2}}
    checkpoints = {"classifier": path, "ddpm": tmp_path / "ddpm.pt"}
    tree = tmp_path / "cf"
    manifest = generate_chunk(
        experiment=experiment, method="ace", method_spec=spec, model_specs=model_specs, index_csv=index_csv,
        checkpoints=checkpoints, chunk=0, chunks=1, seed=4, tree_root=tree,
        manifest_path=tree / "chunks" / "ace" / "0-of-1.json", device="cpu", progress=False, layout="imagenet_val")
    assert manifest["n"] == manifest["n_expected_total"] == 4
    _check_pair_records(manifest, _written_infos(tree, "ace/pre-explanation"))
    # ACE feeds the classifier the whole (Resize + CenterCrop) image: its predictions are the uncropped ones
    expected_preds = _hand_logits(net, _dataset_images(index_csv, None)).argmax(1).tolist()
    assert [r["pred"] for r in manifest["records"]] == expected_preds
    post = postprocess_chunk(
        experiment=experiment, method_spec=spec, model_specs=model_specs, checkpoints=checkpoints,
        pre_manifest=tree / "chunks" / "ace" / "0-of-1.json", seed=4, tree_root=tree,
        manifest_path=tree / "chunks" / "ace_explanation" / "0-of-1.json", device="cpu", progress=False)
    assert post["n"] == 4
    _check_pair_records(post, _written_infos(tree, "ace/explanation"))
    for before, after in zip(manifest["records"], post["records"], strict=True):
        assert (after["label"], after["pred"], after["target"]) == (before["label"], before["pred"], before["target"])


def test_ldce_chunk_targets_classes_and_crops_for_the_classifier(resnet, imagenet, tmp_path, monkeypatch):
    from cfx.models.ldm import ClassEmbedder, build_ldm, save_ldm_checkpoint

    path, net = resnet
    _, index_csv, _ = imagenet
    config = tiny_class_ldm_config()
    torch.manual_seed(0)
    ldm = build_ldm(config)
    with torch.no_grad():
        for p in ldm.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    save_ldm_checkpoint(ldm, tmp_path / "ldm.ckpt")
    experiment = {"dataset": "imagenet", "split": "val", "image_size": SIZE, "class_targets": PAIR,
                  "classifier": "resnet", "ddpm": "ddpm"}
    spec = {"batch_size": 2, "ldm": "ldm", "conditioning": None, "image_resize": "stretch",
            "classifier_center_crop": CROP, "config": {"ddim_steps": 50, "strength": 0.06}}
    embedded = []  # the class labels the LDM's conditioner embeds, call by call
    forward = ClassEmbedder.forward
    monkeypatch.setattr(ClassEmbedder, "forward",
                        lambda self, labels: embedded.append(torch.as_tensor(labels).tolist()) or forward(self, labels))
    tree = tmp_path / "cf"
    manifest = generate_chunk(
        experiment=experiment, method="ldce", method_spec=spec,
        model_specs={"ldm": {"config": config}, "resnet": {"kind": "torchvision_resnet50"}}, index_csv=index_csv,
        checkpoints={"classifier": path, "ldm": tmp_path / "ldm.ckpt"}, chunk=0, chunks=1, seed=4, tree_root=tree,
        manifest_path=tree / "chunks" / "ldce" / "0-of-1.json", device="cpu", progress=False, layout="imagenet_val")
    assert manifest["n"] == 4
    _check_pair_records(manifest, _written_infos(tree, "ldce"))
    assert Image.open(next(tree.glob("Results/ldce/*/*/CF/0000000.png"))).size == (SIZE, SIZE)
    # conditioning None: the LDM is conditioned on each image's target class (batches of 2: the 339s, then the
    # 340s), the unconditional branch on the null class 1000
    assert [labels for labels in embedded if labels != [1000, 1000]] == [[340, 340], [339, 339]]
    assert [1000, 1000] in embedded
    # the classifier saw the centre crop of the stretched image: its predictions are the cropped ones
    images = _dataset_images(index_csv, "stretch")
    cropped = _hand_logits(net, images, CROP).argmax(1).tolist()
    assert cropped != _hand_logits(net, images).argmax(1).tolist()  # the crop decides some predictions here
    assert [r["pred"] for r in manifest["records"]] == cropped


def test_method_variants_resolve_to_their_method_with_their_own_folders():
    from cfx.methods import evaluated_results, generated_results, get_method, implementation, own_model_key, uses_ddpm

    assert implementation("ldce_txt") == "ldce" and get_method("ldce_txt").__name__ == "cfx.methods.ldce"
    assert generated_results("ldce_txt") == evaluated_results("ldce_txt") == "ldce_txt"
    assert own_model_key("ldce_txt") == "ldm" and not uses_ddpm("ldce_txt") and uses_ddpm("dime_fast")
    assert generated_results("ace") == "ace/pre-explanation"  # methods themselves keep their folders
    assert (generated_results("ace_l2"), evaluated_results("ace_l2")) == ("ace_l2/pre-explanation",
                                                                          "ace_l2/explanation")
    with pytest.raises(ValueError, match="cannot have variants yet"):  # GCD's direction rules are per name
        implementation("gcd_x")
    for name in ("nope", "nope_x", "ldcetxt"):
        with pytest.raises(KeyError, match="unknown method"):
            implementation(name)


def test_ldce_txt_variant_prompts_each_target_class_by_name(resnet, imagenet, tmp_path, monkeypatch):
    """ldce_txt, a variant of LDCE (cfx.methods.implementation): its own Results folder, and the LDM conditioned on
    "a photo of a {name}." of each image's target class, the names read from LDCE's imagenet_classnames.py
    (scripts/ldce.py). The tiny class-conditional LDM stands in for miniSD: a spy maps each prompt back to its
    class, so the test sees exactly which prompts generation asked for."""
    from cfx.models.ldm import build_ldm, save_ldm_checkpoint

    path, _ = resnet
    _, index_csv, _ = imagenet
    config = tiny_class_ldm_config()
    torch.manual_seed(0)
    save_ldm_checkpoint(build_ldm(config), tmp_path / "ldm.ckpt")
    names = [f"class{k}" for k in range(1000)]
    names[339], names[340] = "sorrel", "zebra"
    (tmp_path / "imagenet_classnames.py").write_text(f"name_map = {{}}\nopenai_imagenet_classes = {names!r}\n")
    prompted = spy_on_prompts(monkeypatch, names, "a photo of a ", ".")
    experiment = {"dataset": "imagenet", "split": "val", "image_size": SIZE, "class_targets": PAIR,
                  "classifier": "resnet"}
    spec = {"batch_size": 4, "ldm": "ldm", "class_prompt": "a photo of a {}.", "image_resize": "stretch",
            "classifier_center_crop": CROP, "config": {"ddim_steps": 50, "strength": 0.06}}
    tree = tmp_path / "cf"
    manifest = generate_chunk(
        experiment=experiment, method="ldce_txt", method_spec=spec,
        model_specs={"ldm": {"config": config}, "resnet": {"kind": "torchvision_resnet50"}}, index_csv=index_csv,
        checkpoints={"classifier": path, "ldm": tmp_path / "ldm.ckpt",
                     "class_names": tmp_path / "imagenet_classnames.py"},
        chunk=0, chunks=1, seed=4, tree_root=tree, manifest_path=tree / "chunks" / "ldce_txt" / "0-of-1.json",
        device="cpu", progress=False, layout="imagenet_val")
    _check_pair_records(manifest, _written_infos(tree, "ldce_txt"))
    assert not (tree / "Results" / "ldce").exists()
    assert prompted == [["a photo of a zebra."] * 2 + ["a photo of a sorrel."] * 2]
    with pytest.raises(FileNotFoundError, match="imagenet_classnames.py"):
        generate_chunk(
            experiment=experiment, method="ldce_txt", method_spec=spec,
            model_specs={"ldm": {"config": config}, "resnet": {"kind": "torchvision_resnet50"}},
            index_csv=index_csv, checkpoints={"classifier": path, "ldm": tmp_path / "ldm.ckpt"}, chunk=0, chunks=1,
            seed=5, tree_root=tmp_path / "cf2", manifest_path=tmp_path / "cf2" / "m.json", device="cpu",
            progress=False, layout="imagenet_val")


# ---------------------------------------------------------------------------------------------------- COUT


def test_multiclass_cout_scores_each_image_with_its_own_source_and_target(resnet, tmp_path):
    """Two correctly classified images with different (source, target) pairs in one batch, and one incorrectly
    classified image that COUT skips. The Info values are chosen for the test (this random network predicts class
    40 for almost everything); COUT reads them, not the network's decisions."""
    path, net = resnet
    tree = OutputTree(tmp_path / "tree", "ldce", ext="png")
    tree.prepare()
    g = torch.Generator().manual_seed(2)
    pairs = [(40, 440), (440, 40), (40, 881)]  # (source = label = pred, target); the third: label != pred
    stems = []
    for k, (source, target) in enumerate(pairs):
        original = torch.rand(3, SIZE, SIZE, generator=g) * 2 - 1
        smooth = torch.nn.functional.interpolate(torch.rand(1, 3, 4, 4, generator=g), size=SIZE, mode="bilinear")[0]
        cf = original.clone()
        cf[:, 8:24, 8:24] = smooth[:, 8:24, 8:24] * 2 - 1  # a changed square: the ranking of pixels matters
        label = source if k < 2 else 7
        tree.write_instance(tree.stem(k), original=original, cf=cf, noise=cf, label=label, pred=source,
                            target=target, cf_pred=target, info={})
        stems.append(tree.stem(k))
    ref = NetworkRef("classifier", "resnet", path, {"kind": "torchvision_resnet50"})
    result = compute_tree_metric("cout", tree_root=tmp_path / "tree", method="ldce",
                                 ctx=MetricContext(experiment={"class_targets": PAIR}, networks={"classifier": ref}))

    def classifier01(x01):
        return _hand_logits(net, x01 * 2 - 1)

    def alone(k, source, target):
        x = load_image(tmp_path / "tree" / "Original" / "Correct" / f"{stems[k]}.png")[None]
        x_cf = load_image(next((tmp_path / "tree" / "Results" / "ldce").glob(f"CC/*/CF/{stems[k]}.png")))[None]
        return cout_metric.cout_scores(x, x_cf, classifier01, query=source, target=target)

    each = [alone(k, *pairs[k]) for k in range(2)]
    scores = torch.cat([s for s, _, _ in each]).double()
    assert result["n"] == 2
    assert result["value"] == pytest.approx(float(scores.mean()), abs=1e-5)
    assert result["std"] == pytest.approx(float(scores.std()), abs=1e-5)
    np.testing.assert_allclose(result["c_curve"], ((each[0][1] + each[1][1]) / 2).numpy(), atol=2e-5)
    np.testing.assert_allclose(result["c_prime_curve"], ((each[0][2] + each[1][2]) / 2).numpy(), atol=2e-5)
    # scoring both images with the first one's pair gives another value: the per-image classes are what was read
    shared = float(torch.cat([alone(k, *pairs[0])[0] for k in range(2)]).double().mean())
    assert abs(shared - result["value"]) > 1e-3
