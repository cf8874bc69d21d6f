"""DiME: Diffusion Models for Counterfactual Explanations (Jeanneret et al., ACCV 2022).

Faithful to ``guillaumejs2403/DiME`` ``main.py`` and ``core/sample_utils.py:get_DiME_iterative_sampling``
(docs/upstream/dime_ace.md §1.2–1.4): z_τ = q_sample(x, τ) on the respaced schedule; outer steps i = τ−1 … 0
(note the one-step offset: noise at τ, first denoising call at τ−1); at each step the mean is guided by
``μ ← μ − Σ ⊙ g`` with g = the classifier gradient on the clean estimate x_t ÷ √ᾱ_i, the l1 gradient on the
noisy z_t against x (not rescaled), and the perceptual gradient on x_t ÷ √ᾱ_i; x_t is refreshed by an
unguided stochastic DDPM run from z to 0. Unflipped images are retried with the next classifier scale from
the same z_τ (an image's generator continues across its attempts, as upstream's global stream does).

Deviation (README.md "Deviations from upstream"): every random draw — the q_sample noise and the noise of every
outer and nested step — comes from the image's own generator (``cfx.runtime.seeding``), so an image's CF does not
depend on the batch, the batch size or the chunking; the draws that upstream multiplies by 0 (step i = 0) are
not made. Everything else, including the τ offset, is as upstream.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from tqdm import tqdm

from cfx.io.images import to_uint8, uint8_l1
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
    """∇_{x_t} of ``s·Σ_b L`` with ℓ = y·logit − (1−y)·logit and L = −ℓ (``use_logits``) or −log σ(ℓ)
    (DiME ``core/sample_utils.py:clean_class_cond_fn``). The caller divides by √ᾱ_i."""
    with torch.enable_grad():
        x_in = x_t.detach().requires_grad_(True)
        logits = _logits(classifier, x_in)
        y = targets.to(logits.dtype)
        selected = y * logits - (1 - y) * logits
        loss = -selected if use_logits else -F.logsigmoid(selected)
        return torch.autograd.grad((loss * scale).sum(), x_in)[0]


def distance_gradient(z_t: torch.Tensor, x_t: torch.Tensor, x: torch.Tensor, alpha_t: torch.Tensor | float,
                      config: dict[str, Any], perceptual=None) -> torch.Tensor | float:
    """DiME ``dist_cond_fn``: ∇_{z_t}[λ₁ Σ‖z_t−x‖₁ + λ₂ Σ‖z_t−x‖₂] (norms over channels, summed over pixels and
    batch; on the NOISY z_t and not rescaled) + ∇_{x_t}[λ_p Σ_b mean (φ(x_t)−φ(x))²] / √ᾱ_i. Returns the float 0
    when every weight is 0; the perceptual network is not called when λ_p = 0."""
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
            if perceptual is None:
                raise ValueError("DiME l_perc > 0 needs a perceptual network (models['perceptual'])")
            x_in = x_t.detach().requires_grad_(True)
            batch = x_in.shape[0]
            diff = F.mse_loss(perceptual(x_in).reshape(batch, -1), perceptual(x).reshape(batch, -1),
                              reduction="none").mean(dim=1)
            grads = grads + torch.autograd.grad(lp * diff.sum(), x_in)[0] / alpha_t
    return grads


def _timesteps(i: int, batch: int, device: torch.device) -> torch.Tensor:
    return torch.full((batch,), i, device=device, dtype=torch.long)


@torch.no_grad()
def _denoise(unet, diffusion, z: torch.Tensor, steps: int, sampling: bool, generators) -> torch.Tensor:
    """The nested x_t refresh: unguided DDPM from respaced index ``steps−1`` down to 0, clipping x̂₀, with
    sampling noise when ``use_sampling_on_x_t`` (else posterior means), as the inner ``p_sample_loop`` call."""
    shape = tuple(z.shape[1:])
    for i in reversed(range(steps)):
        out = diffusion.p_mean_variance(unet, z, _timesteps(i, z.shape[0], z.device), clip_denoised=True)
        z = out["mean"].float()
        if sampling and i != 0:  # upstream multiplies the i = 0 draw by 0; it is not drawn here
            z = z + torch.exp(0.5 * out["log_variance"]) * randn_per_image(generators, shape, z.device, z.dtype)
    return z


@torch.no_grad()
def dime_sample(unet, diffusion, images: torch.Tensor, z_tau: torch.Tensor, targets: torch.Tensor, classifier,
                scale: float, config: dict[str, Any], generators, perceptual=None,
                progress: bool = False) -> torch.Tensor:
    """One DiME attempt at classifier scale ``scale`` from z_τ (``get_DiME_iterative_sampling``); returns the
    counterfactual, the outer z after step i = 0."""
    tau = int(config["start_step"])
    shape = tuple(images.shape[1:])
    batch = images.shape[0]
    x_t, z_t = images.clone(), z_tau
    guided_iterations = int(config["guided_iterations"])
    steps = list(reversed(range(tau)))
    for jdx, i in enumerate(tqdm(steps, desc=f"DiME s={scale:g}", leave=False, disable=not progress)):
        out = diffusion.p_mean_variance(unet, z_t, _timesteps(i, batch, images.device), clip_denoised=True)
        # √ᾱ_i of the respaced schedule as a float32 tensor (upstream ``_extract_into_tensor``)
        alpha_t = torch.tensor(float(diffusion.sqrt_alphas_cumprod[i]), dtype=torch.float32, device=images.device)
        grads: torch.Tensor | float = 0.0
        if guided_iterations > jdx:
            grads = classifier_gradient(x_t, targets, classifier, scale, bool(config["use_logits"])) / alpha_t
            grads = grads + distance_gradient(z_t, x_t, images, alpha_t, config, perceptual)
        mean = out["mean"].float() - out["variance"] * grads
        if i != 0:
            z_t = mean + torch.exp(0.5 * out["log_variance"]) * randn_per_image(generators, shape, images.device,
                                                                                mean.dtype)
        else:
            z_t = mean
        if tau - (jdx + 1) > 0 and guided_iterations > jdx:
            x_t = _denoise(unet, diffusion, z_t, tau - (jdx + 1), bool(config["use_sampling_on_x_t"]), generators)
    return z_t


def _logits(classifier, x: torch.Tensor) -> torch.Tensor:
    """The classifier's query logit as a (B,) tensor; (B, 1) is accepted, anything else is an error."""
    logits = classifier(x)
    if logits.dim() == 2 and logits.shape[1] == 1:
        logits = logits[:, 0]
    if logits.shape != (x.shape[0],):
        raise ValueError(f"DiME needs a binary classifier returning one logit per image, shape ({x.shape[0]},); "
                         f"models['classifier'] returned {tuple(logits.shape)}")
    return logits


def parse_scales(scales: Any) -> list[float]:
    """``classifier_scales`` as a list, or as the upstream flag string ``'8,10,15'``."""
    if isinstance(scales, str):
        scales = [part for part in scales.split(",") if part.strip()]
    values = [float(s) for s in scales]
    if not values:
        raise ValueError("DiME config classifier_scales is empty; upstream uses [8, 10, 15]")
    return values


def quantised_l1(images: torch.Tensor, counterfactuals: torch.Tensor) -> list[float]:
    """Per-image ``l_1`` as DiME ``main.py`` computes it: mean |x_u8 − x'_u8| / 255 in float32 on CPU, with the
    input quantised by truncation ``uint8(255·(x/2 + 0.5))`` and the CF by ``uint8(clamp((x'+1)·127.5))``."""
    return [uint8_l1(to_uint8(x, mode="truncate"), to_uint8(cf, mode="clamp"))
            for x, cf in zip(images, counterfactuals, strict=True)]


@torch.no_grad()
def generate(images: torch.Tensor, labels: torch.Tensor, *, models: dict[str, Any], config: dict[str, Any],
             generators: list[torch.Generator], targets: torch.Tensor | None = None,
             progress: bool = False) -> MethodOutput:
    """DiME counterfactuals for a batch of [−1,1] images of a binary task (DiME ``main.py:main``).

    ``models``: ``unet``, ``diffusion`` (respaced), ``classifier`` ([−1,1] → query logit (B,)) and, when
    ``l_perc`` > 0, ``perceptual`` (normalised VGG-19 features). Targets default to 1 − prediction, as upstream
    (``--target_label`` only filters images there). ``info[k]``: ``bkl`` = 1 − p(target | x'), ``l_1`` (on the
    quantised images, as upstream), ``classifier_scale`` of the kept attempt, ``attempts`` (1-based count of
    scales tried), ``flipped``.
    """
    cfg = check_inputs("DiME", config, DEFAULTS, images, generators)
    unet, diffusion, classifier = models["unet"], models["diffusion"], models["classifier"]
    perceptual = models.get("perceptual")
    if float(cfg["l_perc"]) > 0 and perceptual is None:
        raise ValueError("DiME config l_perc > 0 needs models['perceptual'] (VGG-19 features); set l_perc: 0 to "
                         "turn the perceptual term off")
    tau = int(cfg["start_step"])
    if not 0 < tau < diffusion.num_timesteps:
        raise ValueError(f"start_step {tau} must lie in 1..{diffusion.num_timesteps - 1} of the respaced schedule")
    scales = parse_scales(cfg["classifier_scales"])
    batch = images.shape[0]
    preds = (_logits(classifier, images) > 0).long()
    targets = (1 - preds) if targets is None else targets.to(images.device).long()
    # z_tau at respaced index tau (the first denoising call is at tau - 1: DiME's off-by-one, kept)
    t_tau = torch.full((batch,), tau, device=images.device, dtype=torch.long)
    z_tau = diffusion.q_sample(images, t_tau, noise=randn_per_image(generators, tuple(images.shape[1:]),
                                                                     images.device, images.dtype))
    cf = z_tau.clone()
    transformed = torch.zeros(batch, dtype=torch.bool, device=images.device)
    scale_used: list[float | None] = [None] * batch
    attempts = [0] * batch
    for scale in scales:
        todo = (~transformed).nonzero().flatten()
        sub_generators = [generators[int(k)] for k in todo]
        cfs = dime_sample(unet, diffusion, images[todo], z_tau[todo], targets[todo], classifier, scale, cfg,
                          sub_generators, perceptual, progress)
        cf[todo] = cfs
        for k in todo.tolist():
            scale_used[k] = scale
            attempts[k] += 1
        transformed[todo] = (_logits(classifier, cfs) > 0).long() == targets[todo]
        if bool(transformed.all()):
            break
    logits_cf = _logits(classifier, cf)
    cf_preds = (logits_cf > 0).long()
    p_one = torch.sigmoid(logits_cf)
    bkl = 1 - torch.where(targets == 1, p_one, 1 - p_one)
    l_1 = quantised_l1(images, cf)
    info = [{"bkl": float(bkl[k]), "l_1": l_1[k], "classifier_scale": scale_used[k],
             "attempts": attempts[k], "flipped": bool(cf_preds[k] == targets[k])} for k in range(batch)]
    return MethodOutput(counterfactuals=cf, noise=z_tau, preds=preds, targets=targets, cf_preds=cf_preds, info=info)
