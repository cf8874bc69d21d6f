"""``cfx bench``: speed and memory of DiME and ACE with random weights, at the paper or the mini configuration.

One run builds the networks of a configuration with random weights — the CelebA-128 ADM UNet of DiME and ACE
(docs/upstream/dime_ace.md §1.1: DiME ``README.md``/``test.sh``, ACE ``scripts/celeba-attack.sh``), DenseNet-121 and,
for DiME, VGG-19 ``features[:18]`` — or the mini suite's networks (``workflow/suites/mini.yaml``), runs the
method on random images, and writes one JSON with the device, the torch version, the settings and the git commit:
images per second, UNet forwards per second (a counting wrapper around the UNet counts every forward, per image,
including ACE's checkpoint recomputations; forwards run under autograd are counted again as backwards) and the
peak memory (CUDA: ``torch.cuda.max_memory_allocated``; CPU: the peak resident set size ``VmHWM`` of the process,
reset through ``/proc/self/clear_refs`` before each run after ``malloc_trim``, so it is the process's whole RSS
peak during the run, weights included).

Speed options (``--options``, variants joined by ``+``): ``fp16``/``bf16`` convert the block convolutions as
upstream's ``convert_to_fp16`` (what ``precision`` does in generation), ``autocast_fp16``/``autocast_bf16`` run
the fp32 UNet under ``torch.autocast``, ``channels_last`` uses the NHWC memory format, ``sdpa`` computes attention
with ``scaled_dot_product_attention`` and ``compile`` wraps the UNet in ``torch.compile``. Before a variant is
timed, its UNet output (and, for ACE, the gradient through it) is compared with the fp32 eager UNet on the same
inputs; a variant outside its tolerance (:data:`TOLERANCES`) or one the device cannot run is recorded with the
reason and not timed. ``fp32`` alone is that reference.

For ACE every variant runs with each ``checkpoint_backward_steps`` setting (``none`` = plain backprop through the
K filter steps; ``b`` = the chunked recomputation of :func:`cfx.methods.ace.chained_gradient`), giving peak
memory and time per image for both. ``max_steps`` shortens a schedule (DiME: τ, ACE: PGD iterations) so the paper
configuration can be smoke-tested on a CPU; the JSON records it and extrapolates to the full schedule.

FLOPs and the share of the device's peak (issue #21): every network pass — UNet forward, UNet backward (the input
gradient through autograd), classifier forward/backward, DiME's VGG forward/backward — is counted once per image at
the configuration's resolution by :func:`cfx.flops.pass_flops` (``torch.utils.flop_counter.FlopCounterMode`` on a
meta copy) and multiplied by the passes the counting wrappers saw, giving FLOPs per image of the whole run; with the
images per second and the UNet's own forward and backward seconds this gives achieved TFLOP/s, compared with the
device's dense peak in the run's precision (datasheet for known GPUs, else a measured large matmul;
:mod:`cfx.flops`). Host-side noise: ``cfx.runtime.seeding.randn_per_image`` (per-image CPU generators, draws moved
to the device) is wrapped during each run to time its calls and count its draws.
"""

from __future__ import annotations

import contextlib
import copy
import ctypes
import datetime
import functools
import gc
import os
import platform
import resource
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from cfx.runtime.files import write_json_atomic

BENCH_VERSION = 1  # bump when a field changes meaning; FLOPs, share of peak and noise fields (#21) were only added
REPO = Path(__file__).resolve().parent.parent
MINI_SUITE = REPO / "workflow" / "suites" / "mini.yaml"

# docs/upstream/dime_ace.md §1.1: the CelebA 128x128 DDPM of DiME and ACE (the same flags in DiME README.md, test.sh
# and ACE scripts/celeba-attack.sh); use_fp16 is upstream's flag, the fp16 option (precision) applies it
PAPER_UNET_FLAGS: dict[str, Any] = dict(
    image_size=128, num_channels=128, num_res_blocks=2, attention_resolutions="32,16,8", num_heads=4,
    learn_sigma=True, resblock_updown=True, use_scale_shift_norm=True, use_fp16=True, class_cond=False, dropout=0.0,
)
PAPER_DIFFUSION: dict[str, Any] = dict(diffusion_steps=500, noise_schedule="linear", learn_sigma=True)
PAPER_METHODS: dict[str, dict[str, Any]] = {
    # DiME test.sh (docs/upstream/dime_ace.md §1.5): respacing 200, τ = 60, scales 8,10,15, logits, l1 0.05,
    # perceptual 30 @ 18
    "dime": {
        "timestep_respacing": "200", "batch_size": 50,
        "config": {"start_step": 60, "classifier_scales": [8.0, 10.0, 15.0], "use_logits": True, "l1_loss": 0.05,
                   "l2_loss": 0.0, "l_perc": 30.0, "l_perc_layer": 18, "use_sampling_on_x_t": True},
    },
    # ACE scripts/celeba-attack.sh (docs/upstream/dime_ace.md §2.7): respacing 50, fraction 0.1 (K = 5), 50 PGD steps
    # of 1/255, dist_l1 0.001, batch 3; post-processing inpaint 0.15, dilation 15
    "ace": {
        "timestep_respacing": "50", "batch_size": 3,
        "config": {"attack_method": "PGD", "attack_iterations": 50, "attack_step": 1.0, "attack_epsilon": 255.0,
                   "attack_joint": True, "dist_l1": 0.001, "dist_l2": 0.0, "sampling_time_fraction": 0.1,
                   "sampling_stochastic": True},
        "postprocess": {"sampling_time_fraction": 0.1, "sampling_stochastic": True, "sampling_inpaint": 0.15,
                        "sampling_dilation": 15},
    },
}
PAPER_QUERY_LABEL = 31  # Smiling

OPTIONS = ("fp32", "fp16", "bf16", "autocast_fp16", "autocast_bf16", "channels_last", "sdpa", "compile")
PRECISION_OPTIONS = {"fp16": torch.float16, "bf16": torch.bfloat16,
                     "autocast_fp16": torch.float16, "autocast_bf16": torch.bfloat16}
#: Largest accepted max|out − ref| / max|ref| of a variant vs the fp32 eager UNet (outputs and, for ACE, input
#: gradients); a variant's tolerance is the largest of its options'. Float32 reorderings stay near 1e-6; float16
#: keeps 11 significant bits and bfloat16 8, and the error grows with depth (measured: fp16 ≈ 3e-3, bf16 ≈ 2.5e-2
#: on the mini UNet).
TOLERANCES = {"fp32": 1e-4, "channels_last": 1e-4, "sdpa": 1e-4, "compile": 1e-4,
              "fp16": 2e-2, "autocast_fp16": 2e-2, "bf16": 1e-1, "autocast_bf16": 1e-1}


@dataclass
class BenchSetup:
    """Everything a bench run builds: networks (flags), method config, batch size, where they come from."""

    method: str
    size: str
    source: str
    image_size: int
    unet_flags: dict[str, Any]
    diffusion: dict[str, Any]
    timestep_respacing: str
    classifier_arch: dict[str, Any]
    query_label: int
    batch_size: int
    config: dict[str, Any]
    postprocess: dict[str, Any] | None = None
    perceptual_layer: int | None = None
    schedule: dict[str, Any] = field(default_factory=dict)


def bench_setup(method: str, size: str, max_steps: int | None = None, suite_path: Path = MINI_SUITE) -> BenchSetup:
    """The configuration of ``method`` at ``size`` (``paper``: docs/upstream/dime_ace.md §1.1, §1.5, §2.7; ``mini``: the
    mini suite's smile experiment), with the schedule shortened to ``max_steps`` (DiME τ, ACE PGD iterations)."""
    if method not in PAPER_METHODS:
        raise ValueError(f"cfx bench knows the methods {sorted(PAPER_METHODS)}, not '{method}'")
    if size == "paper":
        spec = copy.deepcopy(PAPER_METHODS[method])
        setup = BenchSetup(
            method=method, size=size, source="docs/upstream/dime_ace.md §1.1, §1.5, §2.7 (CelebA 128)",
            image_size=128, unet_flags=dict(PAPER_UNET_FLAGS), diffusion=dict(PAPER_DIFFUSION),
            timestep_respacing=spec["timestep_respacing"], classifier_arch={}, query_label=PAPER_QUERY_LABEL,
            batch_size=spec["batch_size"], config=spec["config"], postprocess=spec.get("postprocess"),
        )
    elif size == "mini":
        from cfx.suite import load_suite, section_entry

        suite = load_suite(suite_path)
        experiment = section_entry(suite, "experiments", "celeba_smile")
        ddpm = section_entry(suite, "models", experiment["ddpm"])
        classifier = section_entry(suite, "models", experiment["classifier"])
        spec = copy.deepcopy(section_entry(suite, "methods", method))
        setup = BenchSetup(
            method=method, size=size, source=f"{Path(suite_path).name} (experiment celeba_smile)",
            image_size=int(experiment["image_size"]), unet_flags=dict(ddpm["flags"]),
            diffusion=dict(ddpm.get("diffusion", {})), timestep_respacing=str(spec.get("timestep_respacing", "")),
            classifier_arch=dict(classifier.get("arch", {})), query_label=int(experiment["query_label"]),
            batch_size=int(spec.get("batch_size", 16)), config=spec["config"], postprocess=spec.get("postprocess"),
        )
    else:
        raise ValueError(f"size must be mini or paper, got '{size}'")
    if method == "dime":
        if float(setup.config.get("l_perc", 0.0)) > 0:
            setup.perceptual_layer = int(setup.config.get("l_perc_layer", 18))
        key = "start_step"
    else:
        key = "attack_iterations"
    full = int(setup.config[key])
    run = min(full, max_steps) if max_steps else full
    if run < 1:
        raise ValueError(f"max_steps must be >= 1, got {max_steps}")
    setup.config[key] = run
    setup.schedule = {"shortened": key, "full": full, "run": run, "max_steps": max_steps}
    return setup


def randomise_unet(unet: nn.Module) -> nn.Module:
    """Give guided-diffusion's zero-initialised layers (``zero_module``: the last conv of every ResBlock, attention
    ``proj_out`` and the output conv) torch's default random init, so every layer computes something and the
    equality checks compare non-zero outputs."""
    with torch.no_grad():
        for module in unet.modules():
            if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)) and not module.weight.any():
                module.reset_parameters()
    return unet


def build_models(setup: BenchSetup, device: torch.device, seed: int = 0) -> dict[str, Any]:
    """Random-weight UNet (fp32, eager), respaced diffusion, query classifier and (DiME, l_perc > 0) VGG-19
    ``features[:layer]`` behind DiME's normaliser, on ``device``, frozen."""
    from cfx.models.adm import DIFFUSION_FLAGS, create_model
    from cfx.models.classifier import DenseNetClassifier, QueryClassifier
    from cfx.models.diffusion import create_gaussian_diffusion

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        flags = {k: v for k, v in setup.unet_flags.items() if k not in DIFFUSION_FLAGS or k == "learn_sigma"}
        unet = randomise_unet(create_model(**{**flags, "use_fp16": False}))
        classifier = QueryClassifier(DenseNetClassifier(**setup.classifier_arch), setup.query_label)
        models: dict[str, Any] = {"unet": unet, "classifier": classifier}
        if setup.perceptual_layer:
            from torchvision.models import vgg19

            from cfx.models.perceptual import PerceptualFeatures

            models["perceptual"] = PerceptualFeatures(vgg19(weights=None).features[: setup.perceptual_layer])
    for module in models.values():
        module.to(device).eval().requires_grad_(False)
    models["diffusion"] = create_gaussian_diffusion(**setup.diffusion, timestep_respacing=setup.timestep_respacing)
    return models


class _BackwardMark(torch.autograd.Function):
    """Identity whose backward calls ``mark(device)``: on the UNet's output it marks the gradient's arrival, on
    its input the gradient's departure, so the time between is the UNet's backward."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, mark: Any) -> torch.Tensor:
        ctx.mark = mark
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        ctx.mark(grad.device)
        return grad, None


class CountingUNet(nn.Module):
    """The UNet as the methods call it, with a speed variant's input format and autocast, counting forwards per
    image (``forwards``), those recorded by autograd (``backwards``: each is back-propagated once) and calls, and
    timing its forwards (``forward_seconds``; on CUDA with a synchronisation around each call) and the backwards
    autograd runs through it (``backward_seconds``: from the gradient reaching its output to the input gradient,
    synchronised on CUDA; autograd runs one UNet backward at a time in the methods' chains).
    The output is float32, as the fp32 UNet's."""

    def __init__(self, unet: nn.Module, autocast_dtype: torch.dtype | None = None,
                 channels_last: bool = False) -> None:
        super().__init__()
        self.unet = unet
        self.autocast_dtype = autocast_dtype
        self.channels_last = channels_last
        self.reset()

    def reset(self) -> None:
        self.calls = self.forwards = self.backwards = 0
        self.forward_seconds = self.backward_seconds = 0.0
        self._backward_starts: list[float] = []

    def _backward_start(self, device: torch.device) -> None:
        _sync(device)
        self._backward_starts.append(time.perf_counter())

    def _backward_stop(self, device: torch.device) -> None:
        _sync(device)
        if self._backward_starts:
            self.backward_seconds += time.perf_counter() - self._backward_starts.pop()

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        tracked = torch.is_grad_enabled() and x.requires_grad
        if tracked:
            x = _BackwardMark.apply(x, self._backward_stop)
        _sync(x.device)
        started = time.perf_counter()
        out = self._forward(x, timesteps, **kwargs)
        _sync(x.device)
        self.forward_seconds += time.perf_counter() - started
        if tracked and out.requires_grad:
            out = _BackwardMark.apply(out, self._backward_start)
        return out

    def _forward(self, x: torch.Tensor, timesteps: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        self.calls += 1
        self.forwards += x.shape[0]
        if torch.is_grad_enabled() and x.requires_grad:
            self.backwards += x.shape[0]
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        context = (torch.autocast(device_type=x.device.type, dtype=self.autocast_dtype) if self.autocast_dtype
                   else contextlib.nullcontext())
        with context:
            out = self.unet(x, timesteps, **kwargs)
        return out.float()


class CountingNet(nn.Module):
    """A network the method calls besides the UNet (classifier, DiME's perceptual features), counting images per
    forward (``forwards``) and those recorded by autograd with an input that needs a gradient (``backwards``: each
    is back-propagated once by the methods)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net
        self.reset()

    def reset(self) -> None:
        self.forwards = self.backwards = 0

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        self.forwards += x.shape[0]
        if torch.is_grad_enabled() and x.requires_grad:
            self.backwards += x.shape[0]
        return self.net(x, *args, **kwargs)


class NoiseTimer:
    """Times ``cfx.runtime.seeding.randn_per_image`` while the block runs: every ``cfx`` module that imported it
    calls a wrapper that adds the call's wall seconds (on CUDA synchronised before and after the call, so GPU work
    queued before it is not counted; the copy from pageable host memory waits for it anyway), the calls, the draws
    (one per generator, i.e. per image) and the numbers drawn. The original function is restored on exit."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.seconds = 0.0
        self.calls = self.draws = self.numbers = 0
        self._patched: list[Any] = []

    def __enter__(self) -> NoiseTimer:
        from cfx.runtime import seeding

        original = seeding.randn_per_image

        @functools.wraps(original)
        def timed(generators: list[torch.Generator], shape_per_image: tuple[int, ...], *args: Any,
                  **kwargs: Any) -> torch.Tensor:
            _sync(self.device)
            started = time.perf_counter()
            out = original(generators, shape_per_image, *args, **kwargs)
            _sync(out.device)
            self.seconds += time.perf_counter() - started
            self.calls += 1
            self.draws += len(generators)
            self.numbers += out.numel()
            return out

        self._original = original
        self._patched = [module for name, module in list(sys.modules.items())
                         if (name == "cfx" or name.startswith("cfx.")) and module is not None
                         and getattr(module, "randn_per_image", None) is original]
        for module in self._patched:
            module.randn_per_image = timed
        return self

    def __exit__(self, *exc: object) -> None:
        for module in self._patched:
            module.randn_per_image = self._original

    def fields(self, images: int, seconds: float) -> dict[str, Any]:
        """The run's noise entry: totals, per image and the share of the run's wall time."""
        return {"seconds": round(self.seconds, 4), "calls": self.calls, "draws": self.draws,
                "draws_per_image": self.draws / images, "numbers_per_image": self.numbers / images,
                "seconds_per_image": self.seconds / images, "share_of_time": self.seconds / seconds,
                "measure": "wall seconds inside cfx.runtime.seeding.randn_per_image (CPU draws, stacking, copy to "
                           "the device); CUDA: synchronised before and after each call"}


def parse_variants(options: str, device: torch.device) -> list[tuple[str, ...]]:
    """``"fp32,fp16+sdpa"`` → ``[("fp32",), ("fp16", "sdpa")]``; ``auto`` = fp32 on CPU, fp32 and fp16 (the
    generation default, ``precision: auto``) on CUDA. Unknown or conflicting options are errors."""
    if options.strip() == "auto":
        options = "fp32,fp16" if device.type == "cuda" else "fp32"
    variants = []
    for text in options.split(","):
        names = {name.strip() for name in text.split("+") if name.strip()}
        unknown = sorted(names - set(OPTIONS))
        if unknown or not names:
            raise ValueError(f"unknown speed option(s) {unknown or [text]} in --options; known: {', '.join(OPTIONS)}")
        if len(names & set(PRECISION_OPTIONS)) > 1:
            raise ValueError(f"variant '{text}' combines two precisions")
        if len(names) > 1:
            names.discard("fp32")  # fp32 is the absence of a precision option
        variants.append(tuple(sorted(names, key=OPTIONS.index)))
    return variants


def variant_name(parts: tuple[str, ...]) -> str:
    return "+".join(parts)


def build_variant(base: nn.Module, parts: tuple[str, ...]) -> CountingUNet:
    """The counting UNet of a variant; the base (fp32, eager) UNet is copied when the variant changes it."""
    from cfx.models.adm import set_attention_backend

    unet = base
    if any(p in ("fp16", "bf16", "sdpa", "channels_last") for p in parts):
        unet = copy.deepcopy(base)
    if "fp16" in parts:
        unet.convert_to_fp16()
    if "bf16" in parts:
        unet.convert_to_bf16()
    if "sdpa" in parts:
        set_attention_backend(unet, "sdpa")
    if "channels_last" in parts:
        unet = unet.to(memory_format=torch.channels_last)
    inner = torch.compile(unet) if "compile" in parts else unet
    autocast = next((PRECISION_OPTIONS[p] for p in parts if p.startswith("autocast_")), None)
    return CountingUNet(inner, autocast_dtype=autocast, channels_last="channels_last" in parts)


def _relative_error(value: torch.Tensor, reference: torch.Tensor) -> float:
    return float((value.float() - reference.float()).abs().max() / reference.float().abs().max().clamp_min(1e-12))


def equality_check(reference: nn.Module, variant: nn.Module, x: torch.Tensor, timesteps: torch.Tensor,
                   tolerance: float, gradient: bool) -> dict[str, Any]:
    """max|out − ref| / max|ref| of the UNet output on (x, t) and, with ``gradient``, of ∇_x Σ(out ⊙ probe)."""

    def grad(model: nn.Module, probe: torch.Tensor) -> torch.Tensor:
        with torch.enable_grad():
            x_in = x.detach().clone().requires_grad_(True)
            return torch.autograd.grad((model(x_in, timesteps).float() * probe).sum(), x_in)[0]

    with torch.no_grad():
        ref = reference(x, timesteps).float()
        out = variant(x, timesteps).float()
    result: dict[str, Any] = {"tolerance": tolerance, "output_rel_err": _relative_error(out, ref)}
    errors = [result["output_rel_err"]]
    if gradient:
        probe = torch.randn(ref.shape, generator=torch.Generator().manual_seed(1)).to(ref.device)
        result["gradient_rel_err"] = _relative_error(grad(variant, probe), grad(reference, probe))
        errors.append(result["gradient_rel_err"])
    result["passed"] = bool(all(e <= tolerance for e in errors))
    return result


def _proc_status(key: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


class PeakMemory:
    """Peak memory of a block. CUDA: ``max_memory_allocated`` after ``reset_peak_memory_stats`` (tensors only).
    CPU: the process's peak RSS (``VmHWM``), reset by writing 5 to ``/proc/self/clear_refs`` after ``gc`` and
    ``malloc_trim`` hand freed memory back; where that is not possible, ``ru_maxrss`` (never reset)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.method = ""
        self.baseline = self.peak = 0

    def __enter__(self) -> PeakMemory:
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)
            self.baseline = torch.cuda.memory_allocated(self.device)
            self.method = "torch.cuda.max_memory_allocated (tensors; reset before the run)"
            return self
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        try:
            Path("/proc/self/clear_refs").write_text("5")
            self.method = "peak RSS of the process (VmHWM, reset via /proc/self/clear_refs after malloc_trim)"
        except OSError:
            self.method = "ru_maxrss (process peak RSS since start, not reset between runs)"
        self.baseline = _proc_status("VmRSS") or 0
        return self

    def __exit__(self, *exc: object) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak = torch.cuda.max_memory_allocated(self.device)
        elif self.method.startswith("peak RSS"):
            self.peak = _proc_status("VmHWM") or 0
        else:
            self.peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_method(setup: BenchSetup, models: dict[str, Any], images: torch.Tensor, batch_size: int, seed: int,
               checkpoint_steps: int | None = None, progress: bool = True, desc: str = "") -> dict[str, Any]:
    """Run the method (ACE: attack and post-processing) on ``images`` in batches; times, counts, peak memory."""
    from cfx.methods import get_method
    from cfx.runtime.seeding import image_generators

    module = get_method(setup.method)
    unet: CountingUNet = models["unet"]
    config = dict(setup.config)
    if setup.method == "ace":
        config["checkpoint_backward_steps"] = checkpoint_steps
    device = images.device
    unet.reset()
    nets = {name: models[name] for name in ("classifier", "perceptual") if isinstance(models.get(name), CountingNet)}
    for net in nets.values():
        net.reset()
    seconds_post = 0.0
    attempts, flipped = [], 0
    with PeakMemory(device) as memory, NoiseTimer(device) as noise:
        _sync(device)
        started = time.perf_counter()
        bar = tqdm(total=len(images), desc=desc or setup.method, unit="img", disable=not progress, leave=False)
        for start in range(0, len(images), batch_size):
            batch = images[start:start + batch_size]
            stems = [str(start + k).zfill(7) for k in range(len(batch))]
            labels = torch.zeros(len(batch), device=device)
            out = module.generate(batch, labels, models=models, config=config,
                                  generators=image_generators(seed, setup.method, stems), progress=progress)
            flipped += int((out.cf_preds == out.targets).sum())
            attempts += [int(info.get("attempts", 1)) for info in out.info]
            if setup.method == "ace":
                from cfx.methods.ace import postprocess

                _sync(device)
                post_started = time.perf_counter()
                postprocess((batch + 1) / 2, (out.counterfactuals + 1) / 2, unet=unet, diffusion=models["diffusion"],
                            config=setup.postprocess or {}, generators=image_generators(seed, "ace/explanation",
                                                                                        stems))
                _sync(device)
                seconds_post += time.perf_counter() - post_started
            bar.update(len(batch))
        _sync(device)
        seconds = time.perf_counter() - started
        bar.close()
    n = len(images)
    result = {
        "seconds": round(seconds, 4),
        "images": n,
        "images_per_s": n / seconds,
        "seconds_per_image": seconds / n,
        "unet_calls": unet.calls,
        "unet_forwards": unet.forwards,
        "unet_backwards": unet.backwards,
        "unet_forwards_per_image": unet.forwards / n,
        "unet_forward_seconds": round(unet.forward_seconds, 4),
        "unet_backward_seconds": round(unet.backward_seconds, 4),
        "unet_passes_per_s": unet.forwards / seconds,
        "passes_per_image": {"unet_forward": unet.forwards / n, "unet_backward": unet.backwards / n,
                             **{f"{name}_{kind}": getattr(net, f"{kind}s") / n for name, net in nets.items()
                                for kind in ("forward", "backward")}},
        "noise": noise.fields(n, seconds),
        "peak_memory_bytes": memory.peak,
        "baseline_memory_bytes": memory.baseline,
        "peak_memory_above_baseline_bytes": max(0, memory.peak - memory.baseline),
        "memory_measure": memory.method,
        "flipped": flipped,
    }
    if setup.method == "dime":
        result["attempts_mean"] = sum(attempts) / n
    else:
        result["seconds_attack"] = round(seconds - seconds_post, 4)
        result["seconds_postprocess"] = round(seconds_post, 4)
    result["full_schedule"] = full_schedule_estimate(setup, result, checkpoint_steps)
    return result


def full_schedule_estimate(setup: BenchSetup, result: dict[str, Any], checkpoint_steps: int | None) -> dict[str, Any]:
    """UNet forwards per image of the full (unshortened) schedule and the time it would take, extrapolated
    linearly: DiME per attempt has τ(τ+1)/2 UNet forwards and τ guided outer steps (docs/upstream/dime_ace.md §1.7),
    each priced at this run's seconds per UNet forward and per outer step (the rest: classifier, perceptual net,
    noise); ACE from this run's attack seconds per PGD iteration (docs/upstream/dime_ace.md §2.8)."""
    full, run = setup.schedule["full"], setup.schedule["run"]
    n = result["images"]
    if setup.method == "dime":
        forwards = full * (full + 1) // 2
        per_forward = result["unet_forward_seconds"] / max(result["unet_forwards"], 1)
        outer_steps = n * result["attempts_mean"] * run
        per_outer_step = (result["seconds"] - result["unet_forward_seconds"]) / outer_steps
        return {"unet_forwards_per_image_per_attempt": forwards,
                "estimated_seconds_per_image_per_attempt": forwards * per_forward + full * per_outer_step,
                "how": "tau(tau+1)/2 x seconds per UNet forward + tau x seconds of the rest per outer step, "
                       "from this run (1 to 3 attempts per image)"}
    k = int(round(float(setup.config["sampling_time_fraction"])
                  * int(setup.timestep_respacing or setup.diffusion.get("diffusion_steps", 1000))))
    per_iteration = (1 if checkpoint_steps is None or checkpoint_steps >= k + 1 else 2) * k
    post_k = k if not setup.postprocess else int(round(float(setup.postprocess["sampling_time_fraction"]) * int(
        setup.timestep_respacing or setup.diffusion.get("diffusion_steps", 1000))))
    return {"unet_forwards_per_image": full * per_iteration + post_k,
            "unet_backwards_per_image": full * k,
            "estimated_seconds_per_image": (result["seconds_attack"] * full / run + result["seconds_postprocess"]) / n,
            "how": "attack seconds x full/run PGD iterations + post-processing seconds, per image"}


def count_pass_flops(setup: BenchSetup, models: dict[str, Any]) -> dict[str, Any]:
    """FLOPs per image of each network pass the method runs (``unet_forward``, ``unet_backward``,
    ``classifier_forward`` … ``perceptual_backward``), counted on one image at the configuration's resolution by
    :func:`cfx.flops.pass_flops` on the fp32 eager networks (every speed variant computes the same products).
    ``flops_per_pass`` is None and ``error`` says why when counting fails."""
    from cfx.flops import pass_flops

    shape = [1, 3, setup.image_size, setup.image_size]
    x = torch.zeros(shape)
    networks: dict[str, tuple[nn.Module, tuple[torch.Tensor, ...]]] = {
        "unet": (models["unet"], (x, torch.zeros(1, dtype=torch.long))), "classifier": (models["classifier"], (x,))}
    if "perceptual" in models:
        networks["perceptual"] = (models["perceptual"], (x,))
    per_pass: dict[str, int] = {}
    counting: dict[str, Any] = {
        "how": "torch.utils.flop_counter.FlopCounterMode on one image (batch 1) at the configuration's resolution: "
               "matmul, bmm, convolution and attention ops and their backward, 2 FLOPs per multiply-add; element-wise "
               "ops and normalisations are not counted. Backward = the input gradient with frozen weights",
        "image_shape": shape, "networks": {}, "error": None}
    try:
        for name, (module, inputs) in networks.items():
            module = module.net if isinstance(module, CountingNet) else module
            module = module.unet if isinstance(module, CountingUNet) else module
            counted = pass_flops(module, inputs)
            per_pass[f"{name}_forward"], per_pass[f"{name}_backward"] = counted["forward"], counted["backward"]
            counting["networks"][name] = {"counted_on": counted["counted_on"], "ops": counted["ops"]}
    except Exception as error:  # recorded: the timings stay valid without FLOPs
        counting["error"] = f"{type(error).__name__}: {(str(error).splitlines() or [''])[0][:300]}"
        return {"flops_per_pass": None, "flops_counting": counting}
    return {"flops_per_pass": per_pass, "flops_counting": counting}


def variant_precision(parts: tuple[str, ...], device: torch.device) -> str:
    """The precision the UNet's products run in: ``fp16``/``bf16`` for those options; else ``tf32`` on a CUDA GPU
    of compute capability ≥ 8.0 while ``torch.backends.cudnn.allow_tf32`` is on (torch's default: float32
    convolutions, the bulk of the UNet's FLOPs, use TF32 tensor cores) and ``fp32`` otherwise."""
    for part in parts:
        if part in PRECISION_OPTIONS:
            return "fp16" if PRECISION_OPTIONS[part] == torch.float16 else "bf16"
    if device.type == "cuda" and torch.backends.cudnn.allow_tf32 and torch.cuda.get_device_capability(device)[0] >= 8:
        return "tf32"
    return "fp32"


def device_peak(device: torch.device, precision: str) -> dict[str, Any]:
    """The dense peak TFLOP/s of ``device`` in ``precision``: the datasheet figure of a known GPU
    (:data:`cfx.flops.GPU_PEAKS`), else the measured large-matmul throughput (:func:`cfx.flops.measure_matmul_tflops`,
    always measured and recorded). ``tflops`` is None, with a ``reason``, when neither is available."""
    from cfx.flops import datasheet_peaks, measure_matmul_tflops

    entry = datasheet_peaks(torch.cuda.get_device_name(device)) if device.type == "cuda" else None
    peak: dict[str, Any] = {"precision": precision, "tflops": None, "source": None, "reason": None,
                            "datasheet": None, "measured_matmul": None}
    if entry is not None:
        peak["datasheet"] = {"name": entry["name"], "tflops": entry.get(precision), "source": entry["source"]}
    try:
        peak["measured_matmul"] = measure_matmul_tflops(device, precision)
    except Exception as error:  # e.g. a dtype this device's BLAS lacks
        peak["measured_matmul"] = {"error": f"{type(error).__name__}: {str(error).splitlines()[0][:200]}"}
    if entry is not None and entry.get(precision):
        peak.update(tflops=float(entry[precision]), source=f"datasheet: {entry['source']} ({entry['name']}, "
                                                             f"{precision} dense)")
    elif peak["measured_matmul"] and peak["measured_matmul"].get("tflops"):
        measured = peak["measured_matmul"]
        peak.update(tflops=measured["tflops"], source=f"measured: best of {measured['repeats']} {measured['size']}x"
                                                      f"{measured['size']} {measured['dtype']} matmuls on this device "
                                                      "before the runs")
    else:
        peak["reason"] = (f"no datasheet {precision} peak for this device and the matmul measurement failed: "
                          f"{(peak['measured_matmul'] or {}).get('error')}")
    return peak


def throughput(result: dict[str, Any], flops_per_pass: dict[str, int] | None, peak: dict[str, Any],
               counting_error: str | None = None) -> dict[str, Any]:
    """``flops_per_image`` (total and per pass kind: FLOPs per pass × passes per image), ``achieved_tflops``
    (``method``: FLOPs per image × images/s; ``unet``: the UNet's FLOPs over its forward + backward seconds;
    ``unet_forward``, ``unet_backward``) and ``share_of_peak`` (``method``, ``unet``: achieved / ``peak``)."""
    share: dict[str, Any] = {"method": None, "unet": None, "peak_tflops": peak.get("tflops"),
                             "precision": peak.get("precision"), "peak_source": peak.get("source"), "reason": None}
    if flops_per_pass is None:
        share["reason"] = f"FLOPs were not counted ({counting_error})"
        return {"flops_per_image": None, "achieved_tflops": None, "share_of_peak": share}
    passes = result["passes_per_image"]
    per_image = {kind: passes[kind] * flops_per_pass[kind] for kind in passes if kind in flops_per_pass}
    per_image = {"total": sum(per_image.values()), **per_image}
    n = result["images"]

    def tflops(flops: float, seconds: float) -> float | None:
        return flops / seconds / 1e12 if seconds > 0 and flops > 0 else None

    achieved = {
        "method": per_image["total"] * result["images_per_s"] / 1e12,
        "unet": tflops((per_image["unet_forward"] + per_image["unet_backward"]) * n,
                       result["unet_forward_seconds"] + result["unet_backward_seconds"]),
        "unet_forward": tflops(per_image["unet_forward"] * n, result["unet_forward_seconds"]),
        "unet_backward": tflops(per_image["unet_backward"] * n, result["unet_backward_seconds"]),
    }
    if peak.get("tflops"):
        for key in ("method", "unet"):
            share[key] = achieved[key] / peak["tflops"] if achieved[key] is not None else None
    else:
        share["reason"] = peak.get("reason") or "no peak for this device"
    return {"flops_per_image": per_image, "achieved_tflops": achieved, "share_of_peak": share}


def full_schedule_flops(setup: BenchSetup, result: dict[str, Any], flops_per_pass: dict[str, int]) -> float:
    """FLOPs per image of the full schedule (DiME: per attempt): the UNet passes of :func:`full_schedule_estimate`
    × FLOPs per pass, plus this run's other networks' FLOPs scaled linearly by full / run steps."""
    full, run = setup.schedule["full"], setup.schedule["run"]
    per_image, schedule = result["flops_per_image"], result["full_schedule"]
    other = sum(v for k, v in per_image.items() if k != "total" and not k.startswith("unet_")) * full / run
    if setup.method == "dime":
        return (schedule["unet_forwards_per_image_per_attempt"] * flops_per_pass["unet_forward"]
                + other / result["attempts_mean"])
    return (schedule["unet_forwards_per_image"] * flops_per_pass["unet_forward"]
            + schedule["unet_backwards_per_image"] * flops_per_pass["unet_backward"] + other)


def device_info(device: torch.device) -> dict[str, Any]:
    """Name, memory and thread count of the device the bench ran on."""
    info: dict[str, Any] = {"type": device.type, "torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count()}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(name=torch.cuda.get_device_name(device), total_memory_bytes=props.total_memory,
                    capability=f"{props.major}.{props.minor}", cuda=torch.version.cuda,
                    cudnn=torch.backends.cudnn.version())
    else:
        name = platform.processor() or platform.machine()
        with contextlib.suppress(OSError):
            for line in Path("/proc/cpuinfo").read_text().splitlines():
                if line.startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                    break
        info["name"] = name
        with contextlib.suppress(OSError, ValueError, IndexError):
            meminfo = Path("/proc/meminfo").read_text().splitlines()
            info["total_memory_bytes"] = int(next(li for li in meminfo if li.startswith("MemTotal")).split()[1]) * 1024
    return info


def git_commit(repo: Path = REPO) -> dict[str, Any]:
    """HEAD of the checkout cfx runs from and whether tracked files differ from it (None outside git)."""
    try:
        head = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True,
                              check=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, check=True, timeout=10).stdout.strip()
        return {"commit": head, "dirty": bool(dirty)}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}


def _check_inputs(setup: BenchSetup, models: dict[str, Any], batch: int, device: torch.device):
    """A batch of noisy inputs at timesteps of the range the method uses (original indices)."""
    diffusion = models["diffusion"]
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 3, setup.image_size, setup.image_size, generator=generator).to(device)
    if setup.method == "dime":
        last = int(setup.config["start_step"])
    else:
        from cfx.methods.ace import respaced_steps

        last = respaced_steps(setup.config, diffusion) - 1
    spaced = torch.linspace(0, min(last, diffusion.num_timesteps - 1), batch).round().long()
    return x, diffusion.timestep_map[spaced].to(device)


def run_bench(method: str, size: str = "mini", *, device: str = "auto", n_images: int | None = None,
              batch_size: int | None = None, options: str = "auto", max_steps: int | None = None,
              checkpoint_steps: str = "none,1", seed: int = 0, out: Path | str = "results/bench",
              progress: bool = True) -> tuple[dict[str, Any], Path]:
    """Benchmark ``method`` at ``size`` and write the JSON (``out``: a directory → ``{method}-{size}-{device}.json``
    in it, or a ``.json`` path). Returns the report and its path."""
    from cfx.runtime.device import select_device

    setup = bench_setup(method, size, max_steps)
    torch_device = select_device(device)
    batch = int(batch_size or setup.batch_size)
    n = int(n_images or batch)
    if n < 1 or batch < 1:
        raise ValueError(f"n_images ({n}) and batch_size ({batch}) must be >= 1")
    batch = min(batch, n)
    variants = parse_variants(options, torch_device)
    ckpt_settings: list[int | None] = [None]
    if method == "ace":
        ckpt_settings = [None if s.strip().lower() == "none" else int(s) for s in checkpoint_steps.split(",")]
    load_at_start = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    models = build_models(setup, torch_device, seed)
    counted = count_pass_flops(setup, models)
    flops_per_pass = counted["flops_per_pass"]
    for name in ("classifier", "perceptual"):
        if name in models:
            models[name] = CountingNet(models[name])
    base = models["unet"]
    peaks: dict[str, dict[str, Any]] = {}
    images = (torch.rand(n, 3, setup.image_size, setup.image_size, generator=torch.Generator().manual_seed(seed))
              * 2 - 1).to(torch_device)
    check_x, check_t = _check_inputs(setup, models, batch, torch_device)
    runs = []
    for parts in variants:
        name = variant_name(parts)
        tolerance = max(TOLERANCES[p] for p in parts)
        entry: dict[str, Any] = {"options": name}
        try:
            variant = build_variant(base, parts)
            entry["equality"] = equality_check(base, variant, check_x, check_t, tolerance, gradient=method == "ace")
        except Exception as error:  # an option the device or this torch cannot run: recorded, not timed
            entry.update(status="skipped", reason=f"{type(error).__name__}: {str(error).splitlines()[0][:300]}")
            runs.append(entry)
            continue
        if not entry["equality"]["passed"]:
            entry.update(status="skipped", reason="outputs differ from fp32 eager beyond the tolerance")
            runs.append(entry)
            continue
        for ckpt in ckpt_settings:
            run_models = {**models, "unet": variant}
            label = f"{method} {name}" + (f" ckpt={ckpt}" if method == "ace" else "")
            result = run_method(setup, run_models, images, batch, seed, ckpt, progress=progress, desc=label)
            precision = variant_precision(parts, torch_device)
            if precision not in peaks:
                peaks[precision] = device_peak(torch_device, precision)
            result.update(throughput(result, flops_per_pass, peaks[precision], counted["flops_counting"]["error"]))
            if flops_per_pass is not None:
                key = "estimated_flops_per_image" + ("_per_attempt" if method == "dime" else "")
                result["full_schedule"][key] = full_schedule_flops(setup, result, flops_per_pass)
            run = {**entry, "status": "ok", **result}
            if method == "ace":
                run["checkpoint_backward_steps"] = ckpt
            runs.append(run)
        del variant
    report = {
        "cfx_bench_version": BENCH_VERSION,
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "method": method,
        "size": size,
        "device": device_info(torch_device),
        "host_load_average_at_start": load_at_start,  # 1/5/15 min: other processes sharing the machine
        "torch_version": torch.__version__,
        "python_version": sys.version.split()[0],
        "git": git_commit(),
        "settings": {**asdict(setup), "n_images": n, "batch_size": batch, "seed": seed,
                     "options": [variant_name(p) for p in variants],
                     "checkpoint_backward_steps": ckpt_settings if method == "ace" else None,
                     "weights": "random (zero-initialised layers re-initialised)", "images": "uniform random"},
        "memory_measure": next((r["memory_measure"] for r in runs if r["status"] == "ok"), None),
        "equality_reference": "fp32 eager UNet (einsum attention), same inputs; max|out - ref| / max|ref|",
        **counted,
        "peaks": peaks,
        "runs": runs,
    }
    path = Path(out)
    if path.suffix != ".json":
        path = path / f"{method}-{size}-{torch_device.type}.json"
    write_json_atomic(path, report)
    return report, path


def summary_lines(report: dict[str, Any]) -> list[str]:
    """One line per run: options, checkpointing, images/s, UNet passes/s, peak memory (or why it was skipped)."""
    lines = [f"{report['method']} {report['size']} on {report['device']['name']} ({report['device']['type']}), "
             f"torch {report['torch_version']}"]
    for run in report["runs"]:
        ckpt = f" ckpt={run['checkpoint_backward_steps']}" if "checkpoint_backward_steps" in run else ""
        if run["status"] != "ok":
            lines.append(f"  {run['options']}{ckpt}: skipped ({run['reason']})")
            continue
        peak, above = run["peak_memory_bytes"] / 2**20, run["peak_memory_above_baseline_bytes"] / 2**20
        lines.append(f"  {run['options']}{ckpt}: {run['images_per_s']:.4g} img/s, {run['seconds_per_image']:.4g} "
                     f"s/img, {run['unet_passes_per_s']:.4g} UNet forwards/s, peak {peak:.0f} MiB (+{above:.0f} MiB "
                     f"over the start), equality err {run['equality']['output_rel_err']:.2g}")
        lines.append("    " + _flops_line(run))
    return lines


def _flops_line(run: dict[str, Any]) -> str:
    share = run["share_of_peak"]
    noise = run["noise"]
    noise = f"noise {noise['seconds_per_image']:.3g} s/img ({100 * noise['share_of_time']:.1f} % of the time)"
    if run["flops_per_image"] is None:
        return f"FLOPs not counted ({share['reason']}); {noise}"
    achieved = run["achieved_tflops"]

    def pct(value: float | None) -> str:
        return "n/a" if value is None else f"{100 * value:.2g} %"

    unet = "n/a" if achieved["unet"] is None else f"{achieved['unet']:.3g}"
    peak = (f"of {share['peak_tflops']:.3g} TFLOP/s {share['precision']} ({share['peak_source'].split(':')[0]})"
            if share["peak_tflops"] else f"(no peak: {share['reason']})")
    return (f"{run['flops_per_image']['total'] / 1e9:.4g} GFLOP/img, {achieved['method']:.3g} TFLOP/s "
            f"({pct(share['method'])}), UNet {unet} TFLOP/s ({pct(share['unet'])}) {peak}; {noise}")
