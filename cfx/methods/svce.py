"""SVCE: Sparse Visual Counterfactual Explanations in Image Space (Boreiko et al., 2022, arXiv 2205.07972).

Faithful to ``valentyn1boreiko/SVCEs_code`` (docs/upstream/ldce_gcd_svce.md §3): a targeted Auto-Frank-Wolfe attack
(``utils/adversarial_attacks/afw.py:AFWAttack``) that maximises the target's log-confidence
log softmax(f(x')/T)[t] over the ℓp ball ∩ [0,1]^d around the input (p = 1.5, radii 50/75/100 at 224²,
75 iterations, step size α = 0.75 halved at APGD checkpoints), started from a random vertex of the feasible set,
returning the best iterate. The linear minimisation oracle :func:`lmo_lp_box` is exact (``afw.py:maxlin``).

Radii are given at a reference resolution (``radii_reference_size``, 224 as upstream) and scaled to the input's
dimension d by ε_d = ε_D·(d/D)^(1/p) (:func:`scale_radius`): a perturbation that changes every coordinate by the
same amount a has ‖δ‖_p = a·d^(1/p), so this keeps the per-pixel size of an edit (equivalently: an image and its
nearest-neighbour upsampling get the same ℓp budget per pixel). At 224² the radii are used as given.

Binary tasks (one query logit z per image, as DiME/ACE's CelebA classifiers): the classifier's two-class logits
are (0, z), so softmax = (1 − σ(z), σ(z)) and the target defaults to 1 − prediction, as DiME's.

Deviations (README.md "Deviations from upstream"): the random start of each (image, radius) comes from the image's
own generator; the LMO runs in float64 and uses exact zeros where upstream clamps x to [1e-22, 1 − 1e-22].
Kept quirk: the first step-size checkpoint compares the first loss with the unwritten last entry of the loss
history (zero), as upstream's ``check_oscillation`` indexing does.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from tqdm import tqdm

from cfx.methods import MethodOutput, check_inputs
from cfx.runtime.seeding import randn_per_image

DEFAULTS: dict[str, Any] = {
    "norm": 1.5,
    "radii": [50.0, 75.0, 100.0],
    "radii_reference_size": 224,
    "eval_radius": None,
    "n_iter": 75,
    "alpha": 0.75,
    "rho": 0.75,
    "fw_momentum": 0.0,
}


def lmo_lp_box(x: torch.Tensor, w: torch.Tensor, eps: float | torch.Tensor, p: float) -> torch.Tensor:
    """The exact maximiser δ of ⟨w, δ⟩ subject to ‖δ‖_p ≤ ε and x + δ ∈ [0,1]^d, per sample (``afw.py:maxlin``).

    ``x`` (in [0,1]) and ``w`` have shape (B, ...); ``eps`` is a number or a (B,) tensor; p ≥ 1. Each coordinate
    moves in the direction of sign(w_i) by at most γ_i (its room to the box). If the box vertex sign(w)⊙γ lies in
    the ball it is the answer. Otherwise, for p > 1 (KKT): δ_i = min(γ_i, (|w_i|/(pλ))^(1/(p−1))) with the
    multiplier λ chosen so that ‖δ‖_p = ε; coordinate i saturates iff λ ≤ μ_i = |w_i|/(p·γ_i^(p−1)), so λ is
    found among the sorted breakpoints μ (O(d log d)). For p = 1 the problem is a fractional knapsack: fill the
    coordinates by decreasing |w_i| until the budget ε is spent."""
    if p < 1:
        raise ValueError(f"the ℓp ball needs p >= 1, got {p}")
    shape, dtype = w.shape, w.dtype
    batch = shape[0]
    xf = x.detach().reshape(batch, -1).double()
    wf = w.detach().reshape(batch, -1).double()
    eps_t = torch.as_tensor(eps, dtype=torch.float64, device=xf.device).reshape(-1)
    if eps_t.numel() == 1:
        eps_t = eps_t.expand(batch)
    if bool((eps_t < 0).any()):
        raise ValueError("the radius eps must be non-negative")
    gamma = torch.where(wf > 0, 1 - xf, torch.where(wf < 0, xf, torch.zeros_like(xf))).clamp_min(0)
    a = torch.where(gamma > 0, wf.abs(), torch.zeros_like(wf))
    if p == 1:
        order = a.argsort(dim=1, descending=True)
        g_sorted = gamma.gather(1, order)
        before = g_sorted.cumsum(1) - g_sorted  # budget used by the coordinates with a larger |w|
        d_sorted = torch.minimum(g_sorted, (eps_t[:, None] - before).clamp_min(0))
        d_sorted = torch.where(a.gather(1, order) > 0, d_sorted, torch.zeros_like(d_sorted))
        delta = torch.zeros_like(gamma).scatter(1, order, d_sorted)
        return (delta * wf.sign()).to(dtype).reshape(shape)
    q = p / (p - 1)  # dual exponent
    eps_p = eps_t ** p
    mu = torch.where(gamma > 0, a / (p * gamma.clamp_min(1e-300) ** (p - 1)), torch.zeros_like(a))
    mu_sorted, order = mu.sort(dim=1)
    g_pow = gamma.gather(1, order) ** p
    a_pow = a.gather(1, order) ** q
    zero = torch.zeros(batch, 1, dtype=torch.float64, device=xf.device)
    # for j = 0..d: coordinates order[:j] are free (δ < γ), order[j:] saturated (δ = γ), at λ = μ_sorted[j−1]
    saturated = torch.cat([g_pow.flip(1).cumsum(1).flip(1), zero], dim=1)  # Σ_{i ≥ j} γ_i^p
    free = torch.cat([zero, a_pow.cumsum(1)], dim=1)  # Σ_{i < j} |w_i|^q
    at_mu = torch.cat([zero, (p * mu_sorted) ** q], dim=1)
    free_norm = torch.where(free > 0, free / at_mu.clamp_min(1e-300), torch.zeros_like(free))
    excess = saturated + free_norm - eps_p[:, None]  # ‖δ(λ = μ_{j−1})‖_p^p − ε^p, non-increasing in j
    outside = excess[:, 0] > 0  # the box vertex lies outside the ball
    j = (torch.searchsorted(-excess.contiguous(), torch.zeros(batch, 1, dtype=torch.float64, device=xf.device),
                            side="left").squeeze(1) - 1).clamp(0, excess.shape[1] - 1)
    rows = torch.arange(batch, device=xf.device)
    # (pλ)^q = Σ_free |w|^q / (ε^p − Σ_saturated γ^p); δ_i = |w_i|^(1/(p−1)) / ((pλ)^q)^(1/p)
    scale = free[rows, j] / (eps_p - saturated[rows, j]).clamp_min(1e-300)
    free_delta = a ** (1 / (p - 1)) / scale.clamp_min(1e-300)[:, None] ** (1 / p)
    delta = torch.where(outside[:, None], torch.minimum(gamma, free_delta), gamma)
    return (delta * wf.sign()).to(dtype).reshape(shape)


def scale_radius(radius: float, dim: int, p: float, reference_size: int | None = 224, channels: int = 3) -> float:
    """ε_d = ε_D·(d/D)^(1/p) with D = channels·reference_size² (the same per-pixel change at every resolution);
    ``reference_size`` None: the radius as given."""
    if not reference_size:
        return float(radius)
    reference_dim = channels * int(reference_size) ** 2
    return float(radius) * (dim / reference_dim) ** (1.0 / p)


def log_confidence(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log softmax(logits)[target] per sample, the targeted ``log_conf`` loss (``utils.py:log_confidence_loss``;
    AFW maximises it)."""
    return F.log_softmax(logits, dim=1).gather(1, targets.long().view(-1, 1)).squeeze(1)


def two_class_logits(logit: torch.Tensor) -> torch.Tensor:
    """(B,) or (B, 1) binary logits z → (B, 2) logits (0, z): softmax = (1 − σ(z), σ(z)). (B, K) passes through."""
    if logit.dim() == 2 and logit.shape[1] == 1:
        logit = logit[:, 0]
    if logit.dim() == 1:
        return torch.stack([torch.zeros_like(logit), logit], dim=1)
    if logit.dim() != 2:
        raise ValueError(f"the classifier must return (B,) binary or (B, K) logits, got shape {tuple(logit.shape)}")
    return logit


@dataclass
class AFWResult:
    """What :func:`afw` returns (per sample unless noted)."""

    x_best: torch.Tensor  # the best-loss iterate
    loss_best: torch.Tensor  # its loss
    x_init: torch.Tensor  # the random start (a vertex of the feasible set, clipped to the box)
    trace: torch.Tensor  # (n_iter + 1, B): best loss after the start and after each iteration
    step_size: torch.Tensor  # the final step size η
    halvings: torch.Tensor  # how often η was halved


def _loss_and_grad(loss_fn: Callable[[torch.Tensor], torch.Tensor],
                   x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.enable_grad():
        x_in = x.detach().requires_grad_(True)
        loss = loss_fn(x_in)
        grad = torch.autograd.grad(loss.sum(), x_in)[0]
    return loss.detach(), grad.detach()


def afw(loss_fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, eps: float | torch.Tensor,
        start_direction: torch.Tensor, *, p: float = 1.5, n_iter: int = 75, alpha: float = 0.75, rho: float = 0.75,
        fw_momentum: float = 0.0, progress: bool = False) -> AFWResult:
    """Auto-Frank-Wolfe maximisation of the per-sample ``loss_fn`` over {x' : ‖x' − x‖_p ≤ ε, x' ∈ [0,1]^d}
    (``afw.py:AFWAttack.attack_single_run``, one restart, no EOT).

    Start x'₀ = clip(x + LMO(``start_direction``)) (upstream: a standard normal direction). Step k:
    m = ∇ (momentum ``fw_momentum``, 0 upstream), v = x + LMO(m), x' ← x' + η(v − x'), η per sample from α. APGD
    schedule: checkpoints after k_c = max(⌊0.22·n⌋, 1) steps, then every k_c ← max(k_c − max(⌊0.03·n⌋, 1),
    max(⌊0.06·n⌋, 1)) steps; at a checkpoint η halves and the iterate and gradient restart from the best point for
    the samples whose loss rose in at most ρ·k_c of the last k_c steps, or whose best loss did not improve since
    the previous checkpoint at which they were not halved."""
    batch = x.shape[0]
    x = x.detach()
    view = (batch,) + (1,) * (x.dim() - 1)
    n_iter_2, n_iter_min, size_decr = max(int(0.22 * n_iter), 1), max(int(0.06 * n_iter), 1), max(int(0.03 * n_iter), 1)
    x_adv = (x + lmo_lp_box(x, start_direction, eps, p)).clamp(0, 1)
    x_init = x_adv.clone()
    loss, grad = _loss_and_grad(loss_fn, x_adv)
    x_best, grad_best, loss_best = x_adv.clone(), grad.clone(), loss.clone()
    step = torch.full((batch,), float(alpha), device=x.device, dtype=x.dtype)
    halvings = torch.zeros(batch, dtype=torch.long, device=x.device)
    loss_steps = torch.zeros(n_iter, batch, device=x.device, dtype=loss.dtype)
    loss_best_last_check = loss_best.clone()
    reduced_last_check = torch.ones(batch, dtype=torch.bool, device=x.device)
    trace = [loss_best.clone()]
    k, counter = n_iter_2, 0
    momentum = grad
    for i in tqdm(range(n_iter), desc="AFW", leave=False, disable=not progress):
        momentum = grad if i == 0 else fw_momentum * momentum + (1 - fw_momentum) * grad
        v = x + lmo_lp_box(x, momentum, eps, p)
        x_adv = x_adv + step.view(view) * (v - x_adv)
        loss, grad = _loss_and_grad(loss_fn, x_adv)
        loss_steps[i] = loss
        better = loss > loss_best
        x_best[better], grad_best[better], loss_best[better] = x_adv[better], grad[better], loss[better]
        trace.append(loss_best.clone())
        counter += 1
        if counter == k:
            # rises of the loss in the last k steps; at the first checkpoint i − c − 1 reaches −1, which indexes the
            # unwritten (zero) last row, as upstream's check_oscillation does
            rises = sum((loss_steps[i - c] > loss_steps[i - c - 1]).long() for c in range(k))
            reduce = (rises <= k * rho) | (~reduced_last_check & (loss_best_last_check >= loss_best))
            reduced_last_check, loss_best_last_check = reduce.clone(), loss_best.clone()
            if bool(reduce.any()):
                step[reduce] /= 2
                halvings[reduce] += 1
                x_adv[reduce], grad[reduce] = x_best[reduce], grad_best[reduce]
            k, counter = max(k - size_decr, n_iter_min), 0
    return AFWResult(x_best=x_best, loss_best=loss_best, x_init=x_init, trace=torch.stack(trace), step_size=step,
                     halvings=halvings)


def eval_radius(config: dict[str, Any]) -> float:
    """The radius written to ``Results/svce`` (tables, metrics): ``eval_radius`` or the largest of ``radii``."""
    radii = [float(r) for r in config["radii"]]
    if not radii:
        raise ValueError("SVCE config radii is empty; upstream uses [50, 75, 100] (ℓ1.5 at 224²)")
    chosen = config.get("eval_radius")
    chosen = max(radii) if chosen is None else float(chosen)
    if chosen not in radii:
        raise ValueError(f"SVCE eval_radius {chosen:g} is not one of the radii {radii}")
    return chosen


def radius_name(radius: float) -> str:
    """Sub-folder of ``Results/svce`` holding the counterfactuals of one radius (``radius_50``)."""
    return f"radius_{float(radius):g}"


def variant_names(config: dict[str, Any]) -> list[str]:
    """Extra result folders this configuration writes next to the evaluated one: the other radii."""
    cfg = {**DEFAULTS, **config}
    chosen = eval_radius(cfg)
    return [radius_name(r) for r in cfg["radii"] if float(r) != chosen]


@torch.no_grad()
def generate(images: torch.Tensor, labels: torch.Tensor, *, models: dict[str, Any], config: dict[str, Any],
             generators: list[torch.Generator], targets: torch.Tensor | None = None,
             progress: bool = False) -> MethodOutput:
    """SVCEs for a batch of [−1,1] images: one AFW run per (image, radius) towards the image's target
    (``utils/visual_counterfactual_generation.py:_inner_generation`` for one target slot).

    ``models``: ``classifier`` ([−1,1] images → (B,) binary or (B, K) logits, temperature already applied), or
    ``classifier01`` taking [0,1] images (the Madry + FT loader's input). Targets: required for K-class models;
    binary: 1 − prediction. The returned counterfactuals are those of the evaluated radius (:func:`eval_radius`);
    ``variants`` holds the other radii (:func:`variant_names`); ``noise`` is the random start. ``info[k]``:
    ``radius`` (at the reference size), ``eps`` (the ℓp radius at this size), ``l_p`` = ‖x' − x‖_p, ``p_target``
    and ``p_target_original`` (target confidence after / before), ``bkl`` = 1 − p_target, ``loss`` (best target
    log-confidence), ``halvings``, ``flipped``."""
    cfg = check_inputs("SVCE", config, DEFAULTS, images, generators)
    p = float(cfg["norm"])
    chosen = eval_radius(cfg)
    if "classifier01" in models:
        classifier01 = models["classifier01"]
    else:
        classifier = models["classifier"]

        def classifier01(x01: torch.Tensor) -> torch.Tensor:
            return classifier(2 * x01 - 1)

    def logits_of(x01: torch.Tensor) -> torch.Tensor:
        return two_class_logits(classifier01(x01))

    x = ((images + 1) / 2).clamp(0, 1)
    logits = logits_of(x)
    preds = logits.argmax(1)
    if targets is None:
        if logits.shape[1] != 2:
            raise ValueError(f"SVCE with a {logits.shape[1]}-class classifier needs explicit targets")
        targets = 1 - preds
    targets = targets.to(images.device).long()
    p_original = logits.softmax(1).gather(1, targets.view(-1, 1)).squeeze(1)
    dim = x[0].numel()
    outputs: dict[float, MethodOutput] = {}
    for radius in [float(r) for r in cfg["radii"]]:
        eps = scale_radius(radius, dim, p, cfg["radii_reference_size"], channels=x.shape[1])
        direction = randn_per_image(generators, tuple(x.shape[1:]), x.device, x.dtype)
        result = afw(lambda z: log_confidence(logits_of(z), targets), x, eps, direction, p=p,
                     n_iter=int(cfg["n_iter"]), alpha=float(cfg["alpha"]), rho=float(cfg["rho"]),
                     fw_momentum=float(cfg["fw_momentum"]), progress=progress)
        cf = result.x_best
        cf_logits = logits_of(cf)
        cf_preds = cf_logits.argmax(1)
        p_target = cf_logits.softmax(1).gather(1, targets.view(-1, 1)).squeeze(1)
        l_p = (cf - x).flatten(1).norm(p=p, dim=1)
        info = [{"radius": radius, "eps": eps, "l_p": float(l_p[b]), "p_target": float(p_target[b]),
                 "p_target_original": float(p_original[b]), "bkl": 1.0 - float(p_target[b]),
                 "loss": float(result.loss_best[b]), "halvings": int(result.halvings[b]),
                 "flipped": bool(cf_preds[b] == targets[b])} for b in range(x.shape[0])]
        outputs[radius] = MethodOutput(counterfactuals=2 * cf - 1, noise=2 * result.x_init - 1, preds=preds,
                                       targets=targets, cf_preds=cf_preds, info=info)
    main = outputs.pop(chosen)
    main.variants = {radius_name(r): out for r, out in outputs.items()}
    return main
