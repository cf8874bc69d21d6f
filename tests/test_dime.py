"""DiME on a tiny random UNet: shapes, flips, per-image seeding, retries, the tau offset, the loss terms."""

import numpy as np
import pytest
import torch

from cfx.methods import get_method
from cfx.methods.dime import distance_gradient, generate
from cfx.models.diffusion import create_gaussian_diffusion
from cfx.runtime.seeding import image_generators, image_seed
from tests.conftest import RedClassifier

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
