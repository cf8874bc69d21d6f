"""`cfx bench`: the JSON it writes (keys, counts that follow the cost formulas), option parsing and skipping,
the CPU peak-memory measure. Tiny schedules only; no timing assertions (machines are noisy)."""

import json

import pytest
import torch
from click.testing import CliRunner

from cfx import bench
from cfx.cli import main

RUN_KEYS = {"options", "status", "equality", "seconds", "images", "images_per_s", "seconds_per_image", "unet_calls",
            "unet_forwards", "unet_backwards", "unet_forwards_per_image", "unet_passes_per_s", "peak_memory_bytes",
            "baseline_memory_bytes", "peak_memory_above_baseline_bytes", "memory_measure", "flipped",
            "full_schedule"}
TOP_KEYS = {"cfx_bench_version", "created", "method", "size", "device", "torch_version", "python_version", "git",
            "settings", "memory_measure", "equality_reference", "runs"}


def _check_common(report: dict, method: str) -> None:
    assert TOP_KEYS <= set(report)
    assert report["method"] == method and report["size"] == "mini"
    assert report["torch_version"] == torch.__version__
    assert report["device"]["type"] == "cpu" and report["device"]["name"]
    assert set(report["git"]) == {"commit", "dirty"}
    assert report["settings"]["unet_flags"]["num_channels"] == 32  # the mini suite's DDPM
    for run in report["runs"]:
        assert RUN_KEYS <= set(run), RUN_KEYS - set(run)
        assert run["status"] == "ok" and run["equality"]["passed"]
        assert run["images_per_s"] > 0 and run["unet_passes_per_s"] > 0 and run["seconds"] > 0
        assert run["peak_memory_bytes"] >= run["baseline_memory_bytes"] > 0


def test_cli_bench_dime_mini_writes_its_json(tmp_path):
    result = CliRunner().invoke(main, ["bench", "--method", "dime", "--size", "mini", "--device", "cpu",
                                       "--n-images", "1", "--max-steps", "2", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    path = tmp_path / "dime-mini-cpu.json"
    assert f"wrote {path}" in result.output
    report = json.loads(path.read_text())
    _check_common(report, "dime")
    assert report["settings"]["schedule"] == {"shortened": "start_step", "full": 12, "run": 2, "max_steps": 2}
    (run,) = report["runs"]
    assert run["options"] == "fp32" and run["equality"]["output_rel_err"] == 0
    # reference §1.7: tau(tau+1)/2 UNet forwards per image and attempt, none with autograd
    assert run["unet_forwards"] == pytest.approx(run["attempts_mean"] * 3)
    assert run["unet_backwards"] == 0 and 1 <= run["attempts_mean"] <= 3
    assert run["full_schedule"]["unet_forwards_per_image_per_attempt"] == 12 * 13 // 2


def test_ace_mini_bench_compares_both_checkpoint_settings(tmp_path):
    report, path = bench.run_bench("ace", "mini", device="cpu", n_images=1, max_steps=1, checkpoint_steps="none,1",
                                   out=tmp_path / "ace.json", progress=False)
    assert path == tmp_path / "ace.json" and json.loads(path.read_text()) == report
    _check_common(report, "ace")
    plain, chunked = report["runs"]
    assert (plain["checkpoint_backward_steps"], chunked["checkpoint_backward_steps"]) == (None, 1)
    k = 3  # mini suite: round(0.06 * 50)
    assert "gradient_rel_err" in plain["equality"]
    # one PGD step: K forwards (+K recomputed when chunked) and K backwards, then K post-processing forwards
    assert plain["unet_forwards"] == 2 * k and chunked["unet_forwards"] == 3 * k
    assert plain["unet_backwards"] == chunked["unet_backwards"] == k
    assert plain["full_schedule"]["unet_forwards_per_image"] == 20 * k + k
    assert chunked["full_schedule"]["unet_forwards_per_image"] == 20 * 2 * k + k
    for run in (plain, chunked):
        assert run["seconds_attack"] + run["seconds_postprocess"] == pytest.approx(run["seconds"], abs=0.05)


def test_options_that_fail_or_differ_are_recorded_and_not_timed(tmp_path, monkeypatch):
    def no_compiler(*args, **kwargs):
        raise RuntimeError("simulated: no C++ compiler")

    monkeypatch.setattr(torch, "compile", no_compiler)
    monkeypatch.setitem(bench.TOLERANCES, "bf16", 1e-9)
    report, _ = bench.run_bench("dime", "mini", device="cpu", n_images=1, max_steps=1, options="fp32,compile,bf16",
                                out=tmp_path, progress=False)
    runs = {run["options"]: run for run in report["runs"]}
    assert runs["fp32"]["status"] == "ok"
    assert runs["compile"]["status"] == "skipped" and "no C++ compiler" in runs["compile"]["reason"]
    assert runs["bf16"]["status"] == "skipped" and "beyond the tolerance" in runs["bf16"]["reason"]
    assert not runs["bf16"]["equality"]["passed"] and "seconds" not in runs["bf16"]


def test_parse_variants():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert bench.parse_variants("auto", cpu) == [("fp32",)]
    assert bench.parse_variants("auto", cuda) == [("fp32",), ("fp16",)]
    assert bench.parse_variants("fp32, sdpa+fp16 ,fp32+channels_last", cpu) == [
        ("fp32",), ("fp16", "sdpa"), ("channels_last",)]
    with pytest.raises(ValueError, match="unknown speed option"):
        bench.parse_variants("fp32,fp8", cpu)
    with pytest.raises(ValueError, match="two precisions"):
        bench.parse_variants("fp16+autocast_bf16", cpu)


def test_paper_setup_follows_the_reference():
    dime = bench.bench_setup("dime", "paper", max_steps=2)
    assert dime.unet_flags["attention_resolutions"] == "32,16,8" and dime.image_size == 128
    assert dime.schedule == {"shortened": "start_step", "full": 60, "run": 2, "max_steps": 2}
    assert dime.config["start_step"] == 2 and dime.perceptual_layer == 18 and dime.batch_size == 50
    ace = bench.bench_setup("ace", "paper")
    assert ace.config["attack_iterations"] == 50 and ace.batch_size == 3 and ace.schedule["run"] == 50
    from cfx.methods.ace import respaced_steps
    from cfx.models.diffusion import create_gaussian_diffusion

    diffusion = create_gaussian_diffusion(**ace.diffusion, timestep_respacing=ace.timestep_respacing)
    assert respaced_steps(ace.config, diffusion) == 5  # K of celeba-attack.sh


def test_cpu_peak_memory_sees_a_temporary_allocation():
    with bench.PeakMemory(torch.device("cpu")) as memory:
        block = torch.ones(64, 2**20)  # 256 MiB, touched
        del block
    if not memory.method.startswith("peak RSS"):
        pytest.skip(f"no resettable peak RSS here ({memory.method})")
    assert memory.peak - memory.baseline >= 200 * 2**20


def test_cuda_peak_memory_path_with_a_fake_allocator(monkeypatch):
    """The CUDA branch (no GPU here): reset before the block, max_memory_allocated after it."""
    state = {"allocated": 100, "peak": 100, "resets": 0}

    def reset(device=None):
        state["resets"] += 1
        state["peak"] = state["allocated"]

    for name, fake in {"synchronize": lambda device=None: None, "empty_cache": lambda: None,
                       "reset_peak_memory_stats": reset, "memory_allocated": lambda device=None: state["allocated"],
                       "max_memory_allocated": lambda device=None: state["peak"]}.items():
        monkeypatch.setattr(torch.cuda, name, fake)
    state["peak"] = 10**9  # an earlier run's peak must not count
    with bench.PeakMemory(torch.device("cuda")) as memory:
        state["peak"] = 350
    assert state["resets"] == 1 and memory.baseline == 100 and memory.peak == 350
    assert memory.method.startswith("torch.cuda.max_memory_allocated")
