"""Blur kernels and the circular blur (+ s-fold decimation) operators.

The closed-form data solution is the FFT solver used by USRNet / DiffPIR:
with ``B`` a circular convolution and ``S`` the s-fold decimation that keeps
the upper-left pixel of every s x s block,

    x = (B^T S^T S B + rho I)^{-1} (B^T S^T y + rho z)

is evaluated with the Woodbury identity, because ``S B B^T S^T`` is diagonal
in the low-resolution Fourier domain (the average of the s^2 aliased copies
of ``|F(B)|^2``).
"""

from __future__ import annotations

import math

import numpy as np
import scipy.ndimage
import torch
import torch.nn.functional as F

from ..errors import check_api_number
from .base import LinearOperator, OperatorError, as_rho, check_scale_factor

# ----------------------------------------------------------------------------
# kernels
# ----------------------------------------------------------------------------


def _normalise(k: np.ndarray) -> torch.Tensor:
    k = np.asarray(k, dtype=np.float64)
    s = k.sum()
    if not np.isfinite(s) or s <= 0:
        raise OperatorError("blur kernel must have a positive sum")
    return torch.from_numpy(k / s).float()


def gaussian_kernel(size: int = 61, std: float = 3.0) -> torch.Tensor:
    """Isotropic Gaussian kernel as DiffPIR builds it.

    DiffPIR filters a centred delta with ``scipy.ndimage.gaussian_filter``
    (reflect boundary, truncate 4), which folds the tails of wide Gaussians
    back into the window instead of cutting them; we do the same.
    """
    size = check_api_number(size, "kernel size", lo=1, integer=True, error=OperatorError)
    if size % 2 == 0:
        raise OperatorError(f"kernel size must be a positive odd number, got {size}")
    check_api_number(std, "kernel std", lo=0, lo_open=True, error=OperatorError)
    delta = np.zeros((size, size))
    delta[size // 2, size // 2] = 1.0
    return _normalise(scipy.ndimage.gaussian_filter(delta, sigma=std))


def diffpir_gaussian_std(rng: np.random.Generator | int | None = None, base: float = 3.0) -> float:
    """Random Gaussian-blur width of the DiffPIR benchmark: ``base * (1 + 2U)``, U ~ U[0, 1)."""
    rng = np.random.default_rng(rng)
    return float(base * abs(rng.random() * 2 + 1))


def motion_kernel(size: int = 61, intensity: float = 0.5, rng: np.random.Generator | int | None = None,
                  n_points: int = 96) -> torch.Tensor:
    """Random camera-shake kernel from a simulated 2-D trajectory.

    The camera path is a random walk with momentum: ``n_points`` steps whose
    heading drifts with Gaussian increments and occasionally jerks. ``intensity``
    in [0, 1] controls both how long the path is and how much it turns:
    0 gives a short straight streak, 1 a long, curly shake. The path is centred,
    fitted inside the window, rasterised with bilinear splatting along densely
    resampled points, smoothed slightly (sub-pixel exposure) and normalised.
    """
    check_api_number(intensity, "motion intensity", lo=0, hi=1, error=OperatorError)
    size = check_api_number(size, "kernel size", lo=3, integer=True, error=OperatorError)
    if size % 2 == 0:
        raise OperatorError(f"kernel size must be an odd number >= 3, got {size}")
    rng = np.random.default_rng(rng)
    usable = size - 4  # keep a margin for the smoothing
    length = usable * (0.2 + 0.8 * intensity) * rng.uniform(0.5, 1.0) + 1.0
    turn_std = 0.05 + intensity * 0.6  # radians per step
    jerk_prob = 0.02 + 0.1 * intensity
    heading = rng.uniform(0, 2 * np.pi)
    speed = rng.gamma(4.0, 0.25, size=n_points)  # mean 1, positive
    pts = np.zeros((n_points + 1, 2))
    for i in range(n_points):
        heading += rng.normal(0, turn_std)
        if rng.random() < jerk_prob:
            heading += rng.choice([-1, 1]) * rng.uniform(np.pi / 3, np.pi)
        pts[i + 1] = pts[i] + speed[i] * np.array([np.cos(heading), np.sin(heading)])
    # scale to the target path length, centre on the centroid, fit in the window
    seg = np.linalg.norm(np.diff(pts, axis=0), axis=1)
    pts *= length / max(seg.sum(), 1e-8)
    pts -= pts.mean(axis=0)
    extent = np.abs(pts).max()
    if extent > usable / 2:
        pts *= (usable / 2) / extent
    pts += (size - 1) / 2
    # dense resampling along the polyline, then bilinear splatting
    seg = np.linalg.norm(np.diff(pts, axis=0), axis=1)
    k = np.zeros((size, size))
    for a, b, d in zip(pts[:-1], pts[1:], seg):
        m = max(int(np.ceil(d * 4)), 1)
        tt = (np.arange(m) + 0.5) / m
        p = a[None] + tt[:, None] * (b - a)[None]
        x0 = np.floor(p[:, 0]).astype(int)
        y0 = np.floor(p[:, 1]).astype(int)
        fx, fy = p[:, 0] - x0, p[:, 1] - y0
        w = d / m
        for dx, dy, ww in ((0, 0, (1 - fx) * (1 - fy)), (1, 0, fx * (1 - fy)), (0, 1, (1 - fx) * fy), (1, 1, fx * fy)):
            np.add.at(k, (np.clip(y0 + dy, 0, size - 1), np.clip(x0 + dx, 0, size - 1)), ww * w)
    if k.sum() <= 0:  # degenerate zero-length path
        k[size // 2, size // 2] = 1.0
    k = scipy.ndimage.gaussian_filter(k, sigma=0.6, mode="constant")
    return _normalise(k)


def _cubic(x: np.ndarray, a: float = -0.5) -> np.ndarray:
    """Keys' cubic convolution kernel (a = -0.5 is MATLAB's / PIL's bicubic)."""
    ax = np.abs(x)
    ax2, ax3 = ax * ax, ax * ax * ax
    out = np.where(ax <= 1, (a + 2) * ax3 - (a + 3) * ax2 + 1, 0.0)
    out = np.where((ax > 1) & (ax < 2), a * ax3 - 5 * a * ax2 + 8 * a * ax - 4 * a, out)
    return out


def bicubic_kernel(sf: int) -> torch.Tensor:
    """Blur kernel that, followed by upper-left s-fold decimation, is bicubic downscaling.

    Antialiased bicubic downscaling by ``sf`` samples output pixel ``j`` at
    input position ``sf*j + (sf-1)/2`` with the cubic kernel stretched by
    ``sf``. Written as a convolution evaluated at ``n = sf*j``, the taps are
    ``h[m] = cubic((m + (sf-1)/2) / sf) / sf``; the kernel array is centred at
    ``m = 0`` (index ``size // 2``), as the FFT solver expects.
    """
    sf = check_scale_factor(sf)
    if sf == 1:
        k = np.zeros((1, 1))
        k[0, 0] = 1
        return _normalise(k)
    off = (sf - 1) / 2
    m_lo = int(math.floor(-2 * sf - off)) + 1
    m_hi = int(math.ceil(2 * sf - off)) - 1
    c = max(-m_lo, m_hi)
    m = np.arange(-c, c + 1)
    h = _cubic((m + off) / sf) / sf
    h /= h.sum()
    return _normalise(np.outer(h, h))


# ----------------------------------------------------------------------------
# FFT helpers
# ----------------------------------------------------------------------------


def psf2otf(k: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Optical transfer function of a centred kernel for circular convolution on h x w.

    Kernel entry ``k[i, j]`` acts at offset ``(i - kh//2, j - kw//2)``; kernels
    larger than the image are wrapped around (summed modulo the image size).
    """
    k = k.reshape(k.shape[-2], k.shape[-1])
    kh, kw = k.shape
    rows = (torch.arange(kh, device=k.device) - kh // 2) % h
    cols = (torch.arange(kw, device=k.device) - kw // 2) % w
    spatial = torch.zeros(h, w, dtype=k.dtype, device=k.device)
    spatial.index_put_((rows[:, None].expand(kh, kw), cols[None, :].expand(kh, kw)), k, accumulate=True)
    return torch.fft.fft2(spatial)


def _aliases(x: torch.Tensor, sf: int) -> torch.Tensor:
    """The sf x sf tiles of the last two dims along a new last dim, column tile major (the summation order of
    DiffPIR's ``utils_sisr.splits``, which float32 cancellation makes visible)."""
    rows = torch.stack(x.chunk(sf, dim=-2), dim=-1)  # (..., h/sf, w, sf)
    return torch.cat(rows.chunk(sf, dim=-2), dim=-1)  # (..., h/sf, w/sf, sf*sf)


# ----------------------------------------------------------------------------
# operators
# ----------------------------------------------------------------------------


def check_kernel(kernel) -> torch.Tensor:
    """``kernel`` as a (kh, kw) float32 tensor (leading dims of size 1 are dropped), or an :class:`OperatorError`
    naming what is wrong: not numbers, not 2-D, empty, not finite, or a sum <= 0 (a blur keeps the image's mean).
    Negative taps are allowed (the bicubic kernel has them)."""
    try:
        k = torch.as_tensor(kernel, dtype=torch.float32)
    except (TypeError, ValueError, RuntimeError):
        raise OperatorError(f"blur kernel must be a 2-D array of numbers, got {type(kernel).__name__}") from None
    if k.ndim < 2 or k.numel() != k.shape[-2] * k.shape[-1] or k.numel() == 0:
        raise OperatorError(f"blur kernel must be a non-empty 2-D array (kh, kw), got shape {tuple(k.shape)}")
    if k.ndim != 2:
        k = k.reshape(k.shape[-2], k.shape[-1])
    if not bool(torch.isfinite(k).all()):
        raise OperatorError("blur kernel has non-finite values (nan or inf)")
    total = float(k.double().sum())
    if not total > 0:
        raise OperatorError(f"blur kernel must have a positive sum (a blur keeps the image's mean), got {total:g}")
    return k


class BlurDownsample(LinearOperator):
    """``y = S (k * x)``: circular blur then keep the upper-left pixel of each sf x sf block.

    With ``sf == 1`` this is plain circular deblurring. ``k`` is a 2-D kernel
    applied to every channel.
    """

    name = "blur_downsample"

    def __init__(self, kernel: torch.Tensor, sf: int = 1):
        sf = check_scale_factor(sf)
        self.kernel = check_kernel(kernel)
        self.sf = sf
        self._cache: dict = {}

    # cached FFT of the kernel for a given HR size / device / dtype
    def _otf(self, h: int, w: int, device, dtype) -> torch.Tensor:
        key = (h, w, str(device), dtype)
        if key not in self._cache:
            if len(self._cache) > 8:
                self._cache.clear()
            self._cache[key] = psf2otf(self.kernel.to(device=device, dtype=dtype), h, w)
        return self._cache[key]

    def _check(self, x: torch.Tensor) -> None:
        if x.shape[-1] % self.sf or x.shape[-2] % self.sf:
            raise OperatorError(f"image size {tuple(x.shape[-2:])} is not divisible by the scale factor {self.sf}")

    def blur(self, x: torch.Tensor) -> torch.Tensor:
        fb = self._otf(x.shape[-2], x.shape[-1], x.device, x.dtype)
        return torch.fft.ifft2(fb * torch.fft.fft2(x)).real

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check(x)
        b = self.blur(x)
        return b[..., :: self.sf, :: self.sf] if self.sf > 1 else b

    def upsample_zeros(self, y: torch.Tensor) -> torch.Tensor:
        """``S^T``: place LR pixels at the upper-left of each sf x sf block, zeros elsewhere."""
        if self.sf == 1:
            return y
        z = y.new_zeros(*y.shape[:-2], y.shape[-2] * self.sf, y.shape[-1] * self.sf)
        z[..., :: self.sf, :: self.sf] = y
        return z

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        u = self.upsample_zeros(y)
        fb = self._otf(u.shape[-2], u.shape[-1], u.device, u.dtype)
        return torch.fft.ifft2(torch.conj(fb) * torch.fft.fft2(u)).real

    def data_solution(self, z: torch.Tensor, y: torch.Tensor, rho) -> torch.Tensor:
        if self.sf > 1:  # no simpler closed form: the Woodbury solution (in z's dtype; float64 keeps it stable)
            return self.woodbury_solution(z, y, rho)
        rho = as_rho(rho, z)
        fb = self._otf(z.shape[-2], z.shape[-1], z.device, z.dtype)
        fr = torch.conj(fb) * torch.fft.fft2(self.upsample_zeros(y)) + rho * torch.fft.fft2(z)
        return torch.fft.ifft2(fr / (fb.abs() ** 2 + rho)).real

    def woodbury_solution(self, z: torch.Tensor, y: torch.Tensor, rho) -> torch.Tensor:
        """The same solution as :meth:`data_solution`, in ``z``'s dtype with upstream's arithmetic: DiffPIR's
        ``utils_sisr.data_solution`` form ``(FR - FBC * invWBR) / rho`` for every ``sf`` (1 included), with
        ``FR = FBC F(S^T y) + F(rho z)``. In float32 it reproduces upstream's rounding, cancellation included."""
        self._check(z)
        sf = self.sf
        rho = as_rho(rho, z)
        fb = self._otf(z.shape[-2], z.shape[-1], z.device, z.dtype)
        fbc = torch.conj(fb)
        fr = fbc * torch.fft.fft2(self.upsample_zeros(y)) + torch.fft.fft2(rho * z)
        fbr = _aliases(fb * fr, sf).mean(-1)
        inv_w = _aliases(torch.abs(fb) ** 2, sf).mean(-1)
        correction = fbc * (fbr / (inv_w + rho)).repeat(*([1] * (fbr.ndim - 2)), sf, sf)
        return torch.fft.ifft2((fr - correction) / rho).real

    def output_size(self, h: int, w: int) -> tuple[int, int]:
        return h // self.sf, w // self.sf

    def input_size(self, h: int, w: int) -> tuple[int, int]:
        return h * self.sf, w * self.sf

    def describe(self) -> dict:
        return {"operator": self.name, "sf": self.sf, "kernel_size": list(self.kernel.shape)}


class Blur(BlurDownsample):
    """Circular convolution with a kernel (``sf = 1``)."""

    name = "blur"

    def __init__(self, kernel: torch.Tensor):
        super().__init__(kernel, sf=1)


class BicubicDownsample(BlurDownsample):
    """Bicubic ``sf``-fold downscaling.

    Algebraically it is :func:`bicubic_kernel` blur + decimation (what the
    closed-form solver sees). :meth:`degrade` uses PyTorch's antialiased
    bicubic resize, as DiffPIR degrades with MATLAB-style ``imresize``; the two
    agree away from the image border (the blur model is circular).
    """

    name = "bicubic"

    def __init__(self, sf: int = 4):
        super().__init__(bicubic_kernel(sf), sf=sf)

    def degrade(self, x: torch.Tensor) -> torch.Tensor:
        self._check(x)
        if self.sf == 1:
            return x.clone()
        h, w = x.shape[-2] // self.sf, x.shape[-1] // self.sf
        return F.interpolate(x, size=(h, w), mode="bicubic", antialias=True, align_corners=False)
