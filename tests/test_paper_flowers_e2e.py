"""The paper suite's table10 (LDCE-txt on Flowers-102) run end to end through Snakemake on the CPU (not a dry-run).

A copy of the workflow builds ``results/tables/table10.csv``: the ``flowers102`` index of a generated root in
torchvision's layout, the verification of hand-placed checkpoints (trust on first use), the training of LDCE's
unpublished Flowers head on the placed DINO backbone (``train_model``, the suite's recipe at two epochs), LDCE-txt
generation with miniSD's text conditioning read from ``resources/clip-vit-large-patch14`` (the folder users fill with
Hugging Face's openai/clip-vit-large-patch14 files; here a tiny CLIP text config and a letter tokenizer written with
transformers' own ``save_pretrained``), the merge, FID, sFID, S³, COUT (the DINO classifier) and flip rate, and the
table. This is the only run of an LDCE-txt row through the workflow.

Networks are random in their published formats at toy sizes: miniSD as a Lightning ``.ckpt`` with the CLIP text
model's weights inside (``cond_stage_model.transformer.*``), DINO in its hub file's key layout, SimSiam as its
training checkpoint, pytorch-fid's Inception as a state dict (its file-name sha256 prefix dropped from the copy's
registry, as in tests/test_paper_imagenet_e2e.py). LDCE's two Flowers JSON files are stand-ins in upstream's format
placed where ``fetch_ldce_flowers`` writes them, so that rule, which would download the pinned files, never runs."""

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from cfx.io.tree import read_info
from cfx.models.ldm import build_ldm, save_ldm_checkpoint
from tests.factories.datasets import CLOSEST, LABELS, SETID, fake_flowers, write_flowers_resources
from tests.factories.networks import TINY_KL, dino_state
from tests.factories.workflow import copy_workflow
from tests.published_formats import fid_inception_state, random_state, simsiam_shapes

ROOT = Path(__file__).resolve().parent.parent
EXPERIMENT, TABLE, METHOD = "flowers", "table10", "ldce_txt"
SIZE = 224  # the DINO backbone's input size, so that the classifier sees the images it was trained on uncropped
METRICS = ["fid", "sfid", "s3", "cout", "flip_rate"]
CLIP_DIR = "resources/clip-vit-large-patch14"
PLACED = ["minisd", "dino_vits8", "simsiam_resnet50_100ep", "fid_inception"]


def _write_clip_files(folder: Path) -> None:
    """A tiny CLIP text config and a letter-level CLIP tokenizer, saved as Hugging Face does (config.json,
    vocab.json, merges.txt, tokenizer and special-token files)."""
    from transformers import CLIPTextConfig, CLIPTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    letters = "abcdefghijklmnopqrstuvwxyz"
    vocab = {c: i for i, c in enumerate(letters)} | {c + "</w>": 26 + i for i, c in enumerate(letters)}
    vocab |= {"<|startoftext|>": 52, "<|endoftext|>": 53}
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt")).save_pretrained(folder)
    CLIPTextConfig(vocab_size=54, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                   max_position_embeddings=77, bos_token_id=52, eos_token_id=53).save_pretrained(folder)


def _tiny_sd_config() -> dict:
    """SD-v1's structure at toy size (KL first stage, cross-attention UNet) with the suite's CLIP folder."""
    config = json.loads(json.dumps(TINY_KL))
    config["conditioning_key"] = "crossattn"
    config["cond_stage_config"] = {"target": "ldm.modules.encoders.modules.FrozenCLIPEmbedder",
                                   "params": {"version": CLIP_DIR}}
    return config


def _ci_paper_suite(path: Path) -> dict:
    """table10 and its experiment alone at 32 px, LDCE-txt at 10 DDIM steps, miniSD at toy size reading the CLIP
    folder, the Flowers head's recipe at two epochs of batch 2; everything else as published."""
    suite = yaml.safe_load(path.read_text())
    suite["experiments"] = {EXPERIMENT: {**suite["experiments"][EXPERIMENT], "image_size": SIZE}}
    suite["tables"] = {TABLE: suite["tables"][TABLE]}
    suite["methods"] = {METHOD: suite["methods"][METHOD]}
    suite.pop("figures", None)
    models = suite["models"]
    assert models["minisd"]["config"]["cond_stage_config"]["params"]["version"] == CLIP_DIR
    models["minisd"].update(image_size=SIZE, config=_tiny_sd_config())
    # a learning rate at which two epochs of three images fit the head (the recipe's 1e-3 would barely move it)
    models["dino_flowers_linear"]["train"].update(epochs=2, batch_size=2, base_lr=40.0)
    flowers = suite["methods"][METHOD]["datasets"]["flowers102"]
    assert flowers["config"]["strength"] == 0.5 and flowers["class_prompt"].endswith(", a type of flower.")
    flowers["config"]["ddim_steps"] = 10  # strength 0.5 of 10 DDIM steps: 5 steps
    assert suite["checkpoints"]["fid_inception"].pop("sha256_prefix")
    path.write_text(yaml.safe_dump(suite, sort_keys=False))
    return suite


def _colour_flowers(root: Path) -> None:
    """Repaint the stand-in's images one flat colour per class with a little noise, so that the head trained on the
    train split (classes 0 and 49) recognises the test image of class 0 (correctly classified: COUT and S³ read it)
    and not those of classes 2 and 101 (misclassified)."""
    import numpy as np
    from PIL import Image

    palette = {0: (230, 30, 30), 2: (30, 230, 30), 49: (30, 30, 230), 101: (200, 200, 40)}
    for number, label in enumerate(LABELS, start=1):
        colour = np.array(palette.get(label - 1, (128, 128, 128)), dtype=float)
        noise = np.random.default_rng(number).normal(0, 8, (48, 48, 3))
        pixels = np.clip(colour + noise, 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(root / "flowers-102" / "jpg" / f"image_{number:05d}.jpg", quality=95)


def _place_files(wf: Path, suite: dict) -> dict[str, Path]:
    from cfx.runtime.download import checkpoint_filename

    directory = wf / "resources" / "checkpoints"
    directory.mkdir(parents=True, exist_ok=True)
    paths = {name: directory / checkpoint_filename(name, suite["checkpoints"][name]) for name in PLACED}
    _write_clip_files(wf / CLIP_DIR)
    cwd = Path.cwd()
    os.chdir(wf)  # the LDM config names the CLIP folder relative to the workflow, as the jobs read it
    try:
        torch.manual_seed(0)
        save_ldm_checkpoint(build_ldm(_tiny_sd_config()), paths["minisd"])
    finally:
        os.chdir(cwd)
    torch.save(dino_state(embed=64, depth=1, patch=16, img=224, seed=3), paths["dino_vits8"])
    state = random_state(simsiam_shapes(), seed=1, bn_gamma=0.5)
    torch.save({"epoch": 100, "arch": "resnet50", "state_dict": {f"module.{k}": v for k, v in state.items()},
                "optimizer": {"state": {}, "param_groups": []}}, paths["simsiam_resnet50_100ep"])
    torch.save(fid_inception_state(seed=2), paths["fid_inception"])
    write_flowers_resources(wf / "resources" / "data" / "ldce")
    return paths


@pytest.mark.slow
def test_table10_runs_end_to_end_on_cpu(tmp_path):
    wf = copy_workflow(tmp_path)
    suite = _ci_paper_suite(wf / "workflow" / "suites" / "paper.yaml")
    placed = _place_files(wf, suite)
    root = fake_flowers(tmp_path / "flowers")
    _colour_flowers(root)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    result = subprocess.run([sys.executable, "-m", "snakemake", "--cores", "2", "--config", "suite=paper",
                             "chunks=1", "device=cpu", f"data_roots={{flowers102: {root}}}", "--",
                             f"results/tables/{TABLE}.csv"], cwd=wf, capture_output=True, text=True, timeout=900,
                            env=env)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-6000:]
    log = result.stdout + result.stderr
    assert "download_checkpoint" not in log and "fetch_ldce_flowers" not in log  # placed files are never fetched

    lock = yaml.safe_load((wf / "resources" / "checkpoints" / "sha256.lock.yaml").read_text())["checkpoints"]
    assert set(lock) == set(PLACED)
    for name, path in placed.items():
        assert lock[name]["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest(), name

    # the head LDCE explains was trained here on the train split, its log next to it
    head_log = json.loads((wf / "resources" / "checkpoints" / "dino_flowers_linear.train.json").read_text())
    assert (head_log["epochs"], head_log["n_train_images"], head_log["augment"]) == (2, len(SETID["trnid"]), False)

    # every test image, in torchvision's order, towards its closest-class entry
    tree = wf / "results" / "cf" / EXPERIMENT
    infos = {p.stem: read_info(p) for p in (tree / "Results" / METHOD).glob("*/*/Info/*.txt")}
    assert sorted(infos) == [f"{k:07d}" for k in range(len(SETID["tstid"]))]
    for k, number in enumerate(SETID["tstid"]):
        info = infos[f"{k:07d}"]
        assert (info["label"], info["target"]) == (LABELS[number - 1] - 1, CLOSEST[k][0]), info
        assert info["l_1"] > 0, info  # a counterfactual, not the original copied
    merged = json.loads((tree / f"{METHOD}.merged.json").read_text())
    assert merged["n"] == len(SETID["tstid"])
    flipped = sum(info["cf_pred"] == info["target"] for info in infos.values())

    # COUT with the DINO classifier and S³ read the correctly classified test image (class 0), FID and sFID the
    # successful counterfactuals
    correct = sum(info["pred"] == info["label"] for info in infos.values())
    assert correct == 1, infos
    metrics = wf / "results" / "metrics" / EXPERIMENT / METHOD
    for name in ("cout", "s3"):
        result = json.loads((metrics / f"{name}.json").read_text())
        assert result["n"] == correct and result["value"] is not None, result
    assert -1 <= json.loads((metrics / "cout.json").read_text())["value"] <= 1
    table = pd.read_csv(wf / "results" / "tables" / f"{TABLE}.csv", keep_default_na=False, na_values=[""])
    assert sorted(table["metric"]) == sorted(METRICS) and (table["method"] == METHOD).all()
    rows = table.set_index("metric")
    assert rows.loc["flip_rate", "value"] == pytest.approx(100.0 * flipped / len(SETID["tstid"]))
    assert rows.loc["fid", "n"] == flipped
    assert (table["published_source"] == "no published value known").all()
