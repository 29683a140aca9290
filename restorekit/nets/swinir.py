"""SwinIR as DiffBIR uses it for stage 1: PixelUnshuffle(sf) input, residual Swin transformer groups,
'nearest+conv' upsampling back by sf, so the output has the input's size. Official module names
(``conv_first.1``, ``layers.i.residual_group.blocks.j.attn.*``, ``conv_after_body``, ``conv_up1..3``, ...)
and the persistent ``relative_position_index`` / ``attn_mask`` buffers of the official checkpoints."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass
class SwinIRConfig:
    img_size: int = 64
    in_chans: int = 3
    embed_dim: int = 180
    depths: tuple = (6, 6, 6, 6, 6, 6, 6, 6)
    num_heads: tuple = (6, 6, 6, 6, 6, 6, 6, 6)
    window_size: int = 8
    mlp_ratio: float = 2.0
    sf: int = 8
    num_feat: int = 64
    extra: dict = field(default_factory=dict)


def _window_partition(x, ws):
    b, h, w, c = x.shape
    return x.view(b, h // ws, ws, w // ws, ws, c).permute(0, 1, 3, 2, 4, 5).reshape(-1, ws * ws, c)


def _window_reverse(win, ws, h, w):
    b = win.shape[0] // ((h // ws) * (w // ws))
    return win.view(b, h // ws, w // ws, ws, ws, -1).permute(0, 1, 3, 2, 4, 5).reshape(b, h, w, -1)


def _shift_mask(h, w, ws, shift):
    img = torch.zeros(1, h, w, 1)
    cnt = 0
    for hs in (slice(0, -ws), slice(-ws, -shift), slice(-shift, None)):
        for wsl in (slice(0, -ws), slice(-ws, -shift), slice(-shift, None)):
            img[:, hs, wsl, :] = cnt
            cnt += 1
    mw = _window_partition(img, ws).squeeze(-1)
    m = mw[:, None, :] - mw[:, :, None]
    return m.masked_fill(m != 0, -100.0).masked_fill(m == 0, 0.0)


class WindowAttention(nn.Module):
    def __init__(self, dim, ws, heads):
        super().__init__()
        self.ws, self.heads = ws, heads
        self.scale = (dim // heads) ** -0.5
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * ws - 1) ** 2, heads))
        c = torch.stack(torch.meshgrid(torch.arange(ws), torch.arange(ws), indexing="ij")).flatten(1)
        rel = (c[:, :, None] - c[:, None, :]).permute(1, 2, 0) + (ws - 1)
        self.register_buffer("relative_position_index", rel[..., 0] * (2 * ws - 1) + rel[..., 1])
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x, mask=None):
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        attn = (q * self.scale) @ k.transpose(-2, -1)
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)].view(n, n, -1)
        attn = attn + bias.permute(2, 0, 1)[None]
        if mask is not None:
            nw = mask.shape[0]
            attn = (attn.view(b // nw, nw, self.heads, n, n) + mask[None, :, None]).view(-1, self.heads, n, n)
        return self.proj((attn.softmax(-1) @ v).transpose(1, 2).reshape(b, n, c))


class _Mlp(nn.Module):
    def __init__(self, dim, hidden):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(dim, hidden), nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x)))


class SwinBlock(nn.Module):
    def __init__(self, dim, res, heads, ws, shift, mlp_ratio):
        super().__init__()
        if res <= ws:
            ws, shift = res, 0
        self.ws, self.shift = ws, shift
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, ws, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = _Mlp(dim, int(dim * mlp_ratio))
        self.register_buffer("attn_mask", _shift_mask(res, res, ws, shift) if shift else None)
        self._masks: dict = {}

    def _mask(self, h, w, device):
        if not self.shift:
            return None
        key = (h, w, str(device))
        if key not in self._masks:
            self._masks = {key: _shift_mask(h, w, self.ws, self.shift).to(device)}
        return self._masks[key]

    def forward(self, x, size):
        h, w = size
        b, _, c = x.shape
        y = self.norm1(x).view(b, h, w, c)
        if self.shift:
            y = torch.roll(y, (-self.shift, -self.shift), dims=(1, 2))
        y = _window_reverse(self.attn(_window_partition(y, self.ws), self._mask(h, w, x.device)), self.ws, h, w)
        if self.shift:
            y = torch.roll(y, (self.shift, self.shift), dims=(1, 2))
        x = x + y.reshape(b, h * w, c)
        return x + self.mlp(self.norm2(x))


class _Group(nn.Module):
    def __init__(self, blocks):
        super().__init__()
        self.blocks = nn.ModuleList(blocks)


class RSTB(nn.Module):
    def __init__(self, dim, res, depth, heads, ws, mlp_ratio):
        super().__init__()
        self.residual_group = _Group([SwinBlock(dim, res, heads, ws, 0 if i % 2 == 0 else ws // 2, mlp_ratio)
                                      for i in range(depth)])
        self.conv = nn.Conv2d(dim, dim, 3, 1, 1)

    def forward(self, x, size):
        y = x
        for blk in self.residual_group.blocks:
            y = blk(y, size)
        b, _, c = y.shape
        y = self.conv(y.transpose(1, 2).reshape(b, c, *size))
        return y.flatten(2).transpose(1, 2) + x


class _PatchEmbed(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.norm = nn.LayerNorm(dim)


class SwinIR(nn.Module):
    def __init__(self, cfg: SwinIRConfig | None = None):
        super().__init__()
        cfg = cfg or SwinIRConfig()
        self.cfg = cfg
        d, ws, sf, nf = cfg.embed_dim, cfg.window_size, cfg.sf, cfg.num_feat
        if sf not in (1, 2, 4, 8):
            raise ValueError("SwinIR (nearest+conv) supports sf 1, 2, 4 or 8")
        self.register_buffer("mean", torch.tensor([0.4488, 0.4371, 0.4040]).view(1, 3, 1, 1) if cfg.in_chans == 3
                             else torch.zeros(1, 1, 1, 1), persistent=False)
        self.conv_first = nn.Sequential(nn.PixelUnshuffle(sf), nn.Conv2d(cfg.in_chans * sf * sf, d, 3, 1, 1))
        self.patch_embed = _PatchEmbed(d)
        self.layers = nn.ModuleList([RSTB(d, cfg.img_size, dep, h, ws, cfg.mlp_ratio)
                                     for dep, h in zip(cfg.depths, cfg.num_heads)])
        self.norm = nn.LayerNorm(d)
        self.conv_after_body = nn.Conv2d(d, d, 3, 1, 1)
        self.conv_before_upsample = nn.Sequential(nn.Conv2d(d, nf, 3, 1, 1), nn.LeakyReLU(inplace=True))
        self.n_up = {1: 0, 2: 1, 4: 2, 8: 3}[sf]
        for i in range(1, self.n_up + 1):
            setattr(self, f"conv_up{i}", nn.Conv2d(nf, nf, 3, 1, 1))
        self.conv_hr = nn.Conv2d(nf, nf, 3, 1, 1)
        self.conv_last = nn.Conv2d(nf, cfg.in_chans, 3, 1, 1)

    @property
    def size_multiple(self) -> int:
        return self.cfg.sf * self.cfg.window_size

    def forward(self, x):
        h, w = x.shape[-2:]
        m = self.size_multiple
        x = F.pad(x, (0, (-w) % m, 0, (-h) % m), mode="reflect" if max((-h) % m, (-w) % m) < min(h, w) else "replicate")
        x = x - self.mean
        f = self.conv_first(x)
        size = f.shape[-2:]
        t = self.patch_embed.norm(f.flatten(2).transpose(1, 2))
        for layer in self.layers:
            t = layer(t, size)
        t = self.norm(t).transpose(1, 2).reshape(f.shape)
        y = self.conv_before_upsample(self.conv_after_body(t) + f)
        for i in range(1, self.n_up + 1):
            y = F.leaky_relu(getattr(self, f"conv_up{i}")(F.interpolate(y, scale_factor=2, mode="nearest")), 0.2)
        y = self.conv_last(F.leaky_relu(self.conv_hr(y), 0.2)) + self.mean
        return y[..., :h, :w]
