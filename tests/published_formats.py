"""Writers of the paper networks' published checkpoint formats with random weights (no weights can be downloaded
here). The key lists are spelled out from the upstream architecture descriptions, independently of cfx.models:

* VGGFace2 ``resnet50_ft`` (cydonia999/VGGFace2-pytorch ``models/resnet.py``): torchvision-style names;
* the MatConvNet "dag" layout (DiME ``eval_utils/oracle_metrics.py:Resnet50_128``, STEEX
  ``models/OracleResnetModel.py:Resnet50_ft_dag``): flat Caffe names;
* SimSiam (facebookresearch/simsiam ``simsiam/builder.py``), FID Inception (pytorch-fid ``inception.py``);
* STEEX's decision classifier (valeoai/STEEX ``models/DecisionDensenetModel.py``: a ``DenseNet121`` wrapper around
  torchvision's ``densenet121`` with an Identity head, then ``Linear(1024, num_classes)``), saved as its training
  script does: ``{'epoch', 'model_state_dict', 'optimizer_state_dict', 'loss'}``;
* torchvision's ``vgg16-397923af.pth`` (``torchvision/models/vgg.py`` cfg "D": ``features.{i}`` convolutions and the
  ``classifier.{0,3,6}`` ImageNet head), the trunk of ``lpips.LPIPS(net='vgg')``;
* GCD's CheXpert classifier (sobieskibj/gcd ``gcd/src/classifiers/dense_net_chexpert.py``: ``DenseNetCheXpert`` whose
  ``classifier`` is MONAI's ``DenseNet264(spatial_dims=2, in_channels=3, out_channels=14)``, Project-MONAI/MONAI
  ``monai/networks/nets/densenet.py``), saved as ``{'state_dict': ...}`` with the training checkpoint's counters.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import torch

RESNET50_STAGES = ((64, 3), (128, 4), (256, 6), (512, 3))  # bottleneck width, blocks


def _bn(prefix: str, channels: int, with_tracked: bool) -> dict[str, tuple[int, ...]]:
    keys = {f"{prefix}.{name}": (channels,) for name in ("weight", "bias", "running_mean", "running_var")}
    if with_tracked:
        keys[f"{prefix}.num_batches_tracked"] = ()
    return keys


def cydonia_resnet50_shapes(num_classes: int = 8631, with_tracked: bool = False) -> dict[str, tuple[int, ...]]:
    """Key → shape of ``resnet50_ft_weight.pkl`` (``ResNet(Bottleneck, [3, 4, 6, 3], num_classes=8631)``)."""
    shapes = {"conv1.weight": (64, 3, 7, 7), **_bn("bn1", 64, with_tracked)}
    inplanes = 64
    for layer, (planes, blocks) in enumerate(RESNET50_STAGES, start=1):
        for block in range(blocks):
            p = f"layer{layer}.{block}"
            block_in = inplanes if block == 0 else planes * 4
            shapes[f"{p}.conv1.weight"] = (planes, block_in, 1, 1)
            shapes[f"{p}.conv2.weight"] = (planes, planes, 3, 3)
            shapes[f"{p}.conv3.weight"] = (planes * 4, planes, 1, 1)
            shapes.update(_bn(f"{p}.bn1", planes, with_tracked))
            shapes.update(_bn(f"{p}.bn2", planes, with_tracked))
            shapes.update(_bn(f"{p}.bn3", planes * 4, with_tracked))
            if block == 0:
                shapes[f"{p}.downsample.0.weight"] = (planes * 4, block_in, 1, 1)
                shapes.update(_bn(f"{p}.downsample.1", planes * 4, with_tracked))
        inplanes = planes * 4
    shapes["fc.weight"] = (num_classes, 2048)
    shapes["fc.bias"] = (num_classes,)
    return shapes


def dag_resnet50_shapes(with_tracked: bool = True) -> dict[str, tuple[int, ...]]:
    """Key → shape of the flat dag trunk (without the 1×1 ``feat_extract``/``classifier`` head)."""
    shapes = {"conv1_7x7_s2.weight": (64, 3, 7, 7), **_bn("conv1_7x7_s2_bn", 64, with_tracked)}
    inplanes = 64
    for stage, (planes, blocks) in enumerate(RESNET50_STAGES, start=2):
        for block in range(1, blocks + 1):
            p = f"conv{stage}_{block}"
            block_in = inplanes if block == 1 else planes * 4
            convs = {"1x1_reduce": (planes, block_in, 1, 1), "3x3": (planes, planes, 3, 3),
                     "1x1_increase": (planes * 4, planes, 1, 1)}
            if block == 1:
                convs["1x1_proj"] = (planes * 4, block_in, 1, 1)
            for name, shape in convs.items():
                shapes[f"{p}_{name}.weight"] = shape
                shapes.update(_bn(f"{p}_{name}_bn", shape[0], with_tracked))
        inplanes = planes * 4
    return shapes


DENSENET121_BLOCKS = (6, 12, 24, 16)  # torchvision densenet121: growth 32, bn_size 4, 64 initial features


def steex_decision_densenet_shapes(num_classes: int = 3) -> dict[str, tuple[int, ...]]:
    """Key → shape of ``DecisionDensenetModel(num_classes).state_dict()``: ``feat_extract`` (STEEX's DenseNet121
    wrapper) → ``feat_extract`` (torchvision densenet121, modern key names ``norm1``/``conv1``) → ``features.*``, and
    ``classifier`` = Linear(1024, num_classes)."""
    trunk = {"conv0.weight": (64, 3, 7, 7), **_bn("norm0", 64, True)}
    features = 64
    for block, layers in enumerate(DENSENET121_BLOCKS, start=1):
        for layer in range(1, layers + 1):
            p = f"denseblock{block}.denselayer{layer}"
            width = features + (layer - 1) * 32
            trunk.update(_bn(f"{p}.norm1", width, True))
            trunk[f"{p}.conv1.weight"] = (128, width, 1, 1)
            trunk.update(_bn(f"{p}.norm2", 128, True))
            trunk[f"{p}.conv2.weight"] = (32, 128, 3, 3)
        features += layers * 32
        if block < len(DENSENET121_BLOCKS):
            trunk.update(_bn(f"transition{block}.norm", features, True))
            trunk[f"transition{block}.conv.weight"] = (features // 2, features, 1, 1)
            features //= 2
    trunk.update(_bn("norm5", features, True))
    assert features == 1024
    shapes = {f"feat_extract.feat_extract.features.{k}": v for k, v in trunk.items()}
    shapes["classifier.weight"] = (num_classes, 1024)
    shapes["classifier.bias"] = (num_classes,)
    return shapes


def write_steex_decision_checkpoint(path: Path, num_classes: int = 3, seed: int = 0,
                                    state: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """STEEX's ``<dataset>/checkpoint.tar`` with random weights (or ``state``), as ``torch.save`` of its training
    script's dict; returns the ``model_state_dict`` written."""
    if state is None:
        state = random_state(steex_decision_densenet_shapes(num_classes), seed=seed, bn_gamma=0.5)
    optimizer = {"state": {}, "param_groups": [{"lr": 1e-4, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0,
                                                "amsgrad": False, "params": list(range(len(state)))}]}
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    torch.save({"epoch": 9, "model_state_dict": state, "optimizer_state_dict": optimizer, "loss": 0.21}, path)
    return state


def monai_densenet_shapes(in_channels: int = 3, out_channels: int = 14, init_features: int = 64,
                          growth_rate: int = 32, block_config: tuple[int, ...] = (6, 12, 64, 48), bn_size: int = 4,
                          prefix: str = "classifier.") -> dict[str, tuple[int, ...]]:
    """Key → shape of ``prefix`` + MONAI ``DenseNet(spatial_dims=2, ...).state_dict()`` (defaults: ``DenseNet264``
    with GCD's 3 input channels and 14 outputs, under GCD's wrapper attribute ``classifier``): ``features.conv0``,
    ``features.norm0``, ``features.denseblock{i}.denselayer{j}.layers.{norm1,conv1,norm2,conv2}`` (MONAI's
    ``_DenseLayer`` keeps its layers in a ``layers`` Sequential), ``features.transition{i}.{norm,conv}``,
    ``features.norm5``, ``class_layers.out`` (Linear)."""
    shapes = {"features.conv0.weight": (init_features, in_channels, 7, 7), **_bn("features.norm0", init_features, True)}
    channels = init_features
    for block, layers in enumerate(block_config, start=1):
        for layer in range(1, layers + 1):
            p = f"features.denseblock{block}.denselayer{layer}.layers"
            shapes.update(_bn(f"{p}.norm1", channels, True))
            shapes[f"{p}.conv1.weight"] = (bn_size * growth_rate, channels, 1, 1)
            shapes.update(_bn(f"{p}.norm2", bn_size * growth_rate, True))
            shapes[f"{p}.conv2.weight"] = (growth_rate, bn_size * growth_rate, 3, 3)
            channels += growth_rate
        if block < len(block_config):
            shapes.update(_bn(f"features.transition{block}.norm", channels, True))
            shapes[f"features.transition{block}.conv.weight"] = (channels // 2, channels, 1, 1)
            channels //= 2
    shapes.update(_bn("features.norm5", channels, True))
    shapes["class_layers.out.weight"] = (out_channels, channels)
    shapes["class_layers.out.bias"] = (out_channels,)
    return {f"{prefix}{k}": v for k, v in shapes.items()}


def write_gcd_chexpert_checkpoint(path: Path, seed: int = 0, state: dict[str, torch.Tensor] | None = None,
                                  **arch) -> dict[str, torch.Tensor]:
    """GCD's CheXpert classifier file with random weights (or ``state``): ``{'state_dict', 'epoch', 'global_step'}``
    (what ``dense_net_chexpert.py`` reads is ``['state_dict']``); returns the state dict written."""
    if state is None:
        state = random_state(monai_densenet_shapes(**arch), seed=seed, bn_gamma=0.5)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    torch.save({"epoch": 11, "global_step": 4242, "state_dict": state}, path)
    return state


VGG16_CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")


def torchvision_vgg16_shapes(with_classifier: bool = True) -> dict[str, tuple[int, ...]]:
    """Key → shape of torchvision's VGG-16 state dict: ``features.{i}`` (conv, ReLU, pools: a conv every layer index
    the cfg gives) and, with ``with_classifier``, ``classifier.{0,3,6}`` (25088 → 4096 → 4096 → 1000; 500 MB of the
    file's 528 MB, which LPIPS does not use)."""
    shapes, index, channels = {}, 0, 3
    for item in VGG16_CFG:
        if item == "M":
            index += 1
            continue
        shapes[f"features.{index}.weight"] = (item, channels, 3, 3)
        shapes[f"features.{index}.bias"] = (item,)
        channels, index = item, index + 2  # conv + ReLU
    if with_classifier:
        for layer, (out, inp) in {0: (4096, 25088), 3: (4096, 4096), 6: (1000, 4096)}.items():
            shapes[f"classifier.{layer}.weight"] = (out, inp)
            shapes[f"classifier.{layer}.bias"] = (out,)
    return shapes


def simsiam_shapes(dim: int = 2048, pred_dim: int = 512) -> dict[str, tuple[int, ...]]:
    """Key → shape of SimSiam's ``state_dict`` (before the ``module.`` prefix): torchvision ResNet-50 encoder
    (its ``fc`` replaced by the 3-layer projector) and the 2-layer predictor."""
    import torchvision

    trunk = {k: tuple(v.shape) for k, v in torchvision.models.resnet50().state_dict().items()
             if not k.startswith("fc.")}
    shapes = {f"encoder.{k}": v for k, v in trunk.items()}
    shapes["encoder.fc.0.weight"] = (2048, 2048)
    shapes.update(_bn("encoder.fc.1", 2048, True))
    shapes["encoder.fc.3.weight"] = (2048, 2048)
    shapes.update(_bn("encoder.fc.4", 2048, True))
    shapes["encoder.fc.6.weight"] = (dim, 2048)
    shapes["encoder.fc.6.bias"] = (dim,)
    shapes.update({f"encoder.fc.7.{k}": (dim,) for k in ("running_mean", "running_var")})
    shapes["encoder.fc.7.num_batches_tracked"] = ()
    shapes["predictor.0.weight"] = (pred_dim, dim)
    shapes.update(_bn("predictor.1", pred_dim, True))
    shapes["predictor.3.weight"] = (dim, pred_dim)
    shapes["predictor.3.bias"] = (dim,)
    return shapes


def random_state(shapes: dict[str, tuple[int, ...]], seed: int = 0, bn_gamma: float = 1.0) -> dict[str, torch.Tensor]:
    """Random float32 weights of sane scale: He-normal convolutions/linears, BN scales near ``bn_gamma`` (0.5 keeps
    the activations of a 16-block ResNet from growing by orders of magnitude), shifts near 0."""
    g = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in shapes.items():
        if key.endswith("num_batches_tracked"):
            state[key] = torch.tensor(7)
        elif key.endswith("running_var"):
            state[key] = torch.rand(shape, generator=g) + 0.5
        elif key.endswith("running_mean"):
            state[key] = torch.randn(shape, generator=g) * 0.1
        elif len(shape) > 1:
            fan_in = int(np.prod(shape[1:]))
            state[key] = torch.randn(shape, generator=g) * (2.0 / fan_in) ** 0.5
        else:
            base = bn_gamma if key.endswith(".weight") else 0.0
            state[key] = torch.randn(shape, generator=g) * 0.1 + base
    return state


# --- a Python-2 pickle of numpy arrays, as resnet50_ft_weight.pkl was written -----------------------------------

def _global(module: str, name: str) -> bytes:
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def _py2_str(data: bytes) -> bytes:
    """Python 2 ``str`` (bytes): SHORT_BINSTRING or BINSTRING."""
    if len(data) < 256:
        return b"U" + bytes([len(data)]) + data
    return b"T" + struct.pack("<i", len(data)) + data


def _int(value: int) -> bytes:
    if 0 <= value < 256:
        return b"K" + bytes([value])
    if 0 <= value < 65536:
        return b"M" + struct.pack("<H", value)
    return b"J" + struct.pack("<i", value)


def _tuple(items: list[bytes]) -> bytes:
    if len(items) <= 3:
        return b"".join(items) + {0: b")", 1: b"\x85", 2: b"\x86", 3: b"\x87"}[len(items)]
    return b"(" + b"".join(items) + b"t"


def _py2_array(array: np.ndarray) -> bytes:
    """``numpy.core.multiarray._reconstruct(ndarray, (0,), 'b')`` then ``__setstate__((1, shape, dtype, False,
    raw bytes))``, the way numpy 1.x under Python 2 pickled an array (protocol 2)."""
    array = np.ascontiguousarray(array, dtype="<f4")
    dtype = (_global("numpy", "dtype") + _tuple([_py2_str(b"f4"), _int(0), _int(1)]) + b"R"
             + _tuple([_int(3), _py2_str(b"<"), b"N", b"N", b"N", _int(-1), _int(-1), _int(0)]) + b"b")
    state = _tuple([_int(1), _tuple([_int(d) for d in array.shape]), dtype, b"\x89", _py2_str(array.tobytes())])
    return (_global("numpy.core.multiarray", "_reconstruct")
            + _tuple([_global("numpy", "ndarray"), _tuple([_int(0)]), _py2_str(b"b")]) + b"R" + state + b"b")


def py2_pickle_of_arrays(arrays: dict[str, np.ndarray]) -> bytes:
    """A protocol-2 pickle of ``{name (py2 str): float32 array}`` with the opcodes Python 2 wrote (str payloads as
    BINSTRING, numpy under its 1.x module name ``numpy.core.multiarray``)."""
    body = b"}" + b"(" + b"".join(_py2_str(name.encode()) + _py2_array(a) for name, a in arrays.items()) + b"u"
    return b"\x80\x02" + body + b"."


# --- pytorch-fid's Inception weights -------------------------------------------------------------------------------

def fid_inception_state(seed: int = 0) -> dict[str, torch.Tensor]:
    """A random state dict of pytorch-fid's FID Inception (its ``fid_inception_v3`` structure: torchvision's
    Inception3 with 1008 classes, no aux logits, and the FID variants of Mixed_5b…Mixed_7c)."""
    from pytorch_fid import inception as fid

    torch.manual_seed(seed)
    net = fid._inception_v3(num_classes=1008, aux_logits=False, weights=None)
    net.Mixed_5b = fid.FIDInceptionA(192, pool_features=32)
    net.Mixed_5c = fid.FIDInceptionA(256, pool_features=64)
    net.Mixed_5d = fid.FIDInceptionA(288, pool_features=64)
    net.Mixed_6b = fid.FIDInceptionC(768, channels_7x7=128)
    net.Mixed_6c = fid.FIDInceptionC(768, channels_7x7=160)
    net.Mixed_6d = fid.FIDInceptionC(768, channels_7x7=160)
    net.Mixed_6e = fid.FIDInceptionC(768, channels_7x7=192)
    net.Mixed_7b = fid.FIDInceptionE_1(1280)
    net.Mixed_7c = fid.FIDInceptionE_2(2048)
    for module in net.modules():  # He-normal: activations keep their scale through the depth (default init fades)
        if isinstance(module, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
    return net.state_dict()


def write_random_fid_inception(torch_home: Path, seed: int = 0) -> Path:
    """Write random FID Inception weights where pytorch-fid (torch.hub) looks under ``torch_home``:
    ``torch_home/hub/checkpoints/pt_inception-2015-12-05-6726825d.pth``."""
    from pytorch_fid.inception import FID_WEIGHTS_URL

    path = Path(torch_home) / "hub" / "checkpoints" / FID_WEIGHTS_URL.rsplit("/", 1)[-1]
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(fid_inception_state(seed), path)
    return path
