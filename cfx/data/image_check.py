"""Every image of a dataset index decodes: checked at the index step, before ``index.csv`` is written.

A corrupt, truncated or non-image file would otherwise be found only by the generation job that reads it, after its
retries. :func:`check_index_images` decodes every image (JPEGs at 1/8 scale in PIL's draft mode: libjpeg still reads
every compressed byte, so truncation and garbage are found, at about twice the speed of a full decode; other formats
fully), with a thread pool (PIL's decoders release the GIL), and raises one :class:`CorruptImagesError` listing all
files that fail, with the full list written next to the index (``<index stem>.bad_images.txt``).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from PIL import Image

from cfx.runtime.files import write_text_atomic

BAD_IMAGES_SUFFIX = ".bad_images.txt"
PATHS_IN_MESSAGE = 20
BATCH_SIZE = 64  # images per pool task: small images decode in well under a millisecond, a task per image costs more
MAX_WORKERS = 8

log = logging.getLogger(__name__)


class CorruptImagesError(ValueError):
    """Images of a dataset do not decode; the message counts them, names the first ones and the file listing all."""


def image_decode_error(path: str | Path) -> str | None:
    """Why the image at ``path`` does not decode (the exception PIL raised), or ``None`` when it decodes."""
    try:
        with Image.open(path) as image:
            image.draft(image.mode, (max(1, image.width // 8), max(1, image.height // 8)))  # JPEG only; else no-op
            image.load()
    except Exception as err:  # whatever stops PIL here would stop the generation job that reads the image
        return " ".join(f"{type(err).__name__}: {err}".split())
    return None


def _batch_errors(paths: Sequence[str]) -> list[tuple[str, str]]:
    return [(path, error) for path in paths if (error := image_decode_error(path)) is not None]


def default_workers() -> int:
    """Threads for the decoding check: the CPUs this process may use, at most :data:`MAX_WORKERS`."""
    available = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, min(MAX_WORKERS, available))


def find_undecodable_images(paths: Iterable[str | Path], workers: int | None = None) -> list[tuple[str, str]]:
    """``(path, error)`` of every image of ``paths`` that does not decode, in the order of ``paths``; decoded by
    ``workers`` threads (default :func:`default_workers`; 1 decodes in this thread)."""
    names = [os.fspath(p) for p in paths]
    batches = [names[i:i + BATCH_SIZE] for i in range(0, len(names), BATCH_SIZE)]
    workers = default_workers() if workers is None else max(1, int(workers))
    if workers == 1 or len(batches) <= 1:
        return [bad for batch in batches for bad in _batch_errors(batch)]
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="cfx-image-check") as pool:
        return [bad for found in pool.map(_batch_errors, batches) for bad in found]


def bad_images_path(index_csv: str | Path) -> Path:
    """Where the list of a dataset's undecodable images goes: next to its index, ``index.csv`` ->
    ``index.bad_images.txt``."""
    index_csv = Path(index_csv)
    return index_csv.with_name(index_csv.stem + BAD_IMAGES_SUFFIX)


def check_index_images(paths: Sequence[str | Path], index_csv: str | Path, workers: int | None = None) -> None:
    """Decode every image of ``paths`` (the index about to be written to ``index_csv``); when any fails, write all
    of them with their errors to :func:`bad_images_path` and raise one :class:`CorruptImagesError` with their count,
    the first :data:`PATHS_IN_MESSAGE` and what to do. When all decode, a stale list from an earlier run is
    removed."""
    index_csv = Path(index_csv)
    listing = bad_images_path(index_csv)
    start = time.perf_counter()
    bad = find_undecodable_images(paths, workers)
    seconds = time.perf_counter() - start
    log.info("decoded %d images in %.1f s (%d do not decode)", len(paths), seconds, len(bad))
    if not bad:
        listing.unlink(missing_ok=True)
        return
    write_text_atomic(listing, "".join(f"{image}\t{error}\n" for image, error in bad))
    shown = "".join(f"\n  {image} ({error})" for image, error in bad[:PATHS_IN_MESSAGE])
    more = f"\n  ... and {len(bad) - PATHS_IN_MESSAGE} more" if len(bad) > PATHS_IN_MESSAGE else ""
    raise CorruptImagesError(
        f"{len(bad)} of the {len(paths)} images of this dataset do not decode (corrupt, truncated or not an image; "
        f"the generation job that reads one would fail on it):{shown}{more}\nAll {len(bad)} are listed, with their "
        f"errors, in {listing}. Re-download or replace these files from the original dataset, or remove them from "
        f"the dataset (and from its annotation lists), then rerun the index step; {index_csv} was not written.")
