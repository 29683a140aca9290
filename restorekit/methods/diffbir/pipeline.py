"""DiffBIR's inference pipeline (``inference.py`` + ``diffbir/pipeline.py``) on diffusers modules.

Per image, as the official ``Pipeline.run`` with the task loop's pre-resize:

* same-size stage-1 models (SwinIR, SCUNet) get the LQ image resized by ``upscale`` first (PIL bicubic on
  8-bit images, as the official loops' ``after_load_lq``); BSRNet upscales x4 itself, then the result is
  resized to ``upscale`` x the LQ size;
* a short edge below 512 is resized to 512 (bicubic, antialiased) before stage 2 and the result resized back;
* SwinIR's input is zero-padded to a multiple of 64 and cropped after;
* stage 2: the condition is zero-padded to a multiple of 64 (8 with tiled VAE encoding or tiled sampling),
  ``c = VAE.encode(2 c - 1).mode() * 0.18215``; start point ``noise`` or ``cond``
  (``q_sample(c, T - 1)``), optional ``noise_aug`` on c; control scales ``[strength] * 13``; then one of
  the official samplers (:mod:`restorekit.samplers`) with classifier-free guidance;
* wavelet colour fix of ``(x + 1) / 2`` against the stage-1 image (no clamp before), resize to the output
  size, ``(x * 255).clamp(0, 255)`` truncated to 8 bits.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F

V2_NEG_PROMPT = "low quality, blurry, low-resolution, noisy, unsharp, weird textures"
V21_POS_PROMPT = ("Cinematic, High Contrast, highly detailed, taken using a Canon EOS R camera, hyper detailed photo - "
                  "realistic maximum detail, 32k, Color Grading, ultra HD, extreme meticulous detailing, skin pore "
                  "detailing, hyper sharpness, perfect without deformations.")
V21_NEG_PROMPT = ("painting, oil painting, illustration, drawing, art, sketch, oil painting, cartoon, CG Style, 3D render, "
                  "unreal engine, blurring, dirty, messy, worst quality, low quality, frames, watermark, signature, "
                  "jpeg artifacts, deformed, lowres, over-smooth.")
LATENT_SCALE = 0.18215


@dataclass
class DiffBIRSettings:
    """Options of the official ``inference.py`` under their official names (defaults: v2.1's argparse defaults;
    v1 / v2: the README's paper settings, ``spaced`` 50 steps, CFG 4, empty positive prompt)."""

    version: str = "v2.1"
    sampler: str = "edm_dpm++_3m_sde"
    steps: int = 10
    start_point_type: str = "noise"  # "noise" | "cond" | "low_freq" (v2's --better_start, an earlier release)
    cleaner_tiled: bool = False
    cleaner_tile_size: int = 512
    cleaner_tile_stride: int = 256
    vae_encoder_tiled: bool = False
    vae_encoder_tile_size: int = 256
    vae_decoder_tiled: bool = False
    vae_decoder_tile_size: int = 256
    cldm_tiled: bool = False
    cldm_tile_size: int = 512
    cldm_tile_stride: int = 256
    captioner: str = "none"
    pos_prompt: str = V21_POS_PROMPT
    neg_prompt: str = V21_NEG_PROMPT
    cfg_scale: float = 6.0
    rescale_cfg: bool = False
    noise_aug: int = 0
    s_churn: float = 0.0
    s_tmin: float = 0.0
    s_tmax: float = 300.0
    s_noise: float = 1.0
    eta: float = 1.0
    order: int = 1
    strength: float = 1.0
    batch_size: int = 1
    n_samples: int = 1
    guidance: bool = False
    g_loss: str = "w_mse"  # "mse" | "w_mse"
    g_scale: float = 0.0
    g_start: int = 1001
    g_stop: int = -1
    g_space: str = "latent"  # "latent" | "rgb"
    g_repeat: int = 1
    color_fix: str = "wavelet"  # "wavelet" | "none" (restorekit: "none" skips the colour fix)

    @classmethod
    def for_version(cls, version: str, **kw) -> DiffBIRSettings:
        if version in ("v1", "v2"):
            base = dict(version=version, sampler="spaced", steps=50, cfg_scale=4.0, pos_prompt="",
                        neg_prompt=V2_NEG_PROMPT)
        elif version == "v2.1":
            base = dict(version="v2.1")
        else:
            raise ValueError(f"unknown DiffBIR version {version!r}")
        base.update({k: v for k, v in kw.items() if v is not None})
        return cls(**base)

    def to_dict(self) -> dict:
        return asdict(self)


def diffusion_schedule(version: str) -> tuple[np.ndarray, str]:
    """(training betas float64, parameterization) of ``configs/inference/diffusion[_v2.1].yaml``."""
    from ...samplers import diffbir_betas

    v21 = version == "v2.1"
    return diffbir_betas(zero_snr=v21), ("v" if v21 else "eps")


def q_sample(x0: torch.Tensor, t: int, noise: torch.Tensor, betas: np.ndarray) -> torch.Tensor:
    """``sqrt(abar_t) x0 + sqrt(1 - abar_t) noise`` with the coefficients rounded to float32 (official buffers)."""
    ac = np.cumprod(1.0 - betas)
    a = torch.tensor(np.sqrt(ac), dtype=torch.float32)[t].item()
    b = torch.tensor(np.sqrt(1.0 - ac), dtype=torch.float32)[t].item()
    return torch.tensor(a, dtype=torch.float32) * x0 + torch.tensor(b, dtype=torch.float32) * noise


# ----------------------------------------------------------------------------- resizing and padding


def resize_short_edge_to(x: torch.Tensor, size: int) -> torch.Tensor:
    """Bicubic (antialiased) resize so that the short edge is ``size``; the long edge is ``int(long * size / short)``."""
    h, w = x.shape[-2:]
    if h == w:
        oh, ow = size, size
    elif h < w:
        oh, ow = size, int(w * (size / h))
    else:
        oh, ow = int(h * (size / w)), size
    return F.interpolate(x, size=(oh, ow), mode="bicubic", antialias=True)


def pad_to_multiple(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """Zero-pad bottom / right to a multiple of ``multiple``."""
    h, w = x.shape[-2:]
    return F.pad(x, (0, (-w) % multiple, 0, (-h) % multiple), mode="constant", value=0)


def pil_bicubic_resize(x: torch.Tensor, factor: float) -> torch.Tensor:
    """Resize (b,3,h,w) in [0,1] to ``int(w * factor) x int(h * factor)`` with PIL's bicubic filter, as the
    official loops resize the LQ image. 8-bit images (values k/255) are resized as 8-bit RGB, like upstream;
    other images per channel in float ("F") mode."""
    from PIL import Image

    h, w = x.shape[-2:]
    size = (int(w * factor), int(h * factor))
    if size == (w, h):
        return x
    arr = x.detach().float().cpu().numpy()
    out = []
    is8 = np.allclose(arr * 255, np.round(arr * 255), atol=1e-4)
    for img in arr:
        if is8:
            u8 = np.clip(np.round(img * 255), 0, 255).astype(np.uint8).transpose(1, 2, 0)
            r = np.asarray(Image.fromarray(u8).resize(size, Image.BICUBIC)).astype(np.float32) / 255
            out.append(r.transpose(2, 0, 1))
        else:
            out.append(np.stack([np.asarray(Image.fromarray(c.astype(np.float32), mode="F").resize(size, Image.BICUBIC))
                                 for c in img]).clip(0, 1))
    return torch.from_numpy(np.stack(out)).to(x.device, x.dtype)


# ----------------------------------------------------------------------------- tiling


def sliding_windows(h: int, w: int, tile: int, stride: int) -> list[tuple[int, int, int, int]]:
    """Tiles of ``tile`` x ``tile`` every ``stride``, plus a last row / column ending at the border (h, w >= tile)."""
    his = list(range(0, h - tile + 1, stride))
    if (h - tile) % stride:
        his.append(h - tile)
    wis = list(range(0, w - tile + 1, stride))
    if (w - tile) % stride:
        wis.append(w - tile)
    return [(a, a + tile, b, b + tile) for a in his for b in wis]


def gaussian_weights(size: int) -> torch.Tensor:
    """DiffBIR's tile weights (float64): outer product of Gaussians (variance 0.01 in tile units) centred at
    ``size / 2`` vertically and ``(size - 1) / 2`` horizontally, each scaled by ``1 / sqrt(2 pi 0.01)``."""
    var = 0.01
    idx = torch.arange(size, dtype=torch.float64)
    norm = math.sqrt(2 * math.pi * var)
    xs = torch.exp(-(idx - (size - 1) / 2) ** 2 / (size * size) / (2 * var)) / norm
    ys = torch.exp(-(idx - size / 2) ** 2 / (size * size) / (2 * var)) / norm
    return ys[:, None] * xs[None]


def tiled_call(fn, x: torch.Tensor, size: int, stride: int, scale: int = 1, out_channels: int | None = None):
    """Apply ``fn(tile, (hi, hi_end, wi, wi_end))`` on ``size`` tiles of x every ``stride`` and blend the
    (``scale`` x larger) outputs with :func:`gaussian_weights`; the accumulator has x's dtype, the weight sum
    is float32."""
    b, c, h, w = x.shape
    out = torch.zeros(b, out_channels or c, h * scale, w * scale, dtype=x.dtype, device=x.device)
    count = torch.zeros_like(out, dtype=torch.float32)
    weights = gaussian_weights(size * scale)[None, None].to(x.device, x.dtype)
    for hi, he, wi, we in sliding_windows(h, w, size, stride):
        y = fn(x[..., hi:he, wi:we], (hi, he, wi, we))
        out[..., hi * scale:he * scale, wi * scale:we * scale] += y * weights
        count[..., hi * scale:he * scale, wi * scale:we * scale] += weights
    return out / count


# ----------------------------------------------------------------------------- colour fix


def _wavelet_blur(x: torch.Tensor, radius: int) -> torch.Tensor:
    k = torch.tensor([[1, 2, 1], [2, 4, 2], [1, 2, 1]], dtype=x.dtype, device=x.device) / 16
    c = x.shape[1]
    return F.conv2d(F.pad(x, (radius,) * 4, mode="replicate"), k.expand(c, 1, 3, 3), groups=c, dilation=radius)


def wavelet_decompose(x: torch.Tensor, levels: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    """(high, low) frequency parts with an a-trous B-spline wavelet; high + low == x."""
    high = torch.zeros_like(x)
    for i in range(levels):
        low = _wavelet_blur(x, 2 ** i)
        high = high + (x - low)
        x = low
    return high, x


def wavelet_color_fix(content: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
    """Keep ``content``'s detail, take ``style``'s colours (low frequencies)."""
    return wavelet_decompose(content)[0] + wavelet_decompose(style)[1]


# ----------------------------------------------------------------------------- restoration guidance


def sobel_weight(img01: torch.Tensor) -> torch.Tensor:
    """Region-adaptive weight W = 1 - tanh(2x2 block sum of the Sobel gradient magnitude) of an RGB image in [0, 1]."""
    gray = (img01 * torch.tensor([0.2989, 0.5870, 0.1140], device=img01.device, dtype=img01.dtype).view(1, 3, 1, 1)
            ).sum(1, keepdim=True)
    gx = torch.tensor([[1, 0, -1], [2, 0, -2], [1, 0, -1]], dtype=img01.dtype, device=img01.device)
    k = torch.stack([gx, gx.T])[:, None]
    g = F.conv2d(F.pad(gray, (1, 1, 1, 1), mode="replicate"), k)
    mag = g.pow(2).sum(1, keepdim=True).sqrt()
    block = F.avg_pool2d(mag, 2) * 4  # 2x2 block sums
    return 1 - torch.tanh(F.interpolate(block, scale_factor=2, mode="nearest"))


class RestorationGuidance:
    """The spaced sampler's ``cond_fn`` (DiffBIR v2's ``apply_cond_fn``): within ``g_stop < t + 1 < g_start``,
    ``g_repeat`` times, x0 += -d/dx0 L * 3000 g_scale / posterior_mean_coef1[index]. L is the (weighted) MSE
    against the stage-1 image: in latent space against ``VAE.encode(target).sample() * 0.18215``, drawn anew
    at every application (W averaged down to the latent grid), in RGB space through the VAE decoder."""

    def __init__(self, s: DiffBIRSettings, target01: torch.Tensor, pipe: DiffBIRPipeline, coef1: np.ndarray,
                 generator: torch.Generator | None):
        self.scale = s.g_scale * 3000
        self.start, self.stop, self.repeat = s.g_start, s.g_stop, s.g_repeat
        self.space, self.loss = s.g_space, s.g_loss
        self.pipe, self.coef1, self.generator = pipe, coef1, generator
        self.target = target01 * 2 - 1
        self.weight = sobel_weight(target01) if s.g_loss == "w_mse" else torch.ones_like(target01[:, :1])
        self.latent_weight = F.avg_pool2d(self.weight, 8)
        self.last_loss = None

    def target_latent(self) -> torch.Tensor:
        return self.pipe.vae_encode(self.target, sample=True, generator=self.generator)

    @staticmethod
    def weighted_mse(pred, target, w):
        return ((pred - target).pow(2) * w).mean((1, 2, 3)).sum()

    def __call__(self, x0: torch.Tensor, t: int, index: int) -> torch.Tensor:
        if not (self.scale > 0 and self.stop < t + 1 < self.start):
            return x0
        rescale = 1 / torch.tensor(self.coef1[index], dtype=torch.float32, device=x0.device)  # float32 buffer
        losses = []
        for _ in range(self.repeat):
            with torch.enable_grad():
                z = x0.detach().clone().requires_grad_(True)
                if self.space == "latent":
                    loss = self.weighted_mse(z, self.target_latent().detach(), self.latent_weight)
                else:
                    img = self.pipe.vae_decode(z)
                    loss = self.weighted_mse(img.float(), self.target, self.weight)
                grad = torch.autograd.grad(loss, z)[0]
            losses.append(loss.item())
            x0 = x0 + (-grad * self.scale) * rescale
        self.last_loss = float(np.mean(losses))
        return x0


# ----------------------------------------------------------------------------- stage 1


def apply_cleaner(cleaner, kind: str, lq: torch.Tensor, s: DiffBIRSettings,
                  output_size: tuple[int, int]) -> torch.Tensor:
    """The official ``apply_cleaner`` of BSRNetPipeline / SwinIRPipeline / SCUNetPipeline (kind "bsrnet" /
    "swinir" / "scunet"); ``cleaner`` None is the identity (a same-size stage 1 that does nothing)."""
    net = (lambda x: cleaner(x).float()) if cleaner is not None else (lambda x: x)  # resizes run in float32
    tiled = s.cleaner_tiled and not (lq.shape[2] < s.cleaner_tile_size or lq.shape[3] < s.cleaner_tile_size)
    scale = int(getattr(cleaner, "scale", 4)) if kind == "bsrnet" else 1  # any spandrel factor
    if kind == "swinir" and tiled and s.cleaner_tile_size % 64:
        from ...errors import TaskError

        raise TaskError("SwinIR (cleaner) tile size must be a multiple of 64")
    if kind == "swinir" and not tiled:
        if min(lq.shape[2:]) < 512:
            lq = resize_short_edge_to(lq, 512)
        h0, w0 = lq.shape[2:]
        return net(pad_to_multiple(lq, 64))[:, :, :h0, :w0]
    if tiled:
        out = tiled_call(lambda t, _: net(t), lq, s.cleaner_tile_size, s.cleaner_tile_stride, scale)
    else:
        out = net(lq)
    if kind == "bsrnet":
        if min(output_size) < 512:
            return resize_short_edge_to(out, 512)
        return F.interpolate(out, size=output_size, mode="bicubic", antialias=True)
    if min(out.shape[2:]) < 512:
        out = resize_short_edge_to(out, 512)
    return out


# ----------------------------------------------------------------------------- the pipeline


class DiffBIRPipeline:
    """UNet + IRControlNet + VAE + prompt encoder; :meth:`run` is the official ``Pipeline.run``."""

    def __init__(self, unet, controlnet, vae, encode_prompt, device=None, dtype: torch.dtype = torch.float32):
        self.unet, self.controlnet, self.vae = unet, controlnet, vae
        self.encode_prompt = encode_prompt  # list[str] -> (N, 77, D)
        self.device = torch.device(device or "cpu")
        self.dtype = dtype
        self.scaling = LATENT_SCALE

    # -- VAE ----------------------------------------------------------------------------
    def vae_encode(self, img: torch.Tensor, sample: bool, generator=None, tiled: bool = False, tile_size: int = 256):
        """``VAE.encode(img).sample()`` (drawn from ``generator``) or ``.mode()``, times 0.18215; ``tiled``: the
        encoder runs on tiles of ``tile_size`` pixels with shared GroupNorm statistics (:mod:`.tiled_vae`)."""
        from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

        from .tiled_vae import tiled_encode_moments

        x = img.to(self.vae.dtype)
        dist = DiagonalGaussianDistribution(tiled_encode_moments(self.vae, x, tile_size)) if tiled \
            else self.vae.encode(x).latent_dist
        if sample:
            from ...samplers import randn

            noise = randn(tuple(dist.mean.shape), generator, device=dist.mean.device if generator is None else None)
            z = dist.mean + dist.std * noise.to(dist.mean.device, dist.mean.dtype)
        else:
            z = dist.mode()
        return z * self.scaling

    def vae_decode(self, z: torch.Tensor, tiled: bool = False, tile_size: int = 32) -> torch.Tensor:
        """``VAE.decode(z / 0.18215)``; ``tiled``: the decoder runs on tiles of ``tile_size`` latent pixels with
        shared GroupNorm statistics (:mod:`.tiled_vae`)."""
        z = (z / self.scaling).to(self.vae.dtype)
        if tiled:
            from .tiled_vae import tiled_decode

            return tiled_decode(self.vae, z, tile_size)
        return self.vae.decode(z).sample

    # -- the model --------------------------------------------------------------------------
    def control_forward(self, x, t, cond: dict, strength: float) -> torch.Tensor:
        """ControlLDM.forward: IRControlNet residuals (times ``strength``) into the UNet."""
        dt = self.unet.dtype
        text, c = cond["c_txt"].to(dt), cond["c_img"].to(dt)
        down, mid = self.controlnet(x.to(dt), t, text, c, conditioning_scale=strength, return_dict=False)
        out = self.unet(x.to(dt), t, encoder_hidden_states=text, down_block_additional_residuals=down,
                        mid_block_additional_residual=mid).sample
        return out.to(x.dtype)

    def make_model_fn(self, s: DiffBIRSettings, tiled: bool):
        def model_fn(x, t, cond):
            if not tiled:
                return self.control_forward(x, t, cond, s.strength)

            def tile_fn(xt, box):
                hi, he, wi, we = box
                return self.control_forward(xt, t, {"c_txt": cond["c_txt"], "c_img": cond["c_img"][..., hi:he, wi:we]},
                                            s.strength)

            return tiled_call(tile_fn, x, s.cldm_tile_size // 8, s.cldm_tile_stride // 8)
        return model_fn

    # -- stage 2 ------------------------------------------------------------------------------
    def apply_cldm(self, cond_img: torch.Tensor, s: DiffBIRSettings, generator: torch.Generator, progress=None,
                   pos_prompt: str | None = None) -> torch.Tensor:
        """Stage 2 on the stage-1 image (b,3,h,w) in [0,1]; returns the decoded image in [-1, 1] (unclamped)."""
        from ...errors import TaskError
        from ...samplers import SpacedSchedule, randn, sample

        bs, _, h0, w0 = cond_img.shape
        if not s.vae_encoder_tiled and not s.cldm_tiled:
            cond_img = pad_to_multiple(cond_img, 64)
        else:
            cond_img = pad_to_multiple(cond_img, 8)
        enc_tiled = s.vae_encoder_tiled and not (cond_img.shape[2] < s.vae_encoder_tile_size
                                                 or cond_img.shape[3] < s.vae_encoder_tile_size)
        if enc_tiled and (s.vae_encoder_tile_size % 8 or s.vae_encoder_tile_size < 8):
            raise TaskError("VAE encoder tile size must be a positive multiple of 8")
        pos = s.pos_prompt if pos_prompt is None else pos_prompt
        prompts = list(pos) if isinstance(pos, (list, tuple)) else [pos] * bs  # a list: one prompt per image
        c_img = self.vae_encode(cond_img * 2 - 1, sample=False, tiled=enc_tiled, tile_size=s.vae_encoder_tile_size)
        cond = {"c_txt": self.encode_prompt(prompts), "c_img": c_img}
        uncond = {"c_txt": self.encode_prompt([s.neg_prompt] * bs), "c_img": c_img}
        h1, w1 = c_img.shape[2:]
        cldm_tiled = s.cldm_tiled and not (h1 < s.cldm_tile_size // 8 or w1 < s.cldm_tile_size // 8)
        if not cldm_tiled:
            cond["c_img"] = uncond["c_img"] = pad_to_multiple(c_img, 8)
        elif s.cldm_tile_size % 64:
            raise TaskError("Diffusion tile size must be a multiple of 64")
        h2, w2 = cond["c_img"].shape[2:]
        betas, param = diffusion_schedule(s.version)
        T = len(betas) - 1
        if s.start_point_type == "cond":
            x0 = cond["c_img"]
            x_T = q_sample(x0, T, randn(tuple(x0.shape), generator).to(x0.device), betas)
        elif s.start_point_type == "low_freq":  # v2 --better_start: the [0, 1] low band, VAE-sampled
            low = wavelet_decompose(cond_img)[1]
            x0 = self.vae_encode(low, sample=True, generator=generator, tiled=enc_tiled,
                                 tile_size=s.vae_encoder_tile_size).float()
            x_T = q_sample(x0, T, randn(tuple(x0.shape), generator).to(x0.device), betas)
        else:
            x_T = randn((bs, 4, h2, w2), generator).to(self.device)
        if s.noise_aug > 0:
            c = cond["c_img"]
            c = q_sample(c, int(s.noise_aug), randn(tuple(c.shape), generator).to(c.device), betas)
            cond["c_img"], uncond["c_img"] = c, c.detach().clone()
        cond_fn = None
        if s.guidance and s.g_scale > 0:
            if s.sampler != "spaced":
                raise TaskError(f"restoration guidance (g_scale > 0) is applied by the 'spaced' sampler only, "
                                f"not {s.sampler!r}")
            coef1 = SpacedSchedule.from_betas(betas, s.steps).posterior_mean_coef1
            cond_fn = RestorationGuidance(s, cond_img, self, coef1, generator)
        z = sample(s.sampler, self.make_model_fn(s, cldm_tiled), x_T, (bs, 4, h2, w2), steps=s.steps, betas=betas,
                   parameterization=param, cond=cond, uncond=uncond, cfg_scale=s.cfg_scale,
                   rescale_cfg=s.rescale_cfg, generator=generator, s_churn=s.s_churn, s_tmin=s.s_tmin,
                   s_tmax=s.s_tmax, s_noise=s.s_noise, eta=s.eta, order=s.order, cond_fn=cond_fn,
                   progress=progress)
        self.last_guidance = cond_fn
        z = z[..., :h1, :w1]
        dec_tiled = s.vae_decoder_tiled and not (h1 < s.vae_decoder_tile_size // 8 or w1 < s.vae_decoder_tile_size // 8)
        if dec_tiled and s.vae_decoder_tile_size < 8:
            raise TaskError("VAE decoder tile size must be at least 8")
        x = self.vae_decode(z, tiled=dec_tiled, tile_size=s.vae_decoder_tile_size // 8)
        return x[:, :, :h0, :w0]

    @torch.no_grad()
    def run(self, lq: torch.Tensor, s: DiffBIRSettings, cleaner=None, kind: str = "swinir", upscale: float = 1.0,
            generator: torch.Generator | None = None, progress=None, pos_prompt: str | None = None,
            pre_resized: bool = False) -> torch.Tensor:
        """One batch through both stages: LQ (b,3,h,w) in [0,1] -> restored image in [0,1] on the 8-bit grid
        (``floor(255 x) / 255`` of the official float result)."""
        lq = lq.to(self.device, torch.float32).clamp(0, 1)
        if kind != "bsrnet" and not pre_resized:
            lq = pil_bicubic_resize(lq, upscale)
        h, w = lq.shape[-2:]
        output_size = (int(h * upscale), int(w * upscale)) if kind == "bsrnet" else (h, w)
        with self.autocast():
            cond_img = apply_cleaner(cleaner, kind, lq, s, output_size)
            x = self.apply_cldm(cond_img, s, generator, progress, pos_prompt)
        x = (x.float() + 1) / 2  # colour fix and resize in float32 (upstream: in the autocast dtype)
        if s.color_fix == "wavelet":
            x = wavelet_color_fix(x, cond_img.float())
        x = F.interpolate(x, size=output_size, mode="bicubic", antialias=True)
        return (x * 255).clamp(0, 255).to(torch.uint8).float() / 255

    def autocast(self):
        """``torch.autocast(device, dtype)`` around the whole pipeline for fp16 / bf16, as the official loop."""
        import contextlib

        if self.dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)
