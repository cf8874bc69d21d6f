"""The DiME/ACE output tree (DiME ``core/sample_utils.py:ImageSaver``; docs/upstream/dime_ace.md §3.1).

    Original/{Correct,Incorrect}/<stem>.<ext>
    Results/<exp>/{CC,IC}/{CCF,ICF}/{CF,Noise,SM,Info}/<stem>.<ext|txt>

``stem = str(i).zfill(7)``. Images are written atomically and the Info file last, so an instance whose Info
file exists is complete: that is what a rerun skips.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from cfx.io.images import save_image_atomic, to_uint8, uint8_l1
from cfx.runtime.files import write_json_atomic, write_text_atomic

SUBSETS = ("CC/CCF", "CC/ICF", "IC/CCF", "IC/ICF")
LEAVES = ("CF", "Noise", "SM", "Info")
INFO_KEYS = (("label", "label"), ("pred", "pred"), ("target", "target"), ("cf pred", "cf_pred"),
             ("BKL", "bkl"), ("l_1", "l_1"))
# ACE writes l_inf instead of BKL (docs/upstream/dime_ace.md §2.9)
ACE_INFO_KEYS = (("label", "label"), ("pred", "pred"), ("target", "target"), ("cf pred", "cf_pred"),
                 ("l_inf", "l_inf"), ("l_1", "l_1"))
# SVCE: DiME's keys (BKL = 1 − p(target | x')) plus the radius and the per-image confidences upstream never saves
SVCE_INFO_KEYS = INFO_KEYS + (("radius", "radius"), ("eps", "eps"), ("l_p", "l_p"), ("p_target", "p_target"),
                              ("p_target_original", "p_target_original"))
INFO_FORMATS = {"dime": INFO_KEYS, "ace": ACE_INFO_KEYS, "svce": SVCE_INFO_KEYS}
FLOAT_KEYS = ("bkl", "l_1", "l_inf", "radius", "eps", "l_p", "p_target", "p_target_original")
REQUIRED_KEYS = ("label", "pred", "target", "cf_pred")


def select_folder(label: int, pred: int, target: int, cf_pred: int) -> str:
    """``CC`` iff label == pred, ``CCF`` iff target == cf pred (DiME ``ImageSaver.select_folder``)."""
    return f"{'CC' if label == pred else 'IC'}/{'CCF' if target == cf_pred else 'ICF'}"


def saliency_map(original_u8: np.ndarray, cf_u8: np.ndarray) -> np.ndarray:
    """``255·Σ_c|x − x'| / max`` replicated to 3 channels (0 everywhere when x == x')."""
    diff = np.abs(original_u8.astype(np.float64) - cf_u8.astype(np.float64)).sum(2, keepdims=True)
    peak = diff.max()
    diff = 255 * diff / peak if peak > 0 else diff
    return np.concatenate([diff] * original_u8.shape[2], axis=2).astype(np.uint8)


def format_info(values: dict[str, Any], info_format: str = "dime") -> str:
    """DiME's Info text ``label: …\\npred: …\\ntarget: …\\ncf pred: …\\nBKL: …\\nl_1: …`` (no final newline);
    ACE's has ``l_inf`` in place of ``BKL``."""
    return "\n".join(f"{name}: {values[key]}" for name, key in INFO_FORMATS[info_format])


def read_info(path: Path) -> dict[str, Any]:
    """Parse an Info file into ``label, pred, target, cf_pred`` (int) and ``bkl, l_1`` (float); ACE's ``l_inf`` and
    SVCE's radius and confidences (float) when present."""
    names = dict(INFO_KEYS + ACE_INFO_KEYS + SVCE_INFO_KEYS)
    values: dict[str, Any] = {}
    for line in Path(path).read_text().splitlines():
        if ":" not in line:
            continue
        name, value = (part.strip() for part in line.split(":", 1))
        if name in names:
            key = names[name]
            values[key] = float(value) if key in FLOAT_KEYS else int(float(value))
    missing = [key for key in REQUIRED_KEYS if key not in values]
    if missing:
        raise ValueError(f"Info file {path} lacks {missing}")
    return values


class OutputTree:
    """Writer of one experiment folder for one method (``exp_name`` = the method's Results sub-folder)."""

    def __init__(self, root: Path, exp_name: str, ext: str = "jpg", info_format: str = "dime") -> None:
        if info_format not in INFO_FORMATS:
            raise ValueError(f"info_format must be one of {list(INFO_FORMATS)}")
        self.root = Path(root)
        self.exp_name = exp_name
        self.ext = ext.lstrip(".")
        self.info_format = info_format
        self.results_dir = self.root / "Results" / exp_name

    @staticmethod
    def stem(idx: int) -> str:
        return str(idx).zfill(7)

    def prepare(self) -> None:
        """Create ``Original/{Correct,Incorrect}`` and the 16 leaf folders up front, as upstream."""
        for folder in ("Correct", "Incorrect"):
            (self.root / "Original" / folder).mkdir(parents=True, exist_ok=True)
        for subset, leaf in itertools.product(SUBSETS, LEAVES):
            (self.results_dir / subset / leaf).mkdir(parents=True, exist_ok=True)

    def remove_partial(self, stems: list[str]) -> int:
        """Delete half-written temporary files a killed run left for ``stems`` in this method's folders (only
        the caller's own stems: a concurrent chunk's files in flight are never touched). Returns the count."""
        removed = 0
        for subset, leaf in itertools.product(SUBSETS, LEAVES):
            for stem in stems:
                for leftover in (self.results_dir / subset / leaf).glob(f".{stem}.tmp*"):
                    leftover.unlink(missing_ok=True)
                    removed += 1
        return removed

    def info_path(self, stem: str) -> Path:
        for subset in SUBSETS:
            path = self.results_dir / subset / "Info" / f"{stem}.txt"
            if path.exists():
                return path
        raise FileNotFoundError(f"no Info file for {stem} under {self.results_dir}")

    def completed_stems(self) -> set[str]:
        """Stems whose Info file exists together with their CF, Noise, SM and Original images: the instances a
        rerun may skip (the Info file is written last, so its presence marks a finished write)."""
        originals = {p.name for folder in ("Correct", "Incorrect")
                     for p in (self.root / "Original" / folder).glob(f"*.{self.ext}")}
        done = set()
        for subset in SUBSETS:
            folder = self.results_dir / subset
            for info in (folder / "Info").glob("*.txt"):
                name = f"{info.stem}.{self.ext}"
                if name in originals and all((folder / leaf / name).exists() for leaf in ("CF", "Noise", "SM")):
                    done.add(info.stem)
        return done

    def forget(self, stems: list[str]) -> None:
        """Delete the instances of ``stems`` in this method's folders (CF, Noise, SM and Info of every subset), so
        that a run made with other settings regenerates them instead of skipping them."""
        for subset, leaf in itertools.product(SUBSETS, LEAVES):
            for stem in stems:
                for path in (self.results_dir / subset / leaf).glob(f"{stem}.*"):
                    path.unlink()

    def settings_changed(self, sidecar: Path, signature: dict[str, Any], stems: list[str]) -> bool:
        """Whether the instances of ``stems`` were made with settings other than ``signature`` (the method's
        settings, seed, precision, the identity of the checkpoints...): the record ``sidecar`` (next to the results,
        outside the workflow's declared outputs, so a rerun that Snakemake starts for changed params or inputs still
        finds it) is missing or differs. Then those instances are forgotten and the new record is written; a killed
        job rerun with the same settings keeps its finished images. Returns True when an earlier record differed
        (False for a first run or a resume). Keys are compared as JSON (string keys)."""
        signature = json.loads(json.dumps(signature, sort_keys=True, default=str))
        sidecar = Path(sidecar)
        try:
            previous = json.loads(sidecar.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            previous = None
        if previous == signature:
            return False
        self.forget(stems)
        write_json_atomic(sidecar, signature, sort_keys=True)
        return previous is not None

    def write_instance(self, stem: str, *, original: torch.Tensor, cf: torch.Tensor, noise: torch.Tensor,
                       label: int, pred: int, target: int, cf_pred: int, info: dict[str, Any],
                       value_range: tuple[float, float] = (-1.0, 1.0), sm: np.ndarray | None = None,
                       write_original: bool = True) -> dict:
        """Write one instance; tensors are CHW in ``value_range``. Returns the Info values written."""
        original_u8 = to_uint8(original, value_range, mode="truncate")
        cf_u8 = to_uint8(cf, value_range, mode="clamp")
        noise_u8 = to_uint8(noise, value_range, mode="clamp")
        subset = select_folder(label, pred, target, cf_pred)
        folder = self.results_dir / subset
        correct = "Correct" if label == pred else "Incorrect"
        name = f"{stem}.{self.ext}"
        for other in SUBSETS:  # a rerun with other parameters may land in another folder: no stale copies
            if other != subset:
                for leaf in LEAVES:
                    for stale in (self.results_dir / other / leaf).glob(f"{stem}.*"):
                        stale.unlink()
        if write_original:
            for other in ("Correct", "Incorrect"):  # a rerun may have changed the prediction
                stale = self.root / "Original" / other / name
                if other != correct and stale.exists():
                    stale.unlink()
            save_image_atomic(original_u8, self.root / "Original" / correct / name)
        save_image_atomic(cf_u8, folder / "CF" / name)
        save_image_atomic(noise_u8, folder / "Noise" / name)
        save_image_atomic(saliency_map(original_u8, cf_u8) if sm is None else sm, folder / "SM" / name)
        l_1 = uint8_l1(original_u8, cf_u8)  # DiME main.py: float32 mean over the quantised images
        values = {"label": label, "pred": pred, "target": target, "cf_pred": cf_pred,
                  "bkl": float(info.get("bkl", float("nan"))), "l_inf": float(info.get("l_inf", float("nan"))),
                  "l_1": float(info.get("l_1", l_1))}
        values.update({key: info[key] for _, key in INFO_FORMATS[self.info_format] if key not in values})
        info_path = folder / "Info" / f"{stem}.txt"
        write_text_atomic(info_path, format_info(values, self.info_format))
        return values


def iter_instances(root: Path, exp_name: str, subsets: tuple[str, ...] = SUBSETS) -> Iterator[dict[str, Any]]:
    """Every written instance: stem, subset, original/cf/noise paths, info path and parsed Info."""
    root = Path(root)
    results = root / "Results" / exp_name
    for subset in subsets:
        for info_path in sorted((results / subset / "Info").glob("*.txt")):
            stem = info_path.stem
            cf = next(iter(sorted((results / subset / "CF").glob(f"{stem}.*"))), None)
            # methods sharing a tree write their own copy of the original (DiME .jpg, ACE .png): take the CF's
            originals = sorted((root / "Original").glob(f"*/{stem}.*"))
            original = next((p for p in originals if cf is not None and p.suffix == cf.suffix),
                            originals[0] if originals else None)
            if cf is None or original is None:
                raise FileNotFoundError(f"{info_path} has no matching CF or Original image under {root}")
            yield {"stem": stem, "subset": subset, "info_path": info_path, "info": read_info(info_path),
                   "cf_path": cf, "original_path": original,
                   "noise_path": next(iter(sorted((results / subset / "Noise").glob(f"{stem}.*"))), None)}


def dime_summary(records: list[dict[str, Any]]) -> dict[str, Any]:
    """The dict DiME ``main.py`` dumps to ``summary.yaml``: ``clean acc`` (percent, 100·#(label == pred)/n),
    ``cf acc`` (fraction, #(cf pred == target)/n), ``n``, mean ``bkl`` and ``l_1``, the same (``bkl``, ``l_1``,
    ``n``) for ``cf-cor``/``cf-inc`` and for ``class-cor``/``class-inc`` with their own ``cf-cor``/``cf-inc``,
    and the placeholders ``FVA: 0``, ``MNAC: 0`` at the top level. An empty group has mean 0, as upstream."""

    def mean(rows: list[dict], key: str) -> float:
        values = [float(r.get(key, float("nan"))) for r in rows]
        m = float(np.mean(np.asarray(values, dtype=np.float32))) if values else float("nan")
        return 0 if np.isnan(m) else m

    def block(rows: list[dict]) -> dict[str, Any]:
        return {"bkl": mean(rows, "bkl"), "l_1": mean(rows, "l_1"), "n": len(rows)}

    def cls(r: dict) -> bool:
        return r["label"] == r["pred"]

    def cf(r: dict) -> bool:
        return r["target"] == r["cf_pred"]

    n = len(records)
    summary: dict[str, Any] = {**block(records), "FVA": 0, "MNAC": 0}
    for name, keep in (("class-cor", True), ("class-inc", False)):
        rows = [r for r in records if cls(r) == keep]
        summary[name] = {"cf-cor": block([r for r in rows if cf(r)]), "cf-inc": block([r for r in rows if not cf(r)]),
                         **block(rows)}
    summary["cf-cor"] = block([r for r in records if cf(r)])
    summary["cf-inc"] = block([r for r in records if not cf(r)])
    summary["clean acc"] = 100 * sum(cls(r) for r in records) / n if n else 0
    summary["cf acc"] = sum(cf(r) for r in records) / n if n else 0
    return summary


def write_dime_summary(path: Path, records: list[dict[str, Any]]) -> Path:
    """Write :func:`dime_summary` of ``records`` (dicts with label, pred, target, cf_pred, bkl, l_1) as YAML,
    atomically (``yaml.dump`` layout: block style, sorted keys, as upstream)."""
    return write_text_atomic(path, yaml.safe_dump(dime_summary(records)))
