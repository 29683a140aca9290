"""Tiled VAE encoding / decoding with GroupNorm statistics shared by all tiles, as DiffBIR's ``VAEHook``
(``diffbir/utils/tilevae/tilevae.py``, the non-fast mode that ``ControlLDM.vae_encode`` / ``vae_decode`` use),
on a diffusers ``AutoencoderKL``.

The image (encoder, padding 32 pixels) or latent (decoder, padding 11 latent pixels) is cut into tiles of at most
``tile_size`` (shrunk to an even split, then rounded up to a multiple of 32 / 16 / ... / 2 where that stays within
``tile_size``), each widened by the padding on every side that is not an image border. Every tile runs through
the network on its own, except at each GroupNorm: there, every tile's per-(sample, group) mean and (biased)
variance are averaged over the tiles, weighted by the tiles' pixel counts, and all tiles are normalised with
these shared numbers. Self-attention (the mid block's) sees one tile at a time. Each finished tile gives the
output of its unpadded part. Inputs whose longer side is at most ``tile_size + 2 * padding`` run untiled.

The groups are each GroupNorm layer's own (upstream hard-codes 32, which every SD VAE layer has); statistics
are float32. Each tile is a generator that yields its statistics at every GroupNorm and receives the shared
ones back; the tiles are visited forwards and backwards in turn. On a non-CPU device, each tile and its stored
residuals are moved to the CPU while the other tiles run (as upstream).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Generator

import torch
import torch.nn.functional as F

ENCODER_PAD = 32  # image pixels
DECODER_PAD = 11  # latent pixels

Box = tuple[int, int, int, int]  # (y0, y1, x0, x1)


# ----------------------------------------------------------------------------- tile layout


def _round_tile(size: int, limit: int) -> int:
    """``size`` rounded up to a multiple of 32, else 16, 8, 4, 2, the first one that stays <= ``limit``
    (``size`` itself when it already is a multiple, or when none fits)."""
    step = 32
    while step >= 2:
        if size % step == 0:
            return size
        up = size + (step - size % step)
        if up <= limit:
            return up
        step //= 2
    return size


def _axis_tiles(n: int, tile: int, pad: int) -> list[tuple[int, int, int, int]]:
    """Along one axis of length n: [(core_start, core_end, out_start, out_end)] per tile, in input units."""
    count = max(math.ceil((n - 2 * pad) / tile), 1)
    size = _round_tile(math.ceil((n - 2 * pad) / count), tile)
    spans = []
    for k in range(count):
        a = pad + k * size
        b = min(pad + (k + 1) * size, n)
        spans.append((a, b, a if a > pad else 0, b if b < n - pad else n))
    return spans


def tile_layout(h: int, w: int, tile_size: int, decoder: bool) -> list[tuple[Box, Box]]:
    """[(input box, output box)] per tile, row by row, boxes as (y0, y1, x0, x1): the input box is the tile's
    core widened by the padding (clipped to the input), the output box the part of the output the tile fills
    (x8 for the decoder, //8 for the encoder)."""
    pad = DECODER_PAD if decoder else ENCODER_PAD
    scale = (lambda v: v * 8) if decoder else (lambda v: v // 8)
    out = []
    for ya, yb, yo0, yo1 in _axis_tiles(h, tile_size, pad):
        for xa, xb, xo0, xo1 in _axis_tiles(w, tile_size, pad):
            inp = (max(0, ya - pad), min(h, yb + pad), max(0, xa - pad), min(w, xb + pad))
            out.append((inp, (scale(yo0), scale(yo1), scale(xo0), scale(xo1))))
    return out


def is_tiled(h: int, w: int, tile_size: int, decoder: bool) -> bool:
    """Whether an input of h x w (pixels for the encoder, latent pixels for the decoder) is split into tiles."""
    pad = DECODER_PAD if decoder else ENCODER_PAD
    return max(h, w) > tile_size + 2 * pad


# ----------------------------------------------------------------------------- one tile, as a generator

Stats = tuple[torch.Tensor, torch.Tensor, int]  # (mean, var) per (sample, group), pixel count
Program = Generator[Stats, tuple[torch.Tensor, torch.Tensor], None]


class _Tile:
    """One tile's current activation ``h``. The steps below replace ``h`` and keep no other reference to a
    device tensor across a yield, so that a parked tile leaves nothing behind on the device."""

    def __init__(self, h: torch.Tensor, device: torch.device):
        self.h = h
        self.device = device
        self.store = torch.device("cpu")  # where tiles and residuals wait (a no-op move on the CPU)

    def park(self, t: torch.Tensor) -> torch.Tensor:
        return t.to(self.store)

    def unpark(self, t: torch.Tensor) -> torch.Tensor:
        return t.to(self.device)


def _group_norm(norm: torch.nn.GroupNorm, t: _Tile) -> Program:
    b, c, h, w = t.h.shape
    g = norm.num_groups
    var, mean = torch.var_mean(t.h.float().reshape(b * g, -1), dim=1, unbiased=False)
    t.h = t.park(t.h)
    mean, var = yield mean, var, h * w
    x = t.unpark(t.h)
    y = (x.float().reshape(b * g, -1) - mean[:, None].to(x.device)) * torch.rsqrt(var[:, None].to(x.device) + norm.eps)
    y = y.reshape(b, c, h, w).to(x.dtype)
    if norm.affine:
        y = y * norm.weight.view(1, -1, 1, 1) + norm.bias.view(1, -1, 1, 1)
    t.h = y


def _resnet(block, t: _Tile) -> Program:
    if getattr(block, "upsample", None) is not None or getattr(block, "downsample", None) is not None \
            or getattr(block, "time_emb_proj", None) is not None:
        raise NotImplementedError("tiled VAE: resnet blocks with up/down-sampling or time embedding")
    res = t.park(block.conv_shortcut(t.h) if block.conv_shortcut is not None else t.h)
    yield from _group_norm(block.norm1, t)
    t.h = block.conv1(block.nonlinearity(t.h))
    yield from _group_norm(block.norm2, t)
    t.h = block.conv2(block.dropout(block.nonlinearity(t.h)))
    t.h = (t.unpark(res) + t.h) / block.output_scale_factor


def _attention(attn, t: _Tile) -> Program:
    """diffusers ``Attention`` (group norm, single- or multi-head self-attention, residual) on one tile."""
    if getattr(attn, "spatial_norm", None) is not None or attn.group_norm is None:
        raise NotImplementedError("tiled VAE: attention without a group norm")
    res = t.park(t.h)
    yield from _group_norm(attn.group_norm, t)
    b, c, hh, ww = t.h.shape
    seq = t.h.reshape(b, c, hh * ww).transpose(1, 2)
    q, k, v = attn.to_q(seq), attn.to_k(seq), attn.to_v(seq)
    heads = attn.heads
    split = lambda x: x.reshape(b, -1, heads, x.shape[-1] // heads).transpose(1, 2)
    o = F.scaled_dot_product_attention(split(q), split(k), split(v), scale=attn.scale)
    del seq, q, k, v
    o = o.transpose(1, 2).reshape(b, -1, heads * o.shape[-1])
    o = attn.to_out[1](attn.to_out[0](o))
    o = o.transpose(1, 2).reshape(b, c, hh, ww)
    if attn.residual_connection:
        o = o + t.unpark(res)
    t.h = o / attn.rescale_output_factor


def _mid(mid, t: _Tile) -> Program:
    yield from _resnet(mid.resnets[0], t)
    for attn, resnet in zip(mid.attentions, mid.resnets[1:]):
        if attn is not None:
            yield from _attention(attn, t)
        yield from _resnet(resnet, t)


def _encoder_program(enc, t: _Tile) -> Program:
    """diffusers ``Encoder.forward``: conv_in, down blocks (resnets, downsampler), mid block, norm, act, conv_out."""
    t.h = enc.conv_in(t.unpark(t.h))
    for block in enc.down_blocks:
        for resnet in block.resnets:
            yield from _resnet(resnet, t)
        for down in block.downsamplers or []:
            t.h = down(t.h)
    yield from _mid(enc.mid_block, t)
    yield from _group_norm(enc.conv_norm_out, t)
    t.h = enc.conv_out(enc.conv_act(t.h))


def _decoder_program(dec, t: _Tile) -> Program:
    """diffusers ``Decoder.forward``: conv_in, mid block, up blocks (resnets, upsampler), norm, act, conv_out."""
    t.h = dec.conv_in(t.unpark(t.h))
    yield from _mid(dec.mid_block, t)
    for block in dec.up_blocks:
        for resnet in block.resnets:
            yield from _resnet(resnet, t)
        for up in block.upsamplers or []:
            t.h = up(t.h)
    yield from _group_norm(dec.conv_norm_out, t)
    t.h = dec.conv_out(dec.conv_act(t.h))


# ----------------------------------------------------------------------------- all tiles


def _shared(stats: list[Stats]) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixel-count-weighted average of the tiles' means and of their variances."""
    pixels = torch.tensor([s[2] for s in stats], dtype=torch.float32, device=stats[0][0].device)
    w = pixels / max(s[2] for s in stats)
    w = (w / w.sum())[:, None]
    mean = (torch.stack([s[0] for s in stats]) * w).sum(0)
    var = (torch.stack([s[1] for s in stats]) * w).sum(0)
    return mean, var


def run_tiled(program: Callable[[_Tile], Program], x: torch.Tensor, tile_size: int, decoder: bool) -> torch.Tensor:
    """Run ``program`` over the tiles of x (:func:`tile_layout`) with shared GroupNorm statistics and paste the
    tiles' valid parts into the output (float32, then x's dtype)."""
    b, _, h, w = x.shape
    layout = tile_layout(h, w, tile_size, decoder)
    tiles = []
    for (y0, y1, x0, x1), _ in layout:
        tile = _Tile(None, x.device)
        tile.h = tile.park(x[:, :, y0:y1, x0:x1])
        tiles.append(tile)
    runs = [program(t) for t in tiles]
    reply: list = [None] * len(runs)
    finished = [False] * len(runs)
    forward = True
    while not all(finished):
        stats = []
        for i in (range(len(runs)) if forward else reversed(range(len(runs)))):
            try:
                stats.append(runs[i].send(reply[i]))
            except StopIteration:
                finished[i] = True
        if stats:
            if len(stats) != len(runs):
                raise RuntimeError("tiled VAE: tiles reached different numbers of group norms")
            shared = _shared(stats)
            reply = [shared] * len(runs)
        forward = not forward
    scale = (lambda v: v * 8) if decoder else (lambda v: v // 8)
    out = None
    for (inp, (oy0, oy1, ox0, ox1)), t in zip(layout, tiles):
        tile, t.h = t.h, None
        if out is None:
            out = torch.zeros(b, tile.shape[1], scale(h), scale(w), dtype=torch.float32, device=x.device)
        sy0, sy1, sx0, sx1 = (scale(v) for v in inp)
        th, tw = tile.shape[2:]
        out[:, :, oy0:oy1, ox0:ox1] = tile[:, :, oy0 - sy0:th + oy1 - sy1, ox0 - sx0:tw + ox1 - sx1]
    return out.to(x.dtype)


def _check_factor(vae) -> None:
    if 2 ** (len(vae.encoder.down_blocks) - 1) != 8:
        from ...errors import TaskError

        raise TaskError("the tiled VAE (VAEHook) needs a VAE that downsamples by 8")


@torch.no_grad()
def tiled_encode_moments(vae, x: torch.Tensor, tile_size: int) -> torch.Tensor:
    """``quant_conv(encoder(x))`` of a diffusers AutoencoderKL with the encoder tiled (``tile_size`` pixels,
    padding 32); untiled when ``max(h, w) <= tile_size + 64``."""
    if is_tiled(x.shape[2], x.shape[3], tile_size, decoder=False):
        _check_factor(vae)
        h = run_tiled(lambda t: _encoder_program(vae.encoder, t), x, tile_size, decoder=False)
    else:
        h = vae.encoder(x)
    return vae.quant_conv(h) if getattr(vae, "quant_conv", None) is not None else h


@torch.no_grad()
def tiled_decode(vae, z: torch.Tensor, tile_size: int) -> torch.Tensor:
    """``decoder(post_quant_conv(z))`` of a diffusers AutoencoderKL with the decoder tiled (``tile_size`` latent
    pixels, padding 11); untiled when ``max(h, w) <= tile_size + 22``."""
    if getattr(vae, "post_quant_conv", None) is not None:
        z = vae.post_quant_conv(z)
    if is_tiled(z.shape[2], z.shape[3], tile_size, decoder=True):
        _check_factor(vae)
        return run_tiled(lambda t: _decoder_program(vae.decoder, t), z, tile_size, decoder=True)
    return vae.decoder(z)
