"""Checkpoint files: weights-only loading with clear errors, atomic saving, strict state-dict loading."""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any

import torch
from torch import nn


def load_checkpoint(path: str | Path, what: str = "checkpoint") -> Any:
    """``torch.load(path, weights_only=True)`` with errors that name the file and what to do."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} {path} does not exist: put it there, or run the rule that trains or "
                                f"downloads it (snakemake {path})")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise ValueError(f"{what} {path} is not a weights-only checkpoint (it needs arbitrary unpickling, which cfx "
                         f"refuses): {err}") from err
    except (RuntimeError, EOFError, OSError) as err:
        raise ValueError(f"{what} {path} is not a readable torch checkpoint (truncated or corrupt?): {err}") from err


def save_checkpoint_atomic(obj: Any, path: str | Path) -> Path:
    """Save to a temporary file in the same folder, then rename: a reader never sees half a checkpoint."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    torch.save(obj, tmp)
    os.replace(tmp, path)
    return path


def load_state_dict_strict(module: nn.Module, state_dict: dict, path: str | Path, part: str = "",
                           hint: str = "") -> nn.Module:
    """``load_state_dict(strict=True)`` with a ValueError listing up to 10 missing/unexpected/mis-shaped keys."""
    own = module.state_dict()
    missing = sorted(set(own) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(own))
    shapes = [f"{k}: file {tuple(state_dict[k].shape)} vs model {tuple(own[k].shape)}"
              for k in own if k in state_dict and tuple(state_dict[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or shapes:
        where = f"{path}" + (f" [{part}]" if part else "")
        raise ValueError(f"{where} does not match the architecture: missing {missing[:10]}, unexpected "
                         f"{unexpected[:10]}, shape mismatches {shapes[:10]}" + (f"; {hint}" if hint else ""))
    module.load_state_dict(state_dict, strict=True)
    return module


FEAT_CLASSIFIER_KEYS = {"feat_extract", "classifier"}


def save_feat_classifier(model: nn.Module, path: str | Path) -> Path:
    """DiME's two-part format ``{'feat_extract': state dict, 'classifier': state dict}`` (classifier, oracle)."""
    return save_checkpoint_atomic(
        {"feat_extract": model.feat_extract.state_dict(), "classifier": model.classifier.state_dict()}, path
    )


def read_feat_classifier(path: str | Path, what: str) -> dict:
    """Read a ``{'feat_extract', 'classifier'}`` checkpoint, refusing any other layout with its keys named."""
    state = load_checkpoint(path, what)
    if not isinstance(state, dict) or set(state) != FEAT_CLASSIFIER_KEYS:
        keys = list(state)[:5] if isinstance(state, dict) else type(state).__name__
        raise ValueError(f"{path} is not a {what} checkpoint (expected keys feat_extract, classifier; got {keys})")
    return state


def load_feat_classifier(model: nn.Module, state: dict, path: str | Path) -> nn.Module:
    """Load both parts strictly into ``model.feat_extract`` and ``model.classifier``; returns it in eval mode."""
    load_state_dict_strict(model.feat_extract, state["feat_extract"], path, "feat_extract")
    load_state_dict_strict(model.classifier, state["classifier"], path, "classifier")
    return model.eval()
