"""Generation of one chunk: select the chunk's images, load the networks, run a method, write the tree.

Chunks follow upstream (DiME ``ChunkedDataset``): image ``i`` of the experiment belongs to chunk
``i % chunks``, and its file stem is ``str(i).zfill(7)``. Every random draw of an image comes from its own
generator seeded by (seed, method, stem), so the outputs do not depend on the chunk count or batch size.
Finished instances are skipped on a rerun (their Info file is written last), so a killed job resumes. A CUDA
out-of-memory error fails the job with a message; the workflow retries it with the batch divided by
``batch_divisor`` = 2^(attempt−1) (rule ``generate``), keeping the images already written.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from tqdm import tqdm

from cfx.data.index_dataset import IndexDataset
from cfx.data.ldce_targets import (
    CLOSEST_LIST_TARGETS,
    IMAGE_TARGET_FILES,
    IMAGE_TARGET_RULES,
    IMAGENET_CLASSES,
    IMAGENET_VAL_PER_CLASS,
    LDCE_CLASS_NAMES_FILE,
    closest_target,
    image_target,
    imagefolder_positions,
    ldce_unique_id,
    read_class_names,
    read_closest_indices,
    read_image_targets,
)
from cfx.data.minival import SUBSETS, read_subset_ids
from cfx.data.wordnet import SVCE_CLUSTER_TARGETS
from cfx.io.images import save_image_atomic
from cfx.io.tree import OutputTree, read_info, write_dime_summary
from cfx.methods import (
    batch_size_matters,
    generated_results,
    get_method,
    implementation,
    output_format,
    uses_ddpm,
)
from cfx.runtime.device import device_type, select_device, set_threads
from cfx.runtime.files import write_json_atomic
from cfx.runtime.precision import apply_precision, resolve_precision
from cfx.runtime.seeding import image_generators
from cfx.suite import class_targets

log = logging.getLogger(__name__)

SPLIT_PARTITION = {"train": 0, "val": 1, "test": 2}


def experiment_images(index: pd.DataFrame, experiment: dict[str, Any], subset_file: Path | None = None) -> list[str]:
    """Image ids of an experiment in dataset order: the split, capped at ``max_images`` (as upstream's
    ``batch_size·num_batches`` cap, applied before chunking). An experiment with ``class_targets`` (ImageNet pairs)
    takes the images of its source classes in ``ImageFolder`` order (by class, then by file name), as ACE's
    ``--label_query`` filter and LDCE's ``ImageNetSelect``. An experiment with ``image_targets: ldce`` (LDCE's Table 1)
    takes the whole val set in LDCE's re-interleaved order (:func:`ldce_order`); one with ``image_targets:
    ldce_pets`` or ``ldce_flowers`` (LDCE's Pets and Flowers tables) the test split in index order (torchvision's
    order, which LDCE's target lists index; upstream's ``shuffle: True`` only changes the processing order). An
    experiment with a ``subset`` (``dime_minival``: DiME's ``utils/minival.csv``, read from ``subset_file``) takes the
    listed images in list order, repeats included, as DiME's ``CelebAMiniVal``."""
    if experiment.get("image_targets") == SVCE_CLUSTER_TARGETS:
        raise ValueError(f"image_targets: {SVCE_CLUSTER_TARGETS} gives each image several instances: "
                         f"use experiment_items with SVCE's WordNet files")
    rows = split_rows(index, experiment)
    if experiment.get("subset"):
        return subset_images(rows, experiment, subset_file)
    targets = class_targets(experiment)
    if targets is not None:
        rows = class_rows(rows, targets)
    elif experiment.get("image_targets") == "ldce":
        rows = ldce_order(rows)
    image_ids = list(rows["image_id"])
    if experiment.get("max_images"):
        image_ids = image_ids[: int(experiment["max_images"])]
    return image_ids


def experiment_items(index: pd.DataFrame, experiment: dict[str, Any], subset_file: Path | None = None,
                     targets_file: Path | None = None) -> tuple[list[str], list[int] | None]:
    """The experiment's instances in order: image ids and, where the experiment gives one image several targets
    (``image_targets: svce_clusters``, :func:`svce_cluster_items`), the target of each instance; otherwise
    :func:`experiment_images` and None (the targets are per image: :func:`experiment_targets`)."""
    if experiment.get("image_targets") != SVCE_CLUSTER_TARGETS:
        return experiment_images(index, experiment, subset_file), None
    if targets_file is None or not Path(targets_file).is_file():
        raise FileNotFoundError(f"image_targets: {SVCE_CLUSTER_TARGETS} needs SVCE's WordNet files (rule "
                                f"fetch_svce_hierarchy writes them to resources/data/svce/IN_info/); got "
                                f"{targets_file}")
    items = svce_cluster_items(index, experiment, Path(targets_file).parent)
    if experiment.get("max_images"):
        items = items[: int(experiment["max_images"])]
    return [image_id for image_id, _ in items], [target for _, target in items]


def svce_cluster_items(index: pd.DataFrame, experiment: dict[str, Any], hierarchy_dir: Path) -> list[tuple[str, int]]:
    """SVCE's ImageNet instances (``imagenet_visual_transfer_hierachy.py``, docs/upstream/ldce_gcd_svce.md §3.2): the
    disjoint WordNet clusters of 3–10 classes, per cluster and class ``samples_per_class`` val images drawn by the
    seeded ``randperm`` stream over the class's images in ImageFolder order (:func:`cfx.data.wordnet.
    select_cluster_images`), and per image one instance for every class of its cluster (its own included unless
    ``include_source: false``), image-major as upstream's figure rows. Returns (image_id, target) pairs."""
    from cfx.data.wordnet import (
        SVCE_SAMPLES_PER_CLASS,
        WordNetHierarchy,
        cluster_targets,
        select_cluster_images,
        wordnet_clusters,
    )

    rows = split_rows(index, experiment)
    if "wnid" in rows.columns:  # ImageFolder order: class folders by wnid, files by name
        rows = rows.assign(_wnid=rows["wnid"].astype(str)).sort_values(["_wnid", "image_id"], kind="stable")
    clusters = wordnet_clusters(WordNetHierarchy.from_folder(hierarchy_dir))
    per_class = int(experiment.get("samples_per_class", SVCE_SAMPLES_PER_CLASS))
    include_source = bool(experiment.get("include_source", True))
    image_ids, labels = list(rows["image_id"]), [int(v) for v in rows["label"]]
    items = []
    for chosen in select_cluster_images(labels, clusters, per_class, seed=0):
        targets = cluster_targets(chosen["label"], clusters, include_source)
        items += [(image_ids[chosen["index"]], target) for target in targets]
    if not items:
        raise ValueError(f"no val image of the index belongs to a WordNet cluster of {hierarchy_dir}: is the index "
                         f"ImageNet's, with the class index of imagenet_class_index.json as label?")
    return items


def subset_images(rows: pd.DataFrame, experiment: dict[str, Any], subset_file: Path | None) -> list[str]:
    """The images of the experiment's ``subset`` list that are in its split, in list order (``max_images`` caps)."""
    subset = experiment["subset"]
    if subset not in SUBSETS:
        raise ValueError(f"unknown subset '{subset}'; known: {', '.join(SUBSETS)}")
    if subset_file is None or not Path(subset_file).is_file():
        raise FileNotFoundError(f"subset: {subset} needs its image list {SUBSETS[subset]} (rule fetch_dime_minival "
                                f"downloads it); got {subset_file}")
    image_ids = read_subset_ids(subset_file)
    known = set(rows["image_id"])
    strays = [i for i in image_ids if i not in known]
    if strays:
        raise ValueError(f"{subset_file} lists {len(strays)} images that are not in the index's {experiment['split']} "
                         f"split, e.g. {strays[:3]}: is the index CelebA's, with the official partition?")
    if experiment.get("max_images"):
        image_ids = image_ids[: int(experiment["max_images"])]
    return image_ids


def split_rows(index: pd.DataFrame, experiment: dict[str, Any]) -> pd.DataFrame:
    """The index rows of the experiment's split."""
    split = experiment["split"]
    rows = index[index["partition"] == SPLIT_PARTITION[split]]
    if rows.empty:
        raise ValueError(f"the index holds no image of split '{split}'")
    return rows


def imagefolder_position(rows: pd.DataFrame) -> pd.Series:
    """Each image's position in ``ImageFolder`` order over the full ImageNet val set (image_id → position), the
    index of LDCE's ``image_idx_to_tgt.yaml``. Needs all 50 000 images, 50 in each of the 1000 class folders."""
    counts = rows.groupby("wnid").size() if "wnid" in rows.columns else pd.Series(dtype=int)
    if len(counts) != IMAGENET_CLASSES or (counts != IMAGENET_VAL_PER_CLASS).any():
        total = IMAGENET_CLASSES * IMAGENET_VAL_PER_CLASS
        raise ValueError(f"LDCE's per-image targets and order index the {total} ImageNet val images "
                         f"({IMAGENET_VAL_PER_CLASS} in each of {IMAGENET_CLASSES} class folders), but the "
                         f"index has {len(rows)} images in {len(counts)} class folders: point data_roots at the "
                         f"full ImageNet val and rebuild the index")
    positions = imagefolder_positions([f"{w}/{i}" for w, i in zip(rows["wnid"], rows["image_id"], strict=True)])
    return pd.Series(positions, index=rows["image_id"].to_numpy())


def ldce_order(rows: pd.DataFrame) -> pd.DataFrame:
    """The val rows in LDCE's re-interleaved order (``data/datasets.py:ImageNet``): unique id k·1000 + class for the
    k-th image of a class, so each block of 1000 holds one image per class (:func:`ldce_unique_id`)."""
    unique_ids = imagefolder_position(rows).map(ldce_unique_id)
    return rows.assign(_ldce_id=unique_ids.to_numpy()).sort_values("_ldce_id").drop(columns="_ldce_id")


def experiment_targets(index: pd.DataFrame, experiment: dict[str, Any], image_ids: list[str],
                       targets_file: Path | None = None) -> dict[str, int] | None:
    """Each image's target class for multi-class experiments: its class's partner (``class_targets``), LDCE's
    per-image ImageNet target (``image_targets: ldce``: ``image_idx_to_tgt.yaml`` at the image's ImageFolder position,
    docs/upstream/ldce_gcd_svce.md §1.5) or LDCE's Pets / Flowers target (``image_targets: ldce_pets`` /
    ``ldce_flowers``: the first class of ``pets_closest_indices.json`` / ``flowers_closest_indices.json`` at the
    image's test-split position); None for binary experiments (the method takes 1 − prediction)."""
    pairs = class_targets(experiment)
    if pairs is not None:
        labels = index.set_index("image_id").loc[image_ids, "label"]
        return {image_id: pairs[int(label)] for image_id, label in zip(image_ids, labels, strict=True)}
    kind = experiment.get("image_targets")
    if not kind:
        return None
    if kind not in IMAGE_TARGET_FILES:
        raise ValueError(f"unknown image_targets '{kind}'; known: {', '.join(IMAGE_TARGET_FILES)}")
    if targets_file is None or not Path(targets_file).is_file():
        raise FileNotFoundError(f"image_targets: {kind} needs LDCE's {Path(IMAGE_TARGET_FILES[kind]).name} (rule "
                                f"{IMAGE_TARGET_RULES[kind]} writes {IMAGE_TARGET_FILES[kind]}); got {targets_file}")
    rows = split_rows(index, experiment)
    if kind in CLOSEST_LIST_TARGETS:
        dataset, classes, test_images = CLOSEST_LIST_TARGETS[kind]
        closest = read_closest_indices(targets_file, classes)
        if len(closest) != len(rows):
            raise ValueError(f"{targets_file} lists targets for {len(closest)} test images, the index's "
                             f"{experiment['split']} split has {len(rows)}: LDCE's list indexes torchvision's "
                             f"{dataset} test split ({test_images} images); point data_roots at the full dataset")
        position = {image_id: k for k, image_id in enumerate(rows["image_id"])}
        return {image_id: closest_target(position[image_id], closest) for image_id in image_ids}
    targets = read_image_targets(targets_file)
    positions = imagefolder_position(rows)
    if len(targets) != len(positions):
        raise ValueError(f"{targets_file} lists {len(targets)} targets for {len(positions)} val images")
    return {image_id: image_target(int(positions[image_id]), targets) for image_id in image_ids}


def class_rows(rows: pd.DataFrame, targets: dict[int, int]) -> pd.DataFrame:
    """The rows of the source classes of ``targets``, by class then index order. Class indices count the sorted wnid
    folders, so they are ImageNet's only when every one of the 1000 class folders is there."""
    if "wnid" in rows.columns and rows["wnid"].nunique() != IMAGENET_CLASSES:
        raise ValueError(f"class_targets {targets} name ImageNet classes by their index among the 1000 sorted wnid "
                         f"folders, but the index has {rows['wnid'].nunique()} class folders: point data_roots at the "
                         f"full ImageNet val (all 1000 <wnid>/ folders) and rebuild the index")
    chosen = rows[rows["label"].isin(list(targets))]
    absent = sorted(set(targets) - set(chosen["label"]))
    if absent:
        raise ValueError(f"the index has no image of source classes {absent} (class_targets {targets})")
    return chosen.sort_values("label", kind="stable")


def chunk_positions(n_images: int, chunk: int, chunks: int) -> list[int]:
    """Positions ``i`` with ``i % chunks == chunk`` (DiME/ACE ``ChunkedDataset``)."""
    if not 0 <= chunk < chunks:
        raise ValueError(f"chunk {chunk} is outside 0..{chunks - 1}")
    return [i for i in range(n_images) if i % chunks == chunk]


def load_generation_models(
    *,
    method_spec: dict[str, Any],
    experiment: dict[str, Any],
    model_specs: dict[str, dict[str, Any]],
    checkpoints: dict[str, Path],
    device: torch.device,
    method: str | None = None,
    precision: str = "auto",
    compile_unet: bool = False,
) -> dict[str, Any]:
    """Build the networks a method needs from their suite entries and checkpoints (strict loading). The
    classifier is the method's own (``classifier`` in its suite entry: SVCE's robust network) or the
    experiment's, loaded by its suite kind (:func:`cfx.models.classifier_kinds.load_experiment_classifier`: DiME's
    format or STEEX's decision classifier, whose output the query label selects, or an ImageNet ResNet-50 behind the
    method's ``classifier_center_crop``); the DDPM is loaded for methods that use one
    and computes in ``precision`` (``cfx.runtime.precision``: auto = fp16 on CUDA as upstream, fp32 on CPU). GCD:
    the DiffAE named by its suite entry (``diffae``; checkpoint ``diffae``, float16 autocast when the precision
    resolves to fp16, as upstream's ``fp16=True``) and its direction (checkpoint ``direction``, written by the
    direction search)."""
    from cfx.models.classifier_kinds import load_experiment_classifier

    clf_spec = model_specs[method_classifier(method_spec, experiment)]
    classifier = load_experiment_classifier(clf_spec, checkpoints["classifier"], experiment,
                                            center_crop=method_spec.get("classifier_center_crop"))
    models: dict[str, Any] = {"classifier": classifier.to(device).eval()}
    if experiment.get("ddpm") and uses_ddpm(method):
        from cfx.models.adm import load_adm_checkpoint
        from cfx.models.diffusion import create_gaussian_diffusion

        ddpm_spec = model_specs[experiment["ddpm"]]
        unet = load_adm_checkpoint(checkpoints["ddpm"], **ddpm_spec["flags"]).to(device).eval()
        apply_precision(unet, resolve_precision(precision, device))
        if compile_unet:
            unet = torch.compile(unet)
        diffusion_flags = dict(ddpm_spec.get("diffusion", {}))
        diffusion_flags["timestep_respacing"] = str(method_spec.get("timestep_respacing", ""))
        models["unet"] = unet
        models["diffusion"] = create_gaussian_diffusion(**diffusion_flags)
    if method and implementation(method) == "gcd":
        from cfx.methods.gcd import DEFAULTS as GCD_DEFAULTS
        from cfx.methods.gcd import load_direction
        from cfx.models.diffae import DiffAE, load_diffae_checkpoint

        cfg = {**GCD_DEFAULTS, **method_spec.get("config", {})}
        dae_spec = model_specs[method_spec["diffae"]]
        model = load_diffae_checkpoint(checkpoints["diffae"], dae_spec.get("template"), **dae_spec.get("flags", {}))
        models["diffae"] = DiffAE(model.to(device), T_encode=int(cfg["T_encode"]), T_render=int(cfg["T_render"]),
                                  batch_size=int(cfg["transfer_batch_size"]),
                                  autocast=resolve_precision(precision, device) == "fp16")
        models["direction"] = load_direction(checkpoints["direction"])
    if method and implementation(method) == "ldce":
        from cfx.models.ldm import load_ldm_checkpoint

        ldm_spec = model_specs[method_spec["ldm"]]
        # fp32 as upstream's sampler (no autocast in cc_ddim.py)
        models["ldm"] = load_ldm_checkpoint(checkpoints["ldm"], ldm_spec["config"]).to(device).eval()
        models["conditioning"] = ldce_conditioning(method_spec, experiment.get("query_label"),
                                                   checkpoints.get("class_names"))
    if float(method_spec.get("config", {}).get("l_perc", 0.0)) > 0:
        from cfx.models.perceptual import load_vgg19_perceptual

        layer = int(method_spec["config"].get("l_perc_layer", 18))
        models["perceptual"] = load_vgg19_perceptual(layer, method_spec.get("vgg19_weights")).to(device)
    for module in models.values():
        if isinstance(module, torch.nn.Module):
            module.requires_grad_(False)
    return models


def ldce_conditioning(method_spec: dict[str, Any], query_label: int | None,
                      class_names_file: Path | None = None) -> list | None:
    """What LDCE's LDM is conditioned on per target (``cfx.methods.ldce.conditioning_inputs``): None (the target
    itself is the class label, cin256-v2 on ImageNet), one prompt per class (``class_prompt``, LDCE-txt: "a photo of
    a {}." filled with LDCE's ``openai_imagenet_classes``, or "a photo of a {}, a type of pet." / "a photo of a {},
    a type of flower." with its ``pets_idx_to_label.json`` / ``flowers_idx_to_label.json`` names; the file is
    ``class_names_file``, the method's ``class_names``) or the suite entry's ``conditioning[query_label]`` — one class
    label or prompt per target (index 0: the attribute absent, 1: present)."""
    template = method_spec.get("class_prompt")
    if template:
        wanted = method_spec.get("class_names") or LDCE_CLASS_NAMES_FILE
        if class_names_file is None or not Path(class_names_file).is_file():
            raise FileNotFoundError(f"class_prompt {template!r} needs LDCE's class names {wanted} (rules "
                                    f"fetch_ldce_targets, fetch_ldce_pets, fetch_ldce_flowers); got "
                                    f"{class_names_file}")
        return [template.format(name) for name in read_class_names(class_names_file)]
    table = method_spec.get("conditioning")
    if table is None:
        return None
    if query_label is None:
        raise ValueError("methods.ldce.conditioning maps a binary query's two targets to prompts, but this "
                         "experiment's targets are classes (class_targets or image_targets): set conditioning: null "
                         "(class labels) or a class_prompt for its dataset (methods.<ldce method>.datasets.<dataset>)")
    entry = table.get(query_label, table.get(str(query_label)))
    if entry is None:
        raise KeyError(f"methods.ldce.conditioning has no entry for query label {query_label} "
                       f"(has {sorted(table)}); add one: [class or prompt of target 0, of target 1]")
    return list(entry)


def method_classifier(method_spec: dict[str, Any], experiment: dict[str, Any]) -> str:
    """Name of the classifier a method explains: its suite entry's ``classifier`` or the experiment's."""
    return method_spec.get("classifier") or experiment["classifier"]


def save_intermediate(tree: OutputTree, stem: str, frames: torch.Tensor, columns: int = 10) -> Path:
    """A strip of up to ``columns`` evenly spaced per-step x̂0 frames (uint8 T×C×H×W, first to last) as
    ``Results/<method>/Intermediate/<stem>.png`` (LDCE ``record_intermediate``; upstream keeps every frame in the
    ``.pth``)."""
    picks = torch.linspace(0, frames.shape[0] - 1, min(columns, frames.shape[0])).round().long()
    strip = torch.cat(list(frames[picks]), dim=2)
    path = tree.results_dir / "Intermediate" / f"{stem}.png"
    save_image_atomic(strip, path)
    return path


def divided_batch_size(batch_size: int, batch_divisor: int) -> int:
    """``batch_size // batch_divisor``, at least 1 (the batch of a retry after a CUDA out-of-memory error)."""
    if batch_size < 1 or batch_divisor < 1:
        raise ValueError(f"batch_size ({batch_size}) and batch_divisor ({batch_divisor}) must be >= 1")
    return max(1, batch_size // batch_divisor)


def checkpoint_identities(checkpoints: dict[str, Path]) -> dict[str, dict[str, Any] | None]:
    """Per role the file name, size and modification time of each checkpoint (a retrained or re-downloaded network
    gets a new time): part of a chunk's settings record, cheap where a sha256 of a multi-GB file is not."""
    identities: dict[str, dict[str, Any] | None] = {}
    for role, path in sorted(checkpoints.items()):
        try:
            stat = Path(path).stat()
        except (FileNotFoundError, TypeError):
            identities[role] = None
            continue
        identities[role] = {"file": Path(path).name, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    return identities


def generate_chunk(
    *,
    experiment: dict[str, Any],
    method: str,
    method_spec: dict[str, Any],
    model_specs: dict[str, dict[str, Any]],
    index_csv: Path,
    checkpoints: dict[str, Path],
    chunk: int,
    chunks: int,
    seed: int,
    tree_root: Path,
    manifest_path: Path,
    device: str = "auto",
    threads: int | None = None,
    progress: bool = True,
    precision: str = "auto",
    batch_divisor: int = 1,
    compile_unet: bool = False,
    layout: str = "celeba",
    targets_file: Path | None = None,
    subset_file: Path | None = None,
) -> dict[str, Any]:
    """Generate the counterfactuals of one chunk into the upstream tree and write the chunk manifest.

    Images are read from ``index_csv``'s paths with the transform of the dataset's ``layout``
    (:class:`cfx.data.index_dataset.IndexDataset`: CelebA, CelebA-HQ, BDD100k, BDD-OIA, ImageNet, CheXpert), resized
    as the method's ``image_resize`` says where it sets one (LDCE on ImageNet: ``stretch``). Multi-class experiments
    give each image its target (:func:`experiment_targets`; ``targets_file``: LDCE's ``image_idx_to_tgt.yaml``);
    ``subset_file``: the image list of an experiment's ``subset`` (DiME's mini-val).

    The method's ``batch_size`` is divided by ``batch_divisor`` (at least 1 image per batch): the workflow passes
    2^(attempt−1) so that a retry after a CUDA out-of-memory error runs with half the batch. ``compile_unet`` wraps
    the diffusion UNet in ``torch.compile`` (config ``compile``)."""
    set_threads(threads)
    started = time.time()
    index = pd.read_csv(index_csv, dtype={"image_id": str})
    image_ids, instance_targets = experiment_items(index, experiment, subset_file, targets_file)
    positions = chunk_positions(len(image_ids), chunk, chunks)
    image_targets = None if instance_targets is not None else experiment_targets(
        index, experiment, [image_ids[i] for i in positions], targets_file)
    module = get_method(method)
    ext, info_format = output_format(method)
    tree = OutputTree(Path(tree_root), generated_results(method), ext=method_spec.get("ext", ext),
                      info_format=info_format)
    # further result folders of the same images (SVCE: one per other radius), written before the main instance
    variant_names = list(getattr(module, "variant_names", lambda config: [])(method_spec["config"]))
    variants = {name: OutputTree(Path(tree_root), f"{generated_results(method)}/{name}", ext=tree.ext,
                                 info_format=info_format) for name in variant_names}
    # what the images depend on; a rerun with anything else (Snakemake reruns the job for changed params, inputs or
    # code) regenerates the chunk instead of keeping images made with the old settings
    signature = {"method": method, "seed": seed, "precision": resolve_precision(precision, device_type(device)),
                 "settings": {k: v for k, v in method_spec.items()
                              if k != "batch_size" or batch_size_matters(method, method_spec["config"])},
                 "experiment": {k: v for k, v in experiment.items() if k != "max_images"},
                 "checkpoints": checkpoint_identities(checkpoints)}
    stems = [tree.stem(i) for i in positions]
    for writer in (tree, *variants.values()):
        writer.prepare()
        changed = writer.settings_changed(writer.results_dir / f".params-{chunk}-of-{chunks}.json", signature, stems)
        if changed and writer is tree:
            log.info("chunk %d/%d: settings, seed or networks differ from the last run; its images are regenerated",
                     chunk, chunks)
    done = tree.completed_stems()
    for variant in variants.values():
        done &= variant.completed_stems()
    todo = [i for i in positions if tree.stem(i) not in done]
    for writer in (tree, *variants.values()):
        writer.remove_partial([tree.stem(i) for i in todo])
    log.info("chunk %d/%d: %d images, %d already done", chunk, chunks, len(positions), len(positions) - len(todo))
    batch_size = divided_batch_size(int(method_spec.get("batch_size", 16)), batch_divisor)

    if todo:
        torch_device = select_device(device)
        models = load_generation_models(
            method_spec=method_spec,
            experiment=experiment,
            model_specs=model_specs,
            checkpoints=checkpoints,
            device=torch_device,
            method=method,
            precision=precision,
            compile_unet=compile_unet,
        )
        dataset = IndexDataset(
            index,
            layout,
            split=experiment["split"],
            image_size=experiment["image_size"],
            query_label=experiment.get("query_label"),
            image_ids=[image_ids[i] for i in todo],
            resize=method_spec.get("image_resize"),
        )
        bar = tqdm(total=len(todo), desc=f"{method} chunk {chunk}/{chunks}", unit="img", disable=not progress)
        for start in range(0, len(todo), batch_size):
            batch = [dataset[k] for k in range(start, min(start + batch_size, len(todo)))]
            positions_batch = [todo[k] for k, _, _ in batch]
            images = torch.stack([img for _, img, _ in batch]).to(torch_device)
            labels = torch.stack([torch.as_tensor(lab) for _, _, lab in batch]).to(torch_device)
            stems = [tree.stem(i) for i in positions_batch]
            generators = image_generators(seed, method, stems, torch_device)
            # multi-class experiments: the class pair's partner (ACE --label_target, LDCE's swap map) or LDCE's list
            if instance_targets is not None:  # several targets per image (SVCE's WordNet clusters)
                targets = {"targets": torch.tensor([instance_targets[i] for i in positions_batch],
                                                   device=torch_device)}
            else:
                targets = {} if image_targets is None else {"targets": torch.tensor(
                    [image_targets[image_ids[i]] for i in positions_batch], device=torch_device)}
            try:
                output = module.generate(
                    images, labels, models=models, config=method_spec["config"], generators=generators, **targets
                )
            except torch.cuda.OutOfMemoryError:
                log.error("CUDA out of memory at batch size %d (batch_divisor %d); the %d finished images of this "
                          "chunk are kept. The workflow retries the job with half the batch (rule generate: "
                          "retries, resource batch_divisor); by hand: cfx generate --batch-divisor %d", len(stems),
                          batch_divisor, len(positions) - len(todo) + start, 2 * batch_divisor)
                raise
            for k, stem in enumerate(stems):
                for name, variant in variants.items():
                    extra = output.variants[name]
                    variant.write_instance(
                        stem, original=images[k].cpu(), cf=extra.counterfactuals[k].cpu(),
                        noise=extra.noise[k].cpu(), label=int(labels[k]), pred=int(extra.preds[k]),
                        target=int(extra.targets[k]), cf_pred=int(extra.cf_preds[k]), info=extra.info[k],
                        write_original=False,
                    )
                tree.write_instance(
                    stem,
                    original=images[k].cpu(),
                    cf=output.counterfactuals[k].cpu(),
                    noise=output.noise[k].cpu(),
                    label=int(labels[k]),
                    pred=int(output.preds[k]),
                    target=int(output.targets[k]),
                    cf_pred=int(output.cf_preds[k]),
                    info=output.info[k],
                )
                if "intermediate" in output.info[k]:
                    save_intermediate(tree, stem, output.info[k]["intermediate"])
            bar.update(len(stems))
        bar.close()

    records = []
    for i in positions:
        stem = tree.stem(i)
        info = read_info(tree.info_path(stem))
        records.append({"stem": stem, "image_id": image_ids[i], **info})
    flipped = sum(int(r["cf_pred"] == r["target"]) for r in records)
    variant_records = {
        name: [{"stem": tree.stem(i), "image_id": image_ids[i], **read_info(variant.info_path(tree.stem(i)))}
               for i in positions]
        for name, variant in variants.items()
    }
    manifest = {
        "experiment": experiment,
        "method": method,
        "chunk": chunk,
        "chunks": chunks,
        "seed": seed,
        "n": len(records),
        "n_expected_total": len(image_ids),
        "flipped": flipped,
        "records": records,
        "generated_now": len(todo),
        "batch_size": batch_size,
        "seconds": round(time.time() - started, 2),
    }
    if variant_records:
        manifest["variants"] = variant_records
    if chunks > 1:
        write_dime_summary(tree.results_dir / f"chunk-{chunk}_num-chunks-{chunks}_summary.yaml", records)
    write_json_atomic(manifest_path, manifest, sort_keys=True)
    return manifest
