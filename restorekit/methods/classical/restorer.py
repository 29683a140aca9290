"""Classical restoration baselines (no learned weights)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ...api import Restorer, check_loader_options, check_one_mask, check_operator_scale, check_scale, check_seed
from ...errors import TaskError, check_api_number
from ...limits import check_option
from ...operators import BicubicDownsample, Blur, BlurDownsample, Inpainting, LinearOperator, psf2otf
from ...registry import register_method

#: task -> algorithms (the first is the default)
ALGORITHMS = {
    "sr": ("bicubic", "lanczos"),
    "deblur": ("wiener", "tv", "blind_wiener"),
    "inpaint": ("biharmonic", "diffusion"),
    "denoise": ("bm3d",),
}
#: noise std assumed when none is given (DiffPIR's deblur/SR setting, 12.75/255)
DEFAULT_NOISE = 0.05


@dataclass
class ClassicalConfig:
    algorithm: str = ""
    noise_level: float = DEFAULT_NOISE
    tv_weight: float = 0.0  # 0: chosen from noise_level
    iterations: int = 200  # TV-ADMM iterations
    kernel_size: int = 31  # blind_wiener: size of the estimated kernel (odd)

    def to_dict(self) -> dict:
        return asdict(self)


@register_method
class Classical(Restorer):
    """Bicubic / Lanczos, Wiener / TV deconvolution, blind Wiener (estimated kernel), biharmonic / harmonic fill,
    BM3D."""

    name = "classical"
    tasks = ("sr", "deblur", "inpaint", "denoise")
    default_model = ""
    needs_weights = False
    #: SR factor without an operator or ``scale``
    default_scale = 4

    @classmethod
    def _from_weights(cls, path: Path | None, card=None, device=None, **kwargs):
        check_loader_options("Classical", kwargs)
        return cls(device=device)

    def is_blind(self, config=None) -> bool:
        return getattr(config, "algorithm", None) == "blind_wiener"  # it estimates the kernel

    def make_config(self, task: str, steps: int | None = None, **options) -> ClassicalConfig:
        self.check_task(task)
        if steps is not None:  # unused (no iterations to count), but a bad value is refused as by the other methods
            check_option(steps, "steps", error=TaskError)
        cfg = ClassicalConfig(algorithm=ALGORITHMS[task][0])
        names = {f.name for f in fields(ClassicalConfig)}
        ignored = {"lambda_", "zeta", "eta", "skip_type", "use_last_x0", "scale", "noise"}
        for k, v in options.items():
            if v is None or k in ignored:
                continue
            if k not in names:
                raise TaskError(f"option {k!r} does not apply to the classical baselines; options are "
                                f"{', '.join(sorted(names))}")
            setattr(cfg, k, v)
        if not isinstance(cfg.algorithm, str) or cfg.algorithm not in ALGORITHMS[task]:
            raise TaskError(f"classical {task}: algorithm {cfg.algorithm!r}; choose {', '.join(ALGORITHMS[task])}")
        # finite and in range (noise_level: restorekit.limits, as --noise): an infinite tv_weight gave a black image
        check_option(cfg.noise_level, "noise_level", error=TaskError)
        check_api_number(cfg.tv_weight, "tv_weight (0: chosen from noise_level)", lo=0, error=TaskError)
        cfg.iterations = check_api_number(cfg.iterations, "iterations", lo=1, integer=True, error=TaskError)
        cfg.kernel_size = check_api_number(cfg.kernel_size, "kernel_size", lo=3, integer=True, error=TaskError)
        if cfg.kernel_size % 2 == 0:
            raise TaskError(f"kernel_size must be an odd number >= 3, got {cfg.kernel_size}")
        return cfg

    def check_options(self, task: str, operator=None, steps: int | None = None, scale: int | None = None,
                      **options) -> None:
        super().check_options(task, operator, steps, **options)
        scale = check_scale(scale)
        if operator is None or isinstance(operator, LinearOperator):  # not a callable that makes one per image
            self._check_operator(task, self.make_config(task, steps, **options), operator, scale)

    @staticmethod
    def _check_operator(task: str, cfg: ClassicalConfig, operator, scale: int | None = None) -> None:
        """The operator fits the task and algorithm (SR: none or an SR operator, whose factor agrees with an explicit
        ``scale``; wiener / tv: a Blur; inpainting: a mask), else a :class:`TaskError`."""
        if task == "sr" and operator is not None and (not isinstance(operator, BlurDownsample)
                                                      or isinstance(operator, Blur)):
            raise TaskError(f"operator {type(operator).__name__} does not fit task 'sr': classical SR needs no "
                            f"operator, or an SR operator for its factor (BicubicDownsample(sf))")
        if task == "sr":
            check_operator_scale(operator, scale)
        if task == "deblur" and cfg.algorithm != "blind_wiener" and (
                not isinstance(operator, BlurDownsample) or isinstance(operator, BicubicDownsample)
                or operator.sf != 1):
            raise TaskError("classical deblurring with wiener / tv is non-blind: pass operator=Blur(kernel) (CLI: "
                            "--kernel-file), or use algorithm='blind_wiener'")
        if task == "inpaint" and not isinstance(operator, Inpainting):
            raise TaskError("classical inpainting needs operator=Inpainting(mask) (CLI: --mask-file)")

    @torch.no_grad()
    def restore_tensor(self, y: torch.Tensor, task: str, operator=None, steps: int | None = None,
                       seed: int | None = None, progress=None, scale: int | None = None, **options) -> torch.Tensor:
        """``scale``: the SR factor without an operator (default 4); with one, it must agree with its factor."""
        cfg = self.make_config(task, steps, **options)
        scale = check_scale(scale)
        check_seed(seed)  # no randomness here, but a bad seed is refused as by the other methods
        check_one_mask(operator)
        self._check_operator(task, cfg, operator, scale)
        y = y.detach().to("cpu", torch.float64)
        if task == "sr":
            sf = operator.sf if operator is not None else (self.default_scale if scale is None else scale)
            out = upscale(y, sf, cfg.algorithm)
        elif task == "deblur" and cfg.algorithm == "blind_wiener":
            from .blind import blind_wiener

            out, _ = blind_wiener(y, cfg.noise_level, int(cfg.kernel_size))
        elif task == "deblur":
            k = operator.kernel.to(torch.float64)
            if cfg.algorithm == "wiener":
                out = wiener_deconvolve(y, k, cfg.noise_level)
            else:
                out = tv_deconvolve(y, k, cfg.noise_level, cfg.tv_weight or None, cfg.iterations)
        elif task == "inpaint":
            mask = (operator.mask[0, 0] > 0.5).numpy() if operator.mask.shape[1] == 1 else (
                operator.mask[0].min(0).values > 0.5).numpy()
            out = inpaint(y, mask, cfg.algorithm, per_channel=operator.mask.shape[1] > 1)
        else:
            out = bm3d_denoise(y, cfg.noise_level)
        if not bool(torch.isfinite(out).all()):
            raise TaskError(f"classical {cfg.algorithm} produced non-finite values (nan or inf); check the options "
                            f"and the operator")
        if progress is not None:
            progress(0, 1, 0)
        return out.clamp(0, 1).to(self.device, torch.float32)


# ----------------------------------------------------------------------------- SR
def upscale(y: torch.Tensor, sf: int, algorithm: str = "bicubic") -> torch.Tensor:
    h, w = y.shape[-2:]
    if algorithm == "bicubic":
        return F.interpolate(y, size=(h * sf, w * sf), mode="bicubic", align_corners=False)
    from PIL import Image

    chans = []
    for c in y[0].float().numpy():
        im = Image.fromarray(c.astype(np.float32), mode="F").resize((w * sf, h * sf), Image.LANCZOS)
        chans.append(np.asarray(im, dtype=np.float64))
    return torch.from_numpy(np.stack(chans))[None]


# ----------------------------------------------------------------------------- deblurring
def _freq_sq(h: int, w: int) -> torch.Tensor:
    fy = torch.fft.fftfreq(h, dtype=torch.float64)[:, None]
    fx = torch.fft.fftfreq(w, dtype=torch.float64)[None, :]
    return fy ** 2 + fx ** 2


def gradient_otfs(h: int, w: int) -> tuple[torch.Tensor, torch.Tensor]:
    """OTFs (float64) of the horizontal and vertical forward differences on h x w, circular."""
    dh = psf2otf(torch.tensor([[0.0, -1.0, 1.0]], dtype=torch.float64), h, w)
    dv = psf2otf(torch.tensor([[0.0], [-1.0], [1.0]], dtype=torch.float64), h, w)
    return dh, dv


def wiener_deconvolve(y: torch.Tensor, kernel: torch.Tensor, sigma: float) -> torch.Tensor:
    """Wiener filter with the true kernel and a power-law image spectrum ``S(f) = A / (|f|^2 + f0^2)``.

    ``A`` is fitted to the observation (median of ``(|Y|^2 - N sigma^2) (|f|^2 + f0^2) / |K|^2`` where the kernel
    passes at least 10% of the energy); the mean (DC) is not regularised.
    """
    h, w = y.shape[-2:]
    K = psf2otf(kernel, h, w)
    Y = torch.fft.fft2(y)
    f2 = _freq_sq(h, w)
    f0 = 1.0 / max(h, w)
    k2 = K.abs() ** 2
    noise_power = h * w * max(sigma, 1e-4) ** 2
    sel = (k2 > 0.1) & (f2 > 0)
    est = ((Y.abs() ** 2).mean(dim=(0, 1)) - noise_power).clamp_min(0) * (f2 + f0 ** 2) / k2.clamp_min(1e-12)
    A = float(est[sel].median()) if bool(sel.any()) else 1.0
    prior = A / (f2 + f0 ** 2)
    reg = noise_power / prior.clamp_min(1e-30)
    reg[0, 0] = 0.0
    X = torch.conj(K) * Y / (k2 + reg).clamp_min(1e-12)
    return torch.fft.ifft2(X).real


def tv_deconvolve(y: torch.Tensor, kernel: torch.Tensor, sigma: float, weight: float | None = None,
                  iterations: int = 200) -> torch.Tensor:
    """``argmin_x 1/2 ||k * x - y||^2 + weight * TV(x)`` (isotropic TV, circular boundaries) by ADMM."""
    h, w = y.shape[-2:]
    lam = weight if weight is not None else 0.6 * max(sigma, 0.002) ** 1.5  # tuned on scikit-image photos
    rho = 20 * lam
    K = psf2otf(kernel, h, w)
    dh, dv = gradient_otfs(h, w)
    denom = K.abs() ** 2 + rho * (dh.abs() ** 2 + dv.abs() ** 2)
    KtY = torch.conj(K) * torch.fft.fft2(y)
    x = y.clone()
    zh = torch.zeros_like(y)
    zv = torch.zeros_like(y)
    uh = torch.zeros_like(y)
    uv = torch.zeros_like(y)
    for _ in range(iterations):
        rhs = KtY + rho * (torch.conj(dh) * torch.fft.fft2(zh - uh) + torch.conj(dv) * torch.fft.fft2(zv - uv))
        X = rhs / denom
        x = torch.fft.ifft2(X).real
        gh = torch.fft.ifft2(dh * X).real
        gv = torch.fft.ifft2(dv * X).real
        vh, vv = gh + uh, gv + uv
        mag = torch.sqrt(vh ** 2 + vv ** 2).clamp_min(1e-12)
        shrink = (1 - lam / (rho * mag)).clamp_min(0)
        zh, zv = shrink * vh, shrink * vv
        uh, uv = vh - zh, vv - zv
    return x


# ----------------------------------------------------------------------------- inpainting
def inpaint(y: torch.Tensor, known: np.ndarray, algorithm: str = "biharmonic", per_channel: bool = False
            ) -> torch.Tensor:
    """Fill the pixels where ``known`` is False from those where it is True."""
    img = y[0].permute(1, 2, 0).numpy()
    if known.all():
        return y.clone()
    if not known.any():
        # both algorithms interpolate from observed pixels: biharmonic fails on an empty set, harmonic fill's
        # system is singular (a constant is as good as any other)
        where = "no pixel is 1 in every channel" if per_channel else "it is 0 everywhere"
        raise TaskError(f"the inpainting mask observes no pixel (white/1 = observed, black/0 = missing; {where}): "
                        f"classical {algorithm} needs observed pixels to fill from")
    if algorithm == "biharmonic":
        from skimage.restoration import inpaint_biharmonic

        out = inpaint_biharmonic(img, ~known, channel_axis=-1)
    else:
        out = harmonic_fill(img, known)
    return torch.from_numpy(np.ascontiguousarray(out)).permute(2, 0, 1)[None]


def harmonic_fill(img: np.ndarray, known: np.ndarray) -> np.ndarray:
    """Missing pixels solve Laplace's equation (each the mean of its 4 neighbours), known pixels fixed."""
    import scipy.sparse as sp
    import scipy.sparse.linalg as spl

    h, w = known.shape
    idx = -np.ones((h, w), dtype=np.int64)
    unknown = np.argwhere(~known)
    idx[~known] = np.arange(len(unknown))
    rows, cols, vals = [], [], []
    rhs = np.zeros((len(unknown), img.shape[2]))
    for n, (i, j) in enumerate(unknown):
        nb = [(a, b) for a, b in ((i - 1, j), (i + 1, j), (i, j - 1), (i, j + 1)) if 0 <= a < h and 0 <= b < w]
        rows.append(n)
        cols.append(n)
        vals.append(len(nb))
        for a, b in nb:
            if known[a, b]:
                rhs[n] += img[a, b]
            else:
                rows.append(n)
                cols.append(idx[a, b])
                vals.append(-1.0)
    A = sp.csr_matrix((vals, (rows, cols)), shape=(len(unknown), len(unknown)))
    sol = spl.spsolve(A.tocsc(), rhs)
    out = img.copy()
    out[~known] = sol.reshape(len(unknown), -1)
    return out


# ----------------------------------------------------------------------------- denoising
#: the opponent colour transform of ``bm3d.bm3d_rgb`` (colorspace='opp') and its inverse
_OPP = np.array([[1 / 3, 1 / 3, 1 / 3], [0.5, 0, -0.5], [0.25, -0.5, 0.25]])
_OPP_INV = np.array([[1, 1, 2 / 3], [1, 0, -4 / 3], [1, -1, 2 / 3]])


def bm3d_min_size() -> int:
    """The smallest side this module hands to BM3D: its block size + 1. bm3d refuses images smaller than a block
    and its native code crashes (segmentation fault, bm3d 4.0.3) on an image of exactly one block (8x8)."""
    import bm3d

    pro = bm3d.BM3DProfile()
    return int(max(pro.bs_ht, pro.bs_wiener)) + 1


def bm3d_denoise(y: torch.Tensor, sigma: float) -> torch.Tensor:
    """BM3D with scalar noise std ``sigma`` (on the [0, 1] scale).

    Colour images go through ``bm3d.bm3d_rgb``'s steps (opponent transform, each channel normalised to [0, 1] by
    its range, the std scaled to match), done here so that a channel of zero range -- a flat image, or the chroma
    of a grey image -- is left unscaled instead of divided by 0 (it is constant, and BM3D returns it unchanged).
    A side shorter than :func:`bm3d_min_size` is symmetric-padded to it and cropped back (a 1x1 image becomes a flat
    one, returned unchanged).
    """
    try:
        import bm3d
    except ImportError:
        raise TaskError("BM3D needs the 'bm3d' package: pip install 'restorekit[classical]'") from None
    img = y[0].permute(1, 2, 0).numpy().astype(np.float64)
    h, w, c = img.shape
    if h * w == 0 or c == 0:
        raise TaskError(f"BM3D: empty image ({h}x{w}x{c})")
    sigma = max(float(sigma), 1e-4)
    # symmetric padding up to the size BM3D works on
    n = bm3d_min_size()
    ph, pw = max(n - h, 0), max(n - w, 0)
    if ph or pw:
        img = np.pad(img, ((ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2), (0, 0)), mode="symmetric")
    fwd, inv = (_OPP, _OPP_INV) if c == 3 else (np.eye(c), np.eye(c))
    o = img.reshape(-1, c) @ fwd.T
    lo, hi = o.min(0), o.max(0)
    rng = hi - lo
    flat = rng <= 1e-8
    rng = np.where(flat, 1.0, rng)  # a constant channel: nothing to normalise
    z = ((o - lo) / rng).reshape(img.shape)
    stds = sigma * np.sqrt((fwd.T ** 2).sum(0)) / rng
    est = None
    if c > 1 and not flat[0]:
        try:  # block matching on channel 0, shared by the others (as bm3d_rgb)
            est = np.asarray(bm3d.bm3d(z, list(stds)), dtype=np.float64)
        except ValueError:
            # bm4d returns no block matches when channel 0's first-stage estimate is flat; go channel by channel
            est = None
    if est is None:
        # channel by channel; a constant channel is its own BM3D estimate (and channel 0 constant would break
        # bm4d's multichannel path, which needs its block matches)
        est = z.copy()
        for i in np.flatnonzero(~flat):
            est[:, :, i] = bm3d.bm3d(z[:, :, i], float(stds[i]))
    out = (est.reshape(-1, c) * rng + lo) @ inv.T
    out = out.reshape(img.shape)[ph // 2: ph // 2 + h, pw // 2: pw // 2 + w]
    return torch.from_numpy(np.ascontiguousarray(out)).permute(2, 0, 1)[None]
