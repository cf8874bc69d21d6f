"""VGGFace2 ResNet-50 (Caffe layout) for FVA/FS, and DiME's CelebA attribute oracle built on it.

Both networks are the VGGFace2 ``resnet50_ft`` converted from Caffe (Cao et al., VGGFace2, 2018): bottlenecks with
the stride on the *first* 1×1 convolution (not on the 3×3 as in torchvision), a 3×3/2 max-pool with
``ceil_mode=True`` and a 7×7 average pool. They reach cfx in two published layouts:

* ``resnet50_ft_weight.pkl`` (cydonia999/VGGFace2-pytorch ``models/resnet.py``; copied as DiME/ACE
  ``eval_utils/resnet50_facevgg2_FVA.py``): a pickle of a dict ``name → numpy array`` with torchvision-style names
  ``conv1.weight``, ``bn1.*``, ``layer{1..4}.{i}.conv{1,2,3}.weight``, ``….bn{1,2,3}.*``,
  ``….downsample.{0,1}.*``, ``fc.weight`` (8631, 2048), ``fc.bias``. FVA/FS build it with ``include_top=False``
  and compare the (N, 2048, 1, 1) pooled features by cosine (docs/upstream/dime_ace.md §4.1).
* The "dag" layout of the MatConvNet→PyTorch conversion (``Resnet50_128`` in DiME ``eval_utils/oracle_metrics.py``,
  ``Resnet50_ft_dag`` in STEEX ``models/OracleResnetModel.py``): flat Caffe names ``conv1_7x7_s2``,
  ``conv{s}_{b}_1x1_reduce``, ``conv{s}_{b}_3x3``, ``conv{s}_{b}_1x1_increase``, ``conv{s}_{b}_1x1_proj``, each
  followed by a ``…_bn`` BatchNorm. DiME's CelebA oracle (``oracle.pth``, ``{'feat_extract', 'classifier'}``) is
  ``Resnet50_128`` (this trunk + a bias-free 1×1 conv ``feat_extract`` 2048→128) and ``Linear(128, 40)``.

The published pickle is a Python-2 pickle of numpy arrays; :func:`load_vggface2_weights` reads it with an
unpickler that only resolves numpy's array-reconstruction globals (no arbitrary code runs).
"""

from __future__ import annotations

import pickle
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from cfx.runtime.checkpoints import load_checkpoint, load_state_dict_strict

# (bottleneck width, blocks, stride of the stage's first block) of ResNet-50
STAGES = ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2))
NUM_IDENTITIES = 8631  # VGGFace2 training identities (the Caffe model's classifier)
# cydonia999 VGGFace2-pytorch / DiME, ACE compute_FVA.py: mean subtracted from the BGR uint8 image, no std
VGGFACE2_MEAN_BGR = np.array([91.4953, 103.8827, 131.0912])
# DiME Resnet50_128.forward: this RGB-ordered mean (/255) is subtracted from the BGR channels (kept as upstream)
ORACLE_MEAN = (131.0912, 103.8827, 91.4953)


def _bottleneck(x: torch.Tensor, reduce: nn.Module, reduce_bn: nn.Module, conv3: nn.Module, conv3_bn: nn.Module,
                increase: nn.Module, increase_bn: nn.Module, proj: nn.Module | None = None,
                proj_bn: nn.Module | None = None) -> torch.Tensor:
    """One Caffe bottleneck: 1×1 (strided) → 3×3 → 1×1, plus the identity or the strided 1×1 projection."""
    out = F.relu(reduce_bn(reduce(x)))
    out = F.relu(conv3_bn(conv3(out)))
    out = increase_bn(increase(out))
    shortcut = x if proj is None else proj_bn(proj(x))
    return F.relu(shortcut + out)


def _stem(conv: nn.Module, bn: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """7×7/2 convolution, BN, ReLU, then the 3×3/2 max-pool with ``ceil_mode=True`` (Caffe's pooling)."""
    return F.max_pool2d(F.relu(bn(conv(x))), kernel_size=3, stride=2, padding=0, ceil_mode=True)


class _Bottleneck(nn.Module):
    """cydonia999 ``Bottleneck`` names: conv1/bn1 (stride here), conv2/bn2, conv3/bn3, downsample.{0,1}."""

    def __init__(self, inplanes: int, planes: int, stride: int, project: bool) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, stride=stride, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.downsample = (nn.Sequential(nn.Conv2d(inplanes, planes * 4, 1, stride=stride, bias=False),
                                         nn.BatchNorm2d(planes * 4)) if project else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        proj = (self.downsample[0], self.downsample[1]) if self.downsample is not None else (None, None)
        return _bottleneck(x, self.conv1, self.bn1, self.conv2, self.bn2, self.conv3, self.bn3, *proj)


class VGGFace2ResNet50(nn.Module):
    """VGGFace2 ``resnet50_ft`` with cydonia999's parameter names. ``include_top=False`` (FVA/FS) returns the
    (N, 2048, 1, 1) average-pooled features, ``True`` the 8631 identity logits. Input: 224² BGR images minus
    :data:`VGGFACE2_MEAN_BGR` (see :func:`vggface2_input`)."""

    def __init__(self, num_classes: int = NUM_IDENTITIES, include_top: bool = False) -> None:
        super().__init__()
        self.include_top = include_top
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        inplanes = 64
        for index, (planes, blocks, stride) in enumerate(STAGES, start=1):
            layer = [_Bottleneck(inplanes, planes, stride, project=True)]
            layer += [_Bottleneck(planes * 4, planes, 1, project=False) for _ in range(1, blocks)]
            setattr(self, f"layer{index}", nn.Sequential(*layer))
            inplanes = planes * 4
        self.fc = nn.Linear(2048, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = _stem(self.conv1, self.bn1, x)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = F.avg_pool2d(x, kernel_size=7, stride=1)
        return self.fc(x.flatten(1)) if self.include_top else x


class CaffeResNet50Dag(nn.Module):
    """The VGGFace2 ResNet-50 trunk with the flat names of the MatConvNet "dag" conversion (DiME
    ``Resnet50_128``, STEEX ``Resnet50_ft_dag``). ``feature_dim``: a bias-free 1×1 conv ``feat_extract``
    2048→``feature_dim`` after the pool (``Resnet50_128``: 128); ``None``: the 2048-d pool (STEEX, whose 8631-way
    ``classifier`` conv is replaced by an identity). Returns (N, features); no input preprocessing here."""

    def __init__(self, feature_dim: int | None = 128) -> None:
        super().__init__()
        self.conv1_7x7_s2 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.conv1_7x7_s2_bn = nn.BatchNorm2d(64)
        self.block_names: list[tuple[str, bool]] = []
        inplanes = 64
        for stage, (planes, blocks, stride) in enumerate(STAGES, start=2):
            for block in range(1, blocks + 1):
                name = f"conv{stage}_{block}"
                first = block == 1
                block_in = inplanes if first else planes * 4
                self._add(f"{name}_1x1_reduce", nn.Conv2d(block_in, planes, 1, stride=stride if first else 1,
                                                          bias=False))
                self._add(f"{name}_3x3", nn.Conv2d(planes, planes, 3, padding=1, bias=False))
                self._add(f"{name}_1x1_increase", nn.Conv2d(planes, planes * 4, 1, bias=False))
                if first:
                    self._add(f"{name}_1x1_proj", nn.Conv2d(block_in, planes * 4, 1, stride=stride, bias=False))
                self.block_names.append((name, first))
            inplanes = planes * 4
        self.output_size = 2048 if feature_dim is None else int(feature_dim)
        self.feat_extract = None if feature_dim is None else nn.Conv2d(2048, int(feature_dim), 1, bias=False)

    def _add(self, name: str, conv: nn.Conv2d) -> None:
        setattr(self, name, conv)
        setattr(self, f"{name}_bn", nn.BatchNorm2d(conv.out_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = _stem(self.conv1_7x7_s2, self.conv1_7x7_s2_bn, x)
        for name, first in self.block_names:
            parts = [getattr(self, f"{name}_{part}{suffix}") for part in ("1x1_reduce", "3x3", "1x1_increase")
                     for suffix in ("", "_bn")]
            proj = [getattr(self, f"{name}_1x1_proj"), getattr(self, f"{name}_1x1_proj_bn")] if first else []
            x = _bottleneck(x, *parts, *proj)
        x = F.avg_pool2d(x, kernel_size=7, stride=1)
        if self.feat_extract is not None:
            x = self.feat_extract(x)
        return x.flatten(1)


def celeba_oracle_input(x: torch.Tensor) -> torch.Tensor:
    """DiME ``Resnet50_128.forward`` preprocessing of [−1,1] RGB images: ``(x+1)/2``, RGB→BGR, subtract
    ``(131.0912, 103.8827, 91.4953)/255`` from the (B, G, R) channels in that order (the RGB-ordered mean on BGR
    channels, as upstream), bicubic resize to 224×224 (``align_corners=False``)."""
    data = (x + 1) / 2
    data = data[:, [2, 1, 0], ...]
    data = data - torch.tensor(ORACLE_MEAN, dtype=torch.float32, device=data.device).view(1, -1, 1, 1) / 255.0
    return F.interpolate(data, size=(224, 224), mode="bicubic", align_corners=False)


class CelebAOracle(nn.Module):
    """DiME's CelebA attribute oracle (MNAC, CD): ``feat_extract`` = ``Resnet50_128``, ``classifier`` =
    ``Linear(128, 40)``. ``forward`` takes [−1,1] RGB images of any size and returns the 40 attribute logits."""

    def __init__(self, num_attributes: int = 40) -> None:
        super().__init__()
        self.feat_extract = CaffeResNet50Dag(feature_dim=128)
        self.classifier = nn.Linear(128, num_attributes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The 128-d ``Resnet50_128`` features of [−1,1] images."""
        return self.feat_extract(celeba_oracle_input(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def _fill_num_batches_tracked(module: nn.Module, state: dict) -> dict:
    """BatchNorm ``num_batches_tracked`` buffers the file lacks, taken from ``module`` (they do not affect eval).
    PyTorch's own ``load_state_dict`` does the same for state dicts without version metadata; files converted
    before PyTorch 0.4 (the VGGFace2 pickle) have no such entries."""
    filled = dict(state)
    for key, value in module.state_dict().items():
        if key.endswith("num_batches_tracked") and key not in filled:
            filled[key] = value
    return filled


def load_strict_bn_optional(module: nn.Module, state: dict, path: str | Path, part: str = "") -> nn.Module:
    """Strict ``load_state_dict`` (missing, unexpected or mis-shaped keys are errors naming ``path``) that
    accepts a file without BatchNorm ``num_batches_tracked`` entries."""
    if not isinstance(state, dict):
        raise ValueError(f"{path}" + (f" [{part}]" if part else "") + f" is not a state dict (got "
                         f"{type(state).__name__})")
    return load_state_dict_strict(module, _fill_num_batches_tracked(module, state), path, part)


def load_celeba_oracle(path: str | Path) -> CelebAOracle:
    """DiME's ``oracle.pth``: ``{'feat_extract': Resnet50_128 state dict, 'classifier': Linear(128, 40) state
    dict}`` (other entries ignored, as DiME's ``OracleMetrics`` ignores them), loaded weights-only and strictly.
    Returns the oracle in eval mode."""
    state = load_checkpoint(path, "CelebA oracle (DiME oracle.pth)")
    if not isinstance(state, dict) or not all(k in state for k in ("feat_extract", "classifier")):
        keys = list(state)[:5] if isinstance(state, dict) else type(state).__name__
        raise ValueError(f"{path} is not DiME's oracle.pth (expected keys feat_extract, classifier; got {keys})")
    oracle = CelebAOracle(num_attributes=int(state["classifier"]["weight"].shape[0]))
    load_strict_bn_optional(oracle.feat_extract, state["feat_extract"], path, "feat_extract")
    load_strict_bn_optional(oracle.classifier, state["classifier"], path, "classifier")
    return oracle.eval()


# --- the published pickle ------------------------------------------------------------------------------------

def _numpy_global(module: str, name: str):
    """numpy's own object for a pickled ``module.name`` (``numpy.core`` was renamed ``numpy._core`` in numpy 2)."""
    if name == "_reconstruct":
        core = getattr(np, "_core", None) or np.core
        return core.multiarray._reconstruct
    return {"ndarray": np.ndarray, "dtype": np.dtype}[name]


class _ArrayOnlyUnpickler(pickle.Unpickler):
    """Resolves only the globals a pickled dict of numpy arrays needs; anything else (functions, classes that
    would run code) is refused. ``_codecs.encode`` (how Python 3 pickles ``bytes`` at protocol ≤ 2) and
    ``collections.OrderedDict`` are plain-data helpers, allowed too."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"), ("numpy", "dtype"),
    }

    def __init__(self, file, path: Path) -> None:
        super().__init__(file, encoding="latin1")  # Python-2 str payloads, as cydonia999's loader reads them
        self.path = path

    def find_class(self, module: str, name: str):
        if (module, name) in self.ALLOWED:
            return _numpy_global(module, name)
        if (module, name) == ("_codecs", "encode"):
            import codecs

            return codecs.encode
        if (module, name) == ("collections", "OrderedDict"):
            return OrderedDict
        raise pickle.UnpicklingError(f"{self.path} asks to load the global '{module}.{name}', which a pickle of "
                                     f"numpy arrays does not need; refusing to unpickle it")


def read_array_pickle(path: str | Path) -> dict[str, np.ndarray]:
    """The ``name → numpy array`` dict of a weights pickle such as ``resnet50_ft_weight.pkl``, read with
    :class:`_ArrayOnlyUnpickler`. Errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"VGGFace2 weights {path} do not exist: download resnet50_ft "
                                f"(resnet50_ft_weight.pkl) from https://github.com/cydonia999/VGGFace2-pytorch"
                                f"#pretrained-models and put it there")
    try:
        with open(path, "rb") as handle:
            weights = _ArrayOnlyUnpickler(handle, path).load()
    except pickle.UnpicklingError as err:
        raise ValueError(f"{path} is not a plain pickle of numpy arrays: {err}") from err
    except (EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError) as err:
        raise ValueError(f"{path} is not a readable weights pickle (truncated or another format?): {err!r}") from err
    if not isinstance(weights, dict) or not all(isinstance(v, np.ndarray) for v in weights.values()):
        raise ValueError(f"{path} does not hold a dict of numpy arrays (got {type(weights).__name__})")
    return weights


def load_vggface2_weights(path: str | Path, include_top: bool = False) -> VGGFace2ResNet50:
    """:class:`VGGFace2ResNet50` with the weights of ``resnet50_ft_weight.pkl`` (cydonia999 layout), loaded
    strictly (every parameter and running statistic must be in the file with its shape; ``num_batches_tracked`` may
    be absent). Eval mode. Upstream ``load_state_dict`` copies what is present and ignores the rest; a strict load
    catches a wrong file instead of silently leaving random weights."""
    arrays = read_array_pickle(path)
    state = {name: torch.from_numpy(np.array(value, copy=True)) for name, value in arrays.items()}
    num_classes = int(state["fc.weight"].shape[0]) if "fc.weight" in state else NUM_IDENTITIES
    model = VGGFace2ResNet50(num_classes=num_classes, include_top=include_top)
    return load_strict_bn_optional(model, state, path).eval()


def vggface2_input(image: Image.Image) -> torch.Tensor:
    """DiME/ACE ``compute_FVA.py`` ``CFDataset.load_img``: ``transforms.Resize(224)`` (bilinear, shorter side) on
    the PIL image, uint8 array, RGB→BGR, float32 minus :data:`VGGFACE2_MEAN_BGR` (no std), HWC→CHW. A square
    face image gives (3, 224, 224)."""
    from torchvision import transforms

    resized = transforms.Resize(224)(image)
    img = np.array(resized, dtype=np.uint8)[:, :, ::-1].astype(np.float32)
    img -= VGGFACE2_MEAN_BGR  # float64 mean, result stored in float32 (numpy's in-place cast, as upstream)
    return torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1))).float()
