"""ACE: Adversarial Counterfactual Explanations (Jeanneret et al., CVPR 2023).

Faithful to ``guillaumejs2403/ACE`` ``main.py`` and ``core/attacks_and_models.py``
(docs/upstream/dime_ace.md §2): a PGD attack on ``x ∈ [0,1]`` against ``C(F_τ(x'))``, where the filter ``F_τ``
noises ``2x−1`` to respaced index K−1 and denoises K steps (stochastically, fresh noise at every evaluation); the
classification loss is averaged over the batch while the l1 distance is summed, so results depend on the
batch size as upstream's do: each image's classifier gradient carries a factor 1/B, so a batch of B weighs the l1
term B times more (a partial last batch, or a retry with half the batch, included). ``batch_reference: R`` (not
upstream) sums the classification loss over the batch and divides it by R instead: every image then gets exactly
the gradient it has in a full batch of R, whatever the batch holds, so large batches give the results of batch R.
The pre-explanation is then post-processed (:func:`postprocess`): a mask from
the normalised, dilated ``|x − PE|``, RePaint-style replacement of the kept region at every step, and a final
paste of the original.

Deviations: every random draw comes from the image's own generator; gradient checkpointing recomputes each
chunk from the stored state at its start, so the gradient equals the plain one for any chunking (upstream
recomputes from stale states with three or more chunks); a pre-explanation equal to the input gives an empty
mask (the explanation is the input) instead of upstream's NaN mask that regenerates the whole image.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from tqdm import tqdm

from cfx.methods import MethodOutput, check_inputs
from cfx.runtime.seeding import randn_per_image

DEFAULTS: dict[str, Any] = {
    "attack_method": "PGD",
    "attack_iterations": 50,
    "attack_epsilon": 255.0,
    "attack_step": 1.0,
    "attack_joint": True,
    "dist_l1": 0.0,
    "dist_l2": 0.0,
    "dist_schedule": "none",
    "sampling_time_fraction": 0.1,
    "sampling_stochastic": True,
    "sampling_inpaint": 0.15,
    "sampling_dilation": 15,
    "checkpoint_backward_steps": None,
    "multiclass": False,
    # None: upstream's batch mean; R: Σ over the batch / R, the gradient of a batch of R for every image (PGD, GD)
    "batch_reference": None,
}
ATTACKS = ("PGD", "GD", "CW")


def respaced_steps(config: dict[str, Any], diffusion) -> int:
    """K = round(sampling_time_fraction · respaced steps) (upstream uses int(), which can truncate)."""
    k = int(round(float(config["sampling_time_fraction"]) * diffusion.num_timesteps))
    if not 1 <= k <= diffusion.num_timesteps:
        raise ValueError(f"sampling_time_fraction gives K = {k} steps, outside 1..{diffusion.num_timesteps}")
    return k


def _timesteps(value: int, batch: int, device: torch.device) -> torch.Tensor:
    return torch.full((batch,), value, device=device, dtype=torch.long)


def filter_steps(unet, diffusion, k: int, noise: torch.Tensor, stochastic: bool) -> list[Callable]:
    """The K steps of F_τ as functions state → state: the first maps x ∈ [0,1] to z after q_sample at K−1 and
    one denoising step; each later one is a denoising step. ``noise`` is (B, K+1, C, H, W): index 0 for
    q_sample, index j for the j-th denoising step (ACE ``JointClassifierDDPM.forward``)."""

    def denoise(z: torch.Tensor, j: int) -> torch.Tensor:
        t = k - 1 - j
        out = diffusion.p_mean_variance(unet, z, _timesteps(t, z.shape[0], z.device), clip_denoised=True)
        z = out["mean"]
        if stochastic and t > 0:
            z = z + torch.exp(0.5 * out["log_variance"]) * noise[:, j + 1]
        return z

    def first(x01: torch.Tensor) -> torch.Tensor:
        z = 2 * x01 - 1
        eps = noise[:, 0] if stochastic else torch.zeros_like(z)
        z = diffusion.q_sample(z, _timesteps(k - 1, z.shape[0], z.device), noise=eps)
        return denoise(z, 0)

    return [first] + [lambda z, j=j: denoise(z, j) for j in range(1, k)]


def classification_loss(logits: torch.Tensor, targets: torch.Tensor, multiclass: bool,
                        batch_reference: int | None = None) -> torch.Tensor:
    """Upstream's criterion: BCEWithLogits (binary) or CrossEntropy (multiclass), mean over the batch
    (``core/attacks_and_models.py``, docs/upstream/dime_ace.md §2.3); with ``batch_reference`` R the sum over the batch
    divided by R, so each image's gradient is the one it has in a batch of R whatever the batch size."""
    reduction = "mean" if batch_reference is None else "sum"
    if multiclass:
        loss = F.cross_entropy(logits, targets.long(), reduction=reduction)
    else:
        loss = F.binary_cross_entropy_with_logits(logits, targets.to(logits.dtype), reduction=reduction)
    if batch_reference is None:
        return loss
    if int(batch_reference) < 1:
        raise ValueError(f"ACE batch_reference must be a positive batch size or null, got {batch_reference!r}")
    return loss / int(batch_reference)


def chained_gradient(functions: list[Callable], x: torch.Tensor,
                     backward_steps: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradient of the scalar ``functions[-1](…functions[0](x))`` w.r.t. x, and that scalar.

    With ``backward_steps`` b, the chain is cut from the end into chunks of b functions; a no-grad pass stores
    the state at the start of every chunk, then each chunk is recomputed with autograd from its own stored
    state and back-propagated with the gradient of the chunk after it. Peak memory holds one chunk's graph,
    and the gradient equals the plain one for every chunking (ACE ``attack_checkpoint_backward_steps``)."""
    n = len(functions)
    if backward_steps is None or backward_steps >= n:
        with torch.enable_grad():
            x_in = x.detach().requires_grad_(True)
            state = x_in
            for fn in functions:
                state = fn(state)
            return torch.autograd.grad(state, x_in)[0], state.detach()
    if backward_steps < 1:
        raise ValueError(f"checkpoint_backward_steps must be >= 1, got {backward_steps}")
    starts = list(range(n - backward_steps, 0, -backward_steps))[::-1]
    starts = [0] + starts
    bounds = list(zip(starts, [*starts[1:], n], strict=True))
    stored = {}
    with torch.no_grad():
        state = x.detach()
        for index, fn in enumerate(functions[:-1]):
            if index in starts:
                stored[index] = state
            state = fn(state)
        if n - 1 in starts:
            stored[n - 1] = state
    grad_out, loss = None, None
    for start, stop in reversed(bounds):
        with torch.enable_grad():
            chunk_in = stored[start].detach().requires_grad_(True)
            state = chunk_in
            for fn in functions[start:stop]:
                state = fn(state)
            if grad_out is None:
                loss = state.detach()
                grad_out = torch.autograd.grad(state, chunk_in)[0]
            else:
                grad_out = torch.autograd.grad(state, chunk_in, grad_outputs=grad_out)[0]
    return grad_out, loss


def distance_gradient(x: torch.Tensor, x_adv: torch.Tensor, dist_l1: float, dist_l2: float) -> torch.Tensor:
    """∇_{x'} [dist_l2 · Σ_b ‖x − x'‖₂ + dist_l1 · Σ |x − x'|] (ACE ``get_dist_fn``; sign(0) = 0 as torch.abs)."""
    if not dist_l1 and not dist_l2:
        return torch.zeros_like(x_adv)
    with torch.enable_grad():
        x_in = x_adv.detach().requires_grad_(True)
        diff = (x - x_in).flatten(1)
        loss = dist_l1 * diff.abs().sum() + dist_l2 * diff.norm(p=2, dim=1).sum()
        return torch.autograd.grad(loss, x_in)[0]


def _schedule_weight(schedule: str, i: int, n: int) -> float:
    if schedule == "none":
        return 1.0
    if schedule == "step":
        return 0.0 if i <= n / 2 else 1.0
    if schedule == "linear":
        return (i + 1) / n
    raise ValueError(f"unknown dist_schedule '{schedule}' (none, step, linear)")


def attack(images01: torch.Tensor, targets: torch.Tensor, *, unet, diffusion, classifier01, config: dict[str, Any],
           generators: list[torch.Generator], progress: bool = False) -> torch.Tensor:
    """The pre-explanation: a targeted PGD / GD / CW attack on ``C(F_τ(x'))`` from x' = x (no random start)."""
    cfg = {**DEFAULTS, **config}
    method = cfg["attack_method"]
    if method not in ATTACKS:
        raise ValueError(f"attack_method must be one of {ATTACKS}, got '{method}'")
    k = respaced_steps(cfg, diffusion)
    eps, step = float(cfg["attack_epsilon"]) / 255, float(cfg["attack_step"]) / 255
    n_iter = int(cfg["attack_iterations"])
    shape = (k + 1, *images01.shape[1:])
    x = images01.detach()

    def loss_fn(z: torch.Tensor) -> torch.Tensor:
        logits = classifier01((z + 1) / 2) if cfg["attack_joint"] else classifier01(z)
        if method == "CW":
            return cw_loss(logits, targets, bool(cfg["multiclass"]))
        return classification_loss(logits, targets, bool(cfg["multiclass"]), cfg["batch_reference"])

    def gradient(x_adv: torch.Tensor) -> torch.Tensor:
        if cfg["attack_joint"]:
            noise = randn_per_image(generators, shape, x.device, x.dtype)
            fns = filter_steps(unet, diffusion, k, noise, bool(cfg["sampling_stochastic"])) + [loss_fn]
        else:
            fns = [loss_fn]
        grad, _ = chained_gradient(fns, x_adv, cfg["checkpoint_backward_steps"])
        return grad

    c = 1e-5
    if method == "CW":
        w = torch.atanh((2 * x / (1 + c) - 1).clamp(-1 + 1e-6, 1 - 1e-6))
    x_adv = x.clone()
    for i in tqdm(range(n_iter), desc=f"ACE {method}", leave=False, disable=not progress):
        g = gradient(x_adv) + _schedule_weight(cfg["dist_schedule"], i, n_iter) * distance_gradient(
            x, x_adv, float(cfg["dist_l1"]), float(cfg["dist_l2"]))
        if method == "CW":
            w = (w - step * g * (c + 0.5) * (1 - torch.tanh(w) ** 2)).clamp(-3, 3)
            x_adv = (torch.tanh(w) + 1) * (c + 0.5)
            continue
        x_adv = x_adv - step * (g.sign() if method == "PGD" else g)
        x_adv = torch.min(torch.max(x_adv, x - eps), x + eps).clamp(0, 1)
    return x_adv.detach()


def cw_loss(logits: torch.Tensor, targets: torch.Tensor, multiclass: bool) -> torch.Tensor:
    """Carlini–Wagner margin (ACE ``Attack`` CW): binary Σ relu(−2·logit·(±1));
    multiclass Σ relu(max_{c≠t} z_c − z_t)."""
    if multiclass:
        target_logit = logits.gather(1, targets.long().view(-1, 1)).squeeze(1)
        others = logits.clone()
        others.scatter_(1, targets.long().view(-1, 1), float("-inf"))
        return F.relu(others.max(dim=1).values - target_logit).sum()
    signs = 2 * targets.to(logits.dtype) - 1
    return F.relu(-2 * logits * signs).sum()


def generate_mask(x: torch.Tensor, pe: torch.Tensor, dilation: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``m = Σ_c|x − pe| / max_{h,w}``, dilated by a ``dilation``² max-pool (ACE ``core/utils.py:generate_mask``).
    An image with pe == x gets an all-zero mask (upstream divides by zero)."""
    if dilation % 2 != 1:
        raise ValueError(f"sampling_dilation must be odd, got {dilation}")
    m = (x - pe).abs().sum(dim=1, keepdim=True)
    peak = m.amax(dim=(2, 3), keepdim=True)
    m = torch.where(peak > 0, m / peak.clamp_min(1e-12), torch.zeros_like(m))
    dilated = F.max_pool2d(m, dilation, stride=1, padding=(dilation - 1) // 2)
    return m, dilated


@torch.no_grad()
def postprocess(images01: torch.Tensor, pe01: torch.Tensor, *, unet, diffusion, config: dict[str, Any],
                generators: list[torch.Generator]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The explanation from a pre-explanation (ACE ``main.py:filter_fn``): returns (explanation in [0,1], the
    noised PE at K−1 in [−1,1], the keep mask: 1 = original pixel kept)."""
    cfg = {**DEFAULTS, **config}
    k = respaced_steps(cfg, diffusion)
    threshold = float(cfg["sampling_inpaint"])
    _, dilated = generate_mask(images01, pe01, int(cfg["sampling_dilation"]))
    keep = (dilated < threshold).to(images01.dtype)
    stochastic = bool(cfg["sampling_stochastic"])
    shape = tuple(images01.shape[1:])
    ce, orig = 2 * pe01 - 1, 2 * images01 - 1

    def noise() -> torch.Tensor:
        # upstream filter_fn: noise_fn = randn_like if stochastic else zeros_like, for the start and the kept region
        if stochastic:
            return randn_per_image(generators, shape, ce.device, ce.dtype)
        return torch.zeros_like(ce)

    noise_image = None
    for idx, t in enumerate(range(k - 1, -1, -1)):
        ts = _timesteps(t, ce.shape[0], ce.device)
        if idx == 0:
            ce = diffusion.q_sample(ce, ts, noise=noise())
            noise_image = ce.clone()
        if threshold != 0:
            ce = ce * (1 - keep) + keep * diffusion.q_sample(orig, ts, noise=noise())
        out = diffusion.p_mean_variance(unet, ce, ts, clip_denoised=True)
        ce = out["mean"]
        if stochastic and t > 0:
            ce = ce + torch.exp(0.5 * out["log_variance"]) * randn_per_image(generators, shape, ce.device, ce.dtype)
    ce = ce * (1 - keep) + keep * orig
    return ((ce + 1) / 2).clamp(0, 1), noise_image, keep


@torch.no_grad()
def generate(images: torch.Tensor, labels: torch.Tensor, *, models: dict[str, Any], config: dict[str, Any],
             generators: list[torch.Generator], targets: torch.Tensor | None = None,
             progress: bool = False) -> MethodOutput:
    """ACE pre-explanations for a batch of [−1,1] images (target = 1 − prediction for binary tasks).

    ``counterfactuals`` are the pre-explanations in [−1,1]; :func:`postprocess` turns them into explanations
    (a separate workflow rule, so its parameters can change without re-running the attack)."""
    cfg = check_inputs("ACE", config, DEFAULTS, images, generators)
    classifier = models["classifier"]

    def classifier01(x01: torch.Tensor) -> torch.Tensor:
        return classifier(2 * x01 - 1)

    images01 = (images + 1) / 2
    logits = classifier(images)
    # upstream decides by dataset (BINARYDATASET); here by the classifier's output: (B,) binary, (B, K) classes
    multiclass = cfg["multiclass"] = bool(cfg["multiclass"]) or logits.ndim == 2
    preds = logits.argmax(1) if multiclass else (logits > 0).long()
    if targets is None:
        if multiclass:
            raise ValueError("multiclass ACE needs explicit targets")
        targets = 1 - preds
    pe01 = attack(images01, targets, unet=models["unet"], diffusion=models["diffusion"], classifier01=classifier01,
                  config=cfg, generators=generators, progress=progress)
    cf_logits = classifier01(pe01)
    cf_preds = cf_logits.argmax(1) if multiclass else (cf_logits > 0).long()
    l1 = (pe01 - images01).abs().flatten(1).mean(1)
    linf = (pe01 - images01).abs().flatten(1).amax(1)
    info = [{"l_1": float(l1[b]), "l_inf": float(linf[b])} for b in range(images.shape[0])]
    # the Noise image of the tree: the pre-explanation noised to K−1, as the post-processing starts from it
    k = respaced_steps(cfg, models["diffusion"])
    noise = models["diffusion"].q_sample(2 * pe01 - 1, _timesteps(k - 1, images.shape[0], images.device),
                                         noise=randn_per_image(generators, tuple(images.shape[1:]), images.device))
    return MethodOutput(counterfactuals=2 * pe01 - 1, noise=noise, preds=preds,
                        targets=targets.long(), cf_preds=cf_preds, info=info)
