"""The ADM ("guided-diffusion") UNet, weight-compatible with the official checkpoints.

Module names and parameter shapes follow OpenAI's ``guided_diffusion/unet.py``
so that ``diffusion_ffhq_10m.pt`` and ``256x256_diffusion_uncond.pt`` load with
``strict=True``. The implementation is our own: attention uses
``scaled_dot_product_attention`` with the channel layout of the legacy
(``use_new_attention_order=False``) or new QKV ordering.

The network predicts ``[eps, v]`` (6 channels when ``learn_sigma``); DiffPIR
uses the first 3 (epsilon).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass
class GuidedUNetConfig:
    image_size: int = 256
    in_channels: int = 3
    model_channels: int = 128
    out_channels: int = 6  # 3 (eps) * 2 with learn_sigma
    num_res_blocks: int = 1
    attention_resolutions: str = "16"  # resolutions (image_size // ds) where attention is used
    dropout: float = 0.0
    channel_mult: tuple = field(default_factory=tuple)  # () -> official default for image_size
    num_heads: int = 4
    num_head_channels: int = 64  # -1 -> use num_heads
    num_heads_upsample: int = -1
    use_scale_shift_norm: bool = True
    resblock_updown: bool = True
    use_new_attention_order: bool = False
    conv_resample: bool = True
    norm_groups: int = 32

    def resolved_channel_mult(self) -> tuple:
        if self.channel_mult:
            return tuple(self.channel_mult)
        defaults = {512: (0.5, 1, 1, 2, 2, 4, 4), 256: (1, 1, 2, 2, 4, 4), 128: (1, 1, 2, 3, 4), 64: (1, 2, 3, 4)}
        if self.image_size not in defaults:
            raise ValueError(f"no default channel_mult for image_size {self.image_size}; set channel_mult")
        return defaults[self.image_size]

    def attention_ds(self) -> tuple:
        if not self.attention_resolutions:
            return ()
        return tuple(self.image_size // int(r) for r in str(self.attention_resolutions).split(","))

    @property
    def size_multiple(self) -> int:
        """Input H and W must be multiples of this (one 2x downsampling per level after the first)."""
        return 2 ** (len(self.resolved_channel_mult()) - 1)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["channel_mult"] = list(self.resolved_channel_mult())
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "GuidedUNetConfig":
        d = dict(d)
        if "channel_mult" in d and d["channel_mult"] is not None:
            d["channel_mult"] = tuple(d["channel_mult"])
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown UNet config keys: {sorted(unknown)}")
        return cls(**d)


#: diffusion_ffhq_10m.pt (Choi et al., ILVR) as loaded by DiffPIR
FFHQ_10M = GuidedUNetConfig(model_channels=128, num_res_blocks=1, attention_resolutions="16")
#: 256x256_diffusion_uncond.pt (Dhariwal & Nichol) as loaded by DiffPIR
IMAGENET_256_UNCOND = GuidedUNetConfig(model_channels=256, num_res_blocks=2, attention_resolutions="32,16,8")


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding [cos(t f_i), sin(t f_i)] with f_i = max_period^(-i/half)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t[:, None].float() * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


class GroupNorm32(nn.GroupNorm):
    """GroupNorm computed in float32 (as the official ``normalization``)."""

    def forward(self, x):
        w = None if self.weight is None else self.weight.float()
        b = None if self.bias is None else self.bias.float()
        return F.group_norm(x.float(), self.num_groups, w, b, self.eps).type(x.dtype)


def _norm(ch: int, groups: int) -> nn.GroupNorm:
    return GroupNorm32(groups, ch)


class Upsample(nn.Module):
    def __init__(self, channels: int, use_conv: bool):
        super().__init__()
        self.use_conv = use_conv
        if use_conv:
            self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x):
        x = F.interpolate(x, scale_factor=2, mode="nearest")
        return self.conv(x) if self.use_conv else x


class Downsample(nn.Module):
    def __init__(self, channels: int, use_conv: bool):
        super().__init__()
        self.use_conv = use_conv
        if use_conv:
            self.op = nn.Conv2d(channels, channels, 3, stride=2, padding=1)
        else:
            self.op = nn.AvgPool2d(2, 2)

    def forward(self, x):
        return self.op(x)


class ResBlock(nn.Module):
    def __init__(self, channels: int, emb_channels: int, dropout: float, out_channels: int | None = None,
                 use_scale_shift_norm: bool = True, up: bool = False, down: bool = False, groups: int = 32):
        super().__init__()
        out_channels = out_channels or channels
        self.use_scale_shift_norm = use_scale_shift_norm
        self.in_layers = nn.Sequential(_norm(channels, groups), nn.SiLU(), nn.Conv2d(channels, out_channels, 3, padding=1))
        self.updown = up or down
        if up:
            self.h_upd, self.x_upd = Upsample(channels, False), Upsample(channels, False)
        elif down:
            self.h_upd, self.x_upd = Downsample(channels, False), Downsample(channels, False)
        else:
            self.h_upd = self.x_upd = nn.Identity()
        self.emb_layers = nn.Sequential(
            nn.SiLU(), nn.Linear(emb_channels, 2 * out_channels if use_scale_shift_norm else out_channels))
        self.out_layers = nn.Sequential(
            _norm(out_channels, groups), nn.SiLU(), nn.Dropout(p=dropout),
            nn.Conv2d(out_channels, out_channels, 3, padding=1))
        nn.init.zeros_(self.out_layers[-1].weight)
        nn.init.zeros_(self.out_layers[-1].bias)
        if out_channels == channels:
            self.skip_connection = nn.Identity()
        else:
            self.skip_connection = nn.Conv2d(channels, out_channels, 1)

    def forward(self, x, emb):
        if self.updown:
            h = self.in_layers[:-1](x)
            h = self.h_upd(h)
            x = self.x_upd(x)
            h = self.in_layers[-1](h)
        else:
            h = self.in_layers(x)
        e = self.emb_layers(emb).type(h.dtype)[..., None, None]
        if self.use_scale_shift_norm:
            scale, shift = e.chunk(2, dim=1)
            h = self.out_layers[0](h) * (1 + scale) + shift
            h = self.out_layers[1:](h)
        else:
            h = self.out_layers(h + e)
        return self.skip_connection(x) + h


class AttentionBlock(nn.Module):
    """Spatial self-attention; ``qkv``/``proj_out`` are 1x1 Conv1d as in the official code."""

    def __init__(self, channels: int, num_heads: int = 1, num_head_channels: int = -1,
                 new_order: bool = False, groups: int = 32):
        super().__init__()
        if num_head_channels == -1:
            self.num_heads = num_heads
        else:
            if channels % num_head_channels:
                raise ValueError(f"channels {channels} not divisible by num_head_channels {num_head_channels}")
            self.num_heads = channels // num_head_channels
        self.new_order = new_order
        self.norm = _norm(channels, groups)
        self.qkv = nn.Conv1d(channels, channels * 3, 1)
        self.proj_out = nn.Conv1d(channels, channels, 1)
        nn.init.zeros_(self.proj_out.weight)
        nn.init.zeros_(self.proj_out.bias)

    def forward(self, x):
        b, c, *spatial = x.shape
        x = x.reshape(b, c, -1)
        qkv = self.qkv(self.norm(x))  # (b, 3c, T)
        nh, ch, t = self.num_heads, c // self.num_heads, x.shape[-1]
        if self.new_order:  # QKVAttention: split q/k/v first, then heads
            q, k, v = qkv.chunk(3, dim=1)
            q, k, v = (z.reshape(b, nh, ch, t) for z in (q, k, v))
        else:  # QKVAttentionLegacy: heads first, each head holds [q, k, v]
            q, k, v = qkv.reshape(b, nh, 3 * ch, t).split(ch, dim=2)
        h = F.scaled_dot_product_attention(q.transpose(-1, -2), k.transpose(-1, -2), v.transpose(-1, -2))
        h = h.transpose(-1, -2).reshape(b, c, t)
        return (x + self.proj_out(h)).reshape(b, c, *spatial)


class TimestepEmbedSequential(nn.Sequential):
    def forward(self, x, emb):
        for layer in self:
            x = layer(x, emb) if isinstance(layer, ResBlock) else layer(x)
        return x


class GuidedUNet(nn.Module):
    """ADM UNet (unconditional). ``forward(x, t)`` returns ``out_channels`` maps."""

    def __init__(self, config: GuidedUNetConfig | None = None, **overrides):
        super().__init__()
        cfg = config or GuidedUNetConfig()
        if overrides:
            cfg = GuidedUNetConfig.from_dict({**asdict(cfg), **overrides})
        self.config = cfg
        mc, g = cfg.model_channels, cfg.norm_groups
        mult = cfg.resolved_channel_mult()
        attn_ds = cfg.attention_ds()
        heads_up = cfg.num_heads if cfg.num_heads_upsample == -1 else cfg.num_heads_upsample
        emb_dim = mc * 4
        self.time_embed = nn.Sequential(nn.Linear(mc, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))

        def attn(ch, heads):
            return AttentionBlock(ch, heads, cfg.num_head_channels, cfg.use_new_attention_order, g)

        ch = input_ch = int(mult[0] * mc)
        self.input_blocks = nn.ModuleList([TimestepEmbedSequential(nn.Conv2d(cfg.in_channels, ch, 3, padding=1))])
        chans = [ch]
        ds = 1
        for level, m in enumerate(mult):
            for _ in range(cfg.num_res_blocks):
                layers = [ResBlock(ch, emb_dim, cfg.dropout, int(m * mc), cfg.use_scale_shift_norm, groups=g)]
                ch = int(m * mc)
                if ds in attn_ds:
                    layers.append(attn(ch, cfg.num_heads))
                self.input_blocks.append(TimestepEmbedSequential(*layers))
                chans.append(ch)
            if level != len(mult) - 1:
                if cfg.resblock_updown:
                    down = ResBlock(ch, emb_dim, cfg.dropout, ch, cfg.use_scale_shift_norm, down=True, groups=g)
                else:
                    down = Downsample(ch, cfg.conv_resample)
                self.input_blocks.append(TimestepEmbedSequential(down))
                chans.append(ch)
                ds *= 2
        self.middle_block = TimestepEmbedSequential(
            ResBlock(ch, emb_dim, cfg.dropout, ch, cfg.use_scale_shift_norm, groups=g),
            attn(ch, cfg.num_heads),
            ResBlock(ch, emb_dim, cfg.dropout, ch, cfg.use_scale_shift_norm, groups=g),
        )
        self.output_blocks = nn.ModuleList()
        for level, m in list(enumerate(mult))[::-1]:
            for i in range(cfg.num_res_blocks + 1):
                skip = chans.pop()
                layers = [ResBlock(ch + skip, emb_dim, cfg.dropout, int(mc * m), cfg.use_scale_shift_norm, groups=g)]
                ch = int(mc * m)
                if ds in attn_ds:
                    layers.append(attn(ch, heads_up))
                if level and i == cfg.num_res_blocks:
                    if cfg.resblock_updown:
                        layers.append(ResBlock(ch, emb_dim, cfg.dropout, ch, cfg.use_scale_shift_norm, up=True, groups=g))
                    else:
                        layers.append(Upsample(ch, cfg.conv_resample))
                    ds //= 2
                self.output_blocks.append(TimestepEmbedSequential(*layers))
        self.out = nn.Sequential(_norm(ch, g), nn.SiLU(), nn.Conv2d(input_ch, cfg.out_channels, 3, padding=1))
        nn.init.zeros_(self.out[-1].weight)
        nn.init.zeros_(self.out[-1].bias)

    @property
    def size_multiple(self) -> int:
        return self.config.size_multiple

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] % self.size_multiple or x.shape[-2] % self.size_multiple:
            raise ValueError(f"input size {tuple(x.shape[-2:])} must be a multiple of {self.size_multiple}")
        if timesteps.ndim == 0:
            timesteps = timesteps.expand(x.shape[0])
        dtype = self.input_blocks[0][0].weight.dtype  # the network's dtype (float32, float16 or bfloat16)
        # sinusoids in float32, then the network's dtype (as guided-diffusion's convert_to_fp16)
        emb = self.time_embed(timestep_embedding(timesteps, self.config.model_channels).to(dtype))
        hs = []
        h = x.to(dtype)
        for block in self.input_blocks:
            h = block(h, emb)
            hs.append(h)
        h = self.middle_block(h, emb)
        for block in self.output_blocks:
            h = block(torch.cat([h, hs.pop()], dim=1), emb)
        return self.out(h)
