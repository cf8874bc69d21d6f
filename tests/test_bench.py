"""`cfx bench`: the JSON it writes (keys, counts that follow the cost formulas, FLOPs, share of peak, noise
timing), option parsing and skipping, the CPU peak-memory measure, the FLOP counter against hand counts and the
peak table. Tiny schedules only; no timing assertions (machines are noisy)."""

import json

import pytest
import torch
from click.testing import CliRunner
from torch import nn

from cfx import bench, flops
from cfx.cli import main
from cfx.methods import dime as dime_module
from cfx.runtime import seeding

RUN_KEYS = {"options", "status", "equality", "seconds", "images", "images_per_s", "seconds_per_image", "unet_calls",
            "unet_forwards", "unet_backwards", "unet_forwards_per_image", "unet_passes_per_s", "peak_memory_bytes",
            "baseline_memory_bytes", "peak_memory_above_baseline_bytes", "memory_measure", "flipped",
            "full_schedule", "unet_backward_seconds", "passes_per_image", "flops_per_image", "achieved_tflops",
            "share_of_peak", "noise"}
TOP_KEYS = {"cfx_bench_version", "created", "method", "size", "device", "torch_version", "python_version", "git",
            "settings", "memory_measure", "equality_reference", "runs", "flops_per_pass", "flops_counting", "peaks"}
NOISE_KEYS = {"seconds", "calls", "draws", "draws_per_image", "numbers_per_image", "seconds_per_image",
              "share_of_time", "measure"}


@pytest.fixture(autouse=True)
def small_matmul_peak(monkeypatch):
    """The measured CPU peak times 1024² products instead of 2048² (faster; still BLAS-bound)."""
    monkeypatch.setitem(flops.MATMUL_SIZE, "cpu", 1024)


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
        _check_flops(report, run)
    assert seeding.randn_per_image is dime_module.randn_per_image  # the noise timer restored the original


def _check_flops(report: dict, run: dict) -> None:
    per_pass, passes = report["flops_per_pass"], run["passes_per_image"]
    assert report["flops_counting"]["error"] is None
    assert {name: net["counted_on"] for name, net in report["flops_counting"]["networks"].items()} == {
        "unet": "meta", "classifier": "meta"}
    assert set(passes) == set(per_pass) == {"unet_forward", "unet_backward", "classifier_forward",
                                            "classifier_backward"}
    assert passes["unet_forward"] == run["unet_forwards_per_image"]
    assert passes["unet_backward"] == run["unet_backwards"] / run["images"]
    assert all(v > 0 for v in per_pass.values())
    # the input gradient of frozen convolutions costs about a forward (not the 2x of training)
    assert 0.9 < per_pass["unet_backward"] / per_pass["unet_forward"] < 1.2
    flops_per_image = run["flops_per_image"]
    for kind, count in passes.items():
        assert flops_per_image[kind] == pytest.approx(count * per_pass[kind])
    assert flops_per_image["total"] > 0
    assert flops_per_image["total"] == pytest.approx(sum(v for k, v in flops_per_image.items() if k != "total"))
    achieved, share = run["achieved_tflops"], run["share_of_peak"]
    assert achieved["method"] == pytest.approx(flops_per_image["total"] * run["images_per_s"] / 1e12)
    assert achieved["unet_forward"] == pytest.approx(
        flops_per_image["unet_forward"] * run["images"] / run["unet_forward_seconds"] / 1e12, rel=1e-3)
    assert share["precision"] == "fp32" and share["reason"] is None
    assert share["peak_source"].startswith("measured: best of 3 1024x1024 float32 matmuls")
    peak = report["peaks"]["fp32"]
    assert share["peak_tflops"] == peak["tflops"] == peak["measured_matmul"]["tflops"] > 0
    assert peak["datasheet"] is None
    for key in ("method", "unet"):
        assert 0 < share[key] <= 1
        assert share[key] == pytest.approx(achieved[key] / share["peak_tflops"])
    noise = run["noise"]
    assert NOISE_KEYS <= set(noise)
    assert noise["calls"] > 0 and noise["draws"] >= noise["calls"] and 0 < noise["seconds"] < run["seconds"]
    assert 0 < noise["share_of_time"] < 1
    assert noise["seconds_per_image"] == pytest.approx(noise["seconds"] / run["images"], abs=1e-4)


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
    # docs/upstream/dime_ace.md §1.7: tau(tau+1)/2 UNet forwards per image and attempt, none with autograd
    assert run["unet_forwards"] == pytest.approx(run["attempts_mean"] * 3)
    assert run["unet_backwards"] == 0 and 1 <= run["attempts_mean"] <= 3
    assert run["full_schedule"]["unet_forwards_per_image_per_attempt"] == 12 * 13 // 2
    # no UNet backward and no perceptual network (l_perc = 0 in the mini suite); the classifier: one forward for the
    # prediction, per attempt 2 gradients (fwd + bwd) and the flip check, one forward for the final CF
    assert run["passes_per_image"]["unet_backward"] == 0 and run["unet_backward_seconds"] == 0
    attempts = run["attempts_mean"]
    assert run["passes_per_image"]["classifier_backward"] == 2 * attempts
    assert run["passes_per_image"]["classifier_forward"] == 2 + 3 * attempts
    assert run["achieved_tflops"]["unet_backward"] is None
    per_pass = report["flops_per_pass"]
    assert run["full_schedule"]["estimated_flops_per_image_per_attempt"] == pytest.approx(
        78 * per_pass["unet_forward"]
        + 12 / 2 * 2 * (per_pass["classifier_forward"] + per_pass["classifier_backward"])
        + 12 / 2 * (2 + attempts) / attempts * per_pass["classifier_forward"])
    # noise, tau = 2: the q_sample draw, then per attempt one outer-step draw (the nested refresh from index 0 and
    # the last outer step draw nothing); each draw is one 3x32x32 image
    assert run["noise"]["draws_per_image"] == 1 + attempts
    assert run["noise"]["numbers_per_image"] == (1 + attempts) * 3 * 32 * 32


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
        # one PGD step: the classifier's gradient (fwd + bwd) and 2 forwards (prediction, pre-explanation check)
        assert run["passes_per_image"]["classifier_backward"] == 1
        assert run["passes_per_image"]["classifier_forward"] == 3
        assert run["unet_backward_seconds"] > 0 and run["achieved_tflops"]["unet_backward"] > 0
        # noise: the attack's (K+1) draws in one call, the Noise image, post-processing: start, K kept-region
        # draws and K-1 sampling draws
        assert run["noise"]["calls"] == run["noise"]["draws"] == 1 + 1 + 1 + k + (k - 1)
        assert run["noise"]["numbers_per_image"] == ((k + 1) + 1 + 1 + k + (k - 1)) * 3 * 32 * 32
    per_pass = report["flops_per_pass"]
    assert chunked["flops_per_image"]["unet_forward"] == 3 * k * per_pass["unet_forward"]
    assert chunked["flops_per_image"]["unet_backward"] == k * per_pass["unet_backward"]
    assert plain["full_schedule"]["estimated_flops_per_image"] == pytest.approx(
        21 * k * per_pass["unet_forward"] + 20 * k * per_pass["unet_backward"]
        + 20 * (3 * per_pass["classifier_forward"] + per_pass["classifier_backward"]))


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


def test_pass_flops_of_a_conv_and_a_linear_match_the_hand_count():
    conv = nn.Conv2d(3, 8, kernel_size=3, padding=1).requires_grad_(False)
    counted = flops.pass_flops(conv, [torch.zeros(1, 3, 16, 16)])
    forward = 2 * 3 * 8 * 3 * 3 * 16 * 16  # 2 C_in C_out k^2 H W: one multiply-add per weight and output pixel
    assert counted["forward"] == forward and counted["counted_on"] == "meta"
    assert counted["backward"] == forward  # frozen weights: only the input gradient, a transposed convolution
    # linear in the batch; autograd.grad to the input skips the weight gradient even when weights are trainable
    trainable = flops.pass_flops(nn.Conv2d(3, 8, kernel_size=3, padding=1), [torch.zeros(2, 3, 16, 16)])
    assert trainable["forward"] == trainable["backward"] == 2 * forward
    linear = flops.pass_flops(nn.Linear(10, 4).requires_grad_(False), [torch.zeros(1, 10)], backward=False)
    assert linear["forward"] == 2 * 10 * 4 and linear["backward"] is None
    assert conv.weight.device.type == "cpu"  # the original stays where it was


class DataDependent(nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(6, 5)

    def forward(self, x):
        return self.linear(x) if x.sum().item() >= 0 else -x  # .item() cannot run on meta tensors


def test_pass_flops_counts_on_the_device_when_meta_tensors_fail():
    counted = flops.pass_flops(DataDependent().requires_grad_(False), [torch.ones(1, 6)])
    assert counted["counted_on"].startswith("cpu (") and "meta" in counted["counted_on"]
    assert counted["forward"] == counted["backward"] == 2 * 6 * 5


def test_datasheet_peaks_match_torch_device_names():
    def name(device_name):
        entry = flops.datasheet_peaks(device_name)
        return entry and entry["name"]

    assert name("NVIDIA H100 80GB HBM3") == "NVIDIA H100 SXM"
    assert name("NVIDIA H100 PCIe") == "NVIDIA H100 PCIe" and name("NVIDIA H100 NVL") == "NVIDIA H100 NVL"
    assert name("NVIDIA H200") == "NVIDIA H200 SXM" and name("NVIDIA H200 NVL") == "NVIDIA H200 NVL"
    assert name("NVIDIA A100-SXM4-80GB") == name("NVIDIA A100-PCIE-40GB") == "NVIDIA A100 (40/80 GB, PCIe/SXM)"
    assert name("NVIDIA A10") == "NVIDIA A10" and name("NVIDIA A10G") is None
    assert name("NVIDIA L40S") == "NVIDIA L40S" and name("NVIDIA L40") == "NVIDIA L40"
    assert name("NVIDIA L4") == "NVIDIA L4"
    assert name("NVIDIA GeForce RTX 4090") == "NVIDIA GeForce RTX 4090"
    assert name("Tesla V100-SXM2-16GB") == "NVIDIA V100 SXM2" and name("Tesla V100-PCIE-32GB") == "NVIDIA V100 PCIe"
    assert name("Tesla V100S-PCIE-32GB") == "NVIDIA V100S PCIe" and name("Tesla T4") == "NVIDIA T4"
    assert name("AMD EPYC 7763") is None and name("NVIDIA GeForce GTX 1080") is None
    h100 = flops.datasheet_peaks("NVIDIA H100 80GB HBM3")
    assert (h100["fp32"], h100["tf32"], h100["fp16"], h100["bf16"]) == (67.0, 494.5, 989.5, 989.5)
    for entry in flops.GPU_PEAKS:  # dense tensor rates are at least the CUDA-core FP32 rate
        assert entry["source"] and all(entry[p] is None or entry[p] >= entry["fp32"] for p in ("tf32", "fp16"))


def test_variant_precision(monkeypatch):
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert bench.variant_precision(("fp32",), cpu) == "fp32"
    assert bench.variant_precision(("fp16", "sdpa"), cpu) == "fp16"
    assert bench.variant_precision(("autocast_bf16",), cpu) == "bf16"
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    assert bench.variant_precision(("channels_last",), cuda) == "tf32"  # cuDNN's TF32 convolutions (default)
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    assert bench.variant_precision(("fp32",), cuda) == "fp32"


def test_device_peak_datasheet_on_a_known_gpu_and_reasons_otherwise(monkeypatch):
    measured = {"tflops": 600.0, "dtype": "float32", "size": 8192, "repeats": 3, "seconds_best": 0.002}
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA H100 80GB HBM3")
    monkeypatch.setattr(flops, "measure_matmul_tflops", lambda device, precision: measured)
    peak = bench.device_peak(torch.device("cuda"), "tf32")
    assert peak["tflops"] == 494.5 and peak["source"].startswith("datasheet: NVIDIA H100")
    assert peak["measured_matmul"] == measured and peak["datasheet"]["name"] == "NVIDIA H100 SXM"
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Some Future GPU")
    unknown = bench.device_peak(torch.device("cuda"), "fp16")
    assert unknown["tflops"] == 600.0 and unknown["source"].startswith("measured") and unknown["datasheet"] is None

    def fail(device, precision):
        raise RuntimeError("no such BLAS")

    monkeypatch.setattr(flops, "measure_matmul_tflops", fail)
    none = bench.device_peak(torch.device("cpu"), "bf16")
    assert none["tflops"] is None and "no such BLAS" in none["reason"]
    result = {"images": 2, "images_per_s": 0.5, "unet_forward_seconds": 1.0, "unet_backward_seconds": 0.0,
              "passes_per_image": {"unet_forward": 3.0, "unet_backward": 0.0}}
    fields = bench.throughput(result, {"unet_forward": 10**9, "unet_backward": 10**9}, none)
    assert fields["flops_per_image"]["total"] == 3e9 and fields["achieved_tflops"]["unet"] == pytest.approx(6e-3)
    assert fields["share_of_peak"]["method"] is None and "no such BLAS" in fields["share_of_peak"]["reason"]
    uncounted = bench.throughput(result, None, peak, "RuntimeError: boom")
    assert uncounted["flops_per_image"] is None and "boom" in uncounted["share_of_peak"]["reason"]


def test_measured_matmul_peak_on_cpu():
    measured = flops.measure_matmul_tflops("cpu", "fp32", size=256, repeats=2)
    assert measured["tflops"] > 0 and measured["size"] == 256 and measured["dtype"] == "float32"
