"""Which loader builds the classifier of a suite ``models:`` entry, by its ``kind``: DiME's DenseNet format
(:mod:`cfx.models.classifier`), STEEX's decision classifier, GCD's CheXpert DenseNet-264, the ImageNet classifiers,
LDCE's zero-shot OpenCLIP and DINO linear classifiers. The architectures live in their own modules; this one only
dispatches, so that none of them imports another's loader."""

from __future__ import annotations

from pathlib import Path

from torch import nn

from cfx.models.classifier import QueryClassifier, load_celeba_classifier

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
