"""DiffBIR stage 2 on diffusers: IRControlNet-guided Stable Diffusion sampling.

* Condition: ``c = VAE.encode(2 * stage1 - 1).mode() * 0.18215`` (image padded to a multiple of 64).
* Schedule: diffusers ``DDPMScheduler`` with SD's betas (scaled_linear 0.00085..0.012, 1000 steps) and
  ``linspace`` spacing -- the timesteps of DiffBIR's spaced sampler -- epsilon prediction for v1/v2;
  v2.1 uses zero-terminal-SNR rescaled betas and v-prediction. The DDPM posterior step is written out
  here (and checked against ``DDPMScheduler.step``) because restoration guidance edits x0 inside it.
* Classifier-free guidance with the official prompts; control scale ``strength`` on all 13 residuals.
* Restoration guidance (DiffBIR paper, Sec. 3.3): within ``stop < t+1 < start``, x0 moves along
  ``-d/dx0 L`` scaled by ``3000 * scale / posterior_mean_coef1``, ``repeat`` times, where ``L`` is the
  MSE or the region-adaptive weighted MSE ``mean(W (D(x0) - target)^2)`` with
  ``W = 1 - tanh(2x2 block sums of the Sobel magnitude of the stage-1 image)``; in RGB space the
  gradient goes through the VAE decoder, in latent space ``W`` is averaged down to the latent grid.
* Tiling: latent tiles with Gaussian blending for the diffusion model, diffusers' tiled VAE, and
  overlapping stage-1 tiles, so large images need bounded memory.
* Wavelet colour fix: the result keeps its high frequencies and takes the stage-1 image's low ones.
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


@dataclass
class DiffBIRSettings:
    version: str = "v2"  # "v1" | "v2" | "v2.1"
    steps: int = 50
    cfg_scale: float = 4.0
    pos_prompt: str = ""
    neg_prompt: str = V2_NEG_PROMPT
    strength: float = 1.0
    start_point: str = "noise"  # "noise" | "cond" (v2.1: noised condition latent) | "low_freq" (v2's --better_start)
    guidance_scale: float = 0.0  # 0 = off (official default)
    guidance_loss: str = "w_mse"  # "mse" | "w_mse"
    guidance_space: str = "latent"  # "latent" | "rgb"
    guidance_start: int = 1001
    guidance_stop: int = -1
    guidance_repeat: int = 1
    color_fix: str = "wavelet"  # "wavelet" | "none"
    tiled: bool = False
    tile_size: int = 512  # pixels (diffusion tiles are tile_size // 8 latents)
    tile_stride: int = 256
    vae_tile_size: int = 256
    stage1_tile_size: int = 512
    stage1_tile_stride: int = 256

    @classmethod
    def for_version(cls, version: str, **kw) -> "DiffBIRSettings":
        if version == "v2.1":
            base = dict(version="v2.1", cfg_scale=6.0, pos_prompt=V21_POS_PROMPT, neg_prompt=V21_NEG_PROMPT)
        elif version in ("v1", "v2"):
            base = dict(version=version)
        else:
            raise ValueError(f"unknown DiffBIR version {version!r}")
        base.update({k: v for k, v in kw.items() if v is not None})
        return cls(**base)

    def to_dict(self) -> dict:
        return asdict(self)


def make_scheduler(version: str):
    from diffusers import DDPMScheduler

    v21 = version == "v2.1"
    return DDPMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                         prediction_type="v_prediction" if v21 else "epsilon", rescale_betas_zero_snr=v21,
                         timestep_spacing="linspace", clip_sample=False, variance_type="fixed_small")


# ----------------------------------------------------------------------------- guidance


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
    def __init__(self, settings: DiffBIRSettings, target01: torch.Tensor, vae, scaling: float,
                 generator: torch.Generator | None):
        s = settings
        self.scale = s.guidance_scale * 3000
        self.start, self.stop, self.repeat = s.guidance_start, s.guidance_stop, s.guidance_repeat
        self.space, self.loss = s.guidance_space, s.guidance_loss
        self.vae, self.scaling = vae, scaling
        self.target = target01 * 2 - 1
        self.weight = sobel_weight(target01) if s.guidance_loss == "w_mse" else torch.ones_like(target01[:, :1])
        if self.space == "latent":
            with torch.no_grad():
                dist = vae.encode(self.target.to(vae.dtype)).latent_dist
                self.target_latent = dist.sample(generator=generator).float() * scaling
            self.latent_weight = F.avg_pool2d(self.weight, 8)
        self.last_loss = None

    def active(self, t: int) -> bool:
        return self.scale > 0 and self.stop < t + 1 < self.start

    def weighted_mse(self, pred, target, w):
        return ((pred - target).pow(2) * w).mean((1, 2, 3)).sum()

    def __call__(self, x0: torch.Tensor, coef1: float) -> torch.Tensor:
        losses = []
        for _ in range(self.repeat):
            with torch.enable_grad():
                z = x0.detach().clone().requires_grad_(True)
                if self.space == "latent":
                    loss = self.weighted_mse(z, self.target_latent, self.latent_weight)
                else:
                    img = self.vae.decode((z / self.scaling).to(self.vae.dtype)).sample.float()
                    loss = self.weighted_mse(img, self.target, self.weight)
                grad = torch.autograd.grad(loss, z)[0]
            losses.append(loss.item())
            x0 = x0 - grad * self.scale / coef1
        self.last_loss = float(np.mean(losses))
        return x0


# ----------------------------------------------------------------------------- tiling


def sliding_windows(h: int, w: int, tile: int, stride: int) -> list[tuple[int, int, int, int]]:
    """Tiles covering an h x w grid; the last row/column is shifted in to end at the border."""
    tile_h, tile_w = min(tile, h), min(tile, w)
    his = list(range(0, h - tile_h + 1, stride))
    if his[-1] != h - tile_h:
        his.append(h - tile_h)
    wis = list(range(0, w - tile_w + 1, stride))
    if wis[-1] != w - tile_w:
        wis.append(w - tile_w)
    return [(a, a + tile_h, b, b + tile_w) for a in his for b in wis]


def gaussian_weights(h: int, w: int, var: float = 0.01) -> torch.Tensor:
    """Tile blending weights (a Gaussian over the tile, variance ``var`` in tile-size units)."""
    ys = torch.exp(-((torch.arange(h) - (h - 1) / 2) / h) ** 2 / (2 * var))
    xs = torch.exp(-((torch.arange(w) - (w - 1) / 2) / w) ** 2 / (2 * var))
    return ys[:, None] * xs[None]


def tiled_apply(fn, x: torch.Tensor, tile: int, stride: int, sf: int = 1, extra: tuple = ()) -> torch.Tensor:
    """Run ``fn(x_tile, *extra_tiles)`` on overlapping tiles and blend the outputs with Gaussian weights.

    ``extra`` tensors share x's grid and are tiled the same way; ``sf`` is fn's upscaling factor.
    """
    h, w = x.shape[-2:]
    out = weight = None
    for hi, he, wi, we in sliding_windows(h, w, tile, stride):
        y = fn(x[..., hi:he, wi:we], *(e[..., hi:he, wi:we] for e in extra))
        if out is None:
            out = torch.zeros(*y.shape[:-2], h * sf, w * sf, dtype=y.dtype, device=y.device)
            weight = torch.zeros(h * sf, w * sf, dtype=y.dtype, device=y.device)
        g = gaussian_weights(y.shape[-2], y.shape[-1]).to(y)
        out[..., hi * sf:he * sf, wi * sf:we * sf] += y * g
        weight[hi * sf:he * sf, wi * sf:we * sf] += g
    return out / weight


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


# ----------------------------------------------------------------------------- the pipeline


class DiffBIRPipeline:
    def __init__(self, unet, controlnet, vae, encode_prompt, stage1=None, stage1_sf: int = 4, device=None):
        self.unet, self.controlnet, self.vae = unet, controlnet, vae
        self.encode_prompt = encode_prompt  # list[str] -> (N, 77, D)
        self.stage1, self.stage1_sf = stage1, stage1_sf
        self.device = torch.device(device or "cpu")
        self.scaling = float(getattr(vae.config, "scaling_factor", 0.18215))

    # -- pieces -------------------------------------------------------------------------
    def run_stage1(self, lq: torch.Tensor, s: DiffBIRSettings, out_size: tuple[int, int]) -> torch.Tensor:
        """BSRNet-like models (stage1_sf > 1) upscale the LQ image themselves; same-size models (SwinIR,
        SCUNet in DiffBIR) get it bicubic-resized to the output size first."""
        if self.stage1_sf == 1 and tuple(lq.shape[-2:]) != tuple(out_size):
            lq = F.interpolate(lq, size=out_size, mode="bicubic", antialias=True, align_corners=False).clamp(0, 1)
        if self.stage1 is None:
            clean = lq
        elif s.tiled and max(lq.shape[-2:]) > s.stage1_tile_size:
            clean = tiled_apply(self.stage1, lq, s.stage1_tile_size, s.stage1_tile_stride, self.stage1_sf)
        else:
            clean = self.stage1(lq)
        if tuple(clean.shape[-2:]) != tuple(out_size):
            clean = F.interpolate(clean, size=out_size, mode="bicubic", antialias=True, align_corners=False)
        return clean.clamp(0, 1)

    def _vae_tiling(self, on: bool, tile: int):
        if on and hasattr(self.vae, "enable_tiling"):
            self.vae.enable_tiling()
            self.vae.tile_sample_min_size = tile
            self.vae.tile_latent_min_size = tile // 8
        elif hasattr(self.vae, "disable_tiling"):
            self.vae.disable_tiling()

    def encode(self, img01: torch.Tensor) -> torch.Tensor:
        return self.vae.encode((img01 * 2 - 1).to(self.vae.dtype)).latent_dist.mode().float() * self.scaling

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return ((self.vae.decode((z / self.scaling).to(self.vae.dtype)).sample.float() + 1) / 2)

    def model_output(self, x, t, text, cond, strength):
        down, mid = self.controlnet(x, t, text, cond, conditioning_scale=strength, return_dict=False)
        return self.unet(x, t, encoder_hidden_states=text, down_block_additional_residuals=down,
                         mid_block_additional_residual=mid).sample

    def guided_output(self, x, t, s: DiffBIRSettings, texts, cond):
        if s.cfg_scale == 1.0 or texts[1] is None:
            return self.model_output(x, t, texts[0], cond, s.strength)
        c = self.model_output(x, t, texts[0], cond, s.strength)
        u = self.model_output(x, t, texts[1], cond, s.strength)
        return u + s.cfg_scale * (c - u)

    # -- sampling -----------------------------------------------------------------------
    @torch.no_grad()
    def sample(self, clean: torch.Tensor, s: DiffBIRSettings, generator: torch.Generator, progress=None,
               guidance: RestorationGuidance | None = None) -> torch.Tensor:
        """Stage 2 on a stage-1 image in [0, 1] (size a multiple of 64); returns the latent."""
        sched = make_scheduler(s.version)
        sched.set_timesteps(s.steps)
        ac = sched.alphas_cumprod.double()
        v_pred = sched.config.prediction_type == "v_prediction"
        self._vae_tiling(s.tiled, s.vae_tile_size)
        cond = self.encode(clean)
        texts = (self.encode_prompt([s.pos_prompt] * clean.shape[0]),
                 self.encode_prompt([s.neg_prompt] * clean.shape[0]) if s.cfg_scale != 1.0 else None)
        shape = cond.shape

        def randn():
            return torch.randn(shape, generator=generator, dtype=torch.float32).to(self.device)

        if s.start_point in ("cond", "low_freq"):
            if s.start_point == "cond":
                x0 = cond
            else:  # VAE sample of the stage-1 image's low-frequency band
                low = wavelet_decompose(clean)[1]
                x0 = self.vae.encode((low * 2 - 1).to(self.vae.dtype)).latent_dist.sample(generator=generator)
                x0 = x0.float().to(self.device) * self.scaling
            x = ac[-1].sqrt().item() * x0 + (1 - ac[-1]).sqrt().item() * randn()
        elif s.start_point == "noise":
            x = randn()
        else:
            raise ValueError(f"unknown start_point {s.start_point!r}; use noise, cond or low_freq")
        ts = [int(t) for t in sched.timesteps]
        for i, t in enumerate(ts):
            prev = ts[i + 1] if i + 1 < len(ts) else -1
            tt = torch.full((x.shape[0],), t, device=self.device, dtype=torch.long)
            if s.tiled and max(x.shape[-2:]) > s.tile_size // 8:
                out = tiled_apply(lambda xt, ct: self.guided_output(xt, tt, s, texts, ct), x, s.tile_size // 8,
                                  s.tile_stride // 8, extra=(cond,))
            else:
                out = self.guided_output(x, tt, s, texts, cond)
            x = self.ddpm_step(out, t, prev, x, ac, v_pred, randn, guidance)
            if progress is not None:
                progress(i, len(ts), t)
        return x

    @staticmethod
    def ddpm_step(out, t: int, prev: int, x, ac, v_pred: bool, randn, guidance=None):
        """One DDPM posterior step from t to prev (prev = -1: the last step, no noise)."""
        ab_t = ac[t].item()
        ab_prev = ac[prev].item() if prev >= 0 else 1.0
        beta = 1 - ab_t / ab_prev
        if v_pred:
            x0 = math.sqrt(ab_t) * x - math.sqrt(1 - ab_t) * out
        else:
            x0 = (x - math.sqrt(1 - ab_t) * out) / math.sqrt(ab_t)
        coef1 = beta * math.sqrt(ab_prev) / (1 - ab_t)
        coef2 = (1 - ab_prev) * math.sqrt(1 - beta) / (1 - ab_t)
        if guidance is not None and guidance.active(t):
            x0 = guidance(x0, coef1)
        mean = coef1 * x0 + coef2 * x
        if prev < 0:
            return mean
        var = max((1 - ab_prev) / (1 - ab_t) * beta, 1e-20)
        return mean + math.sqrt(var) * randn()

    @torch.no_grad()
    def __call__(self, lq: torch.Tensor, out_size: tuple[int, int], s: DiffBIRSettings, seed: int = 0,
                 progress=None) -> torch.Tensor:
        gen = torch.Generator().manual_seed(seed)
        clean = self.run_stage1(lq.to(self.device), s, out_size)
        h, w = clean.shape[-2:]
        ph, pw = (-h) % 64, (-w) % 64
        padded = F.pad(clean, (0, pw, 0, ph))  # zeros, as DiffBIR
        guidance = None
        if s.guidance_scale > 0:
            self._vae_tiling(s.tiled, s.vae_tile_size)
            guidance = RestorationGuidance(s, padded, self.vae, self.scaling, gen)
        z = self.sample(padded, s, gen, progress, guidance)
        x = self.decode(z)[..., :h, :w].clamp(0, 1)
        if s.color_fix == "wavelet":
            x = wavelet_color_fix(x, clean)
        return x.clamp(0, 1)
