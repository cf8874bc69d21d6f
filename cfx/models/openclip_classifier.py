"""LDCE's zero-shot Oxford-IIIT Pets classifier: OpenCLIP ViT-B-32 (``laion2b_s34b_b79k``) on [−1,1] images.

Upstream (``scripts/ldce.py:get_classifier``, ``utils/vision_language_wrapper.py``, ``utils/preprocessor.py``;
docs/upstream/ldce_gcd_svce.md §1.4):
``open_clip.create_model_and_transforms('ViT-B-32', pretrained='laion2b_s34b_b79k')``,
``open_clip.get_tokenizer('ViT-B-32')``, one prompt per class ``"a photo of a {label}, a type of pet."`` with the
labels of ``data/pets_idx_to_label.json`` in file order; the text features are computed once and L2-normalised, and
``logits = 100 · normalise(encode_image(x)) @ text_features.T`` (a fixed 100, not the model's ``logit_scale``). With
``classifier_wrapper: True`` (v1_pets) the [0,1] image first goes through ``preprocess.transforms[1]`` and ``[4]``:
``CenterCrop(224)`` and ``Normalize`` with OpenAI's CLIP mean/std (no resize: the 256² image is cropped).

Here the model is built by ``open_clip.create_model('ViT-B-32', pretrained=None)`` (``arch`` overrides its config
for tests) and loads the published weights file (Hugging Face ``laion/CLIP-ViT-B-32-laion2B-s34B-b79K``,
``open_clip_pytorch_model.bin``, the file open_clip downloads for that tag) weights-only and strictly. The
tokenizer's vocabulary ships inside open_clip, so nothing is downloaded at run time. The centre crop is the vision
tower's input size (224), which the ViT's positional embedding requires."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torchvision.transforms.functional import center_crop as tv_center_crop

from cfx.runtime.checkpoints import load_checkpoint, load_state_dict_strict

MODEL_NAME = "ViT-B-32"
PRETRAINED_TAG = "laion2b_s34b_b79k"
PETS_PROMPT = "a photo of a {}, a type of pet."
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)  # open_clip OPENAI_DATASET_MEAN / STD
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
LOGIT_SCALE = 100.0


def _merge(base: dict, override: dict) -> dict:
    merged = copy.deepcopy(base)
    for key, value in override.items():
        merged[key] = _merge(merged[key], value) if isinstance(value, dict) and isinstance(merged.get(key),
                                                                                           dict) else value
    return merged


def build_openclip(arch: dict[str, Any] | None = None) -> nn.Module:
    """open_clip's ``ViT-B-32`` CLIP without weights (its built-in config, ``arch`` deep-merged over it)."""
    import open_clip

    config = open_clip.get_model_config(MODEL_NAME)
    overrides = _merge(config, arch or {}) if arch else {}
    return open_clip.create_model(MODEL_NAME, pretrained=None, **overrides).eval()


def openclip_tokenizer(model: nn.Module):
    """open_clip's tokenizer for ``ViT-B-32`` (its BPE vocabulary ships in the package) at the model's context."""
    import open_clip

    return open_clip.get_tokenizer(MODEL_NAME, context_length=int(model.context_length))


class ZeroShotClassifier(nn.Module):
    """``100 · cos(encode_image(normalise(crop((x + 1) / 2))), text_c)`` for [−1,1] images, one logit per class;
    ``text_features`` (C × D, L2-normalised) are fixed at construction (:func:`zero_shot_text_features`)."""

    def __init__(self, model: nn.Module, text_features: torch.Tensor, center_crop: int,
                 mean: Sequence[float] = CLIP_MEAN, std: Sequence[float] = CLIP_STD) -> None:
        super().__init__()
        self.model = model
        self.center_crop = int(center_crop)
        self.register_buffer("text_features", text_features.detach().clone(), persistent=False)
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x01 = tv_center_crop((x + 1) / 2, [self.center_crop, self.center_crop])
        features = self.model.encode_image((x01 - self.mean) / self.std)
        features = features / features.norm(dim=-1, keepdim=True)
        return LOGIT_SCALE * features @ self.text_features.T


@torch.no_grad()
def zero_shot_text_features(model: nn.Module, prompts: Sequence[str]) -> torch.Tensor:
    """L2-normalised text embeddings of ``prompts`` (``VisionLanguageWrapper.__init__``)."""
    tokens = openclip_tokenizer(model)(list(prompts))
    device = next(model.parameters()).device
    features = model.encode_text(tokens.to(device))
    return features / features.norm(dim=-1, keepdim=True)


def read_openclip_state(path: str | Path) -> dict:
    """The state dict of an OpenCLIP weights file, read weights-only (a ``{'state_dict': ...}`` wrapper and a
    ``module.`` prefix are removed, as open_clip's own ``load_state_dict`` does; :func:`load_openclip` also takes a
    one-element ``logit_scale`` of another shape, as its ``load_checkpoint``; nothing else is converted)."""
    state = load_checkpoint(path, "OpenCLIP weights")
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if isinstance(state, dict) and state and next(iter(state)).startswith("module."):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def load_openclip(path: str | Path, arch: dict[str, Any] | None = None) -> nn.Module:
    """``ViT-B-32`` (or ``arch``) with the weights of ``path`` loaded strictly (eval mode, no gradients needed)."""
    model = build_openclip(arch)
    state = read_openclip_state(path)
    scale = state.get("logit_scale") if isinstance(state, dict) else None
    if isinstance(scale, torch.Tensor) and scale.numel() == 1 and scale.shape != model.logit_scale.shape:
        state["logit_scale"] = scale.reshape(model.logit_scale.shape)  # as open_clip's load_checkpoint does
    load_state_dict_strict(model, state, path,
                           hint="expected open_clip's ViT-B-32 layout (laion/CLIP-ViT-B-32-laion2B-s34B-b79K "
                                "open_clip_pytorch_model.bin: visual.*, transformer.*, token_embedding.weight, "
                                "positional_embedding, ln_final.*, text_projection, logit_scale)")
    return model.eval()


def load_zero_shot_classifier(path: str | Path, class_names: Sequence[str], prompt: str = PETS_PROMPT,
                              arch: dict[str, Any] | None = None, center_crop: int | None = None
                              ) -> ZeroShotClassifier:
    """LDCE's Pets classifier from the weights file ``path``: one prompt per class name (``prompt.format(name)``),
    the centre crop of the vision tower's input size (``center_crop``, if given, must equal it)."""
    if "{}" not in prompt:
        raise ValueError(f"prompt {prompt!r} needs a '{{}}' for the class name")
    if not class_names:
        raise ValueError("the zero-shot classifier needs class names")
    model = load_openclip(path, arch)
    size = model.visual.image_size
    size = int(size[0] if isinstance(size, tuple | list) else size)
    if center_crop and int(center_crop) != size:
        raise ValueError(f"{path}: the OpenCLIP vision tower takes {size}² inputs; classifier_center_crop "
                         f"{center_crop} does not fit (leave it out: the classifier crops {size} itself)")
    features = zero_shot_text_features(model, [prompt.format(name) for name in class_names])
    return ZeroShotClassifier(model, features, size).eval()


def load_classifier_from_spec(spec: dict[str, Any], path: str | Path, center_crop: int | None = None
                              ) -> ZeroShotClassifier:
    """The classifier of a suite ``models:`` entry of kind ``openclip_zero_shot``: ``class_names`` (the class-name
    file, e.g. LDCE's ``pets_idx_to_label.json``), ``prompt`` (default LDCE's Pets prompt), ``arch`` (tests)."""
    from cfx.data.ldce_targets import read_class_names

    names_file = spec.get("class_names")
    if not names_file:
        raise ValueError(f"classifier {path} (kind openclip_zero_shot) needs class_names: the file naming its "
                         f"classes (LDCE's resources/data/ldce/pets_idx_to_label.json, rule fetch_ldce_pets)")
    return load_zero_shot_classifier(path, read_class_names(names_file), spec.get("prompt", PETS_PROMPT),
                                     spec.get("arch"), center_crop)
