"""Latent diffusion models as LDCE uses them (CompVis ``latent-diffusion`` / ``stable-diffusion`` v1).

Module names, nesting and shapes equal upstream's so the published Lightning checkpoints load strictly:

* first stage (``ldm/modules/diffusionmodules/model.py:Encoder/Decoder``, ``ldm/models/autoencoder.py``):
  ``VQModelInterface`` (cin256-v2: VQ-f4, 8192 codes, latent 3×64×64; ``encode`` = encoder + quant_conv without
  quantising, ``decode`` quantises with taming's ``VectorQuantizer2`` straight-through) and ``AutoencoderKL``
  (SD-v1: KL-f8, latent 4×32×32 at 256², scale 0.18215; ``encode`` gives the diagonal Gaussian posterior);
* denoiser (``ldm/modules/diffusionmodules/openaimodel.py:UNetModel`` with ``attention.py:SpatialTransformer``),
  under ``model.diffusion_model.``;
* conditioner (``ldm/modules/encoders/modules.py``): ``ClassEmbedder`` (cin256-v2: 1001 classes, 1000 =
  unconditional) or ``FrozenCLIPEmbedder`` (SD-v1: CLIP ViT-L/14 text model through ``transformers``);
* ``LatentDiffusion`` (``ldm/models/diffusion/ddpm.py``): the schedule buffers of ``register_schedule`` and
  ``scale_factor`` (a buffer when ``scale_by_std``).

:func:`build_ldm` takes an upstream yaml's ``model.params`` (``target:`` class paths accepted);
:func:`load_ldm_checkpoint` loads strictly with an explicit allow-list of the parts LDCE does not use.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cfx.models.adm import (
    AttentionBlock,
    Downsample,
    ResBlock,
    Upsample,
    normalization,
    timestep_embedding,
    zero_module,
)
from cfx.models.ldm_ddim import make_beta_schedule
from cfx.runtime.checkpoints import load_checkpoint, save_checkpoint_atomic

# --------------------------------------------------------------------------------------------------------------
# First stage: ldm/modules/diffusionmodules/model.py


def _normalize(channels: int) -> nn.GroupNorm:
    """``model.py:Normalize``: GroupNorm(32, eps 1e-6)."""
    return nn.GroupNorm(num_groups=32, num_channels=channels, eps=1e-6, affine=True)


class AEResnetBlock(nn.Module):
    """``model.py:ResnetBlock`` without timestep embedding (``temb_channels`` = 0 in the autoencoders)."""

    def __init__(self, in_channels: int, out_channels: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.norm1 = _normalize(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = _normalize(out_channels)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        if in_channels != out_channels:
            self.nin_shortcut = nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return (self.nin_shortcut(x) if hasattr(self, "nin_shortcut") else x) + h


class AEAttnBlock(nn.Module):
    """``model.py:AttnBlock`` (vanilla): single-head attention over the pixels with 1×1 conv projections."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm = _normalize(channels)
        self.q, self.k, self.v = (nn.Conv2d(channels, channels, 1) for _ in range(3))
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm(x)
        b, c, hh, ww = h.shape
        q = self.q(h).reshape(b, c, hh * ww).transpose(1, 2)
        k = self.k(h).reshape(b, c, hh * ww).transpose(1, 2)
        v = self.v(h).reshape(b, c, hh * ww).transpose(1, 2)
        out = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, c, hh, ww)
        return x + self.proj_out(out)


class AEDownsample(nn.Module):
    """``model.py:Downsample`` with conv: pad (0,1,0,1), 3×3 stride-2 conv without padding."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class AEUpsample(nn.Module):
    """``model.py:Upsample`` with conv: nearest ×2, 3×3 conv."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


def _check_ddconfig(ddconfig: dict[str, Any]) -> None:
    if ddconfig.get("attn_type", "vanilla") != "vanilla" or ddconfig.get("use_linear_attn"):
        raise ValueError("only LDM's vanilla autoencoder attention is implemented (cin256-v2, SD-v1 use it)")
    if not ddconfig.get("resamp_with_conv", True):
        raise ValueError("resamp_with_conv: false is not implemented (every published LDM autoencoder uses true)")


class Encoder(nn.Module):
    """``model.py:Encoder``: conv_in, per level ``num_res_blocks`` ResnetBlocks (+ attention at
    ``attn_resolutions``) and a downsample except at the last level, mid (block, attention, block), norm, conv_out
    to ``2·z_channels`` (``double_z``) or ``z_channels``."""

    def __init__(self, *, ch: int, ch_mult: list[int], num_res_blocks: int, attn_resolutions: list[int],
                 in_channels: int, resolution: int, z_channels: int, double_z: bool = True, dropout: float = 0.0,
                 **ddconfig: Any) -> None:
        super().__init__()
        _check_ddconfig(ddconfig)
        self.num_res_blocks = num_res_blocks
        self.conv_in = nn.Conv2d(in_channels, ch, 3, padding=1)
        in_ch_mult = (1, *ch_mult)
        curr_res = resolution
        self.down = nn.ModuleList()
        block_in = ch
        for level, mult in enumerate(ch_mult):
            down = nn.Module()
            down.block, down.attn = nn.ModuleList(), nn.ModuleList()
            block_in, block_out = ch * in_ch_mult[level], ch * mult
            for _ in range(num_res_blocks):
                down.block.append(AEResnetBlock(block_in, block_out, dropout))
                block_in = block_out
                if curr_res in attn_resolutions:
                    down.attn.append(AEAttnBlock(block_in))
            if level != len(ch_mult) - 1:
                down.downsample = AEDownsample(block_in)
                curr_res //= 2
            self.down.append(down)
        self.mid = nn.Module()
        self.mid.block_1 = AEResnetBlock(block_in, block_in, dropout)
        self.mid.attn_1 = AEAttnBlock(block_in)
        self.mid.block_2 = AEResnetBlock(block_in, block_in, dropout)
        self.norm_out = _normalize(block_in)
        self.conv_out = nn.Conv2d(block_in, 2 * z_channels if double_z else z_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for level, down in enumerate(self.down):
            for i in range(self.num_res_blocks):
                h = down.block[i](h)
                if len(down.attn) > 0:
                    h = down.attn[i](h)
            if level != len(self.down) - 1:
                h = down.downsample(h)
        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(h)))
        return self.conv_out(F.silu(self.norm_out(h)))


class Decoder(nn.Module):
    """``model.py:Decoder``: conv_in from ``z_channels``, mid, per level (deepest first) ``num_res_blocks + 1``
    ResnetBlocks (+ attention) and an upsample except at level 0; ``up`` is indexed by level as upstream."""

    def __init__(self, *, ch: int, out_ch: int, ch_mult: list[int], num_res_blocks: int, attn_resolutions: list[int],
                 resolution: int, z_channels: int, dropout: float = 0.0, give_pre_end: bool = False,
                 tanh_out: bool = False, **ddconfig: Any) -> None:
        super().__init__()
        _check_ddconfig(ddconfig)
        if give_pre_end or tanh_out:
            raise ValueError("give_pre_end / tanh_out are not used by any published LDM autoencoder")
        self.num_res_blocks = num_res_blocks
        block_in = ch * ch_mult[-1]
        curr_res = resolution // 2 ** (len(ch_mult) - 1)
        self.conv_in = nn.Conv2d(z_channels, block_in, 3, padding=1)
        self.mid = nn.Module()
        self.mid.block_1 = AEResnetBlock(block_in, block_in, dropout)
        self.mid.attn_1 = AEAttnBlock(block_in)
        self.mid.block_2 = AEResnetBlock(block_in, block_in, dropout)
        ups: list[nn.Module] = []
        for level in reversed(range(len(ch_mult))):
            up = nn.Module()
            up.block, up.attn = nn.ModuleList(), nn.ModuleList()
            block_out = ch * ch_mult[level]
            for _ in range(num_res_blocks + 1):
                up.block.append(AEResnetBlock(block_in, block_out, dropout))
                block_in = block_out
                if curr_res in attn_resolutions:
                    up.attn.append(AEAttnBlock(block_in))
            if level != 0:
                up.upsample = AEUpsample(block_in)
                curr_res *= 2
            ups.insert(0, up)
        self.up = nn.ModuleList(ups)
        self.norm_out = _normalize(block_in)
        self.conv_out = nn.Conv2d(block_in, out_ch, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(self.conv_in(z))))
        for level in reversed(range(len(self.up))):
            up = self.up[level]
            for i in range(self.num_res_blocks + 1):
                h = up.block[i](h)
                if len(up.attn) > 0:
                    h = up.attn[i](h)
            if level != 0:
                h = up.upsample(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class DiagonalGaussian:
    """``ldm/modules/distributions/distributions.py:DiagonalGaussianDistribution`` (logvar clamped to [−30, 20])."""

    def __init__(self, moments: torch.Tensor) -> None:
        self.mean, logvar = torch.chunk(moments, 2, dim=1)
        self.logvar = logvar.clamp(-30.0, 20.0)
        self.std = torch.exp(0.5 * self.logvar)

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        noise = torch.randn(self.mean.shape, generator=generator, dtype=torch.float32,
                            device=generator.device if generator is not None else "cpu")
        return self.mean + self.std * noise.to(self.mean.device, self.mean.dtype)

    def mode(self) -> torch.Tensor:
        return self.mean

    def kl(self) -> torch.Tensor:
        """KL to N(0, I), summed over C, H, W."""
        return 0.5 * (self.mean.pow(2) + self.logvar.exp() - 1.0 - self.logvar).sum(dim=(1, 2, 3))


class AutoencoderKL(nn.Module):
    """``autoencoder.py:AutoencoderKL`` (inference parts; ``lossconfig`` is ``torch.nn.Identity`` inside LDMs)."""

    def __init__(self, ddconfig: dict[str, Any], embed_dim: int) -> None:
        super().__init__()
        if not ddconfig.get("double_z", True):
            raise ValueError("AutoencoderKL needs ddconfig.double_z: true (mean and log-variance)")
        self.encoder = Encoder(**ddconfig)
        self.decoder = Decoder(**ddconfig)
        self.quant_conv = nn.Conv2d(2 * ddconfig["z_channels"], 2 * embed_dim, 1)
        self.post_quant_conv = nn.Conv2d(embed_dim, ddconfig["z_channels"], 1)

    def encode(self, x: torch.Tensor) -> DiagonalGaussian:
        return DiagonalGaussian(self.quant_conv(self.encoder(x)))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.post_quant_conv(z))


class VectorQuantizer(nn.Module):
    """taming ``VectorQuantizer2`` forward for inference: nearest code per latent pixel, straight-through
    (z + (z_q − z).detach()); only ``embedding.weight`` is state (``remap`` None)."""

    def __init__(self, n_embed: int, embed_dim: int) -> None:
        super().__init__()
        self.embedding = nn.Embedding(n_embed, embed_dim)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        z_perm = z.permute(0, 2, 3, 1)
        flat = z_perm.reshape(-1, z.shape[1])
        codes = self.embedding.weight
        dist = flat.pow(2).sum(1, keepdim=True) + codes.pow(2).sum(1) - 2 * flat @ codes.t()
        z_q = self.embedding(dist.argmin(1)).view(z_perm.shape)
        z_q = z_perm + (z_q - z_perm).detach()
        return z_q.permute(0, 3, 1, 2).contiguous()


class VQModelInterface(nn.Module):
    """``autoencoder.py:VQModelInterface``: ``encode`` stops before quantisation, ``decode`` quantises."""

    def __init__(self, ddconfig: dict[str, Any], embed_dim: int, n_embed: int) -> None:
        super().__init__()
        self.encoder = Encoder(**ddconfig)
        self.decoder = Decoder(**ddconfig)
        self.quantize = VectorQuantizer(n_embed, embed_dim)
        self.quant_conv = nn.Conv2d(ddconfig["z_channels"], embed_dim, 1)
        self.post_quant_conv = nn.Conv2d(embed_dim, ddconfig["z_channels"], 1)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.quant_conv(self.encoder(x))

    def decode(self, h: torch.Tensor, force_not_quantize: bool = False) -> torch.Tensor:
        return self.decoder(self.post_quant_conv(h if force_not_quantize else self.quantize(h)))


# --------------------------------------------------------------------------------------------------------------
# Denoiser: ldm/modules/attention.py, ldm/modules/diffusionmodules/openaimodel.py


class GEGLU(nn.Module):
    def __init__(self, dim_in: int, dim_out: int) -> None:
        super().__init__()
        self.proj = nn.Linear(dim_in, dim_out * 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, gate = self.proj(x).chunk(2, dim=-1)
        return x * F.gelu(gate)


class FeedForward(nn.Module):
    """``attention.py:FeedForward`` with ``glu`` (GEGLU, mult 4): keys ``net.0.proj``, ``net.2``."""

    def __init__(self, dim: int, mult: int = 4, dropout: float = 0.0) -> None:
        super().__init__()
        self.net = nn.Sequential(GEGLU(dim, dim * mult), nn.Dropout(dropout), nn.Linear(dim * mult, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class CrossAttention(nn.Module):
    """``attention.py:CrossAttention``: bias-free q/k/v projections, softmax(q·kᵀ/√d)·v per head, ``to_out.0``."""

    def __init__(self, query_dim: int, context_dim: int | None = None, heads: int = 8, dim_head: int = 64,
                 dropout: float = 0.0) -> None:
        super().__init__()
        inner = heads * dim_head
        context_dim = context_dim or query_dim
        self.heads = heads
        self.to_q = nn.Linear(query_dim, inner, bias=False)
        self.to_k = nn.Linear(context_dim, inner, bias=False)
        self.to_v = nn.Linear(context_dim, inner, bias=False)
        self.to_out = nn.Sequential(nn.Linear(inner, query_dim), nn.Dropout(dropout))

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        context = x if context is None else context
        b, n, _ = x.shape

        def heads(t: torch.Tensor) -> torch.Tensor:
            return t.reshape(b, t.shape[1], self.heads, -1).transpose(1, 2)

        out = F.scaled_dot_product_attention(heads(self.to_q(x)), heads(self.to_k(context)), heads(self.to_v(context)))
        return self.to_out(out.transpose(1, 2).reshape(b, n, -1))


class BasicTransformerBlock(nn.Module):
    """Self-attention, cross-attention to the context, gated feed-forward; pre-LayerNorm residuals."""

    def __init__(self, dim: int, n_heads: int, d_head: int, dropout: float = 0.0,
                 context_dim: int | None = None) -> None:
        super().__init__()
        self.attn1 = CrossAttention(dim, heads=n_heads, dim_head=d_head, dropout=dropout)
        self.ff = FeedForward(dim, dropout=dropout)
        self.attn2 = CrossAttention(dim, context_dim=context_dim, heads=n_heads, dim_head=d_head, dropout=dropout)
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        x = self.attn1(self.norm1(x)) + x
        x = self.attn2(self.norm2(x), context=context) + x
        return self.ff(self.norm3(x)) + x


class SpatialTransformer(nn.Module):
    """``attention.py:SpatialTransformer``: GroupNorm(eps 1e-6), 1×1 conv in, transformer blocks over the pixels,
    zero-initialised 1×1 conv out, residual."""

    def __init__(self, in_channels: int, n_heads: int, d_head: int, depth: int = 1, dropout: float = 0.0,
                 context_dim: int | None = None) -> None:
        super().__init__()
        inner = n_heads * d_head
        self.norm = _normalize(in_channels)
        self.proj_in = nn.Conv2d(in_channels, inner, 1)
        self.transformer_blocks = nn.ModuleList(
            [BasicTransformerBlock(inner, n_heads, d_head, dropout=dropout, context_dim=context_dim)
             for _ in range(depth)])
        self.proj_out = zero_module(nn.Conv2d(inner, in_channels, 1))

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        b, c, h, w = x.shape
        y = self.proj_in(self.norm(x))
        y = y.reshape(b, y.shape[1], h * w).transpose(1, 2)
        for block in self.transformer_blocks:
            y = block(y, context=context)
        y = y.transpose(1, 2).reshape(b, -1, h, w)
        return self.proj_out(y) + x


class _EmbedSequential(nn.Sequential):
    """``openaimodel.py:TimestepEmbedSequential``: ResBlocks get the embedding, SpatialTransformers the context."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        for layer in self:
            if isinstance(layer, ResBlock):
                x = layer(x, emb)
            elif isinstance(layer, SpatialTransformer):
                x = layer(x, context)
            else:
                x = layer(x)
        return x


class LDMUNet(nn.Module):
    """``openaimodel.py:UNetModel`` as the LDM configs use it (2-d, no fp16 flag; ``use_checkpoint`` and
    ``use_fp16`` accepted and ignored). Attention at downsampling rates ``attention_resolutions``: a
    SpatialTransformer with ``context_dim`` (cross-attention) or guided-diffusion's AttentionBlock."""

    def __init__(self, *, image_size: int, in_channels: int, model_channels: int, out_channels: int,
                 num_res_blocks: int, attention_resolutions: list[int], dropout: float = 0.0,
                 channel_mult: list[int] = (1, 2, 4, 8), conv_resample: bool = True, dims: int = 2,
                 num_classes: int | None = None, use_checkpoint: bool = False, use_fp16: bool = False,
                 num_heads: int = -1, num_head_channels: int = -1, num_heads_upsample: int = -1,
                 use_scale_shift_norm: bool = False, resblock_updown: bool = False,
                 use_new_attention_order: bool = False, use_spatial_transformer: bool = False,
                 transformer_depth: int = 1, context_dim: int | None = None, n_embed: int | None = None,
                 legacy: bool = True) -> None:
        super().__init__()
        if dims != 2 or n_embed is not None:
            raise ValueError("only the 2-d UNet without a codebook predictor (n_embed) is implemented")
        if use_spatial_transformer and context_dim is None:
            raise ValueError("use_spatial_transformer needs context_dim (the cross-attention conditioning)")
        if num_heads == -1 and num_head_channels == -1:
            raise ValueError("set num_heads or num_head_channels")
        self.model_channels = model_channels
        self.num_classes = num_classes
        emb_dim = model_channels * 4
        self.time_embed = nn.Sequential(nn.Linear(model_channels, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        if num_classes is not None:
            self.label_emb = nn.Embedding(num_classes, emb_dim)

        def attention(ch: int) -> nn.Module:
            heads, dim_head = num_heads, ch // num_heads if num_head_channels == -1 else num_head_channels
            if num_head_channels != -1:
                heads = ch // num_head_channels
            if legacy:
                dim_head = ch // heads if use_spatial_transformer else num_head_channels
            if use_spatial_transformer:
                return SpatialTransformer(ch, heads, dim_head, depth=transformer_depth, context_dim=context_dim)
            return AttentionBlock(ch, num_heads=heads, num_head_channels=dim_head,
                                  use_new_attention_order=use_new_attention_order)

        def resblock(ch: int, out: int, **updown: bool) -> ResBlock:
            return ResBlock(ch, emb_dim, dropout, out_channels=out, use_scale_shift_norm=use_scale_shift_norm,
                            **updown)

        self.input_blocks = nn.ModuleList([_EmbedSequential(nn.Conv2d(in_channels, model_channels, 3, padding=1))])
        chans, ch, ds = [model_channels], model_channels, 1
        for level, mult in enumerate(channel_mult):
            for _ in range(num_res_blocks):
                layers: list[nn.Module] = [resblock(ch, mult * model_channels)]
                ch = mult * model_channels
                if ds in attention_resolutions:
                    layers.append(attention(ch))
                self.input_blocks.append(_EmbedSequential(*layers))
                chans.append(ch)
            if level != len(channel_mult) - 1:
                self.input_blocks.append(_EmbedSequential(
                    resblock(ch, ch, down=True) if resblock_updown else Downsample(ch, conv_resample, out_channels=ch)))
                chans.append(ch)
                ds *= 2
        self.middle_block = _EmbedSequential(resblock(ch, ch), attention(ch), resblock(ch, ch))
        self.output_blocks = nn.ModuleList()
        for level, mult in list(enumerate(channel_mult))[::-1]:
            for i in range(num_res_blocks + 1):
                layers = [resblock(ch + chans.pop(), model_channels * mult)]
                ch = model_channels * mult
                if ds in attention_resolutions:
                    layers.append(attention(ch))
                if level and i == num_res_blocks:
                    layers.append(resblock(ch, ch, up=True) if resblock_updown
                                  else Upsample(ch, conv_resample, out_channels=ch))
                    ds //= 2
                self.output_blocks.append(_EmbedSequential(*layers))
        self.out = nn.Sequential(normalization(ch), nn.SiLU(),
                                 zero_module(nn.Conv2d(model_channels, out_channels, 3, padding=1)))

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, context: torch.Tensor | None = None,
                y: torch.Tensor | None = None) -> torch.Tensor:
        emb = self.time_embed(timestep_embedding(timesteps, self.model_channels))
        if self.num_classes is not None:
            if y is None:
                raise ValueError("this UNet is class-conditional (num_classes): pass y")
            emb = emb + self.label_emb(y)
        hs, h = [], x
        for module in self.input_blocks:
            h = module(h, emb, context)
            hs.append(h)
        h = self.middle_block(h, emb, context)
        for module in self.output_blocks:
            h = module(torch.cat([h, hs.pop()], dim=1), emb, context)
        return self.out(h)


class DiffusionWrapper(nn.Module):
    """``ddpm.py:DiffusionWrapper`` (``conditioning_key`` crossattn): keys ``model.diffusion_model.*``."""

    def __init__(self, unet: LDMUNet) -> None:
        super().__init__()
        self.diffusion_model = unet

    def forward(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        return self.diffusion_model(x, t, context=context)


# --------------------------------------------------------------------------------------------------------------
# Conditioners: ldm/modules/encoders/modules.py


class ClassEmbedder(nn.Module):
    """``modules.py:ClassEmbedder``: labels → (B, 1, embed_dim); the last class is LDCE's "unconditional"."""

    def __init__(self, embed_dim: int, n_classes: int = 1000, key: str = "class") -> None:
        super().__init__()
        self.key = key
        self.n_classes = n_classes
        self.embedding = nn.Embedding(n_classes, embed_dim)

    def forward(self, labels: torch.Tensor) -> torch.Tensor:
        labels = torch.as_tensor(labels, device=self.embedding.weight.device).long()
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= self.n_classes):
            raise ValueError(f"class labels must lie in 0..{self.n_classes - 1}, got {labels.tolist()}")
        return self.embedding(labels[:, None])

    def unconditional(self, batch: int) -> torch.Tensor:
        return self(torch.full((batch,), self.n_classes - 1, dtype=torch.long))


class FrozenCLIPEmbedder(nn.Module):
    """``modules.py:FrozenCLIPEmbedder``: CLIP tokenizer (pad/truncate to 77) + ``CLIPTextModel``'s last hidden
    state. ``version`` is a local directory holding the Hugging Face repository's ``config.json`` and tokenizer
    files (no download at run time); the weights come from the LDM checkpoint (``cond_stage_model.transformer.*``).
    ``text_config`` (a ``transformers.CLIPTextConfig``) with ``tokenizer`` builds one without files (tests)."""

    def __init__(self, version: str | Path | None = None, max_length: int = 77, text_config: Any = None,
                 tokenizer: Any = None, **_: Any) -> None:
        super().__init__()
        from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

        self.max_length = max_length
        if text_config is None:
            if version is None or not Path(version).is_dir():
                raise FileNotFoundError(
                    f"FrozenCLIPEmbedder needs the files of Hugging Face openai/clip-vit-large-patch14 (config.json, "
                    f"vocab.json, merges.txt, tokenizer files) in a local directory; '{version}' is not one. "
                    "Download them once (huggingface-cli download openai/clip-vit-large-patch14 --local-dir DIR) and "
                    "set cond_stage_config.params.version: DIR")
            text_config = CLIPTextConfig.from_pretrained(version)
            tokenizer = CLIPTokenizer.from_pretrained(version)
        if tokenizer is None:
            raise ValueError("FrozenCLIPEmbedder with text_config also needs a tokenizer")
        self.tokenizer = tokenizer
        text = CLIPTextModel(text_config)
        # keys as the published checkpoints (transformers 4: cond_stage_model.transformer.text_model.*); transformers
        # 5 flattened CLIPTextModel, so its modules are nested under a holder of the same name
        if hasattr(text, "text_model"):
            self.transformer = text
        else:
            self.transformer = nn.Module()
            self.transformer.text_model = text
        object.__setattr__(self, "_text_model", text)

    def forward(self, prompts: list[str]) -> torch.Tensor:
        device = next(self.transformer.parameters()).device
        tokens = self.tokenizer(list(prompts), truncation=True, max_length=self.max_length, padding="max_length",
                                return_tensors="pt")["input_ids"].to(device)
        return self._text_model(input_ids=tokens).last_hidden_state

    def unconditional(self, batch: int) -> torch.Tensor:
        return self([""] * batch)


# --------------------------------------------------------------------------------------------------------------
# LatentDiffusion: ldm/models/diffusion/ddpm.py

_TARGETS = {
    "ldm.models.autoencoder.VQModelInterface": "vq",
    "ldm.models.autoencoder.AutoencoderKL": "kl",
    "ldm.modules.encoders.modules.ClassEmbedder": "class",
    "ldm.modules.encoders.modules.FrozenCLIPEmbedder": "clip",
    "ldm.modules.diffusionmodules.openaimodel.UNetModel": "unet",
}
SCHEDULE_BUFFERS = ("betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod",
                    "sqrt_one_minus_alphas_cumprod", "log_one_minus_alphas_cumprod", "sqrt_recip_alphas_cumprod",
                    "sqrt_recipm1_alphas_cumprod", "posterior_variance", "posterior_log_variance_clipped",
                    "posterior_mean_coef1", "posterior_mean_coef2")


def _kind(section: dict[str, Any], name: str) -> str:
    kind = section.get("kind") or _TARGETS.get(section.get("target", ""))
    if kind is None:
        raise ValueError(f"LDM config {name}: unknown target '{section.get('target')}' (known: {sorted(_TARGETS)}; or "
                         "give kind: vq | kl | class | clip)")
    return kind


class LatentDiffusion(nn.Module):
    """The parts of ``ddpm.py:LatentDiffusion`` LDCE uses: first stage, denoiser, conditioner, schedule."""

    def __init__(self, *, unet_config: dict[str, Any], first_stage_config: dict[str, Any],
                 cond_stage_config: dict[str, Any], linear_start: float = 1e-4, linear_end: float = 2e-2,
                 timesteps: int = 1000, beta_schedule: str = "linear", scale_factor: float = 1.0,
                 scale_by_std: bool = False, conditioning_key: str = "crossattn", parameterization: str = "eps",
                 **_ignored: Any) -> None:
        super().__init__()
        if conditioning_key != "crossattn" or parameterization != "eps":
            raise ValueError("LDCE's models are ε-prediction with cross-attention conditioning "
                             f"(got conditioning_key {conditioning_key}, parameterization {parameterization})")
        self.model = DiffusionWrapper(LDMUNet(**unet_config.get("params", unet_config)))
        fs_kind, fs = _kind(first_stage_config, "first_stage_config"), first_stage_config.get("params", {})
        if fs_kind == "vq":
            self.first_stage_model: nn.Module = VQModelInterface(fs["ddconfig"], int(fs["embed_dim"]),
                                                                 int(fs["n_embed"]))
        elif fs_kind == "kl":
            self.first_stage_model = AutoencoderKL(fs["ddconfig"], int(fs["embed_dim"]))
        else:
            raise ValueError(f"first_stage_config must be a VQ or KL autoencoder, got {fs_kind}")
        cs_kind, cs = _kind(cond_stage_config, "cond_stage_config"), cond_stage_config.get("params", {})
        if cs_kind == "class":
            self.cond_stage_model: nn.Module = ClassEmbedder(int(cs["embed_dim"]), int(cs.get("n_classes", 1000)),
                                                             cs.get("key", "class"))
        elif cs_kind == "clip":
            self.cond_stage_model = FrozenCLIPEmbedder(**cs)
        else:
            raise ValueError(f"cond_stage_config must be a ClassEmbedder or FrozenCLIPEmbedder, got {cs_kind}")
        self.linear_start, self.linear_end = float(linear_start), float(linear_end)
        betas = make_beta_schedule(beta_schedule, int(timesteps), self.linear_start, self.linear_end)
        self.num_timesteps = int(timesteps)
        for name, value in schedule_buffers(betas).items():
            self.register_buffer(name, value)
        self.scale_by_std = bool(scale_by_std)
        if self.scale_by_std:
            self.register_buffer("scale_factor", torch.tensor(float(scale_factor)))
        else:
            self.scale_factor = float(scale_factor)

    def encode_first_stage(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """z = scale·E(x) (``get_first_stage_encoding``): VQ without quantising, KL a posterior sample."""
        encoded = self.first_stage_model.encode(x)
        z = encoded.sample(generator) if isinstance(encoded, DiagonalGaussian) else encoded
        return self.scale_factor * z

    def decode_first_stage(self, z: torch.Tensor) -> torch.Tensor:
        """D(z/scale), differentiable (``differentiable_decode_first_stage``; VQ quantises straight-through)."""
        return self.first_stage_model.decode(z / self.scale_factor)

    def get_learned_conditioning(self, c: torch.Tensor | list[str]) -> torch.Tensor:
        return self.cond_stage_model(c)

    def unconditional_conditioning(self, batch: int) -> torch.Tensor:
        """The null class (ClassEmbedder: the last class, 1000 for cin256-v2) or the empty prompt (CLIP)."""
        return self.cond_stage_model.unconditional(batch)

    def apply_model(self, x_noisy: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        return self.model(x_noisy, t, cond)


def schedule_buffers(betas: np.ndarray) -> dict[str, torch.Tensor]:
    """The float32 buffers of ``DDPM.register_schedule`` (v_posterior 0) for ``betas`` (float64)."""
    alphas = 1.0 - betas
    ac = np.cumprod(alphas)
    ac_prev = np.append(1.0, ac[:-1])
    post_var = betas * (1.0 - ac_prev) / (1.0 - ac)
    values = {
        "betas": betas, "alphas_cumprod": ac, "alphas_cumprod_prev": ac_prev, "sqrt_alphas_cumprod": np.sqrt(ac),
        "sqrt_one_minus_alphas_cumprod": np.sqrt(1.0 - ac), "log_one_minus_alphas_cumprod": np.log(1.0 - ac),
        "sqrt_recip_alphas_cumprod": np.sqrt(1.0 / ac), "sqrt_recipm1_alphas_cumprod": np.sqrt(1.0 / ac - 1),
        "posterior_variance": post_var, "posterior_log_variance_clipped": np.log(np.maximum(post_var, 1e-20)),
        "posterior_mean_coef1": betas * np.sqrt(ac_prev) / (1.0 - ac),
        "posterior_mean_coef2": (1.0 - ac_prev) * np.sqrt(alphas) / (1.0 - ac),
    }
    return {name: torch.tensor(values[name], dtype=torch.float32) for name in SCHEDULE_BUFFERS}


def resolve_ldm_config(config: dict[str, Any]) -> dict[str, Any]:
    """An upstream yaml's ``model.params`` (or its ``model`` section), or ``{"preset": "cin256-v2" | "sd-v1", ...}``:
    the preset (:data:`CIN256_V2`, :data:`SD_V1`) with the other keys merged over it (e.g. SD-v1's
    ``cond_stage_config.params.version``, the local directory of the CLIP tokenizer and config)."""
    config = dict(config)
    preset = config.pop("preset", None)
    if preset is not None:
        if preset not in PRESETS:
            raise KeyError(f"unknown LDM preset '{preset}' (known: {', '.join(PRESETS)})")
        from cfx.suite import deep_merge

        return deep_merge(PRESETS[preset], config)
    return config.get("params", config) if "unet_config" not in config else config


def build_ldm(config: dict[str, Any]) -> LatentDiffusion:
    """A :class:`LatentDiffusion` from a config :func:`resolve_ldm_config` accepts."""
    return LatentDiffusion(**resolve_ldm_config(config))


# The model.params of configs/latent-diffusion/cin256-v2.yaml and configs/stable-diffusion/v1-inference.yaml, the
# parts that shape the networks and the schedule (docs/upstream/ldce_gcd_svce.md §1.4)
CIN256_V2: dict[str, Any] = {
    "linear_start": 0.0015, "linear_end": 0.0195, "timesteps": 1000, "conditioning_key": "crossattn",
    "unet_config": {"params": {
        "image_size": 64, "in_channels": 3, "out_channels": 3, "model_channels": 192,
        "attention_resolutions": [8, 4, 2], "num_res_blocks": 2, "channel_mult": [1, 2, 3, 5], "num_heads": 1,
        "use_spatial_transformer": True, "transformer_depth": 1, "context_dim": 512}},
    "first_stage_config": {"target": "ldm.models.autoencoder.VQModelInterface", "params": {
        "embed_dim": 3, "n_embed": 8192, "ddconfig": {
            "double_z": False, "z_channels": 3, "resolution": 256, "in_channels": 3, "out_ch": 3, "ch": 128,
            "ch_mult": [1, 2, 4], "num_res_blocks": 2, "attn_resolutions": [], "dropout": 0.0}}},
    "cond_stage_config": {"target": "ldm.modules.encoders.modules.ClassEmbedder", "params": {
        "n_classes": 1001, "embed_dim": 512, "key": "class_label"}},
}
SD_V1: dict[str, Any] = {
    "linear_start": 0.00085, "linear_end": 0.012, "timesteps": 1000, "scale_factor": 0.18215,
    "conditioning_key": "crossattn",
    "unet_config": {"params": {
        "image_size": 32, "in_channels": 4, "out_channels": 4, "model_channels": 320,
        "attention_resolutions": [4, 2, 1], "num_res_blocks": 2, "channel_mult": [1, 2, 4, 4], "num_heads": 8,
        "use_spatial_transformer": True, "transformer_depth": 1, "context_dim": 768, "use_checkpoint": True,
        "legacy": False}},
    "first_stage_config": {"target": "ldm.models.autoencoder.AutoencoderKL", "params": {
        "embed_dim": 4, "ddconfig": {
            "double_z": True, "z_channels": 4, "resolution": 256, "in_channels": 3, "out_ch": 3, "ch": 128,
            "ch_mult": [1, 2, 4, 4], "num_res_blocks": 2, "attn_resolutions": [], "dropout": 0.0}}},
    "cond_stage_config": {"target": "ldm.modules.encoders.modules.FrozenCLIPEmbedder", "params": {}},
}

PRESETS = {"cin256-v2": CIN256_V2, "sd-v1": SD_V1}

# Keys a published checkpoint may carry that LDCE never uses, by prefix, each with the reason. Anything else that
# is unexpected, and every missing key, is an error.
IGNORED_PREFIXES = {
    "model_ema.": "EMA copy kept by training (use_ema); LDCE samples with model.diffusion_model (cc_ddim.py calls "
                  "apply_model outside ema_scope)",
    "first_stage_model.loss.": "the autoencoder's training loss (LPIPS + discriminator)",
    "cond_stage_model.transformer.text_model.embeddings.position_ids": "a constant buffer older transformers saved",
    "logvar": "the learned log-variance of training (learn_logvar)",
    "lvlb_weights": "a training-loss weight (non-persistent upstream)",
    "cond_ids": "the shortened conditioning schedule of training",
}


def _unwrap_state_dict(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        return obj["state_dict"]
    if isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return obj
    keys = sorted(obj)[:8] if isinstance(obj, dict) else type(obj).__name__
    raise ValueError(f"{path}: not an LDM Lightning checkpoint (expected a 'state_dict' of tensors; found {keys})")


def _ignored(key: str) -> bool:
    return any(key == p or key.startswith(p) for p in IGNORED_PREFIXES)


def load_ldm_checkpoint(path: str | Path, config: dict[str, Any]) -> LatentDiffusion:
    """Build the LDM of ``config`` and load ``path`` strictly: every key of the first stage, the denoiser, the
    conditioner (and ``scale_factor`` when ``scale_by_std``) must be present with its shape; keys outside them
    are errors unless :data:`IGNORED_PREFIXES` names them; the schedule buffers, when stored, must equal the
    config's schedule (a wrong ``linear_start``/``linear_end`` fails here). Upstream loads with ``strict=False``
    (pain point P-L8)."""
    path = Path(path)
    state = dict(_unwrap_state_dict(load_checkpoint(path, "LDM checkpoint"), path))
    model = build_ldm(config)
    # the CLIP embedder's tokenizer holds no tensors; transformers' position_ids may or may not be persistent
    expected = model.state_dict()
    schedule = {k: state.pop(k) for k in list(state) if k in SCHEDULE_BUFFERS}
    for name, stored in schedule.items():
        if stored.shape != expected[name].shape or not torch.allclose(stored.float(), expected[name], rtol=1e-4,
                                                                     atol=1e-7):
            raise ValueError(f"{path}: the stored schedule buffer '{name}' differs from the config's schedule "
                             f"(timesteps {model.num_timesteps}, linear_start {model.linear_start}, linear_end "
                             f"{model.linear_end}): the checkpoint belongs to another configuration")
    params = {k for k in expected if k not in SCHEDULE_BUFFERS}
    missing = sorted(k for k in params if k not in state and not _ignored(k))
    unexpected = sorted(k for k in state if k not in params and not _ignored(k))
    mis_shaped = sorted(f"{k}: file {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
                        for k in params if k in state and state[k].shape != expected[k].shape)
    if missing or unexpected or mis_shaped:
        lines = [f"{path} does not match the LDM configuration (strict loading):"]
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", mis_shaped)):
            if keys:
                lines.append(f"  {len(keys)} {label}: {', '.join(keys[:6])}{' …' if len(keys) > 6 else ''}")
        lines.append("Check that the checkpoint and the models entry's config are the same model (cin256-v2's "
                     "model.ckpt, not latent-diffusion's cin.zip v1 model; miniSD with the SD-v1 config).")
        raise ValueError("\n".join(lines))
    model.load_state_dict({k: v for k, v in state.items() if k in params}, strict=False)
    return model.eval()


def save_ldm_checkpoint(model: LatentDiffusion, path: str | Path, **extra: Any) -> Path:
    """Write the published Lightning layout ``{"state_dict": ..., **extra}`` atomically (schedule buffers
    included, as upstream's ``LatentDiffusion.state_dict()``)."""
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    return save_checkpoint_atomic({"state_dict": state, **extra}, Path(path))


def param_count(model: nn.Module) -> int:
    return sum(math.prod(p.shape) for p in model.parameters())
