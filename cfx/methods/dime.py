"""DiME: Diffusion Models for Counterfactual Explanations (Jeanneret et al., ACCV 2022).

Faithful to ``guillaumejs2403/DiME`` ``main.py`` and ``core/sample_utils.py:get_DiME_iterative_sampling``
(reference/dime_ace.md §1.2–1.4): z_τ = q_sample(x, τ) on the respaced schedule; outer steps i = τ−1 … 0
(note the one-step offset: noise at τ, first denoising call at τ−1); at each step the mean is guided by
``μ ← μ − Σ ⊙ g`` with g = the classifier gradient on the clean estimate x_t ÷ √ᾱ_i, the l1 gradient on the
noisy z_t against x (not rescaled), and the perceptual gradient on x_t ÷ √ᾱ_i; x_t is refreshed by an
unguided stochastic DDPM run from z to 0. Unflipped images are retried with the next classifier scale from
the same z_τ. Deviation: every random draw comes from the image's own generator (per-image seeding).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from tqdm import tqdm

from cfx.methods import MethodOutput, check_inputs
from cfx.runtime.seeding import randn_per_image

DEFAULTS: dict[str, Any] = {
    "start_step": 60,
    "classifier_scales": [8.0, 10.0, 15.0],
    "use_logits": True,
    "l1_loss": 0.05,
    "l2_loss": 0.0,
    "l_perc": 30.0,
    "l_perc_layer": 18,
    "use_sampling_on_x_t": True,
    "guided_iterations": 9999999,
}


def classifier_gradient(x_t: torch.Tensor, targets: torch.Tensor, classifier, scale: float,
                        use_logits: bool) -> torch.Tensor:
    """∇ of ``s·Σ_b L`` w.r.t. x_t with ℓ = y·logit − (1−y)·logit, L = −ℓ (logits) or −log σ(ℓ)
    (``clean_class_cond_fn``)."""
    with torch.enable_grad():
        x_in = x_t.detach().requires_grad_(True)
        logits = classifier(x_in)
        y = targets.to(logits.dtype)
        selected = y * logits - (1 - y) * logits
        loss = -selected if use_logits else -F.logsigmoid(selected)
        return torch.autograd.grad((loss * scale).sum(), x_in)[0]


def distance_gradient(z_t: torch.Tensor, x_t: torch.Tensor, x: torch.Tensor, alpha_t: torch.Tensor,
                      config: dict[str, Any], perceptual=None) -> torch.Tensor | float:
    """``dist_cond_fn``: ∇_z [λ₁ Σ‖z−x‖₁,c + λ₂ Σ‖z−x‖₂,c] + ∇_{x_t}[λ_p Σ_b mean (φ(x_t)−φ(x))²] / √ᾱ
    (norms over the channel dimension, summed over pixels and batch)."""
    l1, l2, lp = float(config["l1_loss"]), float(config["l2_loss"]), float(config["l_perc"])
    grads: torch.Tensor | float = 0.0
    with torch.enable_grad():
        if l1 or l2:
            z_in = z_t.detach().requires_grad_(True)
            loss = 0.0
            if l1:
                loss = loss + l1 * torch.norm(z_in - x, p=1, dim=1).sum()
            if l2:
                loss = loss + l2 * torch.norm(z_in - x, p=2, dim=1).sum()
            grads = torch.autograd.grad(loss, z_in)[0]
        if lp:
            x_in = x_t.detach().requires_grad_(True)
            batch = x_in.shape[0]
            diff = F.mse_loss(perceptual(x_in).reshape(batch, -1), perceptual(x).reshape(batch, -1),
                              reduction="none").mean(dim=1)
            grads = grads + torch.autograd.grad(lp * diff.sum(), x_in)[0] / alpha_t
    return grads


@torch.no_grad()
def _denoise(unet, diffusion, z: torch.Tensor, steps: int, sampling: bool, generators) -> torch.Tensor:
    """Unguided DDPM from respaced index ``steps−1`` to 0 (the nested x_t refresh)."""
    shape = tuple(z.shape[1:])
    for i in reversed(range(steps)):
        t = torch.full((z.shape[0],), i, device=z.device, dtype=torch.long)
        out = diffusion.p_mean_variance(unet, z, t, clip_denoised=True)
        if sampling:
            noise = randn_per_image(generators, shape, z.device, out["mean"].dtype)
            z = out["mean"] + float(i != 0) * torch.exp(0.5 * out["log_variance"]) * noise
        else:
            z = out["mean"]
    return z


@torch.no_grad()
def dime_sample(unet, diffusion, images: torch.Tensor, z_tau: torch.Tensor, targets: torch.Tensor, classifier,
                scale: float, config: dict[str, Any], generators, perceptual=None,
                progress: bool = False) -> torch.Tensor:
    """One DiME attempt at classifier scale ``scale`` from z_τ; returns the counterfactual (the final z)."""
    tau = int(config["start_step"])
    shape = tuple(images.shape[1:])
    x_t, z_t = images.clone(), z_tau
    guided_iterations = int(config["guided_iterations"])
    for jdx, i in enumerate(tqdm(list(reversed(range(tau))), desc=f"DiME s={scale:g}", leave=False,
                                 disable=not progress)):
        t = torch.full((images.shape[0],), i, device=images.device, dtype=torch.long)
        out = diffusion.p_mean_variance(unet, z_t, t, clip_denoised=True)
        alpha_t = float(diffusion.sqrt_alphas_cumprod[i])
        grads: torch.Tensor | float = 0.0
        if guided_iterations > jdx:
            grads = classifier_gradient(x_t, targets, classifier, scale, bool(config["use_logits"])) / alpha_t
            grads = grads + distance_gradient(z_t, x_t, images, alpha_t, config, perceptual)
        mean = out["mean"].float() - out["variance"] * grads
        noise = randn_per_image(generators, shape, images.device, mean.dtype)
        z_t = mean + float(i != 0) * torch.exp(0.5 * out["log_variance"]) * noise
        if tau - (jdx + 1) > 0 and guided_iterations > jdx:
            x_t = _denoise(unet, diffusion, z_t, tau - (jdx + 1), bool(config["use_sampling_on_x_t"]), generators)
    return z_t


@torch.no_grad()
def generate(images: torch.Tensor, labels: torch.Tensor, *, models: dict[str, Any], config: dict[str, Any],
             generators: list[torch.Generator], targets: torch.Tensor | None = None,
             progress: bool = False) -> MethodOutput:
    """DiME counterfactuals for a batch of [−1,1] images of a binary task (target = 1 − prediction)."""
    cfg = check_inputs("DiME", config, DEFAULTS, images, generators)
    unet, diffusion, classifier = models["unet"], models["diffusion"], models["classifier"]
    perceptual = models.get("perceptual")
    if float(cfg["l_perc"]) > 0 and perceptual is None:
        raise ValueError("DiME config l_perc > 0 needs models['perceptual'] (VGG-19 features); set l_perc: 0 to "
                         "turn the perceptual term off")
    tau = int(cfg["start_step"])
    if not 0 < tau < diffusion.num_timesteps:
        raise ValueError(f"start_step {tau} must lie in 1..{diffusion.num_timesteps - 1} of the respaced schedule")
    batch = images.shape[0]
    preds = (classifier(images) > 0).long()
    targets = (1 - preds) if targets is None else targets.long()
    t_tau = torch.full((batch,), tau, device=images.device, dtype=torch.long)
    z_tau = diffusion.q_sample(images, t_tau, noise=randn_per_image(generators, tuple(images.shape[1:]),
                                                                     images.device, images.dtype))
    cf = z_tau.clone()
    transformed = torch.zeros(batch, dtype=torch.bool, device=images.device)
    scale_used = [None] * batch
    for scale in [float(s) for s in cfg["classifier_scales"]]:
        todo = (~transformed).nonzero().flatten()
        sub_generators = [generators[int(k)] for k in todo]
        cfs = dime_sample(unet, diffusion, images[todo], z_tau[todo], targets[todo], classifier, scale, cfg,
                          sub_generators, perceptual, progress)
        cf[todo] = cfs
        for k in todo.tolist():
            scale_used[k] = scale
        transformed[todo] = (classifier(cfs) > 0).long() == targets[todo]
        if bool(transformed.all()):
            break
    logits_cf = classifier(cf)
    cf_preds = (logits_cf > 0).long()
    p_one = torch.sigmoid(logits_cf)
    p_target = torch.where(targets == 1, p_one, 1 - p_one)
    info = [{"bkl": float(1 - p_target[k]), "classifier_scale": scale_used[k]} for k in range(batch)]
    return MethodOutput(counterfactuals=cf, noise=z_tau, preds=preds, targets=targets, cf_preds=cf_preds, info=info)
