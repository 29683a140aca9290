"""DiffIR networks (Xia et al., ICCV 2023), weight-compatible with the official checkpoints.

* :class:`CPEN` -- compact IR prior extraction network: (PixelUnshuffle) input ->
  conv -> ResBlocks -> convs -> global average pool -> MLP -> 256-d IPR.
  ``S1`` variants also see the ground truth (pixel-unshuffled by 4).
* :class:`DIRformer` -- Restormer with "transposed" (channel) attention and a
  gated-dconv FFN, where every attention and FFN input is modulated by the IPR
  through a per-block ``Linear(256, 2*dim)`` (scale, shift).
* :class:`IPRDenoiser` -- the MLP that predicts the IPR x0 from (x_t, t, c).
* :class:`IPRDiffusion` -- the 4-step DDPM over the IPR vector (linear-in-sqrt
  betas 0.1..0.99, x0 prediction, posterior mean without variance noise).
* :class:`DiffIRS1` / :class:`DiffIRS2` -- stage-1 and stage-2 models with the
  official module names (``G``, ``E`` / ``condition``, ``denoise``, ``diffusion``).

Variants follow the four official code bases: ``sr`` (RealSR / SRGAN: x4, and
x2 / x1 via PixelUnshuffle on the input, 4x pixel-shuffle tail with a nearest-
upsampled skip), ``deblur`` (GoPro: CPEN on PixelUnshuffle(4), output conv +
input skip) and ``inpaint`` (4-channel input = masked image + mask, output conv
without skip).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..samplers.common import randn as draw_randn


@dataclass
class DiffIRConfig:
    variant: str = "sr"  # "sr" | "deblur" | "inpaint"
    scale: int = 4  # sr only: 4, 2 or 1
    n_encoder_res: int = 9
    inp_channels: int = 3
    out_channels: int = 3
    dim: int = 64
    num_blocks: tuple = (13, 1, 1, 1)
    num_refinement_blocks: int = 13
    heads: tuple = (1, 2, 4, 8)
    ffn_expansion_factor: float = 2.2
    bias: bool = False
    layernorm_type: str = "BiasFree"
    n_denoise_res: int = 1
    linear_start: float = 0.1
    linear_end: float = 0.99
    timesteps: int = 4
    n_feats: int = 64  # CPEN width; the IPR has 4 * n_feats = 256 entries

    @property
    def ipr_dim(self) -> int:
        return 4 * self.n_feats

    @property
    def size_multiple(self) -> int:
        """Input H, W must be multiples of this (PixelUnshuffle, then 3 downsamplings); as upstream's pad_test."""
        if self.variant == "sr":
            return {4: 8, 2: 16, 1: 32}.get(self.scale, 8)
        return 8

    @property
    def sf(self) -> int:
        return self.scale if self.variant == "sr" else 1

    def to_dict(self) -> dict:
        d = asdict(self)
        d["num_blocks"], d["heads"] = list(self.num_blocks), list(self.heads)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "DiffIRConfig":
        d = dict(d)
        unknown = set(d) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown DiffIR config keys: {sorted(unknown)}")
        for k in ("num_blocks", "heads"):
            if k in d:
                d[k] = tuple(d[k])
        return cls(**d)


def _sr(scale):
    return DiffIRConfig(variant="sr", scale=scale, n_encoder_res=9, dim=64, num_blocks=(13, 1, 1, 1),
                        num_refinement_blocks=13, ffn_expansion_factor=2.2, layernorm_type="BiasFree")


#: official configurations (options/*.yml of Zj-BinXia/DiffIR)
PRESETS = {
    "realsr_x4": _sr(4),  # DiffIR-RealSR train_DiffIRS2_x4.yml (also DiffIR-SRGAN x4)
    "realsr_x2": _sr(2),
    "realsr_x1": _sr(1),
    "srgan_x4": _sr(4),
    "gopro": DiffIRConfig(variant="deblur", n_encoder_res=5, dim=48, num_blocks=(3, 5, 6, 6), num_refinement_blocks=4,
                          ffn_expansion_factor=2.0, layernorm_type="WithBias"),
    "inpaint_place2": DiffIRConfig(variant="inpaint", n_encoder_res=5, inp_channels=4, dim=52, num_blocks=(1, 1, 1, 9),
                                   num_refinement_blocks=0, ffn_expansion_factor=1.8, layernorm_type="WithBias"),
}
PRESETS["inpaint_celeba"] = PRESETS["inpaint_place2"]


# ---------------------------------------------------------------------------
# DIRformer
# ---------------------------------------------------------------------------


class ChannelLayerNorm(nn.Module):
    """LayerNorm over channels at every pixel (Restormer's ``LayerNorm`` with ``body``)."""

    class _Body(nn.Module):
        def __init__(self, dim, with_bias):
            super().__init__()
            self.weight = nn.Parameter(torch.ones(dim))
            if with_bias:
                self.bias = nn.Parameter(torch.zeros(dim))
            else:
                self.bias = None

    def __init__(self, dim: int, kind: str):
        super().__init__()
        if kind not in ("BiasFree", "WithBias"):
            raise ValueError(f"unknown LayerNorm type {kind!r}")
        self.body = self._Body(dim, kind == "WithBias")

    def forward(self, x):
        mu = x.mean(1, keepdim=True)
        var = x.var(1, keepdim=True, unbiased=False)
        w = self.body.weight.view(1, -1, 1, 1)
        if self.body.bias is None:  # bias-free: scale only, no centring
            return x / torch.sqrt(var + 1e-5) * w
        return (x - mu) / torch.sqrt(var + 1e-5) * w + self.body.bias.view(1, -1, 1, 1)


def _modulate(kernel: nn.Module, x: torch.Tensor, ipr: torch.Tensor) -> torch.Tensor:
    scale, shift = kernel(ipr).view(x.shape[0], 2 * x.shape[1], 1, 1).chunk(2, dim=1)
    return x * scale + shift


class GatedFFN(nn.Module):
    def __init__(self, dim, factor, bias, ipr_dim):
        super().__init__()
        hidden = int(dim * factor)
        self.project_in = nn.Conv2d(dim, hidden * 2, 1, bias=bias)
        self.dwconv = nn.Conv2d(hidden * 2, hidden * 2, 3, padding=1, groups=hidden * 2, bias=bias)
        self.project_out = nn.Conv2d(hidden, dim, 1, bias=bias)
        self.kernel = nn.Sequential(nn.Linear(ipr_dim, dim * 2, bias=False))

    def forward(self, x, ipr):
        x = self.project_in(_modulate(self.kernel, x, ipr))
        a, b = self.dwconv(x).chunk(2, dim=1)
        return self.project_out(F.gelu(a) * b)


class ChannelAttention(nn.Module):
    """Multi-head transposed attention: a C x C attention map per head over L2-normalised features."""

    def __init__(self, dim, heads, bias, ipr_dim):
        super().__init__()
        self.num_heads = heads
        self.temperature = nn.Parameter(torch.ones(heads, 1, 1))
        self.kernel = nn.Sequential(nn.Linear(ipr_dim, dim * 2, bias=False))
        self.qkv = nn.Conv2d(dim, dim * 3, 1, bias=bias)
        self.qkv_dwconv = nn.Conv2d(dim * 3, dim * 3, 3, padding=1, groups=dim * 3, bias=bias)
        self.project_out = nn.Conv2d(dim, dim, 1, bias=bias)

    def forward(self, x, ipr):
        b, c, h, w = x.shape
        q, k, v = self.qkv_dwconv(self.qkv(_modulate(self.kernel, x, ipr))).chunk(3, dim=1)
        nh = self.num_heads
        q, k, v = (z.reshape(b, nh, c // nh, h * w) for z in (q, k, v))
        q, k = F.normalize(q, dim=-1), F.normalize(k, dim=-1)
        attn = (q @ k.transpose(-2, -1) * self.temperature).softmax(dim=-1)
        return self.project_out((attn @ v).reshape(b, c, h, w))


class TransformerBlock(nn.Module):
    def __init__(self, dim, heads, factor, bias, ln, ipr_dim):
        super().__init__()
        self.norm1 = ChannelLayerNorm(dim, ln)
        self.attn = ChannelAttention(dim, heads, bias, ipr_dim)
        self.norm2 = ChannelLayerNorm(dim, ln)
        self.ffn = GatedFFN(dim, factor, bias, ipr_dim)

    def forward(self, x, ipr):
        x = x + self.attn(self.norm1(x), ipr)
        return x + self.ffn(self.norm2(x), ipr)


class Stage(nn.Sequential):
    """A run of transformer blocks sharing the IPR (nn.Sequential so keys are ``<name>.<i>.*``)."""

    def forward(self, x, ipr):
        for blk in self:
            x = blk(x, ipr)
        return x


class _PatchEmbed(nn.Module):
    def __init__(self, cin, dim, bias):
        super().__init__()
        self.proj = nn.Conv2d(cin, dim, 3, padding=1, bias=bias)

    def forward(self, x):
        return self.proj(x)


class _Down(nn.Module):
    def __init__(self, n):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(n, n // 2, 3, padding=1, bias=False), nn.PixelUnshuffle(2))

    def forward(self, x):
        return self.body(x)


class _Up(nn.Module):
    def __init__(self, n):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(n, n * 2, 3, padding=1, bias=False), nn.PixelShuffle(2))

    def forward(self, x):
        return self.body(x)


def _pixel_shuffle_upsampler(n: int, scale: int) -> nn.Sequential:
    layers = []
    for _ in range(int(math.log2(scale))):
        layers += [nn.Conv2d(n, 4 * n, 3, padding=1), nn.PixelShuffle(2)]
    return nn.Sequential(*layers)


class DIRformer(nn.Module):
    def __init__(self, cfg: DiffIRConfig):
        super().__init__()
        self.variant, self.scale = cfg.variant, cfg.scale
        d, nb, hd = cfg.dim, cfg.num_blocks, cfg.heads
        ipr = cfg.ipr_dim
        cin = cfg.inp_channels
        if cfg.variant == "sr":
            if cfg.scale not in (1, 2, 4):
                raise ValueError("DiffIR SR supports scale 1, 2 or 4")
            self.unshuffle = {4: 1, 2: 2, 1: 4}[cfg.scale]
            cin = cin * self.unshuffle ** 2
        else:
            self.unshuffle = 1

        def stage(mult, n, heads):
            return Stage(*[TransformerBlock(int(d * mult), heads, cfg.ffn_expansion_factor, cfg.bias,
                                            cfg.layernorm_type, ipr) for _ in range(n)])

        self.patch_embed = _PatchEmbed(cin, d, cfg.bias)
        self.encoder_level1 = stage(1, nb[0], hd[0])
        self.down1_2 = _Down(d)
        self.encoder_level2 = stage(2, nb[1], hd[1])
        self.down2_3 = _Down(d * 2)
        self.encoder_level3 = stage(4, nb[2], hd[2])
        self.down3_4 = _Down(d * 4)
        self.latent = stage(8, nb[3], hd[3])
        self.up4_3 = _Up(d * 8)
        self.reduce_chan_level3 = nn.Conv2d(d * 8, d * 4, 1, bias=cfg.bias)
        self.decoder_level3 = stage(4, nb[2], hd[2])
        self.up3_2 = _Up(d * 4)
        self.reduce_chan_level2 = nn.Conv2d(d * 4, d * 2, 1, bias=cfg.bias)
        self.decoder_level2 = stage(2, nb[1], hd[1])
        self.up2_1 = _Up(d * 2)
        self.decoder_level1 = stage(2, nb[0], hd[0])
        self.refinement = stage(2, cfg.num_refinement_blocks, hd[0])
        if cfg.variant == "sr":
            self.tail = nn.Sequential(_pixel_shuffle_upsampler(d * 2, 4), nn.Conv2d(d * 2, cfg.out_channels, 3, padding=1))
        else:
            self.output = nn.Conv2d(d * 2, cfg.out_channels, 3, padding=1, bias=cfg.bias)

    def forward(self, img, ipr):
        feat = F.pixel_unshuffle(img, self.unshuffle) if self.unshuffle > 1 else img
        e1 = self.encoder_level1(self.patch_embed(feat), ipr)
        e2 = self.encoder_level2(self.down1_2(e1), ipr)
        e3 = self.encoder_level3(self.down2_3(e2), ipr)
        lat = self.latent(self.down3_4(e3), ipr)
        d3 = self.decoder_level3(self.reduce_chan_level3(torch.cat([self.up4_3(lat), e3], 1)), ipr)
        d2 = self.decoder_level2(self.reduce_chan_level2(torch.cat([self.up3_2(d3), e2], 1)), ipr)
        d1 = self.decoder_level1(torch.cat([self.up2_1(d2), e1], 1), ipr)
        d1 = self.refinement(d1, ipr)
        if self.variant == "sr":
            return self.tail(d1) + F.interpolate(img, scale_factor=self.scale, mode="nearest")
        if self.variant == "deblur":
            return self.output(d1) + img
        return self.output(d1)  # inpainting: no input skip


# ---------------------------------------------------------------------------
# CPEN, denoiser, IPR diffusion
# ---------------------------------------------------------------------------


class _ResBlock(nn.Module):
    def __init__(self, n):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(n, n, 3, padding=1), nn.LeakyReLU(0.1, True), nn.Conv2d(n, n, 3, padding=1))

    def forward(self, x):
        return self.body(x) + x


class CPEN(nn.Module):
    """Compact IR prior extraction network. ``stage=1`` also takes the ground truth."""

    def __init__(self, cfg: DiffIRConfig, stage: int):
        super().__init__()
        self.variant, self.stage = cfg.variant, stage
        n = cfg.n_feats
        c = cfg.inp_channels
        if cfg.variant == "sr":
            self.lq_unshuffle = {4: 1, 2: 2, 1: 4}[cfg.scale]
        else:
            self.lq_unshuffle = 4
        cin = c * self.lq_unshuffle ** 2 + (3 * 16 if stage == 1 else 0)
        layers = [nn.Conv2d(cin, n, 3, padding=1), nn.LeakyReLU(0.1, True)]
        layers += [_ResBlock(n) for _ in range(cfg.n_encoder_res)]
        layers += [nn.Conv2d(n, n * 2, 3, padding=1), nn.LeakyReLU(0.1, True),
                   nn.Conv2d(n * 2, n * 2, 3, padding=1), nn.LeakyReLU(0.1, True),
                   nn.Conv2d(n * 2, n * 4, 3, padding=1), nn.LeakyReLU(0.1, True), nn.AdaptiveAvgPool2d(1)]
        self.E = nn.Sequential(*layers)
        self.mlp = nn.Sequential(nn.Linear(n * 4, n * 4), nn.LeakyReLU(0.1, True), nn.Linear(n * 4, n * 4),
                                 nn.LeakyReLU(0.1, True))

    def forward(self, lq, gt=None):
        x = F.pixel_unshuffle(lq, self.lq_unshuffle) if self.lq_unshuffle > 1 else lq
        if self.stage == 1:
            if gt is None:
                raise ValueError("the stage-1 CPEN needs the ground truth")
            x = torch.cat([x, F.pixel_unshuffle(gt, 4)], dim=1)
        return self.mlp(self.E(x).flatten(1))


class _ResMLP(nn.Module):
    def __init__(self, n):
        super().__init__()
        self.resmlp = nn.Sequential(nn.Linear(n, n), nn.LeakyReLU(0.1, True))

    def forward(self, x):
        return self.resmlp(x)  # (no residual, as upstream)


class IPRDenoiser(nn.Module):
    """Predicts the IPR x0 from cat(c, t / (10 T), x_t)."""

    def __init__(self, cfg: DiffIRConfig):
        super().__init__()
        self.max_period = cfg.timesteps * 10
        n = cfg.ipr_dim
        layers = [nn.Linear(n * 2 + 1, n), nn.LeakyReLU(0.1, True)]
        layers += [_ResMLP(n) for _ in range(cfg.n_denoise_res)]
        self.resmlp = nn.Sequential(*layers)

    def forward(self, x, t, c):
        t = (t.float() / self.max_period).view(-1, 1).to(x.dtype)
        return self.resmlp(torch.cat([c, t, x], dim=1))


class IPRDiffusion(nn.Module):
    """The IPR DDPM with the official buffer names (``diffusion.*``)."""

    def __init__(self, denoise: IPRDenoiser, condition: CPEN, cfg: DiffIRConfig):
        super().__init__()
        self.model, self.condition = denoise, condition
        self.num_timesteps = cfg.timesteps
        self.ipr_dim = cfg.ipr_dim
        betas = np.linspace(cfg.linear_start ** 0.5, cfg.linear_end ** 0.5, cfg.timesteps, dtype=np.float64) ** 2
        ac = np.cumprod(1.0 - betas)
        ac_prev = np.append(1.0, ac[:-1])
        post_var = betas * (1.0 - ac_prev) / (1.0 - ac)
        bufs = {
            "betas": betas, "alphas_cumprod": ac, "alphas_cumprod_prev": ac_prev,
            "sqrt_alphas_cumprod": np.sqrt(ac), "sqrt_one_minus_alphas_cumprod": np.sqrt(1.0 - ac),
            "log_one_minus_alphas_cumprod": np.log(1.0 - ac), "sqrt_recip_alphas_cumprod": np.sqrt(1.0 / ac),
            "sqrt_recipm1_alphas_cumprod": np.sqrt(1.0 / ac - 1), "posterior_variance": post_var,
            "posterior_log_variance_clipped": np.log(np.maximum(post_var, 1e-20)),
            "posterior_mean_coef1": betas * np.sqrt(ac_prev) / (1.0 - ac),
            "posterior_mean_coef2": (1.0 - ac_prev) * np.sqrt(1.0 - betas) / (1.0 - ac),
        }
        for k, v in bufs.items():
            self.register_buffer(k, torch.tensor(v, dtype=torch.float32))

    def p_sample(self, x, t: int, c):
        tt = torch.full((x.shape[0],), t, device=x.device, dtype=torch.long)
        x0 = self.model(x, tt, c)
        return self.posterior_mean_coef1[t] * x0 + self.posterior_mean_coef2[t] * x

    def forward(self, lq, ipr_s1=None, generator: torch.Generator | None = None, official_rng: bool = True):
        """Training (``ipr_s1`` given): start from q(x_T | IPR_S1), return (IPR, per-step list).
        Inference: start from N(0, I), return the IPR. ``generator`` may be a list, one per sample."""
        c = self.condition(lq)
        b = lq.shape[0]

        def randn(shape):  # a list of generators: one per sample, each drawing as a batch of one
            return draw_randn(tuple(shape), generator).to(lq.device, lq.dtype)

        T = self.num_timesteps
        if ipr_s1 is not None:
            x = self.sqrt_alphas_cumprod[T - 1] * ipr_s1 + self.sqrt_one_minus_alphas_cumprod[T - 1] * randn(ipr_s1.shape)
        else:
            x = randn((b, self.ipr_dim))
        steps = []
        for t in reversed(range(T)):
            x = self.p_sample(x, t, c)
            if official_rng:
                randn(x.shape)  # upstream's p_sample draws noise it never adds
            steps.append(x)
        return (x, steps) if ipr_s1 is not None else x


class DiffIRS1(nn.Module):
    """Stage 1: CPEN_S1 sees LQ and GT; DIRformer restores guided by that IPR."""

    def __init__(self, cfg: DiffIRConfig):
        super().__init__()
        self.config = cfg
        self.G = DIRformer(cfg)
        self.E = CPEN(cfg, stage=1)

    def forward(self, lq, gt):
        ipr = self.E(lq, gt)
        return self.G(lq, ipr), ipr


class DiffIRS2(nn.Module):
    """Stage 2: the IPR is estimated from the LQ image alone by the 4-step diffusion."""

    def __init__(self, cfg: DiffIRConfig):
        super().__init__()
        self.config = cfg
        self.G = DIRformer(cfg)
        self.condition = CPEN(cfg, stage=2)
        self.denoise = IPRDenoiser(cfg)
        self.diffusion = IPRDiffusion(self.denoise, self.condition, cfg)

    def forward(self, lq, ipr_s1=None, generator=None, official_rng: bool = True, ipr_only: bool = False):
        """Inference: ``forward(lq)`` -> restored image. Training: ``forward(lq, ipr_s1)`` ->
        (image, per-step IPRs); with ``ipr_only`` just the final IPR (stage-2 encoder phase)."""
        if ipr_s1 is not None:
            ipr, steps = self.diffusion(lq, ipr_s1, generator, official_rng)
            if ipr_only:
                return ipr
            return self.G(lq, ipr), steps
        ipr = self.diffusion(lq, None, generator, official_rng)
        return self.G(lq, ipr)
