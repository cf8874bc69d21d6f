"""ACE post-processing of one chunk: pre-explanations (PNG, as saved by the attack) → explanations.

Its own step, as upstream's ``postprocessing.py`` re-filters saved pre-explanations: changing the dilation,
threshold or τ of the post-processing re-runs this step only, never the attack. The masks are recomputed from
the saved PNGs. A chunk remembers the parameters it was made with; when they change, its explanations are
deleted and regenerated, so stale images are never mixed with new ones.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from cfx.generate import checkpoint_identities, divided_batch_size, load_generation_models
from cfx.io.images import load_image
from cfx.io.tree import OutputTree, read_info
from cfx.methods import evaluated_results, generated_results, implementation
from cfx.methods.ace import postprocess
from cfx.runtime.device import device_type, select_device, set_threads
from cfx.runtime.files import write_json_atomic
from cfx.runtime.precision import resolve_precision
from cfx.runtime.seeding import image_generators

log = logging.getLogger(__name__)


def postprocess_chunk(
    *,
    experiment: dict[str, Any],
    method_spec: dict[str, Any],
    model_specs: dict[str, dict[str, Any]],
    checkpoints: dict[str, Path],
    pre_manifest: Path,
    seed: int,
    tree_root: Path,
    manifest_path: Path,
    device: str = "auto",
    threads: int | None = None,
    progress: bool = True,
    precision: str = "auto",
    batch_divisor: int = 1,
    compile_unet: bool = False,
    method: str = "ace",
) -> dict[str, Any]:
    """Write ``Results/ace/explanation`` (a variant's: ``Results/<method>/explanation``) for the stems of one attack
    chunk and the chunk's manifest (UNet ``precision``, ``batch_divisor`` and ``compile_unet`` as
    :func:`cfx.generate.generate_chunk`)."""
    if implementation(method) != "ace":
        raise ValueError(f"post-processing is ACE's; '{method}' is not ACE or a variant of it")
    set_threads(threads)
    started = time.time()
    pre = json.loads(Path(pre_manifest).read_text())
    stems = [r["stem"] for r in pre["records"]]
    config = dict(method_spec.get("postprocess", {}))
    pre_tree = OutputTree(Path(tree_root), generated_results(method), ext="png", info_format="ace")
    tree = OutputTree(Path(tree_root), evaluated_results(method), ext="png", info_format="ace")
    tree.prepare()
    # the explanations depend on the post-processing settings, the attack's pre-explanations (a rerun of the attack
    # makes new ones) and the networks: any change regenerates the chunk's explanations
    signature = {"postprocess": config, "seed": seed, "timestep_respacing": method_spec.get("timestep_respacing"),
                 "precision": resolve_precision(precision, device_type(device)), "attack_records": pre["records"],
                 "checkpoints": checkpoint_identities(checkpoints)}
    if tree.settings_changed(tree.results_dir / f".params-{pre['chunk']}-of-{pre['chunks']}.json", signature, stems):
        log.info("ACE post-processing chunk %s: new settings, attack or networks; the chunk is regenerated",
                 pre["chunk"])
    done = tree.completed_stems()
    todo = [s for s in stems if s not in done]
    if todo:
        torch_device = select_device(device)
        models = load_generation_models(method_spec=method_spec, experiment=experiment, model_specs=model_specs,
                                        checkpoints=checkpoints, device=torch_device, precision=precision,
                                        compile_unet=compile_unet)
        batch_size = divided_batch_size(int(method_spec.get("batch_size", 16)), batch_divisor)
        bar = tqdm(total=len(todo), desc="ACE post-processing", unit="img", disable=not progress)
        for start in range(0, len(todo), batch_size):
            batch = todo[start:start + batch_size]
            infos = [read_info(pre_tree.info_path(s)) for s in batch]
            originals = torch.stack([
                load_image(next((Path(tree_root) / "Original").glob(f"*/{s}.png"))) for s in batch]).to(torch_device)
            pes = torch.stack([load_image(pre_tree.info_path(s).parent.parent / "CF" / f"{s}.png")
                               for s in batch]).to(torch_device)
            generators = image_generators(seed, f"{method}/explanation", batch, torch_device)
            explanation, noise, _ = postprocess(originals, pes, unet=models["unet"], diffusion=models["diffusion"],
                                                config=config, generators=generators)
            with torch.no_grad():
                cf_logits = models["classifier"](2 * explanation - 1)
                cf_preds = cf_logits.argmax(1) if cf_logits.ndim == 2 else (cf_logits > 0).long()
            diff = (explanation - originals).abs().flatten(1)
            for k, stem in enumerate(batch):
                tree.write_instance(
                    stem, original=originals[k].cpu(), cf=explanation[k].cpu(), noise=((noise[k] + 1) / 2).cpu(),
                    label=infos[k]["label"], pred=infos[k]["pred"], target=infos[k]["target"],
                    cf_pred=int(cf_preds[k]), info={"l_1": float(diff[k].mean()), "l_inf": float(diff[k].max())},
                    value_range=(0.0, 1.0), write_original=False,
                )
            bar.update(len(batch))
        bar.close()
    records = [{"stem": s, "image_id": r.get("image_id"), **read_info(tree.info_path(s))}
               for s, r in zip(stems, pre["records"], strict=True)]
    manifest = {
        "experiment": experiment, "method": "ace", "stage": "explanation", "chunk": pre["chunk"],
        "chunks": pre["chunks"], "seed": seed, "n": len(records), "n_expected_total": pre["n_expected_total"],
        "flipped": sum(int(r["cf_pred"] == r["target"]) for r in records), "records": records,
        "generated_now": len(todo), "postprocess": config, "seconds": round(time.time() - started, 2),
    }
    write_json_atomic(manifest_path, manifest, sort_keys=True)
    return manifest
