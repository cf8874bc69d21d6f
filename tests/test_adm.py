"""ADM UNet: state-dict layout of guided-diffusion for the published configurations, strict loading, fp16.

How the reference facts were computed: openai/guided-diffusion (GitHub, commit 22e0df8) was unpacked outside
this project (/tmp) and its own ``script_util.create_model`` was run with the flags below on
``torch.device("meta")``; for each configuration we recorded the number of state-dict entries, the parameter
count, and the sha256 of the lines ``f"{key}:{tuple(shape)}"`` sorted by key and joined with "\n". The
explicit key -> shape and head-count asserts were read off the same upstream models. Output equality was
checked at dev time too: upstream's random-init state dict loaded strictly into ``cfx.models.adm``, same input,
relative error 0.0 (bitwise equal) in float32 for the output and for d(output)/dx, for legacy and new attention
order, num_head_channels, class-conditional, with/without scale-shift and resblock_updown, fp16 (CPU) and
``use_checkpoint``. Upstream code is not part of this repository.
"""

import hashlib

import pytest
import torch
import torch.nn.functional as F

from cfx.models.adm import (
    AttentionBlock,
    QKVAttention,
    QKVAttentionLegacy,
    create_model,
    create_model_and_diffusion,
    load_adm_checkpoint,
    model_and_diffusion_defaults,
)

COMMON = dict(num_res_blocks=2, learn_sigma=True, resblock_updown=True, use_scale_shift_norm=True, use_fp16=True)
CONFIGS = {
    # DiME / ACE CelebA 128 (DiME README, test.sh)
    "celeba128": (dict(image_size=128, num_channels=128, attention_resolutions="32,16,8", num_heads=4, **COMMON),
                  492, 105_198_598, "8cc7caa67c72ae1f23741b8c5f435207e76bcf0b2ce74c01cf90512764d8d2cf"),
    # ACE CelebA-HQ 256
    "celebahq256": (dict(image_size=256, num_channels=128, attention_resolutions="32,16,8", num_head_channels=64,
                         **COMMON),
                    566, 138_289_926, "b9dced2c1a0d112cec82a890a89af9b8da0977a73b5595d3af74f1bf3a33e409"),
    # openai 256x256_diffusion_uncond.pt (ACE ImageNet)
    "imagenet256_uncond": (dict(image_size=256, num_channels=256, attention_resolutions="32,16,8",
                                num_head_channels=64, **COMMON),
                           566, 552_814_086, "77426b1717ef703c9571d14dd0f89b54ce78ce1bc1eb0749c2ade3807bda89a5"),
    # ACE BDD100k
    "bdd": (dict(image_size=256, num_channels=128, channel_mult="1,2,3,4", attention_resolutions="16,8",
                 num_head_channels=64, **COMMON),
            326, 92_130_438, "e59d8cd5ccad454139594723a93a709a1c16d6b5461f9f6ef5eb2236941bb15c"),
}


@pytest.mark.parametrize("name", list(CONFIGS))
def test_state_dict_layout_equals_guided_diffusion(name):
    flags, n_keys, n_params, digest = CONFIGS[name]
    with torch.device("meta"):
        model = create_model(**flags)
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert len(shapes) == n_keys
    assert sum(p.numel() for p in model.parameters()) == n_params
    lines = "\n".join(f"{k}:{v}" for k, v in sorted(shapes.items()))
    assert hashlib.sha256(lines.encode()).hexdigest() == digest


def test_explicit_keys_of_the_celeba_model():
    with torch.device("meta"):
        model = create_model(**CONFIGS["celeba128"][0])
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert shapes["input_blocks.0.0.weight"] == (128, 3, 3, 3)
    assert shapes["time_embed.0.weight"] == (512, 128)
    assert shapes["input_blocks.3.0.in_layers.2.weight"] == (128, 128, 3, 3)  # resblock_updown downsampler
    assert shapes["middle_block.1.qkv.weight"] == (1536, 512, 1)  # attention at width 512, 4 heads
    assert shapes["out.2.weight"] == (6, 128, 3, 3)  # learn_sigma: eps + variance interpolation
    assert not any(k.startswith("label_emb") for k in shapes)


def _tiny(**extra):
    return dict(image_size=32, num_channels=32, num_res_blocks=1, channel_mult="1,2,2", attention_resolutions="8",
                num_heads=4, learn_sigma=True, resblock_updown=True, use_scale_shift_norm=True, **extra)


def test_checkpoint_round_trip_is_strict_and_exact(tmp_path):
    torch.manual_seed(0)
    model = create_model(**_tiny()).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.05)
    torch.save(model.state_dict(), tmp_path / "ddpm.pt")
    loaded = load_adm_checkpoint(tmp_path / "ddpm.pt", **_tiny()).eval()
    x, t = torch.randn(2, 3, 32, 32), torch.tensor([1, 120])
    with torch.no_grad():
        assert torch.equal(model(x, t), loaded(x, t))
        assert model(x, t).shape == (2, 6, 32, 32)


def test_wrong_flags_name_the_file_and_keys(tmp_path):
    torch.save(create_model(**_tiny()).state_dict(), tmp_path / "ddpm.pt")
    with pytest.raises(ValueError, match=r"ddpm\.pt does not match.*probably differ"):
        load_adm_checkpoint(tmp_path / "ddpm.pt", **{**_tiny(), "num_channels": 64})
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        load_adm_checkpoint(tmp_path / "missing.pt", **_tiny())


def test_fp16_converts_only_block_convolutions():
    model = create_model(**_tiny())
    model.convert_to_fp16()
    assert model.input_blocks[0][0].weight.dtype == torch.float16
    assert model.middle_block[1].qkv.weight.dtype == torch.float16
    assert model.time_embed[0].weight.dtype == torch.float32
    assert model.out[2].weight.dtype == torch.float32


def _shapes(name: str) -> dict:
    with torch.device("meta"):
        model = create_model(**CONFIGS[name][0])
    heads = {n: m.num_heads for n, m in model.named_modules() if isinstance(m, AttentionBlock)}
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}, heads


def test_explicit_keys_and_heads_of_the_256_models():
    shapes, heads = _shapes("imagenet256_uncond")
    assert shapes["input_blocks.0.0.weight"] == (256, 3, 3, 3)
    assert shapes["time_embed.0.weight"] == (1024, 256)
    assert shapes["middle_block.1.qkv.weight"] == (3072, 1024, 1)
    assert shapes["output_blocks.8.1.qkv.weight"] == (1536, 512, 1)
    # num_head_channels 64: 8 heads at width 512 (32x32 map), 16 at width 1024 (16x16, 8x8)
    assert heads["input_blocks.10.1"] == 8 and heads["middle_block.1"] == 16 and len(heads) == 16
    shapes, heads = _shapes("celebahq256")
    assert shapes["middle_block.0.emb_layers.1.weight"] == (1024, 512)  # scale-shift: 2 x width
    assert heads["input_blocks.10.1"] == 4 and heads["middle_block.1"] == 8 and len(heads) == 16
    # BDD: attention "16,8" means downsample rates 16, 32, which 4 levels (max rate 8) never reach
    shapes, heads = _shapes("bdd")
    assert [k for k in shapes if k.endswith("qkv.weight")] == ["middle_block.1.qkv.weight"]
    assert heads == {"middle_block.1": 8}
    _, heads = _shapes("celeba128")
    assert set(heads.values()) == {4} and len(heads) == 16  # num_heads 4 everywhere (DiME sampling flags)


def _reference_attention(qkv: torch.Tensor, heads: int, legacy: bool) -> torch.Tensor:
    """softmax(qᵀk/√d)v per head with F.scaled_dot_product_attention; legacy splits heads before q/k/v."""
    bs, width, length = qkv.shape
    ch = width // (3 * heads)
    if legacy:
        q, k, v = qkv.reshape(bs, heads, 3 * ch, length).split(ch, dim=2)
    else:
        q, k, v = (part.reshape(bs, heads, ch, length) for part in qkv.chunk(3, dim=1))
    out = F.scaled_dot_product_attention(q.transpose(-1, -2), k.transpose(-1, -2), v.transpose(-1, -2))
    return out.transpose(-1, -2).reshape(bs, heads * ch, length)


def test_attention_orders_against_a_direct_computation():
    torch.manual_seed(0)
    qkv = torch.randn(2, 3 * 4 * 8, 10)
    legacy, new = QKVAttentionLegacy(4)(qkv), QKVAttention(4)(qkv)
    assert torch.allclose(legacy, _reference_attention(qkv, 4, legacy=True), atol=1e-5)
    assert torch.allclose(new, _reference_attention(qkv, 4, legacy=False), atol=1e-5)
    assert not torch.allclose(legacy, new, atol=1e-2)  # the orders really differ with more than one head


def _small(**extra):
    return dict(image_size=16, num_channels=32, num_res_blocks=1, channel_mult="1,2", attention_resolutions="8",
                num_heads=2, learn_sigma=True, resblock_updown=True, use_scale_shift_norm=True, **extra)


def test_dtype_follows_the_weights_and_fp16_round_trip():
    model = create_model(**_small(), use_fp16=True)
    assert model.dtype == torch.float32  # not converted yet: computes in float32
    x, t = torch.randn(1, 3, 16, 16), torch.tensor([7])
    with torch.no_grad():
        ref = model(x, t)
        model.convert_to_fp16()
        assert model.dtype == torch.float16
        half = model(x, t)
        assert half.dtype == torch.float32  # output cast back to the input dtype, as upstream
        assert torch.allclose(half, ref, atol=5e-2 * ref.abs().max().item())
        model.convert_to_fp32()
        assert model.dtype == torch.float32 and model(x, t).dtype == torch.float32


def test_checkpointing_changes_nothing_numerically():
    torch.manual_seed(1)
    plain = create_model(**_small()).train()
    ckpt = create_model(**_small(), use_checkpoint=True).train()
    with torch.no_grad():
        for p in plain.parameters():
            p.normal_(0, 0.05)
    ckpt.load_state_dict(plain.state_dict())
    x, t = torch.randn(2, 3, 16, 16, requires_grad=True), torch.tensor([3, 300])
    g_plain, = torch.autograd.grad(plain(x, t).square().sum(), x)
    g_ckpt, = torch.autograd.grad(ckpt(x, t).square().sum(), x)
    assert torch.allclose(g_plain, g_ckpt, rtol=1e-5, atol=1e-7)


def test_class_conditional_model_needs_y():
    model = create_model(**_small(), class_cond=True)
    assert model.label_emb.weight.shape == (1000, 128)
    x, t = torch.randn(2, 3, 16, 16), torch.tensor([1, 2])
    with torch.no_grad():
        assert model(x, t, y=torch.tensor([0, 999])).shape == (2, 6, 16, 16)
    with pytest.raises(ValueError, match="class-conditional"):
        model(x, t)


def test_channel_mult_forms_and_defaults():
    with torch.device("meta"):
        as_str = create_model(image_size=64, num_channels=32, num_res_blocks=1, channel_mult="1,2,3,4")
        as_tuple = create_model(image_size=64, num_channels=32, num_res_blocks=1, channel_mult=(1, 2, 3, 4))
        default = create_model(image_size=64, num_channels=32, num_res_blocks=1)
        tiny = create_model(image_size=32, num_channels=32, num_res_blocks=1)
    keys = {k: tuple(v.shape) for k, v in as_str.state_dict().items()}
    assert keys == {k: tuple(v.shape) for k, v in as_tuple.state_dict().items()}
    assert keys == {k: tuple(v.shape) for k, v in default.state_dict().items()}  # 64 -> (1,2,3,4)
    # 32 -> (1,2,2,2): deepest width 64, three downsamplers
    assert tiny.state_dict()["middle_block.0.in_layers.2.weight"].shape == (64, 64, 3, 3)
    with pytest.raises(ValueError, match="image_size 48"):
        create_model(image_size=48, num_channels=32, num_res_blocks=1)


def test_create_model_and_diffusion_splits_the_flags():
    defaults = model_and_diffusion_defaults()
    assert defaults["attention_resolutions"] == "16,8" and defaults["rescale_learned_sigmas"] is False
    model, diffusion = create_model_and_diffusion(
        **{**_tiny(), "diffusion_steps": 500, "timestep_respacing": "50", "use_fp16": True})
    assert model.out[2].weight.shape[0] == 6 and model.dtype == torch.float32  # upstream: scripts convert
    assert diffusion.num_timesteps == 50 and diffusion.timestep_map[:3].tolist() == [0, 10, 20]


def test_loader_ignores_diffusion_flags_and_refuses_wrapped_checkpoints(tmp_path):
    model = create_model(**_tiny())
    torch.save(model.state_dict(), tmp_path / "ddpm.pt")
    loaded = load_adm_checkpoint(tmp_path / "ddpm.pt", **_tiny(), diffusion_steps=500, timestep_respacing="200",
                                 use_fp16=True)
    assert loaded.dtype == torch.float16 and loaded.time_embed[0].weight.dtype == torch.float32
    torch.save({"state_dict": model.state_dict(), "step": torch.tensor(3)}, tmp_path / "wrapped.pt")
    with pytest.raises(ValueError, match=r"wrapped\.pt is not a plain UNet state dict"):
        load_adm_checkpoint(tmp_path / "wrapped.pt", **_tiny())
