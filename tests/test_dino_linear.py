"""LDCE's Flowers-102 classifier (cfx.models.dino_linear): DINO ViT backbone against timm's ViT, the weight-file
layouts (DINO's published backbone and training checkpoint, LDCE's and DINO eval_linear's heads), the classifier's
preprocessing and gradients, and the head trainer on a tiny generated dataset. Tiny random networks throughout."""

import argparse
import json
import math
from functools import partial

import pandas as pd
import pytest
import torch
import torchvision.transforms.functional as TF
from PIL import Image
from torch import nn

from cfx.models.dino_linear import (
    DinoLinearClassifier,
    LinearHead,
    load_dino_backbone,
    load_dino_linear_classifier,
    load_linear_head,
    random_resized_crop_box,
    train_dino_linear_head,
)
from tests.factories.networks import dino_state

IMAGENET_MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
IMAGENET_STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


def timm_vit(state: dict, embed: int, depth: int, heads: int):
    from timm.models.vision_transformer import VisionTransformer

    model = VisionTransformer(img_size=224, patch_size=16, embed_dim=embed, depth=depth, num_heads=heads, mlp_ratio=4,
                              qkv_bias=True, norm_layer=partial(nn.LayerNorm, eps=1e-6), num_classes=0)
    extra = set(model.state_dict()) - set(state)
    assert not set(state) - set(model.state_dict())
    missing, unexpected = model.load_state_dict(state, strict=not extra)
    assert set(missing) == extra and not unexpected
    return model.eval()


@pytest.fixture(scope="module")
def backbone_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("dino") / "dino_tiny_pretrain.pth"
    state = dino_state()
    torch.save(state, path)
    return path, state


@pytest.mark.parametrize("embed,depth", [(64, 2), (128, 1)])
def test_backbone_matches_timm_vit(tmp_path, embed, depth):
    state = dino_state(embed=embed, depth=depth, seed=embed)
    torch.save(state, tmp_path / "w.pth")
    ours = load_dino_backbone(tmp_path / "w.pth")
    heads = embed // 64
    assert (ours.embed_dim, ours.depth, ours.patch_size, ours.img_size, ours.num_heads, ours.mlp_hidden) == (
        embed, depth, 16, 224, heads, 4 * embed)
    assert not ours.training
    reference = timm_vit(state, embed, depth, heads)
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        cls = ours(x)
        assert cls.shape == (2, embed)
        torch.testing.assert_close(cls, reference(x), atol=1e-5, rtol=1e-5)
        expected = reference.forward_intermediates(x, indices=depth, norm=True, output_fmt="NLC",
                                                   return_prefix_tokens=True, intermediates_only=True)
        layers = ours.get_intermediate_layers(x, depth)
        assert len(layers) == depth
        for got, (patches, prefix) in zip(layers, expected, strict=True):
            assert got.shape == (2, 197, embed)
            torch.testing.assert_close(got, torch.cat([prefix, patches], dim=1), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(ours.cls_features(x, depth), torch.cat([y[:, 0] for y in layers], dim=-1))
        torch.testing.assert_close(ours.get_intermediate_layers(x, 1)[0][:, 0], cls)  # n=1 is forward()
        assert ours.cls_features(x, 1).shape == (2, embed)
    assert not cls.isnan().any() and cls.std() > 0.1  # the random weights give non-degenerate features


def test_backbone_from_dino_training_checkpoint(tmp_path, backbone_file):
    path, state = backbone_file
    dino_head = {"head.mlp.0.weight": torch.randn(32, 64), "head.last_layer.weight_g": torch.ones(16, 1),
                 "head.last_layer.weight_v": torch.randn(16, 32)}
    checkpoint = {"teacher": {**{"backbone." + k: v for k, v in state.items()}, **dino_head},
                  "student": {**{"module.backbone." + k: v + 1 for k, v in state.items()},
                              **{"module." + k: v for k, v in dino_head.items()}},
                  "optimizer": {"state": {}, "param_groups": []}, "epoch": 100,
                  "args": argparse.Namespace(arch="vit_small", patch_size=8, lr=0.0005), "dino_loss": {}}
    torch.save(checkpoint, tmp_path / "full.pth")
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(load_dino_backbone(tmp_path / "full.pth")(x), load_dino_backbone(path)(x))


def test_backbone_rejects_wrong_files_and_sizes(tmp_path, backbone_file):
    path, state = backbone_file
    broken = {k: v for k, v in state.items() if k != "blocks.1.attn.proj.bias"}
    torch.save(broken, tmp_path / "broken.pth")
    with pytest.raises(ValueError, match=r"broken\.pth.*blocks\.1\.attn\.proj\.bias"):
        load_dino_backbone(tmp_path / "broken.pth")
    torch.save({"model": {"conv1.weight": torch.zeros(1)}}, tmp_path / "resnet.pth")
    with pytest.raises(ValueError, match=r"resnet\.pth.*dino_deitsmall8_pretrain\.pth"):
        load_dino_backbone(tmp_path / "resnet.pth")
    torch.save(torch.zeros(3), tmp_path / "tensor.pth")
    with pytest.raises(ValueError, match=r"tensor\.pth.*dino_deitsmall8_pretrain\.pth"):
        load_dino_backbone(tmp_path / "tensor.pth")
    model = load_dino_backbone(path)
    with pytest.raises(ValueError, match="224"):
        model(torch.zeros(1, 3, 256, 256))
    with pytest.raises(ValueError, match="224"):
        model.get_intermediate_layers(torch.zeros(1, 3, 192, 192), 1)


def test_linear_head_formats(tmp_path):
    torch.manual_seed(0)
    head = LinearHead(128, 5)
    assert set(head.state_dict()) == {"linear.weight", "linear.bias"}
    assert head.linear.bias.abs().max() == 0 and 0.005 < head.linear.weight.std() < 0.015  # N(0, 0.01²), bias 0
    plain = {k: v.clone() for k, v in head.state_dict().items()}
    torch.save(plain, tmp_path / "ldce.pth")
    dino = {"epoch": 100, "best_acc": 91.5, "optimizer": {"state": {}, "param_groups": [{"lr": 0.0}]},
            "scheduler": {"T_max": 100, "eta_min": 0, "base_lrs": [0.0005]},
            "state_dict": {"module." + k: v for k, v in plain.items()}}
    torch.save(dino, tmp_path / "checkpoint.pth.tar")
    x = torch.randn(3, 2, 64)  # flattened to (3, 128)
    for name in ("ldce.pth", "checkpoint.pth.tar"):
        loaded = load_linear_head(tmp_path / name, 128, 5)
        assert not loaded.training
        torch.testing.assert_close(loaded(x), x.reshape(3, -1) @ plain["linear.weight"].T + plain["linear.bias"])
    with pytest.raises(ValueError, match=r"ldce\.pth.*\(102, 128\)"):
        load_linear_head(tmp_path / "ldce.pth", 128, 102)


def test_classifier_equals_hand_computation_and_has_input_gradients(tmp_path, backbone_file):
    path, state = backbone_file
    g = torch.Generator().manual_seed(3)
    for n_last_blocks in (1, 2):
        weight, bias = 0.1 * torch.randn(7, 64 * n_last_blocks, generator=g), torch.randn(7, generator=g)
        torch.save({"linear.weight": weight, "linear.bias": bias}, tmp_path / "head.pth")
        model = load_dino_linear_classifier(tmp_path / "head.pth", path, n_last_blocks=n_last_blocks, num_classes=7)
        assert isinstance(model, DinoLinearClassifier) and not model.training
        x = torch.rand(2, 3, 256, 256, generator=g) * 2 - 1
        reference = timm_vit(state, 64, 2, 1)
        with torch.no_grad():
            crop = ((x[:, :, 16:240, 16:240] + 1) / 2 - IMAGENET_MEAN) / IMAGENET_STD
            layers = reference.forward_intermediates(crop, indices=n_last_blocks, norm=True, output_fmt="NLC",
                                                     return_prefix_tokens=True, intermediates_only=True)
            features = torch.cat([prefix[:, 0] for _, prefix in layers], dim=-1)
            torch.testing.assert_close(model(x), features @ weight.T + bias, atol=1e-5, rtol=1e-5)
    x = x.clone().requires_grad_(True)
    model(x)[:, 2].sum().backward()
    grad = x.grad.abs()
    assert grad[:, :, 16:240, 16:240].sum() > 0  # LDCE's guidance backpropagates through the classifier
    assert grad[:, :, :16].sum() == 0 and grad[:, :, :, 240:].sum() == 0  # the border is cropped away
    assert all(p.grad is None for p in model.parameters())


def test_random_resized_crop_box_stays_in_torchvision_ranges():
    g = torch.Generator().manual_seed(0)
    for width, height in [(64, 64), (500, 375), (40, 300), (1000, 20)]:
        for _ in range(200):
            top, left, h, w = random_resized_crop_box(width, height, torch.rand(40, generator=g, dtype=torch.float64))
            assert 0 <= top <= height - h and 0 <= left <= width - w and h > 0 and w > 0
    # all ten attempts too large → torchvision's fallback: the central crop clamped to the 3/4..4/3 aspect ratio
    too_large = torch.tensor([0.999999, 0.999999, 0.0, 0.0] * 10, dtype=torch.float64)
    assert random_resized_crop_box(1000, 20, too_large) == (0, (1000 - 27) // 2, 20, 27)
    assert random_resized_crop_box(64, 64, torch.tensor([0.5, 0.5, 0.0, 0.999] * 10, dtype=torch.float64)) == (
        0, 64 - 47, 47, 47)  # area 0.54·64², ratio 1 → 47², top row, rightmost left


def test_training_and_validation_views(tmp_path):
    from cfx.models.dino_linear import _IndexedImages

    pixels = torch.randint(0, 256, (48, 64, 3), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    Image.fromarray(pixels.numpy()).save(tmp_path / "x.png")
    whole = torch.tensor([[0.99999, 0.5, 0.0, 0.0] * 10 + [0.9]], dtype=torch.float64)
    assert random_resized_crop_box(64, 48, whole[0, :-1]) == (0, 0, 48, 64)  # too large: fallback, whole 4:3 image
    flipped = whole.clone()
    flipped[0, -1] = 0.1
    plain, label = _IndexedImages([str(tmp_path / "x.png")], [4], whole)[0]
    mirrored, _ = _IndexedImages([str(tmp_path / "x.png")], [4], flipped)[0]
    val, _ = _IndexedImages([str(tmp_path / "x.png")], [4])[0]
    assert plain.shape == mirrored.shape == val.shape == (3, 224, 224) and label == 4
    torch.testing.assert_close(mirrored, plain.flip(-1))
    assert not torch.allclose(plain, val, atol=0.1)
    mean = (pixels.float() / 255).mean((0, 1)).view(3, 1, 1)
    torch.testing.assert_close(val.mean((1, 2), keepdim=True), (mean - IMAGENET_MEAN[0]) / IMAGENET_STD[0],
                               atol=0.1, rtol=0)  # ImageNet-normalised


COLOURS = {0: (220, 30, 30), 1: (30, 200, 40), 2: (30, 40, 220)}


def write_index(root, n_train: int = 6, n_val: int = 3) -> tuple:
    """Three colour classes of 64 px JPEGs with noise (n_train + n_val images each); partition 0 train, 1 val."""
    g = torch.Generator().manual_seed(0)
    rows = []
    for label, colour in COLOURS.items():
        for k in range(n_train + n_val):
            pixels = (torch.tensor(colour).view(3, 1, 1) + 25 * torch.randn(3, 64, 64, generator=g)).clamp(0, 255)
            path = root / f"c{label}_{k}.jpg"
            Image.fromarray(pixels.permute(1, 2, 0).to(torch.uint8).numpy()).save(path)
            rows.append({"image_id": f"c{label}_{k}", "path": str(path), "partition": int(k >= n_train),
                         "label": label})
    index = root / "index.csv"
    pd.DataFrame(rows).to_csv(index, index=False)
    return index, rows


TRAIN = {"n_last_blocks": 1, "num_classes": 3, "epochs": 5, "batch_size": 8, "base_lr": 4.0, "device": "cpu"}


def test_train_head_learns_and_writes_ldce_format(tmp_path, backbone_file):
    path, _ = backbone_file
    index, rows = write_index(tmp_path)
    out = tmp_path / "dino_flowers_linear.pth"
    log = train_dino_linear_head(index, out, backbone_path=path, seed=0, **TRAIN)
    state = torch.load(out, weights_only=True)
    assert set(state) == {"linear.weight", "linear.bias"}
    assert state["linear.weight"].shape == (3, 64) and state["linear.bias"].shape == (3,)
    assert all(v.dtype == torch.float32 and v.device.type == "cpu" for v in state.values())
    LinearHead(64, 3).load_state_dict(state, strict=True)
    written = json.loads(out.with_suffix(".train.json").read_text())
    assert written == json.loads(json.dumps(log))
    assert (written["n_train_images"], written["n_val_images"], written["epochs"]) == (18, 9, 5)
    assert written["lr"] == pytest.approx(4.0 * 8 / 256)  # DINO's linear scaling rule
    history = written["history"]
    assert [e["epoch"] for e in history] == [1, 2, 3, 4, 5]
    lrs = [e["lr"] for e in history]  # cosine annealing per epoch from base_lr·batch/256 towards 0
    assert lrs == pytest.approx([0.125 * (1 + math.cos(math.pi * e / 5)) / 2 for e in range(5)])
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert written["final_val_accuracy"] >= 0.8 > 1 / 3  # well above chance on the colour classes
    assert written["best_val_accuracy"] == max(e["val_accuracy"] for e in history)
    # LDCE's loader reads the file; on LDCE's inputs (Resize((256, 256)), [−1,1]) it predicts the val colours
    model = load_dino_linear_classifier(out, path, num_classes=3)
    assert model.head.linear.weight.equal(state["linear.weight"])
    val = [r for r in rows if r["partition"] == 1]
    x = torch.stack([TF.to_tensor(Image.open(r["path"]).convert("RGB").resize((256, 256))) for r in val]) * 2 - 1
    with torch.no_grad():
        predicted = model(x).argmax(1)
    assert (predicted == torch.tensor([r["label"] for r in val])).float().mean() >= 0.8

    again = tmp_path / "again.pth"
    train_dino_linear_head(index, again, backbone_path=path, seed=0, **TRAIN)
    other = torch.load(again, weights_only=True)
    assert all(torch.equal(state[k], other[k]) for k in state)  # same seed → the same head


def test_train_head_reproducible_across_workers_and_val_optional(tmp_path, backbone_file):
    path, _ = backbone_file
    index, _ = write_index(tmp_path, n_train=2, n_val=0)
    settings = {**TRAIN, "epochs": 1}
    log = train_dino_linear_head(index, tmp_path / "a.pth", backbone_path=path, seed=5, **settings)
    assert log["n_val_images"] == 0 and log["history"][0]["val_accuracy"] is None and log["best_val_accuracy"] is None
    train_dino_linear_head(index, tmp_path / "b.pth", backbone_path=path, seed=5, num_workers=1, **settings)
    train_dino_linear_head(index, tmp_path / "c.pth", backbone_path=path, seed=6, **settings)
    a, b, c = (torch.load(tmp_path / f"{n}.pth", weights_only=True) for n in "abc")
    assert torch.equal(a["linear.weight"], b["linear.weight"])  # augmentation is drawn in the main process
    assert not torch.equal(a["linear.weight"], c["linear.weight"])
    log = train_dino_linear_head(index, tmp_path / "d.pth", backbone_path=path, seed=5, augment=False, **settings)
    assert log["train_transform"].startswith("Resize(256, bicubic)")
    d = torch.load(tmp_path / "d.pth", weights_only=True)
    assert not torch.equal(a["linear.weight"], d["linear.weight"])  # the validation view, not random crops


def test_train_head_rejects_bad_indexes(tmp_path, backbone_file):
    path, _ = backbone_file
    index, rows = write_index(tmp_path, n_train=1, n_val=1)
    frame = pd.DataFrame(rows)
    frame.assign(partition=1).to_csv(tmp_path / "no_train.csv", index=False)
    with pytest.raises(ValueError, match=r"no_train\.csv.*partition"):
        train_dino_linear_head(tmp_path / "no_train.csv", tmp_path / "h.pth", backbone_path=path, **TRAIN)
    frame.assign(label=[0, 1, 2, 3, 0, 1]).to_csv(tmp_path / "labels.csv", index=False)
    with pytest.raises(ValueError, match=r"labels\.csv.*'label'.*0\.\.2"):
        train_dino_linear_head(tmp_path / "labels.csv", tmp_path / "h.pth", backbone_path=path, **TRAIN)
    frame.drop(columns="label").to_csv(tmp_path / "columns.csv", index=False)
    with pytest.raises(ValueError, match=r"columns\.csv.*label"):
        train_dino_linear_head(tmp_path / "columns.csv", tmp_path / "h.pth", backbone_path=path, **TRAIN)
    (tmp_path / "c0_1.jpg").write_bytes(b"not a jpeg")  # a validation image
    with pytest.raises(ValueError, match=r"c0_1\.jpg"):
        train_dino_linear_head(index, tmp_path / "h.pth", backbone_path=path, **TRAIN)
    assert not (tmp_path / "h.pth").exists()


def test_train_head_without_augmentation_equals_the_authors_per_batch_loop(tmp_path, backbone_file):
    """augment=False computes the train features once; the head equals a loop that, as the LDCE author's script,
    reads every batch's images again (Resize(256, bicubic) + CenterCrop(224) + ImageNet Normalize) each epoch: the
    same shuffles, SGD steps and cosine schedule."""
    from torchvision import transforms
    from torchvision.transforms import InterpolationMode

    path, _ = backbone_file
    index, rows = write_index(tmp_path, n_train=4, n_val=0)
    settings = {**TRAIN, "epochs": 3, "batch_size": 5, "base_lr": 2.0}
    train_dino_linear_head(index, tmp_path / "h.pth", backbone_path=path, seed=3, augment=False, **settings)
    ours = torch.load(tmp_path / "h.pth", weights_only=True)

    view = transforms.Compose([transforms.Resize(256, interpolation=InterpolationMode.BICUBIC),
                               transforms.CenterCrop(224), transforms.ToTensor(),
                               transforms.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))])
    backbone = load_dino_backbone(path)
    generator = torch.Generator().manual_seed(3)
    head = LinearHead(64, 3, generator=generator)
    optimizer = torch.optim.SGD(head.parameters(), lr=2.0 * 5 / 256, momentum=0.9, weight_decay=0.0)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=3, eta_min=0.0)
    train = [r for r in rows if r["partition"] == 0]
    for _ in range(3):
        order = torch.randperm(len(train), generator=generator).tolist()
        for start in range(0, len(order), 5):
            batch = [train[k] for k in order[start:start + 5]]
            x = torch.stack([view(Image.open(r["path"]).convert("RGB")) for r in batch])
            with torch.no_grad():
                features = backbone(x)
            loss = torch.nn.functional.cross_entropy(head(features), torch.tensor([r["label"] for r in batch]))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        scheduler.step()
    assert torch.allclose(ours["linear.weight"], head.linear.weight.detach(), atol=1e-5)
    assert torch.allclose(ours["linear.bias"], head.linear.bias.detach(), atol=1e-5)
