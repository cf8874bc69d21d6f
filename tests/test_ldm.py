"""cfx.models.ldm: the state-dict layout of the upstream LDM configurations, strict checkpoint loading, and the
first-stage / denoiser / conditioner behaviour LDCE relies on.

Upstream layout: at dev time, CompVis/latent-diffusion's ``configs/latent-diffusion/cin256-v2.yaml`` and
CompVis/stable-diffusion's ``configs/stable-diffusion/v1-inference.yaml`` were instantiated on the meta device with
upstream's own code (``instantiate_from_config`` of ``unet_config``, ``first_stage_config``, ``cond_stage_config``;
taming's VectorQuantizer2 stood in by a module holding its one parameter, ``embedding``). For each part we recorded
the number of state-dict entries, the parameter count and the sha256 of the lines ``f"{key}:{tuple(shape)}"``
sorted by key and joined with "\\n". The tests recompute them from our modules.
"""

import hashlib
import math

import pytest
import torch

from cfx.models.ldm import (
    CIN256_V2,
    SD_V1,
    AutoencoderKL,
    LDMUNet,
    build_ldm,
    load_ldm_checkpoint,
    save_ldm_checkpoint,
)
from tests.factories.networks import TINY_KL, TINY_VQ

UPSTREAM = {
    ("cin256-v2", "unet"): (688, 400920579, "0660903c63a8b3602a5a6566233b2a0de557f417b5913ef87ee49e7bb4b48dea"),
    ("cin256-v2", "first_stage"): (205, 55322782, "18ffd6c8287db76df37e4afa2b89b67b6d48dd2ca898f503a838e6aa7c70f081"),
    ("cin256-v2", "cond_stage"): (1, 512512, "01d5f6ed67073d6a68443fff4ded106d487997e5e00ba758ccc54af260124159"),
    ("sd-v1", "unet"): (686, 859520964, "f78ac926310e55e0644409ba85334d8093c5fb44159348af8d62bc4cfb3d6870"),
    ("sd-v1", "first_stage"): (248, 83653863, "4f793f3406f6a4b0f2f5577ba417fac13ca622734a826f532842c3c1894ab4f9"),
}


def _digest(module: torch.nn.Module) -> tuple[int, int, str]:
    sd = module.state_dict()
    lines = "\n".join(f"{k}:{tuple(v.shape)}" for k, v in sorted(sd.items()))
    return len(sd), sum(math.prod(v.shape) for v in sd.values()), hashlib.sha256(lines.encode()).hexdigest()


def test_cin256_v2_layout_equals_upstream():
    with torch.device("meta"):
        model = build_ldm(CIN256_V2)
    assert _digest(model.model.diffusion_model) == UPSTREAM[("cin256-v2", "unet")]
    assert _digest(model.first_stage_model) == UPSTREAM[("cin256-v2", "first_stage")]
    assert _digest(model.cond_stage_model) == UPSTREAM[("cin256-v2", "cond_stage")]
    sd = model.state_dict()
    assert sd["first_stage_model.quantize.embedding.weight"].shape == (8192, 3)
    assert sd["cond_stage_model.embedding.weight"].shape == (1001, 512)  # class 1000 = unconditional
    assert sd["model.diffusion_model.input_blocks.4.1.transformer_blocks.0.attn2.to_k.weight"].shape == (384, 512)
    assert sd["model.diffusion_model.out.2.weight"].shape == (3, 192, 3, 3)
    assert sd["alphas_cumprod"].shape == (1000,)
    with torch.device("meta"):
        preset = build_ldm({"preset": "cin256-v2", "cond_stage_config": {"params": {"n_classes": 11}}})
    assert preset.state_dict()["cond_stage_model.embedding.weight"].shape == (11, 512)
    with pytest.raises(KeyError, match="cin256-v2"):
        build_ldm({"preset": "cin256"})


def test_sd_v1_layout_equals_upstream():
    with torch.device("meta"):
        unet = LDMUNet(**SD_V1["unet_config"]["params"])
        first = AutoencoderKL(**SD_V1["first_stage_config"]["params"])
    assert _digest(unet) == UPSTREAM[("sd-v1", "unet")]
    assert _digest(first) == UPSTREAM[("sd-v1", "first_stage")]
    assert unet.state_dict()["middle_block.1.transformer_blocks.0.attn2.to_k.weight"].shape == (1280, 768)
    assert first.state_dict()["quant_conv.weight"].shape == (8, 8, 1, 1)  # mean and log-variance of 4 channels


def test_clip_embedder_has_the_published_sd_v1_keys():
    """SD-v1 checkpoints hold ``cond_stage_model.transformer.text_model.*`` (196 tensors for ViT-L/14's text model,
    plus ``position_ids`` from older transformers); transformers 5 flattened CLIPTextModel, and the embedder keeps
    the published names whichever version is installed."""
    from transformers import CLIPTextConfig

    from cfx.models.ldm import FrozenCLIPEmbedder

    config = CLIPTextConfig(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                            num_attention_heads=12, max_position_embeddings=77, hidden_act="quick_gelu")
    with torch.device("meta"):
        sd = FrozenCLIPEmbedder(text_config=config, tokenizer=object()).state_dict()
    params = {k for k in sd if not k.endswith("position_ids")}
    assert len(params) == 196 and all(k.startswith("transformer.text_model.") for k in params)
    assert sd["transformer.text_model.embeddings.token_embedding.weight"].shape == (49408, 768)
    assert sd["transformer.text_model.encoder.layers.11.mlp.fc2.weight"].shape == (768, 3072)
    assert sd["transformer.text_model.final_layer_norm.weight"].shape == (768,)


def _tiny(config=TINY_VQ, seed=0):
    torch.manual_seed(seed)
    model = build_ldm(config)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    return model


def test_tiny_checkpoint_round_trip_is_exact(tmp_path):
    model = _tiny()
    path = save_ldm_checkpoint(model, tmp_path / "model.ckpt", global_step=3)
    loaded = load_ldm_checkpoint(path, TINY_VQ)
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    z = torch.randn(2, 3, 8, 8)
    c = loaded.get_learned_conditioning(torch.tensor([1, 10]))
    t = torch.tensor([5, 500])
    assert torch.equal(loaded.apply_model(z, t, c), model.apply_model(z, t, c))


def test_strict_loading_names_the_file_and_keys(tmp_path):
    state = _tiny().state_dict()
    key = "model.diffusion_model.input_blocks.1.1.proj_in.weight"

    def write(sd, name):
        path = tmp_path / name
        torch.save({"state_dict": sd, "epoch": 1}, path)
        return path

    missing = write({k: v for k, v in state.items() if k != key}, "missing.ckpt")
    with pytest.raises(ValueError, match="missing.ckpt") as err:
        load_ldm_checkpoint(missing, TINY_VQ)
    assert "1 missing" in str(err.value) and key in str(err.value)
    extra = write({**state, "model.diffusion_model.bogus.weight": torch.zeros(1)}, "extra.ckpt")
    with pytest.raises(ValueError, match="unexpected: model.diffusion_model.bogus.weight"):
        load_ldm_checkpoint(extra, TINY_VQ)
    shaped = write({**state, key: torch.zeros(3, 3, 1, 1)}, "shape.ckpt")
    with pytest.raises(ValueError, match="wrong shape"):
        load_ldm_checkpoint(shaped, TINY_VQ)
    # another β schedule: the stored schedule buffers betray the configuration mismatch
    with pytest.raises(ValueError, match="alphas_cumprod|betas"):
        load_ldm_checkpoint(write(state, "sched.ckpt"), {**TINY_VQ, "linear_end": 0.012})
    # keys of training that LDCE never uses load (EMA copy, autoencoder loss, CLIP position ids)
    allowed = write({**state, "model_ema.decay": torch.tensor(0.99), "model_ema.num_updates": torch.tensor(3),
                     "first_stage_model.loss.logvar": torch.zeros(()),
                     "cond_stage_model.transformer.text_model.embeddings.position_ids": torch.arange(77)[None]},
                    "allowed.ckpt")
    assert load_ldm_checkpoint(allowed, TINY_VQ) is not None
    with pytest.raises(FileNotFoundError, match="nope.ckpt"):
        load_ldm_checkpoint(tmp_path / "nope.ckpt", TINY_VQ)
    torch.save({"model": 1}, tmp_path / "other.ckpt")
    with pytest.raises(ValueError, match="not an LDM Lightning checkpoint"):
        load_ldm_checkpoint(tmp_path / "other.ckpt", TINY_VQ)


def test_vq_first_stage_shapes_and_straight_through_quantisation():
    model = _tiny()
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    z = model.encode_first_stage(x)
    assert z.shape == (2, 3, 8, 8)  # f = 4
    codes = model.first_stage_model.quantize.embedding.weight
    quantised = model.first_stage_model.quantize(z)
    flat = quantised.permute(0, 2, 3, 1).reshape(-1, 3)
    nearest = codes[torch.cdist(z.permute(0, 2, 3, 1).reshape(-1, 3), codes).argmin(dim=1)]
    assert torch.allclose(flat, nearest, atol=1e-6)  # every latent pixel became its nearest code
    z_in = z.detach().requires_grad_(True)
    model.decode_first_stage(z_in).sum().backward()
    assert z_in.grad is not None and z_in.grad.abs().sum() > 0  # straight-through gradient


def test_kl_first_stage_samples_with_the_generator_and_scales():
    model = _tiny(TINY_KL)
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    a = model.encode_first_stage(x, generator=torch.Generator().manual_seed(3))
    b = model.encode_first_stage(x, generator=torch.Generator().manual_seed(3))
    c = model.encode_first_stage(x, generator=torch.Generator().manual_seed(4))
    assert a.shape == (1, 4, 8, 8) and torch.equal(a, b) and not torch.equal(a, c)
    posterior = model.first_stage_model.encode(x)
    noise = torch.randn(a.shape, generator=torch.Generator().manual_seed(3))
    assert torch.allclose(a, 0.5 * (posterior.mean + posterior.std * noise), atol=1e-6)
    assert model.decode_first_stage(a).shape == (1, 3, 32, 32)


def test_class_embedder_null_class_and_range():
    model = _tiny()
    assert torch.equal(model.unconditional_conditioning(2), model.get_learned_conditioning(torch.tensor([10, 10])))
    assert model.get_learned_conditioning(torch.tensor([0, 3])).shape == (2, 1, 16)
    with pytest.raises(ValueError, match="0..10"):
        model.get_learned_conditioning(torch.tensor([11]))


def test_clip_embedder_needs_local_files():
    with pytest.raises(FileNotFoundError, match="clip-vit-large-patch14"):
        build_ldm({**TINY_KL, "cond_stage_config": {"target": "ldm.modules.encoders.modules.FrozenCLIPEmbedder",
                                                    "params": {"version": "/nonexistent/clip"}}})


def test_text_conditioned_ldm_embeds_prompts_and_the_empty_prompt(tmp_path):
    """SD-v1's structure at tiny size: a KL first stage, a UNet with cross-attention to a CLIP text model, a
    tokenizer from local files (a letter vocabulary written here) — no download."""
    import json

    from transformers import CLIPTextConfig, CLIPTokenizer

    from cfx.models.ldm import FrozenCLIPEmbedder, LatentDiffusion

    letters = "abcdefghijklmnopqrstuvwxyz"
    vocab = {c: i for i, c in enumerate(letters)} | {c + "</w>": 26 + i for i, c in enumerate(letters)}
    vocab |= {"<|startoftext|>": 52, "<|endoftext|>": 53}
    (tmp_path / "vocab.json").write_text(json.dumps(vocab))
    (tmp_path / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = CLIPTokenizer(str(tmp_path / "vocab.json"), str(tmp_path / "merges.txt"))
    config = CLIPTextConfig(vocab_size=54, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                            num_attention_heads=2, max_position_embeddings=12, bos_token_id=52, eos_token_id=53)
    embedder = FrozenCLIPEmbedder(text_config=config, tokenizer=tokenizer, max_length=12)
    context = embedder(["a photo of a smiling person", "a photo of a person"])
    assert context.shape == (2, 12, 16)
    assert not torch.allclose(context[0], context[1])
    assert torch.equal(embedder.unconditional(2), embedder(["", ""]))
    params = {**TINY_KL, "unet_config": {"params": {**TINY_KL["unet_config"]["params"], "context_dim": 16}}}
    model = LatentDiffusion(**{k: v for k, v in params.items() if k != "cond_stage_config"},
                            cond_stage_config={"kind": "class", "params": {"embed_dim": 16, "n_classes": 2}})
    model.cond_stage_model = embedder
    eps = model.apply_model(torch.randn(2, 4, 8, 8), torch.tensor([1, 2]), model.get_learned_conditioning(["a", "b"]))
    assert eps.shape == (2, 4, 8, 8)
