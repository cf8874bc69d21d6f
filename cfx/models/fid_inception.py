"""pytorch-fid's InceptionV3 (FID, sFID), loaded from where pytorch-fid caches its weights, never downloaded.

``python -m pytorch_fid`` (used by DiME ``compute-fid.sh``, ACE ``compute_FID.sh``/``compute_sFID.sh``;
docs/upstream/dime_ace.md §4.4) builds ``InceptionV3([3])`` (pool3, 2048-d), whose ``fid_inception_v3`` fetches
``FID_WEIGHTS_URL`` with ``torch.hub.load_state_dict_from_url``: the file lives in
``$TORCH_HOME/hub/checkpoints/pt_inception-2015-12-05-6726825d.pth`` (``torch.hub.get_dir()``). cfx builds the same
module but reads that file itself with ``torch.load(weights_only=True)`` (torch.hub's loader unpickles
arbitrary objects) and raises a FileNotFoundError naming the path when it is missing. A given ``weights`` file (the
paper suite's downloaded registry checkpoint ``resources/checkpoints/fid_inception.pth``, the same file) is read
instead of ``$TORCH_HOME``'s.
"""

from __future__ import annotations

import threading
from pathlib import Path
from unittest import mock
from urllib.parse import urlparse

import torch
from pytorch_fid import inception as _pytorch_fid_inception
from pytorch_fid.inception import FID_WEIGHTS_URL, InceptionV3

from cfx.runtime.checkpoints import load_checkpoint

FID_WEIGHTS_FILE = Path(urlparse(FID_WEIGHTS_URL).path).name
_BUILD_LOCK = threading.Lock()


def fid_weights_path() -> Path:
    """Where pytorch-fid (torch.hub) keeps the FID Inception weights: ``torch.hub.get_dir()/checkpoints/<file>``
    (``$TORCH_HOME/hub/checkpoints`` when TORCH_HOME is set, else ``~/.cache/torch/hub/checkpoints``)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / FID_WEIGHTS_FILE


def load_fid_inception(device: str | torch.device = "cpu", dims: int = 2048,
                       weights: str | Path | None = None) -> InceptionV3:
    """pytorch-fid's ``InceptionV3([block for dims])`` (pool3 for 2048) with the FID weights, in eval mode. Input:
    [0,1] images of any size (resized bilinearly to 299 and scaled to [−1,1] inside, as pytorch-fid does).
    ``weights``: the weights file to read (default: :func:`fid_weights_path`, pytorch-fid's torch.hub cache)."""
    if dims not in InceptionV3.BLOCK_INDEX_BY_DIM:
        raise ValueError(f"dims must be one of {sorted(InceptionV3.BLOCK_INDEX_BY_DIM)} (pytorch-fid --dims), "
                         f"got {dims}")
    path = Path(weights) if weights is not None else fid_weights_path()
    if not path.is_file():
        what_to_do = (f"Download it (snakemake {path} --config suite=paper, or cfx download fid_inception) or put "
                      f"{FID_WEIGHTS_URL} there" if weights is not None else
                      f"cfx never downloads them; fetch {FID_WEIGHTS_URL} and put it there (or set TORCH_HOME to a "
                      f"folder whose hub/checkpoints holds {FID_WEIGHTS_FILE})")
        raise FileNotFoundError(f"pytorch-fid's Inception weights are missing: {path} does not exist. {what_to_do}")

    def weights_only(url: str, *args, **kwargs) -> dict:
        if url != FID_WEIGHTS_URL:
            raise RuntimeError(f"pytorch-fid asked for {url}, expected {FID_WEIGHTS_URL}")
        return load_checkpoint(path, "pytorch-fid Inception weights")

    with _BUILD_LOCK, mock.patch.object(_pytorch_fid_inception, "load_state_dict_from_url", weights_only):
        model = InceptionV3([InceptionV3.BLOCK_INDEX_BY_DIM[dims]])
    return model.to(device).eval()
