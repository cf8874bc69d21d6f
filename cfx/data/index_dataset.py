"""Images of any indexed dataset (``results/data/{dataset}/index.csv``, :mod:`cfx.data.layouts`) as the
``(i, image, label)`` torch dataset that generation and GCD's steps read, with each layout's upstream transform:

* ``celeba``: DiME's ``core/image_datasets.py:CelebADataset`` (docs/upstream/dime_ace.md §3.3): PIL ``Resize(s)`` (short
  side, bilinear) → ``CenterCrop(s)`` → ``ToTensor``; :class:`cfx.data.celeba_dataset.CelebADataset` is this
  dataset on a CelebA root read directly, without an index (training reads it that way);
* ``celebahq``: ACE's ``guided_diffusion/image_datasets.py:CelebAHQDataset`` (§3.3): the same Resize + CenterCrop;
* ``bdd100k``: ACE's ``guided_diffusion/image_datasets.py:BDD10KCE`` (§3.3): bicubic resize to (H, W) = (s, 2s),
  256×512 for ``--image_size 256``, no crop; label 1 ("move forward") for every image;
* ``bdd_oia``: ACE's ``BDDOIADataset`` (§3.3): the same bicubic resize; label = the BDD-OIA action the query label
  indexes (0 forward, 1 stop, 2 left, 3 right), as upstream's ``target[query]``;
* ``imagenet_val``: the class index (sorted wnids, ``ImageFolder``) as label; each method resizes as its upstream
  loader (``resize``, :data:`cfx.data.layouts.RESIZES`): ACE's ``ImageFolder`` Resize(256) + CenterCrop(256)
  (the default), LDCE's ``Resize((256, 256))`` (``stretch``), SVCE's bicubic 224×224 (``stretch_bicubic``);
* ``oxford_pets``: torchvision's ``OxfordIIITPet`` test split, the class index (0..36) as label, RGB (torchvision
  converts every image), LDCE's ``Resize((256, 256))`` without crop (``stretch``, ``scripts/ldce.py:get_dataset``);
* ``flowers102``: torchvision's ``Flowers102`` splits, the class index (0..101) as label, RGB, LDCE's
  ``Resize((256, 256))`` (``stretch``);
* ``chexpert``: single-channel images (PIL ``L``, tensors 1×s×s), as GCD's CheXpert DiffAE (``in_channels 1``) and
  classifier (``assert x.shape[1] == 1``) take them (docs/upstream/ldce_gcd_svce.md §2.2, §2.7). GCD reads PNGs already
  at 224 px and resizes nothing; the official images are larger and not square, so they get Resize(s) + CenterCrop(s)
  (``center_crop``, cfx's choice; a method's ``image_resize`` may say ``stretch``). Label: the finding the query
  label names among GCD's classifier outputs (:func:`cfx.data.layouts.chexpert_finding`), 1 if positive, else 0
  (:func:`cfx.data.layouts.chexpert_positive`).

Images come from the index's absolute ``path`` and are normalised to [−1,1] (``Normalize(0.5, 0.5)``, as DiME and
GCD; ACE reads [0,1] and normalises inside its networks) unless ``normalize=False``. A layout in
:data:`cfx.data.layouts.NO_TRANSFORM_YET` raises :class:`NotImplementedError` saying why."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pandas as pd
import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision import transforms
from torchvision.transforms import InterpolationMode

from cfx.data.celeba import CELEBA_ATTRIBUTES, SPLITS, load_pil
from cfx.data.layouts import (
    ACTION_LAYOUTS,
    ATTRIBUTE_LAYOUTS,
    BDD_OIA_ACTIONS,
    FINDING_LAYOUTS,
    GCD_CHEXPERT_OUTPUTS,
    GRAYSCALE_LAYOUTS,
    chexpert_finding,
    chexpert_positive,
    image_shape,
    resize_mode,
)


def layout_transform(layout: str, image_size: int | Sequence[int], normalize: bool = True,
                     resize: str | None = None) -> transforms.Compose:
    """The PIL → tensor transform of ``layout`` at ``image_size`` (:func:`cfx.data.layouts.image_shape`) with the
    layout's upstream resize or ``resize`` (:func:`cfx.data.layouts.resize_mode`)."""
    height, width = image_shape(layout, image_size)
    mode = resize_mode(layout, resize)
    if mode == "center_crop":  # DiME CelebADataset / ACE CelebAHQDataset, ImageFolder; random flip and crop off
        steps = [transforms.Resize(height), transforms.CenterCrop((height, width))]
    else:  # LDCE ImageNet: Resize((H, W)); ACE BDD10KCE: TF.resize(img, (H, W), BICUBIC); no crop
        bicubic = mode == "stretch_bicubic"
        steps = [transforms.Resize((height, width),
                                   interpolation=InterpolationMode.BICUBIC if bicubic else InterpolationMode.BILINEAR)]
    steps.append(transforms.ToTensor())
    if normalize:
        channels = 1 if layout in GRAYSCALE_LAYOUTS else 3
        steps.append(transforms.Normalize([0.5] * channels, [0.5] * channels))
    return transforms.Compose(steps)


def load_layout_image(path: Path, layout: str) -> Image.Image:
    """The PIL image a layout's transform takes: grayscale (``L``) for :data:`cfx.data.layouts.GRAYSCALE_LAYOUTS`
    (CheXpert), RGB otherwise; a missing or corrupt file is an error naming it."""
    return load_pil(path, "L" if layout in GRAYSCALE_LAYOUTS else "RGB")


class IndexDataset(Dataset):
    """``(i, image, label)`` of the rows of ``index`` in ``split`` (``partition`` 0/1/2 = train/val/test), in index
    order or in the order of ``image_ids``. The label: CelebA and CelebA-HQ, attribute ``query_label`` as 0/1
    (long), or all 40 attributes as a float 0/1 vector without a query (as DiME's ``CelebADataset``); ImageNet, the
    class index (the index's ``label``); BDD100k, the index's ``label`` column (1 for every image, as ``BDD10KCE``;
    the query label picks the classifier's output, not the label: STEEX's output 0 = move forward,
    :func:`cfx.models.steex.steex_output_index`); BDD-OIA, action ``query_label`` of the index's action columns
    (:data:`cfx.data.layouts.BDD_OIA_ACTIONS`) as 0/1 (long), or the four actions as a float vector without a query
    (ACE's ``BDDOIADataset``: ``target[0:4]``, then ``target[query]``); CheXpert, finding ``query_label`` of GCD's
    classifier outputs (:data:`cfx.data.layouts.GCD_CHEXPERT_OUTPUTS`) as 0/1 (long), or all 14 findings in that
    order as a float 0/1 vector without a query. ``resize``: the method's resize
    (:data:`cfx.data.layouts.RESIZES`), else the layout's. ``origin`` names where the rows came from in the error for
    unknown ``image_ids`` (default: the index, with its path when read from one)."""

    def __init__(self, index: pd.DataFrame | str | Path, layout: str, split: str = "val",
                 image_size: int | Sequence[int] = 128, query_label: int | None = None,
                 image_ids: Sequence[str] | None = None, normalize: bool = True,
                 origin: str | Path | None = None, resize: str | None = None) -> None:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {list(SPLITS)}, got '{split}'")
        self.transform = layout_transform(layout, image_size, normalize, resize)  # rejects unreadable layouts first
        self.layout = layout
        if isinstance(index, pd.DataFrame):
            frame, described = index, f"the {layout} index"
        else:
            frame, described = pd.read_csv(index, dtype={"image_id": str}), f"the {layout} index {index}"
        if layout in ATTRIBUTE_LAYOUTS:
            labels = set(CELEBA_ATTRIBUTES)
        elif layout in ACTION_LAYOUTS:
            labels = set(BDD_OIA_ACTIONS)
            if query_label is not None and not 0 <= int(query_label) < len(BDD_OIA_ACTIONS):
                raise ValueError(f"query label {query_label} is not a BDD-OIA action: it indexes "
                                 f"{', '.join(f'{i} {a}' for i, a in enumerate(BDD_OIA_ACTIONS))}")
        elif layout in FINDING_LAYOUTS:
            labels = set(GCD_CHEXPERT_OUTPUTS)
            self.finding = None if query_label is None else chexpert_finding(query_label)
        else:
            labels = {"label"}
        needed = {"image_id", "path", "partition"} | labels
        absent = sorted(needed - set(frame.columns))
        if absent:
            raise ValueError(f"{described} lacks the columns {absent[:5]}: rebuild it (rule index_dataset, "
                             f"cfx.data.layouts)")
        frame = frame[frame["partition"] == SPLITS[split]]
        if image_ids is not None:
            by_id = frame.set_index("image_id")
            unknown = [i for i in image_ids if i not in by_id.index]
            if unknown:
                where = described if origin is None else origin
                raise KeyError(f"images {unknown[:3]} are not in the {split} split of {where}")
            frame = by_id.loc[list(image_ids)].reset_index()
        self.frame = frame.reset_index(drop=True)
        self.query_label = query_label

    def __len__(self) -> int:
        return len(self.frame)

    def __getitem__(self, i: int) -> tuple[int, torch.Tensor, torch.Tensor]:
        row = self.frame.iloc[i]
        image = self.transform(load_layout_image(Path(row["path"]), self.layout))
        if self.layout in FINDING_LAYOUTS:
            if self.finding is None:
                label = torch.tensor([chexpert_positive(row[f]) for f in GCD_CHEXPERT_OUTPUTS], dtype=torch.float32)
            else:
                label = torch.tensor(chexpert_positive(row[self.finding]), dtype=torch.long)
        elif self.layout in ACTION_LAYOUTS:
            if self.query_label is None:
                label = torch.tensor(row[list(BDD_OIA_ACTIONS)].to_numpy(dtype="int64"), dtype=torch.float32)
            else:
                label = torch.tensor(int(row[BDD_OIA_ACTIONS[int(self.query_label)]]), dtype=torch.long)
        elif self.layout not in ATTRIBUTE_LAYOUTS:
            label = torch.tensor(int(row["label"]), dtype=torch.long)
        elif self.query_label is None:
            label = torch.tensor((row[CELEBA_ATTRIBUTES].to_numpy(dtype="int64") + 1) // 2, dtype=torch.float32)
        else:
            label = torch.tensor(int(row[CELEBA_ATTRIBUTES[self.query_label]] == 1), dtype=torch.long)
        return i, image, label
