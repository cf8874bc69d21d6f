"""A generation job killed with SIGKILL mid-chunk resumes on rerun: same outputs as an uninterrupted run,
no half-written image left behind."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from cfx.data.celeba import build_index
from cfx.data.synthetic import write_synthetic_celeba
from cfx.models.adm import create_model
from cfx.models.classifier import DenseNetClassifier, save_celeba_classifier

FLAGS = dict(image_size=16, num_channels=32, num_res_blocks=1, channel_mult="1,2", attention_resolutions="8",
             num_heads=2, learn_sigma=True, resblock_updown=True, use_scale_shift_norm=True)
ARCH = dict(growth_rate=8, block_config=[1, 1], num_init_features=16)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume")
    data = write_synthetic_celeba(root / "data", n_identities=30, images_per_identity=3, image_size=32, seed=0,
                                  progress=False)
    build_index(data, root / "index.csv")
    torch.manual_seed(0)
    unet = create_model(**FLAGS)
    with torch.no_grad():
        for p in unet.parameters():
            p.mul_(0.3)
    (root / "ckpt").mkdir()
    torch.save(unet.state_dict(), root / "ckpt" / "tiny_ddpm.pt")
    save_celeba_classifier(DenseNetClassifier(**ARCH), root / "ckpt" / "tiny_classifier.pt")
    suite = {
        "name": "resume-test",
        "datasets": {"d": {"layout": "celeba"}},
        "models": {"tiny_ddpm": {"kind": "ddpm", "dataset": "d", "image_size": 16, "flags": FLAGS,
                                 "diffusion": {"diffusion_steps": 100, "learn_sigma": True}},
                   "tiny_classifier": {"kind": "classifier", "dataset": "d", "image_size": 16, "arch": ARCH}},
        "methods": {"dime": {"timestep_respacing": "20", "batch_size": 1,
                             "config": {"start_step": 6, "classifier_scales": [8, 10], "l_perc": 0.0}}},
        "experiments": {"e": {"dataset": "d", "split": "val", "image_size": 16, "query_label": 31,
                              "classifier": "tiny_classifier", "ddpm": "tiny_ddpm", "max_images": 8,
                              "methods": ["dime"]}},
        "tables": {},
    }
    (root / "suite.yaml").write_text(yaml.safe_dump(suite))
    return root


def _command(root: Path, tree: Path) -> list[str]:
    return [sys.executable, "-m", "cfx.cli", "generate", "--suite", str(root / "suite.yaml"), "--experiment", "e",
            "--method", "dime", "--index", str(root / "index.csv"), "--checkpoints", str(root / "ckpt"),
            "--tree", str(tree), "--device", "cpu"]


def test_sigkill_mid_chunk_then_rerun_equals_uninterrupted(setup):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    reference = setup / "reference"
    subprocess.run(_command(setup, reference), check=True, capture_output=True, env=env, timeout=600)
    killed = setup / "killed"
    job = subprocess.Popen(_command(setup, killed), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    infos = killed / "Results" / "dime"
    deadline = time.time() + 300
    while time.time() < deadline and len(list(infos.glob("*/*/Info/*.txt"))) < 2:
        time.sleep(0.2)
    os.kill(job.pid, signal.SIGKILL)
    job.wait()
    done_before = len(list(infos.glob("*/*/Info/*.txt")))
    assert 2 <= done_before < 8, "the job should have been killed mid-chunk"
    assert not (killed / "chunks" / "dime" / "0-of-1.json").exists()
    rerun = subprocess.run(_command(setup, killed), check=True, capture_output=True, env=env, timeout=600)
    assert rerun.returncode == 0
    manifest = json.loads((killed / "chunks" / "dime" / "0-of-1.json").read_text())
    assert manifest["generated_now"] == 8 - done_before
    expected = json.loads((reference / "chunks" / "dime" / "0-of-1.json").read_text())
    assert manifest["records"] == expected["records"]
    for path in reference.rglob("*"):
        if path.is_file() and path.suffix in (".jpg", ".txt"):
            assert (killed / path.relative_to(reference)).read_bytes() == path.read_bytes(), path
    assert not [p for p in (killed / "Results").rglob("*") if ".tmp" in p.name]
