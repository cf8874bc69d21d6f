"""STEEX's networks: the CelebA-HQ attribute oracle (ACE's MNAC/CD on CelebA-HQ) and the decision classifier the
CelebA-HQ and BDD experiments explain (docs/upstream/dime_ace.md §4.2, §5; docs/upstream/ldce_gcd_svce.md §1.4).

**Decision classifier** (STEEX ``models/DecisionDensenetModel.py``, copied by ACE and LDCE):
``DecisionDensenetModel(num_classes)``: ``feat_extract = DenseNet121()``, a wrapper whose own ``feat_extract`` is
``torchvision.models.densenet121()`` with ``classifier = Identity`` (1024-d), then ``classifier = Linear(1024,
num_classes)``; the forward returns logits (ACE, LDCE). The published ``checkpoints_decision_densenet.tar.gz`` holds
``celebamaskhq/checkpoint.tar`` (3 outputs: [Male, Smiling, Young] = CelebA attributes 20, 31, 39, STEEX
``train_decision_model_celeba_or_celebamhq.py``) and ``bdd/checkpoint.tar`` (4 BDD-OIA actions), each a torch dict
with ``model_state_dict`` keyed ``feat_extract.feat_extract.features.conv0.weight`` …
``feat_extract.feat_extract.features.norm5.*``, ``classifier.weight`` (C, 1024), ``classifier.bias``: the layout of
:class:`cfx.models.classifier.DenseNetClassifier`, which loads it strictly. The experiment's CelebA query label picks
the output as ACE's ``main.py`` and LDCE's ``get_classifier`` do (20 → 0, 31 → 1, 39 → 2). STEEX trained it on
bicubic 256² images normalised with (0.5, 0.5); ACE and LDCE feed [0,1] images through ``Normalizer(0.5, 0.5)``,
i.e. the network sees ``2x − 1`` ∈ [−1,1]: cfx's classifiers take [−1,1] images, so that normalisation is the
identity here and the loaded network is fed as is.

**Oracle**:

STEEX ``models/OracleResnetModel.py`` (copied as ACE ``eval_utils/oracle_celebahq_metrics.py``):
``OracleResnet.feat_extract`` = ``Resnet50_ft_dag`` (the VGGFace2 ResNet-50 in the flat "dag" layout, see
:mod:`cfx.models.vggface2`) whose 8631-way ``classifier`` conv is replaced by an identity, then
``classifier = Linear(2048, 40)`` and a sigmoid: the forward returns probabilities. ACE's copy resizes the input
bicubically to 224×224 inside ``Resnet50_ft_dag.forward`` (STEEX resizes with PIL before); there is no mean
subtraction. Inputs are [−1,1] images (STEEX ``compute_mnac.py``: Normalize(0.5, 0.5)).

Checkpoint ``checkpoints_oracle_attribute/celebamaskhq/checkpoint.tar`` (STEEX ``train_vggface2_oracle.py``):
``{'epoch', 'optimizer_state_dict', 'loss', 'model_state_dict'}`` with ``model_state_dict`` keys
``feat_extract.conv1_7x7_s2.weight`` … ``feat_extract.conv5_3_1x1_increase_bn.*``, ``classifier.weight`` (40, 2048),
``classifier.bias``.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from cfx.models.vggface2 import CaffeResNet50Dag, load_strict_bn_optional
from cfx.runtime.checkpoints import load_checkpoint


class SteexOracle(nn.Module):
    """``OracleResnet``: [−1,1] images (any size; bicubic resize to 224 inside) → 40 attribute probabilities."""

    def __init__(self, num_attributes: int = 40) -> None:
        super().__init__()
        self.feat_extract = CaffeResNet50Dag(feature_dim=None)
        self.classifier = nn.Linear(2048, num_attributes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, size=(224, 224), mode="bicubic", align_corners=False)
        return torch.sigmoid(self.classifier(self.feat_extract(x)))


def load_steex_oracle(path: str | Path) -> SteexOracle:
    """STEEX's ``checkpoint.tar`` (a torch dict with ``model_state_dict``), loaded weights-only and strictly into
    :class:`SteexOracle`; eval mode."""
    checkpoint = load_checkpoint(path, "STEEX attribute oracle (checkpoint.tar)")
    if not isinstance(checkpoint, dict) or "model_state_dict" not in checkpoint:
        keys = list(checkpoint)[:5] if isinstance(checkpoint, dict) else type(checkpoint).__name__
        raise ValueError(f"{path} is not a STEEX checkpoint (expected a dict with 'model_state_dict'; got {keys})")
    state = checkpoint["model_state_dict"]
    weight = state.get("classifier.weight") if isinstance(state, dict) else None
    oracle = SteexOracle(num_attributes=int(weight.shape[0]) if weight is not None else 40)
    return load_strict_bn_optional(oracle, state, path, "model_state_dict").eval()


# --- the decision classifier -------------------------------------------------------------------------------------

STEEX_CELEBAHQ_OUTPUTS = {20: 0, 31: 1, 39: 2}  # CelebA attribute -> output of celebamaskhq/checkpoint.tar
STEEX_CELEBAHQ_NAMES = {20: "Male", 31: "Smiling", 39: "Young"}


def load_steex_classifier(path: str | Path):
    """STEEX's decision ``checkpoint.tar`` (a torch dict with ``model_state_dict``), loaded weights-only and strictly
    into ``DenseNetClassifier(num_attributes=C)`` (DenseNet-121 + ``Linear(1024, C)``, C read from
    ``classifier.weight``); eval mode. Input: [−1,1] images (= ``Normalize(0.5, 0.5)`` of [0,1]); output: C logits."""
    from cfx.models.classifier import DenseNetClassifier
    from cfx.runtime.checkpoints import load_state_dict_strict

    checkpoint = load_checkpoint(path, "STEEX decision classifier (checkpoint.tar)")
    if not isinstance(checkpoint, dict) or "model_state_dict" not in checkpoint:
        keys = list(checkpoint)[:5] if isinstance(checkpoint, dict) else type(checkpoint).__name__
        raise ValueError(f"{path} is not a STEEX decision classifier checkpoint (expected a dict with "
                         f"'model_state_dict', as in checkpoints_decision_densenet.tar.gz; got {keys})")
    state = checkpoint["model_state_dict"]
    weight = state.get("classifier.weight") if isinstance(state, dict) else None
    if not isinstance(weight, torch.Tensor) or weight.ndim != 2:
        raise ValueError(f"{path} [model_state_dict] has no 2-d 'classifier.weight' (the Linear(1024, C) head of "
                         f"STEEX's DecisionDensenetModel)")
    model = DenseNetClassifier(num_attributes=int(weight.shape[0]))
    hint = ("STEEX's DecisionDensenetModel keys start with 'feat_extract.feat_extract.features.' (its DenseNet121 "
            "wrapper around torchvision's densenet121) and end with 'classifier.weight', 'classifier.bias'")
    return load_state_dict_strict(model, state, path, "model_state_dict", hint).eval()


def steex_output_index(query_label: int, num_outputs: int, path: str | Path = "") -> int:
    """The output of a STEEX decision classifier that answers the experiment's query: for the 3-output CelebA-HQ
    model the CelebA attribute 20/31/39 → 0/1/2 (ACE ``main.py``, LDCE ``get_classifier``); for another head (BDD's
    4 actions) the query label is the output index, as ACE's ``--label_query`` on BDD. Anything else is a
    ValueError naming the label and the file."""
    query_label = int(query_label)
    if num_outputs == len(STEEX_CELEBAHQ_OUTPUTS):
        if query_label not in STEEX_CELEBAHQ_OUTPUTS:
            known = ", ".join(f"{a} ({STEEX_CELEBAHQ_NAMES[a]}) -> output {o}"
                              for a, o in STEEX_CELEBAHQ_OUTPUTS.items())
            raise ValueError(f"query label {query_label} is not an output of the STEEX CelebA-HQ classifier {path}: "
                             f"it answers only CelebA attributes {known}; set the experiment's query_label to one of "
                             f"{sorted(STEEX_CELEBAHQ_OUTPUTS)}")
        return STEEX_CELEBAHQ_OUTPUTS[query_label]
    if not 0 <= query_label < num_outputs:
        raise ValueError(f"query label {query_label} is not an output of the STEEX classifier {path} "
                         f"({num_outputs} outputs: the query label must be 0..{num_outputs - 1})")
    return query_label
