"""ACE on tiny random models: the filter's gradient, checkpointed gradients, the attack, the post-processing."""

import pytest
import torch

from cfx.methods import get_method
from cfx.methods.ace import (
    chained_gradient,
    classification_loss,
    distance_gradient,
    filter_steps,
    generate,
    generate_mask,
    postprocess,
)
from cfx.models.diffusion import create_gaussian_diffusion
from cfx.runtime.seeding import image_generators
from tests.factories.networks import RedClassifier

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def tiny(tiny_unet):
    return tiny_unet, create_gaussian_diffusion(steps=100, learn_sigma=True, timestep_respacing="50")


def _loss_chain(unet, diffusion, k, noise, targets):
    def loss(z):
        return classification_loss(RedClassifier()((z + 1) / 2), targets, multiclass=False)

    return filter_steps(unet, diffusion, k, noise, stochastic=True) + [loss]


def test_filter_gradient_matches_finite_differences(tiny):
    unet, diffusion = tiny
    unet64 = unet.double()
    try:
        torch.manual_seed(2)
        k = 3
        x = torch.rand(1, 3, 16, 16, dtype=torch.float64) * 0.6 + 0.2
        noise = torch.randn(1, k + 1, 3, 16, 16, dtype=torch.float64)
        fns = _loss_chain(unet64, diffusion, k, noise, torch.ones(1))
        grad, _ = chained_gradient(fns, x)
        direction = torch.randn_like(x)
        direction /= direction.norm()

        @torch.no_grad()
        def value(inp):
            state = inp
            for fn in fns:
                state = fn(state)
            return float(state)

        h = 1e-5
        finite = (value(x + h * direction) - value(x - h * direction)) / (2 * h)
        assert float((grad * direction).sum()) == pytest.approx(finite, rel=1e-4, abs=1e-8)
    finally:
        unet.float()


@pytest.mark.parametrize("chunk", [1, 2, 3, 6])
def test_checkpointed_gradient_equals_plain(tiny, chunk):
    unet, diffusion = tiny
    k = 5  # K + 1 = 6 functions: 5 filter steps and the loss
    torch.manual_seed(3)
    x = torch.rand(2, 3, 16, 16)
    noise = torch.randn(2, k + 1, 3, 16, 16)
    fns = _loss_chain(unet, diffusion, k, noise, torch.tensor([1.0, 0.0]))
    plain, loss = chained_gradient(fns, x)
    chunked, loss_chunked = chained_gradient(fns, x, backward_steps=chunk)
    assert torch.allclose(plain, chunked, atol=1e-6, rtol=1e-5)
    assert torch.allclose(loss, loss_chunked)
    assert plain.abs().sum() > 0


def test_classification_term_scales_with_one_over_batch_like_upstream(tiny):
    unet, diffusion = tiny
    x = torch.rand(1, 3, 16, 16)
    noise = torch.randn(1, 4, 3, 16, 16)
    single, _ = chained_gradient(_loss_chain(unet, diffusion, 3, noise, torch.ones(1)), x)
    double, _ = chained_gradient(_loss_chain(unet, diffusion, 3, noise.repeat(2, 1, 1, 1, 1), torch.ones(2)),
                                 x.repeat(2, 1, 1, 1))
    assert torch.allclose(double[0], single[0] / 2, atol=1e-7)
    # while the l1 term is summed: its per-pixel gradient does not depend on the batch
    assert torch.equal(distance_gradient(x, x + 0.1, 1e-3, 0.0), torch.full_like(x, 1e-3))
    assert torch.equal(distance_gradient(x.repeat(2, 1, 1, 1), x.repeat(2, 1, 1, 1) + 0.1, 1e-3, 0.0)[0],
                       torch.full_like(x[0], 1e-3))


def test_batch_reference_gives_every_batch_size_the_results_of_that_batch(tiny):
    """ACE's dependence on the batch is the 1/B of the batch-mean classification loss (the summed l1 term has none):
    with batch_reference R each image gets the gradient of a batch of R, so one batch of 4, or one image at a time,
    reproduces upstream's attack run in batches of 2 (batch_reference null)."""
    from cfx.methods.ace import attack

    unet, diffusion = tiny
    torch.manual_seed(3)
    x = torch.rand(4, 3, 16, 16)
    targets = torch.ones(4)
    config = {"attack_iterations": 4, "attack_step": 5.0, "dist_l1": 0.0035, "sampling_time_fraction": 0.06}

    def run(batch: int, reference: int | None) -> torch.Tensor:
        out = []
        for start in range(0, 4, batch):
            stems = list(range(start, start + batch))
            out.append(attack(x[start:start + batch], targets[start:start + batch], unet=unet, diffusion=diffusion,
                              classifier01=lambda z: RedClassifier()(2 * z - 1),
                              config={**config, "batch_reference": reference},
                              generators=image_generators(4, "ace", stems)))
        return torch.cat(out)

    upstream_at_2 = run(2, None)
    assert not torch.equal(run(4, None), upstream_at_2)  # the faithful default depends on the batch
    torch.testing.assert_close(run(4, 2), upstream_at_2, rtol=0, atol=1e-6)
    torch.testing.assert_close(run(1, 2), upstream_at_2, rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="batch_reference"):
        classification_loss(torch.zeros(2), torch.ones(2), False, batch_reference=0)


def test_mask_dilation_and_threshold_on_a_hand_made_image():
    x = torch.zeros(1, 3, 9, 9)
    pe = x.clone()
    pe[0, :, 4, 4] = 0.5  # one changed pixel: Σ_c = 1.5, the maximum
    pe[0, 0, 0, 0] = 0.3  # a weak change: 0.3 / 1.5 = 0.2
    m, dilated = generate_mask(x, pe, 3)
    assert m[0, 0, 4, 4] == 1 and m[0, 0, 0, 0] == pytest.approx(0.2)
    assert torch.equal(dilated[0, 0, 3:6, 3:6], torch.ones(3, 3))
    assert dilated[0, 0, 1, 1] == pytest.approx(0.2) and dilated[0, 0, 2, 2] == 0
    keep = dilated < 0.15
    assert int((~keep).sum()) == 9 + 4  # the 3x3 block around the strong pixel and the weak corner's 2x2
    with pytest.raises(ValueError, match="odd"):
        generate_mask(x, pe, 4)
    _, none = generate_mask(x, x, 15)  # pe == x: an empty mask, no NaN
    assert torch.equal(none, torch.zeros_like(none))


def test_postprocess_keeps_every_pixel_outside_the_mask(tiny):
    unet, diffusion = tiny
    torch.manual_seed(4)
    x = torch.rand(2, 3, 16, 16)
    pe = x.clone()
    pe[:, :, 4:8, 4:8] = 1 - pe[:, :, 4:8, 4:8]
    config = {"sampling_time_fraction": 0.1, "sampling_inpaint": 0.15, "sampling_dilation": 3}
    ce, noise_image, keep = postprocess(x, pe, unet=unet, diffusion=diffusion, config=config,
                                        generators=image_generators(4, "ace", [0, 1]))
    kept = keep.expand_as(x).bool()
    assert kept.any() and (~kept).any()
    assert torch.equal(ce[kept], x[kept])
    assert not torch.allclose(ce[~kept], x[~kept])
    assert noise_image.shape == x.shape and torch.isfinite(ce).all()
    same, _, keep_same = postprocess(x, x, unet=unet, diffusion=diffusion, config=config,
                                     generators=image_generators(4, "ace", [0, 1]))
    assert torch.equal(same, x) and bool(keep_same.all())


class NeighbourUNet(torch.nn.Module):
    """A stand-in UNet whose ε and variance outputs mix each pixel's 5x5 neighbourhood (the tiny ADM's output layer is
    zero-initialised, so it predicts ε = 0 everywhere and noise in the kept region could not reach the edited one)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 6, 5, padding=2)

    def forward(self, x, t, **kwargs):
        return 0.5 * torch.tanh(self.conv(x))


def upstream_filter(diffusion, unet, steps, pe01, x01, dilated, inpaint, noise_fn):
    """ACE postprocessing.py:filter_fn, re-stated: the start and the kept region are noised with noise_fn (randn_like
    when stochastic, zeros_like when not); here only the non-stochastic case (no sampling noise)."""
    x, orig = 2 * pe01 - 1, 2 * x01 - 1
    keep = (dilated < inpaint).float()
    for idx, t in enumerate(range(steps - 1, -1, -1)):
        ts = torch.full((x.shape[0],), t, dtype=torch.long)
        if idx == 0:
            x = diffusion.q_sample(x, ts, noise=noise_fn(x))
        x = x * (1 - keep) + keep * diffusion.q_sample(orig, ts, noise=noise_fn(x))
        x = diffusion.p_mean_variance(unet, x, ts, clip_denoised=True)["mean"]
    x = x * (1 - keep) + keep * orig
    return ((x + 1) / 2).clamp(0, 1)


def test_postprocess_without_stochastic_sampling_adds_no_noise_like_upstream(tiny):
    """sampling_stochastic false: upstream's filter uses zero noise for the kept region too (postprocessing.py:121,
    132-134); a pre-explanation that changes a small patch keeps most pixels, so noise there would show."""
    _, diffusion = tiny
    torch.manual_seed(5)
    unet = NeighbourUNet()
    x = torch.rand(2, 3, 16, 16)
    pe = x.clone()
    pe[:, :, 6:8, 6:8] = 1 - pe[:, :, 6:8, 6:8]
    config = {"sampling_time_fraction": 0.1, "sampling_inpaint": 0.15, "sampling_dilation": 3,
              "sampling_stochastic": False}
    ce, _, keep = postprocess(x, pe, unet=unet, diffusion=diffusion, config=config,
                              generators=image_generators(4, "ace", [0, 1]))
    again, _, _ = postprocess(x, pe, unet=unet, diffusion=diffusion, config=config,
                              generators=image_generators(99, "ace", [7, 8]))
    assert keep.mean() > 0.5  # most pixels are kept: the case where stray noise mattered
    assert torch.equal(ce, again)  # no random draw at all
    _, dilated = generate_mask(x, pe, 3)
    expected = upstream_filter(diffusion, unet, 5, pe, x, dilated, 0.15, torch.zeros_like)
    torch.testing.assert_close(ce, expected, rtol=0, atol=1e-6)


def test_attack_flips_a_trivial_classifier_and_checkpointing_changes_nothing(tiny):
    unet, diffusion = tiny
    assert get_method("ace").generate is generate
    torch.manual_seed(5)
    images = torch.rand(3, 3, 16, 16) * 1.6 - 0.8
    models = {"unet": unet, "diffusion": diffusion, "classifier": RedClassifier()}
    config = {"attack_iterations": 15, "attack_step": 8.0, "dist_l1": 1e-4, "sampling_time_fraction": 0.06}
    out = generate(images, torch.zeros(3), models=models, config=config,
                   generators=image_generators(4, "ace", [0, 1, 2]))
    assert out.counterfactuals.shape == images.shape and out.counterfactuals.abs().max() <= 1
    assert bool((out.cf_preds == out.targets).all())
    assert max(i["l_inf"] for i in out.info) <= 15 * 8 / 255 + 1e-6
    ckpt = generate(images, torch.zeros(3), models=models, config={**config, "checkpoint_backward_steps": 1},
                    generators=image_generators(4, "ace", [0, 1, 2]))
    assert torch.allclose(out.counterfactuals, ckpt.counterfactuals, atol=1e-5)
    with pytest.raises(KeyError, match="unknown ACE config"):
        generate(images, torch.zeros(3), models=models, config={"steps": 1},
                 generators=image_generators(4, "ace", [0, 1, 2]))
