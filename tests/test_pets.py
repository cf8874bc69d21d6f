"""LDCE's Oxford-IIIT Pets table (table9): the ``oxford_pets`` layout against torchvision's ``OxfordIIITPet`` on a
generated stand-in, LDCE's per-image Pets targets (``image_targets: ldce_pets``), the zero-shot OpenCLIP ViT-B-32
classifier (published key layout, strict loading, 100·cos against a hand computation) and an LDCE-txt chunk that
prompts each image's target by its Pets name. The stand-in JSON files have upstream's format, not its content."""

import json
from pathlib import Path

import pandas as pd
import pytest
import torch
from PIL import Image

from cfx.data.layouts import DatasetLayoutError, build_layout_index
from tests.factories.datasets import PETS_LINES, fake_pets

PET_NAMES = ["abyssinian", "american bulldog", "american pit bull terrier", "basset hound", "beagle", "bengal",
             *[f"breed {k}" for k in range(6, 36)], "yorkshire terrier"]
# per test image, 5 classes (the target is the first), as pets_closest_indices.json
CLOSEST = [[20, 27, 9, 11, 5], [27, 33, 10, 32, 9], [9, 27, 2, 5, 20], [33, 27, 10, 9, 25], [32, 6, 20, 5, 27],
           [3, 6, 20, 5, 27]]


def write_pets_resources(folder: Path) -> tuple[Path, Path]:
    """Stand-ins of pets_closest_indices.json and pets_idx_to_label.json in upstream's format (keys "0".."n-1")."""
    folder.mkdir(parents=True, exist_ok=True)
    closest, labels = folder / "pets_closest_indices.json", folder / "pets_idx_to_label.json"
    closest.write_text(json.dumps({str(k): v for k, v in enumerate(CLOSEST)}, indent=4))
    labels.write_text(json.dumps({str(k): v for k, v in enumerate(PET_NAMES)}, indent=4))
    return closest, labels


# ------------------------------------------------------------------------------------------------------ layout


def test_pets_index_follows_torchvisions_test_split(tmp_path):
    from torchvision.datasets import OxfordIIITPet

    root = fake_pets(tmp_path / "pets")
    frame = build_layout_index("oxford_pets", root, tmp_path / "index.csv")
    written = pd.read_csv(tmp_path / "index.csv")
    reference = OxfordIIITPet(root, split="test", target_types="category", download=False)
    assert [Path(p).name for p in written["path"]] == [p.name for p in reference._images]
    assert list(written["label"]) == list(reference._labels) == [0, 1, 0, 36, 5, 4]
    assert list(written["image_id"]) == [f"{i}.jpg" for i, _, _ in PETS_LINES]
    assert set(written["partition"]) == {2} and list(written["species"]) == [0, 1, 0, 1, 0, 1]
    assert list(frame["breed"])[:2] == ["Abyssinian", "american_bulldog"]
    # the oxford-iiit-pet folder itself is accepted as the root too
    again = build_layout_index("oxford_pets", root / "oxford-iiit-pet", tmp_path / "again.csv")
    assert list(again["path"]) == list(frame["path"])


def test_pets_images_read_as_ldce_stretches_them(tmp_path):
    from cfx.data.index_dataset import IndexDataset

    root = fake_pets(tmp_path / "pets")
    build_layout_index("oxford_pets", root, tmp_path / "index.csv")
    dataset = IndexDataset(tmp_path / "index.csv", "oxford_pets", split="test", image_size=16)
    i, image, label = dataset[2]
    assert image.shape == (3, 16, 16) and int(label) == 0  # grayscale file, RGB tensor; Resize((16, 16)), no crop
    source = Image.open(root / "oxford-iiit-pet" / "images" / "Abyssinian_204.jpg").convert("RGB")
    from torchvision import transforms

    expected = transforms.ToTensor()(transforms.Resize((16, 16))(source)) * 2 - 1
    assert torch.allclose(image, expected, atol=1e-6)


@pytest.mark.parametrize("missing", ["annotations/test.txt", "images"])
def test_pets_missing_files_say_what_to_download(tmp_path, missing):
    import shutil

    root = fake_pets(tmp_path / "pets")
    target = root / "oxford-iiit-pet" / missing
    shutil.rmtree(target) if target.is_dir() else target.unlink()
    with pytest.raises(DatasetLayoutError, match="robots.ox.ac.uk/~vgg/data/pets") as error:
        build_layout_index("oxford_pets", root, tmp_path / "index.csv", key="oxford_pets")
    assert "OxfordIIITPet" in str(error.value) and "data_roots: {oxford_pets:" in str(error.value)


def test_pets_missing_image_or_bad_line_is_named(tmp_path):
    root = fake_pets(tmp_path / "pets")
    (root / "oxford-iiit-pet" / "images" / "Bengal_105.jpg").unlink()
    with pytest.raises(DatasetLayoutError, match="Bengal_105.jpg"):
        build_layout_index("oxford_pets", root, tmp_path / "index.csv")
    (root / "oxford-iiit-pet" / "annotations" / "test.txt").write_text("Abyssinian_201 1 1\n")
    with pytest.raises(DatasetLayoutError, match="test.txt:1"):
        build_layout_index("oxford_pets", root, tmp_path / "index.csv")
    with pytest.raises(DatasetLayoutError, match="does not exist"):
        build_layout_index("oxford_pets", tmp_path / "nowhere", tmp_path / "index.csv")


# ----------------------------------------------------------------------------------------------------- targets


def test_pets_targets_are_the_first_closest_class_at_the_test_position(tmp_path):
    from cfx.data.ldce_targets import LDCE_PETS_FILES, closest_target, read_class_names, read_closest_indices
    from cfx.generate import experiment_images, experiment_targets

    closest_file, labels_file = write_pets_resources(tmp_path / "res")
    assert read_class_names(labels_file) == PET_NAMES
    closest = read_closest_indices(closest_file)
    assert [closest_target(k, closest) for k in range(len(CLOSEST))] == [c[0] for c in CLOSEST]
    with pytest.raises(IndexError, match="outside the target list"):
        closest_target(len(CLOSEST), closest)
    # the pinned upstream files (lmb-freiburg/ldce at 6519597) are named with their digests
    assert set(LDCE_PETS_FILES) == {"pets_closest_indices.json", "pets_idx_to_label.json"}
    assert all("65195978cf84ac56a492fa4f93bc14e42d304cb3/data/" in url and len(sha) == 64
               for url, sha in LDCE_PETS_FILES.values())
    root = fake_pets(tmp_path / "pets")
    index = build_layout_index("oxford_pets", root, tmp_path / "index.csv")
    experiment = {"dataset": "pets", "split": "test", "image_size": 32, "image_targets": "ldce_pets"}
    image_ids = experiment_images(index, experiment)
    assert image_ids == [f"{i}.jpg" for i, _, _ in PETS_LINES]  # test.txt's order, nothing re-ordered
    chunk = image_ids[1::2]
    assert experiment_targets(index, experiment, chunk, closest_file) == {
        image_id: CLOSEST[2 * k + 1][0] for k, image_id in enumerate(chunk)}
    # a list for another number of test images than the index holds is refused
    short = tmp_path / "short.json"
    short.write_text(json.dumps({str(k): v for k, v in enumerate(CLOSEST[:-1])}))
    with pytest.raises(ValueError, match="5 test images"):
        experiment_targets(index, experiment, chunk, short)
    with pytest.raises(FileNotFoundError, match="pets_closest_indices.json"):
        experiment_targets(index, experiment, chunk, tmp_path / "absent.json")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"0": [40]}))
    with pytest.raises(ValueError, match="image 0"):
        read_closest_indices(bad)


# -------------------------------------------------------------------------------------------------- classifier

# open_clip's ViT-B-32 at toy widths (24 px inputs, 8 px patches) with the real tokenizer's context and vocabulary
TINY_CLIP = {"embed_dim": 16, "vision_cfg": {"image_size": 24, "layers": 1, "width": 32, "head_width": 16,
                                             "patch_size": 8},
             "text_cfg": {"width": 32, "heads": 2, "layers": 1}}


def _hand_logits(model, images: torch.Tensor, prompts: list[str], crop: int) -> torch.Tensor:
    """100 · cos(image, text) computed step by step: [−1,1] → [0,1], centre crop by slicing, CLIP mean/std."""
    import open_clip

    mean = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(1, 3, 1, 1)
    std = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(1, 3, 1, 1)
    x01 = (images + 1) / 2
    top, left = (x01.shape[-2] - crop) // 2, (x01.shape[-1] - crop) // 2
    x01 = x01[..., top:top + crop, left:left + crop]
    with torch.no_grad():
        image = model.encode_image((x01 - mean) / std)
        text = model.encode_text(open_clip.tokenize(prompts))
    image = image / image.norm(dim=-1, keepdim=True)
    text = text / text.norm(dim=-1, keepdim=True)
    return 100.0 * image @ text.T


def test_vit_b32_published_layout_loads_strictly_and_gives_100_cos(tmp_path):
    """The full ViT-B-32 (random weights, open_clip's own constructor, as the laion2b_s34b_b79k file is laid out)
    saved as a plain state dict loads back strictly; its logits are 100·cos with the 37 Pets prompts."""
    import open_clip

    from cfx.models.openclip_classifier import PETS_PROMPT, load_zero_shot_classifier

    torch.manual_seed(0)
    reference = open_clip.create_model("ViT-B-32", pretrained=None).eval()
    state = reference.state_dict()
    assert {"visual.conv1.weight", "visual.proj", "text_projection", "token_embedding.weight",
            "positional_embedding", "logit_scale", "ln_final.weight"} <= set(state)
    path = tmp_path / "open_clip_pytorch_model.bin"
    torch.save(state, path)
    classifier = load_zero_shot_classifier(path, PET_NAMES, PETS_PROMPT)
    assert classifier.center_crop == 224 and classifier.text_features.shape == (37, 512)
    images = torch.rand(2, 3, 256, 256) * 2 - 1
    with torch.no_grad():
        logits = classifier(images)
    expected = _hand_logits(reference, images, [f"a photo of a {n}, a type of pet." for n in PET_NAMES], 224)
    assert logits.shape == (2, 37)
    assert torch.allclose(logits, expected, atol=1e-3)
    # open_clip's own loader reshapes a one-element logit_scale; so does this one (nothing else is converted)
    torch.save({"state_dict": {**state, "logit_scale": state["logit_scale"].reshape(1)}}, tmp_path / "wrapped.bin")
    with torch.no_grad():
        assert torch.allclose(load_zero_shot_classifier(tmp_path / "wrapped.bin", PET_NAMES)(images), logits)
    # a renamed key and a missing one are errors naming the file
    del state["logit_scale"]
    state["visual.proj_renamed"] = state.pop("visual.proj")
    torch.save(state, tmp_path / "broken.bin")
    with pytest.raises(ValueError, match="broken.bin") as error:
        load_zero_shot_classifier(tmp_path / "broken.bin", PET_NAMES)
    assert "visual.proj" in str(error.value) and "logit_scale" in str(error.value)


def _tiny_clip_file(tmp_path: Path) -> tuple[Path, torch.nn.Module]:
    from cfx.models.openclip_classifier import build_openclip

    torch.manual_seed(1)
    model = build_openclip(TINY_CLIP)
    path = tmp_path / "tiny_clip.bin"
    torch.save(model.state_dict(), path)
    return path, model


def test_zero_shot_kind_loads_for_generation_and_cout(tmp_path):
    from cfx.metrics import NetworkRef
    from cfx.metrics.networks import load_classifier_logits
    from cfx.models.classifier_kinds import load_experiment_classifier

    path, model = _tiny_clip_file(tmp_path)
    _, labels_file = write_pets_resources(tmp_path / "res")
    spec = {"kind": "openclip_zero_shot", "class_names": str(labels_file), "arch": TINY_CLIP}
    experiment = {"image_targets": "ldce_pets"}
    classifier = load_experiment_classifier(spec, path, experiment)
    images = torch.rand(3, 3, 32, 32) * 2 - 1
    expected = _hand_logits(model, images, [f"a photo of a {n}, a type of pet." for n in PET_NAMES], 24)
    with torch.no_grad():
        assert torch.allclose(classifier(images), expected, atol=1e-4)
    ref = NetworkRef(role="classifier", name="clip", path=path, spec=spec)
    assert torch.allclose(load_classifier_logits(ref, None)(images), expected, atol=1e-4)
    with pytest.raises(ValueError, match="multi-class"):
        load_experiment_classifier(spec, path, {"query_label": 31})
    with pytest.raises(ValueError, match="classifier_center_crop 20"):
        load_experiment_classifier(spec, path, experiment, center_crop=20)
    with pytest.raises(ValueError, match="class_names"):
        load_experiment_classifier({"kind": "openclip_zero_shot", "arch": TINY_CLIP}, path, experiment)


# -------------------------------------------------------------------------------------------------- generation


def test_ldce_txt_chunk_prompts_each_pets_target_by_name(tmp_path, monkeypatch):
    """LDCE-txt on the Pets stand-in: each image's target is its closest-class entry, the LDM is prompted "a photo of
    a {name}, a type of pet." with the target's name, and the zero-shot classifier's predictions are those of the
    stretched 32² image cropped to the vision tower's 24². A tiny class-conditional LDM stands in for miniSD: a spy
    maps each prompt back to its class."""
    from cfx.generate import generate_chunk
    from cfx.models.ldm import build_ldm, save_ldm_checkpoint
    from tests.factories.networks import spy_on_prompts, tiny_class_ldm_config

    root = fake_pets(tmp_path / "pets")
    index_csv = tmp_path / "index.csv"
    build_layout_index("oxford_pets", root, index_csv)
    closest_file, labels_file = write_pets_resources(tmp_path / "res")
    clip_path, clip_model = _tiny_clip_file(tmp_path)
    config = tiny_class_ldm_config()
    torch.manual_seed(0)
    save_ldm_checkpoint(build_ldm(config), tmp_path / "ldm.ckpt")
    prefix, suffix = "a photo of a ", ", a type of pet."
    prompted = spy_on_prompts(monkeypatch, PET_NAMES, prefix, suffix)
    experiment = {"dataset": "pets", "split": "test", "image_size": 32, "image_targets": "ldce_pets",
                  "classifier": "clip"}
    spec = {"batch_size": 3, "ldm": "ldm", "class_prompt": prefix + "{}" + suffix, "class_names": str(labels_file),
            "config": {"ddim_steps": 50, "strength": 0.06}}
    clip_spec = {"kind": "openclip_zero_shot", "class_names": str(labels_file), "arch": TINY_CLIP}
    tree = tmp_path / "cf"
    manifest = generate_chunk(
        experiment=experiment, method="ldce_txt", method_spec=spec,
        model_specs={"ldm": {"config": config}, "clip": clip_spec}, index_csv=index_csv,
        checkpoints={"classifier": clip_path, "ldm": tmp_path / "ldm.ckpt", "class_names": labels_file},
        chunk=0, chunks=1, seed=4, tree_root=tree, manifest_path=tree / "chunks" / "ldce_txt" / "0-of-1.json",
        device="cpu", progress=False, layout="oxford_pets", targets_file=closest_file)
    assert manifest["n"] == len(PETS_LINES)
    records = manifest["records"]
    assert [r["target"] for r in records] == [c[0] for c in CLOSEST]
    assert [r["label"] for r in records] == [cls - 1 for _, cls, _ in PETS_LINES]
    assert prompted == [[f"{prefix}{PET_NAMES[c[0]]}{suffix}" for c in CLOSEST[:3]],
                        [f"{prefix}{PET_NAMES[c[0]]}{suffix}" for c in CLOSEST[3:]]]
    from cfx.data.index_dataset import IndexDataset

    dataset = IndexDataset(index_csv, "oxford_pets", split="test", image_size=32)
    images = torch.stack([dataset[k][1] for k in range(len(dataset))])
    preds = _hand_logits(clip_model, images, [f"{prefix}{n}{suffix}" for n in PET_NAMES], 24).argmax(1).tolist()
    assert [r["pred"] for r in records] == preds
    assert Image.open(next(tree.glob("Results/ldce_txt/*/*/CF/0000000.png"))).size == (32, 32)
