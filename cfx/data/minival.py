"""DiME's and ACE's CelebA mini-val (``--dataset CelebAMV``, docs/upstream/dime_ace.md §3.3).

Upstream's ``utils/minival.csv`` (``utils/create-mini-val.py``: ``random.seed(5)``, 1 000 draws *with replacement*
from the val split, sorted; 966 unique images) lists the images DiME's ``CelebAMiniVal`` reads, in file order, with
its own copy of the 40 attributes. It is a pinned upstream resource (:data:`DIME_MINIVAL_FILES`: URL at a
guillaumejs2403/DiME commit and its sha256), downloaded by :func:`fetch_dime_minival` — not shipped with cfx. An
experiment with ``subset: dime_minival`` takes those rows of the CelebA index in that order, duplicates included.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from cfx.runtime.download import fetch_pinned_files, verify_pinned_files

_BASE = "https://raw.githubusercontent.com/guillaumejs2403/DiME/2ef5f522d4cf3fc4f20cf9a4b16fb57a23f3ba7f/utils"
DIME_MINIVAL_FILES: dict[str, tuple[str, str]] = {
    "minival.csv": (f"{_BASE}/minival.csv", "18e8ca297583647029f4bf397592496dd533da63e0423a21277a3bced158cdb6"),
}
DIME_MINIVAL_VERSION = "DiME@2ef5f52 utils/minival.csv"
SUBSETS = {"dime_minival": "resources/data/dime/minival.csv"}


def verify_dime_minival(folder: str | Path) -> Path:
    """Check ``folder``/minival.csv against its pinned sha256; errors name the file and its URL."""
    return verify_pinned_files(folder, DIME_MINIVAL_FILES, what="DiME mini-val list", version=DIME_MINIVAL_VERSION,
                               fetch_hint=f"cfx.data.minival.fetch_dime_minival('{folder}')")


def fetch_dime_minival(folder: str | Path, timeout: float = 60.0) -> Path:
    """Download minival.csv into ``folder`` unless it is there with its digest (atomic, sha256-checked)."""
    fetch_pinned_files(folder, DIME_MINIVAL_FILES, timeout=timeout)
    return verify_dime_minival(folder)


def read_subset_ids(path: str | Path) -> list[str]:
    """The image ids of a subset list (upstream's ``minival.csv``: column ``image_id``), in file order, repeats kept."""
    path = Path(path)
    try:
        frame = pd.read_csv(path, dtype={"image_id": str})
    except FileNotFoundError as err:
        raise FileNotFoundError(f"subset list {path} does not exist (rule fetch_dime_minival downloads it)") from err
    if "image_id" not in frame.columns or frame.empty:
        raise ValueError(f"{path} has no image_id column or no rows: not DiME's utils/minival.csv; re-download it")
    return list(frame["image_id"])
