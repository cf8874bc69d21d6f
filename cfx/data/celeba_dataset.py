"""DiME's ``core/image_datasets.py:CelebADataset`` as a torch dataset (reference/dime_ace.md §3.3): PIL
``Resize(size)`` (short side, bilinear) → ``CenterCrop(size)`` → ``ToTensor`` → ``Normalize(0.5, 0.5)``. Kept apart
from :mod:`cfx.data.celeba` so that planning a workflow (which reads layouts and indexes) never imports torch."""

from __future__ import annotations

from pathlib import Path

import torch
from torch.utils.data import Dataset
from torchvision import transforms

from cfx.data.celeba import CELEBA_ATTRIBUTES, IMAGE_DIR, SPLITS, load_rgb, read_celeba


class CelebADataset(Dataset):
    """DiME's ``CelebADataset``: ``(i, image, label)`` with images in [−1,1] (or [0,1] without normalize)."""

    def __init__(self, root: Path, split: str = "val", image_size: int = 128, query_label: int | None = None,
                 normalize: bool = True, image_ids: list[str] | None = None) -> None:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {list(SPLITS)}, got '{split}'")
        self.root = Path(root)
        frame = read_celeba(self.root)
        frame = frame[frame["partition"] == SPLITS[split]]
        if image_ids is not None:
            by_id = frame.set_index("image_id")
            unknown = [i for i in image_ids if i not in by_id.index]
            if unknown:
                raise KeyError(f"images {unknown[:3]} are not in the {split} split of {self.root}")
            frame = by_id.loc[list(image_ids)].reset_index()
        self.frame = frame.reset_index(drop=True)
        self.query_label = query_label
        steps = [transforms.Resize(image_size), transforms.CenterCrop(image_size), transforms.ToTensor()]
        if normalize:
            steps.append(transforms.Normalize([0.5, 0.5, 0.5], [0.5, 0.5, 0.5]))
        self.transform = transforms.Compose(steps)

    def __len__(self) -> int:
        return len(self.frame)

    def __getitem__(self, i: int):
        row = self.frame.iloc[i]
        image = self.transform(load_rgb(self.root / IMAGE_DIR / row["image_id"]))
        if self.query_label is None:
            label = torch.tensor((row[CELEBA_ATTRIBUTES].to_numpy(dtype="int64") + 1) // 2, dtype=torch.float32)
        else:
            label = torch.tensor(int(row[CELEBA_ATTRIBUTES[self.query_label]] == 1), dtype=torch.long)
        return i, image, label
