"""Real-ESRGAN-style second-order degradation for training blind restorers (DiffIR RealSR).

Two rounds of [blur -> random resize -> Gaussian/Poisson noise -> JPEG],
then a resize to the target low resolution with an optional sinc filter and
a last JPEG, in random order (Wang et al., 2021). Parameter ranges default to
the Real-ESRGAN / DiffIR-RealSR training options. The kernels (isotropic /
anisotropic / generalised / plateau Gaussians, 2-D sinc) and the pipeline are
written here; JPEG uses Pillow's encoder.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass

import numpy as np
import scipy.special
import torch
import torch.nn.functional as F
from PIL import Image


@dataclass
class SecondOrderConfig:
    kernel_range: tuple = (7, 21)
    kernel_list: tuple = ("iso", "aniso", "generalized_iso", "generalized_aniso", "plateau_iso", "plateau_aniso")
    kernel_prob: tuple = (0.45, 0.25, 0.12, 0.03, 0.12, 0.03)
    sinc_prob: float = 0.1
    blur_sigma: tuple = (0.2, 3.0)
    betag_range: tuple = (0.5, 4.0)
    betap_range: tuple = (1.0, 2.0)
    resize_prob: tuple = (0.2, 0.7, 0.1)  # up, down, keep
    resize_range: tuple = (0.15, 1.5)
    gaussian_noise_prob: float = 0.5
    noise_range: tuple = (1.0, 30.0)  # /255
    poisson_scale_range: tuple = (0.05, 3.0)
    gray_noise_prob: float = 0.4
    jpeg_range: tuple = (30, 95)
    second_blur_prob: float = 0.8
    sinc_prob2: float = 0.1
    blur_sigma2: tuple = (0.2, 1.5)
    resize_prob2: tuple = (0.3, 0.4, 0.3)
    resize_range2: tuple = (0.3, 1.2)
    gaussian_noise_prob2: float = 0.5
    noise_range2: tuple = (1.0, 25.0)
    poisson_scale_range2: tuple = (0.05, 2.5)
    gray_noise_prob2: float = 0.4
    jpeg_range2: tuple = (30, 95)
    final_sinc_prob: float = 0.8


def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    r = np.arange(size) - size // 2
    return np.meshgrid(r, r, indexing="xy")


def _sigma_matrix(sx: float, sy: float, theta: float) -> np.ndarray:
    rot = np.array([[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]])
    return rot @ np.diag([sx ** 2, sy ** 2]) @ rot.T


def anisotropic_kernel(size: int, sx: float, sy: float, theta: float, kind: str = "gaussian",
                       beta: float = 2.0) -> np.ndarray:
    """Gaussian / generalised Gaussian (exp(-0.5 d^beta)) / plateau (1 / (1 + d^beta)) kernel.

    ``d`` is the Mahalanobis distance under covariance ``R diag(sx^2, sy^2) R^T``.
    """
    xx, yy = _grid(size)
    inv = np.linalg.inv(_sigma_matrix(sx, sy, theta))
    d2 = inv[0, 0] * xx ** 2 + 2 * inv[0, 1] * xx * yy + inv[1, 1] * yy ** 2
    if kind == "gaussian":
        k = np.exp(-0.5 * d2)
    elif kind == "generalized":
        k = np.exp(-0.5 * np.power(d2, beta / 2))
    elif kind == "plateau":
        k = 1.0 / (1.0 + np.power(d2, beta / 2))
    else:
        raise ValueError(kind)
    return k / k.sum()


def sinc_kernel(size: int, cutoff: float) -> np.ndarray:
    """Circular low-pass (2-D sinc / Airy) kernel with angular cutoff in (0, pi]."""
    xx, yy = _grid(size)
    r = np.sqrt(xx ** 2 + yy ** 2)
    with np.errstate(divide="ignore", invalid="ignore"):
        k = cutoff * scipy.special.j1(cutoff * r) / (2 * np.pi * r)
    k[size // 2, size // 2] = cutoff ** 2 / (4 * np.pi)
    return k / k.sum()


def random_blur_kernel(rng: np.random.Generator, cfg: SecondOrderConfig, sigma_range, sinc_prob) -> np.ndarray:
    size = int(rng.choice(np.arange(cfg.kernel_range[0], cfg.kernel_range[1] + 1, 2)))
    if rng.random() < sinc_prob:
        cutoff = rng.uniform(np.pi / 3, np.pi) if size < 13 else rng.uniform(np.pi / 5, np.pi)
        return sinc_kernel(size, cutoff)
    kind = rng.choice(cfg.kernel_list, p=np.array(cfg.kernel_prob) / np.sum(cfg.kernel_prob))
    sx = rng.uniform(*sigma_range)
    if kind.endswith("iso") and not kind.endswith("aniso"):
        sy, theta = sx, 0.0
    else:
        sy, theta = rng.uniform(*sigma_range), rng.uniform(-np.pi, np.pi)
    if kind.startswith("generalized"):
        beta = rng.uniform(cfg.betag_range[0], 1) if rng.random() < 0.5 else rng.uniform(1, cfg.betag_range[1])
        return anisotropic_kernel(size, sx, sy, theta, "generalized", beta)
    if kind.startswith("plateau"):
        beta = rng.uniform(cfg.betap_range[0], 1) if rng.random() < 0.5 else rng.uniform(1, cfg.betap_range[1])
        return anisotropic_kernel(size, sx, sy, theta, "plateau", beta)
    return anisotropic_kernel(size, sx, sy, theta, "gaussian")


def _filter(x: torch.Tensor, k: np.ndarray) -> torch.Tensor:
    kt = torch.from_numpy(k).to(x)[None, None].repeat(x.shape[1], 1, 1, 1)
    p = k.shape[0] // 2
    mode = "reflect" if p < min(x.shape[-2:]) else "replicate"
    return F.conv2d(F.pad(x, (p, p, p, p), mode=mode), kt, groups=x.shape[1])


def _noise(x, rng, g, gprob, grange, pscale, grayprob):
    gray = rng.random() < grayprob
    if rng.random() < gprob:
        sigma = rng.uniform(*grange) / 255.0
        shape = (x.shape[0], 1, *x.shape[-2:]) if gray else x.shape
        n = torch.randn(shape, generator=g).to(x) * sigma
        return x + n
    scale = rng.uniform(*pscale)
    src = x.clamp(0, 1)
    if gray:
        src = (0.299 * src[:, :1] + 0.587 * src[:, 1:2] + 0.114 * src[:, 2:3])
    vals = 255.0  # photon-count scale of an 8-bit image
    noisy = torch.poisson(src * vals, generator=g) / vals
    return x + (noisy - src) * scale


def jpeg(x: torch.Tensor, quality: int) -> torch.Tensor:
    """JPEG round trip through Pillow (per image)."""
    out = []
    for im in x.clamp(0, 1):
        arr = (im.permute(1, 2, 0).cpu().numpy() * 255).round().astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, format="JPEG", quality=int(quality))
        dec = np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB")).astype(np.float32) / 255
        out.append(torch.from_numpy(dec).permute(2, 0, 1))
    return torch.stack(out).to(x)


def _resize(x, rng, probs, rng_range):
    kind = rng.choice(["up", "down", "keep"], p=probs)
    scale = rng.uniform(1, rng_range[1]) if kind == "up" else rng.uniform(rng_range[0], 1) if kind == "down" else 1.0
    mode = rng.choice(["area", "bilinear", "bicubic"])
    h, w = max(1, int(x.shape[-2] * scale)), max(1, int(x.shape[-1] * scale))
    kw = {} if mode == "area" else {"align_corners": False}
    return F.interpolate(x, size=(h, w), mode=mode, **kw)


def second_order_degrade(gt: torch.Tensor, sf: int = 4, seed: int | None = None,
                         cfg: SecondOrderConfig | None = None) -> torch.Tensor:
    """Degrade clean images ``gt`` (N,3,H,W in [0,1]) to LR images of size (H/sf, W/sf)."""
    cfg = cfg or SecondOrderConfig()
    rng = np.random.default_rng(seed)
    g = torch.Generator().manual_seed(int(rng.integers(2 ** 31)))
    h, w = gt.shape[-2:]
    x = _filter(gt, random_blur_kernel(rng, cfg, cfg.blur_sigma, cfg.sinc_prob))
    x = _resize(x, rng, cfg.resize_prob, cfg.resize_range)
    x = _noise(x, rng, g, cfg.gaussian_noise_prob, cfg.noise_range, cfg.poisson_scale_range, cfg.gray_noise_prob)
    x = jpeg(x, rng.integers(cfg.jpeg_range[0], cfg.jpeg_range[1] + 1))
    if rng.random() < cfg.second_blur_prob:
        x = _filter(x, random_blur_kernel(rng, cfg, cfg.blur_sigma2, cfg.sinc_prob2))
    x = _resize(x, rng, cfg.resize_prob2, (cfg.resize_range2[0] * sf / 4 if sf > 1 else cfg.resize_range2[0],
                                           cfg.resize_range2[1]))
    x = _noise(x, rng, g, cfg.gaussian_noise_prob2, cfg.noise_range2, cfg.poisson_scale_range2, cfg.gray_noise_prob2)
    size = (h // sf, w // sf)
    if rng.random() < cfg.final_sinc_prob:
        sinc = sinc_kernel(int(rng.choice(np.arange(cfg.kernel_range[0], cfg.kernel_range[1] + 1, 2))),
                           rng.uniform(np.pi / 3, np.pi))
    else:
        sinc = np.zeros((1, 1)) + 1.0
    mode = rng.choice(["area", "bilinear", "bicubic"])
    kw = {} if mode == "area" else {"align_corners": False}
    q = rng.integers(cfg.jpeg_range2[0], cfg.jpeg_range2[1] + 1)
    if rng.random() < 0.5:
        x = _filter(F.interpolate(x, size=size, mode=mode, **kw), sinc)
        x = jpeg(x, q)
    else:
        x = jpeg(x, q)
        x = _filter(F.interpolate(x, size=size, mode=mode, **kw), sinc)
    return x.clamp(0, 1)
