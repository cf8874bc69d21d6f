"""Workflow steps that need more than one call: each rule script and `cfx` command calls one of these."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from cfx.runtime.device import set_threads
from cfx.runtime.files import write_json_atomic


def data_root_from_index(index_csv: Path) -> Path:
    """Dataset root of a CelebA-layout index (``ROOT/img_align_celeba/NNNNNN.jpg``)."""
    index = pd.read_csv(index_csv, dtype={"image_id": str}, nrows=1)
    if index.empty:
        raise ValueError(f"{index_csv} lists no images")
    return Path(index["path"].iloc[0]).parent.parent


def train_from_spec(
    spec: dict[str, Any], *, index_csv: Path, out_path: Path, device: str = "auto", threads: int | None = None,
    init_checkpoint: Path | None = None,
) -> dict[str, Any]:
    """Train the network a suite ``models:`` entry describes and write its checkpoint. A spec with ``init`` (a
    robust classifier fine-tuned from another network) starts from ``init_checkpoint``, by default
    ``<init>.pt`` next to ``out_path``."""
    from cfx import train

    set_threads(threads)
    options = dict(spec.get("train", {}))
    kind = spec["kind"]
    if kind == "dino_linear":  # LDCE's Flowers head on the frozen DINO backbone (recipe: the entry's train:)
        from cfx.models.dino_linear import train_dino_linear_head

        if not spec.get("backbone_weights"):
            raise ValueError("a dino_linear models: entry needs backbone_weights (the DINO weights file)")
        return train_dino_linear_head(
            index_csv, out_path, backbone_path=Path(spec["backbone_weights"]),
            n_last_blocks=int(spec.get("n_last_blocks", 1)), num_classes=int(spec.get("num_classes", 102)),
            device=device, **options,
        )
    data_root = data_root_from_index(index_csv)
    if kind == "ddpm":
        return train.train_ddpm(
            data_root, out_path, model_flags=spec["flags"], diffusion_flags=spec.get("diffusion", {}),
            image_size=int(spec["image_size"]), device=device, **options,
        )
    if kind == "diffae":
        return train.train_diffae(
            data_root, out_path, flags=spec.get("flags", {}), template=spec.get("template"),
            image_size=int(spec["image_size"]), device=device, **options,
        )
    if kind == "ldm":
        return train.train_ldm(
            data_root, out_path, config=spec["config"], image_size=int(spec["image_size"]), device=device, **options,
        )
    if kind == "classifier":
        return train.train_classifier(
            data_root, out_path, arch=spec.get("arch", {}), image_size=int(spec["image_size"]), device=device,
            **options,
        )
    if kind == "robust_classifier":
        if spec.get("init") and init_checkpoint is None:
            init_checkpoint = Path(out_path).parent / f"{spec['init']}.pt"
        return train.train_robust_classifier(
            data_root, out_path, arch=spec.get("arch", {}), image_size=int(spec["image_size"]), device=device,
            init_checkpoint=init_checkpoint, **options,
        )
    if kind == "oracle":
        return train.train_oracle(
            data_root, out_path, arch=spec.get("arch", {}), image_size=int(spec["image_size"]), device=device,
            **options,
        )
    if kind == "identity":
        return train.train_identity(
            data_root, out_path, arch=spec.get("arch", {}), image_size=int(spec["image_size"]), device=device,
            **options,
        )
    raise ValueError(f"unknown model kind '{kind}' (expected ddpm, diffae, ldm, classifier, robust_classifier, "
                     f"oracle, identity or dino_linear)")


def _gcd_networks(experiment: dict[str, Any], method_spec: dict[str, Any], model_specs: dict[str, dict[str, Any]],
                  checkpoints: dict[str, Path], device: str, precision: str = "auto",
                  with_lpips: bool = True) -> tuple[Any, Any, Any]:
    """GCD's DiffAE (the method's ``diffae`` entry), the experiment's query classifier and LPIPS (the method's
    ``lpips`` network spec: ``{kind: lpips_vgg}`` as upstream, ``{kind: lpips_random, seed}`` offline; its VGG-16
    trunk from checkpoint ``lpips`` when given, the paper suite's downloaded ``torchvision_vgg16``, else from
    ``$TORCH_HOME``). ``with_lpips=False`` (BB-LIG) skips LPIPS and returns None for it."""
    import torch

    from cfx.methods.gcd import DEFAULTS
    from cfx.metrics import NetworkRef
    from cfx.metrics.sigma_l import load_lpips
    from cfx.models.classifier_kinds import load_query_classifier
    from cfx.models.diffae import DiffAE, load_diffae_checkpoint
    from cfx.runtime.device import select_device
    from cfx.runtime.precision import resolve_precision

    dev = select_device(device)
    cfg = {**DEFAULTS, **method_spec.get("config", {})}
    dae_spec = model_specs[method_spec["diffae"]]
    model = load_diffae_checkpoint(checkpoints["diffae"], dae_spec.get("template"), **dae_spec.get("flags", {}))
    dae = DiffAE(model.to(dev), T_encode=int(cfg["T_encode"]), T_render=int(cfg["T_render"]),
                 batch_size=int(cfg["dae_batch_size"]), autocast=resolve_precision(precision, dev) == "fp16")
    clf_spec = model_specs[experiment["classifier"]]
    classifier = load_query_classifier(clf_spec, checkpoints["classifier"], int(experiment["query_label"]))
    classifier = classifier.to(dev).eval().requires_grad_(False)
    if not with_lpips:
        return dae, classifier, None
    lpips_spec = method_spec.get("lpips") or {"kind": "lpips_vgg"}
    if not isinstance(lpips_spec, dict):
        raise ValueError(f"methods.gcd.lpips must be resolved to a network spec {{kind: ...}} (the workflow and "
                         f"cfx.suite.method_network do), got {lpips_spec!r}")
    weights = checkpoints.get("lpips")
    ref = NetworkRef("lpips", "lpips", Path(weights) if weights else None, dict(lpips_spec))
    net, _ = load_lpips(ref, str(dev))
    net.requires_grad_(False)

    def lpips(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        if a.shape[1] == 1:  # grayscale (CheXpert): upstream's lpips.LPIPS broadcasts one channel against its
            a, b = a.expand(-1, 3, -1, -1), b.expand(-1, 3, -1, -1)  # 3-channel ScalingLayer: the same as repeating
        return net(a, b).reshape(a.shape[0])

    return dae, classifier, lpips


def gcd_source_position(method_spec: dict[str, Any]) -> int:
    """Position (in the experiment's image list) of GCD's source image: ``source_position`` in the method's suite
    entry, default 0 (the experiment's first image)."""
    return int(method_spec.get("source_position", 0))


def gcd_direction(*, experiment: dict[str, Any], method_spec: dict[str, Any], model_specs: dict[str, dict[str, Any]],
                  index_csv: Path, checkpoints: dict[str, Path], out_path: Path, seed: int, device: str = "auto",
                  threads: int | None = None, precision: str = "auto", layout: str = "celeba") -> dict[str, Any]:
    """GCD's direction search for an experiment: source = image :func:`gcd_source_position` of the experiment; writes
    the chosen direction (``out_path``, :func:`cfx.methods.gcd.choose_direction`), every direction
    (``directions.pt`` next to it) and a JSON record of the search (``search.json``). The image is read with the
    transform of the dataset's ``layout`` (:class:`cfx.data.index_dataset.IndexDataset`; the method's ``image_resize``
    if it names one, as generation reads the images)."""

    from cfx.data.index_dataset import IndexDataset
    from cfx.generate import experiment_images
    from cfx.methods.gcd import Scorer, save_direction, search_directions
    from cfx.runtime.checkpoints import save_checkpoint_atomic
    from cfx.runtime.seeding import image_generators

    set_threads(threads)
    index = pd.read_csv(index_csv, dtype={"image_id": str})
    image_ids = experiment_images(index, experiment)
    position = gcd_source_position(method_spec)
    if not 0 <= position < len(image_ids):
        raise ValueError(f"GCD source_position {position} is outside the experiment's {len(image_ids)} images")
    dataset = IndexDataset(index, layout, split=experiment["split"], image_size=experiment["image_size"],
                           query_label=int(experiment["query_label"]), image_ids=[image_ids[position]],
                           resize=method_spec.get("image_resize"))
    dae, classifier, lpips = _gcd_networks(experiment, method_spec, model_specs, checkpoints, device, precision)
    dev = next(dae.model.parameters()).device
    image = dataset[0][1][None].to(dev)
    # the proxy predicts every output of the classifier (upstream: all 40 CelebA logits) plus LPIPS
    scorer = Scorer(classifier.model, lpips, (image + 1) / 2, batch_size=int(method_spec.get("batch_size", 128)))
    generator = image_generators(seed, "gcd_direction", [str(position).zfill(7)])[0]
    config = {k: v for k, v in method_spec.get("config", {}).items() if k != "direction"}
    config["query_label"] = classifier.query_label  # the output the query selects (STEEX CelebA-HQ: 31 -> 1)
    result = search_directions(image, dae=dae, scorer=scorer, config=config, generator=generator, log=print)
    out_path = Path(out_path)
    save_direction(result["chosen"], out_path)
    save_checkpoint_atomic([d.to_dict() for d in result["directions"]], out_path.with_name("directions.pt"))
    chosen = result["chosen"]
    record = {"source_position": position, "source_image_id": image_ids[position],
              "source_pred": result["source_pred"], "unet_evaluations": dae.calls,
              "chosen": {k: v for k, v in chosen.to_dict().items() if k != "direction"},
              "rule": "the g-direction that flips the source at the smallest line-search step (ties: later "
                      "iteration); else any flipping direction; else the last iteration's (1, 0) g-direction",
              "iterations": result["iterations"], "n_directions": len(result["directions"]),
              "n_flipping": sum(d.first_flip_step is not None for d in result["directions"])}
    write_json_atomic(out_path.with_name("search.json"), record)
    return record


def gcd_bblig(*, experiment: dict[str, Any], method_spec: dict[str, Any], model_specs: dict[str, dict[str, Any]],
              index_csv: Path, checkpoints: dict[str, Path], out_dir: Path, n_images: int = 4,
              device: str = "auto", threads: int | None = None, precision: str = "auto",
              layout: str = "celeba") -> list[dict[str, Any]]:
    """BB-LIG maps (``cfx.methods.gcd.bblig``) of the experiment's first ``n_images`` images along the chosen
    direction (checkpoint ``direction``): ``{out_dir}/{stem}.npz`` + ``.png`` each, and ``summary.json``. Images
    are read with the transform of the dataset's ``layout`` (:class:`cfx.data.index_dataset.IndexDataset`)."""
    import json

    from cfx.data.index_dataset import IndexDataset
    from cfx.generate import experiment_images
    from cfx.methods.gcd import DEFAULTS, bblig, load_direction, save_bblig

    set_threads(threads)
    index = pd.read_csv(index_csv, dtype={"image_id": str})
    image_ids = experiment_images(index, experiment)[:n_images]
    dataset = IndexDataset(index, layout, split=experiment["split"], image_size=experiment["image_size"],
                           query_label=int(experiment["query_label"]), image_ids=image_ids,
                           resize=method_spec.get("image_resize"))
    spec = {**method_spec, "config": {**method_spec.get("config", {})}}
    dae, classifier, _ = _gcd_networks(experiment, spec, model_specs, checkpoints, device, precision, with_lpips=False)
    dae.batch_size = int({**DEFAULTS, **spec["config"]}["transfer_batch_size"])
    direction = load_direction(checkpoints["direction"])
    dev = next(dae.model.parameters()).device
    cfg = {k: v for k, v in spec["config"].items() if k.startswith("bblig_")}
    rows = []
    for k in range(len(dataset)):
        stem = str(k).zfill(7)
        result = bblig(dataset[k][1][None].to(dev), direction, dae=dae, classifier=classifier, config=cfg)
        npz, png = save_bblig(result, Path(out_dir) / stem, title=f"{image_ids[k]}: BB-LIG along the GCD direction")
        rows.append({"stem": stem, "image_id": image_ids[k], "error": result["error"],
                     "baseline_step": result["baseline_step"], "npz": str(npz), "png": str(png)})
    (Path(out_dir) / "summary.json").write_text(json.dumps(rows, indent=1))
    return rows
