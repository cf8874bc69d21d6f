"""GCD's rules plan correctly when a suite lists the method (the mini suite does not yet: README, GCD)."""

import shutil
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent

GCD_MODEL = {"kind": "diffae", "dataset": "synth_celeba", "image_size": 32,
             "flags": {"img_size": 32, "net_ch": 32, "net_ch_mult": [1, 2, 2], "net_enc_channel_mult": [1, 2, 2, 2],
                       "net_attn": [8], "net_beatgans_embed_channels": 128, "style_ch": 128},
             "train": {"steps": 4, "batch_size": 8, "lr": 1e-3, "seed": 4}}
GCD_METHOD = {"diffae": "mini_diffae", "lpips": {"kind": "lpips_random", "seed": 0}, "batch_size": 4, "ext": "png",
              "config": {"n_iters": 1, "n_steps_dae": 1, "dae_batch_size": 24, "proxy_batch_size": 8,
                         "T_encode": 2, "T_render": 2}}


def test_dry_run_plans_gcd_direction_transfer_and_bblig(tmp_path):
    for name in ("Snakefile", "config.yaml"):
        shutil.copy(ROOT / name, tmp_path / name)
    for folder in ("workflow", "envs", "profiles"):
        shutil.copytree(ROOT / folder, tmp_path / folder)
    suite_path = tmp_path / "workflow" / "suites" / "mini.yaml"
    suite = yaml.safe_load(suite_path.read_text())
    suite["models"]["mini_diffae"] = GCD_MODEL
    suite["methods"]["gcd"] = GCD_METHOD
    for experiment in ("celeba_smile", "celeba_young"):
        suite["experiments"][experiment]["methods"].append("gcd")
    suite["tables"]["table_gcd"] = {"title": "GCD flip rate", "methods": ["gcd"],
                                    "tasks": {"smile": "celeba_smile", "age": "celeba_young"},
                                    "metrics": ["flip_rate"]}
    suite_path.write_text(yaml.safe_dump(suite, sort_keys=False))
    result = subprocess.run([sys.executable, "-m", "snakemake", "-n", "--quiet", "rules"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    plan = result.stdout + result.stderr
    # the mini plan (tests/test_workflow.py) plus: the DiffAE, one direction search and one BB-LIG job per task,
    # 2 x 2 transfer chunks, 2 merges, 2 flip-rate metrics, 2 grids, the table and its figure
    for rule, count in [("train_model", 7), ("gcd_direction", 2), ("gcd_bblig", 2), ("generate", 28),
                        ("merge_chunks", 14), ("metric", 74), ("grid_figure", 10), ("table", 3)]:
        assert any(line.split()[:2] == [rule, str(count)] for line in plan.splitlines()), (rule, plan)
    detail = subprocess.run([sys.executable, "-m", "snakemake", "-n", "-p", "results/cf/celeba_smile/chunks/gcd/"
                             "0-of-2.json"], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert detail.returncode == 0, detail.stderr
    text = detail.stdout + detail.stderr
    assert "results/gcd/celeba_smile/direction.pt" in text and "resources/checkpoints/mini_diffae.pt" in text
