"""LDCE's Oxford Flowers-102 classifier: a frozen DINO ViT-S/8 and a linear head trained on its CLS features.

Upstream: LDCE (lmb-freiburg/ldce) ``scripts/ldce.py:get_classifier`` builds
``torch.hub.load('facebookresearch/dino:main', 'dino_vits8')`` and ``utils/dino_linear.py``'s
``LinearClassifier(dim * 1, 102)`` (a ``linear`` ``nn.Linear``; init normal std 0.01, bias 0), loads
``dino_flowers_linear.pth`` into it with ``load_state_dict(torch.load(path), strict=True)`` and wraps both in
``DINOLinear`` (``linear(dino(x))``), preceded by ``GenericPreprocessing``: the [0,1] 256² image goes through
``CenterCrop(224)`` and ImageNet's ``Normalize``. LDCE's config says the head "needs to be trained prior of running"
and ships no trainer, so :func:`train_dino_linear_head` follows DINO's linear evaluation (facebookresearch/dino
``eval_linear.py``): frozen backbone, features = the CLS tokens of the last ``n_last_blocks`` blocks after the final
norm, concatenated (``get_intermediate_layers``; with one block this is the ViT's ``forward``, which ``DINOLinear``
calls), ``RandomResizedCrop(224)`` + ``RandomHorizontalFlip`` for training, ``Resize(256, bicubic)`` +
``CenterCrop(224)`` for validation, SGD (lr = base_lr · batch / 256, momentum 0.9, no weight decay), cosine
annealing per epoch to 0, cross-entropy; the final epoch's head is saved.

The backbone is an own implementation of DINO's ``vision_transformer.py`` ``VisionTransformer`` (``vit_small``:
embed 384, depth 12, 6 heads, MLP ratio 4, qkv bias, LayerNorm eps 1e-6) with its parameter names, so the published
``dino_deitsmall8_pretrain.pth`` (a plain state dict, what ``hubconf.py:dino_vits8`` loads strictly) loads strictly.
Inputs must have the size the positional embedding was trained for (224 px); DINO's bicubic interpolation of the
positional embedding for other sizes is not implemented (LDCE always crops 224).
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.transforms.functional import center_crop as tv_center_crop

from cfx.runtime.checkpoints import load_checkpoint, load_state_dict_strict

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
LAYER_NORM_EPS = 1e-6
HEAD_DIM = 64  # DINO's ViT-S/B: 384/6 and 768/12
DINO_VITS8_FILE = "dino_deitsmall8_pretrain.pth"
DINO_VITS8_URL = "https://dl.fbaipublicfiles.com/dino/dino_deitsmall8_pretrain/dino_deitsmall8_pretrain.pth"
FLOWERS_HEAD_FILE = "dino_flowers_linear.pth"
CROP = 224
RESIZE = 256
RRC_SCALE = (0.08, 1.0)  # torchvision RandomResizedCrop defaults
RRC_RATIO = (3 / 4, 4 / 3)
RRC_ATTEMPTS = 10


class _Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=True)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, tokens, dim = x.shape
        q, k, v = self.qkv(x).view(n, tokens, 3, self.num_heads, dim // self.num_heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)  # softmax(q kᵀ / √head_dim) v, as DINO's explicit attention
        return self.proj(out.transpose(1, 2).reshape(n, tokens, dim))


class _Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class _Block(nn.Module):
    def __init__(self, dim: int, num_heads: int, mlp_hidden: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.attn = _Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.mlp = _Mlp(dim, mlp_hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class _PatchEmbed(nn.Module):
    def __init__(self, patch_size: int, in_chans: int, dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chans, dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class DinoVisionTransformer(nn.Module):
    """DINO's ViT backbone (``num_classes=0``): ``forward(x)`` = final-norm CLS token (N, embed_dim);
    :meth:`get_intermediate_layers` = the normed token sequences of the last ``n`` blocks. Defaults: ViT-S/8."""

    def __init__(self, img_size: int = CROP, patch_size: int = 8, embed_dim: int = 384, depth: int = 12,
                 num_heads: int = 6, mlp_hidden: int | None = None, in_chans: int = 3) -> None:
        super().__init__()
        if img_size % patch_size:
            raise ValueError(f"img_size {img_size} is not a multiple of patch_size {patch_size}")
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim {embed_dim} is not divisible by num_heads {num_heads}")
        self.img_size, self.patch_size, self.in_chans = int(img_size), int(patch_size), int(in_chans)
        self.embed_dim, self.depth, self.num_heads = int(embed_dim), int(depth), int(num_heads)
        self.mlp_hidden = int(mlp_hidden or 4 * embed_dim)
        num_patches = (img_size // patch_size) ** 2
        self.patch_embed = _PatchEmbed(patch_size, in_chans, embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, num_patches + 1, embed_dim))
        self.blocks = nn.ModuleList([_Block(embed_dim, num_heads, self.mlp_hidden) for _ in range(depth)])
        self.norm = nn.LayerNorm(embed_dim, eps=LAYER_NORM_EPS)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)

    def _tokens(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != self.in_chans or tuple(x.shape[-2:]) != (self.img_size, self.img_size):
            raise ValueError(f"the DINO ViT takes (N, {self.in_chans}, {self.img_size}, {self.img_size}) images (its "
                             f"positional embedding is for {self.img_size} px; no interpolation to other sizes), got "
                             f"shape {tuple(x.shape)}: centre-crop or resize to {self.img_size} first")
        x = self.patch_embed(x)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        return x + self.pos_embed

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self._tokens(x)
        for block in self.blocks:
            x = block(x)
        return self.norm(x)[:, 0]

    def get_intermediate_layers(self, x: torch.Tensor, n: int = 1) -> list[torch.Tensor]:
        """The outputs of the last ``n`` blocks, each through the final ``norm`` (N, tokens, embed_dim), in block
        order (DINO's ``get_intermediate_layers``)."""
        if not 1 <= int(n) <= self.depth:
            raise ValueError(f"n = {n} last blocks: the ViT has {self.depth} blocks")
        x = self._tokens(x)
        outputs = []
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i >= self.depth - n:
                outputs.append(self.norm(x))
        return outputs

    def cls_features(self, x: torch.Tensor, n_last_blocks: int = 1) -> torch.Tensor:
        """DINO eval_linear's features: the CLS tokens of the last ``n_last_blocks`` normed block outputs,
        concatenated (N, embed_dim · n_last_blocks); for one block, ``forward(x)``."""
        if n_last_blocks == 1:
            return self(x)
        return torch.cat([y[:, 0] for y in self.get_intermediate_layers(x, n_last_blocks)], dim=-1)


_BACKBONE_HINT = (f"expected DINO's ViT backbone weights: the plain state dict {DINO_VITS8_FILE} ({DINO_VITS8_URL}; "
                  f"keys cls_token, pos_embed, patch_embed.proj.*, blocks.<i>.norm1/attn.qkv/attn.proj/norm2/mlp.fc1/"
                  f"mlp.fc2.*, norm.*), or a DINO training checkpoint with a 'teacher' entry")


def _read_backbone_state(path: Path) -> dict[str, torch.Tensor]:
    """The backbone state dict of a DINO weights file: the plain published layout, or a training checkpoint
    (``main_dino.py``: ``{'student', 'teacher', 'optimizer', 'epoch', 'args', 'dino_loss', ...}``) whose
    ``teacher`` (DINO's default ``checkpoint_key``) holds ``backbone.``/``module.backbone.`` keys and the DINO
    projection head's ``head.`` keys, which are dropped (``utils.load_pretrained_weights`` strips the prefixes)."""
    with torch.serialization.safe_globals([argparse.Namespace]):  # a training checkpoint pickles its args
        state = load_checkpoint(path, "DINO backbone weights")
    if not isinstance(state, dict):
        raise ValueError(f"{path} is not a DINO backbone weights file (got a {type(state).__name__}); "
                         f"{_BACKBONE_HINT}")
    if "cls_token" not in state and isinstance(state.get("teacher"), dict):
        teacher = {(k[len("module."):] if k.startswith("module.") else k): v for k, v in state["teacher"].items()}
        state = {k[len("backbone."):]: v for k, v in teacher.items() if k.startswith("backbone.")}
        others = sorted(k for k in teacher if not k.startswith(("backbone.", "head.")))
        if others:
            raise ValueError(f"{path}: the 'teacher' entry has keys that are neither backbone.* nor head.* "
                             f"({others[:5]}); {_BACKBONE_HINT}")
    if "cls_token" not in state:
        raise ValueError(f"{path} is not a DINO backbone weights file (no cls_token; first keys "
                         f"{list(state)[:6]}); {_BACKBONE_HINT}. Use {DINO_VITS8_FILE} from {DINO_VITS8_URL}")
    return state


def _shape(state: dict, key: str, ndim: int, path: Path) -> tuple[int, ...]:
    value = state.get(key)
    if not isinstance(value, torch.Tensor) or value.ndim != ndim:
        got = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
        raise ValueError(f"{path}: '{key}' must be a {ndim}-d tensor (got {got}); {_BACKBONE_HINT}")
    return tuple(value.shape)


def load_dino_backbone(path: str | Path, num_heads: int | None = None) -> DinoVisionTransformer:
    """DINO's ViT from a weights file, loaded weights-only and strictly, in eval mode. The architecture is read from
    the file: embed_dim (``cls_token``), depth (block indices), patch size and input channels
    (``patch_embed.proj.weight``), image size (the token count of ``pos_embed``: (img/patch)² + 1), MLP width
    (``fc1``); heads = embed_dim // 64 as DINO's ViT-S/B unless ``num_heads`` is given (the weights do not say)."""
    path = Path(path)
    state = _read_backbone_state(path)
    embed_dim = _shape(state, "cls_token", 3, path)[-1]
    out_ch, in_chans, patch, patch_w = _shape(state, "patch_embed.proj.weight", 4, path)
    tokens = _shape(state, "pos_embed", 3, path)[1]
    grid = math.isqrt(max(tokens - 1, 0))
    if patch != patch_w or grid * grid != tokens - 1 or grid == 0:
        raise ValueError(f"{path}: patch_embed.proj.weight {(out_ch, in_chans, patch, patch_w)} / pos_embed with "
                         f"{tokens} tokens do not describe a square ViT (tokens = (img/patch)² + 1); "
                         f"{_BACKBONE_HINT}")
    indices = {int(k.split(".")[1]) for k in state if k.startswith("blocks.") and k.split(".")[1].isdigit()}
    depth = max(indices) + 1 if indices else 0
    if depth == 0 or indices != set(range(depth)):
        raise ValueError(f"{path}: blocks must be numbered 0..depth−1, found {sorted(indices)[:12]}; "
                         f"{_BACKBONE_HINT}")
    mlp_hidden = _shape(state, "blocks.0.mlp.fc1.weight", 2, path)[0]
    if num_heads is None:
        if embed_dim % HEAD_DIM:
            raise ValueError(f"{path}: embed_dim {embed_dim} is not a multiple of {HEAD_DIM}, so the number of "
                             f"heads cannot be inferred as DINO's ViT-S/B (embed_dim // 64); pass num_heads")
        num_heads = embed_dim // HEAD_DIM
    model = DinoVisionTransformer(img_size=grid * patch, patch_size=patch, embed_dim=embed_dim, depth=depth,
                                  num_heads=num_heads, mlp_hidden=mlp_hidden, in_chans=in_chans)
    load_state_dict_strict(model, state, path, hint=_BACKBONE_HINT)
    return model.eval()


class LinearHead(nn.Module):
    """LDCE's / DINO eval_linear's ``LinearClassifier``: flatten, then ``linear`` (keys ``linear.weight``,
    ``linear.bias``); weights ~ N(0, 0.01²) (drawn from ``generator`` when given), bias 0."""

    def __init__(self, in_features: int, num_classes: int, generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.num_classes = int(num_classes)
        self.linear = nn.Linear(int(in_features), self.num_classes)
        with torch.no_grad():
            self.linear.weight.normal_(0.0, 0.01, generator=generator)
            self.linear.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x.reshape(x.shape[0], -1))


def load_linear_head(path: str | Path, in_features: int, num_classes: int) -> LinearHead:
    """A :class:`LinearHead` from LDCE's plain ``{'linear.weight', 'linear.bias'}`` file, or from DINO
    eval_linear's checkpoint (``{'state_dict': {'module.linear.weight', ...}, 'epoch', 'optimizer', ...}``, the
    DistributedDataParallel ``module.`` prefix removed, other entries ignored); weights-only, strict, eval mode."""
    state = load_checkpoint(path, "DINO linear head")
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if isinstance(state, dict):
        state = {(k[len("module."):] if isinstance(k, str) and k.startswith("module.") else k): v
                 for k, v in state.items()}
    head = LinearHead(in_features, num_classes)
    load_state_dict_strict(head, state, path,
                           hint=f"expected LDCE's {FLOWERS_HEAD_FILE} layout {{'linear.weight': ({num_classes}, "
                                f"{in_features}), 'linear.bias': ({num_classes},)}} (in_features = DINO embed_dim × "
                                f"n_last_blocks) or DINO eval_linear's {{'state_dict': {{'module.linear.weight', "
                                f"'module.linear.bias'}}, ...}}")
    return head.eval()


class DinoLinearClassifier(nn.Module):
    """LDCE's Flowers classifier on [−1,1] images (N,3,H,W): ``head(features(normalise(center_crop((x+1)/2))))``
    with ImageNet's mean/std and the CLS features of the last ``n_last_blocks`` blocks (LDCE: 1). Differentiable in
    ``x`` (LDCE's guidance backpropagates through it)."""

    def __init__(self, backbone: DinoVisionTransformer, head: LinearHead, n_last_blocks: int = 1,
                 center_crop: int = CROP) -> None:
        super().__init__()
        expected = backbone.embed_dim * int(n_last_blocks)
        if head.linear.in_features != expected:
            raise ValueError(f"the head takes {head.linear.in_features} features, the backbone gives {expected} "
                             f"(embed_dim {backbone.embed_dim} × n_last_blocks {n_last_blocks})")
        self.backbone, self.head = backbone, head
        self.n_last_blocks, self.center_crop = int(n_last_blocks), int(center_crop)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x01 = tv_center_crop((x + 1) / 2, [self.center_crop, self.center_crop])
        return self.head(self.backbone.cls_features((x01 - self.mean) / self.std, self.n_last_blocks))


def load_dino_linear_classifier(head_path: str | Path, backbone_path: str | Path, *, n_last_blocks: int = 1,
                                num_classes: int = 102, center_crop: int | None = None) -> DinoLinearClassifier:
    """LDCE's Flowers-102 classifier from the head file (``dino_flowers_linear.pth``) and the DINO backbone file
    (``dino_deitsmall8_pretrain.pth``); eval mode, parameters frozen (gradients still flow to the input). The centre
    crop is the backbone's input size unless given (ViT-S/8: 224, LDCE's ``CenterCrop(224)``)."""
    backbone = load_dino_backbone(backbone_path)
    center_crop = backbone.img_size if center_crop is None else center_crop
    head = load_linear_head(head_path, backbone.embed_dim * int(n_last_blocks), num_classes)
    model = DinoLinearClassifier(backbone, head, n_last_blocks=n_last_blocks, center_crop=center_crop)
    return model.eval().requires_grad_(False)


# ---- training the head (DINO eval_linear.py's recipe) ----------------------------------------------------------

_DRAWS_PER_IMAGE = 4 * RRC_ATTEMPTS + 1  # per RandomResizedCrop attempt: scale, log-ratio, top, left; then the flip


def random_resized_crop_box(width: int, height: int, draws: torch.Tensor) -> tuple[int, int, int, int]:
    """``(top, left, h, w)`` of torchvision's ``RandomResizedCrop.get_params`` (scale 0.08–1, ratio 3/4–4/3, 10
    attempts, then the central crop clamped to the ratio range) computed from uniform [0,1) ``draws`` (4 per
    attempt: area scale, log aspect ratio, top, left) instead of the global RNG, so a seeded generator decides it."""
    area = width * height
    log_lo, log_hi = math.log(RRC_RATIO[0]), math.log(RRC_RATIO[1])
    u = draws.tolist()
    for attempt in range(RRC_ATTEMPTS):
        s, r, a, b = u[4 * attempt:4 * attempt + 4]
        target_area = area * (RRC_SCALE[0] + s * (RRC_SCALE[1] - RRC_SCALE[0]))
        aspect = math.exp(log_lo + r * (log_hi - log_lo))
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = min(int(a * (height - h + 1)), height - h)
            left = min(int(b * (width - w + 1)), width - w)
            return top, left, h, w
    ratio = width / height
    if ratio < RRC_RATIO[0]:
        w, h = width, int(round(width / RRC_RATIO[0]))
    elif ratio > RRC_RATIO[1]:
        w, h = int(round(height * RRC_RATIO[1])), height
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


class _IndexedImages(torch.utils.data.Dataset):
    """``(image, label)`` in ``paths`` order: ImageNet-normalised 224² tensors. With ``draws`` (one row of
    :data:`_DRAWS_PER_IMAGE` uniforms per image) the training view: RandomResizedCrop(224) (bilinear) and a
    horizontal flip when the last draw < 0.5; without, the validation view: Resize(256, bicubic) + CenterCrop(224)."""

    def __init__(self, paths: list[str], labels: list[int], draws: torch.Tensor | None = None) -> None:
        from torchvision import transforms
        from torchvision.transforms import InterpolationMode

        self.paths, self.labels, self.draws = paths, labels, draws
        self.to_tensor = transforms.Compose([transforms.ToTensor(), transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
        self.val_view = transforms.Compose([transforms.Resize(RESIZE, interpolation=InterpolationMode.BICUBIC),
                                            transforms.CenterCrop(CROP)])

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, k: int) -> tuple[torch.Tensor, int]:
        import torchvision.transforms.functional as TF
        from torchvision.transforms import InterpolationMode

        from cfx.data.celeba import load_rgb

        image = load_rgb(Path(self.paths[k]))
        if self.draws is None:
            image = self.val_view(image)
        else:
            top, left, h, w = random_resized_crop_box(image.width, image.height, self.draws[k, :-1])
            image = TF.resized_crop(image, top, left, h, w, [CROP, CROP], InterpolationMode.BILINEAR, antialias=True)
            if float(self.draws[k, -1]) < 0.5:
                image = TF.hflip(image)
        return self.to_tensor(image), int(self.labels[k])


_INDEX_COLUMNS = ("image_id", "path", "partition", "label")


def _read_training_index(index_csv: Path, partitions: tuple[int, int], num_classes: int):
    """The train and val rows of the index (``image_id``, ``path``, ``partition``, ``label``), labels checked."""
    import pandas as pd

    frame = pd.read_csv(index_csv, dtype={"image_id": str})
    absent = [c for c in _INDEX_COLUMNS if c not in frame.columns]
    if absent:
        raise ValueError(f"the index {index_csv} lacks the columns {absent} (needs {list(_INDEX_COLUMNS)})")
    frame = frame[frame["partition"].isin(partitions)].reset_index(drop=True)
    labels = pd.to_numeric(frame["label"], errors="coerce")
    bad = labels.isna() | (labels != labels.round()) | (labels < 0) | (labels >= num_classes)
    if bad.any():
        examples = [f"{i}: {v!r}" for i, v in zip(frame["image_id"][bad][:3], frame["label"][bad][:3], strict=True)]
        raise ValueError(f"the index {index_csv}: column 'label' must hold class indices 0..{num_classes - 1} "
                         f"(num_classes {num_classes}); {int(bad.sum())} rows do not ({', '.join(examples)})")
    frame["label"] = labels.astype(int)
    train = frame[frame["partition"] == partitions[0]]
    if train.empty:
        raise ValueError(f"the index {index_csv} has no training rows (column 'partition' == {partitions[0]})")
    return train.reset_index(drop=True), frame[frame["partition"] == partitions[1]].reset_index(drop=True)


@torch.no_grad()
def _val_features(backbone: DinoVisionTransformer, rows, n_last_blocks: int, batch_size: int, num_workers: int,
                  dev: torch.device) -> torch.Tensor:
    from tqdm import tqdm

    loader = torch.utils.data.DataLoader(_IndexedImages(list(rows["path"]), list(rows["label"])),
                                         batch_size=batch_size, shuffle=False, num_workers=num_workers)
    return torch.cat([backbone.cls_features(x.to(dev), n_last_blocks)
                      for x, _ in tqdm(loader, desc="val features", leave=False)])


def train_dino_linear_head(index_csv: str | Path, out_path: str | Path, *, backbone_path: str | Path,
                           n_last_blocks: int = 1, num_classes: int = 102, epochs: int = 100, batch_size: int = 128,
                           base_lr: float = 0.001, train_partition: int = 0, val_partition: int = 1, seed: int = 0,
                           device: str = "auto", num_workers: int = 0, augment: bool = True) -> dict[str, Any]:
    """Train LDCE's Flowers head on a frozen DINO backbone with DINO eval_linear's recipe (module docstring) and
    save it in LDCE's format (``{'linear.weight', 'linear.bias'}``, float32, the final epoch) atomically to
    ``out_path``, with a JSON log ``<out_path stem>.train.json`` (recipe, per-epoch mean training loss and val top-1
    accuracy, the best, seconds).

    ``index_csv``: ``image_id``, ``path`` (absolute), ``partition``, ``label`` (0..num_classes−1); rows with
    ``partition == train_partition`` train, ``val_partition`` rows are evaluated after each epoch (Resize(256,
    bicubic) + CenterCrop(224); their features are computed once, the backbone being frozen), skipped when there are
    none. Shuffling, crops and flips come from one ``torch.Generator`` seeded with ``seed`` (also the head's init)
    and are drawn in the main process, so the result does not depend on ``num_workers``. Threads: the caller sets
    them (``cfx.runtime.device.set_threads``). ``augment=False`` trains on the validation view instead of random
    crops and flips (no augmentation), as a public Flowers-102 script of an LDCE author that writes
    ``dino_flowers_linear.pth`` does (not part of lmb-freiburg/ldce; 30 epochs, batch 32, lr 1e-3 unscaled, i.e.
    base_lr 0.008 here, torchvision's train split)."""
    from tqdm import tqdm

    from cfx.runtime.checkpoints import save_checkpoint_atomic
    from cfx.runtime.device import select_device
    from cfx.runtime.files import write_json_atomic

    started = time.time()
    index_csv, out_path = Path(index_csv), Path(out_path)
    if epochs < 1 or batch_size < 1 or n_last_blocks < 1:
        raise ValueError(f"epochs ({epochs}), batch_size ({batch_size}) and n_last_blocks ({n_last_blocks}) "
                         f"must be ≥ 1")
    train_rows, val_rows = _read_training_index(index_csv, (int(train_partition), int(val_partition)), num_classes)
    dev = select_device(device)
    backbone = load_dino_backbone(backbone_path).to(dev).requires_grad_(False)
    generator = torch.Generator().manual_seed(int(seed))
    head = LinearHead(backbone.embed_dim * n_last_blocks, num_classes, generator=generator).to(dev)
    lr = base_lr * batch_size / 256.0  # DINO's linear scaling rule
    optimizer = torch.optim.SGD(head.parameters(), lr=lr, momentum=0.9, weight_decay=0.0)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs, eta_min=0.0)
    val_features = (_val_features(backbone, val_rows, n_last_blocks, batch_size, num_workers, dev)
                    if len(val_rows) else None)
    val_labels = torch.tensor(val_rows["label"].tolist(), dtype=torch.long, device=dev)
    paths, labels = list(train_rows["path"]), list(train_rows["label"])
    # without augmentation every epoch sees the same views: their features are computed once (the backbone is frozen)
    fixed_features = None if augment else _val_features(backbone, train_rows, n_last_blocks, batch_size, num_workers,
                                                        dev)
    fixed_labels = torch.tensor(labels, dtype=torch.long)
    history = []
    loop_started = time.time()
    bar = tqdm(range(epochs), desc="train dino linear head", unit="epoch")
    for epoch in bar:
        order = torch.randperm(len(paths), generator=generator).tolist()
        draws = torch.rand(len(paths), _DRAWS_PER_IMAGE, generator=generator, dtype=torch.float64) if augment else None
        if fixed_features is None:
            dataset = _IndexedImages([paths[k] for k in order], [labels[k] for k in order], draws)
            batches = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False,
                                                  num_workers=num_workers)
        else:
            batches = [(fixed_features[chunk.to(fixed_features.device)], fixed_labels[chunk])
                       for chunk in torch.tensor(order).split(batch_size)]
        epoch_lr = optimizer.param_groups[0]["lr"]
        head.train()
        loss_sum, seen = 0.0, 0
        for x, y in tqdm(batches, desc=f"epoch {epoch + 1}", leave=False):
            if fixed_features is None:
                with torch.no_grad():
                    features = backbone.cls_features(x.to(dev), n_last_blocks)
            else:
                features = x
            loss = F.cross_entropy(head(features), y.to(dev))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum += loss.item() * len(y)
            seen += len(y)
        scheduler.step()
        entry = {"epoch": epoch + 1, "lr": epoch_lr, "train_loss": round(loss_sum / seen, 5), "val_accuracy": None}
        if val_features is not None:
            head.eval()
            with torch.no_grad():
                predictions = head(val_features).argmax(dim=1)
            entry["val_accuracy"] = round(float((predictions == val_labels).float().mean()), 4)
        history.append(entry)
        bar.set_postfix(loss=entry["train_loss"], val_acc=entry["val_accuracy"])
    train_seconds = time.time() - loop_started
    state = {k: v.detach().to("cpu", torch.float32).clone() for k, v in head.state_dict().items()}
    save_checkpoint_atomic(state, out_path)
    accuracies = [e["val_accuracy"] for e in history if e["val_accuracy"] is not None]
    best = max(range(len(accuracies)), key=accuracies.__getitem__) if accuracies else None
    majority = (float(val_rows["label"].value_counts().max()) / len(val_rows)) if len(val_rows) else None
    recipe = "DINO eval_linear.py" if augment else "DINO eval_linear.py without augmentation (an LDCE author's script)"
    log = {"kind": "dino_linear", "recipe": recipe, "epochs": epochs, "batch_size": batch_size,
           "base_lr": base_lr, "lr": lr, "momentum": 0.9, "weight_decay": 0.0,
           "schedule": "CosineAnnealingLR(T_max=epochs, eta_min=0), stepped per epoch",
           "augment": bool(augment),
           "train_transform": ("RandomResizedCrop(224) + RandomHorizontalFlip" if augment else
                               "Resize(256, bicubic) + CenterCrop(224)") + " + ImageNet Normalize",
           "val_transform": "Resize(256, bicubic) + CenterCrop(224) + ImageNet Normalize",
           "n_last_blocks": n_last_blocks, "feature_dim": backbone.embed_dim * n_last_blocks,
           "num_classes": num_classes, "seed": seed, "backbone": str(backbone_path), "index": str(index_csv),
           "train_partition": int(train_partition), "val_partition": int(val_partition),
           "n_train_images": len(paths), "n_val_images": len(val_rows), "saved": "final epoch",
           "history": history, "final_train_loss": history[-1]["train_loss"],
           "final_val_accuracy": history[-1]["val_accuracy"],
           "best_val_accuracy": accuracies[best] if best is not None else None,
           "best_epoch": best + 1 if best is not None else None,
           "val_majority_baseline": round(majority, 4) if majority is not None else None,
           "seconds": round(time.time() - started, 1), "seconds_per_epoch": round(train_seconds / epochs, 3),
           "threads": torch.get_num_threads(), "device": str(dev)}
    write_json_atomic(Path(out_path).with_suffix(".train.json"), log)
    return log
