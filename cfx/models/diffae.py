"""Diffusion Autoencoder (Preechakul et al., CVPR 2022; ``phizaz/diffae``), re-implemented for GCD.

The BeatGANs autoencoder UNet (``model/unet_autoenc.py:BeatGANsAutoencModel`` on ``model/unet.py`` and
``model/blocks.py``) and its semantic encoder (``BeatGANsEncoderModel``, z_sem ∈ R^512). Module names and
therefore every ``state_dict`` key and shape follow upstream, so the ``ema_model.`` weights of the published
Lightning checkpoints load with ``strict=True`` (:func:`load_diffae_checkpoint`).

Flag names are those of upstream's ``TrainConfig`` (``config.py``): ``img_size``, ``in_channels``, ``net_ch``,
``net_ch_mult``, ``net_enc_channel_mult``, ``net_attn``, ... :data:`TEMPLATES` holds the configurations GCD uses
(``templates.py:ffhq256_autoenc``, GCD's ``dae/default/templates.py:celeba128_autoenc`` and
``dae/chexpert/templates.py:chexpert224_autoenc``, the latter with one input and one output channel).

Sampling (:class:`DDIM`) is DiffAE's ``diffusion/base.py``: T = 1000 linear β, ε-prediction, the model called with
the ORIGINAL timestep of the kept (``ddim{T}``-spaced) steps, x̂0 clipped to [−1, 1] and ε re-derived from it;
``ddim_sample`` (η = 0) renders, ``ddim_reverse_sample`` encodes x_T (GCD ``dae/default/dae.py``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from cfx.models.adm import (
    Downsample,
    GroupNorm32,
    QKVAttentionLegacy,
    Upsample,
    timestep_embedding,
    zero_module,
)
from cfx.models.diffusion import get_named_beta_schedule, space_timesteps

#: Upstream ``TrainConfig`` defaults of the autoencoder templates (``templates.py:autoenc_base``, ``config.py``).
BASE_FLAGS: dict[str, Any] = {
    "img_size": 64,
    "in_channels": 3,
    "model_out_channels": None,  # None: = in_channels (upstream: 3, or 1 in GCD's chexpert config.py)
    "net_ch": 64,
    "net_ch_mult": (1, 2, 4, 8),
    "net_enc_channel_mult": (1, 2, 4, 8, 8),
    "net_attn": (16,),
    "net_enc_attn": None,
    "net_beatgans_attn_head": 1,
    "net_beatgans_embed_channels": 512,
    "style_ch": 512,
    "net_num_res_blocks": 2,
    "net_enc_num_res_blocks": 2,
    "net_resblock_updown": True,
    "dropout": 0.1,
    "T": 1000,
    "beta_scheduler": "linear",
}

#: The DiffAE configurations GCD uses (docs/upstream/ldce_gcd_svce.md §2.2).
TEMPLATES: dict[str, dict[str, Any]] = {
    # phizaz/diffae templates.py:ffhq256_autoenc (GCD uses the FFHQ model on CelebA-HQ)
    "ffhq256_autoenc": {"img_size": 256, "net_ch": 128, "net_ch_mult": (1, 1, 2, 2, 4, 4),
                        "net_enc_channel_mult": (1, 1, 2, 2, 4, 4, 4)},
    # sobieskibj/gcd gcd/src/dae/default/templates.py:celeba128_autoenc (= ffhq128_autoenc_base)
    "celeba128_autoenc": {"img_size": 128, "net_ch": 128, "net_ch_mult": (1, 1, 2, 3, 4),
                          "net_enc_channel_mult": (1, 1, 2, 3, 4, 4)},
    # sobieskibj/gcd gcd/src/dae/chexpert/templates.py:chexpert224_autoenc (grayscale in and out)
    "chexpert224_autoenc": {"img_size": 224, "in_channels": 1, "net_ch": 128, "net_ch_mult": (1, 1, 2, 2, 4, 4),
                            "net_enc_channel_mult": (1, 1, 2, 2, 4, 4, 4)},
}


def normalization(channels: int) -> GroupNorm32:
    """DiffAE ``model/nn.py:normalization``: GroupNorm with min(32, C) groups, computed in float32."""
    return GroupNorm32(min(32, channels), channels)


class ResBlock(nn.Module):
    """``model/blocks.py:ResBlock``: in_layers (norm, SiLU, conv), optional up/down resampling, and — only with
    ``use_condition`` — a time scale-shift (``emb_layers``, 2·C) and a semantic scale (``cond_emb_layers``, C)
    applied after the out-norm: h ← norm(h)·(1 + s_t) + b_t, then h ← h·(1 + s_z) (``apply_conditions``)."""

    def __init__(self, channels: int, emb_channels: int | None, dropout: float, out_channels: int | None = None,
                 use_condition: bool = True, up: bool = False, down: bool = False, two_cond: bool = False,
                 cond_emb_channels: int | None = None, has_lateral: bool = False) -> None:
        super().__init__()
        out_channels = out_channels or channels
        self.use_condition = use_condition
        self.two_cond = two_cond
        self.has_lateral = has_lateral
        self.in_layers = nn.Sequential(normalization(channels), nn.SiLU(),
                                       nn.Conv2d(channels, out_channels, 3, padding=1))
        self.updown = up or down
        if up:
            self.h_upd, self.x_upd = Upsample(channels, False), Upsample(channels, False)
        elif down:
            self.h_upd, self.x_upd = Downsample(channels, False), Downsample(channels, False)
        else:
            self.h_upd = self.x_upd = nn.Identity()
        if use_condition:
            if emb_channels is None:
                raise ValueError("a conditioned ResBlock needs emb_channels")
            self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_channels, 2 * out_channels))
            if two_cond:
                self.cond_emb_layers = nn.Sequential(nn.SiLU(),
                                                     nn.Linear(cond_emb_channels or emb_channels, out_channels))
            self.out_layers = nn.Sequential(normalization(out_channels), nn.SiLU(), nn.Dropout(p=dropout),
                                            zero_module(nn.Conv2d(out_channels, out_channels, 3, padding=1)))
        self.skip_connection = (nn.Identity() if out_channels == channels
                                else nn.Conv2d(channels, out_channels, 1))

    def forward(self, x: torch.Tensor, emb: torch.Tensor | None = None, cond: torch.Tensor | None = None,
                lateral: torch.Tensor | None = None) -> torch.Tensor:
        if self.has_lateral:
            if lateral is None:
                raise ValueError("this block takes a lateral (skip) connection")
            x = torch.cat([x, lateral], dim=1)
        if self.updown:
            h = self.h_upd(self.in_layers[:-1](x))
            x = self.x_upd(x)
            h = self.in_layers[-1](h)
        else:
            h = self.in_layers(x)
        if self.use_condition:
            h = self.out_layers[0](h)
            if emb is not None:  # upstream ignores cond when emb is absent (apply_conditions: two_cond needs both)
                scale, shift = self.emb_layers(emb).type(h.dtype)[..., None, None].chunk(2, dim=1)
                h = h * (1 + scale) + shift
                if self.two_cond and cond is not None:
                    h = h * (1 + self.cond_emb_layers(cond).type(h.dtype)[..., None, None])
            h = self.out_layers[1:](h)
        return self.skip_connection(x) + h


class AttentionBlock(nn.Module):
    """``model/blocks.py:AttentionBlock`` (legacy head order, the only one the templates use)."""

    def __init__(self, channels: int, num_heads: int = 1) -> None:
        super().__init__()
        self.norm = normalization(channels)
        self.qkv = nn.Conv1d(channels, channels * 3, 1)
        self.attention = QKVAttentionLegacy(num_heads)
        self.proj_out = zero_module(nn.Conv1d(channels, channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, *spatial = x.shape
        x = x.reshape(b, c, -1)
        h = self.proj_out(self.attention(self.qkv(self.norm(x))))
        return (x + h).reshape(b, c, *spatial)


class Sequential(nn.Sequential):
    """``TimestepEmbedSequential``: passes emb, cond and lateral to the ResBlocks."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor | None = None, cond: torch.Tensor | None = None,
                lateral: torch.Tensor | None = None) -> torch.Tensor:  # type: ignore[override]
        for layer in self:
            x = layer(x, emb=emb, cond=cond, lateral=lateral) if isinstance(layer, ResBlock) else layer(x)
        return x


class TimeStyleSeparateEmbed(nn.Module):
    """``unet_autoenc.py:TimeStyleSeperateEmbed``: an MLP on the sinusoidal time embedding; z_sem passes as is."""

    def __init__(self, time_channels: int, time_out_channels: int) -> None:
        super().__init__()
        self.time_embed = nn.Sequential(nn.Linear(time_channels, time_out_channels), nn.SiLU(),
                                        nn.Linear(time_out_channels, time_out_channels))
        self.style = nn.Identity()

    def forward(self, time_emb: torch.Tensor) -> torch.Tensor:
        return self.time_embed(time_emb)


class SemanticEncoder(nn.Module):
    """``unet.py:BeatGANsEncoderModel`` with ``use_time_condition=False`` and ``pool='adaptivenonzero'``:
    a half UNet whose ResBlocks have no out-layers, then norm, SiLU, global average pool, 1×1 conv → z_sem."""

    def __init__(self, image_size: int, in_channels: int, model_channels: int, out_channels: int,
                 num_res_blocks: int, attention_resolutions: tuple[int, ...], channel_mult: tuple[float, ...],
                 dropout: float, num_heads: int, resblock_updown: bool) -> None:
        super().__init__()

        def block(ch_in: int, ch_out: int | None = None, **kw: Any) -> ResBlock:
            return ResBlock(ch_in, None, dropout, out_channels=ch_out, use_condition=False, **kw)

        ch = int(channel_mult[0] * model_channels)
        self.input_blocks = nn.ModuleList([Sequential(nn.Conv2d(in_channels, ch, 3, padding=1))])
        resolution = image_size
        for level, mult in enumerate(channel_mult):
            for _ in range(num_res_blocks):
                layers: list[nn.Module] = [block(ch, int(mult * model_channels))]
                ch = int(mult * model_channels)
                if resolution in attention_resolutions:
                    layers.append(AttentionBlock(ch, num_heads))
                self.input_blocks.append(Sequential(*layers))
            if level != len(channel_mult) - 1:
                resolution //= 2
                self.input_blocks.append(Sequential(block(ch, ch, down=True) if resblock_updown
                                                    else Downsample(ch, True, 2, ch)))
        self.middle_block = Sequential(block(ch), AttentionBlock(ch, num_heads), block(ch))
        self.out = nn.Sequential(normalization(ch), nn.SiLU(), nn.AdaptiveAvgPool2d((1, 1)),
                                 nn.Conv2d(ch, out_channels, 1), nn.Flatten())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x
        for module in self.input_blocks:
            h = module(h)
        return self.out(self.middle_block(h))


class BeatGANsAutoencoder(nn.Module):
    """``unet_autoenc.py:BeatGANsAutoencModel`` (``resnet_two_cond=True``, no latent DPM): ε_θ(x_t, t, z_sem)
    with the semantic encoder as ``self.encoder``. ``forward`` returns ε (upstream wraps it in ``.pred``)."""

    def __init__(self, image_size: int, in_channels: int, out_channels: int, model_channels: int,
                 channel_mult: tuple[float, ...], enc_channel_mult: tuple[float, ...],
                 attention_resolutions: tuple[int, ...], enc_attention_resolutions: tuple[int, ...] | None,
                 num_res_blocks: int, enc_num_res_blocks: int, embed_channels: int, enc_out_channels: int,
                 num_heads: int, dropout: float, resblock_updown: bool) -> None:
        super().__init__()
        self.image_size = image_size
        self.in_channels = in_channels
        self.model_channels = model_channels
        self.enc_out_channels = enc_out_channels
        self.time_embed = TimeStyleSeparateEmbed(model_channels, embed_channels)
        levels = len(channel_mult)

        def block(ch_in: int, ch_out: int | None = None, **kw: Any) -> ResBlock:
            # upstream: cond_emb_channels = resnet_cond_channels or embed_channels (= style_ch in every template)
            return ResBlock(ch_in, embed_channels, dropout, out_channels=ch_out, two_cond=True,
                            cond_emb_channels=enc_out_channels, **kw)

        ch = input_ch = int(channel_mult[0] * model_channels)
        self.input_blocks = nn.ModuleList([Sequential(nn.Conv2d(in_channels, ch, 3, padding=1))])
        chans: list[list[int]] = [[] for _ in range(levels)]
        chans[0].append(ch)
        self.input_num_blocks = [1] + [0] * (levels - 1)
        self.output_num_blocks = [0] * levels
        resolution = image_size
        for level, mult in enumerate(channel_mult):
            for _ in range(num_res_blocks):
                layers: list[nn.Module] = [block(ch, int(mult * model_channels))]
                ch = int(mult * model_channels)
                if resolution in attention_resolutions:
                    layers.append(AttentionBlock(ch, num_heads))
                self.input_blocks.append(Sequential(*layers))
                chans[level].append(ch)
                self.input_num_blocks[level] += 1
            if level != levels - 1:
                resolution //= 2
                self.input_blocks.append(Sequential(block(ch, ch, down=True) if resblock_updown
                                                    else Downsample(ch, True, 2, ch)))
                chans[level + 1].append(ch)
                self.input_num_blocks[level + 1] += 1
        self.middle_block = Sequential(block(ch), AttentionBlock(ch, num_heads), block(ch))
        self.output_blocks = nn.ModuleList([])
        for level, mult in list(enumerate(channel_mult))[::-1]:
            for i in range(num_res_blocks + 1):
                ich = chans[level].pop() if chans[level] else 0
                layers = [block(ch + ich, int(model_channels * mult), has_lateral=ich > 0)]
                ch = int(model_channels * mult)
                if resolution in attention_resolutions:
                    layers.append(AttentionBlock(ch, num_heads))
                if level and i == num_res_blocks:
                    resolution *= 2
                    layers.append(block(ch, ch, up=True) if resblock_updown else Upsample(ch, True, 2, ch))
                self.output_blocks.append(Sequential(*layers))
                self.output_num_blocks[level] += 1
        self.out = nn.Sequential(normalization(ch), nn.SiLU(),
                                 zero_module(nn.Conv2d(input_ch, out_channels, 3, padding=1)))
        self.encoder = SemanticEncoder(image_size, in_channels, model_channels, enc_out_channels, enc_num_res_blocks,
                                       enc_attention_resolutions or attention_resolutions, enc_channel_mult,
                                       dropout, num_heads, resblock_updown)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """z_sem = Enc(x), x in [−1, 1] (``BeatGANsAutoencModel.encode``)."""
        return self.encoder(x)

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        emb = self.time_embed(timestep_embedding(t, self.model_channels).to(x.dtype))
        hs: list[list[torch.Tensor]] = [[] for _ in self.input_num_blocks]
        h, k = x, 0
        for level, count in enumerate(self.input_num_blocks):
            for _ in range(count):
                h = self.input_blocks[k](h, emb=emb, cond=cond)
                hs[level].append(h)
                k += 1
        h = self.middle_block(h, emb=emb, cond=cond)
        k = 0
        for i, count in enumerate(self.output_num_blocks):
            for _ in range(count):
                lateral = hs[-i - 1].pop() if hs[-i - 1] else None
                h = self.output_blocks[k](h, emb=emb, cond=cond, lateral=lateral)
                k += 1
        return self.out(h)


def diffae_flags(template: str | None = None, **flags: Any) -> dict[str, Any]:
    """Upstream ``TrainConfig`` flags: :data:`BASE_FLAGS`, updated with ``TEMPLATES[template]``, then ``flags``."""
    if template is not None and template not in TEMPLATES:
        raise KeyError(f"unknown DiffAE template '{template}'; known: {', '.join(TEMPLATES)}")
    unknown = set(flags) - set(BASE_FLAGS)
    if unknown:
        raise KeyError(f"unknown DiffAE flags {sorted(unknown)}; known: {sorted(BASE_FLAGS)}")
    return {**BASE_FLAGS, **(TEMPLATES[template] if template else {}), **flags}


def create_diffae(template: str | None = None, **flags: Any) -> BeatGANsAutoencoder:
    """Build the autoencoder of ``template`` (a :data:`TEMPLATES` name) with ``flags`` overriding it
    (``config.py:TrainConfig.make_model_conf``, model type ``beatgans_autoenc``)."""
    f = diffae_flags(template, **flags)
    return BeatGANsAutoencoder(
        image_size=int(f["img_size"]), in_channels=int(f["in_channels"]),
        out_channels=int(f["model_out_channels"] or f["in_channels"]), model_channels=int(f["net_ch"]),
        channel_mult=tuple(f["net_ch_mult"]), enc_channel_mult=tuple(f["net_enc_channel_mult"]),
        attention_resolutions=tuple(f["net_attn"]),
        enc_attention_resolutions=tuple(f["net_enc_attn"]) if f["net_enc_attn"] else None,
        num_res_blocks=int(f["net_num_res_blocks"]), enc_num_res_blocks=int(f["net_enc_num_res_blocks"]),
        embed_channels=int(f["net_beatgans_embed_channels"]), enc_out_channels=int(f["style_ch"]),
        num_heads=int(f["net_beatgans_attn_head"]), dropout=float(f["dropout"]),
        resblock_updown=bool(f["net_resblock_updown"]),
    )


class LightningCallbackKey:
    """Stand-in for the callback classes PyTorch Lightning 1.4 uses as dict keys in ``checkpoint['callbacks']``.
    Only allow-listed under those exact names for this load; never instantiated with state."""


# Globals a Lightning 1.x checkpoint of DiffAE may reference besides tensors (callback-state keys).
LIGHTNING_GLOBALS = (
    "pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint",
    "pytorch_lightning.callbacks.lr_monitor.LearningRateMonitor",
    "pytorch_lightning.callbacks.early_stopping.EarlyStopping",
)


def read_lightning_state_dict(path: str | Path, prefix: str = "ema_model.") -> dict[str, torch.Tensor]:
    """The ``prefix`` entries of a Lightning checkpoint's ``state_dict``, prefix removed (GCD
    ``dae/default/dae.py:make_model`` keeps ``ema_model.*``). Loaded weights-only; the Lightning callback classes
    used as keys are allow-listed by name (:data:`LIGHTNING_GLOBALS`), nothing else."""
    from cfx.runtime.checkpoints import load_checkpoint

    allowed = [(LightningCallbackKey, name) for name in LIGHTNING_GLOBALS]
    with torch.serialization.safe_globals(allowed):
        ckpt = load_checkpoint(path, "DiffAE checkpoint")
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("state_dict"), dict):
        keys = list(ckpt)[:8] if isinstance(ckpt, dict) else type(ckpt).__name__
        raise ValueError(f"{path} is not a DiffAE Lightning checkpoint: expected a dict with 'state_dict' "
                         f"(got {keys})")
    state = {k[len(prefix):]: v for k, v in ckpt["state_dict"].items() if k.startswith(prefix)}
    if not state:
        raise ValueError(f"{path}: no '{prefix}*' entries in 'state_dict' (first keys: "
                         f"{list(ckpt['state_dict'])[:5]}); DiffAE's EMA weights are what GCD loads")
    return state


def load_diffae_checkpoint(path: str | Path, template: str | None = None, **flags: Any) -> BeatGANsAutoencoder:
    """Build ``create_diffae(template, **flags)`` and load the checkpoint's ``ema_model.`` weights strictly;
    a mismatch is a ValueError naming the file and the missing, unexpected and mis-shaped keys."""
    from cfx.runtime.checkpoints import load_state_dict_strict

    state = read_lightning_state_dict(path)
    model = create_diffae(template, **flags)
    load_state_dict_strict(model, {k: v.float() for k, v in state.items()}, path, "ema_model",
                           hint=f"the checkpoint was probably trained with other flags than template "
                                f"{template!r} {flags or ''}")
    return model.eval().requires_grad_(False)


def lightning_checkpoint(model: BeatGANsAutoencoder) -> dict[str, Any]:
    """A checkpoint in the published layout (``state_dict`` with ``model.`` and ``ema_model.`` copies)."""
    weights = model.state_dict()
    state = {f"model.{k}": v for k, v in weights.items()} | {f"ema_model.{k}": v.clone() for k, v in weights.items()}
    return {"state_dict": state, "epoch": 0, "global_step": 0}


class DDIM:
    """DiffAE's spaced DDIM (``diffusion/base.py``, ``diffusion/diffusion.py:space_timesteps`` with ``ddim{steps}``),
    η = 0, ε-prediction, x̂0 clipped to [−1, 1]. ``sample`` renders x_T → x_0, ``reverse`` encodes x_0 → x_T.

    ``autocast``: run the UNet under float16 autocast on CUDA (upstream ``conf.fp16 = True``)."""

    def __init__(self, steps: int, num_timesteps: int = 1000, schedule: str = "linear", autocast: bool = False):
        betas = get_named_beta_schedule(schedule, num_timesteps)
        alphas_cumprod = torch.cumprod(torch.tensor(1.0 - betas, dtype=torch.float64), 0)
        self.timesteps = sorted(space_timesteps(num_timesteps, f"ddim{steps}"))
        self.alphas_cumprod = alphas_cumprod[self.timesteps]
        self.alphas_cumprod_prev = torch.cat([torch.ones(1, dtype=torch.float64), self.alphas_cumprod[:-1]])
        self.alphas_cumprod_next = torch.cat([self.alphas_cumprod[1:], torch.zeros(1, dtype=torch.float64)])
        self.autocast = autocast

    def __len__(self) -> int:
        return len(self.timesteps)

    def _x0_eps(self, model: Callable, x: torch.Tensor, i: int,
                cond: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        t = torch.full((x.shape[0],), self.timesteps[i], device=x.device, dtype=torch.long)
        with torch.autocast("cuda", dtype=torch.float16, enabled=self.autocast and x.is_cuda):
            eps = model(x, t, cond)
        eps = eps.float()
        a = float(self.alphas_cumprod[i])
        recip, recipm1 = math.sqrt(1.0 / a), math.sqrt(1.0 / a - 1.0)
        x0 = (recip * x - recipm1 * eps).clamp(-1, 1)
        return x0, (recip * x - x0) / recipm1

    def sample(self, model: Callable, x_T: torch.Tensor, cond: torch.Tensor, progress: bool = False) -> torch.Tensor:
        """x_T → x_0 (``ddim_sample_loop``); returns images in [−1, 1]."""
        x = x_T
        for i in tqdm(range(len(self) - 1, -1, -1), desc="DDIM render", disable=not progress, leave=False):
            x0, eps = self._x0_eps(model, x, i, cond)
            a_prev = float(self.alphas_cumprod_prev[i])
            x = x0 * math.sqrt(a_prev) + math.sqrt(1.0 - a_prev) * eps
        return x

    def reverse(self, model: Callable, x0: torch.Tensor, cond: torch.Tensor, progress: bool = False) -> torch.Tensor:
        """x_0 → x_T, the deterministic DDIM inversion (``ddim_reverse_sample_loop``)."""
        x = x0
        for i in tqdm(range(len(self)), desc="DDIM encode", disable=not progress, leave=False):
            x0_hat, eps = self._x0_eps(model, x, i, cond)
            a_next = float(self.alphas_cumprod_next[i])
            x = x0_hat * math.sqrt(a_next) + math.sqrt(1.0 - a_next) * eps
        return x


class DiffAE:
    """GCD's inference wrapper (``gcd/src/dae/default/dae.py:DAE``): ``encode`` → z_sem, ``encode_stochastic`` →
    x_T (T_encode DDIM inversion conditioned on z_sem), ``render`` (T_render DDIM steps) → images in [0, 1].
    Inputs are images in [−1, 1]; large batches are split into ``batch_size`` pieces (results do not depend on it).
    """

    def __init__(self, model: BeatGANsAutoencoder, T_encode: int = 250, T_render: int = 100,
                 batch_size: int = 128, autocast: bool = False, num_timesteps: int = 1000,
                 schedule: str = "linear") -> None:
        self.model = model.eval().requires_grad_(False)
        self.encoder_sampler = DDIM(T_encode, num_timesteps, schedule, autocast)
        self.render_sampler = DDIM(T_render, num_timesteps, schedule, autocast)
        self.batch_size = batch_size
        self.calls = 0  # UNet evaluations on one image each (cost accounting, docs/upstream/ldce_gcd_svce.md §2.6)

    def _unet(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        self.calls += x.shape[0]
        return self.model(x, t, cond)

    def _check(self, x: torch.Tensor) -> None:
        expected = (self.model.in_channels, self.model.image_size, self.model.image_size)
        if x.dim() != 4 or tuple(x.shape[1:]) != expected:
            raise ValueError(f"DiffAE expects images of shape (B, {expected[0]}, {expected[1]}, {expected[2]}) "
                             f"(no resizing, as GCD), got {tuple(x.shape)}")

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        self._check(x)
        return torch.cat([self.model.encode(c) for c in x.split(self.batch_size)])

    @torch.no_grad()
    def encode_stochastic(self, x: torch.Tensor, z_sem: torch.Tensor, progress: bool = False) -> torch.Tensor:
        self._check(x)
        return torch.cat([self.encoder_sampler.reverse(self._unet, c, z, progress)
                          for c, z in zip(x.split(self.batch_size), z_sem.split(self.batch_size), strict=True)])

    @torch.no_grad()
    def render(self, x_T: torch.Tensor, z_sem: torch.Tensor, progress: bool = False) -> torch.Tensor:
        if x_T.shape[0] != z_sem.shape[0]:
            x_T = x_T.expand(z_sem.shape[0], *x_T.shape[1:])  # make_batch_latent_ddim: one x_T for all candidates
        out = [self.render_sampler.sample(self._unet, c, z, progress)
               for c, z in zip(x_T.split(self.batch_size), z_sem.split(self.batch_size), strict=True)]
        return ((torch.cat(out) + 1) / 2).clamp(0, 1)
