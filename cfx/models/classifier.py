"""The CelebA attribute classifier of DiME/ACE: DenseNet-121 features + ``Linear(1024, 40)``.

Upstream (DiME ``core/classifier/densenet.py``, taken from DiVE's ``src/models/densenet.py``):
``ClassificationModel.feat_extract = DenseNet121()``, a wrapper whose own attribute ``feat_extract`` is
``torchvision.models.densenet121()`` with ``classifier = Identity`` (``output_size = 1024``), and
``ClassificationModel.classifier = Linear(1024, 40)``. The published ``classifier.pth`` (trained with DiVE's
``src/wrappers/classifier.py``, whose ``get_state_dict`` writes ``{'feat_extract': self.feat_extract.state_dict(),
'classifier': ..., 'optimizer': ...}``) therefore holds

* ``'feat_extract'``: keys ``feat_extract.features.conv0.weight`` … ``feat_extract.features.norm5.*`` (the
  wrapper's prefix, then torchvision's DenseNet names; no ``classifier.*`` since the head is an Identity),
* ``'classifier'``: ``weight`` (40, 1024) and ``bias`` (40,).

This module keeps that nesting so the file loads with ``strict=True``. Inputs are [−1,1] images fed without
further normalisation (DiME; ACE's ``Normalizer(0.5, 0.5)`` on [0,1] is the same map). The forward of the
query wrapper returns ``logit[:, query_label]`` as DiME's ``ClassificationModel`` (reference/dime_ace.md §5).

Mini suite: the same code at reduced width, ``growth_rate=12, block_config=(2, 2, 2, 2),
num_init_features=24`` (60-d features, ≈ 70 k parameters; workflow/suites/mini.yaml).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn
from torchvision.models import DenseNet

from cfx.runtime.checkpoints import load_feat_classifier, read_feat_classifier, save_feat_classifier


class DenseNetFeatures(nn.Module):
    """DiME/DiVE ``DenseNet121`` wrapper: ``self.feat_extract`` = torchvision DenseNet with an Identity head."""

    def __init__(self, growth_rate: int = 32, block_config: Sequence[int] = (6, 12, 24, 16),
                 num_init_features: int = 64) -> None:
        super().__init__()
        self.feat_extract = DenseNet(growth_rate=growth_rate, block_config=tuple(int(b) for b in block_config),
                                     num_init_features=num_init_features)
        self.output_size = self.feat_extract.classifier.in_features
        self.feat_extract.classifier = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.feat_extract(x)


class DenseNetClassifier(nn.Module):
    """``feat_extract`` (:class:`DenseNetFeatures`) + ``classifier`` (Linear → ``num_attributes`` logits).

    Defaults are DenseNet-121 with 40 CelebA attributes: the layout of DiME's ``classifier.pth``."""

    def __init__(self, num_attributes: int = 40, growth_rate: int = 32, block_config: Sequence[int] = (6, 12, 24, 16),
                 num_init_features: int = 64) -> None:
        super().__init__()
        self.feat_extract = DenseNetFeatures(growth_rate, block_config, num_init_features)
        self.output_size = self.feat_extract.output_size
        self.classifier = nn.Linear(self.output_size, num_attributes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """All attribute logits (B, num_attributes) of [−1,1] images (B, 3, H, W)."""
        return self.classifier(self.feat_extract(x))


class QueryClassifier(nn.Module):
    """The logit of one attribute, shape (B,) (DiME ``ClassificationModel.forward``; with
    ``get_other_attrs=True`` also all logits, as upstream)."""

    def __init__(self, model: nn.Module, query_label: int) -> None:
        super().__init__()
        self.model = model
        self.query_label = int(query_label)

    def forward(self, x: torch.Tensor, get_other_attrs: bool = False):
        logits = self.model(x)
        if get_other_attrs:
            return logits[:, self.query_label], logits
        return logits[:, self.query_label]


def save_celeba_classifier(model: DenseNetClassifier, path: str | Path) -> Path:
    """Write DiME's ``{'feat_extract', 'classifier'}`` format (atomically)."""
    return save_feat_classifier(model, path)


_PREFIX_HINT = ("the 'feat_extract' keys of DiME's classifier.pth start with 'feat_extract.' (DiVE's DenseNet121 "
                "wrapper); a bare torchvision DenseNet state dict (keys 'features.…') must be re-keyed; for the "
                "mini suite, a classifier trained before this layout must be retrained")


def load_celeba_classifier(path: str | Path, **arch) -> DenseNetClassifier:
    """Load DiME's ``classifier.pth`` format strictly into ``DenseNetClassifier(**arch)`` (eval mode).

    ``num_attributes`` is read from the file's ``classifier.weight``; ``arch`` gives the DenseNet widths
    (defaults: DenseNet-121). Errors name the file, the part and the first mismatching keys."""
    state = read_feat_classifier(path, "CelebA classifier")
    weight = state["classifier"].get("weight")
    if "num_attributes" not in arch and isinstance(weight, torch.Tensor) and weight.ndim == 2:
        arch["num_attributes"] = int(weight.shape[0])
    model = DenseNetClassifier(**arch)
    return load_feat_classifier(model, state, path, hint=_PREFIX_HINT)


CELEBA_FORMAT_KINDS = ("classifier", "robust_classifier")  # DiME's {'feat_extract', 'classifier'} file
QUERY_CLASSIFIER_KINDS = (*CELEBA_FORMAT_KINDS, "steex_classifier", "gcd_chexpert_classifier")


def load_query_classifier(spec: dict, path: str | Path, query_label: int) -> QueryClassifier:
    """The experiment's classifier as a :class:`QueryClassifier` on [−1,1] images, built from its suite ``models:``
    entry (``kind``; ``arch`` for the DiME-format kinds) and its checkpoint file (strict, weights-only):

    * ``classifier``, ``robust_classifier`` (or no kind): DiME's ``{'feat_extract', 'classifier'}`` format, 40 CelebA
      attributes (mini: trained here); the query label is the output index;
    * ``steex_classifier``: STEEX's decision ``checkpoint.tar`` (:func:`cfx.models.steex.load_steex_classifier`);
      the query label is mapped to its output (CelebA-HQ: 20/31/39 → 0/1/2,
      :func:`cfx.models.steex.steex_output_index`);
    * ``gcd_chexpert_classifier``: GCD's CheXpert DenseNet-264 (MONAI), ``{'state_dict'}``
      (:func:`cfx.models.chexpert.load_gcd_chexpert_classifier`; ``arch`` shrinks it for tests): 14 findings, the
      query label is the output index (GCD's order, :data:`cfx.data.layouts.GCD_CHEXPERT_OUTPUTS`); grayscale inputs.

    ``.query_label`` of the result is the output index (what GCD's proxy and ``get_other_attrs`` index)."""
    kind = str(spec.get("kind") or "classifier")
    if kind in CELEBA_FORMAT_KINDS:
        return QueryClassifier(load_celeba_classifier(path, **spec.get("arch", {})), int(query_label))
    if kind == "steex_classifier":
        from cfx.models.steex import load_steex_classifier, steex_output_index

        model = load_steex_classifier(path)
        return QueryClassifier(model, steex_output_index(query_label, model.classifier.out_features, path))
    if kind == "gcd_chexpert_classifier":
        from cfx.models.chexpert import gcd_chexpert_output, load_gcd_chexpert_classifier

        model = load_gcd_chexpert_classifier(path, **spec.get("arch", {}))
        outputs = model.classifier.class_layers.out.out_features
        return QueryClassifier(model, gcd_chexpert_output(query_label, outputs, path))
    raise ValueError(f"classifier {path}: kind '{kind}' is not a classifier cfx can load (kinds: "
                     f"{', '.join(QUERY_CLASSIFIER_KINDS)})")


ZERO_SHOT_KINDS = ("openclip_zero_shot",)  # LDCE's Pets classifier (cfx.models.openclip_classifier)
# LDCE's Flowers-102 classifier: DINO ViT-S/8 + a linear head trained here (cfx.models.dino_linear)
TRAINED_HEAD_KINDS = ("dino_linear",)


def load_dino_linear_from_spec(spec: dict, path: str | Path) -> nn.Module:
    """The classifier of a suite ``models:`` entry of kind ``dino_linear`` on [−1,1] images: the linear head in
    ``path`` (LDCE's ``dino_flowers_linear.pth`` format) on the frozen backbone file ``backbone_weights`` (DINO's
    ``dino_deitsmall8_pretrain.pth``), CenterCrop(224) + ImageNet normalisation as LDCE's ``GenericPreprocessing``."""
    from cfx.models.dino_linear import load_dino_linear_classifier

    backbone = spec.get("backbone_weights")
    if not backbone:
        raise ValueError(f"classifier {path} (kind dino_linear) needs backbone_weights: the DINO weights file its "
                         f"linear head reads features from (paper suite: resources/checkpoints/dino_vits8.pth)")
    return load_dino_linear_classifier(path, backbone, n_last_blocks=int(spec.get("n_last_blocks", 1)),
                                       num_classes=int(spec.get("num_classes", 102)))


def multiclass_kinds() -> tuple[str, ...]:
    """The suite kinds of classifiers with one logit per class (not a binary query)."""
    from cfx.models.imagenet_classifier import MULTICLASS_KINDS

    return (*MULTICLASS_KINDS, *ZERO_SHOT_KINDS, *TRAINED_HEAD_KINDS)


def load_multiclass_classifier(spec: dict, path: str | Path, center_crop: int | None = None) -> nn.Module:
    """A multi-class classifier of a suite ``models:`` entry on [−1,1] images, one logit per class: an ImageNet
    classifier (kinds ``torchvision_resnet50``, ``madry_ft``; 1000 logits; ``center_crop``: LDCE's 224 crop,
    :mod:`cfx.models.imagenet_classifier`), LDCE's zero-shot OpenCLIP Pets classifier (kind ``openclip_zero_shot``,
    one logit per class of its ``class_names`` file, :mod:`cfx.models.openclip_classifier`) or LDCE's Flowers-102
    DINO linear classifier (kind ``dino_linear``, :func:`load_dino_linear_from_spec`; it crops for itself)."""
    from cfx.models.imagenet_classifier import MULTICLASS_KINDS, load_imagenet_classifier

    kind = str(spec.get("kind") or "classifier")
    if kind in ZERO_SHOT_KINDS:
        from cfx.models.openclip_classifier import load_classifier_from_spec

        return load_classifier_from_spec(spec, path, center_crop)
    if kind in TRAINED_HEAD_KINDS:
        return load_dino_linear_from_spec(spec, path)
    if kind in MULTICLASS_KINDS:
        return load_imagenet_classifier(kind, path, center_crop)
    raise ValueError(f"classifier {path}: kind '{kind}' is no multi-class kind ({', '.join(multiclass_kinds())})")


def load_experiment_classifier(spec: dict, path: str | Path, experiment: dict,
                               center_crop: int | None = None) -> nn.Module:
    """The classifier an experiment explains, on [−1,1] images: a multi-class one (:func:`load_multiclass_classifier`,
    experiments with ``class_targets`` or ``image_targets``) or a binary query classifier
    (:func:`load_query_classifier`, experiments with ``query_label``)."""
    kind = str(spec.get("kind") or "classifier")
    if kind in multiclass_kinds():
        if not (experiment.get("class_targets") or experiment.get("image_targets")):
            raise ValueError(f"classifier {path} (kind {kind}) is multi-class: its experiment needs class_targets "
                             f"(source class -> target class) or image_targets, not a binary query_label")
        return load_multiclass_classifier(spec, path, center_crop)
    if experiment.get("query_label") is None:
        raise ValueError(f"classifier {path} (kind {kind}) answers a binary query: its experiment needs query_label")
    return load_query_classifier(spec, path, int(experiment["query_label"]))
