"""ADM UNet: state-dict layout of guided-diffusion for the published configurations, strict loading, fp16.

Reference facts were computed with openai/guided-diffusion's own ``script_util.create_model`` (commit of the
public repository, run outside this project): for each configuration the number of state-dict entries, the
parameter count, and the sha256 of the sorted ``key:shape`` lines. With the same random weights loaded into
both, guided-diffusion's UNet and ``cfx.models.adm`` gave identical outputs (relative error 0.0 in float32)
for the legacy and new attention orders, without scale-shift/updown, and class-conditional.
"""

import hashlib

import pytest
import torch

from cfx.models.adm import create_model, load_adm_checkpoint

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
