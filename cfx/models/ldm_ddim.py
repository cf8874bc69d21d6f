"""LDM-style DDIM (``ldm/modules/diffusionmodules/util.py``, ``ldm/models/diffusion/ddim.py``).

The DDPM schedule is LDM's ``make_beta_schedule``: "linear" is a linspace in √β space, squared. DDIM keeps
``make_ddim_timesteps(uniform)`` = ``range(0, T, T // n) + 1`` (the +1 offset), ᾱ_prev prepends ᾱ at timestep 0,
η = 0 gives σ = 0. ``strength`` maps to ``t_enc = int(strength · n)``; ``stochastic_encode`` noises with the DDIM
ᾱ at index ``t_enc`` and ``decode`` then runs DDIM indices ``t_enc − 1 … 0`` (LDCE ``scripts/ldce.py`` as shipped).
"""

from __future__ import annotations

import numpy as np
import torch


def make_beta_schedule(schedule: str, n_timestep: int, linear_start: float = 1e-4,
                       linear_end: float = 2e-2) -> np.ndarray:
    """β schedule of LDM ``util.make_beta_schedule`` (float64). Only "linear" (the cin256-v2 / SD-v1 choice)."""
    if schedule != "linear":
        raise ValueError(f"unsupported beta schedule '{schedule}' (only 'linear', as cin256-v2 and SD-v1 use)")
    return np.linspace(linear_start ** 0.5, linear_end ** 0.5, n_timestep, dtype=np.float64) ** 2


def make_ddim_timesteps(num_ddim_timesteps: int, num_ddpm_timesteps: int) -> np.ndarray:
    """Uniform DDIM timesteps with LDM's +1 offset (``util.make_ddim_timesteps``, ``ddim_discr_method='uniform'``)."""
    if not 0 < num_ddim_timesteps <= num_ddpm_timesteps:
        raise ValueError(f"ddim steps {num_ddim_timesteps} must be in 1..{num_ddpm_timesteps}")
    c = num_ddpm_timesteps // num_ddim_timesteps
    return np.asarray(list(range(0, num_ddpm_timesteps, c))) + 1


class LDMDDIMSchedule:
    """DDIM quantities of ``DDIMSampler.make_schedule`` for η = 0 (σ = 0)."""

    def __init__(self, betas: np.ndarray, ddim_steps: int) -> None:
        alphas_cumprod = np.cumprod(1.0 - np.asarray(betas, dtype=np.float64))
        self.num_timesteps = len(alphas_cumprod)
        self.alphas_cumprod = alphas_cumprod
        self.timesteps = make_ddim_timesteps(ddim_steps, self.num_timesteps)
        if self.timesteps[-1] >= self.num_timesteps:
            raise ValueError(f"ddim steps {ddim_steps} over {self.num_timesteps} steps: the +1 offset leaves the "
                             "schedule (LDM only works when T is divisible into > 1 steps per DDIM step)")
        self.alphas = alphas_cumprod[self.timesteps]
        self.alphas_prev = np.asarray([alphas_cumprod[0]] + alphas_cumprod[self.timesteps[:-1]].tolist())

    @classmethod
    def from_config(cls, *, timesteps: int = 1000, linear_start: float = 0.0015, linear_end: float = 0.0195,
                    ddim_steps: int = 500) -> LDMDDIMSchedule:
        """Defaults are cin256-v2's ``model.params`` (``configs/latent-diffusion/cin256-v2.yaml``)."""
        return cls(make_beta_schedule("linear", timesteps, linear_start, linear_end), ddim_steps)

    def t_enc(self, strength: float) -> int:
        """``int(strength · ddim_steps)`` as LDCE ``scripts/ldce.py``; strength must lie in [0, 1]."""
        if not 0.0 <= strength <= 1.0:
            raise ValueError(f"strength {strength} must lie in [0, 1]")
        return int(strength * len(self.timesteps))

    def stochastic_encode(self, z0: torch.Tensor, t_enc: int, noise: torch.Tensor | None = None,
                          generator: torch.Generator | None = None) -> torch.Tensor:
        """z = √ᾱ z0 + √(1−ᾱ) ε with ᾱ = DDIM ᾱ at index ``t_enc`` (``DDIMSampler.stochastic_encode``)."""
        if noise is None:
            noise = torch.randn(z0.shape, generator=generator, dtype=z0.dtype, device=z0.device)
        a = float(self.alphas[t_enc])
        return a ** 0.5 * z0 + (1.0 - a) ** 0.5 * noise

    def pred_x0(self, x: torch.Tensor, eps: torch.Tensor, index: int) -> torch.Tensor:
        """x̂0 = (x − √(1−ᾱ_i) ε)/√ᾱ_i."""
        a = float(self.alphas[index])
        return (x - (1.0 - a) ** 0.5 * eps) / a ** 0.5

    def step(self, x: torch.Tensor, eps: torch.Tensor, index: int) -> torch.Tensor:
        """Deterministic DDIM update x_{i−1} = √ᾱ_prev x̂0 + √(1−ᾱ_prev) ε (``DDIMSampler.p_sample_ddim``, η = 0)."""
        a_prev = float(self.alphas_prev[index])
        return a_prev ** 0.5 * self.pred_x0(x, eps, index) + (1.0 - a_prev) ** 0.5 * eps

    def decode_indices(self, t_enc: int) -> list[int]:
        """DDIM indices ``t_enc − 1 … 0`` run by ``DDIMSampler.decode`` (time = ``timesteps[i]``)."""
        return list(range(t_enc - 1, -1, -1))
