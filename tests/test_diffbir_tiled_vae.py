"""DiffBIR's tiled VAE (restorekit.methods.diffbir.tiled_vae) against the official ``VAEHook`` (non-fast mode, as
``ControlLDM.vae_encode`` / ``vae_decode`` use it), transcribed below with file + line citations from
XPixelGroup/DiffBIR at commit 3f8b530, on a tiny diffusers AutoencoderKL (32 GroupNorm groups, as upstream
hard-codes, random GroupNorm affines). The transcription runs the official task queues; the ldm module names
map to diffusers' as in restorekit's ``convert.vae_to_ldm``. Where the official checkout is on this machine
(/work/official/DiffBIR), one more test runs the official module itself."""

import math
import os
import sys

import pytest
import torch
import torch.nn.functional as F

from restorekit import TaskError
from restorekit.methods.diffbir import DiffBIRSettings, tiled_vae
from restorekit.methods.diffbir.pipeline import LATENT_SCALE, DiffBIRPipeline

from .test_diffbir import _encode_prompt
from .test_diffbir_pipeline import light, off_sliding_windows  # noqa: F401  (light: the tiny pipeline models)

OFFICIAL = "/work/official/DiffBIR"


# ------------------------------------------------------------------ official code, transcribed
# diffbir/utils/tilevae/tilevae.py L72-L74
def off_inplace_nonlinearity(x):
    return F.silu(x, inplace=True)


# diffbir/utils/tilevae/attn.py L85-L115 (sdp_forward, the default with torch 2); q/k/v/proj_out are 1x1 convs
# upstream and Linear layers (to_q/to_k/to_v/to_out.0) in diffusers: applied here on the (b, hw, c) sequence
def off_sdp_forward(attn, x):
    B, C, H, W = x.shape
    seq = x.reshape(B, C, H * W).permute(0, 2, 1)  # rearrange "b c h w -> b (h w) c"
    q, k, v = attn.to_q(seq), attn.to_k(seq), attn.to_v(seq)
    q, k, v = (t.unsqueeze(3).reshape(B, t.shape[1], 1, C).permute(0, 2, 1, 3).reshape(B * 1, t.shape[1], C)
               .contiguous() for t in (q, k, v))
    out = F.scaled_dot_product_attention(q, k, v)
    out = out.unsqueeze(0).reshape(B, 1, out.shape[1], C).permute(0, 2, 1, 3).reshape(B, out.shape[1], C)
    out = attn.to_out[0](out)
    return out.permute(0, 2, 1).reshape(B, C, H, W)  # rearrange "b (h w) c -> b c h w", then proj_out


# tilevae.py L77-L82 (ldm attn_1.norm = diffusers attentions[0].group_norm)
def off_attn2task(task_queue, net):
    task_queue.append(("store_res", lambda x: x))
    task_queue.append(("pre_norm", net.group_norm))
    task_queue.append(("attn", lambda x, net=net: off_sdp_forward(net, x)))
    task_queue.append(["add_res", None])


# tilevae.py L85-L106 (ldm nin_shortcut = diffusers conv_shortcut)
def off_resblock2task(queue, block):
    if block.in_channels != block.out_channels:
        queue.append(("store_res", block.conv_shortcut))
    else:
        queue.append(("store_res", lambda x: x))
    queue.append(("pre_norm", block.norm1))
    queue.append(("silu", off_inplace_nonlinearity))
    queue.append(("conv1", block.conv1))
    queue.append(("pre_norm", block.norm2))
    queue.append(("silu", off_inplace_nonlinearity))
    queue.append(("conv2", block.conv2))
    queue.append(["add_res", None])


# tilevae.py L109-L141; ldm down[i].block / downsample = diffusers down_blocks[i].resnets / downsamplers[0];
# ldm up[i].block / upsample = diffusers up_blocks[n - 1 - i].resnets / upsamplers[0]; mid.block_1 / attn_1 /
# block_2 = mid_block.resnets[0] / attentions[0] / resnets[1]
def off_build_sampling(task_queue, net, is_decoder):
    n = len(net.up_blocks if is_decoder else net.down_blocks)
    if is_decoder:
        off_resblock2task(task_queue, net.mid_block.resnets[0])
        off_attn2task(task_queue, net.mid_block.attentions[0])
        off_resblock2task(task_queue, net.mid_block.resnets[1])
        resolution_iter = reversed(range(n))
        block_ids = len(net.up_blocks[0].resnets)  # num_res_blocks + 1
        condition = 0
        module = lambda i: net.up_blocks[n - 1 - i]
        func = lambda m: m.upsamplers[0]
    else:
        resolution_iter = range(n)
        block_ids = len(net.down_blocks[0].resnets)  # num_res_blocks
        condition = n - 1
        module = lambda i: net.down_blocks[i]
        func = lambda m: m.downsamplers[0]
    for i_level in resolution_iter:
        for i_block in range(block_ids):
            off_resblock2task(task_queue, module(i_level).resnets[i_block])
        if i_level != condition:
            task_queue.append(("upsample" if is_decoder else "downsample", func(module(i_level))))
    if not is_decoder:
        off_resblock2task(task_queue, net.mid_block.resnets[0])
        off_attn2task(task_queue, net.mid_block.attentions[0])
        off_resblock2task(task_queue, net.mid_block.resnets[1])


# tilevae.py L144-L165 (ldm norm_out = diffusers conv_norm_out; give_pre_end / tanh_out are False)
def off_build_task_queue(net, is_decoder):
    task_queue = [("conv_in", net.conv_in)]
    off_build_sampling(task_queue, net, is_decoder)
    task_queue.append(("pre_norm", net.conv_norm_out))
    task_queue.append(("silu", off_inplace_nonlinearity))
    task_queue.append(("conv_out", net.conv_out))
    return task_queue


# tilevae.py L168-L174
def off_clone_task_queue(task_queue):
    return [[item for item in task] for task in task_queue]


# tilevae.py L177-L185
def off_get_var_mean(input, num_groups, eps=1e-6):
    b, c = input.size(0), input.size(1)
    channel_in_group = int(c / num_groups)
    input_reshaped = input.contiguous().view(1, int(b * num_groups), channel_in_group, *input.size()[2:])
    var, mean = torch.var_mean(input_reshaped, dim=[0, 2, 3, 4], unbiased=False)
    return var, mean


# tilevae.py L188-L215
def off_custom_group_norm(input, num_groups, mean, var, weight=None, bias=None, eps=1e-6):
    b, c = input.size(0), input.size(1)
    channel_in_group = int(c / num_groups)
    input_reshaped = input.contiguous().view(1, int(b * num_groups), channel_in_group, *input.size()[2:])
    out = F.batch_norm(input_reshaped, mean.to(input), var.to(input), weight=None, bias=None, training=False,
                       momentum=0, eps=eps)
    out = out.view(b, c, *input.size()[2:])
    if weight is not None:
        out *= weight.view(1, -1, 1, 1)
    if bias is not None:
        out += bias.view(1, -1, 1, 1)
    return out


# tilevae.py L218-L229
def off_crop_valid_region(x, input_bbox, target_bbox, is_decoder):
    padded_bbox = [i * 8 if is_decoder else i // 8 for i in input_bbox]
    margin = [target_bbox[i] - padded_bbox[i] for i in range(4)]
    return x[:, :, margin[2]:x.size(2) + margin[3], margin[0]:x.size(3) + margin[1]]


# tilevae.py L232-L278 (the fp16 overflow branch left out: float32 here)
class OffGroupNormParam:
    def __init__(self):
        self.var_list, self.mean_list, self.pixel_list = [], [], []
        self.weight = self.bias = None

    def add_tile(self, tile, layer):
        var, mean = off_get_var_mean(tile, 32)
        self.var_list.append(var)
        self.mean_list.append(mean)
        self.pixel_list.append(tile.shape[2] * tile.shape[3])
        if hasattr(layer, "weight"):
            self.weight, self.bias = layer.weight, layer.bias
        else:
            self.weight = self.bias = None

    def summary(self):
        if len(self.var_list) == 0:
            return None
        var = torch.vstack(self.var_list)
        mean = torch.vstack(self.mean_list)
        max_value = max(self.pixel_list)
        pixels = torch.tensor(self.pixel_list, dtype=torch.float32, device=var.device) / max_value
        sum_pixels = torch.sum(pixels)
        pixels = pixels.unsqueeze(1) / sum_pixels
        var = torch.sum(var * pixels, dim=0)
        mean = torch.sum(mean * pixels, dim=0)
        return lambda x: off_custom_group_norm(x, 32, mean, var, self.weight, self.bias)


class OffVAEHook:
    """tilevae.py L307-L579 with fast_encoder = fast_decoder = False (color_fix only acts in fast mode)."""

    def __init__(self, net, tile_size, is_decoder):
        self.net, self.tile_size, self.is_decoder = net, tile_size, is_decoder
        self.pad = 11 if is_decoder else 32
        self.num_tiles = 0

    def __call__(self, x):  # L317-L323
        _, _, H, W = x.shape
        if max(H, W) <= self.pad * 2 + self.tile_size:
            return self.net(x)
        return self.vae_tile_forward(x)

    def get_best_tile_size(self, lowerbound, upperbound):  # L325-L338
        divider = 32
        while divider >= 2:
            remainer = lowerbound % divider
            if remainer == 0:
                return lowerbound
            candidate = lowerbound - remainer + divider
            if candidate <= upperbound:
                return candidate
            divider //= 2
        return lowerbound

    def split_tiles(self, h, w):  # L340-L397
        tile_input_bboxes, tile_output_bboxes = [], []
        tile_size, pad = self.tile_size, self.pad
        num_height_tiles = max(math.ceil((h - 2 * pad) / tile_size), 1)
        num_width_tiles = max(math.ceil((w - 2 * pad) / tile_size), 1)
        real_tile_height = math.ceil((h - 2 * pad) / num_height_tiles)
        real_tile_width = math.ceil((w - 2 * pad) / num_width_tiles)
        real_tile_height = self.get_best_tile_size(real_tile_height, tile_size)
        real_tile_width = self.get_best_tile_size(real_tile_width, tile_size)
        for i in range(num_height_tiles):
            for j in range(num_width_tiles):
                input_bbox = [pad + j * real_tile_width, min(pad + (j + 1) * real_tile_width, w),
                              pad + i * real_tile_height, min(pad + (i + 1) * real_tile_height, h)]
                output_bbox = [input_bbox[0] if input_bbox[0] > pad else 0,
                               input_bbox[1] if input_bbox[1] < w - pad else w,
                               input_bbox[2] if input_bbox[2] > pad else 0,
                               input_bbox[3] if input_bbox[3] < h - pad else h]
                output_bbox = [x * 8 if self.is_decoder else x // 8 for x in output_bbox]
                tile_output_bboxes.append(output_bbox)
                tile_input_bboxes.append([max(0, input_bbox[0] - pad), min(w, input_bbox[1] + pad),
                                          max(0, input_bbox[2] - pad), min(h, input_bbox[3] + pad)])
        return tile_input_bboxes, tile_output_bboxes

    @torch.no_grad()
    def vae_tile_forward(self, z):  # L442-L579, non-fast mode, on the CPU
        net, is_decoder = self.net, self.is_decoder
        z = z.detach()
        N, height, width = z.shape[0], z.shape[2], z.shape[3]
        in_bboxes, out_bboxes = self.split_tiles(height, width)
        tiles = [z[:, :, b[2]:b[3], b[0]:b[1]].cpu() for b in in_bboxes]
        num_tiles = self.num_tiles = len(tiles)
        num_completed = 0
        single_task_queue = off_build_task_queue(net, is_decoder)
        task_queues = [off_clone_task_queue(single_task_queue) for _ in range(num_tiles)]
        result = None
        forward = True
        while True:
            group_norm_param = OffGroupNormParam()
            for i in range(num_tiles) if forward else reversed(range(num_tiles)):
                tile = tiles[i]
                task_queue = task_queues[i]
                while len(task_queue) > 0:
                    task = task_queue.pop(0)
                    if task[0] == "pre_norm":
                        group_norm_param.add_tile(tile, task[1])
                        break
                    elif task[0] == "store_res" or task[0] == "store_res_cpu":
                        task_id = 0
                        res = task[1](tile).cpu()
                        while task_queue[task_id][0] != "add_res":
                            task_id += 1
                        task_queue[task_id][1] = res
                    elif task[0] == "add_res":
                        tile += task[1]
                        task[1] = None
                    else:
                        tile = task[1](tile)
                if len(task_queue) == 0:
                    tiles[i] = None
                    num_completed += 1
                    if result is None:
                        result = torch.zeros((N, tile.shape[1], height * 8 if is_decoder else height // 8,
                                              width * 8 if is_decoder else width // 8))
                    result[:, :, out_bboxes[i][2]:out_bboxes[i][3], out_bboxes[i][0]:out_bboxes[i][1]] = \
                        off_crop_valid_region(tile, in_bboxes[i], out_bboxes[i], is_decoder)
                elif i == num_tiles - 1 and forward:
                    forward = False
                    tiles[i] = tile
                elif i == 0 and not forward:
                    forward = True
                    tiles[i] = tile
                else:
                    tiles[i] = tile.cpu()
            if num_completed == num_tiles:
                break
            group_norm_func = group_norm_param.summary()
            if group_norm_func is not None:
                for i in range(num_tiles):
                    task_queues[i].insert(0, ("apply_norm", group_norm_func))
        return result


# diffbir/model/cldm.py L92-L119 (sample=False: .mode()) and L121-L141
def off_vae_encode_tiled(vae, image, tile_size):
    hook = OffVAEHook(vae.encoder, tile_size, is_decoder=False)
    moments = vae.quant_conv(hook(image))
    mean, _ = torch.chunk(moments, 2, dim=1)  # DiagonalGaussianDistribution(moments).mode()
    return mean * LATENT_SCALE, hook.num_tiles


def off_vae_decode_tiled(vae, z, tile_size):
    hook = OffVAEHook(vae.decoder, tile_size, is_decoder=True)
    return hook(vae.post_quant_conv(z / LATENT_SCALE)), hook.num_tiles


def per_tile_normalised(net, x, tile_size, is_decoder):
    """The same tiles, each through the untiled network on its own (GroupNorm statistics of that tile only)."""
    hook = OffVAEHook(net, tile_size, is_decoder)
    ins, outs = hook.split_tiles(x.shape[2], x.shape[3])
    result = None
    for ib, ob in zip(ins, outs):
        tile = net(x[:, :, ib[2]:ib[3], ib[0]:ib[1]])
        if result is None:
            f = (lambda n: n * 8) if is_decoder else (lambda n: n // 8)
            result = torch.zeros(x.shape[0], tile.shape[1], f(x.shape[2]), f(x.shape[3]))
        result[:, :, ob[2]:ob[3], ob[0]:ob[1]] = off_crop_valid_region(tile, ib, ob, is_decoder)
    return result


# ------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def vae():
    """Downsampling x8 (4 levels), 32 GroupNorm groups, mid-block attention; GroupNorm affines and biases random."""
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    net = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(32, 32, 64, 64),
                        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                        layers_per_block=1, norm_num_groups=32, sample_size=64).eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in net.named_parameters():
            if "norm" in name and name.endswith("weight"):
                p.copy_(1 + 0.3 * torch.randn(p.shape, generator=g))
            elif name.endswith("bias"):
                p.copy_((0.3 if "norm" in name else 0.05) * torch.randn(p.shape, generator=g))
    return net


def _pipe(vae):
    return DiffBIRPipeline(None, None, vae, None)


# ------------------------------------------------------------------ tests


def test_tile_layout_is_official():
    """Tile boxes (input, output) and the untiled fallback equal split_tiles / __call__ over many sizes."""
    for decoder, tiles, sizes in ((False, (64, 96, 256, 512), range(8, 1200, 40)),
                                  (True, (8, 16, 32, 64), range(1, 150, 7))):
        for t in tiles:
            hook = OffVAEHook(None, t, decoder)
            for h in sizes:
                for w in (sizes[0], h, sizes[-1] - 3):
                    ins, outs = hook.split_tiles(h, w)
                    ours = tiled_vae.tile_layout(h, w, t, decoder)
                    assert [(b[2], b[3], b[0], b[1]) for b in ins] == [i for i, _ in ours]
                    assert [(b[2], b[3], b[0], b[1]) for b in outs] == [o for _, o in ours]
                    assert tiled_vae.is_tiled(h, w, t, decoder) == (max(h, w) > hook.pad * 2 + t)
    assert len(tiled_vae.tile_layout(512, 768, 256, False)) == 6  # 2 x 3 tiles at the official default size
    assert len(tiled_vae.tile_layout(64, 96, 256 // 8, True)) == 6


def test_tiled_encode_matches_official_vaehook(vae):
    """``vae_encode(tiled=True)`` (mode) == the official tiled encoder on 6 tiles, batch of 2 (per-sample
    statistics); tiling changes the result, so the test would see an untiled or per-tile-normalised run."""
    x = torch.rand(2, 3, 104, 136, generator=torch.Generator().manual_seed(2)) * 2 - 1
    x[1] = x[1] * 0.5 + 0.3  # different statistics per sample
    pipe = _pipe(vae)
    ours = pipe.vae_encode(x, sample=False, tiled=True, tile_size=32)
    with torch.no_grad():
        ref, n = off_vae_encode_tiled(vae, x, 32)
        full = pipe.vae_encode(x, sample=False)
        alone = vae.quant_conv(per_tile_normalised(vae.encoder, x, 32, False))[:, :4] * LATENT_SCALE
    assert n == len(tiled_vae.tile_layout(104, 136, 32, False)) == 6
    assert ours.shape == ref.shape == full.shape == (2, 4, 13, 17)
    assert (ours - ref).abs().max() < 1e-5
    # secondary: tiling changes the result (so the check above sees tiles), less than tiles normalised alone do
    assert (ours - full).abs().max() > 1e-3
    assert (ours - full).abs().mean() < (alone - full).abs().mean()
    assert (ours - full).abs().mean() < 0.2 * full.abs().mean()


def test_tiled_decode_matches_official_vaehook(vae):
    """``vae_decode(tiled=True)`` == the official tiled decoder on 2 x 2 tiles; tiling changes the result."""
    z = torch.randn(1, 4, 27, 30, generator=torch.Generator().manual_seed(3))
    pipe = _pipe(vae)
    ours = pipe.vae_decode(z, tiled=True, tile_size=4)
    with torch.no_grad():
        ref, n = off_vae_decode_tiled(vae, z, 4)
        full = pipe.vae_decode(z)
    assert n == len(tiled_vae.tile_layout(27, 30, 4, True)) == 4
    assert ours.shape == ref.shape == full.shape == (1, 3, 216, 240)
    assert (ours - ref).abs().max() < 1e-5 * max(1.0, ref.abs().max())
    assert (ours - full).abs().max() > 1e-3
    assert (ours - full).abs().mean() < 0.2 * full.abs().mean()


def test_small_inputs_run_untiled(vae):
    """At most tile + 2 x padding on the longer side: the untiled VAE, as VAEHook.__call__."""
    pipe = _pipe(vae)
    x = torch.rand(1, 3, 64, 128, generator=torch.Generator().manual_seed(4)) * 2 - 1
    with torch.no_grad():
        assert torch.equal(pipe.vae_encode(x, sample=False, tiled=True, tile_size=64), pipe.vae_encode(x, sample=False))
        z = torch.randn(1, 4, 8, 30, generator=torch.Generator().manual_seed(5))
        assert torch.equal(pipe.vae_decode(z, tiled=True, tile_size=8), pipe.vae_decode(z))


def test_apply_cldm_passes_the_official_tile_sizes(light, monkeypatch):  # noqa: F811
    """apply_cldm tiles the encoder with ``vae_encoder_tile_size`` pixels and the decoder with
    ``vae_decoder_tile_size // 8`` latent pixels (official pipeline.py L99-L131, L219-L231), each on >1 tile,
    and only when the official size checks allow it."""
    unet, cn, vae, text = light
    pipe = DiffBIRPipeline(unet, cn, vae, _encode_prompt(text))
    seen = []
    enc, dec = tiled_vae.tiled_encode_moments, tiled_vae.tiled_decode

    def note(name, x, t, decoder):
        h, w = x.shape[2:]
        seen.append((name, t, tiled_vae.is_tiled(h, w, t, decoder), len(tiled_vae.tile_layout(h, w, t, decoder))))

    def spy_enc(v, x, t):
        note("enc", x, t, False)
        return enc(v, x, t)

    def spy_dec(v, z, t):
        note("dec", z, t, True)
        return dec(v, z, t)

    monkeypatch.setattr(tiled_vae, "tiled_encode_moments", spy_enc)
    monkeypatch.setattr(tiled_vae, "tiled_decode", spy_dec)
    s = DiffBIRSettings.for_version("v2", steps=1, vae_encoder_tiled=True, vae_encoder_tile_size=64,
                                    vae_decoder_tiled=True, vae_decoder_tile_size=64)
    cond = torch.rand(1, 3, 130, 250, generator=torch.Generator().manual_seed(6))  # padded to 136 x 256
    out = pipe.apply_cldm(cond, s, torch.Generator().manual_seed(0))
    assert out.shape == (1, 3, 130, 250) and torch.isfinite(out).all()
    assert seen == [("enc", 64, True, 6), ("dec", 8, True, 2)]
    seen.clear()
    # 56 < 64 pixels high (although 200 > 64 + 2 x 32 would tile) and 7 < 8 latent rows: untiled, as upstream
    pipe.apply_cldm(cond[:, :, :56, :200], s, torch.Generator().manual_seed(0))
    assert seen == []
    bad = DiffBIRSettings.for_version("v2", steps=1, vae_decoder_tiled=True, vae_decoder_tile_size=4)
    with torch.no_grad(), pytest.raises(TaskError, match="VAE decoder tile size must be at least 8"):
        pipe.apply_cldm(cond[:, :, :56, :200], bad, torch.Generator().manual_seed(0))


def test_apply_cldm_tiles_the_sampling_as_upstream(light, monkeypatch):  # noqa: F811
    """cldm_tiled: the latent is not padded and every model call runs on ``cldm_tile_size // 8`` tiles every
    ``cldm_tile_stride // 8`` (official pipeline.py L131-L143, L203-L214), here 12 tiles; a latent smaller than a
    tile runs untiled on the latent padded to a multiple of 8, as upstream."""
    from restorekit.methods.diffbir import pipeline as pl

    unet, cn, vae, text = light
    pipe = DiffBIRPipeline(unet, cn, vae, _encode_prompt(text))
    calls, orig = [], pl.tiled_call
    monkeypatch.setattr(pl, "tiled_call", lambda fn, x, size, stride, *a: calls.append((x.shape[2:], size, stride))
                        or orig(fn, x, size, stride, *a))
    cond = torch.rand(1, 3, 130, 250, generator=torch.Generator().manual_seed(6))  # padded to 136 x 256
    s = DiffBIRSettings.for_version("v2", steps=1, cfg_scale=1.0, cldm_tiled=True, cldm_tile_size=64,
                                    cldm_tile_stride=64)
    with torch.no_grad():  # as Pipeline.run
        assert pipe.apply_cldm(cond, s, torch.Generator().manual_seed(0)).shape == (1, 3, 130, 250)
    assert calls and all(c == ((17, 32), 8, 8) for c in calls)
    assert len(off_sliding_windows(17, 32, 8, 8)) == 12
    seen = []
    orig_fwd = pipe.control_forward
    monkeypatch.setattr(pipe, "control_forward", lambda x, *a: seen.append(x.shape[2:]) or orig_fwd(x, *a))
    calls.clear()
    untiled = DiffBIRSettings.for_version("v2", steps=1, cfg_scale=1.0, cldm_tiled=True)
    with torch.no_grad():
        pipe.apply_cldm(cond, untiled, torch.Generator().manual_seed(0))
    assert not calls and seen and all(sh == (24, 32) for sh in seen)  # 17 < 512 // 8: untiled, padded to 8


# ------------------------------------------------------------------ the official module itself (local checkout only)


@pytest.mark.skipif(not os.path.isdir(OFFICIAL), reason=f"official DiffBIR checkout not at {OFFICIAL} (CI)")
def test_matches_the_official_module_on_ldm_modules(vae, monkeypatch):
    """The official VAEHook (imported from the checkout) on the official ldm Encoder / Decoder with this VAE's
    weights (loaded strictly through restorekit's vae_to_ldm) == restorekit's tiled encode / decode."""
    monkeypatch.syspath_prepend(OFFICIAL)
    try:
        import diffbir.model.vae as ov
        from diffbir.utils.tilevae.tilevae import VAEHook
    except ImportError as e:  # pragma: no cover
        pytest.skip(f"official DiffBIR not importable: {e}")
    from restorekit.methods.diffbir.convert import vae_to_ldm

    cfg = {"down_block_types": ("DownEncoderBlock2D",) * 4, "layers_per_block": 1}
    ddconfig = {"double_z": True, "z_channels": 4, "resolution": 64, "in_channels": 3, "out_ch": 3, "ch": 32,
                "ch_mult": [1, 1, 2, 2], "num_res_blocks": 1, "attn_resolutions": [], "dropout": 0.0}
    off = ov.AutoencoderKL(ddconfig, 4).eval()
    off.load_state_dict(vae_to_ldm(vae.state_dict(), cfg), strict=True)
    x = torch.rand(2, 3, 104, 136, generator=torch.Generator().manual_seed(7)) * 2 - 1
    z = torch.randn(1, 4, 27, 30, generator=torch.Generator().manual_seed(8))
    with torch.no_grad():
        ref_e = off.quant_conv(VAEHook(off.encoder, 32, False, False, False, True)(x))
        ref_d = VAEHook(off.decoder, 4, True, False, False, True)(off.post_quant_conv(z))
    assert (tiled_vae.tiled_encode_moments(vae, x, 32) - ref_e).abs().max() < 1e-5
    assert (tiled_vae.tiled_decode(vae, z, 4) - ref_d).abs().max() < 1e-5 * max(1.0, ref_d.abs().max())
    for name in [k for k in sys.modules if k == "diffbir" or k.startswith("diffbir.")]:
        sys.modules.pop(name)
