"""The ADM UNet of openai/guided-diffusion (``guided_diffusion/unet.py``, ``script_util.py``), re-implemented.

``create_model`` takes guided-diffusion's ``MODEL_FLAGS`` names verbatim; the module tree (and therefore every
``state_dict`` key and shape) follows upstream, so the published DiME, ACE and openai checkpoints load with
``strict=True``. GroupNorm runs in float32 and the convolutions of the input, middle and output blocks can be
converted to float16 (``convert_to_fp16``), as upstream's ``use_fp16``. Attention is computed in upstream's
einsum form (q and k each scaled by ch^(-1/4), softmax in float32), so outputs equal upstream's bit for bit in
float32; ``use_checkpoint`` recomputes ResBlocks and attention blocks in the backward pass
(``torch.utils.checkpoint``, same numbers). :func:`set_attention_backend` switches attention to
``torch.nn.functional.scaled_dot_product_attention`` (a speed option; equal within rounding, see ``cfx bench``).
"""

from __future__ import annotations

import math
from abc import abstractmethod
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import nn

if TYPE_CHECKING:
    from cfx.models.diffusion import SpacedDiffusion

NUM_CLASSES = 1000


class GroupNorm32(nn.GroupNorm):
    """GroupNorm computed in float32 whatever the input dtype (guided-diffusion ``nn.GroupNorm32``)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x if x.dtype == torch.float64 else x.float()).type(x.dtype)


def normalization(channels: int) -> GroupNorm32:
    return GroupNorm32(32, channels)


def zero_module(module: nn.Module) -> nn.Module:
    for p in module.parameters():
        p.detach().zero_()
    return module


def conv_nd(dims: int, *args, **kwargs) -> nn.Module:
    return {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}[dims](*args, **kwargs)


def avg_pool_nd(dims: int, *args, **kwargs) -> nn.Module:
    return {1: nn.AvgPool1d, 2: nn.AvgPool2d, 3: nn.AvgPool3d}[dims](*args, **kwargs)


def timestep_embedding(timesteps: torch.Tensor, dim: int, max_period: int = 10000) -> torch.Tensor:
    """Sinusoidal embedding ``[cos(t·f), sin(t·f)]``, ``f_i = max_period^(−i/half)`` (guided-diffusion ``nn.py``)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=timesteps.device) / half)
    args = timesteps[:, None].float() * freqs[None]
    embedding = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        embedding = torch.cat([embedding, torch.zeros_like(embedding[:, :1])], dim=-1)
    return embedding


class TimestepBlock(nn.Module):
    @abstractmethod
    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor: ...


class TimestepEmbedSequential(nn.Sequential, TimestepBlock):
    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        for layer in self:
            x = layer(x, emb) if isinstance(layer, TimestepBlock) else layer(x)
        return x


class Upsample(nn.Module):
    def __init__(self, channels: int, use_conv: bool, dims: int = 2, out_channels: int | None = None) -> None:
        super().__init__()
        self.channels = channels
        self.out_channels = out_channels or channels
        self.use_conv = use_conv
        if use_conv:
            self.conv = conv_nd(dims, channels, self.out_channels, 3, padding=1)

        self.dims = dims

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.dims == 3:  # 3-d signals are upsampled in the inner two dimensions only
            x = F.interpolate(x, (x.shape[2], x.shape[3] * 2, x.shape[4] * 2), mode="nearest")
        else:
            x = F.interpolate(x, scale_factor=2, mode="nearest")
        return self.conv(x) if self.use_conv else x


class Downsample(nn.Module):
    def __init__(self, channels: int, use_conv: bool, dims: int = 2, out_channels: int | None = None) -> None:
        super().__init__()
        self.out_channels = out_channels or channels
        stride = 2 if dims != 3 else (1, 2, 2)
        if use_conv:
            self.op = conv_nd(dims, channels, self.out_channels, 3, stride=stride, padding=1)
        else:
            if self.out_channels != channels:
                raise ValueError("average-pool downsampling cannot change the channel count")
            self.op = avg_pool_nd(dims, kernel_size=stride, stride=stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class ResBlock(TimestepBlock):
    """Residual block with timestep conditioning; ``use_scale_shift_norm`` = FiLM ``norm(h)·(1+s)+b``."""

    def __init__(self, channels: int, emb_channels: int, dropout: float, out_channels: int | None = None,
                 use_conv: bool = False, use_scale_shift_norm: bool = False, dims: int = 2,
                 use_checkpoint: bool = False, up: bool = False, down: bool = False) -> None:
        super().__init__()
        self.out_channels = out_channels or channels
        self.use_scale_shift_norm = use_scale_shift_norm
        self.use_checkpoint = use_checkpoint
        self.in_layers = nn.Sequential(
            normalization(channels), nn.SiLU(), conv_nd(dims, channels, self.out_channels, 3, padding=1)
        )
        self.updown = up or down
        if up:
            self.h_upd, self.x_upd = Upsample(channels, False, dims), Upsample(channels, False, dims)
        elif down:
            self.h_upd, self.x_upd = Downsample(channels, False, dims), Downsample(channels, False, dims)
        else:
            self.h_upd = self.x_upd = nn.Identity()
        self.emb_layers = nn.Sequential(
            nn.SiLU(), nn.Linear(emb_channels, 2 * self.out_channels if use_scale_shift_norm else self.out_channels)
        )
        self.out_layers = nn.Sequential(
            normalization(self.out_channels), nn.SiLU(), nn.Dropout(p=dropout),
            zero_module(conv_nd(dims, self.out_channels, self.out_channels, 3, padding=1)),
        )
        if self.out_channels == channels:
            self.skip_connection = nn.Identity()
        elif use_conv:
            self.skip_connection = conv_nd(dims, channels, self.out_channels, 3, padding=1)
        else:
            self.skip_connection = conv_nd(dims, channels, self.out_channels, 1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        if self.use_checkpoint and torch.is_grad_enabled():
            return torch.utils.checkpoint.checkpoint(self._forward, x, emb, use_reentrant=False)
        return self._forward(x, emb)

    def _forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        if self.updown:
            h = self.in_layers[:-1](x)
            h = self.h_upd(h)
            x = self.x_upd(x)
            h = self.in_layers[-1](h)
        else:
            h = self.in_layers(x)
        emb_out = self.emb_layers(emb).type(h.dtype)
        while emb_out.dim() < h.dim():
            emb_out = emb_out[..., None]
        if self.use_scale_shift_norm:
            scale, shift = torch.chunk(emb_out, 2, dim=1)
            h = self.out_layers[0](h) * (1 + scale) + shift
            h = self.out_layers[1:](h)
        else:
            h = self.out_layers(h + emb_out)
        return self.skip_connection(x) + h


class QKVAttentionLegacy(nn.Module):
    """Heads split before q/k/v (the layout of the published checkpoints with ``use_new_attention_order=False``)."""

    def __init__(self, n_heads: int) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.backend = "einsum"

    def forward(self, qkv: torch.Tensor) -> torch.Tensor:
        bs, width, length = qkv.shape
        ch = width // (3 * self.n_heads)
        q, k, v = qkv.reshape(bs * self.n_heads, ch * 3, length).split(ch, dim=1)
        return _attend(q, k, v, self.backend).reshape(bs, -1, length)


class QKVAttention(nn.Module):
    """q/k/v split before heads (``use_new_attention_order=True``)."""

    def __init__(self, n_heads: int) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.backend = "einsum"

    def forward(self, qkv: torch.Tensor) -> torch.Tensor:
        bs, width, length = qkv.shape
        ch = width // (3 * self.n_heads)
        q, k, v = qkv.chunk(3, dim=1)
        shape = (bs * self.n_heads, ch, length)
        return _attend(q.reshape(shape), k.reshape(shape), v.reshape(shape), self.backend).reshape(bs, -1, length)


ATTENTION_BACKENDS = ("einsum", "sdpa")


def set_attention_backend(model: nn.Module, backend: str) -> None:
    """Attention of every block of ``model``: ``einsum`` (upstream's form, the default) or ``sdpa``
    (``F.scaled_dot_product_attention``: fused kernels on GPU, the same softmax(qᵀk/√ch)·v up to rounding)."""
    if backend not in ATTENTION_BACKENDS:
        raise ValueError(f"attention backend must be one of {ATTENTION_BACKENDS}, got '{backend}'")
    for module in model.modules():
        if isinstance(module, (QKVAttentionLegacy, QKVAttention)):
            module.backend = backend


def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, backend: str = "einsum") -> torch.Tensor:
    """softmax(qᵀk/√ch) weights applied to v, (B·heads, ch, T) → (B·heads, ch, T); ``einsum``: softmax in float32
    (guided-diffusion ``QKVAttentionLegacy``); ``sdpa``: torch's fused attention on (…, T, ch)."""
    if backend == "sdpa":
        out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        return out.transpose(1, 2)
    scale = 1 / math.sqrt(math.sqrt(q.shape[1]))
    weight = torch.einsum("bct,bcs->bts", q * scale, k * scale)
    weight = torch.softmax(weight.float(), dim=-1).type(weight.dtype)
    return torch.einsum("bts,bcs->bct", weight, v)


class AttentionBlock(nn.Module):
    def __init__(self, channels: int, num_heads: int = 1, num_head_channels: int = -1,
                 use_checkpoint: bool = False, use_new_attention_order: bool = False) -> None:
        super().__init__()
        if num_head_channels == -1:
            self.num_heads = num_heads
        else:
            if channels % num_head_channels:
                raise ValueError(f"channels {channels} not divisible by num_head_channels {num_head_channels}")
            self.num_heads = channels // num_head_channels
        self.use_checkpoint = use_checkpoint
        self.norm = normalization(channels)
        self.qkv = conv_nd(1, channels, channels * 3, 1)
        self.attention = QKVAttention(self.num_heads) if use_new_attention_order else QKVAttentionLegacy(self.num_heads)
        self.proj_out = zero_module(conv_nd(1, channels, channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.use_checkpoint and torch.is_grad_enabled():
            return torch.utils.checkpoint.checkpoint(self._forward, x, use_reentrant=False)
        return self._forward(x)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, *spatial = x.shape
        x = x.reshape(b, c, -1)
        h = self.proj_out(self.attention(self.qkv(self.norm(x))))
        return (x + h).reshape(b, c, *spatial)


class UNetModel(nn.Module):
    """guided-diffusion's ``UNetModel`` (same constructor arguments, module names and forward)."""

    def __init__(self, image_size: int, in_channels: int, model_channels: int, out_channels: int,
                 num_res_blocks: int, attention_resolutions: tuple[int, ...], dropout: float = 0.0,
                 channel_mult: tuple[float, ...] = (1, 2, 4, 8), conv_resample: bool = True, dims: int = 2,
                 num_classes: int | None = None, use_checkpoint: bool = False, use_fp16: bool = False,
                 num_heads: int = 1, num_head_channels: int = -1, num_heads_upsample: int = -1,
                 use_scale_shift_norm: bool = False, resblock_updown: bool = False,
                 use_new_attention_order: bool = False) -> None:
        super().__init__()
        if num_heads_upsample == -1:
            num_heads_upsample = num_heads
        self.image_size = image_size
        self.in_channels = in_channels
        self.model_channels = model_channels
        self.out_channels = out_channels
        self.num_classes = num_classes
        self.use_fp16 = use_fp16  # upstream flag; the compute dtype follows the block weights (see ``dtype``)
        emb_dim = model_channels * 4

        def resblock(ch_in: int, ch_out: int | None = None, **kw) -> ResBlock:
            return ResBlock(ch_in, emb_dim, dropout, out_channels=ch_out, dims=dims, use_checkpoint=use_checkpoint,
                            use_scale_shift_norm=use_scale_shift_norm, **kw)

        def attention(ch: int, heads: int) -> AttentionBlock:
            return AttentionBlock(ch, num_heads=heads, num_head_channels=num_head_channels,
                                  use_checkpoint=use_checkpoint, use_new_attention_order=use_new_attention_order)

        self.time_embed = nn.Sequential(nn.Linear(model_channels, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        if num_classes is not None:
            self.label_emb = nn.Embedding(num_classes, emb_dim)
        ch = input_ch = int(channel_mult[0] * model_channels)
        self.input_blocks = nn.ModuleList([TimestepEmbedSequential(conv_nd(dims, in_channels, ch, 3, padding=1))])
        input_block_chans = [ch]
        ds = 1
        for level, mult in enumerate(channel_mult):
            for _ in range(num_res_blocks):
                layers: list[nn.Module] = [resblock(ch, int(mult * model_channels))]
                ch = int(mult * model_channels)
                if ds in attention_resolutions:
                    layers.append(attention(ch, num_heads))
                self.input_blocks.append(TimestepEmbedSequential(*layers))
                input_block_chans.append(ch)
            if level != len(channel_mult) - 1:
                down = resblock(ch, ch, down=True) if resblock_updown else Downsample(ch, conv_resample, dims, ch)
                self.input_blocks.append(TimestepEmbedSequential(down))
                input_block_chans.append(ch)
                ds *= 2
        self.middle_block = TimestepEmbedSequential(resblock(ch), attention(ch, num_heads), resblock(ch))
        self.output_blocks = nn.ModuleList([])
        for level, mult in list(enumerate(channel_mult))[::-1]:
            for i in range(num_res_blocks + 1):
                ich = input_block_chans.pop()
                layers = [resblock(ch + ich, int(model_channels * mult))]
                ch = int(model_channels * mult)
                if ds in attention_resolutions:
                    layers.append(attention(ch, num_heads_upsample))
                if level and i == num_res_blocks:
                    up = resblock(ch, ch, up=True) if resblock_updown else Upsample(ch, conv_resample, dims, ch)
                    layers.append(up)
                    ds //= 2
                self.output_blocks.append(TimestepEmbedSequential(*layers))
        self.out = nn.Sequential(
            normalization(ch), nn.SiLU(), zero_module(conv_nd(dims, input_ch, out_channels, 3, padding=1))
        )

    @property
    def dtype(self) -> torch.dtype:
        """The dtype the blocks compute in: that of the block convolutions (float16 after ``convert_to_fp16``).

        Upstream fixes ``self.dtype`` from ``use_fp16`` at construction, so an unconverted ``use_fp16`` model
        fails there; here it computes in float32 until converted, and ``convert_to_fp32`` fully undoes the
        conversion."""
        return self.input_blocks[0][0].weight.dtype

    def _convert(self, dtype: torch.dtype) -> None:
        # Only convolutions, as guided-diffusion ``fp16_util.convert_module_to_f16``: the ResBlocks' embedding
        # Linear layers, GroupNorm affine parameters, time_embed, label_emb and ``out`` stay float32.
        for blocks in (self.input_blocks, self.middle_block, self.output_blocks):
            for module in blocks.modules():
                if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
                    module.weight.data = module.weight.data.to(dtype)
                    if module.bias is not None:
                        module.bias.data = module.bias.data.to(dtype)

    def convert_to_fp16(self) -> None:
        """Convolutions of the input, middle and output blocks to float16 (guided-diffusion ``fp16_util``)."""
        self._convert(torch.float16)

    def convert_to_fp32(self) -> None:
        """Undo ``convert_to_fp16`` (or ``convert_to_bf16``)."""
        self._convert(torch.float32)

    def convert_to_bf16(self) -> None:
        """The same convolutions to bfloat16 (not upstream: a ``precision`` option of cfx)."""
        self._convert(torch.bfloat16)

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        if (y is not None) != (self.num_classes is not None):
            raise ValueError("pass y if and only if the model is class-conditional")
        emb = self.time_embed(timestep_embedding(timesteps, self.model_channels).to(self.time_embed[0].weight.dtype))
        if self.num_classes is not None:
            emb = emb + self.label_emb(y)
        hs = []
        h = x.type(self.dtype)
        for module in self.input_blocks:
            h = module(h, emb)
            hs.append(h)
        h = self.middle_block(h, emb)
        for module in self.output_blocks:
            h = module(torch.cat([h, hs.pop()], dim=1), emb)
        return self.out(h.type(x.dtype))


DEFAULT_CHANNEL_MULT = {
    512: (0.5, 1, 1, 2, 2, 4, 4),
    256: (1, 1, 2, 2, 4, 4),
    128: (1, 1, 2, 3, 4),
    64: (1, 2, 3, 4),
    32: (1, 2, 2, 2),
}


def _parse_mult(channel_mult: str | tuple | list, image_size: int) -> tuple[float, ...]:
    if channel_mult in ("", None, ()):
        if image_size not in DEFAULT_CHANNEL_MULT:
            raise ValueError(f"no default channel_mult for image_size {image_size}; pass channel_mult")
        return DEFAULT_CHANNEL_MULT[image_size]
    if isinstance(channel_mult, str):
        return tuple(float(m) if "." in m else int(m) for m in channel_mult.split(","))
    return tuple(channel_mult)


def create_model(image_size: int, num_channels: int, num_res_blocks: int, channel_mult: str | tuple = "",
                 learn_sigma: bool = False, class_cond: bool = False, use_checkpoint: bool = False,
                 attention_resolutions: str = "16", num_heads: int = 1, num_head_channels: int = -1,
                 num_heads_upsample: int = -1, use_scale_shift_norm: bool = False, dropout: float = 0.0,
                 resblock_updown: bool = False, use_fp16: bool = False, use_new_attention_order: bool = False,
                 ) -> UNetModel:
    """guided-diffusion ``script_util.create_model`` with the same flag names and defaults."""
    attention_ds = tuple(image_size // int(res) for res in str(attention_resolutions).split(",") if res)
    return UNetModel(
        image_size=image_size, in_channels=3, model_channels=num_channels, out_channels=6 if learn_sigma else 3,
        num_res_blocks=num_res_blocks, attention_resolutions=attention_ds, dropout=dropout,
        channel_mult=_parse_mult(channel_mult, image_size), num_classes=NUM_CLASSES if class_cond else None,
        use_checkpoint=use_checkpoint, use_fp16=use_fp16, num_heads=num_heads, num_head_channels=num_head_channels,
        num_heads_upsample=num_heads_upsample, use_scale_shift_norm=use_scale_shift_norm,
        resblock_updown=resblock_updown, use_new_attention_order=use_new_attention_order,
    )


def model_and_diffusion_defaults() -> dict[str, Any]:
    """guided-diffusion ``script_util.model_and_diffusion_defaults`` (model flags + ``diffusion_defaults``)."""
    return dict(
        image_size=64, num_channels=128, num_res_blocks=2, num_heads=4, num_heads_upsample=-1,
        num_head_channels=-1, attention_resolutions="16,8", channel_mult="", dropout=0.0, class_cond=False,
        use_checkpoint=False, use_scale_shift_norm=True, resblock_updown=False, use_fp16=False,
        use_new_attention_order=False, learn_sigma=False, diffusion_steps=1000, noise_schedule="linear",
        timestep_respacing="", use_kl=False, predict_xstart=False, rescale_timesteps=False,
        rescale_learned_sigmas=False,
    )


#: Flags of ``create_gaussian_diffusion`` (``learn_sigma`` is shared with the model).
DIFFUSION_FLAGS = ("diffusion_steps", "learn_sigma", "sigma_small", "noise_schedule", "use_kl", "predict_xstart",
                   "rescale_timesteps", "rescale_learned_sigmas", "timestep_respacing")


def create_model_and_diffusion(**flags: Any) -> tuple[UNetModel, SpacedDiffusion]:
    """guided-diffusion ``script_util.create_model_and_diffusion``: defaults updated with ``flags``, split into
    model and diffusion flags. As upstream, ``use_fp16`` does not convert the weights: call
    ``model.convert_to_fp16()`` (after loading a checkpoint), as the upstream scripts do."""
    from cfx.models.diffusion import create_gaussian_diffusion

    args = {**model_and_diffusion_defaults(), **flags}
    diffusion_args = {k: args.pop(k) for k in DIFFUSION_FLAGS if k in args}
    diffusion_args["steps"] = diffusion_args.pop("diffusion_steps")
    model = create_model(learn_sigma=diffusion_args["learn_sigma"], **args)
    return model, create_gaussian_diffusion(**diffusion_args)


def load_adm_checkpoint(path: str | Path, **flags: Any) -> UNetModel:
    """Build ``create_model(**flags)`` and load the state dict at ``path`` strictly (weights-only ``torch.load``).

    ``flags`` are guided-diffusion's MODEL_FLAGS; diffusion flags (``diffusion_steps``, ``noise_schedule``, ...)
    may be passed too and are ignored, so a script's whole flag set works. With ``use_fp16`` the weights are
    converted after loading (upstream ``image_sample.py``). Raises FileNotFoundError for a missing file and a
    ValueError naming the file, the first missing/unexpected/mis-shaped keys and the likely cause otherwise."""
    from cfx.runtime.checkpoints import load_checkpoint, load_state_dict_strict

    model_flags = {k: v for k, v in flags.items() if k not in DIFFUSION_FLAGS or k == "learn_sigma"}
    state = load_checkpoint(path, "ADM UNet checkpoint")
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        keys = list(state)[:5] if isinstance(state, dict) else type(state).__name__
        raise ValueError(f"{path} is not a plain UNet state dict as guided-diffusion saves it (got {keys}); "
                         f"extract the model's state_dict (e.g. the EMA weights) and save that")
    model = create_model(**{**model_flags, "use_fp16": False})
    load_state_dict_strict(model, {k: v.float() for k, v in state.items()}, path,
                           hint=f"the flags {model_flags} probably differ from the ones the checkpoint was "
                                f"trained with")
    if model_flags.get("use_fp16"):
        model.convert_to_fp16()
    return model
