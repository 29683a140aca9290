"""SCUNet (Zhang et al. 2023), DiffBIR v2's stage-1 model for blind denoising, with the official key names
(``m_head``, ``m_down1..3``, ``m_body``, ``m_up3..1``, ``m_tail``; blocks ``conv1_1``, ``conv_block``,
``trans_block.{ln1,msa,ln2,mlp}``; ``msa.relative_position_params`` stored as (heads, 2w-1, 2w-1))."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class WMSA(nn.Module):
    """(Shifted) window multi-head self-attention on (b, h, w, c) maps."""

    def __init__(self, dim: int, head_dim: int, ws: int, shifted: bool):
        super().__init__()
        self.head_dim, self.ws, self.shifted = head_dim, ws, shifted
        self.n_heads = dim // head_dim
        self.embedding_layer = nn.Linear(dim, 3 * dim)
        self.relative_position_params = nn.Parameter(torch.zeros(self.n_heads, 2 * ws - 1, 2 * ws - 1))
        self.linear = nn.Linear(dim, dim)
        idx = torch.stack(torch.meshgrid(torch.arange(ws), torch.arange(ws), indexing="ij"), -1).view(-1, 2)
        rel = idx[:, None] - idx[None] + ws - 1
        self.register_buffer("_rel", rel, persistent=False)

    def _mask(self, nh, nw, device):
        p, s = self.ws, self.ws - self.ws // 2
        m = torch.zeros(nh, nw, p, p, p, p, dtype=torch.bool, device=device)
        m[-1, :, :s, :, s:, :] = True
        m[-1, :, s:, :, :s, :] = True
        m[:, -1, :, :s, :, s:] = True
        m[:, -1, :, s:, :, :s] = True
        return m.reshape(nh * nw, p * p, p * p)

    def forward(self, x):
        b, h, w, c = x.shape
        ws, sh = self.ws, self.ws // 2
        if self.shifted:
            x = torch.roll(x, (-sh, -sh), dims=(1, 2))
        nh, nw = h // ws, w // ws
        win = x.view(b, nh, ws, nw, ws, c).permute(0, 1, 3, 2, 4, 5).reshape(b, nh * nw, ws * ws, c)
        q, k, v = self.embedding_layer(win).view(b, nh * nw, ws * ws, 3 * self.n_heads, self.head_dim) \
            .permute(3, 0, 1, 2, 4).chunk(3, dim=0)
        sim = torch.einsum("hbwpc,hbwqc->hbwpq", q, k) * self.head_dim ** -0.5
        bias = self.relative_position_params[:, self._rel[..., 0], self._rel[..., 1]]
        sim = sim + bias[:, None, None]
        if self.shifted:
            sim = sim.masked_fill(self._mask(nh, nw, x.device)[None, None], float("-inf"))
        out = torch.einsum("hbwij,hbwjc->hbwic", sim.softmax(-1), v)
        out = self.linear(out.permute(1, 2, 3, 0, 4).reshape(b, nh * nw, ws * ws, c))
        out = out.view(b, nh, nw, ws, ws, c).permute(0, 1, 3, 2, 4, 5).reshape(b, h, w, c)
        if self.shifted:
            out = torch.roll(out, (sh, sh), dims=(1, 2))
        return out


class _Block(nn.Module):
    def __init__(self, dim, head_dim, ws, shifted):
        super().__init__()
        self.ln1 = nn.LayerNorm(dim)
        self.msa = WMSA(dim, head_dim, ws, shifted)
        self.ln2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, x):
        x = x + self.msa(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class ConvTransBlock(nn.Module):
    def __init__(self, conv_dim, trans_dim, head_dim, ws, shifted):
        super().__init__()
        self.conv_dim, self.trans_dim = conv_dim, trans_dim
        self.trans_block = _Block(trans_dim, head_dim, ws, shifted)
        self.conv1_1 = nn.Conv2d(conv_dim + trans_dim, conv_dim + trans_dim, 1)
        self.conv1_2 = nn.Conv2d(conv_dim + trans_dim, conv_dim + trans_dim, 1)
        self.conv_block = nn.Sequential(nn.Conv2d(conv_dim, conv_dim, 3, 1, 1, bias=False), nn.ReLU(True),
                                        nn.Conv2d(conv_dim, conv_dim, 3, 1, 1, bias=False))

    def forward(self, x):
        cx, tx = torch.split(self.conv1_1(x), (self.conv_dim, self.trans_dim), dim=1)
        cx = self.conv_block(cx) + cx
        tx = self.trans_block(tx.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        return x + self.conv1_2(torch.cat([cx, tx], 1))


class SCUNet(nn.Module):
    def __init__(self, in_nc: int = 3, config=(4, 4, 4, 4, 4, 4, 4), dim: int = 64, input_resolution: int = 256,
                 head_dim: int = 32, window_size: int = 8):
        super().__init__()
        ws = window_size

        def blocks(n, d, res):
            # alternate W / SW; a level no larger than one window only uses W (as upstream)
            return [ConvTransBlock(d, d, head_dim, ws, bool(i % 2) and res > ws) for i in range(n)]

        r = input_resolution
        self.m_head = nn.Sequential(nn.Conv2d(in_nc, dim, 3, 1, 1, bias=False))
        self.m_down1 = nn.Sequential(*blocks(config[0], dim // 2, r), nn.Conv2d(dim, 2 * dim, 2, 2, 0, bias=False))
        self.m_down2 = nn.Sequential(*blocks(config[1], dim, r // 2), nn.Conv2d(2 * dim, 4 * dim, 2, 2, 0, bias=False))
        self.m_down3 = nn.Sequential(*blocks(config[2], 2 * dim, r // 4),
                                     nn.Conv2d(4 * dim, 8 * dim, 2, 2, 0, bias=False))
        self.m_body = nn.Sequential(*blocks(config[3], 4 * dim, r // 8))
        self.m_up3 = nn.Sequential(nn.ConvTranspose2d(8 * dim, 4 * dim, 2, 2, 0, bias=False),
                                   *blocks(config[4], 2 * dim, r // 4))
        self.m_up2 = nn.Sequential(nn.ConvTranspose2d(4 * dim, 2 * dim, 2, 2, 0, bias=False),
                                   *blocks(config[5], dim, r // 2))
        self.m_up1 = nn.Sequential(nn.ConvTranspose2d(2 * dim, dim, 2, 2, 0, bias=False),
                                   *blocks(config[6], dim // 2, r))
        self.m_tail = nn.Sequential(nn.Conv2d(dim, in_nc, 3, 1, 1, bias=False))

    def forward(self, x0):
        h, w = x0.shape[-2:]
        x0 = F.pad(x0, (0, (-w) % 64, 0, (-h) % 64), mode="replicate")
        x1 = self.m_head(x0)
        x2 = self.m_down1(x1)
        x3 = self.m_down2(x2)
        x4 = self.m_down3(x3)
        x = self.m_body(x4)
        x = self.m_up3(x + x4)
        x = self.m_up2(x + x3)
        x = self.m_up1(x + x2)
        return self.m_tail(x + x1)[..., :h, :w]
