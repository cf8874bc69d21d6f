"""Networks the metrics read, by role, for the paper's checkpoints and the mini suite's stand-ins.

Each loader takes a :class:`~cfx.metrics.NetworkRef` (suite model entry + checkpoint path) and returns a
callable on image batches, so a metric never depends on which network stands behind the role:

======================  ===========================================  ==========================================
role / loader           paper kinds                                  mini kinds (stand-ins, labelled in tables)
======================  ===========================================  ==========================================
oracle (MNAC, CD)       ``celeba_oracle`` (DiME ``oracle.pth``),     ``oracle`` (cfx.models.oracle)
                        ``steex_oracle`` (STEEX ``checkpoint.tar``)
identity (FVA, FS)      ``vggface2`` (``resnet50_ft_weight.pkl``)    ``identity`` (oracle architecture trained
                                                                     on the generated identities)
features (FID, sFID)    ``inception`` (pytorch-fid pool3,            ``oracle`` (its 128-d feature extractor)
                        ``pt_inception-2015-12-05-6726825d.pth``)
simsiam (S³)            ``simsiam`` (``checkpoint_0099.pth.tar``)    ``oracle`` (its 128-d feature extractor)
classifier (COUT)       the experiment's classifier                  the experiment's classifier
                        (``steex_classifier`` on CelebA-HQ)
======================  ===========================================  ==========================================
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F

from cfx.io.images import load_image
from cfx.metrics import NetworkRef

Batch = Callable[[torch.Tensor], torch.Tensor]


def _checkpoint(ref: NetworkRef) -> Path:
    if ref.path is None:
        raise FileNotFoundError(f"network '{ref.name}' ({ref.role}) has no checkpoint path")
    path = Path(ref.path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {path} for the {ref.role} network '{ref.name}' does not exist: "
                                f"run `snakemake {path}` (mini: trains it; paper: downloads it)")
    return path


def _resize(x: torch.Tensor, size: int | None, mode: str = "bilinear") -> torch.Tensor:
    if size is None or tuple(x.shape[-2:]) == (size, size):
        return x
    return F.interpolate(x, size=(size, size), mode=mode, align_corners=False, antialias=mode == "bilinear")


def _mini_feature_net(ref: NetworkRef, device: str) -> torch.nn.Module:
    """The mini oracle or identity network (``AttributeOracle`` layout; widths and output count read from the file
    where the suite entry does not give them)."""
    from cfx.models.oracle import AttributeOracle
    from cfx.runtime.checkpoints import load_feat_classifier, read_feat_classifier

    if ref.kind not in ("oracle", "identity"):
        raise ValueError(f"network '{ref.name}' has kind '{ref.kind}', expected oracle or identity")
    path = _checkpoint(ref)
    state = read_feat_classifier(path, f"mini {ref.kind} network")
    features = state["feat_extract"]
    arch = {"width": int(features["stem.0.weight"].shape[0]), "feature_dim": int(features["project.weight"].shape[0])}
    arch.update({k: v for k, v in ref.spec.get("arch", {}).items() if k != "num_attributes"})
    net = AttributeOracle(num_attributes=int(state["classifier"]["weight"].shape[0]), **arch)
    return load_feat_classifier(net, state, path).to(device).requires_grad_(False)


def load_oracle_probabilities(ref: NetworkRef, device: str = "cpu") -> Batch:
    """[−1,1] images → 40 attribute probabilities (MNAC and CD: decision ``p > 0.5``)."""
    if ref.kind == "oracle":
        net = _mini_feature_net(ref, device)
        size = ref.spec.get("image_size")
        return lambda x: torch.sigmoid(net(_resize(x.to(device), size)))
    if ref.kind == "celeba_oracle":
        from cfx.models.vggface2 import load_celeba_oracle

        net = load_celeba_oracle(_checkpoint(ref)).to(device).eval().requires_grad_(False)
        return lambda x: torch.sigmoid(net(x.to(device)))
    if ref.kind == "steex_oracle":
        from cfx.models.steex import load_steex_oracle

        net = load_steex_oracle(_checkpoint(ref)).to(device).eval().requires_grad_(False)
        return lambda x: net(x.to(device))
    raise ValueError(f"network '{ref.name}' of kind '{ref.kind}' cannot serve as an attribute oracle "
                     f"(kinds: oracle, celeba_oracle, steex_oracle)")


def load_face_features(ref: NetworkRef, device: str = "cpu") -> Callable[[Sequence[Path]], torch.Tensor]:
    """Image files → identity embeddings (FVA and FS compare them by cosine)."""
    if ref.kind == "identity":
        net = _mini_feature_net(ref, device)
        size = ref.spec.get("image_size")

        def embed(paths: Sequence[Path]) -> torch.Tensor:
            x = torch.stack([load_image(p) for p in paths]) * 2 - 1
            return net.feat_extract(_resize(x.to(device), size))

        return embed
    if ref.kind == "vggface2":
        from cfx.models.vggface2 import load_vggface2_weights, vggface2_input

        net = load_vggface2_weights(_checkpoint(ref)).to(device).eval().requires_grad_(False)

        def embed_vgg(paths: Sequence[Path]) -> torch.Tensor:
            from PIL import Image

            batch = []
            for p in paths:
                with Image.open(p) as image:
                    batch.append(vggface2_input(image.convert("RGB")))
            return net(torch.stack(batch).to(device)).flatten(1)

        return embed_vgg
    raise ValueError(f"network '{ref.name}' of kind '{ref.kind}' cannot embed faces (kinds: vggface2, identity)")


def load_fid_features(ref: NetworkRef | None, device: str = "cpu", dims: int = 2048) -> Batch:
    """[0,1] images → the Fréchet features: pytorch-fid's InceptionV3 for kind ``inception`` or no network given
    (``dims`` as its ``--dims``: 2048 = pool3, the FID; 64/192/768 = earlier blocks, spatially averaged as
    ``get_activations`` does); the mini oracle's 128-d features for kind ``oracle`` (``dims`` unused). Inception's
    weights are the network's checkpoint file when it has one (the paper suite's registry ``fid_inception``,
    downloaded to ``resources/checkpoints``), else pytorch-fid's ``$TORCH_HOME`` cache."""
    if ref is None or ref.kind == "inception":
        from cfx.models.fid_inception import load_fid_inception

        net = load_fid_inception(device, dims=dims, weights=ref.path if ref is not None else None)

        def inception_features(x: torch.Tensor) -> torch.Tensor:
            out = net(x.to(device))[0]
            if out.shape[2:] != (1, 1):
                out = F.adaptive_avg_pool2d(out, output_size=(1, 1))
            return out.flatten(1)

        return inception_features
    if ref.kind == "oracle":
        net = _mini_feature_net(ref, device)
        size = ref.spec.get("image_size")
        return lambda x: net.feat_extract(_resize(x.to(device) * 2 - 1, size))
    raise ValueError(f"network '{ref.name}' of kind '{ref.kind}' cannot give FID features (kinds: inception, "
                     f"oracle)")


def load_simsiam_projector(ref: NetworkRef, device: str = "cpu") -> Batch:
    """[0,1] images → SimSiam projector outputs z (S³ compares them by cosine); mini: oracle features."""
    if ref.kind == "simsiam":
        from cfx.models.simsiam import load_simsiam, simsiam_input

        net = load_simsiam(_checkpoint(ref)).to(device).eval().requires_grad_(False)
        return lambda x: net.project(simsiam_input(x.to(device)))
    if ref.kind == "oracle":
        net = _mini_feature_net(ref, device)
        size = ref.spec.get("image_size")
        return lambda x: net.feat_extract(_resize(x.to(device) * 2 - 1, size))
    raise ValueError(f"network '{ref.name}' of kind '{ref.kind}' cannot serve S³ (kinds: simsiam, oracle)")


def load_classifier_logits(ref: NetworkRef, query_label: int | None, device: str = "cpu") -> Batch:
    """[−1,1] images → the experiment classifier's logits (binary: the query attribute's logit, shape N); a
    ``robust_classifier`` (SVCE's) is stored in the same format; ``steex_classifier``: STEEX's decision classifier,
    the query label mapped to its output (CelebA-HQ 20/31/39 → 0/1/2); ``gcd_chexpert_classifier``: GCD's CheXpert
    DenseNet-264, the query label = its output (the tree's grayscale images arrive as RGB with equal channels, which
    it takes as upstream's one channel repeated); the ImageNet kinds
    (``torchvision_resnet50``, ``madry_ft``): all 1000 logits of the whole image (N, 1000), as ACE's
    ``compute_COUT.py`` feeds its ResNet-50 (``query_label`` unused); ``openclip_zero_shot``: LDCE's zero-shot
    OpenCLIP Pets classifier, one logit per class (N, 37), on the 224 centre crop its vision tower takes, as LDCE's
    ``classifier_wrapper`` feeds it; ``dino_linear``: LDCE's Flowers-102 DINO ViT-S/8 + linear head (N, 102), on the
    224 centre crop as LDCE's wrapper."""
    from cfx.models.classifier_kinds import (
        QUERY_CLASSIFIER_KINDS,
        load_multiclass_classifier,
        load_query_classifier,
        multiclass_kinds,
    )

    if ref.kind in multiclass_kinds():
        network = load_multiclass_classifier(ref.spec, _checkpoint(ref)).to(device).eval().requires_grad_(False)
        return lambda x: network(x.to(device))
    if ref.kind in QUERY_CLASSIFIER_KINDS:
        if query_label is None:
            raise ValueError(f"network '{ref.name}' answers a binary query, but the experiment has no query_label")
        query = load_query_classifier(ref.spec, _checkpoint(ref), int(query_label))
        query = query.to(device).eval().requires_grad_(False)
        return lambda x: query(x.to(device))
    raise ValueError(f"network '{ref.name}' of kind '{ref.kind}' is not a classifier this metric can load")
