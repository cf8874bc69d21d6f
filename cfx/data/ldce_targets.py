"""LDCE's target classes on ImageNet (docs/upstream/ldce_gcd_svce.md §1.5).

* Per-image targets: upstream's ``data/image_idx_to_tgt.yaml`` maps each of the 50 000 val images, by its position
  in ``torchvision.datasets.ImageFolder`` order (class folders sorted by wnid, files sorted by name), to one target
  class. Every target is one of the 4 classes ``data/synset_closest_idx.yaml`` lists for the image's class (WordNet
  Leacock–Chodorow nearest classes, ``scripts/creating_similarity.py``); this was checked on the pinned files: 50 000
  of 50 000. Without the per-image list upstream draws ``random.choice(synset_closest_idx[label])``
  (:func:`closest_class_target`).
* Class pairs (``ImageNetSelect``, configs v1_zs, v1_cc, v1_ep): zebra 340 ↔ sorrel 339, cheetah 293 ↔ cougar 286,
  Egyptian cat 285 ↔ Persian cat 283 (:data:`IMAGENET_CLASS_PAIRS`).
* Upstream re-interleaves the val set (``data/datasets.py:ImageNet``): the concatenation over k = 0…49 of
  ``samples[k::50]``, so each block of 1000 holds one image per class and the unique id u of an image is
  ``k·1000 + class`` (:func:`ldce_unique_id`); ``start_sample``/``end_sample`` count in thousands of those ids.

* Oxford-IIIT Pets (``scripts/ldce.py``, §1.5): ``data/pets_closest_indices.json`` maps each test image, by its
  position in torchvision's ``OxfordIIITPet(split="test")`` order, to 5 classes (those whose test images are nearest
  in SimSiam feature similarity, shuffled with ``random.seed(0)``; ``utils/ssl_similarity.py``); the target is the
  first (``closest_indices[idx * num_shards + shard][0]``, i.e. the image's global test position, so neither the
  sharding nor ``shuffle: True`` changes it: :func:`closest_target`). ``data/pets_idx_to_label.json`` names the 37
  classes ("0": "abyssinian" ...) for the zero-shot classifier's and LDCE-txt's prompts (:func:`read_pets_class_names`).
* Oxford Flowers-102 (same code path): ``data/flowers_closest_indices.json`` (6149 test images in torchvision's
  ``Flowers102(split="test")`` order, 5 classes each, the first is the target) and ``data/flowers_idx_to_label.json``
  (keys "1".."102", which LDCE shifts to 0..101: :func:`read_flowers_class_names`) for LDCE-txt's prompts
  ("a photo of a {name}, a type of flower.").

The two YAML files and ``imagenet_classnames.py`` (the class names of LDCE-txt's prompts, read without executing
it: :func:`read_openai_class_names`) are a versioned resource (:data:`LDCE_TARGET_FILES`: URL at lmb-freiburg/ldce
commit 6519597 and sha256), downloaded by :func:`fetch_ldce_files` and checked by :func:`verify_ldce_files`, as the
Pets and Flowers files (:data:`LDCE_FILE_GROUPS`); they are not shipped with cfx.
"""

from __future__ import annotations

import ast
import json
import random
from collections.abc import Sequence
from pathlib import Path, PurePosixPath

import yaml

from cfx.runtime.download import fetch_pinned_files, verify_pinned_files

_BASE = "https://raw.githubusercontent.com/lmb-freiburg/ldce/65195978cf84ac56a492fa4f93bc14e42d304cb3/data"
# name -> (url, sha256): the target files LDCE ships (lmb-freiburg/ldce commit 6519597, 2023-12-20)
LDCE_TARGET_FILES: dict[str, tuple[str, str]] = {
    "image_idx_to_tgt.yaml": (f"{_BASE}/image_idx_to_tgt.yaml",
                              "0511cb425515f6bbdd9834485df310bc47fec728692de9d10e35d8b666c448c9"),
    "synset_closest_idx.yaml": (f"{_BASE}/synset_closest_idx.yaml",
                                "173ce6247c1df1084066271d936c174949519f11ce3a22685abf64dffc43b408"),
    # openai_imagenet_classes: the class names of LDCE-txt's ImageNet prompts (scripts/ldce.py)
    "imagenet_classnames.py": (f"{_BASE}/imagenet_classnames.py",
                               "171be9b14f917d34e45bcab2dfb469c178badefc2a0e5a960f95778d8ba303dc"),
}
# Oxford-IIIT Pets: per-image targets and class names (same commit; rule fetch_ldce_pets)
LDCE_PETS_FILES: dict[str, tuple[str, str]] = {
    "pets_closest_indices.json": (f"{_BASE}/pets_closest_indices.json",
                                  "8455ef4a12fd06780af63a2d9e79d9d9147e78be9c534fd76760155ee62902b6"),
    "pets_idx_to_label.json": (f"{_BASE}/pets_idx_to_label.json",
                               "8275e738a63283fc0f536f1cb5bc6b0847ebf3fa603b2909c04a7928eaf1e1a9"),
}
# Oxford Flowers-102: per-image targets and class names (same commit; rule fetch_ldce_flowers)
LDCE_FLOWERS_FILES: dict[str, tuple[str, str]] = {
    "flowers_closest_indices.json": (f"{_BASE}/flowers_closest_indices.json",
                                     "c04aed4e8b7199c9427be7f8998464a34c16ae528746db6bd320c9efb1cddd7f"),
    "flowers_idx_to_label.json": (f"{_BASE}/flowers_idx_to_label.json",
                                  "b17f0537efda96b268e6cbe695ae57e9d7f13d73b5d80d4fb5e8268985e0f910"),
}
LDCE_DATA_VERSION = "ldce@6519597 data/"
# group -> its files; each group is written by its own rule (fetch_ldce_<group>)
LDCE_FILE_GROUPS = {"targets": LDCE_TARGET_FILES, "pets": LDCE_PETS_FILES, "flowers": LDCE_FLOWERS_FILES}
# where the workflow keeps them (rule fetch_ldce_targets), relative to the workflow's directory
LDCE_TARGETS_FILE = "resources/data/ldce/image_idx_to_tgt.yaml"
LDCE_CLASS_NAMES_FILE = "resources/data/ldce/imagenet_classnames.py"
LDCE_PETS_TARGETS_FILE = "resources/data/ldce/pets_closest_indices.json"
LDCE_PETS_LABELS_FILE = "resources/data/ldce/pets_idx_to_label.json"
LDCE_FLOWERS_TARGETS_FILE = "resources/data/ldce/flowers_closest_indices.json"
LDCE_FLOWERS_LABELS_FILE = "resources/data/ldce/flowers_idx_to_label.json"
# an experiment's image_targets -> the upstream file its per-image targets are read from (a generation input)
IMAGE_TARGET_FILES = {"ldce": LDCE_TARGETS_FILE, "ldce_pets": LDCE_PETS_TARGETS_FILE,
                      "ldce_flowers": LDCE_FLOWERS_TARGETS_FILE}
IMAGE_TARGET_RULES = {"ldce": "fetch_ldce_targets", "ldce_pets": "fetch_ldce_pets",
                      "ldce_flowers": "fetch_ldce_flowers"}  # the rules that write them
PETS_CLASSES = 37
FLOWERS_CLASSES = 102
# image_targets kinds read from a closest-class list indexed by test-split position: kind -> (dataset, classes,
# test images in torchvision's split)
CLOSEST_LIST_TARGETS: dict[str, tuple[str, int, int]] = {
    "ldce_pets": ("Oxford-IIIT Pets", PETS_CLASSES, 3669),
    "ldce_flowers": ("Oxford Flowers-102", FLOWERS_CLASSES, 6149),
}
IMAGENET_CLASSES = 1000
IMAGENET_VAL_PER_CLASS = 50
# config name -> (class a, class b); each is the other's target
IMAGENET_CLASS_PAIRS: dict[str, tuple[int, int]] = {
    "zebra_sorrel": (340, 339),  # v1_zs
    "cheetah_cougar": (293, 286),  # v1_cc
    "egyptian_persian": (285, 283),  # v1_ep
}


def _file_group(group: str) -> dict[str, tuple[str, str]]:
    if group not in LDCE_FILE_GROUPS:
        raise KeyError(f"unknown group of LDCE files '{group}'; known: {', '.join(LDCE_FILE_GROUPS)}")
    return LDCE_FILE_GROUPS[group]


def verify_ldce_files(folder: str | Path, group: str = "targets") -> Path:
    """Check that ``folder`` holds LDCE's files of ``group`` (:data:`LDCE_FILE_GROUPS`) with their pinned sha256;
    errors name the file and its URL."""
    return verify_pinned_files(folder, _file_group(group), what=f"LDCE {group} file", version=LDCE_DATA_VERSION,
                               fetch_hint=f"cfx.data.ldce_targets.fetch_ldce_files('{folder}', '{group}')")


def fetch_ldce_files(folder: str | Path, group: str = "targets", timeout: float = 60.0) -> Path:
    """Download LDCE's missing files of ``group`` into ``folder`` (atomic, sha256-checked, retried) and verify them
    all (rules fetch_ldce_targets, fetch_ldce_pets, fetch_ldce_flowers)."""
    fetch_pinned_files(folder, _file_group(group), timeout=timeout)
    return verify_ldce_files(folder, group)


def _read_json(path: Path, what: str):
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError as err:
        raise FileNotFoundError(f"{what} {path} does not exist (rules fetch_ldce_pets and fetch_ldce_flowers "
                                f"download LDCE's JSON files)") from err
    except ValueError as err:
        raise ValueError(f"{what} {path} is not valid JSON ({err}); re-download it") from err


def _positions(data: object, path: Path, what: str, first: int = 0) -> list:
    """A JSON object keyed "first".."first+n-1" as a list in key order (upstream converts the keys with ``int``, and
    subtracts 1 from the Flowers labels' keys, which start at 1)."""
    if not isinstance(data, dict) or not data:
        raise ValueError(f"{path} holds a {type(data).__name__}, not a non-empty object {what}")
    last = first + len(data) - 1
    try:
        by_int = {int(k): v for k, v in data.items()}
    except ValueError as err:
        raise ValueError(f"{path}: keys must be integers {first}..{last} ({err})") from err
    missing = [i for i in range(first, last + 1) if i not in by_int]
    if missing:
        raise ValueError(f"{path}: keys must be {first}..{last}; {missing[:3]} are missing")
    return [by_int[i] for i in range(first, last + 1)]


def read_pets_class_names(path: str | Path) -> list[str]:
    """``pets_idx_to_label.json``: the 37 Oxford-IIIT Pets class names by class index ("0": "abyssinian", ...,
    "36": "yorkshire terrier"), the names of LDCE's Pets prompts ("a photo of a {name}, a type of pet.")."""
    path = Path(path)
    names = _positions(_read_json(path, "LDCE Pets class-name file"), path, "class index -> name")
    if len(names) != PETS_CLASSES or not all(isinstance(n, str) and n for n in names):
        raise ValueError(f"{path}: expected {PETS_CLASSES} class names, got {len(names)} entries")
    return names


def read_flowers_class_names(path: str | Path) -> list[str]:
    """``flowers_idx_to_label.json``: the 102 Flowers-102 class names keyed "1".."102" ("1": "pink primrose", ...),
    by class index 0..101 as LDCE reads them (``{int(k) - 1: v}``, scripts/ldce.py), the names of its Flowers prompts
    ("a photo of a {name}, a type of flower.")."""
    path = Path(path)
    names = _positions(_read_json(path, "LDCE Flowers class-name file"), path, "class number -> name", first=1)
    if len(names) != FLOWERS_CLASSES or not all(isinstance(n, str) and n for n in names):
        raise ValueError(f"{path}: expected {FLOWERS_CLASSES} class names keyed 1..{FLOWERS_CLASSES}, got "
                         f"{len(names)} entries")
    return names


def read_closest_indices(path: str | Path, classes: int = PETS_CLASSES) -> list[list[int]]:
    """``pets_closest_indices.json`` (or ``flowers_closest_indices.json`` with ``classes`` 102): per test image (its
    position in torchvision's test order) the list of classes LDCE may target (5 in the shipped files,
    SimSiam-nearest first after a seeded shuffle); errors name the entry."""
    path = Path(path)
    entries = _positions(_read_json(path, "LDCE target file"), path, "image position -> classes")
    for i, entry in enumerate(entries):
        if (not isinstance(entry, list) or not entry or not all(
                isinstance(c, int) and not isinstance(c, bool) and 0 <= c < classes for c in entry)):
            raise ValueError(f"{path}: image {i} has {entry!r}, not a list of class indices 0..{classes - 1}")
    return entries


def closest_target(position: int, closest: Sequence[Sequence[int]]) -> int:
    """LDCE's target of the Pets or Flowers test image at ``position`` (torchvision's test order):
    ``closest[position][0]`` (``scripts/ldce.py``: ``closest_indices[unique_data_idx * num_shards + shard][0]``, the
    global position)."""
    if not 0 <= position < len(closest):
        raise IndexError(f"test image {position} is outside the target list (0..{len(closest) - 1}): the list "
                         f"indexes all {len(closest)} test images in torchvision's order")
    return int(closest[position][0])


def read_class_names(path: str | Path) -> list[str]:
    """The class names of an LDCE prompt file: ``imagenet_classnames.py`` (``openai_imagenet_classes``, 1000),
    ``flowers_idx_to_label.json`` (102, keyed from 1) or ``pets_idx_to_label.json`` (37), told apart by name."""
    path = Path(path)
    if path.suffix != ".json":
        return read_openai_class_names(path)
    return read_flowers_class_names(path) if path.name.startswith("flowers") else read_pets_class_names(path)


def _read_yaml(path: Path, what: str):
    try:
        return yaml.safe_load(Path(path).read_text())
    except FileNotFoundError as err:
        raise FileNotFoundError(f"{what} {path} does not exist (cfx.data.ldce_targets.fetch_ldce_files "
                                f"downloads it)") from err
    except yaml.YAMLError as err:
        raise ValueError(f"{what} {path} is not valid YAML ({err}); re-download it") from err


def _class_number(value: object, path: Path, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < IMAGENET_CLASSES:
        raise ValueError(f"{path}: {where} is {value!r}, not an ImageNet class number 0..{IMAGENET_CLASSES - 1}")
    return value


def read_image_targets(path: str | Path) -> list[int]:
    """``image_idx_to_tgt.yaml``: the target class of every val image by ImageFolder position (``{0: t0, 1: t1, …}``
    or a list, as upstream accepts both). Errors name the file and the entry."""
    path = Path(path)
    data = _read_yaml(path, "LDCE per-image target list")
    if isinstance(data, dict):
        missing = [i for i in range(len(data)) if i not in data]
        if missing:
            raise ValueError(f"{path}: image positions must be 0..{len(data) - 1}; {missing[:3]} are missing")
        data = [data[i] for i in range(len(data))]
    if not isinstance(data, list):
        raise ValueError(f"{path} holds a {type(data).__name__}, not a mapping image position -> target class")
    return [_class_number(t, path, f"the target of image {i}") for i, t in enumerate(data)]


def read_closest_classes(path: str | Path) -> dict[int, list[int]]:
    """``synset_closest_idx.yaml``: for each ImageNet class, its nearest other classes (4 in the shipped file)."""
    path = Path(path)
    data = _read_yaml(path, "LDCE closest-class list")
    if not isinstance(data, dict):
        raise ValueError(f"{path} holds a {type(data).__name__}, not a mapping class -> closest classes")
    closest = {}
    for label, classes in data.items():
        label = _class_number(label, path, "a class key")
        if not isinstance(classes, list) or not classes:
            raise ValueError(f"{path}: class {label} has no list of closest classes")
        closest[label] = [_class_number(c, path, f"a closest class of {label}") for c in classes]
    return closest


def imagefolder_positions(relative_paths: Sequence[str]) -> list[int]:
    """Each image's position in ImageFolder order (``<wnid>/<file>`` sorted by wnid, then by file name) — the index
    of ``image_idx_to_tgt.yaml``. ``relative_paths`` are the val images as ``<wnid>/<file>``; all 50 000 are needed
    for positions that match upstream's list."""
    keys = []
    for rel in relative_paths:
        parts = PurePosixPath(str(rel)).parts
        if len(parts) < 2:
            raise ValueError(f"image path {rel!r} is not <wnid>/<file> (ImageNet val in class folders)")
        keys.append((parts[-2], parts[-1]))
    order = sorted(range(len(keys)), key=keys.__getitem__)
    positions = [0] * len(keys)
    for position, i in enumerate(order):
        positions[i] = position
    return positions


def ldce_unique_id(position: int, per_class: int = IMAGENET_VAL_PER_CLASS) -> int:
    """The unique id LDCE gives the image at ImageFolder ``position`` after re-interleaving the val set: the k-th
    image of class c (position c·50 + k) has id k·1000 + c (``data/datasets.py:ImageNet``, every class has 50)."""
    cls, k = divmod(int(position), per_class)
    return k * IMAGENET_CLASSES + cls


def image_target(position: int, targets: Sequence[int], label: int | None = None,
                 closest: dict[int, list[int]] | None = None) -> int:
    """The per-image target of the image at ImageFolder ``position``; with ``label`` and ``closest`` also checks that
    it is one of the class's closest classes, as upstream's list satisfies (an error names both)."""
    if not 0 <= position < len(targets):
        raise IndexError(f"image position {position} is outside the target list (0..{len(targets) - 1}): the list "
                         f"indexes all {len(targets)} val images in ImageFolder order")
    target = int(targets[position])
    if label is not None and closest is not None and target not in closest.get(int(label), []):
        raise ValueError(f"the target {target} of image {position} is not among the closest classes "
                         f"{closest.get(int(label))} of its class {label}: is the image order ImageFolder's?")
    return target


def closest_class_target(label: int, closest: dict[int, list[int]], rng: random.Random) -> int:
    """Upstream's fallback without a per-image list: ``random.choice(synset_closest_idx[label])`` (seeded ``rng``)."""
    if int(label) not in closest:
        raise KeyError(f"class {label} has no closest classes in the list ({len(closest)} classes)")
    return rng.choice(closest[int(label)])


def pair_target(label: int, pair: str) -> int:
    """The other class of an ImageNet class pair (:data:`IMAGENET_CLASS_PAIRS`); a label outside it is an error."""
    if pair not in IMAGENET_CLASS_PAIRS:
        raise KeyError(f"unknown class pair '{pair}'; known: {', '.join(IMAGENET_CLASS_PAIRS)}")
    a, b = IMAGENET_CLASS_PAIRS[pair]
    if int(label) not in (a, b):
        raise ValueError(f"class {label} is not in the pair {pair} ({a} <-> {b})")
    return b if int(label) == a else a


def read_openai_class_names(path: str | Path) -> list[str]:
    """``openai_imagenet_classes`` of LDCE's ``data/imagenet_classnames.py`` (1000 short class names, e.g. "zebra"),
    parsed as a literal — the file is never executed. LDCE-txt prompts "a photo of a {name}." (``scripts/ldce.py``)."""
    path = Path(path)
    try:
        tree = ast.parse(path.read_text())
    except FileNotFoundError as err:
        raise FileNotFoundError(f"LDCE class-name file {path} does not exist (rule fetch_ldce_targets downloads it)"
                                ) from err
    except SyntaxError as err:
        raise ValueError(f"{path} is not LDCE's data/imagenet_classnames.py ({err}); re-download it") from err
    for node in tree.body:
        if (isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name)
                and node.targets[0].id == "openai_imagenet_classes"):
            try:
                names = ast.literal_eval(node.value)
            except ValueError as err:
                raise ValueError(f"{path}: openai_imagenet_classes is not a literal list") from err
            if (not isinstance(names, list) or len(names) != IMAGENET_CLASSES
                    or not all(isinstance(n, str) and n for n in names)):
                raise ValueError(f"{path}: openai_imagenet_classes must list {IMAGENET_CLASSES} class names")
            return names
    raise ValueError(f"{path} defines no openai_imagenet_classes list: not LDCE's data/imagenet_classnames.py")
