"""Real dataset layouts of the paper suite besides CelebA: validation and the index every later rule reads.

CelebA-HQ follows ACE's ``CelebAHQDataset`` (docs/upstream/dime_ace.md §3.3): ``CelebAMask-HQ-attribute-anno.txt``
(count line, 40 attribute names, ``<n>.jpg`` + 40 values ±1), ``CelebA-HQ-to-CelebA-mapping.txt``
(``idx orig_idx orig_file``), CelebA's ``list_eval_partition.csv`` merged through ``orig_file``, images
``CelebA-HQ-img/<n>.jpg``. ImageNet val is the ImageFolder layout (``<wnid>/ILSVRC2012_val_<8 digits>.JPEG``,
docs/upstream/ldce_gcd_svce.md §1.8), indexed in the standard 50 000-image order (by val number), label = sorted wnid
index. BDD-OIA follows ACE's ``BDDOIADataset`` (taken from STEEX's ``data/bdd_dataset.py``;
docs/upstream/dime_ace.md §3.3): the val split of the ``lastframe`` release, ``val_25k_images_actions.json`` +
``val_25k_images_reasons.json`` and the images ``data/<file_name>``, one column per action (forward, stop, left, right).
Oxford-IIIT Pets is torchvision's ``OxfordIIITPet`` folder (LDCE's ``data/datasets.py:OxfordIIIPets`` reads it with
``split="test"``, docs/upstream/ldce_gcd_svce.md §1.8): ``oxford-iiit-pet/annotations/test.txt`` (``<image_id> <class id
1..37> <species 1..2> <breed id>``), images ``oxford-iiit-pet/images/<image_id>.jpg``; indexed in ``test.txt``'s order
(torchvision's), label = class id − 1.
Oxford Flowers-102 is torchvision's ``Flowers102`` folder (LDCE's ``data/datasets.py:Flowers102``, ``split="test"``,
docs/upstream/ldce_gcd_svce.md §1.8): ``flowers-102/imagelabels.mat`` (``labels``, 1..102 per image number),
``flowers-102/setid.mat`` (``trnid``, ``valid``, ``tstid``: 1-based image numbers) and
``flowers-102/jpg/image_<5 digits>.jpg``; indexed train, val, test (partitions 0, 1, 2), each in its ``setid.mat``
order (torchvision's), label = class − 1 (0..101) as torchvision ≥ 0.13's; LDCE's ``x - 1`` target transform gives the
same labels on the torchvision 0.12 of its environment, which returned 1..102.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from cfx.data.celeba import CELEBA_ATTRIBUTES, PARTITION_CSV
from cfx.data.celeba import build_index as build_celeba_index
from cfx.data.image_check import check_index_images
from cfx.runtime.files import write_csv_atomic

CELEBAHQ_ANNO, CELEBAHQ_MAPPING, CELEBAHQ_IMAGES = (
    "CelebAMask-HQ-attribute-anno.txt", "CelebA-HQ-to-CelebA-mapping.txt", "CelebA-HQ-img")
CELEBAHQ_URL = "https://github.com/switchablenorms/CelebAMask-HQ"
CELEBA_URL = "https://mmlab.ie.cuhk.edu.hk/projects/CelebA.html"
IMAGENET_URL = "https://image-net.org/download-images.php (ILSVRC2012 validation images, sorted into class folders)"
BDD_URL = "https://bdd-data.berkeley.edu (BDD100K images, 100K split: images/100k/val)"
BDD_VAL = "images/100k/val"
CHEXPERT_URL = "https://stanfordmlgroup.github.io/competitions/chexpert/ (CheXpert-v1.0 or -small: valid.csv + valid/)"
CHEXPERT_LABELS = [
    "No Finding", "Enlarged Cardiomediastinum", "Cardiomegaly", "Lung Opacity", "Lung Lesion", "Edema",
    "Consolidation", "Pneumonia", "Atelectasis", "Pneumothorax", "Pleural Effusion", "Pleural Other", "Fracture",
    "Support Devices",
]
# The 14 outputs of GCD's CheXpert classifier, in its order (sobieskibj/gcd gcd/src/classifiers/dense_net_chexpert.py
# ``id_to_cls``: alphabetical, unlike valid.csv's columns above); a CheXpert experiment's query_label indexes them
GCD_CHEXPERT_OUTPUTS = (
    "Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Enlarged Cardiomediastinum", "Fracture", "Lung Lesion",
    "Lung Opacity", "No Finding", "Pleural Effusion", "Pleural Other", "Pneumonia", "Pneumothorax", "Support Devices",
)
WNID = re.compile(r"^n\d{8}$")
VAL_NAME = re.compile(r"^ILSVRC2012_val_(\d{8})\.JPEG$")
BDD_OIA_URL = ("https://github.com/Twizwei/bddoia_project (BDD-OIA, the lastframe release: data/ and "
               "val_25k_images_actions.json, val_25k_images_reasons.json)")
BDD_OIA_IMAGES, BDD_OIA_ACTIONS_JSON, BDD_OIA_REASONS_JSON = (
    "data", "val_25k_images_actions.json", "val_25k_images_reasons.json")
# the first four BDD-OIA action labels, the outputs of STEEX's BDD decision classifier (docs/upstream/dime_ace.md §2.6);
# an experiment's query_label indexes them
BDD_OIA_ACTIONS = ("forward", "stop", "left", "right")
PETS_URL = ("torchvision.datasets.OxfordIIITPet(root, split='test', download=True), or images.tar.gz and "
            "annotations.tar.gz from https://www.robots.ox.ac.uk/~vgg/data/pets/ unpacked into oxford-iiit-pet/")
PETS_FOLDER, PETS_TEST = "oxford-iiit-pet", "annotations/test.txt"
PETS_CLASSES = 37
FLOWERS_URL = ("torchvision.datasets.Flowers102(root, split='test', download=True), or 102flowers.tgz, "
               "imagelabels.mat and setid.mat from https://www.robots.ox.ac.uk/~vgg/data/flowers/102/ into "
               "flowers-102/ (102flowers.tgz unpacks to jpg/)")
FLOWERS_FOLDER, FLOWERS_LABELS, FLOWERS_SETID = "flowers-102", "imagelabels.mat", "setid.mat"
FLOWERS_CLASSES = 102
FLOWERS_SPLITS = (("trnid", 0), ("valid", 1), ("tstid", 2))  # setid.mat key -> partition (torchvision's _splits_map)
LAYOUTS = ("celeba", "celebahq", "imagenet_val", "bdd100k", "bdd_oia", "chexpert", "oxford_pets", "flowers102")

log = logging.getLogger(__name__)


class DatasetLayoutError(FileNotFoundError):
    """A dataset root is missing a file or has one in the wrong format; the message says what to download."""


def _missing(path: Path, what: str, url: str, key: str) -> DatasetLayoutError:
    return DatasetLayoutError(f"{path} is missing: download {what} from {url} and put it there (the folder is "
                              f"data_roots: {{{key}: {path.parent}}} in config.yaml)")


def read_celebahq(root: Path, key: str = "celebahq") -> pd.DataFrame:
    """One row per CelebA-HQ image in annotation order: image_id (``<n>.jpg``), partition (CelebA's), identity −1,
    the 40 attributes (±1)."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetLayoutError(f"CelebA-HQ root {root} does not exist: download CelebAMask-HQ from {CELEBAHQ_URL} "
                                 f"(and CelebA's {PARTITION_CSV} from {CELEBA_URL}) and set data_roots: "
                                 f"{{{key}: /path/to/it}} in config.yaml")
    for name, what, url in ((CELEBAHQ_ANNO, "CelebAMask-HQ's attribute annotations", CELEBAHQ_URL),
                            (CELEBAHQ_MAPPING, "CelebAMask-HQ's CelebA-HQ-to-CelebA mapping", CELEBAHQ_URL),
                            (PARTITION_CSV, "CelebA's partition file (Kaggle CSV, or convert the official TXT "
                                            "with `cfx data convert-celeba`)", CELEBA_URL)):
        if not (root / name).is_file():
            raise _missing(root / name, what, url, key)
    if not (root / CELEBAHQ_IMAGES).is_dir():
        raise _missing(root / CELEBAHQ_IMAGES, "CelebAMask-HQ's images", CELEBAHQ_URL, key)
    lines = (root / CELEBAHQ_ANNO).read_text().splitlines()
    if len(lines) < 2 or lines[1].split() != CELEBA_ATTRIBUTES:
        raise DatasetLayoutError(f"{root / CELEBAHQ_ANNO}: line 2 must be the 40 CelebA attribute names")
    rows = [line.split() for line in lines[2:] if line.strip()]
    if any(len(row) != 41 for row in rows):
        raise DatasetLayoutError(f"{root / CELEBAHQ_ANNO}: every row must be an image name and 40 values")
    attrs = pd.DataFrame(rows, columns=["image_id", *CELEBA_ATTRIBUTES])
    attrs[CELEBA_ATTRIBUTES] = attrs[CELEBA_ATTRIBUTES].astype(int)
    if not attrs[CELEBA_ATTRIBUTES].isin([-1, 1]).all().all():
        raise DatasetLayoutError(f"{root / CELEBAHQ_ANNO} holds values other than -1/1")
    mapping = pd.read_csv(root / CELEBAHQ_MAPPING, sep=r"\s+", dtype={"orig_file": str})
    if not {"idx", "orig_file"} <= set(mapping.columns):
        raise DatasetLayoutError(f"{root / CELEBAHQ_MAPPING} must have the columns idx, orig_idx, orig_file")
    parts = pd.read_csv(root / PARTITION_CSV, dtype={"image_id": str})
    if list(parts.columns) != ["image_id", "partition"]:
        raise DatasetLayoutError(f"{root / PARTITION_CSV} must have the columns image_id,partition")
    by_file = dict(zip(parts["image_id"], parts["partition"].astype(int), strict=True))
    by_idx = {f"{idx}.jpg": by_file.get(orig) for idx, orig in zip(mapping["idx"], mapping["orig_file"], strict=True)}
    partition = attrs["image_id"].map(by_idx)
    if partition.isna().any():
        lost = list(attrs["image_id"][partition.isna()][:3])
        raise DatasetLayoutError(f"no CelebA partition for CelebA-HQ images {lost} through {root / CELEBAHQ_MAPPING} "
                                 f"and {root / PARTITION_CSV}: use the full CelebA partition file")
    frame = attrs[["image_id"]].copy()
    frame["partition"] = partition.astype(int).values
    frame["identity"] = -1
    return pd.concat([frame, attrs[CELEBA_ATTRIBUTES]], axis=1)


def read_imagenet_val(root: Path, key: str = "imagenet") -> pd.DataFrame:
    """ImageNet val in class folders, in the standard order (val number 1..50 000): image_id, path, partition 1,
    wnid, label (index of the wnid among the sorted class folders, torchvision ImageFolder)."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetLayoutError(f"ImageNet val root {root} does not exist: download {IMAGENET_URL} and set "
                                 f"data_roots: {{{key}: /path/to/val}} in config.yaml")
    wnids = sorted(p.name for p in root.iterdir() if p.is_dir())
    if not wnids:
        raise DatasetLayoutError(f"{root} has no class folders: ImageNet val must be sorted into <wnid>/ folders "
                                 f"({IMAGENET_URL})")
    strays = [w for w in wnids if not WNID.match(w)]
    if strays:
        raise DatasetLayoutError(f"{root}: folders {strays[:3]} are not ImageNet wnids (n########)")
    rows = []
    for label, wnid in enumerate(wnids):
        for path in (root / wnid).iterdir():
            match = VAL_NAME.match(path.name)
            if not match:
                raise DatasetLayoutError(f"{path} is not an ILSVRC2012 val image (ILSVRC2012_val_########.JPEG)")
            rows.append((int(match.group(1)), path.name, str(path.resolve()), wnid, label))
    numbers = [row[0] for row in rows]
    if len(set(numbers)) != len(numbers):
        raise DatasetLayoutError(f"{root}: a val image is in two class folders")
    rows.sort()
    frame = pd.DataFrame([row[1:] for row in rows], columns=["image_id", "path", "wnid", "label"])
    frame.insert(2, "partition", 1)
    return frame


def read_bdd100k(root: Path, key: str = "bdd100k") -> pd.DataFrame:
    """BDD100k val as ACE's ``BDD10KCE``: every image in ``images/100k/val`` (sorted by name), label 1 for all."""
    folder = Path(root) / BDD_VAL
    if not folder.is_dir():
        raise DatasetLayoutError(f"{folder} is missing: download {BDD_URL} and put the 100k images there "
                                 f"(data_roots: {{{key}: /path/to/bdd100k}} in config.yaml)")
    names = sorted(p.name for p in folder.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    if not names:
        raise DatasetLayoutError(f"{folder} holds no images: download {BDD_URL}")
    frame = pd.DataFrame({"image_id": names, "path": [str((folder / n).resolve()) for n in names]})
    frame["partition"] = 1
    frame["label"] = 1
    return frame


def _read_json(path: Path, what: str, key: str) -> object:
    if not path.is_file():
        raise _missing(path, what, BDD_OIA_URL, key)
    try:
        return json.loads(path.read_text())
    except ValueError as err:
        raise DatasetLayoutError(f"{path} is not JSON ({err}): download {what} from {BDD_OIA_URL}") from err


def read_bdd_oia(root: Path, key: str = "bdd_oia") -> pd.DataFrame:
    """BDD-OIA val as ACE's ``BDDOIADataset`` (``partition='val'``) reads it: the images of
    ``val_25k_images_actions.json`` (``{"images": [{"file_name", "id"}], "annotations": [{"category": [...]}]}``,
    image ``id`` = position of its annotation) sorted by file name, keeping those whose ``category`` has 4 entries or
    a 5th entry 0 and whose file ``data/<file_name>`` exists; one row per image: image_id (the file name), path,
    partition 1, and the first four actions as 0/1 columns :data:`BDD_OIA_ACTIONS`. ``val_25k_images_reasons.json``
    (a list of ``{"file_name", "reason"}``) must be there, as upstream opens it; the reasons are not indexed."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetLayoutError(f"BDD-OIA root {root} does not exist: download {BDD_OIA_URL} and set data_roots: "
                                 f"{{{key}: /path/to/lastframe}} in config.yaml")
    actions_path, reasons_path, images = root / BDD_OIA_ACTIONS_JSON, root / BDD_OIA_REASONS_JSON, root / BDD_OIA_IMAGES
    actions = _read_json(actions_path, "BDD-OIA's val action labels", key)
    reasons = _read_json(reasons_path, "BDD-OIA's val reason labels", key)
    if not images.is_dir():
        raise _missing(images, "BDD-OIA's images (the lastframe data/ folder)", BDD_OIA_URL, key)
    listed = actions.get("images") if isinstance(actions, dict) else None
    annotations = actions.get("annotations") if isinstance(actions, dict) else None
    if not isinstance(listed, list) or not isinstance(annotations, list):
        raise DatasetLayoutError(f"{actions_path} must be an object with the lists 'images' and 'annotations' "
                                 f"(BDD-OIA's format)")
    if not isinstance(reasons, list) or not all(isinstance(r, dict) and "file_name" in r for r in reasons):
        raise DatasetLayoutError(f"{reasons_path} must be a list of {{'file_name', 'reason'}} entries (BDD-OIA's "
                                 f"format)")
    if not all(isinstance(i, dict) and isinstance(i.get("file_name"), str) and isinstance(i.get("id"), int)
               for i in listed):
        raise DatasetLayoutError(f"{actions_path}: every entry of 'images' needs a 'file_name' and an integer 'id'")
    rows, absent = [], []
    for image in sorted(listed, key=lambda i: i["file_name"]):  # upstream: sorted by file name, stable
        ident = image["id"]
        if not 0 <= ident < len(annotations):  # upstream reads annotations[id]
            raise DatasetLayoutError(f"{actions_path}: image {image['file_name']} has id {ident}, but 'annotations' "
                                     f"has {len(annotations)} entries (the id is the annotation's position)")
        category = annotations[ident].get("category") if isinstance(annotations[ident], dict) else None
        if not isinstance(category, list) or len(category) < 4 or not all(v in (0, 1) for v in category):
            raise DatasetLayoutError(f"{actions_path}: annotation {ident} ({image['file_name']}) needs a 'category' "
                                     f"of at least 4 values 0/1, got {category!r}")
        if len(category) != 4 and category[4] != 0:  # kept: 4 actions, or a 5th label 0 (as upstream)
            continue
        path = images / image["file_name"]
        if not path.is_file():  # upstream skips listed images that are not on disk (os.path.isfile)
            absent.append(image["file_name"])
            continue
        rows.append((image["file_name"], str(path.resolve()), *[int(v) for v in category[:4]]))
    if absent:
        log.warning("BDD-OIA: %d of the images listed in %s are not in %s; skipped, as ACE's BDDOIADataset does "
                    "(e.g. %s)", len(absent), actions_path, images, absent[:3])
    if not rows:
        raise DatasetLayoutError(f"none of the val images of {actions_path} is in {images}: download {BDD_OIA_URL}")
    frame = pd.DataFrame(rows, columns=["image_id", "path", *BDD_OIA_ACTIONS])
    frame.insert(2, "partition", 1)
    return frame


def read_chexpert(root: Path, key: str = "chexpert") -> pd.DataFrame:
    """CheXpert's official validation split: ``valid.csv`` (Path relative to the root's parent, e.g.
    ``CheXpert-v1.0-small/valid/patient64541/study1/view1_frontal.jpg``) and its 14 labels (1, 0, −1 uncertain,
    blank = not mentioned, kept as NaN; an experiment reads the one its query names as 0/1, :func:`chexpert_positive`).
    Every view is indexed, frontal and lateral, in ``valid.csv``'s order."""
    root = Path(root)
    csv = root / "valid.csv"
    if not csv.is_file():
        raise DatasetLayoutError(f"{csv} is missing: download {CHEXPERT_URL} and unpack it there "
                                 f"(data_roots: {{{key}: /path/to/CheXpert-v1.0-small}} in config.yaml)")
    table = pd.read_csv(csv)
    absent = [c for c in ["Path", *CHEXPERT_LABELS] if c not in table.columns]
    if absent:
        raise DatasetLayoutError(f"{csv} lacks the columns {absent}: use CheXpert's own valid.csv")
    paths = []
    for relative in table["Path"]:
        parts = Path(relative).parts
        path = root.joinpath(*parts[1:]) if len(parts) > 1 else root / relative
        if not path.is_file():
            raise DatasetLayoutError(f"{path} (listed in {csv}) is missing: download {CHEXPERT_URL}")
        paths.append(str(path.resolve()))
    frame = pd.DataFrame({"image_id": ["/".join(Path(r).parts[-3:]) for r in table["Path"]], "path": paths})
    frame["partition"] = 1
    return pd.concat([frame, table[CHEXPERT_LABELS].reset_index(drop=True)], axis=1)


def torchvision_folder(root: Path, key: str, dataset: str, folder_name: str, marker: str, url: str,
                       members: tuple[tuple[str, str], ...]) -> Path:
    """The ``folder_name`` folder of a torchvision dataset root (``root/folder_name``), or ``root`` itself when it is
    that folder (it holds ``marker``), checked to hold ``members`` ((relative path, what it is) pairs); a missing root
    or member stops with what to download from ``url`` and the ``data_roots`` key."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetLayoutError(f"{dataset} root {root} does not exist: download it ({url}) and set "
                                 f"data_roots: {{{key}: /path/to/it}} in config.yaml (the folder that holds "
                                 f"{folder_name}/, as torchvision's root)")
    folder = root if (root / marker).is_file() else root / folder_name
    for name, what in members:
        if not (folder / name).exists():
            raise DatasetLayoutError(f"{folder / name} is missing: download {dataset} ({what}): {url} (the "
                                     f"folder is data_roots: {{{key}: {root}}} in config.yaml, holding "
                                     f"{folder_name}/)")
    return folder


def read_oxford_pets(root: Path, key: str = "oxford_pets") -> pd.DataFrame:
    """Oxford-IIIT Pets' test split as torchvision's ``OxfordIIITPet(split="test")`` reads it: the lines of
    ``annotations/test.txt`` in file order (the order LDCE's per-image targets index), label = class id − 1 (0..36,
    sorted breed names: 0 Abyssinian ... 36 yorkshire_terrier), ``species`` = 0 cat / 1 dog, ``breed`` the class
    name of the image id (``Abyssinian_201`` -> ``Abyssinian``); image_id is the file name ``<id>.jpg``, partition 2."""
    members = ((PETS_TEST, "its annotations, annotations.tar.gz"), ("images", "its images, images.tar.gz"))
    folder = torchvision_folder(root, key, "Oxford-IIIT Pets", PETS_FOLDER, PETS_TEST, PETS_URL, members)
    listing, images = folder / PETS_TEST, folder / "images"
    rows, absent = [], []
    for number, line in enumerate(listing.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split()
        if len(fields) != 4 or not all(f.isdigit() for f in fields[1:]):
            raise DatasetLayoutError(f"{listing}:{number}: expected '<image_id> <class id> <species> <breed id>', "
                                     f"got {line!r}: use the official annotations")
        image_id, class_id, species = fields[0], int(fields[1]), int(fields[2])
        if not 1 <= class_id <= PETS_CLASSES or species not in (1, 2):
            raise DatasetLayoutError(f"{listing}:{number}: class id {class_id} (1..{PETS_CLASSES}) or species "
                                     f"{species} (1 cat, 2 dog) out of range")
        path = images / f"{image_id}.jpg"
        if not path.is_file():
            absent.append(str(path))
        rows.append((f"{image_id}.jpg", str(path.resolve()), class_id - 1, species - 1, image_id.rsplit("_", 1)[0]))
    if absent:
        raise DatasetLayoutError(f"{len(absent)} images listed in {listing} are missing, e.g. {absent[:3]}: download "
                                 f"{PETS_URL}")
    if not rows:
        raise DatasetLayoutError(f"{listing} lists no image: use the official annotations ({PETS_URL})")
    frame = pd.DataFrame(rows, columns=["image_id", "path", "label", "species", "breed"])
    frame.insert(2, "partition", 2)
    return frame


def _mat_vector(path: Path, name: str, key: str) -> list[int]:
    """The integer vector ``name`` of a MATLAB file (``scipy.io.loadmat``, as torchvision's ``Flowers102``)."""
    from scipy.io import loadmat
    from scipy.io.matlab import MatReadError

    try:
        data = loadmat(path, squeeze_me=True)
    except (MatReadError, ValueError, OSError, TypeError) as err:
        raise DatasetLayoutError(f"{path} is not a readable MATLAB file ({err}): download it again "
                                 f"({FLOWERS_URL}; data_roots: {{{key}: ...}})") from err
    if name not in data:
        raise DatasetLayoutError(f"{path} has no '{name}' (has {sorted(k for k in data if not k.startswith('__'))}): "
                                 f"use the official file ({FLOWERS_URL})")
    return [int(v) for v in pd.Series(data[name]).to_numpy().ravel()]


def read_flowers102(root: Path, key: str = "flowers102") -> pd.DataFrame:
    """Oxford Flowers-102 as torchvision's ``Flowers102`` reads it: every image of the train, val and test splits
    (partitions 0, 1, 2), each split in ``setid.mat`` order (the test order LDCE's per-image targets index),
    label = ``imagelabels.mat`` class − 1 (0..101); image_id ``image_<5 digits>.jpg``."""
    members = ((FLOWERS_LABELS, "its labels"), (FLOWERS_SETID, "its split ids"), ("jpg", "its images"))
    folder = torchvision_folder(root, key, "Flowers-102", FLOWERS_FOLDER, FLOWERS_SETID, FLOWERS_URL, members)
    labels = _mat_vector(folder / FLOWERS_LABELS, "labels", key)
    bad = [v for v in labels if not 1 <= v <= FLOWERS_CLASSES]
    if bad:
        raise DatasetLayoutError(f"{folder / FLOWERS_LABELS}: labels must be 1..{FLOWERS_CLASSES}, found {bad[:3]}")
    rows, absent = [], []
    for name, partition in FLOWERS_SPLITS:
        for number in _mat_vector(folder / FLOWERS_SETID, name, key):
            if not 1 <= number <= len(labels):
                raise DatasetLayoutError(f"{folder / FLOWERS_SETID}: {name} lists image {number}, but "
                                         f"{FLOWERS_LABELS} labels {len(labels)} images")
            image_id = f"image_{number:05d}.jpg"
            path = folder / "jpg" / image_id
            if not path.is_file():
                absent.append(str(path))
            rows.append((image_id, str(path.resolve()), partition, labels[number - 1] - 1))
    if absent:
        raise DatasetLayoutError(f"{len(absent)} images listed in {folder / FLOWERS_SETID} are missing, e.g. "
                                 f"{absent[:3]}: download {FLOWERS_URL}")
    frame = pd.DataFrame(rows, columns=["image_id", "path", "partition", "label"])
    if frame["image_id"].duplicated().any():
        raise DatasetLayoutError(f"{folder / FLOWERS_SETID} lists an image in two splits: use the official file")
    return frame


def build_layout_index(layout: str, root: Path, out_csv: Path, key: str = "") -> pd.DataFrame:
    """Validate ``root`` in ``layout`` (one of LAYOUTS) and write ``index.csv`` (absolute image paths). Every image
    must decode (:func:`cfx.data.image_check.check_index_images`, which lists those that do not), else nothing is
    written."""
    if layout == "celeba":
        return build_celeba_index(root, out_csv)
    root = Path(root).resolve() if Path(root).exists() else Path(root)
    if layout == "celebahq":
        frame = read_celebahq(root, key or "celebahq")
        paths = [root / CELEBAHQ_IMAGES / image_id for image_id in frame["image_id"]]
        missing = [str(p) for p in paths if not p.is_file()]
        if missing:
            raise DatasetLayoutError(f"{len(missing)} images listed in {root / CELEBAHQ_ANNO} are missing, e.g. "
                                     f"{missing[:3]}: download CelebAMask-HQ from {CELEBAHQ_URL}")
        frame.insert(1, "path", [str(p) for p in paths])
    elif layout == "imagenet_val":
        frame = read_imagenet_val(root, key or "imagenet")
    elif layout == "chexpert":
        frame = read_chexpert(root, key or "chexpert")
    elif layout == "bdd100k":
        frame = read_bdd100k(root, key or "bdd100k")
    elif layout == "bdd_oia":
        frame = read_bdd_oia(root, key or "bdd_oia")
    elif layout == "oxford_pets":
        frame = read_oxford_pets(root, key or "oxford_pets")
    elif layout == "flowers102":
        frame = read_flowers102(root, key or "flowers102")
    else:
        raise ValueError(f"unknown dataset layout '{layout}'; known: {', '.join(LAYOUTS)}")
    check_index_images(list(frame["path"]), out_csv)
    write_csv_atomic(out_csv, frame)
    return frame


DOWNLOAD_HINTS = {
    "celeba": f"CelebA (img_align_celeba + list_attr_celeba and list_eval_partition, Kaggle CSV or official TXT) "
              f"from {CELEBA_URL}",
    "celebahq": f"CelebAMask-HQ ({CELEBAHQ_IMAGES}/, {CELEBAHQ_ANNO}, {CELEBAHQ_MAPPING}) from {CELEBAHQ_URL} and "
                f"CelebA's {PARTITION_CSV} from {CELEBA_URL}, all in one folder",
    "imagenet_val": IMAGENET_URL,
    "bdd100k": BDD_URL,
    "bdd_oia": BDD_OIA_URL,
    "chexpert": CHEXPERT_URL,
    "oxford_pets": f"Oxford-IIIT Pets ({PETS_FOLDER}/annotations/test.txt, {PETS_FOLDER}/images/): {PETS_URL}",
    "flowers102": f"Oxford Flowers-102 ({FLOWERS_FOLDER}/{FLOWERS_LABELS}, {FLOWERS_FOLDER}/{FLOWERS_SETID}, "
                  f"{FLOWERS_FOLDER}/jpg/): {FLOWERS_URL}",
}


# layouts whose images generation reads (cfx.data.index_dataset.IndexDataset). Attribute layouts label an image by
# a CelebA attribute (the experiment's query); action layouts (BDD-OIA) by the action the query indexes; finding
# layouts (CheXpert) by the finding the query names among GCD's classifier outputs (GCD_CHEXPERT_OUTPUTS); the others
# by the index's label column (ImageNet: the class index).
ATTRIBUTE_LAYOUTS = ("celeba", "celebahq")
ACTION_LAYOUTS = ("bdd_oia",)
FINDING_LAYOUTS = ("chexpert",)
# single-channel images (read as PIL "L", 1×H×W tensors): CheXpert, for GCD's in_channels-1 DiffAE and its classifier
GRAYSCALE_LAYOUTS = ("chexpert",)
SQUARE_LAYOUTS = (*ATTRIBUTE_LAYOUTS, "imagenet_val", *FINDING_LAYOUTS, "oxford_pets", "flowers102")
# BDD images: ACE's --image_size s is (H, W) = (s, 2s) (BDD10KCE, BDDOIADataset)
WIDE_LAYOUTS = ("bdd100k", *ACTION_LAYOUTS)
IMAGE_LAYOUTS = (*SQUARE_LAYOUTS, *WIDE_LAYOUTS)
# How an image is brought to the networks' size, as each upstream loader does it:
#   center_crop      Resize(s) (short side, bilinear) + CenterCrop(s): DiME CelebADataset, ACE CelebAHQDataset, ACE's
#                    ImageNet ImageFolder (docs/upstream/dime_ace.md §3.3); CheXpert: cfx's choice (GCD reads PNGs
#                    already at 224 px and resizes nothing; how it made them is not in its repository)
#   stretch          Resize((H, W)), bilinear, aspect distorted: LDCE's ImageNet (docs/upstream/ldce_gcd_svce.md §1.8)
#                    and Oxford-IIIT Pets (scripts/ldce.py:get_dataset: Resize((256, 256)), its CenterCrop commented
#                    out) and Flowers-102 (Resize((256, 256)))
#   stretch_bicubic  Resize((H, W)), bicubic: ACE's BDD10KCE and BDDOIADataset (docs/upstream/dime_ace.md §3.3),
#                    SVCE's ImageNet (docs/upstream/ldce_gcd_svce.md §3.3)
RESIZES = ("center_crop", "stretch", "stretch_bicubic")
DEFAULT_RESIZE = {"celeba": "center_crop", "celebahq": "center_crop", "imagenet_val": "center_crop",
                  "bdd100k": "stretch_bicubic", "bdd_oia": "stretch_bicubic", "chexpert": "center_crop",
                  "oxford_pets": "stretch", "flowers102": "stretch"}
# layouts that are indexed but whose images generation cannot read yet (layout -> why); none at present
NO_TRANSFORM_YET: dict[str, str] = {}


def image_shape(layout: str, image_size: int | Sequence[int]) -> tuple[int, int]:
    """(H, W) of the images generation feeds the networks for an experiment's ``image_size``. CelebA, CelebA-HQ,
    ImageNet and CheXpert are square (``s`` or ``[s, s]``). BDD100k and BDD-OIA are ACE's ``BDD10KCE`` /
    ``BDDOIADataset`` resize (``guided_diffusion/image_datasets.py``): an int ``s`` is its ``--image_size s`` =
    (s, 2s), e.g. 256 -> 256x512; ``[H, W]`` is taken as given."""
    if isinstance(image_size, bool) or not isinstance(image_size, int | Sequence) or isinstance(image_size, str):
        raise ValueError(f"image_size must be an integer or [height, width], got {image_size!r}")
    sizes = [image_size] if isinstance(image_size, int) else list(image_size)
    if not 1 <= len(sizes) <= 2 or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in sizes):
        raise ValueError(f"image_size must be a positive integer or [height, width], got {image_size!r}")
    if layout in NO_TRANSFORM_YET:
        raise NotImplementedError(f"generation cannot read layout '{layout}' yet: {NO_TRANSFORM_YET[layout]}")
    if layout in SQUARE_LAYOUTS:
        if len(sizes) == 2 and sizes[0] != sizes[1]:
            raise ValueError(f"layout '{layout}' gives square images; image_size {image_size!r} is not square: give "
                             f"one integer")
        return sizes[0], sizes[0]
    if layout in WIDE_LAYOUTS:
        return (sizes[0], 2 * sizes[0]) if len(sizes) == 1 else (sizes[0], sizes[1])
    raise ValueError(f"unknown dataset layout '{layout}'; known: {', '.join(LAYOUTS)}")


def resize_mode(layout: str, resize: str | None = None) -> str:
    """The resize an experiment's images get: ``resize`` (a method's ``image_resize`` for the dataset, e.g. LDCE's
    ``stretch`` on ImageNet) or the layout's upstream default (:data:`DEFAULT_RESIZE`)."""
    mode = resize or DEFAULT_RESIZE.get(layout)
    if mode not in RESIZES:
        raise ValueError(f"image_resize '{mode}' (layout {layout}) is not one of {', '.join(RESIZES)}")
    return mode


def chexpert_finding(query_label: int) -> str:
    """The CheXpert finding (a ``valid.csv`` column) that output ``query_label`` of GCD's classifier answers
    (:data:`GCD_CHEXPERT_OUTPUTS`, e.g. 0 Atelectasis, 9 Pleural Effusion, 13 Support Devices)."""
    if isinstance(query_label, bool) or not isinstance(query_label, int) or not 0 <= query_label < len(
            GCD_CHEXPERT_OUTPUTS):
        raise ValueError(f"query label {query_label!r} is not an output of GCD's CheXpert classifier: it indexes "
                         f"{', '.join(f'{i} {name}' for i, name in enumerate(GCD_CHEXPERT_OUTPUTS))}")
    return GCD_CHEXPERT_OUTPUTS[query_label]


def chexpert_positive(value: object) -> int:
    """A CheXpert label as the binary label of an experiment: 1 (positive) -> 1; 0 (negative), −1 (uncertain) and
    blank (not mentioned) -> 0. GCD's code has no labels to follow (its datasets return none, its ``labels.csv`` is
    unused): uncertain as negative is CheXpert's "U-Zeros" policy, blank as negative its usual reading. The official
    valid split, which the paper suite reads, holds only 0 and 1 (radiologist consensus)."""
    if value is None:  # blank
        return 0
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError) as err:
        raise ValueError(f"CheXpert label {value!r} is not a number (1, 0, -1 or blank)") from err
    if number != number:  # NaN: blank
        return 0
    if number not in (1.0, 0.0, -1.0):
        raise ValueError(f"CheXpert label {value!r} is not 1, 0, -1 or blank")
    return int(number == 1.0)


def download_hint(layout: str) -> str:
    """What to download, and from where, for a dataset in ``layout``."""
    return DOWNLOAD_HINTS.get(layout, f"the dataset (layout {layout})")
