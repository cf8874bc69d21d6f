"""Fake dataset roots in the upstream layouts, tiny and generated: CelebA-HQ and ImageNet val (cfx.data.layouts),
ImageNet's wnid folders of JPEGs, SVCE's WordNet is-a file, BDD-OIA, CheXpert, Oxford Flowers-102 (with LDCE's
resource files) and Oxford-IIIT Pets. The constants next to each writer are what it writes, for the tests to check
against."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from cfx.data.celeba import CELEBA_ATTRIBUTES
from cfx.data.layouts import CHEXPERT_LABELS

# --- CelebA-HQ (CelebAMask-HQ) and ImageNet val (ImageFolder) roots ---------------------------------------------------


def write_image(path: Path, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 255, (8, 8, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)


def fake_celebahq(root: Path, n: int = 5) -> None:
    """CelebAMask-HQ layout: annotation TXT, HQ→CelebA mapping, CelebA partition CSV, CelebA-HQ-img/<n>.jpg."""
    rng = np.random.default_rng(0)
    values = rng.choice([-1, 1], size=(n, 40))
    lines = [str(n), " ".join(CELEBA_ATTRIBUTES)] + [f"{i}.jpg " + " ".join(map(str, v)) for i, v in enumerate(values)]
    root.mkdir(parents=True, exist_ok=True)
    (root / "CelebAMask-HQ-attribute-anno.txt").write_text("\n".join(lines) + "\n")
    orig = [100 + 7 * i for i in range(n)]
    mapping = ["idx         orig_idx   orig_file"] + [f"{i} {o} {o + 1:06d}.jpg" for i, o in enumerate(orig)]
    (root / "CelebA-HQ-to-CelebA-mapping.txt").write_text("\n".join(mapping) + "\n")
    parts = pd.DataFrame({"image_id": [f"{k:06d}.jpg" for k in range(1, 200)]})
    parts["partition"] = [k % 3 for k in range(1, 200)]
    parts.to_csv(root / "list_eval_partition.csv", index=False)
    for i in range(n):
        write_image(root / "CelebA-HQ-img" / f"{i}.jpg", i)


def fake_imagenet_val(root: Path) -> None:
    """ImageFolder layout: three wnid folders, val images numbered out of folder order."""
    for number, wnid in [(3, "n01440764"), (1, "n01443537"), (2, "n01440764"), (5, "n01484850"), (4, "n01443537")]:
        write_image(root / wnid / f"ILSVRC2012_val_{number:08d}.JPEG", number)


# --- ImageNet: class k's wnid folder and JPEGs of any size ------------------------------------------------------------


def fake_wnid(k: int) -> str:
    return f"n{k:08d}"  # sorts as k: class index k


def write_jpeg(path: Path, width: int, height: int, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, quality=95)


# --- SVCE: WordNet's is-a file ----------------------------------------------------------------------------------------

# A hand-made hierarchy in upstream's file formats. ImageNet classes c0..c9 (class numbers deliberately not in wnid
# order); c6 is listed under B1 first and under A2 last, so its parent is A2 (the last line wins, as upstream);
# X/Y have no ImageNet descendant and are dropped.
IS_A = """root A
root B
A A1
A A2
A1 c0
A1 c1
A1 c2
B1 c6
A2 c3
A2 c4
A c5
B B1
B1 c7
B1 c8
B c9
A2 c6
root X
X Y
"""


# --- BDD-OIA (ACE's BDDOIADataset, lastframe release) -----------------------------------------------------------------

# (file name, category) in the JSON's own order (not sorted); ids are the annotations' positions, listed shuffled.
# c.jpg's 5th label is 1 (upstream drops it); e.jpg is listed but not on disk (upstream skips it); d.jpg has 4 labels.
IMAGES = [
    ("b.jpg", [0, 1, 0, 1, 0]),
    ("a.jpg", [1, 0, 1, 0, 0]),
    ("c.jpg", [1, 0, 0, 0, 1]),
    ("e.jpg", [0, 1, 1, 0, 0]),
    ("d.jpg", [0, 1, 0, 0]),
]
SIZES = {"a.jpg": (64, 36), "b.jpg": (40, 30), "c.jpg": (48, 20), "d.jpg": (30, 18)}  # (width, height)


def fake_bdd_oia(root: Path) -> Path:
    """BDD-OIA lastframe layout with tiny lossless images: ``data/<file_name>`` and the val JSONs in upstream's
    format (``{"images": [{"file_name", "id"}], "annotations": [{"category"}]}``; reasons a list of
    ``{"file_name", "reason"}`` with 21 values)."""
    ids = [3, 0, 4, 1, 2]  # image k's annotation sits at position ids[k]
    annotations: list[dict | None] = [None] * len(IMAGES)
    for (_, category), ident in zip(IMAGES, ids, strict=True):
        annotations[ident] = {"category": category}
    actions = {"images": [{"file_name": name, "id": ident} for (name, _), ident in zip(IMAGES, ids, strict=True)],
               "annotations": annotations}
    reasons = [{"file_name": name, "reason": [k % 2] * 21} for k, (name, _) in enumerate(IMAGES)]
    root.mkdir(parents=True, exist_ok=True)
    (root / "val_25k_images_actions.json").write_text(json.dumps(actions))
    (root / "val_25k_images_reasons.json").write_text(json.dumps(reasons[::-1]))
    for k, (name, (width, height)) in enumerate(SIZES.items()):
        (root / "data").mkdir(exist_ok=True)
        pixels = np.random.default_rng(k).integers(0, 256, (height, width, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(root / "data" / name, format="PNG")  # lossless, whatever the suffix says
    return root


# --- CheXpert (CheXpert-v1.0-small) -----------------------------------------------------------------------------------

# Pleural Effusion (GCD output 9) of the stand-in's four images: positive, negative, uncertain, blank
EFFUSION = [1.0, 0.0, -1.0, None]


def fake_chexpert(root: Path, size: tuple[int, int] = (40, 48)) -> list[str]:
    """A stand-in ``CheXpert-v1.0-small`` root: ``valid.csv`` (Path, Sex, Age, Frontal/Lateral, AP/PA and the 14
    labels, as the official file) and grayscale, non-square (W, H) = ``size`` JPGs under
    ``valid/patient*/study*/``, a frontal and a lateral view of one study among them. Returns the image ids."""
    views = [(64541, 1, "view1_frontal"), (64542, 1, "view1_frontal"), (64542, 1, "view2_lateral"),
             (64543, 1, "view1_frontal")]
    rows, ids = [], []
    for k, (patient, study, view) in enumerate(views):
        relative = f"valid/patient{patient}/study{study}/{view}.jpg"
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        gradient = np.linspace(0, 255, size[0] * size[1]).reshape(size[1], size[0])
        pixels = (gradient * (0.5 + 0.1 * k) + 20 * k) % 256
        Image.fromarray(pixels.astype(np.uint8)).save(path)  # 2-d uint8: mode L
        labels = {c: float((k + i) % 2) for i, c in enumerate(CHEXPERT_LABELS)}
        labels["Pleural Effusion"] = EFFUSION[k]
        rows.append({"Path": f"CheXpert-v1.0-small/{relative}", "Sex": "Female", "Age": 60 + k,
                     "Frontal/Lateral": "Lateral" if "lateral" in view else "Frontal",
                     "AP/PA": "" if "lateral" in view else "AP", **labels})
        ids.append(f"patient{patient}/study{study}/{view}.jpg")
    pd.DataFrame(rows).to_csv(root / "valid.csv", index=False)
    return ids


# --- Oxford Flowers-102 (torchvision's Flowers102) and LDCE's Flowers resource files ----------------------------------

# imagelabels.mat: the class (1..102) of image numbers 1..9; setid.mat: the splits' image numbers, not sorted
LABELS = [3, 1, 102, 3, 50, 1, 102, 7, 50]
SETID = {"trnid": [2, 5, 9], "valid": [4, 8], "tstid": [7, 1, 6, 3]}
FLOWER_NAMES = ["pink primrose", "hard-leaved pocket orchid", *[f"flower {k}" for k in range(3, 102)], "last flower"]
# per test image (tstid order), 5 classes (the target is the first), as flowers_closest_indices.json
CLOSEST = [[94, 97, 45, 17, 88], [76, 82, 81, 85, 69], [97, 79, 63, 14, 88], [0, 101, 5, 6, 7]]


def fake_flowers(root: Path) -> Path:
    """torchvision's Flowers102 root: flowers-102/imagelabels.mat, setid.mat and jpg/image_<5 digits>.jpg (MATLAB
    1×N rows, as the official files store them)."""
    from scipy.io import savemat

    folder = root / "flowers-102"
    (folder / "jpg").mkdir(parents=True, exist_ok=True)
    savemat(folder / "imagelabels.mat", {"labels": np.array([LABELS], dtype=np.uint8)})
    savemat(folder / "setid.mat", {name: np.array([ids], dtype=np.uint16) for name, ids in SETID.items()})
    for number in range(1, len(LABELS) + 1):
        pixels = np.random.default_rng(number).integers(0, 256, (24 + number, 30, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / "jpg" / f"image_{number:05d}.jpg", quality=95)
    return root


def write_flowers_resources(folder: Path) -> tuple[Path, Path]:
    """Stand-ins of flowers_closest_indices.json (keys "0".."n-1") and flowers_idx_to_label.json (keys "1".."102")."""
    folder.mkdir(parents=True, exist_ok=True)
    closest, labels = folder / "flowers_closest_indices.json", folder / "flowers_idx_to_label.json"
    closest.write_text(json.dumps({str(k): v for k, v in enumerate(CLOSEST)}, indent=4))
    labels.write_text(json.dumps({str(k + 1): v for k, v in enumerate(FLOWER_NAMES)}, indent=4))
    return closest, labels


# --- Oxford-IIIT Pets (torchvision's OxfordIIITPet) -------------------------------------------------------------------

# (image id, class id 1..37, species 1 cat / 2 dog): test.txt's format, not in class order
PETS_LINES = [("Abyssinian_201", 1, 1), ("american_bulldog_100", 2, 2), ("Abyssinian_204", 1, 1),
              ("yorkshire_terrier_190", 37, 2), ("Bengal_105", 6, 1), ("beagle_110", 5, 2)]


def fake_pets(root: Path) -> Path:
    """torchvision's OxfordIIITPet root: oxford-iiit-pet/annotations/test.txt and images/<id>.jpg (one grayscale,
    as some of the real images are)."""
    folder = root / "oxford-iiit-pet"
    (folder / "annotations").mkdir(parents=True, exist_ok=True)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    lines = [f"{image_id} {cls} {species} {k + 1}" for k, (image_id, cls, species) in enumerate(PETS_LINES)]
    (folder / "annotations" / "test.txt").write_text("\n".join(lines) + "\n")
    (folder / "annotations" / "trainval.txt").write_text("")
    for k, (image_id, _, _) in enumerate(PETS_LINES):
        pixels = np.random.default_rng(k).integers(0, 256, (20 + 2 * k, 24, 3), dtype=np.uint8)
        image = Image.fromarray(pixels)
        (image.convert("L") if k == 2 else image).save(folder / "images" / f"{image_id}.jpg", quality=95)
    return root
