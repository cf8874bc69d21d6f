"""GCD: proxy, directions, line search, transfer and BB-LIG against reference computations."""

import math

import numpy as np
import pytest
import torch

from cfx.methods import gcd
from cfx.models.diffae import DiffAE, create_diffae


def test_uniform_norm_perturbations_have_uniform_norms():
    gen = torch.Generator().manual_seed(0)
    z_src = torch.randn(1, 16)
    z = gcd.uniform_norm_perturbations(z_src, 4000, 0.5, gen)
    norms = (z - z_src).norm(dim=1)
    assert norms.max() <= 0.5 + 1e-6
    # U(0, 0.5): mean 0.25, quartiles 0.125 / 0.375
    assert abs(norms.mean() - 0.25) < 0.01
    assert abs(torch.quantile(norms, 0.25) - 0.125) < 0.01 and abs(torch.quantile(norms, 0.75) - 0.375) < 0.01
    # directions are isotropic: the mean unit vector is ~0
    assert ((z - z_src) / norms[:, None]).mean(0).norm() < 0.1


def _known(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    logits = torch.stack([3 * z[:, 0] - 2 * z[:, 1], z[:, 2] + 0.5], dim=1)
    lpips = torch.sigmoid(2 * z[:, 3] - z[:, 4] + z[:, 0] * z[:, 1])
    return logits, lpips


def test_proxy_fits_a_known_function_and_its_data_accumulate():
    gen = torch.Generator().manual_seed(1)
    trainer = gcd.ProxyTrainer([6, 32, 16, 3], batch_size=64, n_val_batches=1, lr=1e-2, seed=3)
    for k in range(2):
        z = gcd.uniform_norm_perturbations(torch.zeros(1, 6), 512, 1.0, gen)
        trainer.add(z, *_known(z))
        assert len(trainer.val_batches) == k + 1 and len(trainer.train_batches) == 7 * (k + 1)
    fit = trainer.fit(400)
    assert fit["train_size"] == 2 * 512 - 2 * 64
    z = gcd.uniform_norm_perturbations(torch.zeros(1, 6), 500, 1.0, gen)
    logits, lpips = _known(z)
    with torch.no_grad():
        p_logits, p_lpips = trainer.model(z)
    r2 = 1 - (p_logits - logits).pow(2).sum(0) / (logits - logits.mean(0)).pow(2).sum(0)
    assert (r2 > 0.95).all(), r2
    assert 1 - (p_lpips - lpips).pow(2).sum() / (lpips - lpips.mean()).pow(2).sum() > 0.95
    # early stopping: the last epoch's validation loss exceeds the mean of the ≤5 before it (or max epochs)
    v = fit["val_losses"]
    assert len(v) == 400 or v[-1] > np.mean(v[-6:-1])


def test_early_stopping_rule_of_upstream():
    trainer = gcd.ProxyTrainer([2, 4, 2], batch_size=8, n_val_batches=1, lr=0.0)  # lr 0: constant val loss
    z = torch.randn(32, 2)
    trainer.add(z, z[:, :1], torch.sigmoid(z[:, 1]))
    fit = trainer.fit(50)
    assert fit["epochs"] == 50  # never strictly above the running mean
    trainer = gcd.ProxyTrainer([2, 4, 2], batch_size=8, n_val_batches=1, lr=10.0)  # diverging
    trainer.add(z, z[:, :1] * 100, torch.sigmoid(z[:, 1]))
    assert trainer.fit(50)["epochs"] < 50


def _quadratic(dim: int = 6, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(dim, dim, generator=gen, dtype=torch.float64))
    lam = torch.tensor([5.0, -4.0, 3.0, -2.0, 1.0, 0.5], dtype=torch.float64)[:dim]
    a = q @ torch.diag(lam) @ q.T
    b = torch.randn(dim, generator=gen, dtype=torch.float64)

    def loss(z):
        return 0.5 * z @ a @ z + b @ z
    return loss, q, lam, b


def test_hessian_directions_of_a_known_quadratic():
    loss, q, lam, b = _quadratic()
    vecs, vals, hessian = gcd.hessian_directions(loss, torch.zeros(6, dtype=torch.float64), k=4)
    assert torch.allclose(hessian, q @ torch.diag(lam) @ q.T, atol=1e-10)
    assert torch.allclose(vals, lam[:4], atol=1e-10)  # sorted by |λ| descending: 5, −4, 3, −2
    for i in range(4):
        assert abs(float(vecs[i] @ q[:, i])) == pytest.approx(1.0, abs=1e-10)
        assert float(vecs[i] @ b) <= 0  # oriented to decrease L from z = 0 (gradient there is b)
    d, norm = gcd.gradient_direction(loss, torch.zeros(6, dtype=torch.float64))
    assert norm == pytest.approx(float(b.norm()))
    assert torch.allclose(d, -b / b.norm())


def test_counterfactual_loss_sign_follows_the_source_prediction():
    logits, lpips = torch.tensor([[2.0, -1.0]]), torch.tensor([0.3])
    assert gcd.counterfactual_loss(logits, lpips, 1, True, 1.0, 0.0).item() == -1.0
    assert gcd.counterfactual_loss(logits, lpips, 1, False, 0.05, 1.0).item() == pytest.approx(0.05 + 0.3)


def test_line_search_returns_the_first_flipping_step():
    e = torch.zeros(5)
    e[2] = 1.0

    def render(z):  # an "image" that is the code itself
        return z.reshape(-1, 1, 1, 5)

    def score(images):  # positive source; the logit falls below 0 once z·e > 0.5
        z = images.reshape(-1, 5)
        return (1 - 2 * z @ e).reshape(-1, 1), torch.zeros(z.shape[0])

    steps = torch.linspace(1e-4, 3, 16)
    out = gcd.line_search(torch.zeros(1, 5), torch.stack([e, -e, (e + torch.eye(5)[0]) / math.sqrt(2)]), steps,
                          render, score, query=0, source_positive=True)
    assert out["first_flip"][0] == int(torch.nonzero(steps > 0.5)[0])
    assert out["first_flip"][1] is None
    assert out["first_flip"][2] == int(torch.nonzero(steps / math.sqrt(2) > 0.5)[0])
    assert out["flipped"].shape == (3, 16) and out["images"].shape == (48, 1, 1, 5)
    # two-sided steps (transfer): the smallest |s| wins, the positive one on a tie
    s = torch.tensor([-3.0, -1.0, -0.5, 0.5, 1.0])
    assert gcd.first_flip(s, torch.tensor([True, True, True, True, False])) == 3
    assert gcd.first_flip(s, torch.tensor([True, True, False, False, True])) == 4
    assert gcd.first_flip(s, torch.zeros(5, dtype=torch.bool)) is None


def _direction(kind="g", it=0, flip=None, source_pred=1):
    return gcd.Direction(torch.ones(4) / 2, kind, it, 1.0, 0.0, source_pred, 0, flip, 1.0)


def test_choose_direction_rule():
    dirs = [_direction("g", 0, 2.0), _direction("h", 0, 0.5), _direction("g", 1, 1.0), _direction("g", 2, 1.0)]
    assert gcd.choose_direction(dirs) is dirs[3]  # smallest flipping g-step, later iteration on a tie
    dirs = [_direction("g", 0, None), _direction("h", 1, 0.5), _direction("g", 1, None)]
    assert gcd.choose_direction(dirs) is dirs[1]
    dirs = [_direction("g", 0, None), _direction("g", 1, None)]
    assert gcd.choose_direction(dirs) is dirs[1]


def test_direction_file_round_trip_and_errors(tmp_path):
    d = _direction(flip=1.5)
    gcd.save_direction(d, tmp_path / "dir.pt")
    back = gcd.load_direction(tmp_path / "dir.pt")
    assert torch.equal(back.vector, d.vector) and back.first_flip_step == 1.5 and back.kind == "g"
    torch.save({"dir": torch.zeros(4)}, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match=r"bad\.pt is not a cfx GCD direction"):
        gcd.load_direction(tmp_path / "bad.pt")


def test_bblig_on_a_linear_classifier_equals_the_analytic_integrated_gradient():
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(3, 4, 4, generator=gen, dtype=torch.float64)

    def f(x):
        return (x * w).flatten(1).sum(1) + 0.3

    x0, xb = torch.rand(3, 4, 4, generator=gen, dtype=torch.float64), torch.rand(3, 4, 4, generator=gen,
                                                                                  dtype=torch.float64)
    xb[0, 0, 0] = x0[0, 0, 0]  # one pixel that never changes
    t = torch.linspace(0, 1, 17, dtype=torch.float64).view(-1, 1, 1, 1)
    path = x0 + t * (xb - x0)
    sig, err = gcd.latent_integrated_gradients(path, f, approx_grad=False)
    assert torch.allclose(sig, (x0 - xb) * w, atol=1e-12)  # IG of a linear model: (x − x')⊙w
    assert abs(err) < 1e-10  # completeness
    # finite differences along a straight path: df/dx_i = w·Δ/Δ_i, so every changed pixel gets f(x0) − f(xb)
    sig_fd, _ = gcd.latent_integrated_gradients(path, f, approx_grad=True)
    expected = torch.full_like(sig_fd, float(f(x0[None]) - f(xb[None])))
    expected[0, 0, 0] = 0.0
    assert torch.allclose(sig_fd, expected, atol=1e-9)
    # no baseline: zero map, infinite error (upstream)
    sig0, err0 = gcd.latent_integrated_gradients(x0.expand(5, 3, 4, 4), f)
    assert torch.equal(sig0, torch.zeros_like(x0)) and err0 == math.inf


def test_normalize_attribution():
    a = np.array([[1.0, -2.0], [0.0, 100.0]])
    out = gcd.normalize_attribution(a, "all", outlier_perc=2.0)
    assert out.max() == 1.0 and out.min() >= -1.0
    assert np.array_equal(gcd.normalize_attribution(np.zeros((2, 2))), np.zeros((2, 2)))


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    model = create_diffae(None, img_size=16, net_ch=32, net_ch_mult=(1, 2), net_enc_channel_mult=(1, 2),
                          net_attn=(8,), style_ch=16, net_beatgans_embed_channels=32)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.05)
    dae = DiffAE(model, T_encode=2, T_render=2, batch_size=64)
    w = torch.randn(3, 16, 16, generator=torch.Generator().manual_seed(1))

    def classifier(x):  # [−1, 1] images → query logit, 0 at the source image
        return (x * w).flatten(1).sum(1) / 16

    image = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(2)) * 2 - 1
    return dae, classifier, image


def test_search_transfer_generate_and_bblig_end_to_end(tiny, tmp_path):
    dae, classifier, image = tiny

    def lpips(a, b):
        return (a - b).abs().flatten(1).mean(1)

    scorer = gcd.Scorer(classifier, lpips, (image + 1) / 2)
    config = dict(n_iters=2, n_steps_dae=2, dae_batch_size=48, n_steps_proxy=30, proxy_hidden=[8],
                  proxy_batch_size=16, n_hessian_eigenvecs=2, line_search_batch_size=16, max_norm=5.0,
                  min_max_step_size=[1e-4, 20.0])
    out = gcd.search_directions(image, dae=dae, scorer=scorer, config=config,
                                generator=torch.Generator().manual_seed(0))
    it = out["iterations"]
    # each iteration's 2 x 48 renders are split together: 1 validation batch of 16, 5 training batches; accumulated
    assert [r["proxy_train_size"] for r in it] == [96 - 16, 2 * (96 - 16)]
    assert len(out["directions"]) == 2 * (2 + 2)
    assert all(abs(float(d.vector.norm()) - 1) < 1e-5 for d in out["directions"])
    assert out["chosen"] is gcd.choose_direction(out["directions"])
    gcd.save_direction(out["chosen"], tmp_path / "dir.pt")

    images = torch.cat([image, -image])
    gens = [torch.Generator() for _ in range(2)]
    res = gcd.generate(images, torch.zeros(2), models={"diffae": dae, "classifier": classifier},
                       config={"direction": str(tmp_path / "dir.pt"), "transfer_batch_size": 9,
                               "transfer_min_max_step_size": [-20.0, 20.0]}, generators=gens)
    assert res.counterfactuals.shape == images.shape and res.noise.shape == images.shape
    assert res.counterfactuals.min() >= -1 and res.counterfactuals.max() <= 1
    assert torch.equal(res.targets, 1 - res.preds)
    for k, info in enumerate(res.info):
        assert info["flipped"] == (int(res.cf_preds[k]) != int(res.preds[k]))
        assert math.isnan(info["step"]) != info["flipped"]

    result = gcd.bblig(image, out["chosen"], dae=dae, classifier=classifier,
                       config={"bblig_n_steps": 8, "bblig_path_length": 6, "bblig_max_step_size": 40.0,
                               "bblig_thr_prob": 0.4})
    assert result["sig"].shape == (3, 16, 16) and result["map"].shape == (16, 16)
    if result["baseline_step"] is not None:
        assert math.isfinite(result["error"])
    npz, png = gcd.save_bblig(result, tmp_path / "bblig" / "img0", title="tiny")
    assert png.stat().st_size > 0 and set(np.load(npz)) >= {"sig", "map", "error", "baseline_step"}


def test_bblig_path_quantisation_is_torchvisions():
    from torchvision.transforms.functional import convert_image_dtype

    x = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    expected = convert_image_dtype(convert_image_dtype(x, torch.uint8), torch.float32)
    assert torch.equal(gcd._quantise(x), expected)
