"""LDCE: Latent Diffusion Counterfactual Explanations (Farid et al., arXiv 2310.06668).

Faithful to ``lmb-freiburg/ldce`` ``ldm/models/diffusion/cc_ddim.py`` (``CCMDDIMSampler.conditional_score``,
``get_output``, ``p_sample_ddim``, ``decode``) and ``sampling_helpers.py`` (``cone_project*``,
``_renormalize_gradient``); spec docs/upstream/ldce_gcd_svce.md §1.2–1.3. Per image: z0 = scale·E(x); z = DDIM
``stochastic_encode`` at ``t_enc = int(strength · ddim_steps)``; then DDIM indices t_enc−1 … 0, each with

* "projected" guidance (the default here): the UNet on [z; z] with [uc; c] gives ε_u, ε_c; the clean latent of the
  unconditional branch is decoded differentiably, x̂0 = D((z − √(1−ᾱ) ε_u)/√ᾱ); g_d = ∂d/∂z of the ℓ1 (``lp_custom``
  1; 2: squared ℓ2) distance between clamp((x̂0+1)/2) and the input, summed; g_c = ∂ℓ/∂z of the classifier
  log-likelihood of the target (multi-class Σ log softmax[y]; binary −BCEWithLogits). Δ = ε_c − ε_u is the implicit
  classifier score, s_c = −√(1−ᾱ)·g_c the classifier score and s_d = −√(1−ᾱ)·g_d the distance score. The consensus
  filter keeps s_c where its angle to Δ is at most θ degrees (``cone_project_chuncked_zero``, chunk size 1: per latent
  pixel over the channels), both scores are rescaled to ‖Δ‖ per sample and ε̂ = ε_u + s·(s̃_c − s̃_d);
* "free" guidance: ε̂ = ε_u + s·(ε_c − ε_u) (classifier and distance unused; upstream's CelebA-HQ config);

and the deterministic DDIM update (η = 0). Finally x_cf = clamp((D(z)+1)/2, 0, 1).

Upstream pain points not reproduced (README.md "Deviations from upstream"): no 6-second-per-step watchdog that exits
the process, a partial last batch works, per-step frames are kept only when ``record_intermediate`` is set,
outputs are overwritten on rerun (the output tree), and every random draw (the encoding noise, a KL posterior
sample) comes from the image's own generator instead of one seed-0 draw shared by the batch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from tqdm import tqdm

from cfx.methods import MethodOutput, check_inputs
from cfx.models.ldm_ddim import LDMDDIMSchedule, make_beta_schedule
from cfx.runtime.seeding import randn_per_image

# configs/ldce/*.yaml common keys; v1_wider / the README's Table 1 command for strength, λ_c, λ_d and θ
DEFAULTS: dict[str, Any] = {
    "strength": 0.382,
    "ddim_steps": 500,
    "ddim_eta": 0.0,
    "scale": 3.0,
    "guidance": "projected",
    "cone_projection_type": "zero_binning",
    "deg_cone_projection": 45.0,
    "classifier_lambda": 2.3,
    "dist_lambda": 0.3,
    "lp_custom": 1,
    "enforce_same_norms": True,
    "record_intermediate": False,
}

_EPS = 1e-12  # guards 0/0 in angles and norms (a zero vector gets angle 90° and stays zero when rescaled)


def _angles(a: torch.Tensor, b: torch.Tensor, dim: int) -> torch.Tensor:
    """Angle in degrees between ``a`` and ``b`` along ``dim`` (cosine clamped to [−1, 1])."""
    cos = (a * b).sum(dim) / (a.norm(dim=dim) * b.norm(dim=dim)).clamp_min(_EPS)
    return torch.rad2deg(torch.arccos(cos.clamp(-1.0, 1.0)))


def consensus_angles(delta: torch.Tensor, score: torch.Tensor) -> torch.Tensor:
    """Per-latent-pixel angle (degrees, B×h×w) between Δ and s_c over the C channels (inputs B×C×h×w)."""
    if delta.shape != score.shape or delta.dim() != 4:
        raise ValueError(f"delta {tuple(delta.shape)} and score {tuple(score.shape)} must both be B×C×h×w")
    return _angles(delta, score, dim=1)


def consensus_zero_binning(delta: torch.Tensor, score: torch.Tensor, theta_deg: float) -> torch.Tensor:
    """``zero_binning`` (all shipped configs): s_c kept where its per-pixel angle to Δ is ≤ θ, zero elsewhere."""
    keep = consensus_angles(delta, score) <= theta_deg
    return score * keep.unsqueeze(1).to(score.dtype)


def _rotate_into_cone(delta: torch.Tensor, score: torch.Tensor, theta_deg: float, dim: int) -> torch.Tensor:
    """Where angle(s, Δ) > θ: ‖s‖·tan(θ)·u⊥ + s with u⊥ the unit component of Δ orthogonal to s (else s)."""
    s_norm = score.norm(dim=dim, keepdim=True)
    s_hat = score / s_norm.clamp_min(_EPS)
    perp = delta - (delta * s_hat).sum(dim, keepdim=True) * s_hat
    u_perp = perp / perp.norm(dim=dim, keepdim=True).clamp_min(_EPS)
    projected = s_norm * math.tan(math.radians(theta_deg)) * u_perp + score
    outside = (_angles(delta, score, dim=dim) > theta_deg).unsqueeze(dim)
    return torch.where(outside, projected, score)


def consensus_binning(delta: torch.Tensor, score: torch.Tensor, theta_deg: float) -> torch.Tensor:
    """``binning`` (``cone_project_chuncked``, chunk 1): per latent pixel, s_c outside the cone is turned to its
    boundary (angle θ to s_c, towards Δ). θ must be < 90° (tan)."""
    if not 0.0 <= theta_deg < 90.0:
        raise ValueError(f"binning needs 0 <= θ < 90 degrees, got {theta_deg}")
    consensus_angles(delta, score)  # shape check
    return _rotate_into_cone(delta, score, theta_deg, dim=1)


def consensus_whole(delta: torch.Tensor, score: torch.Tensor, theta_deg: float) -> torch.Tensor:
    """``default`` (``cone_project``): the same cone rule on each sample's flattened latent."""
    if not 0.0 <= theta_deg < 90.0:
        raise ValueError(f"whole-vector projection needs 0 <= θ < 90 degrees, got {theta_deg}")
    b = score.shape[0]
    out = _rotate_into_cone(delta.reshape(b, -1), score.reshape(b, -1), theta_deg, dim=1)
    return out.reshape(score.shape)


CONSENSUS = {"zero_binning": consensus_zero_binning, "binning": consensus_binning, "default": consensus_whole}


def match_norm(score: torch.Tensor, reference: torch.Tensor, lam: float = 1.0) -> torch.Tensor:
    """λ·‖ref‖·s/‖s‖ per sample (``_renormalize_gradient`` with ``enforce_same_norms``)."""
    dims = tuple(range(1, score.dim()))
    s_norm = score.flatten(1).norm(dim=1).clamp_min(_EPS).view(-1, *([1] * len(dims)))
    r_norm = reference.flatten(1).norm(dim=1).view(-1, *([1] * len(dims)))
    return lam * r_norm * score / s_norm


def projected_eps(eps_u: torch.Tensor, eps_c: torch.Tensor, grad_cls: torch.Tensor, grad_dist: torch.Tensor,
                  alpha_bar: float, *, scale: float = 3.0, theta_deg: float = 45.0,
                  cone_projection_type: str = "zero_binning", classifier_lambda: float = 1.0,
                  dist_lambda: float = 1.0) -> torch.Tensor:
    """ε̂ = ε_u + s·(s̃_c − s̃_d) of "projected" guidance (§1.3 steps 4–7). ``grad_cls`` = ∂ℓ/∂x of the classifier
    log-likelihood, ``grad_dist`` = ∂d/∂x of the distance, both w.r.t. the noisy latent."""
    if cone_projection_type not in CONSENSUS:
        raise ValueError(f"unknown cone_projection_type '{cone_projection_type}' ({', '.join(CONSENSUS)})")
    sigma = (1.0 - alpha_bar) ** 0.5
    delta = (eps_c - eps_u).detach()
    s_c = CONSENSUS[cone_projection_type](delta, -sigma * grad_cls, theta_deg)
    s_d = -sigma * grad_dist
    return eps_u + scale * (match_norm(s_c, delta, classifier_lambda) - match_norm(s_d, delta, dist_lambda))


def free_eps(eps_u: torch.Tensor, eps_c: torch.Tensor, scale: float = 3.0) -> torch.Tensor:
    """"free" guidance: plain classifier-free ε̂ = ε_u + s·(ε_c − ε_u) (classifier and distance unused)."""
    return eps_u + scale * (eps_c - eps_u)


def _renormalize(score: torch.Tensor, reference: torch.Tensor, lam: float, enforce_same_norms: bool) -> torch.Tensor:
    """``_renormalize_gradient`` then λ (``enforce_same_norms``), else λ·score."""
    return match_norm(score, reference, lam) if enforce_same_norms else lam * score


def _squeezed(logits: torch.Tensor) -> torch.Tensor:
    """(B, 1) binary logits as (B,); (B,) and (B, K) unchanged."""
    return logits[:, 0] if logits.dim() == 2 and logits.shape[1] == 1 else logits


def target_log_likelihood(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(ℓ summed over the batch, p per image) as ``conditional_score``: (B, K) logits → Σ log softmax[y] and p(y);
    (B,) binary logits → −BCEWithLogits(logit, y) (batch mean) and σ(logit) = p(positive class)."""
    logits = _squeezed(logits)
    if logits.dim() == 2:
        log_probs = F.log_softmax(logits, dim=-1).gather(1, targets.view(-1, 1)).squeeze(1)
        return log_probs.sum(), log_probs.exp().detach()
    if logits.dim() != 1:
        raise ValueError(f"the classifier must return (B,) binary or (B, K) logits, got {tuple(logits.shape)}")
    loss = -F.binary_cross_entropy_with_logits(logits, targets.to(logits.dtype))
    return loss, torch.sigmoid(logits).detach()


def guided_eps(ldm, classifier, z: torch.Tensor, index: int, schedule: LDMDDIMSchedule, cond: torch.Tensor,
               uncond: torch.Tensor, targets: torch.Tensor, x_init01: torch.Tensor,
               cfg: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """ε̂ of one DDIM step (``CCMDDIMSampler.conditional_score``), the classifier's p(target | x̂0) (None when
    λ_c = 0 or guidance is free) and x̂0 of the unconditional branch (for ``record_intermediate``; None
    for free guidance without it, which then decodes nothing)."""
    b = z.shape[0]
    t = torch.full((2 * b,), int(schedule.timesteps[index]), device=z.device, dtype=torch.long)
    alpha = float(schedule.alphas[index])
    context = torch.cat([uncond, cond])
    if cfg["guidance"] == "free":
        with torch.no_grad():
            eps_u, eps_c = ldm.apply_model(torch.cat([z, z]), t, context).chunk(2)
            x0 = ldm.decode_first_stage(schedule.pred_x0(z, eps_u, index)) if cfg["record_intermediate"] else None
        return free_eps(eps_u, eps_c, float(cfg["scale"])), None, x0
    if cfg["guidance"] != "projected":
        raise ValueError(f"unknown LDCE guidance '{cfg['guidance']}' (projected or free)")
    lam_c, lam_d, lp = float(cfg["classifier_lambda"]), float(cfg["dist_lambda"]), cfg["lp_custom"]
    prob = None
    with torch.enable_grad():
        z_in = z.detach().requires_grad_(True)
        eps_u, eps_c = ldm.apply_model(torch.cat([z_in, z_in]), t, context).chunk(2)
        x0 = ldm.decode_first_stage(schedule.pred_x0(z_in, eps_u, index))
        grad_dist = grad_cls = None
        if lp:
            x0_01 = ((x0 + 1) / 2).clamp(0, 1)
            if int(lp) == 1:
                dist = (x0_01 - x_init01).abs().sum()
            elif int(lp) == 2:
                dist = ((x0_01 - x_init01) ** 2).sum()
            else:
                raise ValueError(f"LDCE lp_custom must be 1 (L1), 2 (MSE) or 0/null (no distance), got {lp!r}")
            grad_dist = torch.autograd.grad(dist, z_in, retain_graph=lam_c != 0)[0]
        if lam_c != 0:
            loglik, prob = target_log_likelihood(classifier(x0), targets)
            grad_cls = torch.autograd.grad(loglik, z_in)[0]
    sigma = (1.0 - alpha) ** 0.5
    delta = (eps_c - eps_u).detach()
    score = torch.zeros_like(z)
    if grad_cls is not None:
        kind = cfg["cone_projection_type"]
        if kind not in CONSENSUS:
            raise ValueError(f"unknown cone_projection_type '{kind}' ({', '.join(CONSENSUS)})")
        s_c = CONSENSUS[kind](delta, -sigma * grad_cls, float(cfg["deg_cone_projection"]))
        score = score + _renormalize(s_c, delta, lam_c, bool(cfg["enforce_same_norms"]))
    if grad_dist is not None:
        score = score - _renormalize(-sigma * grad_dist, delta, lam_d, bool(cfg["enforce_same_norms"]))
    return eps_u.detach() + float(cfg["scale"]) * score, prob, x0.detach()


def ddim_schedule(ldm, ddim_steps: int) -> LDMDDIMSchedule:
    """The DDIM schedule of ``ldm``'s β schedule (``linear_start``, ``linear_end``, ``num_timesteps``)."""
    betas = make_beta_schedule("linear", int(ldm.num_timesteps), float(ldm.linear_start), float(ldm.linear_end))
    return LDMDDIMSchedule(betas, int(ddim_steps))


def conditioning_inputs(targets: torch.Tensor, conditioning: Sequence | None) -> torch.Tensor | list[str]:
    """What the LDM's conditioner embeds for each target: the target itself as class label (``conditioning`` None:
    cin256-v2 on ImageNet), else ``conditioning[target]`` — a class label (the mini LDM) or a prompt (SD-v1,
    e.g. "a photo of a smiling person")."""
    if conditioning is None:
        return targets.long()
    chosen = [conditioning[int(y)] for y in targets]
    if all(isinstance(c, str) for c in chosen):
        return chosen
    return torch.as_tensor([int(c) for c in chosen], device=targets.device, dtype=torch.long)


def _encode(ldm, images: torch.Tensor, generators: list[torch.Generator]) -> torch.Tensor:
    """z0 = scale·E(x) image by image, so that a KL posterior sample comes from the image's own generator."""
    return torch.cat([ldm.encode_first_stage(images[k:k + 1], generator=generators[k])
                      for k in range(images.shape[0])])


def _preds(logits: torch.Tensor) -> torch.Tensor:
    logits = _squeezed(logits)
    return logits.argmax(1) if logits.dim() == 2 else (logits > 0).long()


def _target_probs(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """p(target) (binary: σ or 1 − σ of the logit) — not upstream's ``target_confidence`` = p(positive)."""
    logits = _squeezed(logits)
    if logits.dim() == 2:
        return logits.softmax(1).gather(1, targets.view(-1, 1)).squeeze(1)
    p = torch.sigmoid(logits)
    return torch.where(targets.bool(), p, 1 - p)


@torch.no_grad()
def generate(images: torch.Tensor, labels: torch.Tensor, *, models: dict[str, Any], config: dict[str, Any],
             generators: list[torch.Generator], targets: torch.Tensor | None = None,
             progress: bool = False) -> MethodOutput:
    """LDCE counterfactuals of a batch of [−1,1] images (``scripts/ldce.py:main`` for one batch).

    ``models``: ``ldm`` (a :class:`cfx.models.ldm.LatentDiffusion`), ``classifier`` ([−1,1] images → (B,) binary or
    (B, K) logits; the ImageNet wrapper crops and normalises inside), optional ``conditioning`` (see
    :func:`conditioning_inputs`). Targets: required for K-class classifiers; binary: 1 − label (LDCE's CelebA-HQ
    flip). ``noise`` is the decoded noised latent the guided decoding starts from. ``info[k]``: ``in_confid`` /
    ``out_confid`` (the predicted class's probability), ``in_tgt_confid`` / ``out_tgt_confid`` (the target's),
    ``target_confidence`` (the classifier's p at the last guided step, as upstream: p(positive) for binary tasks),
    ``t_enc``, ``strength``, ``flipped``; with ``record_intermediate`` also ``intermediate`` (per-step x̂0 in [0,1],
    uint8, T×C×H×W)."""
    cfg = check_inputs("LDCE", config, DEFAULTS, images, generators)
    if float(cfg["ddim_eta"]) != 0.0:
        raise ValueError("LDCE ddim_eta must be 0 (every shipped config; the η > 0 branch draws no per-image noise)")
    ldm, classifier = models["ldm"], models["classifier"]
    logits = classifier(images)
    preds = _preds(logits)
    if targets is None:
        if logits.dim() == 2 and logits.shape[1] > 1:
            raise ValueError(f"LDCE with a {logits.shape[1]}-class classifier needs explicit targets")
        targets = 1 - labels.long()
    targets = targets.to(images.device).long()
    schedule = ddim_schedule(ldm, int(cfg["ddim_steps"]))
    t_enc = schedule.t_enc(float(cfg["strength"]))
    if t_enc < 1:
        raise ValueError(f"LDCE strength {cfg['strength']} with {cfg['ddim_steps']} DDIM steps gives t_enc = 0: "
                         "nothing to decode; raise strength or ddim_steps")
    cond = ldm.get_learned_conditioning(conditioning_inputs(targets, models.get("conditioning")))
    uncond = ldm.unconditional_conditioning(images.shape[0])
    x_init01 = ((images + 1) / 2).clamp(0, 1)
    z0 = _encode(ldm, images, generators)
    noise = randn_per_image(generators, tuple(z0.shape[1:]), z0.device, z0.dtype)
    z = schedule.stochastic_encode(z0, t_enc, noise)
    start_image = ldm.decode_first_stage(z).clamp(-1, 1)
    prob = None
    frames: list[torch.Tensor] = []
    for index in tqdm(schedule.decode_indices(t_enc), desc="LDCE DDIM", leave=False, disable=not progress):
        eps, step_prob, x0 = guided_eps(ldm, classifier, z, index, schedule, cond, uncond, targets, x_init01, cfg)
        prob = step_prob if step_prob is not None else prob
        if cfg["record_intermediate"]:
            frames.append((((x0 + 1) / 2).clamp(0, 1) * 255).round().to(torch.uint8).cpu())
        z = schedule.step(z, eps, index)
    cf = ((ldm.decode_first_stage(z) + 1) / 2).clamp(0, 1) * 2 - 1
    cf_logits = classifier(cf)
    cf_preds = _preds(cf_logits)
    in_conf = _target_probs(logits, preds)
    out_conf = _target_probs(cf_logits, cf_preds)
    in_tgt, out_tgt = _target_probs(logits, targets), _target_probs(cf_logits, targets)
    info = []
    for k in range(images.shape[0]):
        entry = {"in_confid": float(in_conf[k]), "out_confid": float(out_conf[k]), "in_tgt_confid": float(in_tgt[k]),
                 "out_tgt_confid": float(out_tgt[k]), "t_enc": t_enc, "strength": float(cfg["strength"]),
                 "flipped": bool(cf_preds[k] == targets[k])}
        if prob is not None:
            entry["target_confidence"] = float(prob[k])
        if frames:
            entry["intermediate"] = torch.stack([f[k] for f in frames])
        info.append(entry)
    return MethodOutput(counterfactuals=cf, noise=start_image, preds=preds, targets=targets, cf_preds=cf_preds,
                        info=info)
