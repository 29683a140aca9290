"""The DiffPIR sampler (Zhu et al., CVPR-W 2023) and every mode of the official ``main_ddpir.py`` loop.

Default step (``generate_mode='DiffPIR'``, ``model_output_type='pred_xstart'``),
with ``t`` the current and ``t'`` the next timestep, images in [-1, 1]:

1. ``x0 = clip(x_t / sqrt(abar_t) - sqrt(1/abar_t - 1) * eps_theta(x_t, t), -1, 1)``
   (guided-diffusion's ``p_mean_variance``, float64 coefficients rounded to float32);
2. data sub-problem ``x0_hat = argmin ||y - A x||^2 + rho_t ||x - x0||^2`` in [0, 1]
   image space, ``rho_t = lambda * sigma_n^2 / sigmabar_t^2``, then
   ``x0 <- x0 + guidance_scale * (x0_hat - x0)``;
3. ``eps_hat = (x_t - sqrt(abar_t) x0) / sqrt(1 - abar_t)`` and
   ``x_{t'} = sqrt(abar_t') x0 + sqrt(1-zeta) (sqrt(1-abar_t' - s^2) eps_hat + s n1)
   + sqrt(zeta) sqrt(1 - abar_t') n2``, ``s = eta sqrt(1-abar_t')/sqrt(1-abar_t) sqrt(beta_t)``.

Steps 2 and 3 are skipped on every step whose ``seq`` entry equals the last one
(upstream's ``seq[i] != seq[-1]``; with ``quad`` and more than 500 steps the
last entry, 999, occurs twice). The output is the chain's ``x_0``.

Random numbers: with ``official_rng=True`` every Gaussian is drawn on the CPU
from ``generator`` into a channels-last tensor, which is what upstream's
``torch.randn_like(x)`` does with its channels-last ``x`` (built by
``single2tensor4``); the values differ from a contiguous ``randn``, not only
their order. guided-diffusion's ``p_sample`` / ``ddim_sample`` draw one more
Gaussian per network call; it is drawn (and used by ``pred_x_prev`` and the
DPS modes) as upstream does.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from typing import Callable

import numpy as np
import torch

from ...diffusion import LinearSchedule
from ...io import pad_to_multiple
from ...operators.base import LinearOperator
from ...operators.inpaint import Inpainting

GENERATE_MODES = ("DiffPIR", "DPS_y0", "DPS_yt", "vanilla", "repaint")
MODEL_OUTPUT_TYPES = ("pred_xstart", "pred_x_prev", "epsilon", "score")
SR_MODES = ("blur", "cubic")


@dataclass
class DiffPIRConfig:
    steps: int = 100  # iter_num
    lambda_: float = 7.0
    zeta: float = 0.3
    eta: float = 0.0
    skip_type: str = "quad"  # "quad" | "uniform"
    noise_level: float = 0.05  # sigma_n of y on [0, 1] images (upstream noise_level_img / 255)
    guidance_scale: float = 1.0
    t_start: int | None = None  # None -> T-1 ("noise_init_img: max"), or from noise_init_img
    noise_init_img: float | str | None = None  # upstream: 'max' or a noise level on the 0-255 scale
    use_last_x0: bool = False
    official_rng: bool = True
    generate_mode: str = "DiffPIR"
    sub_1_analytic: bool = True
    iter_num_U: int = 1
    skip_noise_model_t: bool = False
    noise_level_model: float | None = None  # None -> noise_level
    model_output_type: str = "pred_xstart"
    ddim_sample: bool = False
    sr_mode: str = "blur"  # SR data step: "blur" closed form (FFT), "cubic" iterative back-projection
    inIter: int = 1
    gamma: float = 0.01
    classical_degradation: bool = False  # main_ddpir_sisr.py: start from shift_pixel(bicubic(y))
    start_from_t_y: bool = False  # main_ddpir_deblur.py / main_ddpir_inpainting.py starting point
    paste_observed: bool = False  # inpainting: copy the observed pixels into the output
    data_precision: str = "float64"  # FFT data step: "float64" (stable) | "float32" (upstream's float32 arithmetic)

    def to_dict(self) -> dict:
        return asdict(self)

    def check(self) -> None:
        """Raise ``ValueError`` naming the bad option."""
        if self.generate_mode not in GENERATE_MODES:
            raise ValueError(f"unknown generate_mode {self.generate_mode!r}; use one of {', '.join(GENERATE_MODES)}")
        if self.model_output_type not in MODEL_OUTPUT_TYPES:
            raise ValueError(f"unknown model_output_type {self.model_output_type!r}; "
                             f"use one of {', '.join(MODEL_OUTPUT_TYPES)}")
        if self.sr_mode not in SR_MODES:
            raise ValueError(f"unknown sr_mode {self.sr_mode!r}; use 'blur' or 'cubic'")
        if self.data_precision not in ("float64", "float32"):
            raise ValueError(f"unknown data_precision {self.data_precision!r}; use 'float64' or 'float32'")
        if self.skip_type not in ("quad", "uniform"):
            raise ValueError(f"unknown skip_type {self.skip_type!r}; use 'quad' or 'uniform'")
        if int(self.iter_num_U) < 1 or int(self.inIter) < 0:
            raise ValueError("iter_num_U must be >= 1 and inIter >= 0")
        if self.noise_level_model is not None and not float(self.noise_level_model) >= 0:
            raise ValueError(f"noise_level_model must be >= 0, got {self.noise_level_model}")
        if self.noise_init_img not in (None, "max") and not float(self.noise_init_img) >= 0:
            raise ValueError(f"noise_init_img must be 'max' or >= 0 (0-255 scale), got {self.noise_init_img}")


#: Official per-task defaults (main_ddpir_deblur.py; configs/sisr.yaml; configs/inpaint.yaml).
TASK_DEFAULTS = {
    "deblur": dict(steps=100, lambda_=7.0, zeta=0.3, noise_level=12.75 / 255),
    "sr": dict(steps=100, lambda_=1.0, zeta=0.25, noise_level=12.75 / 255),
    "inpaint": dict(steps=20, lambda_=1.0, zeta=1.0, noise_level=0.0),
}


def diffpir_sequence(steps: int, skip_type: str = "quad", num_train_timesteps: int = 1000) -> list[int]:
    """Upstream ``seq``: indices into the reversed sigma list (0 = most noisy).

    The timestep evaluated at step ``i`` is ``T - 1 - seq[i]``.
    """
    if steps < 1:
        raise ValueError("steps must be >= 1")
    T = num_train_timesteps
    if skip_type == "uniform":
        skip = T // steps
        if skip < 1:
            raise ValueError(f"steps must be <= {T} for uniform skipping")
        seq = [i * skip for i in range(steps)]
        if skip > 1:
            seq.append(T - 1)
    elif skip_type == "quad":
        seq = [int(s) for s in np.sqrt(np.linspace(0, T ** 2, steps))]
        seq[-1] = seq[-1] - 1
    else:
        raise ValueError(f"unknown skip_type {skip_type!r}; use 'quad' or 'uniform'")
    return seq


def diffpir_timesteps(steps: int, skip_type: str = "quad", num_train_timesteps: int = 1000) -> list[int]:
    """Timesteps visited by DiffPIR, from T-1 down to 0."""
    return [num_train_timesteps - 1 - s for s in diffpir_sequence(steps, skip_type, num_train_timesteps)]


def diffpir_rhos(lambda_: float, noise_level: float, schedule: LinearSchedule, sigma_k: str = "reduced") -> torch.Tensor:
    """``rho_t = lambda * max(sigma_n, 0.001)^2 / sigma_k(t)^2`` for every t (float32).

    ``sigma_k`` is ``sigmabar_t = sqrt(1-abar_t)/sqrt(abar_t)`` (``'reduced'``, DiffPIR mode with
    ``pred_xstart``) or ``sqrt(beta_t / alpha_t)`` (``'beta'``, every other mode, as upstream).
    """
    sigma = max(0.001, noise_level)
    if sigma_k == "reduced":
        sk = schedule.reduced_alpha_cumprod
    else:
        b = schedule.betas
        sk = torch.sqrt(b / (1.0 - b))
    return (lambda_ * sigma ** 2 / sk ** 2).float()


def find_nearest(values: torch.Tensor, v: float) -> int:
    """Index of the entry of ``values`` nearest to ``v`` (upstream ``utils_model.find_nearest``)."""
    return int(np.abs(np.asarray(values) - v).argmin())


class GuidedDiffusionModel:
    """An epsilon-network seen as guided-diffusion's ``p_sample`` / ``ddim_sample`` (linear schedule).

    ``__call__(x, t)`` is ``pred_xstart`` (first 3 output channels as epsilon,
    float64 coefficients rounded to float32, clipped to [-1, 1]). :meth:`sample`
    also returns the ``p_sample`` draw ``mean + exp(logvar/2) n`` with the learned
    range variance (6 output channels) or the fixed-large variance (3 channels,
    guided-diffusion's ``learn_sigma=False``), or DDIM's deterministic (eta = 0)
    step. ``size_multiple`` reflect-pads the input for the UNet and crops back.
    """

    def __init__(self, net: Callable, schedule: LinearSchedule, size_multiple: int = 1, clip: bool = True):
        self.net = net
        self.size_multiple = size_multiple
        self.clip = clip
        T = schedule.num_train_timesteps
        b = np.linspace(schedule.beta_start, schedule.beta_end, T, dtype=np.float64)
        ac = np.cumprod(1.0 - b)
        acp = np.append(1.0, ac[:-1])
        post_var = b * (1.0 - acp) / (1.0 - ac)
        self._c = {k: torch.from_numpy(v) for k, v in dict(
            recip=np.sqrt(1.0 / ac), recipm1=np.sqrt(1.0 / ac - 1), ac=ac, acp=acp,
            coef1=b * np.sqrt(acp) / (1.0 - ac), coef2=(1.0 - acp) * np.sqrt(1.0 - b) / (1.0 - ac),
            min_log=np.log(np.append(post_var[1], post_var[1:])), max_log=np.log(b),
            fixed_large=np.log(np.append(post_var[1], b[1:]))).items()}

    def c(self, name: str, t: int) -> float:
        return self._c[name][t].float().item()

    def _raw(self, x: torch.Tensor, t: int):
        xin, (h, w) = pad_to_multiple(x, self.size_multiple)
        tt = torch.full((x.shape[0],), t, device=x.device, dtype=torch.long)
        p = next(iter(self.net.parameters()), None) if isinstance(self.net, torch.nn.Module) else None
        if p is not None and p.dtype != xin.dtype:
            xin = xin.to(p.dtype)
        out = self.net(xin, tt)[:, :, :h, :w].to(x.dtype)
        c = x.shape[1]
        return out[:, :c], (out[:, c:2 * c] if out.shape[1] >= 2 * c else None)

    def _x0(self, x, eps, t):
        x0 = self.c("recip", t) * x - self.c("recipm1", t) * eps
        return x0.clamp(-1, 1) if self.clip else x0

    def __call__(self, x: torch.Tensor, t: int) -> torch.Tensor:
        with torch.no_grad():
            eps, _ = self._raw(x, t)
        return self._x0(x, eps, t)

    def sample(self, x: torch.Tensor, t: int, noise: torch.Tensor, ddim: bool = False):
        """(x_prev, x0) of ``p_sample`` (or ``ddim_sample`` with eta 0) given its Gaussian ``noise``."""
        eps, v = self._raw(x, t)
        x0 = self._x0(x, eps, t)
        nonzero = float(t != 0)
        if ddim:
            e = (self.c("recip", t) * x - x0) / self.c("recipm1", t)
            abp = self._c["acp"][t].float()
            mean = x0 * torch.sqrt(abp) + torch.sqrt(1 - abp) * e
            return mean + nonzero * 0.0 * noise, x0
        mean = self.c("coef1", t) * x0 + self.c("coef2", t) * x
        if v is not None:
            frac = (v + 1) / 2
            logvar = frac * self.c("max_log", t) + (1 - frac) * self.c("min_log", t)
        else:
            logvar = torch.full_like(x, self.c("fixed_large", t))
        return mean + nonzero * torch.exp(0.5 * logvar) * noise, x0


#: backwards-compatible name
EpsToX0 = GuidedDiffusionModel


def _draw(shape, generator, device, dtype, official: bool) -> torch.Tensor:
    """Gaussian noise of ``shape``, drawn on the CPU so that a seed gives the same image on every device.

    ``generator`` may be a list with one generator per image (batch entry): image k's noise is then drawn from
    its own generator exactly as a one-image run draws it (shape (1, ...), channels-last with ``official``);
    the images' draws run in threads (each generator is used by one thread only, so the values do not change).
    """
    if isinstance(generator, (list, tuple)):
        if len(shape) < 1 or shape[0] != len(generator):
            raise ValueError(f"{len(generator)} generators for a batch of {shape[0] if shape else 0} images")
        one = (1, *shape[1:])
        if len(generator) > 1:
            parts = list(_pool().map(lambda g: _draw_cpu(one, g, official), generator))
        else:
            parts = [_draw_cpu(one, generator[0], official)]
        return torch.cat(parts).to(device=device, dtype=dtype).contiguous()
    return _draw_cpu(shape, generator, official).to(device=device, dtype=dtype).contiguous()


def _draw_cpu(shape, generator, official: bool) -> torch.Tensor:
    if official and len(shape) == 4:
        n = serial_normal(shape, generator)
        if n is None:
            n = torch.empty(shape, dtype=torch.float32, memory_format=torch.channels_last).normal_(generator=generator)
        return n
    return torch.randn(shape, generator=generator, dtype=torch.float32)


_POOL = (None, None)  # (process id, executor): a forked child makes its own (the parent's threads are not there)


def _pool():
    global _POOL
    if _POOL[0] != os.getpid():
        from concurrent.futures import ThreadPoolExecutor

        _POOL = (os.getpid(), ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1),
                                                 thread_name_prefix="restorekit-noise"))
    return _POOL[1]


#: whether a CPU generator's state ends with the "a cached normal is waiting" flag at this byte from the end
#: (``CPUGeneratorImplStateLegacy.normal_is_valid``, then the float-normal fields); checked once, see below
_CACHE_FLAG_OFFSET = 16
_CACHE_FLAG_OK = None


def _cache_flag_offset():
    """``_CACHE_FLAG_OFFSET`` if this torch keeps the flag there (the byte is 1 after an odd number of serial
    normals and 0 after an even number, on two seeds), else ``False``; checked once."""
    global _CACHE_FLAG_OK
    if _CACHE_FLAG_OK is None:
        off, ok = _CACHE_FLAG_OFFSET, True
        for seed in (0, 1):
            g = torch.Generator().manual_seed(seed)
            torch.empty((1, 3, 3, 3), memory_format=torch.channels_last).normal_(generator=g)
            odd = g.get_state()
            torch.empty((1, 3, 3, 3), memory_format=torch.channels_last).normal_(generator=g)
            even = g.get_state()
            ok = ok and odd.numel() > off and int(odd[-off]) == 1 and int(even[-off]) == 0
        _CACHE_FLAG_OK = ok
    return _CACHE_FLAG_OFFSET if _CACHE_FLAG_OK else False


def serial_normal(shape, generator: torch.Generator) -> torch.Tensor | None:
    """``torch.empty(shape, memory_format=torch.channels_last).normal_(generator=generator)``, bit for bit,
    about twice as fast; ``None`` where this shortcut does not apply (odd size, a layout torch sees as
    contiguous, a cached value waiting in the generator, an unknown state layout), and the caller draws the
    slow way.

    A non-contiguous ``normal_`` runs torch's serial CPU kernel: in memory order, each pair of values takes two
    53-bit uniforms ``u1, u2`` (``random64() & (2^53 - 1)``, times 2^-53) and gives ``r cos(theta)`` then
    ``r sin(theta)`` (the second from the generator's cache), ``r = sqrt(-2 log1p(-u2))``, ``theta = 2 pi u1``,
    rounded to float32. ``random_()`` on int64 consumes the same ``random64()`` stream (keeping the low 63 bits),
    so the generator ends in the same state.
    """
    numel = int(np.prod(shape))
    if len(shape) != 4 or numel % 2 or generator.device.type != "cpu":
        return None
    if torch.empty(shape, memory_format=torch.channels_last).is_contiguous():
        return None  # e.g. one channel: torch takes its vectorised (other) path there
    off = _cache_flag_offset()
    if off is False or int(generator.get_state()[-off]) != 0:
        return None
    bits = torch.empty(numel, dtype=torch.int64).random_(generator=generator)
    u = bits.bitwise_and_((1 << 53) - 1).to(torch.float64).mul_(2.0 ** -53).view(-1, 2)
    r = torch.sqrt(-2.0 * torch.log1p(-u[:, 1]))
    theta = 2.0 * np.pi * u[:, 0]
    out = torch.stack((r * torch.cos(theta), r * torch.sin(theta)), 1).to(torch.float32)
    n, c, h, w = shape
    return out.view(n, h, w, c).permute(0, 3, 1, 2)


def reflect_blur(x: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """Upstream's differentiable deblurring operator: reflect-pad by k//2, then per-channel ``conv2d``
    (correlation, the kernel is not flipped)."""
    k = kernel.to(x)
    c = x.shape[1]
    p = k.shape[-2] // 2  # ReflectionPad2d(k.shape[0] // 2) on every side
    xp = torch.nn.functional.pad(x, (p, p, p, p), mode="reflect")
    return torch.nn.functional.conv2d(xp, k.expand(c, 1, *k.shape[-2:]), groups=c)


def dps_grad(x: torch.Tensor, estimate: torch.Tensor, measurement: torch.Tensor, degrade: Callable):
    """DPS guidance: ``(grad_x ||measurement - degrade(estimate)||, ||...||)``; ``estimate`` is a function of
    ``x`` with its autograd graph (``x0(x_t)`` for DPS_y0, ``x_{t-1}`` itself for DPS_yt)."""
    with torch.enable_grad():
        norm = torch.linalg.norm(measurement - degrade(estimate))
        g, = torch.autograd.grad(norm, x)
    return g, norm.detach()


def dps_grad_batch(x: torch.Tensor, estimate: torch.Tensor, measurements: list, degrades: list):
    """:func:`dps_grad` for a batch whose images have their own problems: image k's norm
    ``||measurements[k] - degrades[k](estimate[k])||`` (a (N, 1, 1, 1) tensor) and the gradient of their sum,
    which for image k is the gradient of its own norm (images do not interact)."""
    with torch.enable_grad():
        norms = torch.stack([torch.linalg.norm(m - d(estimate[k:k + 1]))
                             for k, (m, d) in enumerate(zip(measurements, degrades))])
        g, = torch.autograd.grad(norms.sum(), x)
    return g, norms.detach().reshape(-1, 1, 1, 1)


class _Problem:
    """The task-specific parts of the official loop: data steps and the differentiable degradation."""

    def __init__(self, operator, y: torch.Tensor, cfg: DiffPIRConfig, task: str):
        from ...operators.blur import BlurDownsample
        from ...operators.matlab_resize import MatlabResize, nearest_upsample

        self.op, self.y, self.cfg, self.task = operator, y, cfg, task
        self.inpaint = isinstance(operator, Inpainting)
        self.sf = getattr(operator, "sf", 1)
        if task == "sr" and isinstance(operator, BlurDownsample):
            self.resize = MatlabResize(1 / self.sf)
            self.up = lambda z: nearest_upsample(z, self.sf)

    def analytic(self, x0: torch.Tensor, rho: torch.Tensor) -> torch.Tensor:
        """The closed-form (or IBP) data step on x0 in [-1, 1]."""
        cfg = self.cfg
        if self.task == "sr" and cfg.sr_mode == "cubic":
            for _ in range(int(cfg.inIter)):
                z = x0 / 2 + 0.5
                z = z + cfg.gamma * self.up(self.y - self.resize(z)) / (1 + rho)
                x0 = z * 2 - 1
            return x0
        if cfg.data_precision == "float32" and hasattr(self.op, "woodbury_solution"):
            # upstream's own float32 arithmetic (its rounding at tiny rho included), for bit-level comparisons
            sol = self.op.woodbury_solution((x0 / 2 + 0.5).float(), self.y.float(), rho.float()).to(x0.dtype) * 2 - 1
            return x0 + cfg.guidance_scale * (sol - x0)
        # the data step runs in float64: in float32 the FFT solution cancels catastrophically when rho is tiny
        z = (x0 / 2 + 0.5).double()
        sol = self.op.data_solution(z, self.y.double(), rho.double()).to(x0.dtype) * 2 - 1
        return x0 + cfg.guidance_scale * (sol - x0)

    def degrade(self, x: torch.Tensor) -> torch.Tensor:
        """Upstream's ``degrade_op`` for the gradient and DPS steps, with its measurement."""
        if self.task == "deblur":
            return reflect_blur(x / 2 + 0.5, self.op.kernel)
        if self.task == "sr" and hasattr(self, "resize"):
            return self.resize(x)
        return self.op.forward(x)

    def measurement(self) -> torch.Tensor:
        if self.task == "deblur":
            return self.y
        if self.inpaint:
            return self.op.forward(2 * self.y - 1)
        return 2 * self.y - 1


class _Problems:
    """One :class:`_Problem` per image of a batch (each with its own operator and observation), seen as one:
    data steps run image by image, DPS gradients use one norm per image."""

    def __init__(self, operators, y: torch.Tensor, cfg: DiffPIRConfig, task: str):
        if len(operators) != y.shape[0]:
            raise ValueError(f"{len(operators)} operators for a batch of {y.shape[0]} images")
        self.items = [_Problem(op, y[k:k + 1], cfg, task) for k, op in enumerate(operators)]
        self.inpaint = all(p.inpaint for p in self.items)
        if self.inpaint != any(p.inpaint for p in self.items):
            raise ValueError("a batch mixes inpainting and other operators")

    def analytic(self, x0: torch.Tensor, rho: torch.Tensor) -> torch.Tensor:
        return torch.cat([p.analytic(x0[k:k + 1], rho) for k, p in enumerate(self.items)])

    def grad(self, x: torch.Tensor, estimate: torch.Tensor, measurements=None):
        meas = measurements if measurements is not None else [p.measurement() for p in self.items]
        return dps_grad_batch(x, estimate, meas, [p.degrade for p in self.items])

    def mask(self, channels: int) -> torch.Tensor:
        return torch.cat([p.op.mask.expand(1, channels, *p.op.mask.shape[-2:]) for p in self.items])


def diffpir_sample(x0_fn: Callable[[torch.Tensor, int], torch.Tensor], y: torch.Tensor,
                   operator: LinearOperator | list[LinearOperator],
                   x_init: torch.Tensor, config: DiffPIRConfig, schedule: LinearSchedule | None = None,
                   generator: torch.Generator | list[torch.Generator] | None = None,
                   callback: Callable[[int, int, int], None] | None = None, task: str | None = None) -> torch.Tensor:
    """Run DiffPIR (any official ``generate_mode``). ``y`` and ``x_init`` are in [0, 1]; returns [0, 1].

    ``x_init`` is the image the chain starts from (upstream: ``y`` for
    deblurring, the bicubic upsampling of ``y`` for SR, ``y * mask`` for
    inpainting). ``x0_fn`` is a :class:`GuidedDiffusionModel` (any mode) or a
    plain ``x0(x, t)`` function (DiffPIR mode with ``pred_xstart`` only).
    ``task`` (deblur / sr / inpaint) is inferred from the operator when omitted.

    Batches: ``y`` and ``x_init`` may hold N images of one size. ``operator`` is then one operator for all, or a
    list of N (image k's data step and DPS norm use its own); ``generator`` is one generator for the whole batch,
    or a list of N, image k's noise then being drawn from ``generator[k]`` exactly as a one-image run with that
    generator draws it, so that a batch gives each image the result it gets alone (the network runs once per
    step on all N).
    """
    cfg = config
    cfg.check()
    sch = schedule or LinearSchedule()
    T = sch.num_train_timesteps
    device, dtype = y.device, y.dtype
    per_image = isinstance(operator, (list, tuple))
    first_op = operator[0] if per_image else operator
    inpaint = isinstance(first_op, Inpainting)
    if task is None:
        task = "inpaint" if inpaint else ("sr" if getattr(first_op, "sf", 1) > 1 else "deblur")
    if isinstance(generator, (list, tuple)) and len(generator) != y.shape[0]:
        raise ValueError(f"{len(generator)} generators for a batch of {y.shape[0]} images")
    mode, mot = cfg.generate_mode, cfg.model_output_type
    dps = mode.startswith("DPS")
    full_model = hasattr(x0_fn, "sample")
    if not full_model and not (mode in ("DiffPIR", "vanilla", "repaint") and mot == "pred_xstart" and not cfg.ddim_sample):
        raise ValueError("this generate_mode / model_output_type needs a GuidedDiffusionModel, not a bare x0 function")
    if dps and inpaint:
        raise ValueError("generate_mode DPS_y0 / DPS_yt is not available for inpainting "
                         "(main_ddpir.py allows DiffPIR, repaint and vanilla there)")
    if mode == "repaint" and not inpaint:
        raise ValueError("generate_mode 'repaint' is an inpainting mode")

    sac = sch.sqrt_alphas_cumprod.to(device)
    s1m = sch.sqrt_1m_alphas_cumprod.to(device)
    betas = sch.betas.to(device)
    reduced = sch.reduced_alpha_cumprod
    rhos = diffpir_rhos(cfg.lambda_, cfg.noise_level, sch,
                        "reduced" if (mot == "pred_xstart" and mode == "DiffPIR") else "beta").to(device)
    if cfg.t_start is not None:
        t_start = int(cfg.t_start)
        if not 0 <= t_start < T:
            raise ValueError(f"t_start must be in [0, {T - 1}], got {cfg.t_start}")
    elif cfg.noise_init_img not in (None, "max"):
        t_start = find_nearest(reduced, 2 * float(cfg.noise_init_img) / 255)
    else:
        t_start = T - 1
    sigma_model = cfg.noise_level if cfg.noise_level_model is None else cfg.noise_level_model
    noise_model_t = find_nearest(reduced, 2 * sigma_model) if cfg.skip_noise_model_t else 0
    seq = diffpir_sequence(cfg.steps, cfg.skip_type, T)
    ts = [T - 1 - s for s in seq]
    n = len(ts)
    if per_image:
        prob = _Problems(operator, y, cfg, task)
        mask = prob.mask(y.shape[1]).to(device=device, dtype=dtype) if inpaint else None
        grad = prob.grad
    else:
        prob = _Problem(operator, y, cfg, task)
        mask = operator.mask.to(device=device, dtype=dtype) if inpaint else None

        def grad(x, estimate, measurements=None):
            return dps_grad(x, estimate, prob.measurement() if measurements is None else measurements,
                            prob.degrade)
    yy = 2 * y - 1

    def noise(shape=None):
        return _draw(tuple(shape or x.shape), generator, device, dtype, cfg.official_rng)

    def model(x, t, kind):
        """upstream utils_model.model_fn: returns pred_xstart, the sample, or (sample, pred_xstart)."""
        if not full_model:
            if cfg.official_rng:
                noise()  # p_sample's draw
            return x0_fn(x, t)
        # p_sample / ddim_sample draw one Gaussian per call; only pred_x_prev and DPS use it
        nz = noise() if (cfg.official_rng or kind in ("pred_x_prev", "both")) else torch.zeros_like(x)
        if kind == "pred_xstart" and not x.requires_grad:  # the draw is kept for the stream; x_prev is unused
            return x0_fn(x, t)
        with torch.set_grad_enabled(x.requires_grad):
            xp, x0 = x0_fn.sample(x, t, nz, cfg.ddim_sample)
        if kind == "both":
            return xp, x0
        if kind == "pred_x_prev":
            return xp
        if kind == "pred_xstart":
            return x0
        ab = sch.alphas_cumprod[t].to(device)
        e = (x - ab ** 0.5 * x0) / (1 - ab) ** 0.5
        return e if kind == "epsilon" else -e / (1 - ab) ** 0.5

    # ---- starting point
    if cfg.start_from_t_y:
        t_y = find_nearest(reduced, 2 * cfg.noise_level)
        a = sac[t_start] / sac[t_y]
        x = a * (2 * x_init - 1) + torch.sqrt(s1m[t_start] ** 2 - a ** 2 * s1m[t_y] ** 2) * noise(x_init.shape)
    else:
        x = sac[t_start] * (2 * x_init - 1) + s1m[t_start] * noise(x_init.shape)
    x = x.to(dtype)
    out = x / 2 + 0.5
    x0 = None
    for i, t in enumerate(ts):
        if t > t_start:
            continue
        last = seq[i] == seq[-1]
        tp = ts[i + 1] if i + 1 < n else t
        for u in range(int(cfg.iter_num_U)):
            # ---- step 1: one reverse diffusion step
            xt = None
            if inpaint:
                if mode == "repaint":
                    x = (sac[t] * yy + s1m[t] * noise()) * mask + (1 - mask) * x
                if mot == "pred_xstart":
                    x0 = model(x, t, mot)
                else:
                    x = model(x, t, mot)
            elif dps:
                x = x.detach().requires_grad_()
                with torch.enable_grad():
                    xt, x0 = model(x, t, "both")
            else:
                x0 = model(x, t, mot)
            # ---- step 2: data step
            if not last:
                if mode == "DiffPIR" and cfg.sub_1_analytic:
                    if mot == "pred_xstart":
                        if i < T - noise_model_t:
                            x0 = prob.analytic(x0, rhos[t])
                        else:  # upstream switches to pred_x_prev for the rest of the run
                            mot = "pred_x_prev"
                            x0 = model(x, t, mot)
                    elif mot == "pred_x_prev" and inpaint and i < T - noise_model_t:
                        # main_ddpir_inpainting.py L277 (main_ddpir.py uses an undefined tau / stale x0 here)
                        x = (mask * yy + rhos[t] * x) / (mask + rhos[t])
                elif mode == "DiffPIR":  # sub_1_analytic=False: one gradient step
                    x0 = x0.detach().requires_grad_()
                    g, norm = grad(x0, x0)
                    x0 = (x0 - g * norm / rhos[t]).detach()
                elif mode == "DPS_y0":
                    g, _ = grad(x, x0)
                    x = (xt - g * 1.0).detach()
                elif mode == "DPS_yt":
                    y_t = sac[t] * yy + s1m[t] * noise(y.shape)
                    meas = y_t / 2 + 0.5 if task == "deblur" else y_t
                    g, norm = grad(xt, xt, list(meas.split(1)) if per_image else meas)
                    x = (xt - g * cfg.lambda_ * norm / rhos[t] * 0.35).detach()
            elif cfg.use_last_x0 and mot == "pred_xstart" and mode == "DiffPIR" and i == n - 1:
                x0 = prob.analytic(x0, rhos[t])
                x = x0
            if x0 is not None:
                x0 = x0.detach()
            # ---- step 3: back to t' (vanilla: for every task, see the README)
            if (inpaint or mode in ("DiffPIR", "vanilla")) and mot == "pred_xstart" and not last:
                eps = (x - sac[t] * x0) / s1m[t]
                eta_sigma = cfg.eta * s1m[tp] / s1m[t] * torch.sqrt(betas[t])
                x = (sac[tp] * x0
                     + np.sqrt(1 - cfg.zeta) * (torch.sqrt(s1m[tp] ** 2 - eta_sigma ** 2) * eps
                                                 + eta_sigma * noise())
                     + np.sqrt(cfg.zeta) * s1m[tp] * noise())
            # ---- iter_num_U > 1: re-noise from t' back to t
            if u < int(cfg.iter_num_U) - 1 and not last:
                a = sac[t] / sac[tp]
                x = a * x + torch.sqrt(s1m[t] ** 2 - a ** 2 * s1m[tp] ** 2) * noise()
            x = x.detach()
        out = x / 2 + 0.5
        if callback is not None:
            callback(i, n, t)
    if inpaint and cfg.paste_observed:
        m = mask.expand_as(out).bool()
        out = torch.where(m, y.expand_as(out), out)
    return out
