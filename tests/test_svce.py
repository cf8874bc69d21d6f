"""SVCE: the exact LMO over the ℓp ball ∩ box, Auto-Frank-Wolfe, radius scaling and the method entry point."""

import itertools

import numpy as np
import pytest
import torch
from scipy.optimize import linprog, minimize

from cfx.methods import get_method
from cfx.methods.svce import (
    afw,
    eval_radius,
    generate,
    lmo_lp_box,
    log_confidence,
    scale_radius,
    two_class_logits,
    variant_names,
)
from cfx.runtime.seeding import image_generators
from tests.factories.networks import RedClassifier

NORMS = [1.0, 1.5, 2.0]


def _reference_value(x: np.ndarray, w: np.ndarray, eps: float, p: float) -> float:
    """max ⟨w, δ⟩ s.t. ‖δ‖_p ≤ ε, −x ≤ δ ≤ 1 − x by an independent solver: an LP (δ = u − v) for p = 1, SLSQP
    from several starts for p > 1."""
    lo, hi = -x, 1 - x
    d = len(x)
    if p == 1:
        res = linprog(np.concatenate([-w, w]), A_ub=np.ones((1, 2 * d)), b_ub=[eps],
                      bounds=[(0, h) for h in hi] + [(0, -l) for l in lo], method="highs")
        assert res.success
        return -res.fun
    rng = np.random.default_rng(0)
    best = -np.inf
    for _ in range(4):
        start = rng.uniform(lo, hi) * 0.01
        res = minimize(lambda z: -w @ z, start, jac=lambda z: -w, bounds=list(zip(lo, hi, strict=True)),
                       constraints=[{"type": "ineq", "fun": lambda z: eps ** p - np.sum(np.abs(z) ** p),
                                     "jac": lambda z: -p * np.sign(z) * np.abs(z) ** (p - 1)}],
                       method="SLSQP", options={"ftol": 1e-13, "maxiter": 300})
        if res.success and np.sum(np.abs(res.x) ** p) <= eps ** p * (1 + 1e-7):
            best = max(best, -res.fun)
    return best


@pytest.mark.parametrize("p", NORMS)
def test_lmo_is_optimal_against_a_convex_solver(p):
    rng = np.random.default_rng(int(10 * p))
    for trial in range(25):
        d = int(rng.integers(2, 7))
        x = rng.uniform(0, 1, d)
        if trial % 3 == 0:  # coordinates on the box faces
            x[0], x[1] = 0.0, 1.0
        w = rng.normal(size=d)
        if trial % 4 == 0:
            w[-1] = 0.0
        eps = float(rng.choice([0.05, 0.3, 1.0, 3.0]))
        delta = lmo_lp_box(torch.tensor(x)[None], torch.tensor(w)[None], eps, p)[0].numpy()
        value = float(w @ delta)
        assert value >= _reference_value(x, w, eps, p) - 1e-7, (trial, d, eps)
        assert np.sum(np.abs(delta) ** p) ** (1 / p) <= eps * (1 + 1e-9)
        assert np.all(x + delta >= -1e-12) and np.all(x + delta <= 1 + 1e-12)


@pytest.mark.parametrize("p", NORMS)
def test_lmo_beats_every_point_of_a_brute_force_grid(p):
    """d = 2: no feasible point of a fine grid over the box has a larger objective, and the best grid point is
    close (the grid resolution) to the LMO's value."""
    rng = np.random.default_rng(int(7 * p))
    grid = np.linspace(0, 1, 401)
    for _ in range(10):
        x, w, eps = rng.uniform(0, 1, 2), rng.normal(size=2), float(rng.uniform(0.05, 1.2))
        delta = lmo_lp_box(torch.tensor(x)[None], torch.tensor(w)[None], eps, p)[0].numpy()
        points = np.stack(np.meshgrid(grid, grid), -1).reshape(-1, 2) - x
        feasible = points[np.sum(np.abs(points) ** p, axis=1) <= eps ** p]
        best = float((feasible @ w).max())
        assert float(w @ delta) >= best - 1e-9
        assert float(w @ delta) <= best + 2 * np.abs(w).sum() / 400


@pytest.mark.parametrize("p", NORMS)
def test_lmo_is_feasible_batched_and_per_sample(p):
    torch.manual_seed(0)
    x, w = torch.rand(5, 3, 16, 16), torch.randn(5, 3, 16, 16)
    x[0, 0] = 0.0
    x[1, 1] = 1.0
    eps = torch.tensor([0.0, 0.5, 3.0, 8.0, 1e4])
    delta = lmo_lp_box(x, w, eps, p)
    assert delta.shape == x.shape and delta.dtype == x.dtype
    norms = delta.double().flatten(1).norm(p=p, dim=1)
    assert torch.all(norms <= eps.double() * (1 + 1e-6) + 1e-6)
    assert torch.all(x + delta >= -1e-6) and torch.all(x + delta <= 1 + 1e-6)
    assert torch.all(delta * w >= 0)  # every coordinate moves along its gradient sign
    assert torch.all(delta[0] == 0)
    # a radius larger than the whole box returns the box vertex; a binding one is met with equality
    vertex = torch.where(w[4] > 0, 1 - x[4], torch.where(w[4] < 0, -x[4], torch.zeros_like(x[4])))
    torch.testing.assert_close(delta[4], vertex)
    assert norms[1:4].tolist() == pytest.approx(eps[1:4].tolist(), rel=1e-5)
    for k in range(5):  # each sample is solved on its own
        torch.testing.assert_close(lmo_lp_box(x[k:k + 1], w[k:k + 1], float(eps[k]), p), delta[k:k + 1])


def test_lmo_refuses_p_below_one_and_negative_radii():
    x, w = torch.rand(1, 4), torch.randn(1, 4)
    with pytest.raises(ValueError, match="p >= 1"):
        lmo_lp_box(x, w, 1.0, 0.5)
    with pytest.raises(ValueError, match="non-negative"):
        lmo_lp_box(x, w, -1.0, 1.5)


def test_radius_scaling_keeps_the_per_pixel_budget():
    """ε_d = ε_D (d/D)^(1/p): a 32 px perturbation fits its scaled radius exactly when its nearest-neighbour
    upsampling to 224 px fits the 224 px radius."""
    assert scale_radius(100, 3 * 224 * 224, 1.5) == pytest.approx(100)
    assert scale_radius(100, 3 * 32 * 32, 1.5) == pytest.approx(100 * (1024 / 50176) ** (2 / 3))
    assert scale_radius(7.0, 12, 2.0, reference_size=None) == 7.0
    torch.manual_seed(0)
    delta = torch.randn(1, 3, 32, 32, dtype=torch.float64) * 0.01
    for p in NORMS:
        up = delta.repeat_interleave(7, dim=2).repeat_interleave(7, dim=3)
        ratio = float(up.flatten().norm(p=p) / delta.flatten().norm(p=p))
        assert ratio == pytest.approx(100 / scale_radius(100, 3 * 32 * 32, p), rel=1e-5)


class TinyNet(torch.nn.Module):
    """A small fixed random 3-class conv net on [0,1] images."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(3)
        self.body = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.Tanh(),
                                        torch.nn.AdaptiveAvgPool2d(2), torch.nn.Flatten(), torch.nn.Linear(32, 3))

    def forward(self, x):
        return 4 * self.body(x)


@pytest.mark.parametrize("p", NORMS)
def test_afw_best_iterate_never_gets_worse_and_stays_feasible(p):
    net = TinyNet().eval().requires_grad_(False)
    torch.manual_seed(1)
    x = torch.rand(4, 3, 8, 8)
    targets = torch.tensor([0, 1, 2, 1])
    eps = 2.0

    def loss_fn(z):
        return log_confidence(net(z), targets)

    result = afw(loss_fn, x, eps, torch.randn_like(x), p=p, n_iter=30)
    assert result.trace.shape == (31, 4)
    assert torch.all(result.trace[1:] >= result.trace[:-1])  # the best target log-probability never decreases
    torch.testing.assert_close(result.trace[-1], result.loss_best)
    torch.testing.assert_close(loss_fn(result.x_best), result.loss_best, atol=1e-5, rtol=1e-5)
    assert torch.all(result.loss_best > loss_fn(x))  # better than doing nothing
    for z in (result.x_best, result.x_init):
        assert torch.all((z - x).flatten(1).norm(p=p, dim=1) <= eps * (1 + 1e-5))
        assert torch.all(z >= -1e-6) and torch.all(z <= 1 + 1e-6)


def test_afw_step_size_schedule_halves_at_the_apgd_checkpoints():
    """A flat loss never rises, so η halves at every checkpoint: for 75 iterations after 16, then every
    14, 12, 10, 8, 6, 4, 4 steps (k_c from ⌊0.22·75⌋ = 16 down by ⌊0.03·75⌋ = 2 to ⌊0.06·75⌋ = 4): 8 halvings."""
    x = torch.rand(2, 3, 4, 4)
    checkpoints = list(itertools.accumulate([16, 14, 12, 10, 8, 6, 4, 4]))
    assert checkpoints[-1] <= 75 < checkpoints[-1] + 4
    result = afw(lambda z: (z * 0).flatten(1).sum(1), x, 1.0, torch.randn_like(x), n_iter=75)
    assert result.halvings.tolist() == [8, 8]
    assert result.step_size.tolist() == pytest.approx([0.75 / 2 ** 8] * 2)


def test_two_class_logits_turn_a_query_logit_into_softmax_sigmoid():
    z = torch.tensor([-2.0, 0.0, 3.0])
    probs = two_class_logits(z).softmax(1)
    torch.testing.assert_close(probs[:, 1], torch.sigmoid(z))
    torch.testing.assert_close(two_class_logits(z[:, None]), two_class_logits(z))
    assert two_class_logits(torch.zeros(2, 5)).shape == (2, 5)


def _red_batch(n=4):
    torch.manual_seed(2)
    images = torch.rand(n, 3, 16, 16) * 0.6 - 0.3
    images[::2, 0] -= 0.15  # logit ≈ −1.5: "not red"
    images[1::2, 0] += 0.15  # logit ≈ +1.5: "red"
    return images


CONFIG = {"radii": [1.0, 2.0, 4.0], "radii_reference_size": None, "n_iter": 20}


def test_generate_flips_a_binary_classifier_and_reports_every_radius():
    images = _red_batch()
    classifier = RedClassifier()
    generators = image_generators(0, "svce", [str(i) for i in range(4)])
    out = generate(images, torch.zeros(4), models={"classifier": classifier}, config=CONFIG, generators=generators)
    assert get_method("svce").generate is generate
    preds = (classifier(images) > 0).long()
    assert out.preds.tolist() == preds.tolist() and out.targets.tolist() == (1 - preds).tolist()
    assert set(out.variants) == set(variant_names(CONFIG)) == {"radius_1", "radius_2"}
    assert out.cf_preds.tolist() == out.targets.tolist()  # the largest radius flips every image
    for radius, output in [(4.0, out), (1.0, out.variants["radius_1"]), (2.0, out.variants["radius_2"])]:
        x01, cf01 = (images + 1) / 2, (output.counterfactuals + 1) / 2
        norms = (cf01 - x01).flatten(1).norm(p=1.5, dim=1)
        for k, info in enumerate(output.info):
            assert info["radius"] == radius and info["eps"] == radius
            assert info["l_p"] == pytest.approx(float(norms[k]), rel=1e-4) and info["l_p"] <= radius * (1 + 1e-5)
            p_one = float(torch.sigmoid(classifier(output.counterfactuals[k:k + 1])))
            expected = p_one if int(output.targets[k]) == 1 else 1 - p_one
            assert info["p_target"] == pytest.approx(expected, abs=1e-5)
            assert info["bkl"] == pytest.approx(1 - info["p_target"])
            assert info["flipped"] == bool(output.cf_preds[k] == output.targets[k])
        assert torch.all(cf01 >= -1e-6) and torch.all(cf01 <= 1 + 1e-6)
    # a larger radius reaches a confidence at least as high here (same start direction distribution)
    assert all(a["p_target"] >= b["p_target"] - 1e-6
               for a, b in zip(out.info, out.variants["radius_1"].info, strict=True))


def test_generate_results_do_not_depend_on_the_batch():
    images = _red_batch()
    classifier = RedClassifier()
    ids = [str(i) for i in range(4)]
    whole = generate(images, torch.zeros(4), models={"classifier": classifier}, config=CONFIG,
                     generators=image_generators(0, "svce", ids))
    for k in range(4):
        alone = generate(images[k:k + 1], torch.zeros(1), models={"classifier": classifier}, config=CONFIG,
                         generators=image_generators(0, "svce", ids[k:k + 1]))
        torch.testing.assert_close(alone.counterfactuals[0], whole.counterfactuals[k], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(alone.variants["radius_1"].noise[0], whole.variants["radius_1"].noise[k])


def test_generate_multiclass_needs_targets_and_accepts_a_unit_range_classifier():
    net = TinyNet().eval().requires_grad_(False)
    images = torch.rand(2, 3, 8, 8) * 2 - 1
    generators = image_generators(0, "svce", ["a", "b"])
    with pytest.raises(ValueError, match="explicit targets"):
        generate(images, torch.zeros(2), models={"classifier01": net}, config=CONFIG, generators=generators)
    out = generate(images, torch.zeros(2), models={"classifier01": net}, config={**CONFIG, "norm": 2.0},
                   generators=generators, targets=torch.tensor([2, 0]))
    assert out.targets.tolist() == [2, 0]
    assert all(info["p_target"] >= info["p_target_original"] for info in out.info)


def test_config_errors_name_the_key():
    with pytest.raises(ValueError, match="eval_radius 3"):
        eval_radius({"radii": [1, 2], "eval_radius": 3})
    assert eval_radius({"radii": [50, 100, 75], "eval_radius": None}) == 100
    assert variant_names({"radii": [50, 75, 100], "eval_radius": 75}) == ["radius_50", "radius_100"]
    with pytest.raises(KeyError, match="step_size"):
        generate(torch.zeros(1, 3, 4, 4), torch.zeros(1), models={"classifier": RedClassifier()},
                 config={"step_size": 1}, generators=image_generators(0, "svce", ["0"]))
