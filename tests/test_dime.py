"""DiME on a tiny random UNet: shapes, flips, per-image seeding, retries, the tau offset, the loss terms."""

import numpy as np
import pytest
import torch

from cfx.methods import get_method
from cfx.methods.dime import distance_gradient, generate
from cfx.models.diffusion import create_gaussian_diffusion
from cfx.runtime.seeding import image_generators, image_seed
from tests.factories.networks import RedClassifier

torch.set_num_threads(1)
CONFIG = {"start_step": 3, "classifier_scales": [8, 10, 15], "use_logits": True, "l1_loss": 0.05, "l_perc": 0.0}


class ConstantClassifier(torch.nn.Module):
    def forward(self, x):
        return 5 + 0 * x.mean(dim=(1, 2, 3))


class CountingUNet(torch.nn.Module):
    def __init__(self, unet):
        super().__init__()
        self.unet, self.timesteps = unet, []

    def forward(self, x, t):
        self.timesteps.append(t.tolist())
        return self.unet(x, t)


@pytest.fixture(scope="module")
def models(tiny_unet):
    diffusion = create_gaussian_diffusion(steps=100, learn_sigma=True, timestep_respacing="10")
    return {"unet": tiny_unet, "diffusion": diffusion, "classifier": RedClassifier()}


def _images(n=6):
    torch.manual_seed(1)
    return (torch.rand(n, 3, 16, 16) * 1.6 - 0.8).clamp(-1, 1)


def _run(models, images, ids, config=CONFIG):
    return generate(images, torch.zeros(len(ids), dtype=torch.long), models=models, config=config,
                    generators=image_generators(4, "dime", ids))


def test_registry_and_shapes_and_flips(models):
    assert get_method("dime").generate is generate
    images = _images()
    out = _run(models, images, list(range(6)))
    assert out.counterfactuals.shape == images.shape and out.noise.shape == images.shape
    assert torch.isfinite(out.counterfactuals).all()
    assert torch.equal(out.targets, 1 - out.preds)
    assert int((out.cf_preds == out.targets).sum()) >= 5
    for k, info in enumerate(out.info):
        p = torch.sigmoid(models["classifier"](out.counterfactuals[k:k + 1]))[0]
        p_target = p if out.targets[k] == 1 else 1 - p
        assert info["bkl"] == pytest.approx(float(1 - p_target), abs=1e-5)


def test_results_do_not_depend_on_batching_or_chunking(models):
    images = _images()
    ids = [f"{i:07d}" for i in range(6)]
    whole = _run(models, images, ids).counterfactuals
    pairs = torch.cat([_run(models, images[i:i + 2], ids[i:i + 2]).counterfactuals for i in (0, 2, 4)])
    chunked = torch.empty_like(whole)
    for c in range(3):
        idx = [i for i in range(6) if i % 3 == c]
        chunked[idx] = _run(models, images[idx], [ids[i] for i in idx]).counterfactuals
    assert torch.allclose(whole, pairs, atol=1e-5)
    assert torch.allclose(whole, chunked, atol=1e-5)
    other_seed = generate(images, torch.zeros(6), models=models, config=CONFIG,
                          generators=image_generators(5, "dime", ids)).counterfactuals
    assert not torch.allclose(whole, other_seed, atol=1e-3)


def test_unflipped_images_are_retried_and_flipped_ones_are_not(models):
    counting = CountingUNet(models["unet"])
    tau = CONFIG["start_step"]
    per_attempt = tau * (tau + 1) // 2  # outer steps + nested refreshes
    never = {**models, "unet": counting, "classifier": ConstantClassifier()}
    out = _run(never, _images(2), [0, 1])
    assert [i["classifier_scale"] for i in out.info] == [15.0, 15.0]
    assert len(counting.timesteps) == 3 * per_attempt
    counting.timesteps.clear()
    easy = {**models, "unet": counting}
    out = _run(easy, _images(2), [0, 1], {**CONFIG, "classifier_scales": [50, 60]})
    assert [i["classifier_scale"] for i in out.info] == [50.0, 50.0]
    assert len(counting.timesteps) == per_attempt


def test_tau_offset_noise_at_tau_first_denoising_at_tau_minus_one(models):
    counting = CountingUNet(models["unet"])
    d = models["diffusion"]
    images = _images(1)
    out = _run({**models, "unet": counting}, images, [7], {**CONFIG, "classifier_scales": [8]})
    tau = CONFIG["start_step"]
    assert counting.timesteps[0] == [int(d.timestep_map[tau - 1])]
    eps = torch.randn(images.shape[1:], generator=torch.Generator().manual_seed(image_seed(4, "dime", 7)))
    expected = d.sqrt_alphas_cumprod[tau] * images[0] + d.sqrt_one_minus_alphas_cumprod[tau] * eps
    assert torch.allclose(out.noise[0], expected.float(), atol=1e-5)


def test_l1_gradient_is_lambda_times_sign_on_the_noisy_image():
    z, x = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    grad = distance_gradient(z, x.clone(), x, torch.tensor(0.5), {"l1_loss": 0.05, "l2_loss": 0.0, "l_perc": 0.0})
    assert torch.allclose(grad, 0.05 * torch.sign(z - x))
    none = distance_gradient(z, x, x, torch.tensor(0.5), {"l1_loss": 0.0, "l2_loss": 0.0, "l_perc": 0.0})
    assert none == 0.0


def test_config_errors(models):
    with pytest.raises(ValueError, match="l_perc: 0"):
        _run(models, _images(1), [0], {**CONFIG, "l_perc": 30.0})
    with pytest.raises(KeyError, match="unknown DiME config keys"):
        _run(models, _images(1), [0], {**CONFIG, "step_size": 1})
    with pytest.raises(ValueError, match="start_step"):
        _run(models, _images(1), [0], {**CONFIG, "start_step": 10})


def test_image_seed_is_stable_and_distinct():
    assert image_seed(4, "dime", "0000001") == image_seed(4, "dime", "0000001")
    seeds = {image_seed(4, m, i) for m in ("dime", "ace") for i in range(100)}
    assert len(seeds) == 200 and all(0 <= s < 2**63 for s in seeds)
    assert np.isclose(float(torch.randn(1, generator=image_generators(4, "dime", [3])[0])),
                      float(torch.randn(1, generator=torch.Generator().manual_seed(image_seed(4, "dime", 3)))))


class CurvedClassifier(torch.nn.Module):
    """logit = 10·mean(red) + 5·mean(green²) − 1: its gradient depends on where it is evaluated."""

    def forward(self, x):
        return 10 * x[:, 0].mean(dim=(1, 2)) + 5 * (x[:, 1] ** 2).mean(dim=(1, 2)) - 1


class SquareFeatures(torch.nn.Module):
    """A stand-in 'perceptual network' φ(x) = x² that counts its calls."""

    def __init__(self):
        super().__init__()
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return x ** 2


def _reference_tau2(models, x, y, gen, scale, l1, lp):
    """DiME by hand for τ = 2 (docs/upstream/dime_ace.md §1.3), with analytic gradients and the generator read in
    the order q_sample noise, outer step i = 1 (the i = 0 draws are multiplied by 0 upstream)."""
    d, unet = models["diffusion"], models["unet"]
    hw = x.shape[-1] * x.shape[-2]

    def grad_cls(x_t):  # ∇ of −s·(2y−1)·logit
        g = torch.zeros_like(x_t)
        g[:, 0] = 10 / hw
        g[:, 1] = 10 * x_t[:, 1] / hw
        return -scale * (2 * y - 1) * g

    def grad_perc(x_t):  # ∇ of lp·mean((x_t² − x²)²)
        return lp * 2 * (x_t ** 2 - x ** 2) * 2 * x_t / x.numel()

    def pmv(z, i):
        return d.p_mean_variance(unet, z, torch.tensor([i]), clip_denoised=True)

    z = d.sqrt_alphas_cumprod[2] * x + d.sqrt_one_minus_alphas_cumprod[2] * torch.randn(x.shape[1:], generator=gen)
    z = z.float()
    out = pmv(z, 1)
    a1 = float(d.sqrt_alphas_cumprod[1])
    g = grad_cls(x) / a1 + l1 * torch.sign(z - x) + grad_perc(x) / a1
    z1 = out["mean"] - out["variance"] * g + torch.exp(0.5 * out["log_variance"]) * torch.randn(x.shape[1:],
                                                                                              generator=gen)
    x_t = pmv(z1, 0)["mean"]  # the nested refresh: one unguided step from index 0
    out = pmv(z1, 0)
    a0 = float(d.sqrt_alphas_cumprod[0])
    g = grad_cls(x_t) / a0 + l1 * torch.sign(z1 - x) + grad_perc(x_t) / a0
    return out["mean"] - out["variance"] * g


def test_matches_a_hand_computation_of_two_guided_steps(models):
    images = _images(2)
    perceptual = SquareFeatures()
    m = {**models, "classifier": CurvedClassifier(), "perceptual": perceptual}
    config = {**CONFIG, "start_step": 2, "classifier_scales": [8], "l1_loss": 0.05, "l_perc": 30.0}
    ids = ["0000011", "0000012"]
    out = generate(images, torch.zeros(2), models=m, config=config, generators=image_generators(4, "dime", ids))
    assert perceptual.calls > 0
    for k in range(2):
        gen = torch.Generator().manual_seed(image_seed(4, "dime", ids[k]))
        y = float(out.targets[k])
        expected = _reference_tau2(m, images[k:k + 1], y, gen, 8.0, 0.05, 30.0)[0]
        error = (out.counterfactuals[k] - expected).abs().max()
        assert error < 1e-5, error
    # the perceptual and classifier terms matter: without them (or with a different scale) the CF changes
    other = generate(images, torch.zeros(2), models=m, config={**config, "l_perc": 0.0},
                     generators=image_generators(4, "dime", ids))
    assert (other.counterfactuals - out.counterfactuals).abs().max() > 1e-4


def test_perceptual_network_unused_when_l_perc_is_zero(models):
    perceptual = SquareFeatures()
    _run({**models, "perceptual": perceptual}, _images(2), [0, 1])
    assert perceptual.calls == 0


def test_gradient_terms_signs_and_rescaling():
    from cfx.methods.dime import classifier_gradient

    x = torch.randn(2, 3, 4, 4)
    targets = torch.tensor([1, 0])
    grad = classifier_gradient(x, targets, RedClassifier(), 8.0, use_logits=True)
    # −s·∇ℓ: pushes the red channel up for target 1 and down for target 0; zero on the other channels
    assert torch.allclose(grad[0, 0], torch.full((4, 4), -8 * 10 / 16)) and torch.allclose(grad[1, 0],
                                                                                            torch.full((4, 4), 80 / 16))
    assert grad[:, 1:].abs().max() == 0
    # use_logits False: −log σ(ℓ) → −s·(1 − σ(ℓ))·∇ℓ
    grad_bce = classifier_gradient(x, targets, RedClassifier(), 8.0, use_logits=False)
    logit = RedClassifier()(x)
    weight = 1 - torch.sigmoid(torch.where(targets == 1, logit, -logit))
    assert torch.allclose(grad_bce[:, 0], grad[:, 0] * weight.view(2, 1, 1), atol=1e-6)
    # perceptual: ∇_{x_t} λ_p Σ_b mean((φ(x_t) − φ(x))²) ÷ √ᾱ, on x_t (not z_t)
    x_t, z = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    cfg = {"l1_loss": 0.0, "l2_loss": 0.0, "l_perc": 30.0}
    grad_p = distance_gradient(z, x_t, x, torch.tensor(0.5), cfg, perceptual=SquareFeatures())
    expected = 30 * 2 * (x_t ** 2 - x ** 2) * 2 * x_t / 48 / 0.5
    assert torch.allclose(grad_p, expected, atol=1e-5)
    with pytest.raises(ValueError, match="perceptual"):
        distance_gradient(z, x_t, x, torch.tensor(0.5), cfg, perceptual=None)


def test_mixed_batch_reruns_only_unflipped_images(models):
    class HalfEditable(torch.nn.Module):
        """Image 0 (green −1): logit from its red channel (flips); image 1 (green +1): stuck at +5 (the random
        UNet moves the green mean of these CFs to about ∓0.35, well clear of the threshold 0)."""

        def forward(self, x):
            stuck = x[:, 1].mean(dim=(1, 2)) > 0
            return torch.where(stuck, torch.full_like(x[:, 0, 0, 0], 5.0), 10 * x[:, 0].mean(dim=(1, 2)))

    images = _images(2)
    images[1, 1] = 1.0
    images[0, 1] = -1.0
    counting = CountingUNet(models["unet"])
    out = _run({**models, "unet": counting, "classifier": HalfEditable()}, images, [0, 1],
               {**CONFIG, "classifier_scales": [50, 60, 70]})
    tau = CONFIG["start_step"]
    per_attempt = tau * (tau + 1) // 2
    batch_sizes = [len(t) for t in counting.timesteps]
    assert batch_sizes == [2] * per_attempt + [1] * (2 * per_attempt)
    assert [i["attempts"] for i in out.info] == [1, 3]
    assert [i["classifier_scale"] for i in out.info] == [50.0, 70.0]
    assert [i["flipped"] for i in out.info] == [True, False]


def test_guided_iterations_stop_guidance_and_refresh(models):
    counting = CountingUNet(models["unet"])
    _run({**models, "unet": counting, "classifier": ConstantClassifier()}, _images(1), [0],
         {**CONFIG, "start_step": 4, "classifier_scales": [8], "guided_iterations": 1})
    # 4 outer steps + one nested refresh of 3 steps after the first (guided) step only
    assert len(counting.timesteps) == 4 + 3
    counting.timesteps.clear()
    _run({**models, "unet": counting, "classifier": ConstantClassifier()}, _images(1), [0],
         {**CONFIG, "start_step": 4, "classifier_scales": "8"})
    assert len(counting.timesteps) == 4 * 5 // 2


def test_info_l1_is_upstream_quantised_l1(models):
    from cfx.io.images import to_uint8

    images = _images(2)
    out = _run(models, images, [0, 1])
    for k in range(2):
        x_u8 = to_uint8(images[k], mode="truncate").astype(np.float64)
        cf_u8 = to_uint8(out.counterfactuals[k], mode="clamp").astype(np.float64)
        assert out.info[k]["l_1"] == pytest.approx(np.abs(x_u8 - cf_u8).mean() / 255, abs=1e-6)
        assert out.info[k]["l_1"] > 0


def test_randn_per_image_does_not_depend_on_the_batch():
    from cfx.runtime.seeding import randn_per_image

    ids = ["a", "b", "c"]
    together = randn_per_image(image_generators(1, "dime", ids), (2, 3))
    alone = torch.cat([randn_per_image(image_generators(1, "dime", [i]), (2, 3)) for i in ids])
    reordered = randn_per_image(image_generators(1, "dime", ids[::-1]), (2, 3))
    assert together.shape == (3, 2, 3) and torch.equal(together, alone) and torch.equal(together, reordered.flip(0))
    assert not torch.equal(together[0], together[1])


def test_nested_refresh_samples_only_with_use_sampling_on_x_t(models):
    # τ = 3: the refresh after the first outer step runs two inner steps, the first of which adds noise when
    # use_sampling_on_x_t is on; posterior means only when off, so the results must differ
    images = _images(2)
    on = _run(models, images, [0, 1], {**CONFIG, "classifier_scales": [8]}).counterfactuals
    off = _run(models, images, [0, 1], {**CONFIG, "classifier_scales": [8], "use_sampling_on_x_t": False})
    assert (on - off.counterfactuals).abs().max() > 1e-4


def test_unknown_method_lists_the_known_ones():
    with pytest.raises(KeyError, match="known methods: ace, dime"):
        get_method("dimee")


def test_threaded_draws_equal_serial_draws():
    from cfx.runtime.seeding import randn_per_image

    ids = list(range(5))
    threads = torch.get_num_threads()
    gens = image_generators(2, "dime", ids)
    try:
        torch.set_num_threads(2)
        threaded = [randn_per_image(gens, (3, 64, 64)) for _ in range(2)]  # two consecutive steps
    finally:
        torch.set_num_threads(threads)
    gens = image_generators(2, "dime", ids)
    serial = [torch.stack([torch.randn(3, 64, 64, generator=g) for g in gens]) for _ in range(2)]
    assert all(torch.equal(a, b) for a, b in zip(threaded, serial, strict=True))
