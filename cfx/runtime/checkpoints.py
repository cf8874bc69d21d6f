"""Checkpoint files: weights-only loading with clear errors, atomic saving, strict state-dict loading."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cfx.runtime.files import atomic_path


def load_checkpoint(path: str | Path, what: str = "checkpoint") -> Any:
    """``torch.load(path, map_location="cpu", weights_only=True)`` with errors that name the file and what to do.

    Missing file → FileNotFoundError; a pickle that needs more than tensors and plain containers (arbitrary
    classes or callables) → ValueError "not a weights-only checkpoint"; anything unreadable → ValueError."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} {path} does not exist: put it there, or run the training/download rule "
                                f"that makes it (snakemake {path})")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise ValueError(f"{what} {path} is not a weights-only checkpoint (loading it needs arbitrary unpickling, "
                         f"which cfx refuses): {str(err).splitlines()[0] if str(err) else err!r}") from err
    except (RuntimeError, EOFError, OSError, ValueError, AttributeError, KeyError) as err:
        raise ValueError(f"{what} {path} is not a readable torch checkpoint (truncated, corrupt or another "
                         f"format?): {err}") from err


def save_checkpoint_atomic(obj: Any, path: str | Path) -> Path:
    """``torch.save`` to a temporary file in the same folder, then ``os.replace``: a reader (or a job killed
    mid-write) never leaves half a checkpoint under ``path``. The file's mode follows the umask (0o644 under 022)."""
    path = Path(path)
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)
    return path


def load_state_dict_strict(module: nn.Module, state_dict: dict, path: str | Path, part: str = "",
                           hint: str = "") -> nn.Module:
    """``load_state_dict(strict=True)`` with a ValueError that names the file (and ``part``) and lists up to 10
    missing, unexpected and shape-mismatched keys each, plus ``hint`` (what probably went wrong)."""
    if not isinstance(state_dict, dict):
        raise ValueError(f"{path}" + (f" [{part}]" if part else "") + f" is not a state dict (got "
                         f"{type(state_dict).__name__})")
    own = module.state_dict()
    missing = sorted(set(own) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(own))
    shapes = [f"{k}: file {tuple(state_dict[k].shape)} vs model {tuple(own[k].shape)}"
              for k in own if k in state_dict and tuple(getattr(state_dict[k], "shape", ())) != tuple(own[k].shape)]
    if missing or unexpected or shapes:
        where = f"{path}" + (f" [{part}]" if part else "")
        raise ValueError(f"{where} does not match the architecture: {len(missing)} missing {missing[:10]}, "
                         f"{len(unexpected)} unexpected {unexpected[:10]}, {len(shapes)} shape mismatches "
                         f"{shapes[:10]}" + (f"; {hint}" if hint else ""))
    module.load_state_dict(state_dict, strict=True)
    return module


FEAT_CLASSIFIER_KEYS = ("feat_extract", "classifier")


def save_feat_classifier(model: nn.Module, path: str | Path) -> Path:
    """DiME's two-part format ``{'feat_extract': state dict, 'classifier': state dict}`` (classifier, oracle)."""
    return save_checkpoint_atomic(
        {"feat_extract": model.feat_extract.state_dict(), "classifier": model.classifier.state_dict()}, path
    )


def read_feat_classifier(path: str | Path, what: str) -> dict:
    """Read a ``{'feat_extract', 'classifier', ...}`` checkpoint; other entries (DiVE's trainer also saves
    ``'optimizer'``) are ignored, as DiME's loaders ignore them. Any other layout is refused with its keys named."""
    state = load_checkpoint(path, what)
    if not isinstance(state, dict) or not all(k in state for k in FEAT_CLASSIFIER_KEYS):
        keys = list(state)[:5] if isinstance(state, dict) else type(state).__name__
        raise ValueError(f"{path} is not a {what} checkpoint (expected keys feat_extract, classifier; got {keys})")
    return state


def load_feat_classifier(model: nn.Module, state: dict, path: str | Path, hint: str = "") -> nn.Module:
    """Load both parts strictly into ``model.feat_extract`` and ``model.classifier``; returns it in eval mode."""
    load_state_dict_strict(model.feat_extract, state["feat_extract"], path, "feat_extract", hint)
    load_state_dict_strict(model.classifier, state["classifier"], path, "classifier", hint)
    return model.eval()
