"""DiffBIR's pipeline against the official formulas (transcribed below with file + line citations, from
XPixelGroup/DiffBIR at commit 3f8b530 unless another commit is named), with tiny diffusers models."""


import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from restorekit import TaskError, WeightsError
from restorekit.methods.diffbir import PLAN, DiffBIR, DiffBIRSettings
from restorekit.methods.diffbir.pipeline import RestorationGuidance, apply_cleaner, tiled_call
from restorekit.nets.bsrnet import RRDBNet

from .test_diffbir import _encode_prompt


# ------------------------------------------------------------------ official code, transcribed
# diffbir/pipeline.py L25-L42
def off_resize_short_edge_to(imgs, size):
    _, _, h, w = imgs.size()
    if h == w:
        out_h, out_w = size, size
    elif h < w:
        out_h, out_w = size, int(w * (size / h))
    else:
        out_h, out_w = int(h * (size / w)), size
    return F.interpolate(imgs, size=(out_h, out_w), mode="bicubic", antialias=True)


def off_pad_to_multiples_of(imgs, multiple):
    _, _, h, w = imgs.size()
    if h % multiple == 0 and w % multiple == 0:
        return imgs.clone()
    ph, pw = map(lambda x: (x + multiple - 1) // multiple * multiple - x, (h, w))
    return F.pad(imgs, pad=(0, pw, 0, ph), mode="constant", value=0)


# diffbir/utils/common.py L29-L77
def off_wavelet_blur(image, radius):
    kernel = torch.tensor([[0.0625, 0.125, 0.0625], [0.125, 0.25, 0.125], [0.0625, 0.125, 0.0625]],
                          dtype=image.dtype, device=image.device)[None, None].repeat(3, 1, 1, 1)
    image = F.pad(image, (radius, radius, radius, radius), mode="replicate")
    return F.conv2d(image, kernel, groups=3, dilation=radius)


def off_wavelet_decomposition(image, levels=5):
    high_freq = torch.zeros_like(image)
    for i in range(levels):
        radius = 2 ** i
        low_freq = off_wavelet_blur(image, radius)
        high_freq += image - low_freq
        image = low_freq
    return high_freq, low_freq


def off_wavelet_reconstruction(content_feat, style_feat):
    content_high_freq, _ = off_wavelet_decomposition(content_feat)
    _, style_low_freq = off_wavelet_decomposition(style_feat)
    return content_high_freq + style_low_freq


# diffbir/utils/common.py L123-L232
def off_sliding_windows(h, w, tile_size, tile_stride):
    hi_list = list(range(0, h - tile_size + 1, tile_stride))
    if (h - tile_size) % tile_stride != 0:
        hi_list.append(h - tile_size)
    wi_list = list(range(0, w - tile_size + 1, tile_stride))
    if (w - tile_size) % tile_stride != 0:
        wi_list.append(w - tile_size)
    return [(hi, hi + tile_size, wi, wi + tile_size) for hi in hi_list for wi in wi_list]


def off_gaussian_weights(tile_width, tile_height):
    var = 0.01
    midpoint = (tile_width - 1) / 2
    x_probs = [np.exp(-(x - midpoint) * (x - midpoint) / (tile_width * tile_width) / (2 * var)) / np.sqrt(2 * np.pi * var)
               for x in range(tile_width)]
    midpoint = tile_height / 2
    y_probs = [np.exp(-(y - midpoint) * (y - midpoint) / (tile_height * tile_height) / (2 * var)) / np.sqrt(2 * np.pi * var)
               for y in range(tile_height)]
    return np.outer(y_probs, x_probs)


def off_make_tiled_fn(fn, size, stride, scale=1):
    def tiled_fn(x, *args, **kwargs):
        scale_fn = lambda n: int(n * scale)
        b, c, h, w = x.size()
        out = torch.zeros((b, c, scale_fn(h), scale_fn(w)), dtype=x.dtype, device=x.device)
        count = torch.zeros_like(out, dtype=torch.float32)
        weight_size = scale_fn(size)
        weights = torch.tensor(off_gaussian_weights(weight_size, weight_size)[None, None], dtype=x.dtype)
        for hi, hi_end, wi, wi_end in off_sliding_windows(h, w, size, stride):
            x_tile = x[..., hi:hi_end, wi:wi_end]
            ohi, ohe, owi, owe = map(scale_fn, (hi, hi_end, wi, wi_end))
            if len(args) or len(kwargs):
                kwargs.update(dict(hi=hi, hi_end=hi_end, wi=wi, wi_end=wi_end))
            out[..., ohi:ohe, owi:owe] += fn(x_tile, *args, **kwargs) * weights
            count[..., ohi:ohe, owi:owe] += weights
        return out / count
    return tiled_fn


# diffbir/pipeline.py L342-L420 (apply_cleaner of BSRNetPipeline / SwinIRPipeline / SCUNetPipeline, untiled)
def off_apply_cleaner(kind, cleaner, lq, output_size):
    if kind == "bsrnet":
        out = cleaner(lq)
        if min(output_size) < 512:
            return off_resize_short_edge_to(out, size=512)
        return F.interpolate(out, size=output_size, mode="bicubic", antialias=True)
    if kind == "swinir":
        if min(lq.shape[2:]) < 512:
            lq = off_resize_short_edge_to(lq, size=512)
        h0, w0 = lq.shape[2:]
        lq = off_pad_to_multiples_of(lq, multiple=64)
        return cleaner(lq)[:, :, :h0, :w0]
    out = cleaner(lq)
    if min(out.shape[2:]) < 512:
        out = off_resize_short_edge_to(out, size=512)
    return out


# diffbir/inference/{bsr,bfr,bid}_loop.py after_load_lq + diffbir/pipeline.py L265-L321 (Pipeline.run), with
# apply_cldm given as a function of the stage-1 image
def off_run(lq_u8, kind, upscale, cleaner, apply_cldm):
    lq = Image.fromarray(lq_u8)
    if kind != "bsrnet":
        lq = lq.resize(tuple(int(x * upscale) for x in lq.size), Image.BICUBIC)
    lq = np.array(lq)[None]
    lq_tensor = torch.tensor(lq, dtype=torch.float32).div(255).clamp(0, 1).permute(0, 3, 1, 2).contiguous()
    h, w = lq_tensor.shape[2:]
    output_size = (int(h * upscale), int(w * upscale)) if kind == "bsrnet" else (h, w)
    cond_img = off_apply_cleaner(kind, cleaner, lq_tensor, output_size)
    sample = apply_cldm(cond_img)
    sample = F.interpolate(off_wavelet_reconstruction((sample + 1) / 2, cond_img), size=output_size, mode="bicubic",
                           antialias=True)
    return (sample * 255.0).clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()


# diffbir/sampler/spaced_sampler.py L14-L64 (one section)
def off_space_timesteps(num_timesteps, count):
    frac_stride = 1 if count <= 1 else (num_timesteps - 1) / (count - 1)
    cur_idx, taken = 0.0, []
    for _ in range(count):
        taken.append(round(cur_idx))
        cur_idx += frac_stride
    return set(taken)


# diffbir/model/gaussian_diffusion.py L9-L20, L43-L64, L107-L117: betas, zero-SNR, float32 q_sample buffers
def off_q_coefs(zero_snr):
    betas = np.linspace(0.00085 ** 0.5, 0.0120 ** 0.5, 1000, dtype=np.float64) ** 2
    if zero_snr:
        b = torch.from_numpy(betas)
        abs_ = (1 - b).cumprod(0).sqrt()
        a0, aT = abs_[0].clone(), abs_[-1].clone()
        abs_ -= aT
        abs_ *= a0 / (a0 - aT)
        ab = abs_ ** 2
        betas = (1 - torch.cat([ab[0:1], ab[1:] / ab[:-1]])).numpy()
    ac = np.cumprod(1.0 - betas, axis=0)
    return (torch.tensor(np.sqrt(ac), dtype=torch.float32), torch.tensor(np.sqrt(1.0 - ac), dtype=torch.float32),
            betas)


def off_q_sample(x0, t, noise, zero_snr):
    a, b, _ = off_q_coefs(zero_snr)
    return a[t] * x0 + b[t] * noise


# ------------------------------------------------------------------ helpers
@pytest.fixture(scope="module")
def light():
    """Tiny models cheap at 512 x 512 (DiffBIR enlarges every image to a short edge of 512): self-attention only
    on the 2x-downsampled latent grid, none in the VAE."""
    from diffusers import AutoencoderKL, UNet2DConditionModel

    from restorekit.methods.diffbir import IRControlNet

    from .conftest import randomised

    torch.manual_seed(0)
    unet = UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4,
                                down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), block_out_channels=(16, 32),
                                layers_per_block=1, cross_attention_dim=32, attention_head_dim=4, norm_num_groups=8,
                                use_linear_projection=True).eval()
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 8, 8, 8),
                        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                        layers_per_block=1, norm_num_groups=4, sample_size=64, mid_block_add_attention=False).eval()
    cn = randomised(IRControlNet.from_unet_config(unet), seed=1).eval()
    from transformers import CLIPTextConfig, CLIPTextModel

    text = CLIPTextModel(CLIPTextConfig(vocab_size=100, hidden_size=32, intermediate_size=37, num_attention_heads=4,
                                        num_hidden_layers=1, max_position_embeddings=77, bos_token_id=0,
                                        eos_token_id=1, pad_token_id=1)).eval()
    return unet, cn, vae, text


def _restorer(tiny, stage1=None, kind="swinir", version="v2", **kw):
    unet, cn, vae, text = tiny
    return DiffBIR.from_components(unet, cn, vae, stage1=stage1, stage1_kind=kind, version=version, device="cpu",
                                   encode_prompt=_encode_prompt(text), **kw)


class _Conv(torch.nn.Module):
    """A deterministic small stage-1 stand-in (3x3 conv, optional x4 nearest upscale); records its input."""

    def __init__(self, up=False):
        super().__init__()
        g = torch.Generator().manual_seed(7)
        self.w = torch.randn(3, 3, 3, 3, generator=g) * 0.2
        self.w[:, :, 1, 1] += torch.eye(3)
        self.up, self.seen = up, []

    def forward(self, x):
        self.seen.append(x)
        y = F.conv2d(x, self.w, padding=1) * 1.1 - 0.02  # leaves [0, 1]: nothing may clamp it
        return F.interpolate(y, scale_factor=4, mode="nearest") if self.up else y


def _fake_cldm(cond_img):
    return (cond_img * 2 - 1) * 1.2 + 0.1 * torch.sin(cond_img * 20)  # beyond [-1, 1] on purpose


# ------------------------------------------------------------------ tests
def test_task_pairing_is_official():
    """diffbir/inference/pretrained_models.py docstring + bsr/bfr/bid/unaligned_bfr loops' load_cleaner and
    loop.py L62-L80 (ControlNet per version and task)."""
    official = {("v1", "sr"): ("swinir-general", "swinir", "diffbir-v1-controlnet"),
                ("v1", "denoise"): ("swinir-general", "swinir", "diffbir-v1-controlnet"),
                ("v1", "face"): ("swinir-face", "swinir", "diffbir-v1-face-controlnet"),
                ("v2", "sr"): ("bsrnet", "bsrnet", "diffbir-v2-controlnet"),
                ("v2", "denoise"): ("scunet-psnr", "scunet", "diffbir-v2-controlnet"),
                ("v2", "face"): ("swinir-face", "swinir", "diffbir-v2-controlnet"),
                ("v2", "unaligned_face"): ("bsrnet", "bsrnet", "diffbir-v2-controlnet"),
                ("v2.1", "sr"): ("swinir-realesrgan", "swinir", "diffbir-v2.1-controlnet"),
                ("v2.1", "denoise"): ("swinir-realesrgan", "swinir", "diffbir-v2.1-controlnet"),
                ("v2.1", "face"): ("swinir-face", "swinir", "diffbir-v2.1-controlnet"),
                ("v2.1", "unaligned_face"): ("swinir-realesrgan", "swinir", "diffbir-v2.1-controlnet")}
    assert {k: (p["stage1"], p["kind"], p["controlnet"]) for k, p in PLAN.items()} == official
    assert all(p["face_stage1"] == "swinir-face" for k, p in PLAN.items() if k[1] == "unaligned_face")


@pytest.mark.parametrize("kind,size,upscale", [("bsrnet", (40, 56), 4), ("bsrnet", (130, 140), 4),
                                               ("swinir", (100, 72), 1), ("swinir", (50, 36), 2),
                                               ("scunet", (60, 50), 2)])
def test_pre_and_post_processing_match_official(light, kind, size, upscale, monkeypatch):
    """Stage-1 resizing / zero padding, short edge < 512 -> 512 and back, colour fix before any clamp, 8-bit
    truncation: identical 8-bit result to the official run (apply_cldm replaced by the same function)."""
    r = _restorer(light)
    g = torch.Generator().manual_seed(3)
    lq_u8 = (torch.rand(*size, 3, generator=g) * 255).to(torch.uint8).numpy()
    cleaner = _Conv(up=kind == "bsrnet")
    ref = off_run(lq_u8, kind, upscale, cleaner, _fake_cldm)
    if kind == "swinir":  # zero padding to a multiple of 64 (restorekit reflect-padded before)
        x = cleaner.seen[-1]
        assert x.shape[2] % 64 == 0 and x.shape[3] % 64 == 0
    monkeypatch.setattr(r.pipeline, "apply_cldm", lambda c, *a, **k: _fake_cldm(c))
    lq = torch.from_numpy(lq_u8).permute(2, 0, 1)[None].float() / 255
    s = r.make_config("sr", 1)
    out = r.pipeline.run(lq, s, cleaner, kind, upscale)
    ours = (out * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    assert ours.shape == ref.shape
    assert np.array_equal(ours, ref), np.abs(ours.astype(int) - ref).max()


def _capture_sampler(monkeypatch):
    from restorekit import samplers

    seen = {}

    def fake(name, model_fn, x_T, shape, **kw):
        seen.update(kw, name=name, x_T=x_T.clone(), shape=shape)
        return x_T

    monkeypatch.setattr(samplers, "sample", fake)
    return seen


@pytest.mark.parametrize("start,noise_aug,version", [("noise", 0, "v2"), ("cond", 0, "v2"), ("cond", 0, "v2.1"),
                                                     ("noise", 300, "v2.1"), ("low_freq", 0, "v2")])
def test_condition_start_point_and_noise_aug_match_official(light, start, noise_aug, version, monkeypatch):
    """diffbir/pipeline.py L97-L168 (condition, start point, noise augmentation, random draws in order); low_freq:
    DiffBIR commit 858068f utils/helpers.py L95-L108 (VAE *sample* of the [0, 1] low-frequency band)."""
    r = _restorer(light, version=version)
    pipe, vae = r.pipeline, light[2]
    seen = _capture_sampler(monkeypatch)
    g = torch.Generator().manual_seed(0)
    cond_img = torch.rand(1, 3, 72, 100, generator=g)
    s = r.make_config("sr", 2, start_point_type=start, noise_aug=noise_aug, cfg_scale=3.0)
    with torch.no_grad():
        pipe.apply_cldm(cond_img, s, torch.Generator().manual_seed(11))
        torch.manual_seed(11)  # the official code draws from the global RNG
        pad = off_pad_to_multiples_of(cond_img, 64)
        c_img = vae.encode(pad * 2 - 1).latent_dist.mode() * 0.18215
        zsnr = version == "v2.1"
        if start == "cond":
            x_T = off_q_sample(c_img, 999, torch.randn(c_img.shape, dtype=torch.float32), zsnr)
        elif start == "low_freq":
            _, low = off_wavelet_decomposition(pad)
            dist = vae.encode(low).latent_dist
            x0 = (dist.mean + dist.std * torch.randn(dist.mean.shape)) * 0.18215
            x_T = off_q_sample(x0, 999, torch.randn(x0.shape, dtype=torch.float32), zsnr)
        else:
            x_T = torch.randn((1, 4) + c_img.shape[2:], dtype=torch.float32)
        if noise_aug > 0:
            c_img = off_q_sample(c_img, noise_aug, torch.randn_like(c_img), zsnr)
    assert torch.allclose(seen["x_T"], x_T, atol=1e-6)
    assert torch.allclose(seen["cond"]["c_img"], c_img, atol=1e-6)
    assert torch.equal(seen["uncond"]["c_img"], seen["cond"]["c_img"])
    assert seen["name"] == s.sampler and seen["cfg_scale"] == 3.0 and seen["parameterization"] == ("v" if zsnr else "eps")
    _, _, betas = off_q_coefs(zsnr)
    assert np.allclose(seen["betas"], betas, rtol=0, atol=1e-15)


def test_spaced_timesteps_reach_the_model(light):
    """The spaced sampler's model timesteps are the official float-stride-and-round ones (not linspace)."""
    r = _restorer(light)
    ts = []
    orig = r.pipeline.control_forward

    def spy(x, t, cond, strength):
        ts.append(int(t[0]))
        return orig(x, t, cond, strength)

    r.pipeline.control_forward = spy
    s = r.make_config("sr", 21, sampler="spaced", cfg_scale=1.0)
    r.pipeline.apply_cldm(torch.rand(1, 3, 64, 64), s, torch.Generator().manual_seed(0))
    assert ts == sorted(off_space_timesteps(1000, 21), reverse=True)
    assert sorted(off_space_timesteps(1000, 21)) != list(np.linspace(0, 999, 21).round().astype(int))  # linspace differs


@pytest.mark.parametrize("loss", ["mse", "w_mse"])
def test_latent_guidance_recomputes_its_target_each_time(light, loss):
    """DiffBIR commit 858068f utils/sampler.py L163-L210 (apply_cond_fn) + utils/cond_fn.py (MSEGuidance): in
    latent space the target is ``vae_encode(target)`` -- a fresh VAE sample -- at every application; x0 moves by
    ``-grad * 3000 * scale / posterior_mean_coef1[index]``; only for g_stop < t + 1 < g_start. (The official
    weighted MSE cannot weight a 4-channel latent with its 1-channel map; restorekit averages the map to the
    latent grid, so w_mse checks that grid here.)"""
    from restorekit.methods.diffbir.pipeline import diffusion_schedule, sobel_weight
    from restorekit.samplers import SpacedSchedule

    r = _restorer(light)
    pipe, vae = r.pipeline, light[2]
    g = torch.Generator().manual_seed(0)
    target01 = torch.rand(1, 3, 64, 64, generator=g)
    s = DiffBIRSettings.for_version("v2", g_scale=0.05, g_loss=loss, g_space="latent", g_start=800, g_stop=100,
                                    g_repeat=2)
    betas, _ = diffusion_schedule("v2")
    coef1 = SpacedSchedule.from_betas(betas, 10).posterior_mean_coef1
    guide = RestorationGuidance(s, target01, pipe, coef1, torch.Generator().manual_seed(5))
    x0 = torch.randn(1, 4, 8, 8, generator=g)
    assert torch.equal(guide(x0, 900, 8), x0)  # outside the window: untouched
    got = [guide(x0, 500, 5), guide(x0, 400, 4)]
    gen = torch.Generator().manual_seed(5)
    w = F.avg_pool2d(sobel_weight(target01), 8) if loss == "w_mse" else 1.0
    for out, index in zip(got, (5, 4)):
        ref = x0.clone()
        for _ in range(2):
            dist = vae.encode(target01 * 2 - 1).latent_dist
            tgt = (dist.mean + dist.std * torch.randn(dist.mean.shape, generator=gen)) * 0.18215
            pred = ref.detach().clone().requires_grad_(True)
            lo = ((pred - tgt).pow(2) * w).mean((1, 2, 3)).sum()
            gr = -torch.autograd.grad(lo, pred)[0] * (0.05 * 3000)
            ref = ref + gr * (1 / torch.tensor(coef1[index], dtype=torch.float32))
        assert torch.allclose(out, ref, atol=1e-5)
    assert not torch.allclose(got[0], got[1])


def test_multi_tile_diffusion_and_stage1_match_official_tiled_fn(light):
    """Tiled sampling: every model call is DiffBIR's make_tiled_fn over the latent (common.py L172-L232, the
    asymmetric Gaussian weights included), with several tiles; the tiled stage 1 likewise (x4 for BSRNet)."""
    r = _restorer(light)
    pipe = r.pipeline
    g = torch.Generator().manual_seed(1)
    x = torch.randn(1, 4, 24, 40, generator=g)
    cond = {"c_txt": pipe.encode_prompt(["a"]), "c_img": torch.randn(1, 4, 24, 40, generator=g)}
    s = r.make_config("sr", 2, cldm_tiled=True, cldm_tile_size=128, cldm_tile_stride=64, strength=0.7)
    t = torch.tensor([500])
    calls = []
    orig = pipe.control_forward
    pipe.control_forward = lambda *a: calls.append(1) or orig(*a)
    ours = pipe.make_model_fn(s, tiled=True)(x, t, cond)
    pipe.control_forward = orig
    assert len(calls) == len(off_sliding_windows(24, 40, 16, 8)) == 8

    def tile_forward(x_tile, t, cond, hi, hi_end, wi, wi_end):  # diffbir/sampler/spaced_sampler.py L204-L219
        return orig(x_tile, t, {"c_txt": cond["c_txt"], "c_img": cond["c_img"][..., hi:hi_end, wi:wi_end]}, 0.7)

    ref = off_make_tiled_fn(tile_forward, 16, 8)(x, t, cond)
    assert torch.allclose(ours, ref, atol=1e-6)
    full = orig(x, t, cond, 0.7)
    assert not torch.allclose(ours, full, atol=1e-3)  # tiles really are separate model calls

    net = RRDBNet(nf=8, nb=1, gc=4).eval()
    lq = torch.rand(1, 3, 40, 56, generator=g)
    s = r.make_config("sr", 1, cleaner_tiled=True, cleaner_tile_size=32, cleaner_tile_stride=16)
    with torch.no_grad():
        ours = apply_cleaner(net, "bsrnet", lq, s, (160, 224))
        ref = off_resize_short_edge_to(off_make_tiled_fn(net, 32, 16, scale=4)(lq), 512)
    assert torch.allclose(ours, ref, atol=1e-5)
    assert torch.allclose(tiled_call(lambda t, _: t * 2, lq, 32, 16), lq * 2, atol=1e-6)


def test_restore_end_to_end_tasks_samplers_and_batches(light):
    r = _restorer(light, stage1=RRDBNet(nf=8, nb=1, gc=4).eval(), kind="bsrnet")
    lq = torch.rand(1, 3, 9, 11, generator=torch.Generator().manual_seed(0))
    a = r.restore(lq, task="sr", steps=2, seed=0, scale=4)
    b = r.restore(lq, task="sr", steps=2, seed=0, scale=4)
    assert a.shape == (1, 3, 36, 44) and torch.equal(a, b)
    many = r.restore_tensor(lq, task="sr", steps=2, seed=0, scale=4, n_samples=3, batch_size=2)
    assert many.shape == (3, 3, 36, 44) and not torch.equal(many[0], many[1]) and not torch.equal(many[1], many[2])
    assert r.restore(lq, task="face", steps=1, seed=0, scale=1).shape == (1, 3, 9, 11)
    r21 = _restorer(light, version="v2.1")
    assert r21.make_config("sr").sampler == "edm_dpm++_3m_sde"
    out = r21.restore(torch.rand(1, 3, 16, 16), task="sr", steps=2, seed=0, scale=1, rescale_cfg=True)
    assert out.shape == (1, 3, 16, 16) and torch.isfinite(out).all()
    with pytest.raises(TaskError, match="does not apply"):
        r.restore(lq, task="sr", steps=2, zeta=0.3)
    with pytest.raises(TaskError, match="start_point_type"):
        r.restore(lq, task="sr", steps=2, start_point_type="middle")
    with pytest.raises(TaskError, match="sampler"):
        r.restore(lq, task="sr", steps=2, sampler="euler")
    with pytest.raises(TaskError, match="spaced"):
        r.restore(lq, task="sr", steps=2, sampler="ddim", g_scale=0.1)


def test_precision_bf16_runs_under_autocast(light):
    import copy

    unet, cn, vae, text = light
    r = DiffBIR.from_components(copy.deepcopy(unet), copy.deepcopy(cn), vae, device="cpu",
                                encode_prompt=_encode_prompt(text), version="v2", torch_dtype=torch.bfloat16)
    assert r.pipeline.unet.dtype == torch.bfloat16 and r.pipeline.controlnet.dtype == torch.bfloat16
    assert r.pipeline.vae.dtype == torch.float32  # VAE and text encoder stay float32, as upstream
    s = r.make_config("sr", 2)
    cond = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with r.pipeline.autocast():
        low = r.pipeline.apply_cldm(cond, s, torch.Generator().manual_seed(0))
    full = _restorer(light).pipeline.apply_cldm(cond, s, torch.Generator().manual_seed(0))
    assert torch.isfinite(low).all() and (low.float() - full).abs().max() < 0.1 * full.abs().max()
    assert _restorer(light).pipeline.dtype == torch.float32  # the CPU default
    r.set_precision("fp32")
    assert r.pipeline.unet.dtype == torch.float32 and r.pipeline.dtype == torch.float32


def test_unaligned_face_without_facexlib_weights_names_the_file(light):
    r = _restorer(light)
    with pytest.raises(WeightsError, match="detection_Resnet50_Final.pth"):
        r.restore(torch.rand(1, 3, 16, 16), task="unaligned_face", steps=1, scale=1)


class _FakeFaceHelper:
    """Stands in for facexlib's FaceRestoreHelper (same calls): one 512 x 512 'face' crop at the top left; pasting
    writes the restored face's mean colour into that corner of the background."""

    def __init__(self):
        self.calls = []

    def clean_all(self):
        self.calls.append("clean_all")
        self.cropped_faces, self.restored_faces = [], []

    def read_image(self, img):
        self.input_img = img

    def get_face_landmarks_5(self, resize, eye_dist_threshold):
        assert (resize, eye_dist_threshold) == (640, 5)

    def align_warp_face(self):
        self.cropped_faces = [np.ascontiguousarray(self.input_img[:512, :512])]

    def get_inverse_affine(self):
        self.calls.append("inverse")

    def add_restored_face(self, face):
        self.restored_faces.append(face)

    def paste_faces_to_input_image(self, upsample_img):
        out = upsample_img.copy()
        out[:8, :8] = self.restored_faces[0].reshape(-1, 3).mean(0).astype(np.uint8)
        return out


def test_unaligned_face_restores_faces_and_background(light):
    """UnAlignedBFRInferenceLoop's flow: the face crops go through the face stage 1 (SwinIR kind, no resize) and
    stage 2, the background through the sr path, and the restored faces are pasted into the restored background."""
    r = _restorer(light, version="v2")
    helper = _FakeFaceHelper()
    r.face_helper_factory = lambda: helper
    seen = []
    orig = r.run_samples
    r.run_samples = lambda y, s, net, kind, up, *a, **k: seen.append((tuple(y.shape), kind, up)) or orig(
        y, s, net, kind, up, *a, **k)
    out = r.restore(torch.rand(1, 3, 48, 40, generator=torch.Generator().manual_seed(0)), task="unaligned_face",
                    steps=1, scale=2, seed=0)
    assert out.shape == (1, 3, 96, 80)
    assert seen == [((1, 3, 512, 512), "swinir", 1.0), ((1, 3, 48, 40), "swinir", 2.0)]  # a face crop, then the image
    assert helper.calls == ["clean_all", "inverse"] and len(helper.restored_faces) == 1


def test_captioner_prompt_and_offline_error(light, monkeypatch):
    from restorekit.methods.diffbir import caption

    assert caption.join_prompt("a cat", "") == "a cat" and caption.join_prompt("", "hd") == "hd"
    assert caption.join_prompt("a cat", "hd") == "a cat, hd"  # diffbir/inference/loop.py L167-L169
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    r = _restorer(light)
    with pytest.raises(WeightsError, match="not available"):
        r.restore(torch.rand(1, 3, 16, 16), task="sr", steps=1, scale=1, captioner="no-such/model-id")
    with pytest.raises(TaskError, match="ram"):
        r.restore(torch.rand(1, 3, 16, 16), task="sr", steps=1, scale=1, captioner="ram")


def test_every_official_sampler_runs_through_the_pipeline(light):
    """All 14 samplers of inference.py's --sampler choices drive the pipeline's model (v2.1 schedule)."""
    from restorekit.samplers import SAMPLER_NAMES

    official = {"dpm++_m2", "spaced", "ddim", "edm_euler", "edm_euler_a", "edm_heun", "edm_dpm_2", "edm_dpm_2_a",
                "edm_lms", "edm_dpm++_2s_a", "edm_dpm++_sde", "edm_dpm++_2m", "edm_dpm++_2m_sde", "edm_dpm++_3m_sde"}
    assert set(SAMPLER_NAMES) == official  # inference.py L87-L104
    cond = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    r = _restorer(light, version="v2.1")
    outs = {}
    for name in sorted(official):
        s = r.make_config("sr", 2, sampler=name, cfg_scale=2.0)
        outs[name] = r.pipeline.apply_cldm(cond, s, torch.Generator().manual_seed(0))
        assert outs[name].shape == (1, 3, 64, 64) and torch.isfinite(outs[name]).all(), name
    s = r.make_config("sr", 2, cfg_scale=2.0)  # the default, edm_dpm++_3m_sde: seeded, Brownian tree included
    assert torch.equal(r.pipeline.apply_cldm(cond, s, torch.Generator().manual_seed(0)), outs["edm_dpm++_3m_sde"])
