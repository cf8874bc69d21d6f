"""Gaussian diffusion: schedules, respacing, timestep bookkeeping and the hybrid loss against reference numbers.

Reference values: docs/upstream/dime_ace.md §1.1 and §2.7 (ᾱ and kept timesteps of the DiME/ACE setups), closed
forms computed here in numpy float64 (posterior KL and discretised-Gaussian decoder NLL of Ho et al. 2020 /
Nichol & Dhariwal 2021), and guided-diffusion's own code: at dev time openai/guided-diffusion (commit 22e0df8,
run outside this repository) gave identical schedule arrays, ``space_timesteps`` sets ("ddim25", "ddim50",
"200", "50", "10,15,20", ...), and p_mean_variance / p_sample (also with cond_fn) / training_losses outputs and
d(mean)/dx (max abs difference 0.0) for learned-range, fixed small/large, predict_xstart, rescale_timesteps,
use_kl and rescale_learned_sigmas diffusions.
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


def _approx_cdf(x):
    """The tanh approximation of the standard normal CDF that guided-diffusion ``losses.py`` uses."""
    return 0.5 * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (x + 0.044715 * x**3)))


class _Fixed(torch.nn.Module):
    def __init__(self, out):
        super().__init__()
        self.out = out

    def forward(self, x, t):
        return self.out


def test_vb_term_equals_the_closed_form():
    """Hybrid loss (Nichol & Dhariwal 2021 eq. 16): at t>0 the KL between q(x_{t-1}|x_t,x_0) and p_θ in bits per
    dimension, at t=0 the discretised decoder NLL; the model mean is frozen inside the vb term."""
    T = 100
    d = create_gaussian_diffusion(steps=T, learn_sigma=True)
    gen = torch.Generator().manual_seed(0)
    x0 = torch.rand(2, 3, 4, 4, generator=gen, dtype=torch.float64) * 2 - 1
    x0[:, 0, 0, 0], x0[:, 0, 0, 1] = -1.0, 1.0  # the edge bins of the decoder
    noise = torch.randn(x0.shape, generator=gen, dtype=torch.float64)
    eps_hat = noise + 0.3 * torch.randn(x0.shape, generator=gen, dtype=torch.float64)
    v = torch.rand(x0.shape, generator=gen, dtype=torch.float64) * 2 - 1
    t = torch.tensor([37, 0])
    terms = d.training_losses(_Fixed(torch.cat([eps_hat, v], 1).float()), x0.float(), t, noise=noise.float())

    x0, noise, eps_hat, v = (a.numpy() for a in (x0, noise, eps_hat, v))
    betas = np.linspace(1e-4 * 1000 / T, 0.02 * 1000 / T, T)
    ab = np.cumprod(1 - betas)
    ab_prev = np.append(1.0, ab[:-1])
    post_var = betas * (1 - ab_prev) / (1 - ab)
    post_logvar = np.log(np.append(post_var[1], post_var[1:]))
    expected = []
    for i, step in enumerate(t.tolist()):
        a, ap, b = ab[step], ab_prev[step], betas[step]
        xt = np.sqrt(a) * x0[i] + np.sqrt(1 - a) * noise[i]
        c1, c2 = b * np.sqrt(ap) / (1 - a), (1 - ap) * np.sqrt(1 - b) / (1 - a)
        x0_hat = (xt - np.sqrt(1 - a) * eps_hat[i]) / np.sqrt(a)  # no clipping inside the vb term
        mean_true, mean_model = c1 * x0[i] + c2 * xt, c1 * x0_hat + c2 * xt
        frac = (v[i] + 1) / 2
        logvar = frac * np.log(b) + (1 - frac) * post_logvar[step]
        if step > 0:
            kl = 0.5 * (-1 + logvar - post_logvar[step] + np.exp(post_logvar[step] - logvar)
                        + (mean_true - mean_model) ** 2 * np.exp(-logvar))
            expected.append(kl.mean() / np.log(2))
        else:
            inv = np.exp(-0.5 * logvar)
            up = _approx_cdf(inv * (x0[i] - mean_model + 1 / 255))
            lo = _approx_cdf(inv * (x0[i] - mean_model - 1 / 255))
            logp = np.where(x0[i] < -0.999, np.log(up), np.where(x0[i] > 0.999, np.log(1 - lo), np.log(up - lo)))
            expected.append(-logp.mean() / np.log(2))
    assert terms["vb"].tolist() == pytest.approx(expected, rel=1e-4)
    assert terms["mse"].tolist() == pytest.approx(((eps_hat - noise) ** 2).mean(axis=(1, 2, 3)).tolist(), rel=1e-5)
    # rescale_learned_sigmas: the vb term is multiplied by T/1000
    rescaled = create_gaussian_diffusion(steps=T, learn_sigma=True, rescale_learned_sigmas=True)
    terms_r = rescaled.training_losses(_Fixed(torch.cat([torch.from_numpy(eps_hat), torch.from_numpy(v)], 1).float()),
                                       torch.from_numpy(x0).float(), t, noise=torch.from_numpy(noise).float())
    assert torch.allclose(terms_r["vb"], terms["vb"] * T / 1000)


def test_vb_term_only_trains_the_variance():
    d = create_gaussian_diffusion(steps=100, learn_sigma=True)
    out = torch.zeros(1, 6, 4, 4, requires_grad=True)
    terms = d.training_losses(_Fixed(out), torch.rand(1, 3, 4, 4) - 0.5, torch.tensor([20]))
    grad, = torch.autograd.grad(terms["vb"].sum(), out)
    assert grad[:, :3].abs().max() == 0 and grad[:, 3:].abs().max() > 0


def test_p_sample_noise_and_classifier_guidance():
    d = create_gaussian_diffusion(steps=500, learn_sigma=True, timestep_respacing="200")
    x, noise = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    t = torch.tensor([0, 60])
    model = _Fixed(torch.cat([0.1 * torch.ones(2, 3, 4, 4), torch.zeros(2, 3, 4, 4)], 1))
    seen = []

    def cond_fn(x, ts):
        seen.append(ts.tolist())
        return torch.full_like(x, 2.0)

    out = d.p_mean_variance(model, x, t)
    sample = d.p_sample(model, x, t, noise=noise, cond_fn=cond_fn)["sample"]
    expected = out["mean"] + out["variance"] * 2.0
    expected[1] += torch.exp(0.5 * out["log_variance"][1]) * noise[1]  # no noise at t = 0
    assert torch.allclose(sample, expected, atol=1e-6)
    assert seen == [[0, 150]]  # the gradient function also gets the original timesteps


def test_p_mean_variance_is_differentiable_in_x():
    d = create_gaussian_diffusion(steps=500, learn_sigma=True, timestep_respacing="50")
    x = torch.randn(1, 3, 4, 4, requires_grad=True)
    model = _Fixed(torch.zeros(1, 6, 4, 4))
    out = d.p_mean_variance(model, x, torch.tensor([4]), clip_denoised=False)
    grad, = torch.autograd.grad(out["mean"].sum(), x)
    # eps = 0: mean = (c1/sqrt(ab) + c2) x, so the gradient is that constant (= 1/sqrt(alpha_t))
    assert torch.allclose(grad, torch.full_like(grad, 1 / np.sqrt(1 - d.betas[4])), rtol=1e-5)
