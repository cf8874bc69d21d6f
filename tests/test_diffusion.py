"""Gaussian diffusion: schedules, respacing and timestep bookkeeping against reference numbers.

Reference values (reference/dime_ace.md §1.1, §2.7), and guided-diffusion's own GaussianDiffusion gave
identical p_mean_variance and training_losses outputs at dev time (max abs difference 0.0).
"""

import numpy as np
import pytest
import torch

from cfx.models.adm import create_model
from cfx.models.diffusion import create_gaussian_diffusion, get_named_beta_schedule, space_timesteps


def test_dime_timestep_bookkeeping():
    d = create_gaussian_diffusion(steps=500, learn_sigma=True, noise_schedule="linear", timestep_respacing="200")
    assert d.num_timesteps == 200
    assert int(d.timestep_map[60]) == 150 and d.alphas_cumprod[60] == pytest.approx(0.3917, abs=1e-4)
    assert int(d.timestep_map[59]) == 148 and d.alphas_cumprod[59] == pytest.approx(0.4014, abs=1e-4)
    # respaced betas recomputed from the kept alpha-bars
    assert np.allclose(np.cumprod(1 - d.betas), d.alphas_cumprod)


def test_ace_celeba_respacing():
    d = create_gaussian_diffusion(steps=500, learn_sigma=True, timestep_respacing="50")
    assert d.timestep_map[:6].tolist() == [0, 10, 20, 31, 41, 51]
    assert d.alphas_cumprod[4] == pytest.approx(0.926, abs=1e-3)


def test_schedules_and_ddim_spacing():
    betas = get_named_beta_schedule("linear", 500)
    assert betas[0] == pytest.approx(2e-4) and betas[-1] == pytest.approx(4e-2)
    cosine = get_named_beta_schedule("cosine", 1000)
    assert (cosine <= 0.999).all() and cosine[0] < 1e-4
    assert space_timesteps(1000, "ddim25") == set(range(0, 1000, 40))
    expected = {round(i * 49 / 9) for i in range(10)} | {50 + round(i * 49 / 14) for i in range(15)}
    assert space_timesteps(100, "10,15") == expected
    with pytest.raises(ValueError):
        get_named_beta_schedule("quadratic", 10)


def test_q_sample_statistics():
    d = create_gaussian_diffusion(steps=500, timestep_respacing="200")
    x = torch.full((4000, 1, 1, 1), 0.5)
    z = d.q_sample(x, torch.full((4000,), 60, dtype=torch.long), noise=torch.randn_like(x))
    a = d.alphas_cumprod[60]
    assert float(z.mean()) == pytest.approx(np.sqrt(a) * 0.5, abs=0.04)
    assert float(z.std()) == pytest.approx(np.sqrt(1 - a), abs=0.04)


class _TrueNoise(torch.nn.Module):
    """A 'model' that returns the noise used to make x_t (and zero variance logits)."""

    def __init__(self, noise):
        super().__init__()
        self.noise = noise

    def forward(self, x, t):
        return torch.cat([self.noise, torch.zeros_like(self.noise)], dim=1)


def test_p_mean_variance_recovers_x_start_with_the_true_noise():
    d = create_gaussian_diffusion(steps=100, learn_sigma=True, timestep_respacing="20")
    x0 = torch.rand(2, 3, 8, 8) * 1.6 - 0.8
    noise = torch.randn_like(x0)
    t = torch.tensor([5, 12])
    out = d.p_mean_variance(_TrueNoise(noise), d.q_sample(x0, t, noise), t, clip_denoised=False)
    assert torch.allclose(out["pred_xstart"], x0, atol=1e-4)
    # v = 0 -> log variance halfway between log beta and log beta-tilde
    expected = 0.5 * (np.log(d.betas[5]) + d.posterior_log_variance_clipped[5])
    assert float(out["log_variance"][0, 0, 0, 0]) == pytest.approx(expected, rel=1e-5)


def test_training_losses_finite_and_vb_only_grads_variance():
    torch.manual_seed(0)
    model = create_model(image_size=32, num_channels=32, num_res_blocks=1, channel_mult="1,2,2",
                         attention_resolutions="8", num_heads=4, learn_sigma=True)
    d = create_gaussian_diffusion(steps=500, learn_sigma=True)
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    terms = d.training_losses(model, x, torch.tensor([0, 100]))
    assert set(terms) == {"loss", "mse", "vb"} and torch.isfinite(terms["loss"]).all()
    assert torch.allclose(terms["loss"], terms["mse"] + terms["vb"])
    # the respaced model sees the original timestep
    seen = []
    spaced = create_gaussian_diffusion(steps=500, learn_sigma=True, timestep_respacing="50")
    spaced.p_mean_variance(lambda x, t: seen.append(t.tolist()) or torch.zeros(2, 6, 4, 4), torch.zeros(2, 3, 4, 4),
                           torch.tensor([4, 12]))
    assert seen == [[41, 122]]
