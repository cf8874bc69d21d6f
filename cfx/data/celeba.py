"""CelebA in its Kaggle-CSV layout: validation, conversion from the official TXT files, index, dataset.

Reproduces DiME's ``core/image_datasets.py:CelebADataset`` (docs/upstream/dime_ace.md §3.3): partition 0/1/2 =
train/val/test from ``list_eval_partition.csv``, PIL ``Resize(size)`` (short side, bilinear) →
``CenterCrop(size)`` → ``ToTensor`` → ``Normalize(0.5, 0.5)`` (ACE: no normalisation, [0,1]).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from PIL import Image, UnidentifiedImageError

from cfx.data.image_check import check_index_images
from cfx.runtime.files import write_csv_atomic

CELEBA_ATTRIBUTES = [
    "5_o_Clock_Shadow", "Arched_Eyebrows", "Attractive", "Bags_Under_Eyes", "Bald", "Bangs", "Big_Lips",
    "Big_Nose", "Black_Hair", "Blond_Hair", "Blurry", "Brown_Hair", "Bushy_Eyebrows", "Chubby", "Double_Chin",
    "Eyeglasses", "Goatee", "Gray_Hair", "Heavy_Makeup", "High_Cheekbones", "Male", "Mouth_Slightly_Open",
    "Mustache", "Narrow_Eyes", "No_Beard", "Oval_Face", "Pale_Skin", "Pointy_Nose", "Receding_Hairline",
    "Rosy_Cheeks", "Sideburns", "Smiling", "Straight_Hair", "Wavy_Hair", "Wearing_Earrings", "Wearing_Hat",
    "Wearing_Lipstick", "Wearing_Necklace", "Wearing_Necktie", "Young",
]
SPLITS = {"train": 0, "val": 1, "test": 2}
ATTR_CSV, PARTITION_CSV, IDENTITY_TXT, IMAGE_DIR = (
    "list_attr_celeba.csv", "list_eval_partition.csv", "identity_CelebA.txt", "img_align_celeba")


class CelebALayoutError(FileNotFoundError):
    """A CelebA root is missing a file or has one in the wrong format."""


def attribute_index(name_or_index: str | int) -> int:
    """CelebA attribute index (0..39) of a name such as ``Smiling`` (31) or ``Young`` (39)."""
    if isinstance(name_or_index, int) or str(name_or_index).isdigit():
        index = int(name_or_index)
        if not 0 <= index < len(CELEBA_ATTRIBUTES):
            raise ValueError(f"attribute index {index} is outside 0..39")
        return index
    if name_or_index not in CELEBA_ATTRIBUTES:
        raise ValueError(f"unknown CelebA attribute '{name_or_index}'")
    return CELEBA_ATTRIBUTES.index(name_or_index)


def read_celeba(root: Path) -> pd.DataFrame:
    """One row per image in file order: image_id, partition, identity (−1 if unknown), the 40 attributes (±1)."""
    root = Path(root)
    if not root.is_dir():
        raise CelebALayoutError(f"CelebA root {root} does not exist; download CelebA (img_align_celeba and the "
                                f"annotations) there or set data_roots in config.yaml")
    for name in (ATTR_CSV, PARTITION_CSV):
        if not (root / name).is_file():
            official = root / name.replace(".csv", ".txt")
            if official.is_file():
                raise CelebALayoutError(
                    f"{root / name} is missing but the official {official.name} is there: convert the annotations "
                    f"with `cfx data convert-celeba {root}` (cfx.data.celeba.convert_official_celeba)")
            raise CelebALayoutError(f"{root / name} is missing: CelebA needs {ATTR_CSV} and {PARTITION_CSV} "
                                    f"(Kaggle layout) or the official .txt files to convert")
    attrs = pd.read_csv(root / ATTR_CSV, dtype={"image_id": str})
    expected = ["image_id", *CELEBA_ATTRIBUTES]
    if list(attrs.columns) != expected:
        raise CelebALayoutError(f"{root / ATTR_CSV} must have the columns image_id + the 40 CelebA attributes in "
                                f"CelebA order; got {list(attrs.columns)[:5]}...")
    if not attrs[CELEBA_ATTRIBUTES].isin([-1, 1]).all().all():
        raise CelebALayoutError(f"{root / ATTR_CSV} holds values other than -1/1")
    parts = pd.read_csv(root / PARTITION_CSV, dtype={"image_id": str})
    if list(parts.columns) != ["image_id", "partition"]:
        raise CelebALayoutError(f"{root / PARTITION_CSV} must have the columns image_id,partition")
    if list(parts["image_id"]) != list(attrs["image_id"]):
        raise CelebALayoutError(f"{root / ATTR_CSV} and {root / PARTITION_CSV} list different images or a different "
                                f"order (upstream silently assumes the same order); regenerate them together")
    if not (root / IMAGE_DIR).is_dir():
        raise CelebALayoutError(f"{root / IMAGE_DIR} is missing: put CelebA's aligned images there")
    frame = attrs[["image_id"]].copy()
    frame["partition"] = parts["partition"].astype(int).values
    identity = -1
    if (root / IDENTITY_TXT).is_file():
        ids = pd.read_csv(root / IDENTITY_TXT, sep=" ", header=None, names=["image_id", "identity"], dtype={0: str})
        by_image = dict(zip(ids["image_id"], ids["identity"], strict=True))
        identity = frame["image_id"].map(by_image).fillna(-1).astype(int)
    frame["identity"] = identity
    return pd.concat([frame, attrs[CELEBA_ATTRIBUTES].astype(int)], axis=1)


def convert_official_celeba(root: Path) -> None:
    """Write Kaggle-style ``list_attr_celeba.csv`` and ``list_eval_partition.csv`` from the official TXT files
    (count line, header without ``image_id``, space-separated rows). Existing CSVs are never overwritten."""
    root = Path(root)
    attr_txt, part_txt = root / "list_attr_celeba.txt", root / "list_eval_partition.txt"
    for path in (attr_txt, part_txt):
        if not path.is_file():
            raise CelebALayoutError(f"{path} is missing; download CelebA's Anno/ and Eval/ files into {root}")
    if not (root / ATTR_CSV).exists():
        lines = attr_txt.read_text().splitlines()
        header = lines[1].split()
        if header != CELEBA_ATTRIBUTES:
            raise CelebALayoutError(f"{attr_txt} line 2 is not the 40 CelebA attribute names")
        rows = [line.split() for line in lines[2:] if line.strip()]
        write_csv_atomic(root / ATTR_CSV, pd.DataFrame(rows, columns=["image_id", *header]))
    if not (root / PARTITION_CSV).exists():
        rows = [line.split() for line in part_txt.read_text().splitlines() if line.strip()]
        write_csv_atomic(root / PARTITION_CSV, pd.DataFrame(rows, columns=["image_id", "partition"]))


def build_index(root: Path, out_csv: Path) -> pd.DataFrame:
    """Validate ``root`` and write ``index.csv``: image_id, path (absolute), partition, identity, 40 attributes.
    Every image must decode (:func:`cfx.data.image_check.check_index_images`), else nothing is written."""
    root = Path(root).resolve()
    frame = read_celeba(root)
    paths = [root / IMAGE_DIR / image_id for image_id in frame["image_id"]]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise CelebALayoutError(f"{len(missing)} images listed in {root / ATTR_CSV} are missing, e.g. {missing[:3]}")
    check_index_images(paths, out_csv)
    frame.insert(1, "path", [str(p) for p in paths])
    write_csv_atomic(out_csv, frame)
    return frame


def load_rgb(path: Path) -> Image.Image:
    """Open an image as RGB, with an error that names a corrupt or missing file."""
    return load_pil(path, "RGB")


def load_pil(path: Path, mode: str) -> Image.Image:
    """Open an image converted to PIL ``mode`` ("RGB", "L"), with an error that names a corrupt or missing file."""
    try:
        with Image.open(path) as image:
            return image.convert(mode)
    except FileNotFoundError as err:
        raise FileNotFoundError(f"image {path} does not exist") from err
    except (UnidentifiedImageError, OSError) as err:
        raise ValueError(
            f"image {path} is corrupt or unreadable ({err}); replace it from the original dataset"
        ) from err

