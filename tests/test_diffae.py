"""DiffAE: state-dict layout of the upstream configurations, strict Lightning-checkpoint loading, DDIM.

How the reference facts were computed: phizaz/diffae (GitHub, HEAD of the fetched snapshot; ``model/`` is the same
file set as sobieskibj/gcd's ``gcd/src/dae/{default,chexpert}/model``, up to relative imports and the chexpert
``in_channels``/``out_channels`` defaults) was unpacked outside this project (/tmp), and its own
``BeatGANsAutoencConfig(...).make_model()`` was run on ``torch.device("meta")`` with the arguments that
``config.py:TrainConfig.make_model_conf`` derives from the templates ``ffhq256_autoenc``, ``celeba128_autoenc``
(GCD ``dae/default/templates.py``) and ``chexpert224_autoenc`` (GCD ``dae/chexpert/templates.py``, in/out 1
channel). For each we recorded the number of state-dict entries, the parameter count and the sha256 of the lines
``f"{key}:{tuple(shape)}"`` sorted by key and joined with "\\n". At dev time, upstream's randomly initialised state
dict of two reduced configurations loaded strictly into ``cfx.models.diffae`` and gave bitwise-equal z_sem and ε
(float32), and upstream's ``ddim_reverse_sample_loop`` / ``sample`` (10 and 25 spaced steps) agreed with
:class:`DDIM` to 2.5e-4 / 3e-5 (float32 vs float64 schedule constants). Upstream code is not part of this repository.
"""

import hashlib
import sys
import types

import pytest
import torch

from cfx.models.diffae import (
    DDIM,
    DiffAE,
    create_diffae,
    lightning_checkpoint,
    load_diffae_checkpoint,
)

UPSTREAM = {
    "ffhq256_autoenc": (706, 168_492_291, "9b5a88dd055e1430f692c6ea2c9e4becfd02e2f14d979f8ebad9066331faf12b"),
    "celeba128_autoenc": (608, 128_545_155, "db00e8efd481e8dbe361f37d400f2bb2fc2a3df911c871bd3886f31e4b5fa55c"),
    "chexpert224_autoenc": (664, 161_123_841, "b3da0e821da869315dd6b67087fe4bf2fe8d6b08a85b2117b8ef920511a0ec37"),
}
TINY = dict(img_size=32, net_ch=32, net_ch_mult=(1, 2), net_enc_channel_mult=(1, 2, 2), net_attn=(16,))


def _shapes(name: str) -> dict[str, tuple[int, ...]]:
    with torch.device("meta"):
        model = create_diffae(name)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}, model


@pytest.mark.parametrize("name", list(UPSTREAM))
def test_state_dict_layout_equals_upstream(name):
    n_keys, n_params, digest = UPSTREAM[name]
    shapes, model = _shapes(name)
    assert len(shapes) == n_keys
    assert sum(p.numel() for p in model.parameters()) == n_params
    lines = "\n".join(f"{k}:{v}" for k, v in sorted(shapes.items()))
    assert hashlib.sha256(lines.encode()).hexdigest() == digest


def test_explicit_keys_of_the_upstream_models():
    shapes, _ = _shapes("ffhq256_autoenc")
    assert shapes["time_embed.time_embed.0.weight"] == (512, 128)
    assert shapes["encoder.out.3.weight"] == (512, 512, 1, 1)  # z_sem ∈ R^512 from the 4×4 map at width 512
    assert shapes["input_blocks.1.0.emb_layers.1.weight"] == (256, 512)  # time scale-shift: 2 × width
    assert shapes["input_blocks.1.0.cond_emb_layers.1.weight"] == (128, 512)  # semantic scale: width
    assert "encoder.input_blocks.1.0.emb_layers.1.weight" not in shapes  # encoder blocks are unconditioned
    assert shapes["out.2.weight"] == (3, 128, 3, 3)
    # attention at resolution 16 only (plus the middle block): levels 256..8 → 16 is level 4
    assert {k.rsplit(".qkv", 1)[0] for k in shapes if k.endswith("qkv.weight") and not k.startswith("encoder")} == {
        "input_blocks.13.1", "input_blocks.14.1", "middle_block.1", "output_blocks.3.1", "output_blocks.4.1",
        "output_blocks.5.1"}
    shapes, _ = _shapes("chexpert224_autoenc")
    assert shapes["input_blocks.0.0.weight"] == (128, 1, 3, 3) and shapes["out.2.weight"] == (1, 128, 3, 3)
    assert shapes["encoder.input_blocks.0.0.weight"] == (128, 1, 3, 3)
    # 224 never halves to 16: only the two middle blocks attend
    assert sorted(k for k in shapes if k.endswith("qkv.weight")) == ["encoder.middle_block.1.qkv.weight",
                                                                     "middle_block.1.qkv.weight"]


def _randomised(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.05)
    return model.eval()


def test_published_layout_loads_strictly_and_exactly(tmp_path):
    model = _randomised(create_diffae(None, **TINY))
    torch.save(lightning_checkpoint(model), tmp_path / "last.ckpt")
    loaded = load_diffae_checkpoint(tmp_path / "last.ckpt", None, **TINY)
    x, t = torch.rand(2, 3, 32, 32) * 2 - 1, torch.tensor([3, 900])
    with torch.no_grad():
        z = model.encode(x)
        assert z.shape == (2, 512)
        assert torch.equal(loaded.encode(x), z)
        assert torch.equal(loaded(x, t, z), model(x, t, z))


def test_lightning_callback_keys_are_allow_listed_by_name(tmp_path):
    # Lightning 1.4 stores callback states under the callback CLASS: a pickled global weights_only refuses
    module = types.ModuleType("pytorch_lightning.callbacks.model_checkpoint")
    cls = type("ModelCheckpoint", (), {"__module__": module.__name__})
    module.ModelCheckpoint = cls
    names = ["pytorch_lightning", "pytorch_lightning.callbacks", module.__name__]
    sys.modules.update({n: module for n in names})
    try:
        ckpt = lightning_checkpoint(create_diffae(None, **TINY)) | {"callbacks": {cls: {"best_model_path": "x"}}}
        torch.save(ckpt, tmp_path / "last.ckpt")
    finally:
        for n in names:
            sys.modules.pop(n)
    load_diffae_checkpoint(tmp_path / "last.ckpt", None, **TINY)


def test_mismatches_name_the_file_and_keys(tmp_path):
    torch.save(lightning_checkpoint(create_diffae(None, **TINY)), tmp_path / "last.ckpt")
    with pytest.raises(ValueError, match=r"last\.ckpt \[ema_model\] does not match.*missing.*input_blocks"):
        load_diffae_checkpoint(tmp_path / "last.ckpt", None, **{**TINY, "net_ch_mult": (1, 2, 2)})
    torch.save({"state_dict": {"model.x": torch.zeros(1)}}, tmp_path / "noema.ckpt")
    with pytest.raises(ValueError, match=r"noema\.ckpt: no 'ema_model\.\*' entries"):
        load_diffae_checkpoint(tmp_path / "noema.ckpt", None, **TINY)
    torch.save(create_diffae(None, **TINY).state_dict(), tmp_path / "plain.pt")
    with pytest.raises(ValueError, match=r"plain\.pt is not a DiffAE Lightning checkpoint"):
        load_diffae_checkpoint(tmp_path / "plain.pt", None, **TINY)
    with pytest.raises(KeyError, match="unknown DiffAE flags"):
        create_diffae(None, image_size=32)


def test_ddim_spacing_of_gcd():
    assert DDIM(250).timesteps == list(range(0, 1000, 4))
    assert DDIM(100).timesteps == list(range(0, 1000, 10))


class PointMass(torch.nn.Module):
    """The exact ε-predictor of a data distribution concentrated on ``c``: ε = (x_t − √ᾱ_t c)/√(1 − ᾱ_t)."""

    def __init__(self, c: torch.Tensor) -> None:
        super().__init__()
        betas = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)
        self.ab = torch.cumprod(1 - betas, 0)
        self.c = c

    def forward(self, x, t, cond):
        a = self.ab[t].float().view(-1, 1, 1, 1)
        return (x - a.sqrt() * self.c) / (1 - a).sqrt()


def test_ddim_renders_the_point_mass_and_inverts_exactly():
    c = torch.rand(1, 3, 8, 8) * 1.6 - 0.8
    model = PointMass(c)
    x_T = torch.randn(4, 3, 8, 8)
    out = DDIM(100).sample(model, x_T, cond=None)
    assert torch.allclose(out, c.expand_as(out), atol=1e-5)
    x_T = DDIM(250).reverse(model, c, cond=None)
    assert torch.allclose(DDIM(100).sample(model, x_T, cond=None), c, atol=1e-5)


def test_encode_and_render_shapes():
    for flags in (TINY, {**TINY, "in_channels": 1}):
        dae = DiffAE(_randomised(create_diffae(None, **flags)), T_encode=4, T_render=3, batch_size=3)
        channels = flags.get("in_channels", 3)
        x = torch.rand(5, channels, 32, 32) * 2 - 1
        z = dae.encode(x)
        assert z.shape == (5, 512)
        x_T = dae.encode_stochastic(x, z)
        assert x_T.shape == x.shape and dae.calls == 5 * 4
        imgs = dae.render(x_T[:1], z + 0.1)  # one x_T for every candidate (make_batch_latent_ddim)
        assert imgs.shape == (5, channels, 32, 32) and imgs.min() >= 0 and imgs.max() <= 1
        assert torch.allclose(dae.render(x_T[:2], z[:2]), dae.render(x_T[:2], z[:2]))
    with pytest.raises(ValueError, match="no resizing"):
        dae.encode(torch.zeros(1, 1, 64, 64))


def test_train_diffae_writes_the_published_layout_and_learns(tmp_path):
    from cfx.data.synthetic import write_synthetic_celeba
    from cfx.train import train_diffae

    root = write_synthetic_celeba(tmp_path / "data", n_identities=6, images_per_identity=4, image_size=32, seed=0,
                                  progress=False)
    flags = dict(img_size=16, net_ch=32, net_ch_mult=(1, 2), net_enc_channel_mult=(1, 2), net_attn=(8,),
                 style_ch=32, net_beatgans_embed_channels=32)
    log = train_diffae(root, tmp_path / "dae.pt", flags=flags, steps=16, batch_size=4, lr=2e-3, max_timestep=200,
                       ema_decay=0.9, image_size=16, device="cpu")
    assert log["kind"] == "diffae" and log["steps"] == 16
    assert log["final_loss"] < log["first_loss"]
    state = torch.load(tmp_path / "dae.pt", weights_only=True)["state_dict"]
    assert {k.split(".", 1)[0] for k in state} == {"model", "ema_model"}
    model = load_diffae_checkpoint(tmp_path / "dae.pt", None, **flags)
    assert not torch.equal(state["model.out.2.weight"], state["ema_model.out.2.weight"])  # EMA saved as ema_model
    assert torch.equal(model.out[2].weight, state["ema_model.out.2.weight"])


def test_diffae_timestep_sampling_matches_its_distributions():
    """uniform: DiffAE's UniformSampler (torch.randint, same draws); high_noise: P(t) = (2t+1)/t_max²."""
    from cfx.train import diffae_timesteps

    t_max, n = 10, 200_000
    uniform = diffae_timesteps(t_max, n, "uniform", torch.Generator().manual_seed(0))
    assert torch.equal(uniform, torch.randint(t_max, (n,), generator=torch.Generator().manual_seed(0)))
    high = diffae_timesteps(t_max, n, "high_noise", torch.Generator().manual_seed(0))
    assert int(high.min()) >= 0 and int(high.max()) == t_max - 1
    freq = torch.bincount(high, minlength=t_max).double() / n
    expected = (2 * torch.arange(t_max, dtype=torch.float64) + 1) / t_max ** 2
    assert torch.allclose(freq, expected, atol=4e-3)


def test_train_diffae_rejects_an_unknown_timestep_sampling(tmp_path):
    from cfx.train import train_diffae

    with pytest.raises(ValueError, match="timestep_sampling 'late'"):
        train_diffae(tmp_path, tmp_path / "dae.pt", flags=dict(img_size=16), steps=1, batch_size=1, lr=1e-3,
                     timestep_sampling="late", image_size=16, device="cpu")
