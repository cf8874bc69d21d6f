"""Tiny networks and their settings for CPU tests: a trivially editable classifier (:class:`RedClassifier`), ADM
UNet flags and random UNet files, DiME/ACE/GCD method settings, the GCD models (a random classifier and a tiny DiffAE),
tiny LDM configurations with cin256-v2's structure, random DINO ViT weights, and a spy that lets a class-conditional
LDM stand in for LDCE-txt's text-conditioned one."""

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from cfx.models.adm import create_model
from cfx.models.classifier import DenseNetClassifier, save_celeba_classifier
from cfx.models.diffae import create_diffae, lightning_checkpoint

# --- a classifier any method can edit ---------------------------------------------------------------------------------


class RedClassifier(torch.nn.Module):
    """logit = 10 · mean of the red channel (a 'smile' any method can edit)."""

    def forward(self, x):
        return 10 * x[:, 0].mean(dim=(1, 2))


# --- ADM UNets and the DiME/ACE settings ------------------------------------------------------------------------------

# ACE's BDD DDPM flags (paper.yaml ace_bdd_ddpm: 4 levels 1,2,3,4, attention "16,8" at 256 = never reached) at
# reduced widths
BDD_FLAGS = dict(image_size=256, num_channels=32, num_res_blocks=1, channel_mult="1,2,3,4",
                 attention_resolutions="16,8", num_head_channels=32, learn_sigma=True, resblock_updown=True,
                 use_scale_shift_norm=True)
FACE_FLAGS = dict(image_size=16, num_channels=32, num_res_blocks=1, channel_mult="1,2", attention_resolutions="8",
                  num_heads=2, learn_sigma=True, resblock_updown=True, use_scale_shift_norm=True)
DIFFUSION = {"diffusion_steps": 100, "learn_sigma": True}
ACE = {"timestep_respacing": "20", "batch_size": 2,
       "config": {"attack_iterations": 2, "attack_step": 2.5, "dist_l1": 0.001, "sampling_time_fraction": 0.1},
       "postprocess": {"sampling_time_fraction": 0.1, "sampling_inpaint": 0.15, "sampling_dilation": 3}}


def to_tensor(image: Image.Image) -> torch.Tensor:
    """[−1,1] CHW tensor of a PIL image, computed with numpy (not torchvision)."""
    return torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0 * 2 - 1).permute(2, 0, 1)


def save_unet(flags: dict, path: Path) -> None:
    torch.manual_seed(0)
    unet = create_model(**flags)
    with torch.no_grad():
        for p in unet.parameters():
            p.mul_(0.3)
    torch.save(unet.state_dict(), path)


# --- GCD: its settings, a random classifier and a tiny DiffAE ---------------------------------------------------------

ARCH = dict(growth_rate=8, block_config=[1, 1], num_init_features=16)
DAE_FLAGS = dict(img_size=32, net_ch=32, net_ch_mult=[1, 2], net_enc_channel_mult=[1, 2], net_attn=[16],
                 style_ch=32, net_beatgans_embed_channels=32)
GCD = {"diffae": "tiny_dae", "lpips": {"kind": "lpips_random", "seed": 0}, "batch_size": 2,
       "config": {"n_iters": 2, "n_steps_dae": 1, "dae_batch_size": 24, "proxy_batch_size": 8, "n_steps_proxy": 5,
                  "proxy_hidden": [8], "n_hessian_eigenvecs": 1, "line_search_batch_size": 6, "T_encode": 2,
                  "T_render": 2, "transfer_batch_size": 4, "bblig_n_steps": 4, "bblig_path_length": 3}}
MODELS = {"plain": {"kind": "classifier", "arch": ARCH}, "tiny_dae": {"kind": "diffae", "flags": DAE_FLAGS}}


def save_tiny_gcd_models(root: Path) -> None:
    """The random classifier ``root/plain.pt`` and tiny DiffAE ``root/tiny_dae.ckpt`` that MODELS names (seed 0)."""
    torch.manual_seed(0)
    save_celeba_classifier(DenseNetClassifier(**ARCH), root / "plain.pt")
    dae = create_diffae(None, **DAE_FLAGS)
    with torch.no_grad():
        for p in dae.parameters():
            p.normal_(0, 0.05)
    torch.save(lightning_checkpoint(dae), root / "tiny_dae.ckpt")


# --- LDMs -------------------------------------------------------------------------------------------------------------

# A tiny model with cin256-v2's structure (VQ first stage, spatial-transformer UNet, class embedder with a null
# class) for the loading round trips
TINY_VQ = {
    "linear_start": 0.0015, "linear_end": 0.0195, "timesteps": 1000,
    "unet_config": {"params": {"image_size": 8, "in_channels": 3, "out_channels": 3, "model_channels": 32,
                               "attention_resolutions": [1, 2], "num_res_blocks": 1, "channel_mult": [1, 2],
                               "num_heads": 1, "use_spatial_transformer": True, "context_dim": 16}},
    "first_stage_config": {"target": "ldm.models.autoencoder.VQModelInterface", "params": {
        "embed_dim": 3, "n_embed": 64, "ddconfig": {"double_z": False, "z_channels": 3, "resolution": 32,
                                                    "in_channels": 3, "out_ch": 3, "ch": 32, "ch_mult": [1, 2, 2],
                                                    "num_res_blocks": 1, "attn_resolutions": [8], "dropout": 0.0}}},
    "cond_stage_config": {"target": "ldm.modules.encoders.modules.ClassEmbedder",
                          "params": {"n_classes": 11, "embed_dim": 16, "key": "class_label"}},
}
TINY_KL = {**TINY_VQ, "scale_factor": 0.5, "unet_config": {"params": {
    **TINY_VQ["unet_config"]["params"], "in_channels": 4, "out_channels": 4}},
    "first_stage_config": {"target": "ldm.models.autoencoder.AutoencoderKL", "params": {
        "embed_dim": 4, "ddconfig": {**TINY_VQ["first_stage_config"]["params"]["ddconfig"], "double_z": True,
                                     "z_channels": 4}}}}


# --- LDCE: a tiny class-conditional LDM standing in for the text-conditioned ones -------------------------------------


def spy_on_prompts(monkeypatch, names: list[str], prefix: str, suffix: str) -> list[list[str]]:
    """Record the prompt batches LDCE-txt conditions the LDM on, and map each prompt "{prefix}{name}{suffix}" back
    to its class (the index of ``name``), so that a tiny class-conditional LDM stands in for miniSD."""
    from cfx.models.ldm import LatentDiffusion

    prompted: list[list[str]] = []
    learned = LatentDiffusion.get_learned_conditioning

    def spy(self, c):
        if isinstance(c, list):
            prompted.append(list(c))
            c = torch.tensor([names.index(text[len(prefix):len(text) - len(suffix)]) for text in c])
        return learned(self, c)

    monkeypatch.setattr(LatentDiffusion, "get_learned_conditioning", spy)
    return prompted


def tiny_class_ldm_config() -> dict:
    # cin256-v2's structure at toy widths: 1000 classes plus the null class, a 32 px VQ first stage (8 px latents)
    return {**TINY_VQ, "cond_stage_config": {**TINY_VQ["cond_stage_config"],
                                             "params": {**TINY_VQ["cond_stage_config"]["params"], "n_classes": 1001}}}


# --- DINO -------------------------------------------------------------------------------------------------------------


def dino_state(embed: int = 64, depth: int = 2, patch: int = 16, img: int = 224, seed: int = 0) -> dict:
    """Random weights in the key layout of DINO's published ViT files (vision_transformer.py, ``num_classes=0``)."""
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape, std=0.05, mean=0.0):
        return mean + std * torch.randn(*shape, generator=g)

    hidden = 4 * embed
    state = {"cls_token": rnd(1, 1, embed, std=0.5), "pos_embed": rnd(1, (img // patch) ** 2 + 1, embed, std=0.5),
             "patch_embed.proj.weight": rnd(embed, 3, patch, patch, std=0.02), "patch_embed.proj.bias": rnd(embed)}
    for i in range(depth):
        p = f"blocks.{i}."
        state.update({p + "norm1.weight": rnd(embed, std=0.1, mean=1.0), p + "norm1.bias": rnd(embed),
                      p + "attn.qkv.weight": rnd(3 * embed, embed, std=0.15), p + "attn.qkv.bias": rnd(3 * embed),
                      p + "attn.proj.weight": rnd(embed, embed, std=0.1), p + "attn.proj.bias": rnd(embed),
                      p + "norm2.weight": rnd(embed, std=0.1, mean=1.0), p + "norm2.bias": rnd(embed),
                      p + "mlp.fc1.weight": rnd(hidden, embed, std=0.1), p + "mlp.fc1.bias": rnd(hidden),
                      p + "mlp.fc2.weight": rnd(embed, hidden, std=0.05), p + "mlp.fc2.bias": rnd(embed)})
    state.update({"norm.weight": rnd(embed, std=0.1, mean=1.0), "norm.bias": rnd(embed)})
    return state
