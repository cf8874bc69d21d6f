"""LDCE: LDM DDIM schedule and the consensus guidance (docs/upstream/ldce_gcd_svce.md §1.2–1.3).

Reference numbers: ᾱ for strength 0.382 on cin256-v2's schedule (issue #5: ≈ 0.260), and closed forms computed
here in numpy float64 from LDM's ``make_beta_schedule('linear')`` / ``make_ddim_timesteps`` definitions.
"""

import math

import numpy as np
import pytest
import torch

from cfx.methods.ldce import (
    consensus_angles,
    consensus_binning,
    consensus_whole,
    consensus_zero_binning,
    free_eps,
    match_norm,
    projected_eps,
)
from cfx.models.ldm_ddim import LDMDDIMSchedule, make_beta_schedule, make_ddim_timesteps


def test_ddim_timesteps_have_ldm_offset():
    ts = make_ddim_timesteps(500, 1000)
    assert len(ts) == 500 and ts[0] == 1 and ts[1] == 3 and ts[-1] == 999
    assert list(make_ddim_timesteps(4, 20)) == [1, 6, 11, 16]
    with pytest.raises(ValueError):
        make_ddim_timesteps(0, 1000)


def test_cin256_schedule_strength_0382():
    s = LDMDDIMSchedule.from_config()
    betas = np.linspace(0.0015 ** 0.5, 0.0195 ** 0.5, 1000) ** 2
    ab = np.cumprod(1 - betas)
    assert np.allclose(make_beta_schedule("linear", 1000, 0.0015, 0.0195), betas)
    t_enc = s.t_enc(0.382)
    assert t_enc == 191 and s.timesteps[t_enc] == 383
    assert s.alphas[t_enc] == pytest.approx(ab[383]) and s.alphas[t_enc] == pytest.approx(0.260, abs=1e-3)
    assert s.alphas_prev[0] == ab[0] and s.alphas_prev[t_enc] == pytest.approx(ab[381])
    assert s.decode_indices(3) == [2, 1, 0]
    with pytest.raises(ValueError):
        s.t_enc(1.5)


def test_stochastic_encode_and_ddim_step_closed_form():
    s = LDMDDIMSchedule.from_config(ddim_steps=10)
    z0, noise = torch.randn(2, 3, 4, 4, dtype=torch.float64), torch.randn(2, 3, 4, 4, dtype=torch.float64)
    a = s.alphas[5]
    z = s.stochastic_encode(z0, 5, noise=noise)
    assert torch.allclose(z, math.sqrt(a) * z0 + math.sqrt(1 - a) * noise)
    # with the true noise, x̂0 recovers z0 and one step lands on ᾱ_prev's noisy version of it
    assert torch.allclose(s.pred_x0(z, noise, 5), z0)
    ap = s.alphas_prev[5]
    assert torch.allclose(s.step(z, noise, 5), math.sqrt(ap) * z0 + math.sqrt(1 - ap) * noise)
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    assert torch.equal(s.stochastic_encode(z0, 5, generator=g1), s.stochastic_encode(z0, 5, generator=g2))


def test_consensus_mask_extremes():
    g = torch.Generator().manual_seed(0)
    delta, score = torch.randn(2, 3, 5, 5, generator=g), torch.randn(2, 3, 5, 5, generator=g)
    assert torch.equal(consensus_zero_binning(delta, score, 180.0), score)
    assert torch.count_nonzero(consensus_zero_binning(delta, score, 0.0)) == 0


def test_consensus_per_pixel_hand_made():
    delta = torch.zeros(1, 2, 1, 3)
    score = torch.zeros(1, 2, 1, 3)
    delta[0, :, 0, 0], score[0, :, 0, 0] = torch.tensor([1.0, 0.0]), torch.tensor([2.0, 0.0])  # 0°
    delta[0, :, 0, 1], score[0, :, 0, 1] = torch.tensor([1.0, 0.0]), torch.tensor([1.0, 1.0])  # 45°
    delta[0, :, 0, 2], score[0, :, 0, 2] = torch.tensor([1.0, 0.0]), torch.tensor([-1.0, 1.0])  # 135°
    angles = consensus_angles(delta, score)
    assert torch.allclose(angles[0, 0], torch.tensor([0.0, 45.0, 135.0]), atol=1e-4)
    out = consensus_zero_binning(delta, score, 60.0)
    assert torch.equal(out[..., :2], score[..., :2]) and torch.count_nonzero(out[..., 2]) == 0
    # binning turns the 135° pixel onto the 60° cone boundary towards Δ (rotated by θ from s_c) instead of zeroing
    b = consensus_binning(delta, score, 60.0)
    assert torch.equal(b[..., :2], score[..., :2])
    assert consensus_angles(score, b)[0, 0, 2] == pytest.approx(60.0, abs=1e-3)
    assert consensus_angles(delta, b)[0, 0, 2] == pytest.approx(75.0, abs=1e-3)
    with pytest.raises(ValueError):
        consensus_zero_binning(delta, score[:, :1], 45.0)


def test_consensus_whole_vector():
    delta = torch.tensor([[1.0, 0.0]]).view(1, 2, 1, 1)
    score = torch.tensor([[0.0, 1.0]]).view(1, 2, 1, 1)  # 90° apart
    out = consensus_whole(delta, score, 30.0)
    assert consensus_angles(score, out)[0, 0, 0] == pytest.approx(30.0, abs=1e-3)
    assert torch.equal(consensus_whole(delta, delta * 2, 30.0), delta * 2)


def test_norm_matching():
    g = torch.Generator().manual_seed(1)
    score, ref = torch.randn(3, 4, 2, 2, generator=g), torch.randn(3, 4, 2, 2, generator=g) * 7
    out = match_norm(score, ref, lam=0.5)
    assert torch.allclose(out.flatten(1).norm(dim=1), 0.5 * ref.flatten(1).norm(dim=1))
    cos = torch.nn.functional.cosine_similarity(out.flatten(1), score.flatten(1))
    assert torch.allclose(cos, torch.ones(3))
    assert torch.equal(match_norm(torch.zeros(1, 2), torch.ones(1, 2)), torch.zeros(1, 2))


def test_projected_eps_composition():
    g = torch.Generator().manual_seed(2)
    eps_u, eps_c, gc, gd = (torch.randn(2, 3, 4, 4, generator=g) for _ in range(4))
    out = projected_eps(eps_u, eps_c, gc, gd, 0.3, scale=3.0, theta_deg=180.0)
    delta = eps_c - eps_u
    n = delta.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
    expected = eps_u + 3.0 * (n * -gc / gc.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
                              + n * gd / gd.flatten(1).norm(dim=1).view(-1, 1, 1, 1))
    assert torch.allclose(out, expected, atol=1e-5)
    assert torch.allclose(free_eps(eps_u, eps_c, 3.0), eps_u + 3 * delta)
    with pytest.raises(ValueError):
        projected_eps(eps_u, eps_c, gc, gd, 0.3, cone_projection_type="nope")


class _TinyUNet(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = torch.nn.Embedding(3, 4)  # class 2 = null class
        self.conv = torch.nn.Conv2d(4, 4, 3, padding=1)

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.conv(x + self.emb(y)[:, :, None, None]) + t.view(-1, 1, 1, 1) / 1000)


def _guided_step(z, schedule, i, unet, decoder, classifier, x_init, target):
    z = z.detach().requires_grad_(True)
    t = torch.full((z.shape[0],), int(schedule.timesteps[i]))
    eps = unet(torch.cat([z, z]), torch.cat([t, t]), torch.cat([torch.full_like(target, 2), target]))
    eps_u, eps_c = eps.chunk(2)
    x0 = decoder(schedule.pred_x0(z, eps_u, i))
    dist = (((x0 + 1) / 2).clamp(0, 1) - x_init).abs().sum()
    g_d = torch.autograd.grad(dist, z, retain_graph=True)[0]
    ll = torch.log_softmax(classifier(x0), 1).gather(1, target[:, None]).sum()
    g_c = torch.autograd.grad(ll, z)[0]
    eps_hat = projected_eps(eps_u.detach(), eps_c.detach(), g_c, g_d, float(schedule.alphas[i]), theta_deg=45.0)
    return schedule.step(z.detach(), eps_hat, i)


def test_guided_ddim_step_tiny_models_deterministic():
    torch.manual_seed(0)
    unet, decoder = _TinyUNet(), torch.nn.ConvTranspose2d(4, 3, 2, stride=2)
    classifier = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 2))
    schedule = LDMDDIMSchedule.from_config(ddim_steps=50)
    x_init, target = torch.rand(2, 3, 8, 8), torch.tensor([0, 1])
    z0 = torch.randn(2, 4, 4, 4)
    outs = []
    for _ in range(2):
        z = schedule.stochastic_encode(z0, 10, generator=torch.Generator().manual_seed(5))
        outs.append((z, _guided_step(z, schedule, 9, unet, decoder, classifier, x_init, target)))
    (z_a, step_a), (z_b, step_b) = outs
    assert torch.equal(step_a, step_b)
    assert not torch.allclose(step_a, z_a) and torch.isfinite(step_a).all()


class _FakeLDM(torch.nn.Module):
    """The ``cfx.models.ldm.LatentDiffusion`` interface LDCE uses, around the tiny UNet and decoder above (class 2
    is the null class); ``tests/test_ldce_pipeline.py`` runs the real tiny LDM."""

    num_timesteps, linear_start, linear_end = 1000, 0.0015, 0.0195

    def __init__(self) -> None:
        super().__init__()
        self.unet = _TinyUNet()
        self.decoder = torch.nn.ConvTranspose2d(4, 3, 2, stride=2)
        self.encoder = torch.nn.Conv2d(3, 4, 2, stride=2)

    def encode_first_stage(self, x, generator=None):
        return self.encoder(x)

    def decode_first_stage(self, z):
        return self.decoder(z)

    def get_learned_conditioning(self, c):
        return c

    def unconditional_conditioning(self, batch):
        return torch.full((batch,), 2, dtype=torch.long)

    def apply_model(self, x, t, cond):
        return self.unet(x, t, cond)


def _tiny_setup():
    torch.manual_seed(0)
    ldm = _FakeLDM().requires_grad_(False)
    classifier = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 2)).requires_grad_(False)
    return ldm, classifier


def test_guided_eps_composes_the_upstream_step():
    from cfx.methods.ldce import DEFAULTS, guided_eps

    ldm, classifier = _tiny_setup()
    schedule = LDMDDIMSchedule.from_config(ddim_steps=50)
    x_init, target = torch.rand(2, 3, 8, 8), torch.tensor([0, 1])
    z = schedule.stochastic_encode(torch.randn(2, 4, 4, 4), 10, generator=torch.Generator().manual_seed(5))
    cfg = {**DEFAULTS, "deg_cone_projection": 45.0, "classifier_lambda": 1.0, "dist_lambda": 1.0}
    eps, prob, x0 = guided_eps(ldm, classifier, z, 9, schedule, target, torch.full_like(target, 2), target,
                               x_init, cfg)
    expected_next = _guided_step(z, schedule, 9, ldm.unet, ldm.decoder, classifier, x_init, target)
    assert torch.allclose(schedule.step(z, eps, 9), expected_next, atol=1e-5)
    assert prob.shape == (2,) and ((prob > 0) & (prob < 1)).all() and x0.shape == (2, 3, 8, 8)
    # no classifier and no distance: ε̂ = ε_u; free guidance: classifier-free ε_u + s·(ε_c − ε_u)
    t = torch.full((4,), int(schedule.timesteps[9]))
    eps_u, eps_c = ldm.unet(torch.cat([z, z]), t, torch.tensor([2, 2, 0, 1])).chunk(2)
    plain, none_prob, _ = guided_eps(ldm, classifier, z, 9, schedule, target, torch.full_like(target, 2), target,
                                     x_init, {**cfg, "classifier_lambda": 0.0, "lp_custom": 0})
    assert torch.allclose(plain, eps_u) and none_prob is None
    free, _, _ = guided_eps(ldm, classifier, z, 9, schedule, target, torch.full_like(target, 2), target, x_init,
                            {**cfg, "guidance": "free"})
    assert torch.allclose(free, eps_u + 3.0 * (eps_c - eps_u), atol=1e-6)
    # with θ = 180° nothing is filtered and both scores carry λ·‖Δ‖ per sample
    only_cls, _, _ = guided_eps(ldm, classifier, z, 9, schedule, target, torch.full_like(target, 2), target,
                                x_init, {**cfg, "deg_cone_projection": 180.0, "lp_custom": 0, "scale": 1.0})
    assert torch.allclose((only_cls - eps_u).flatten(1).norm(dim=1), (eps_c - eps_u).flatten(1).norm(dim=1),
                          rtol=1e-4)


def test_generate_is_per_image_deterministic_and_fills_the_output():
    from cfx.methods.ldce import generate

    ldm, classifier = _tiny_setup()
    images = torch.rand(3, 3, 8, 8) * 2 - 1
    models = {"ldm": ldm, "classifier": classifier}
    config = {"ddim_steps": 50, "strength": 0.1, "deg_cone_projection": 60.0}
    targets = torch.tensor([1, 0, 1])

    def gens(seeds):
        return [torch.Generator().manual_seed(s) for s in seeds]

    out = generate(images, torch.zeros(3), models=models, config=config, generators=gens([1, 2, 3]), targets=targets)
    assert out.counterfactuals.shape == images.shape and out.noise.shape == images.shape
    assert out.counterfactuals.min() >= -1 and out.counterfactuals.max() <= 1
    assert torch.equal(out.targets, targets)
    assert {"in_confid", "out_confid", "in_tgt_confid", "out_tgt_confid", "target_confidence", "t_enc",
            "strength", "flipped"} <= set(out.info[0]) and out.info[0]["t_enc"] == 5
    # an image's counterfactual depends on its own generator only, not on the batch it is in
    alone = generate(images[1:2], torch.zeros(1), models=models, config=config, generators=gens([2]),
                     targets=targets[1:2])
    assert torch.allclose(alone.counterfactuals[0], out.counterfactuals[1], atol=1e-5)
    # the last partial batch of a run is no special case (upstream P-L4); frames only when asked (P-L3)
    recorded = generate(images[:1], torch.zeros(1), models=models, config={**config, "record_intermediate": True},
                        generators=gens([1]), targets=targets[:1])
    assert recorded.info[0]["intermediate"].shape == (5, 3, 8, 8) and "intermediate" not in out.info[0]
    with pytest.raises(ValueError, match="explicit targets"):
        generate(images, torch.zeros(3), models=models, config=config, generators=gens([1, 2, 3]))
    with pytest.raises(KeyError, match="bogus"):
        generate(images, torch.zeros(3), models=models, config={"bogus": 1}, generators=gens([1, 2, 3]))


def test_conditioning_inputs():
    from cfx.methods.ldce import conditioning_inputs

    targets = torch.tensor([1, 0])
    assert torch.equal(conditioning_inputs(targets, None), targets)
    assert torch.equal(conditioning_inputs(targets, [2, 3]), torch.tensor([3, 2]))
    prompts = ["a photo of a non-smiling person", "a photo of a smiling person"]
    assert conditioning_inputs(targets, prompts) == prompts[::-1]
