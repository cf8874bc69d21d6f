"""GCD's CheXpert classifier: MONAI's DenseNet-264 behind GCD's ``DenseNetCheXpert`` wrapper
(docs/upstream/ldce_gcd_svce.md §2.3, §2.7).

**Upstream** (sobieskibj/gcd ``gcd/src/classifiers/dense_net_chexpert.py``; the same network in
``bblig/src/classifier/densenet_chexpert.py``): ``DenseNetCheXpert.classifier = monai.networks.nets.DenseNet264(
spatial_dims=2, in_channels=3, out_channels=14)``; its other attribute, ``transforms = Compose([Normalize(0.5, 0.5)])``,
is not a module and holds no state. The weights are read with ``torch.load(path)['state_dict']`` and
``self.load_state_dict(state_dict)`` (strict) on the wrapper, so the file's ``state_dict`` keys are
``classifier.`` + MONAI's names. The forward asserts one input channel, repeats it to three, rescales an input
with negative values from [−1,1] to [0,1], applies ``Normalize(0.5, 0.5)`` and returns the 14 logits
(``use_probs_and_query_label: false`` in every CheXpert config), in the order
:data:`cfx.data.layouts.GCD_CHEXPERT_OUTPUTS`.

**MONAI's DenseNet** (Project-MONAI/MONAI ``monai/networks/nets/densenet.py``; monai 1.2.0, GCD's pin, and MONAI's
HEAD d388d1c6f differ there in blank lines only): ``DenseNet264`` = ``DenseNet(init_features=64, growth_rate=32,
block_config=(6, 12, 64, 48), bn_size=4)``, ReLU, batch norm, no dropout. Modules, hence state-dict keys:

* ``features``: ``conv0`` (7×7, stride 2, padding 3, no bias), ``norm0``, ``relu0``, ``pool0`` (max 3, stride 2,
  padding 1), then per block i = 1..4 ``denseblock{i}`` and, between blocks, ``transition{i}`` (``norm``, ``relu``,
  ``conv`` 1×1 to half the channels, ``pool`` = average 2×2 stride 2), and ``norm5`` after the last block;
* each ``denseblock{i}.denselayer{j}`` (j from 1) holds one ``layers`` sequence ``norm1``, ``relu1``, ``conv1``
  (1×1 to bn_size·growth), ``norm2``, ``relu2``, ``conv2`` (3×3 to growth, padding 1), and concatenates its input
  with the result — so the keys read ``features.denseblock1.denselayer1.layers.norm1.weight`` (torchvision's
  DenseNet has no ``layers.`` level);
* ``class_layers``: ``relu``, ``pool`` (adaptive average to 1), ``flatten``, ``out`` = Linear(features, 14).

Batch norms carry ``num_batches_tracked``. DenseNet-264 at 3 input channels and 14 outputs has 1 591 keys and
30 686 350 parameters (``tests/test_chexpert_gcd.py``); keys, their order, shapes and outputs were checked equal to
``monai.networks.nets.DenseNet264`` of monai 1.2.0 once, outside the test suite (monai is not a cfx dependency).

**Here**: :class:`MonaiDenseNet` rebuilds that module tree (own code, MONAI's names) and
:class:`GCDCheXpertClassifier` the wrapper (attribute ``classifier``), loaded strictly and weights-only from
``{'state_dict': ...}``. cfx's classifiers take [−1,1] images, and GCD's ``(x + 1) / 2`` then ``Normalize(0.5, 0.5)``
maps such an input back to itself, so the network is fed the [−1,1] image as is. Upstream decides by ``x.min() < 0``
whether its input is [−1,1] or [0,1]; an X-ray with no pixel darker than mid-grey would be misread there; here the
input is always [−1,1]. One channel is repeated to three as upstream; three channels (a grayscale image read as RGB,
as the metrics read the output tree) are taken as they are, which is the same for equal channels. ``arch``
(``growth_rate``, ``block_config``, ``init_features``, ``bn_size``) shrinks the network for tests; the defaults are
DenseNet-264's.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from cfx.data.layouts import GCD_CHEXPERT_OUTPUTS

DENSENET264 = {"init_features": 64, "growth_rate": 32, "block_config": (6, 12, 64, 48), "bn_size": 4}
GCD_CHEXPERT_IN_CHANNELS = 3  # dense_net_chexpert.py: DenseNet264(spatial_dims=2, in_channels=3, out_channels=14)


class _DenseLayer(nn.Module):
    """MONAI ``_DenseLayer``: ``layers`` = BN, ReLU, 1×1 conv, BN, ReLU, 3×3 conv; output = cat(input, new)."""

    def __init__(self, in_channels: int, growth_rate: int, bn_size: int) -> None:
        super().__init__()
        width = bn_size * growth_rate
        self.layers = nn.Sequential(OrderedDict([
            ("norm1", nn.BatchNorm2d(in_channels)),
            ("relu1", nn.ReLU(inplace=True)),
            ("conv1", nn.Conv2d(in_channels, width, kernel_size=1, bias=False)),
            ("norm2", nn.BatchNorm2d(width)),
            ("relu2", nn.ReLU(inplace=True)),
            ("conv2", nn.Conv2d(width, growth_rate, kernel_size=3, padding=1, bias=False)),
        ]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, self.layers(x)], 1)


def _transition(in_channels: int, out_channels: int) -> nn.Sequential:
    """MONAI ``_Transition``: BN, ReLU, 1×1 conv, 2×2 average pool."""
    return nn.Sequential(OrderedDict([
        ("norm", nn.BatchNorm2d(in_channels)),
        ("relu", nn.ReLU(inplace=True)),
        ("conv", nn.Conv2d(in_channels, out_channels, kernel_size=1, bias=False)),
        ("pool", nn.AvgPool2d(kernel_size=2, stride=2)),
    ]))


class MonaiDenseNet(nn.Module):
    """MONAI's 2-d ``DenseNet`` (``features`` + ``class_layers``) with its module names; defaults = ``DenseNet264``."""

    def __init__(self, in_channels: int = GCD_CHEXPERT_IN_CHANNELS, out_channels: int = len(GCD_CHEXPERT_OUTPUTS),
                 init_features: int = 64, growth_rate: int = 32, block_config: Sequence[int] = (6, 12, 64, 48),
                 bn_size: int = 4) -> None:
        super().__init__()
        self.features = nn.Sequential(OrderedDict([
            ("conv0", nn.Conv2d(in_channels, init_features, kernel_size=7, stride=2, padding=3, bias=False)),
            ("norm0", nn.BatchNorm2d(init_features)),
            ("relu0", nn.ReLU(inplace=True)),
            ("pool0", nn.MaxPool2d(kernel_size=3, stride=2, padding=1)),
        ]))
        channels = init_features
        blocks = [int(b) for b in block_config]
        for i, layers in enumerate(blocks, start=1):
            block = nn.Sequential()
            for j in range(1, layers + 1):
                block.add_module(f"denselayer{j}", _DenseLayer(channels, growth_rate, bn_size))
                channels += growth_rate
            self.features.add_module(f"denseblock{i}", block)
            if i == len(blocks):
                self.features.add_module("norm5", nn.BatchNorm2d(channels))
            else:
                self.features.add_module(f"transition{i}", _transition(channels, channels // 2))
                channels //= 2
        self.class_layers = nn.Sequential(OrderedDict([
            ("relu", nn.ReLU(inplace=True)),
            ("pool", nn.AdaptiveAvgPool2d(1)),
            ("flatten", nn.Flatten(1)),
            ("out", nn.Linear(channels, out_channels)),
        ]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.class_layers(self.features(x))


class GCDCheXpertClassifier(nn.Module):
    """GCD's ``DenseNetCheXpert``: ``classifier`` = :class:`MonaiDenseNet`; [−1,1] images (B, 1 or 3, H, W) → the 14
    finding logits (B, 14) in :data:`cfx.data.layouts.GCD_CHEXPERT_OUTPUTS` order."""

    def __init__(self, **arch) -> None:
        super().__init__()
        self.classifier = MonaiDenseNet(**{**DENSENET264, **arch})
        self.in_channels = int(self.classifier.features.conv0.in_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] not in (1, self.in_channels):
            raise ValueError(f"GCD's CheXpert classifier takes (B, 1, H, W) grayscale images (or the channel repeated "
                             f"to {self.in_channels}), got shape {tuple(x.shape)}")
        if x.shape[1] == 1:
            x = x.repeat(1, self.in_channels, 1, 1)  # upstream: x.repeat(1, 3, 1, 1)
        return self.classifier(x)


_HINT = ("GCD's DenseNetCheXpert checkpoint holds {'state_dict': ...} keyed 'classifier.' + MONAI DenseNet264 names "
         "('classifier.features.conv0.weight', 'classifier.features.denseblock1.denselayer1.layers.norm1.weight', ..., "
         "'classifier.class_layers.out.weight'; gcd/src/classifiers/dense_net_chexpert.py loads it strictly into the "
         "wrapper); a bare MONAI state dict lacks the 'classifier.' prefix")


def load_gcd_chexpert_classifier(path: str | Path, **arch) -> GCDCheXpertClassifier:
    """GCD's CheXpert classifier file (a dict with ``state_dict``, the other entries of a training checkpoint
    ignored) loaded weights-only and strictly into :class:`GCDCheXpertClassifier` (``arch`` overrides DenseNet-264's
    widths; ``in_channels`` and ``out_channels`` are read from the file's first convolution and last layer); eval
    mode. Errors name the file and the first missing, unexpected and mis-shaped keys."""
    from cfx.models.diffae import LIGHTNING_GLOBALS, LightningCallbackKey
    from cfx.runtime.checkpoints import load_checkpoint, load_state_dict_strict

    allowed = [(LightningCallbackKey, name) for name in LIGHTNING_GLOBALS]
    with torch.serialization.safe_globals(allowed):  # a Lightning 1.x checkpoint's callback keys, by name only
        try:
            checkpoint = load_checkpoint(path, "GCD CheXpert classifier")
        except ValueError as err:
            if "weights-only" not in str(err):
                raise
            raise ValueError(f"{err}. If it is a training checkpoint with pickled objects besides the weights, and "
                             f"only for a file from a source you trust (unpickling can run arbitrary code), keep "
                             f"only the weights once: torch.save({{'state_dict': torch.load(p, weights_only=False)"
                             f"['state_dict']}}, p)") from err
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("state_dict"), dict):
        keys = list(checkpoint)[:8] if isinstance(checkpoint, dict) else type(checkpoint).__name__
        raise ValueError(f"{path} is not GCD's CheXpert classifier checkpoint: expected a dict with 'state_dict' "
                         f"(dense_net_chexpert.py reads torch.load(path)['state_dict']); got {keys}")
    state = checkpoint["state_dict"]
    conv0 = state.get("classifier.features.conv0.weight")
    out = state.get("classifier.class_layers.out.weight")
    if isinstance(conv0, torch.Tensor) and conv0.ndim == 4:
        arch.setdefault("in_channels", int(conv0.shape[1]))
    if isinstance(out, torch.Tensor) and out.ndim == 2:
        arch.setdefault("out_channels", int(out.shape[0]))
    model = GCDCheXpertClassifier(**arch)
    load_state_dict_strict(model, state, path, "state_dict", _HINT)
    return model.eval()


def gcd_chexpert_output(query_label: int, num_outputs: int, path: str | Path = "") -> int:
    """The output of GCD's CheXpert classifier the experiment's query label selects: the label is the output index
    (GCD's configs: ``query_label: 0 # atelectasis`` … ``13 # support devices``)."""
    query_label = int(query_label)
    if not 0 <= query_label < num_outputs:
        names = GCD_CHEXPERT_OUTPUTS if num_outputs == len(GCD_CHEXPERT_OUTPUTS) else range(num_outputs)
        raise ValueError(f"query label {query_label} is not an output of GCD's CheXpert classifier {path} "
                         f"({num_outputs} outputs: {', '.join(f'{i} {n}' for i, n in enumerate(names))})")
    return query_label
