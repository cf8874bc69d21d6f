"""The paper suite's ImageNet class-pair path run end to end through Snakemake on the CPU (not a dry-run).

A copy of the workflow runs ``results/tables/table3.csv`` of the paper suite for the zebra <-> sorrel task with
ACE and LDCE (cin256-v2 conditioned on each image's target class): the ImageNet index of a fake val root in the
upstream layout, the verification of hand-placed checkpoints (trust on first use: their sha256 recorded in
``resources/checkpoints/sha256.lock.yaml``), generation with the 1000-class ResNet-50 and per-class targets, ACE's
post-processing, the merges, FID, sFID, S³, COUT and flip rate, and the table.

The suite copy keeps the paper's networks, registry entries and file names but shrinks the networks and the step
counts so that a CPU runs it in minutes (see :func:`_ci_paper_suite`). Every checkpoint is written in its published
format with random weights: the ADM UNet and torchvision's ResNet-50 as plain state dicts, the LDM as a Lightning
``.ckpt``, SimSiam as its training checkpoint (``module.`` prefixes), pytorch-fid's Inception as a state dict.
Random files cannot carry the sha256 prefixes of torchvision's and pytorch-fid's published file names, so the copy
drops those two ``sha256_prefix`` entries; everything else about the registry (names, extensions, loaders) stays.

The ResNet-50 is random except for its head: ``fc`` scaled by 1e-3 and a bias of 5 on class 339 (sorrel), so it
predicts 339 for every image and every counterfactual by a wide margin while the logits still depend on the image
(ACE's and LDCE's gradients are not zero). Hence, whatever the random networks generate: the sorrel images are
correctly classified and not flipped (S³ and COUT read them), the zebra images are misclassified as their target
(flipped: FID and sFID read their counterfactuals), flip rate 50 %. Four images per class make ACE's seeded sFID
split (seed 0) put two successful counterfactuals in each half, so every metric has a value."""

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
from torchvision.models import resnet50

from cfx.io.tree import read_info
from cfx.models.adm import create_model
from cfx.models.ldm import build_ldm, save_ldm_checkpoint
from tests.factories.datasets import fake_wnid, write_jpeg
from tests.factories.networks import tiny_class_ldm_config
from tests.factories.workflow import copy_workflow
from tests.published_formats import fid_inception_state, random_state, simsiam_shapes

ROOT = Path(__file__).resolve().parent.parent
EXPERIMENT, TASK, TABLE = "imagenet_zebra_sorrel", "zebra_sorrel", "table3"
PAIR = {339: 340, 340: 339}  # sorrel <-> zebra
IMAGES_PER_CLASS = 4
SIZE, CROP = 32, 24  # 32 px images; LDCE's ResNet-50 sees the 24 px centre crop (its 224 of 256)
PREDICTED = 339  # the class the crafted ResNet-50 head predicts for everything
METRICS = ["fid", "sfid", "s3", "cout", "flip_rate"]
# guided-diffusion MODEL_FLAGS of openai's 256x256 unconditional ADM at toy widths: 32 px, two levels, attention at
# downsample rate 2 (the paper's "32,16,8" at 256 px are rates 8, 16, 32), head channels as published
ADM_FLAGS = {"image_size": SIZE, "num_channels": 32, "num_res_blocks": 1, "channel_mult": "1,2",
             "attention_resolutions": "16", "num_head_channels": 64, "learn_sigma": True, "class_cond": False,
             "resblock_updown": True, "use_scale_shift_norm": True, "use_fp16": True}
# the registry entries whose files the test places by hand (_place_checkpoints)
PLACED = ["openai_imagenet256_uncond_ddpm", "torchvision_resnet50", "ldm_cin256_v2", "simsiam_resnet50_100ep",
          "fid_inception"]


def _ci_paper_suite(path: Path) -> dict:
    """Rewrite the copied paper suite: table3 with only the zebra <-> sorrel task and the ACE and LDCE rows, that
    experiment alone (32 px), the ImageNet networks at toy sizes and the methods at few steps. The published
    settings that matter to the path stay: ACE's multiclass PGD joint attack and post-processing, LDCE's class
    conditioning (conditioning null), stretch resize and centre crop, the metric networks and sFID's seed."""
    suite = yaml.safe_load(path.read_text())
    experiment = {**suite["experiments"][EXPERIMENT], "image_size": SIZE, "methods": ["ace", "ldce"]}
    suite["experiments"] = {EXPERIMENT: experiment}
    table = suite["tables"][TABLE]
    suite["tables"] = {TABLE: {**table, "methods": ["ace", "ldce"], "tasks": {TASK: EXPERIMENT},
                               "published": {TASK: table["published"][TASK]}}}
    suite["methods"] = {name: suite["methods"][name] for name in ("ace", "ldce")}
    models = suite["models"]
    models["openai_imagenet256_uncond_ddpm"].update(image_size=SIZE, flags=ADM_FLAGS)
    assert models["openai_imagenet256_uncond_ddpm"]["diffusion"]["diffusion_steps"] == 1000  # kept
    models["torchvision_resnet50"]["image_size"] = SIZE
    models["ldm_cin256_v2"].update(image_size=SIZE, config=tiny_class_ldm_config())
    ace = suite["methods"]["ace"]["datasets"]["imagenet"]
    ace.update(timestep_respacing="10", batch_size=4)  # K = round(0.2 * 10) = 2 filtering steps, as 0.2 * 25 = 5
    ace["config"]["attack_iterations"] = 2
    assert ace["config"]["sampling_time_fraction"] == ace["postprocess"]["sampling_time_fraction"] == 0.2
    ldce = suite["methods"]["ldce"]["datasets"]["imagenet"]
    ldce["classifier_center_crop"] = CROP
    ldce["config"]["ddim_steps"] = 10  # strength 0.342 of 10 DDIM steps: 3 steps
    assert ldce["conditioning"] is None and ldce["image_resize"] == "stretch"
    # random weights cannot carry the sha256 prefixes of torchvision's and pytorch-fid's published file names
    for name in ("torchvision_resnet50", "fid_inception"):
        assert suite["checkpoints"][name].pop("sha256_prefix")
    path.write_text(yaml.safe_dump(suite, sort_keys=False))
    return suite


def _place_checkpoints(directory: Path, suite: dict) -> dict[str, Path]:
    """Random networks in the published formats under the registry's file names."""
    from cfx.runtime.download import checkpoint_filename

    directory.mkdir(parents=True, exist_ok=True)
    paths = {name: directory / checkpoint_filename(name, suite["checkpoints"][name]) for name in PLACED}
    torch.manual_seed(0)
    unet = create_model(**ADM_FLAGS)
    with torch.no_grad():
        for p in unet.parameters():
            p.mul_(0.3)
    torch.save(unet.state_dict(), paths["openai_imagenet256_uncond_ddpm"])
    torch.manual_seed(0)
    net = resnet50()
    with torch.no_grad():  # see the module docstring: class 339 for everything, image-dependent logits
        net.fc.weight.mul_(1e-3)
        net.fc.bias.zero_()
        net.fc.bias[PREDICTED] = 5.0
    torch.save(net.state_dict(), paths["torchvision_resnet50"])
    torch.manual_seed(0)
    ldm = build_ldm(tiny_class_ldm_config())
    with torch.no_grad():
        for p in ldm.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    save_ldm_checkpoint(ldm, paths["ldm_cin256_v2"])
    state = random_state(simsiam_shapes(), seed=1, bn_gamma=0.5)
    torch.save({"epoch": 100, "arch": "resnet50", "state_dict": {f"module.{k}": v for k, v in state.items()},
                "optimizer": {"state": {}, "param_groups": []}}, paths["simsiam_resnet50_100ep"])
    torch.save(fid_inception_state(seed=2), paths["fid_inception"])
    return paths


def _fake_imagenet_val(root: Path) -> int:
    """1000 wnid folders, each with an 8 px filler (an index lists only folders with images), plus the pair's
    images: IMAGES_PER_CLASS of each class, of several sizes. Returns the pair's image count."""
    for k in range(1000):
        write_jpeg(root / fake_wnid(k) / f"ILSVRC2012_val_{k + 10_000:08d}.JPEG", 8, 8, k)
    number = 0
    for k in PAIR:
        for j in range(IMAGES_PER_CLASS - 1):
            number += 1
            write_jpeg(root / fake_wnid(k) / f"ILSVRC2012_val_{number:08d}.JPEG", 40 + 4 * j, 32 + 2 * j, 100 + number)
    return IMAGES_PER_CLASS * len(PAIR)


def _snakemake(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    return subprocess.run([sys.executable, "-m", "snakemake", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=900, env=env)


@pytest.mark.slow
def test_table3_zebra_sorrel_runs_end_to_end_on_cpu(tmp_path):
    wf = copy_workflow(tmp_path)
    suite = _ci_paper_suite(wf / "workflow" / "suites" / "paper.yaml")
    placed = _place_checkpoints(wf / "resources" / "checkpoints", suite)
    imagenet = tmp_path / "imagenet" / "val"
    n_images = _fake_imagenet_val(imagenet)
    result = _snakemake(["--cores", "2", "--config", "suite=paper", "chunks=1", "device=cpu",
                         f"data_roots={{imagenet: {imagenet}}}", "--", f"results/tables/{TABLE}.csv"], wf)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-6000:]
    log = result.stdout + result.stderr
    assert "download_checkpoint" not in log, "a checkpoint placed by hand must never be downloaded"
    assert "train_model" not in log

    # download verification: each placed file's sha256 recorded (trust on first use) and stamped
    lock = yaml.safe_load((wf / "resources" / "checkpoints" / "sha256.lock.yaml").read_text())["checkpoints"]
    assert set(lock) == set(PLACED)
    for name, path in placed.items():
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        assert lock[name]["sha256"] == digest, name
        assert Path(f"{path}.sha256").read_text().split() == [digest, path.name]

    index = pd.read_csv(wf / "results" / "data" / "imagenet" / "index.csv")
    assert index["label"].nunique() == 1000 and len(index) == 1000 + n_images - len(PAIR)

    # every image of the two classes, each towards the other class, in ACE's explanations and LDCE's results
    tree = wf / "results" / "cf" / EXPERIMENT
    for method, folder in (("ace", "ace/explanation"), ("ldce", "ldce")):
        infos = [read_info(p) for p in (tree / "Results" / folder).glob("*/*/Info/*.txt")]
        assert len(infos) == n_images, (method, len(infos))
        assert sorted(i["label"] for i in infos) == [339] * IMAGES_PER_CLASS + [340] * IMAGES_PER_CLASS
        for info in infos:
            assert info["target"] == PAIR[info["label"]], (method, info)
            assert info["pred"] == info["cf_pred"] == PREDICTED, (method, info)
            assert info["l_1"] > 0, (method, info)  # a counterfactual, not the original copied
        assert len(list((tree / "Results" / folder).glob("*/*/CF/*.png"))) == n_images
        merged = json.loads((tree / f"{method}.merged.json").read_text())
        assert merged["n"] == n_images and merged["chunks"] == 1
        assert merged["flip_rate"] == 0.5 and merged["clean_accuracy"] == 0.5
        assert (tree / "Results" / folder / "summary.yaml").exists()
    assert len(list((tree / "Results" / "ace" / "pre-explanation").glob("*/*/Info/*.txt"))) == n_images

    # the metrics read the placed networks: pytorch-fid's Inception at 2048-d (FID, sFID), SimSiam (S³)
    metrics = wf / "results" / "metrics" / EXPERIMENT
    for method in ("ace", "ldce"):
        for metric in ("fid", "sfid"):
            result = json.loads((metrics / method / f"{metric}.json").read_text())
            assert result["features_weights"] == "resources/checkpoints/fid_inception.pth", result
            assert result["features"] == "pytorch-fid InceptionV3 (2048-d)", result
        sfid = json.loads((metrics / method / "sfid.json").read_text())
        assert (sfid["split"], sfid["seed"], sfid["n_real"], sfid["n_fake"]) == ("random", 0, [4, 4], [2, 2])
        assert json.loads((metrics / method / "s3.json").read_text())["network"] == "simsiam_resnet50_100ep"

    table = pd.read_csv(wf / "results" / "tables" / f"{TABLE}.csv", keep_default_na=False, na_values=[""])
    assert len(table) == 2 * len(METRICS)
    assert set(zip(table["method"], table["metric"], strict=True)) == {(m, k) for m in ("ace", "ldce")
                                                                      for k in METRICS}
    assert (table["task"] == TASK).all() and (table["experiment"] == EXPERIMENT).all()
    assert (table["suite"] == "paper").all()
    # every cell has a value (no n/a): successful CFs for FID and sFID, correct images for S³ and COUT
    assert table["value"].notna().all() and table["not_applicable"].isna().all(), table.to_string()
    assert table["stand_ins"].isna().all()  # the published networks' loaders, no mini stand-in
    rows = table.set_index(["method", "metric"])
    for method in ("ace", "ldce"):
        assert rows.loc[(method, "flip_rate"), "value"] == 50.0 and rows.loc[(method, "flip_rate"), "n"] == n_images
        assert (table[table["method"] == method]["flip_rate"] == 50.0).all()
        for metric in ("fid", "s3", "cout"):  # FID: the zebras' CFs; S³, COUT: the correctly classified sorrels
            assert rows.loc[(method, metric), "n"] == IMAGES_PER_CLASS, (method, metric)
        assert rows.loc[(method, "fid"), "value"] >= 0 and -1 <= rows.loc[(method, "s3"), "value"] <= 1
    ace_fid = rows.loc[("ace", "fid")]
    assert ace_fid["published"] == 67.7 and "docs/upstream/dime_ace.md §6.2" in ace_fid["published_source"]
    assert ace_fid["difference"] == pytest.approx(ace_fid["value"] - 67.7)
    others = table[~((table["method"] == "ace") & (table["metric"] == "fid"))]
    assert others["published"].isna().all() and (others["published_source"] == "no published value known").all()
    for ext in ("md", "tex"):
        assert (wf / "results" / "tables" / f"{TABLE}.{ext}").exists()
