"""LDCE consensus guidance (Farid et al., arXiv 2310.06668), the pure tensor parts of ``cc_ddim.py:conditional_score``.

Spec: reference/ldce_gcd_svce.md §1.3. Δ = ε_c − ε_u is the implicit classifier score, s_c = −√(1−ᾱ)·g_c the
classifier score and s_d = −√(1−ᾱ)·g_d the distance score. The consensus filter keeps s_c where its angle to Δ
is at most θ degrees (``sampling_helpers.py:cone_project_chuncked_zero``, chunk size 1: per latent pixel over the
channels), both scores are rescaled to ‖Δ‖ per sample (``_renormalize_gradient``) and ε̂ = ε_u + s·(s̃_c − s̃_d).

Not yet here: the models (``cfx.models.ldm``), the full ``generate`` entry point and its registration in
``cfx.methods.METHODS`` (issue #5).
"""

from __future__ import annotations

import math

import torch

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
