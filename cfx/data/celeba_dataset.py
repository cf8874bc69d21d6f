"""DiME's ``core/image_datasets.py:CelebADataset`` as a torch dataset (docs/upstream/dime_ace.md §3.3): PIL
``Resize(size)`` (short side, bilinear) → ``CenterCrop(size)`` → ``ToTensor`` → ``Normalize(0.5, 0.5)``, read from a
CelebA root directly (no ``index.csv``): :class:`cfx.data.index_dataset.IndexDataset` with the ``celeba`` layout, whose
split filter, id lookup, transform and labels it uses. Kept apart from :mod:`cfx.data.celeba` so that planning a
workflow (which reads layouts and indexes) never imports torch."""

from __future__ import annotations

from pathlib import Path

from cfx.data.celeba import IMAGE_DIR, read_celeba
from cfx.data.index_dataset import IndexDataset


class CelebADataset(IndexDataset):
    """DiME's ``CelebADataset``: ``(i, image, label)`` with images in [−1,1] (or [0,1] without normalize), of the
    images of ``root`` (:func:`cfx.data.celeba.read_celeba`, each at ``root / img_align_celeba / image_id``);
    ``frame`` holds their rows (image_id, path, partition, identity, 40 attributes)."""

    def __init__(self, root: Path, split: str = "val", image_size: int = 128, query_label: int | None = None,
                 normalize: bool = True, image_ids: list[str] | None = None) -> None:
        self.root = Path(root)
        frame = read_celeba(self.root)
        frame.insert(1, "path", [str(self.root / IMAGE_DIR / image_id) for image_id in frame["image_id"]])
        super().__init__(frame, "celeba", split=split, image_size=image_size, query_label=query_label,
                         image_ids=image_ids, normalize=normalize, origin=self.root)
