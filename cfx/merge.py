"""Merge the chunk manifests of one (experiment, method) and check them before any metric runs.

Upstream DiME's ``--merge_and_eval`` crashes (KeyError) and ACE's ``--merge_chunks`` reads wrong keys
(docs/upstream/dime_ace.md §7); a single-chunk run silently looks like a full one (DiME issue #1). This merge
checks that every image of the experiment is present exactly once and that the flip rate is plausible.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from cfx.io.tree import write_dime_summary
from cfx.methods import results_folder
from cfx.runtime.files import write_json_atomic

log = logging.getLogger(__name__)


class SanityError(RuntimeError):
    """Merged generation results fail the sanity check (missing images, too few flips)."""


def merge_chunks(
    manifests: list[Path],
    *,
    tree_root: Path,
    method: str,
    out_path: Path,
    min_flip_rate: float = 0.0,
) -> dict[str, Any]:
    """Merge chunk manifests into ``out_path`` and ``Results/{method}/summary.yaml``; raise on a bad run."""
    records: list[dict[str, Any]] = []
    variant_records: dict[str, list[dict[str, Any]]] = {}
    expected_total = None
    chunk_ids = []
    for path in manifests:
        data = json.loads(Path(path).read_text())
        chunk_ids.append((data["chunk"], data["chunks"]))
        expected_total = data["n_expected_total"] if expected_total is None else expected_total
        if data["method"] != method:
            raise SanityError(f"{path} holds method '{data['method']}', expected '{method}'")
        records.extend(data["records"])
        for name, rows in data.get("variants", {}).items():
            variant_records.setdefault(name, []).extend(rows)
    n_chunks = {c for _, c in chunk_ids}
    if len(n_chunks) != 1 or sorted(c for c, _ in chunk_ids) != list(range(next(iter(n_chunks)))):
        raise SanityError(f"chunk manifests {chunk_ids} do not form one complete set 0..C-1")
    stems = [r["stem"] for r in records]
    if len(set(stems)) != len(stems):
        raise SanityError(f"{len(stems) - len(set(stems))} images appear in more than one chunk")
    if len(records) != expected_total:
        raise SanityError(
            f"merged {len(records)} images but the experiment has {expected_total}: a chunk is incomplete"
        )
    records.sort(key=lambda r: r["stem"])
    n = len(records)
    flipped = sum(int(r["cf_pred"] == r["target"]) for r in records)
    correct = sum(int(r["label"] == r["pred"]) for r in records)
    flip_rate = flipped / n if n else 0.0
    merged = {
        "method": method,
        "tree": str(tree_root),
        "n": n,
        "chunks": next(iter(n_chunks)),
        "flip_rate": flip_rate,
        "clean_accuracy": correct / n if n else 0.0,
        "records": records,
    }
    summary_path = Path(tree_root) / "Results" / results_folder(method) / "summary.yaml"
    write_dime_summary(summary_path, records)
    if variant_records:  # further result folders (SVCE's other radii): their own summary and flip rate
        merged["variants"] = {}
        for name, rows in sorted(variant_records.items()):
            if len(rows) != n:
                raise SanityError(f"{method} result folder '{name}' has {len(rows)} images, the main one {n}")
            rows.sort(key=lambda r: r["stem"])
            write_dime_summary(summary_path.parent / name / "summary.yaml", rows)
            hits = sum(int(r["cf_pred"] == r["target"]) for r in rows)
            merged["variants"][name] = {"n": len(rows), "flipped": hits, "flip_rate": hits / n if n else 0.0}
    if flip_rate < min_flip_rate:
        raise SanityError(
            f"{method} flipped {flipped}/{n} = {flip_rate:.1%} of the images in {tree_root}, below the "
            f"suite's sanity.min_flip_rate {min_flip_rate:.0%}: check the classifier and DDPM checkpoints and "
            f"the method's hyper-parameters before computing metrics (the images are kept)"
        )
    write_json_atomic(out_path, merged, sort_keys=True)
    log.info("merged %d images, flip rate %.3f", n, flip_rate)
    return merged
