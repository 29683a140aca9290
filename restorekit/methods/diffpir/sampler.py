"""The DiffPIR sampler (Zhu et al., CVPR-W 2023), as the official ``main_ddpir.py``.

Per step, with ``t`` the current and ``t'`` the next timestep (images in [-1, 1]):

1. ``x0 = clip(x_t / sqrt(abar_t) - sqrt(1/abar_t - 1) * eps_theta(x_t, t), -1, 1)``
2. data sub-problem (all but the last step):
   ``x0_hat = argmin ||y - A x||^2 + rho_t ||x - x0||^2`` solved in [0, 1] image
   space with ``rho_t = lambda * sigma_n^2 / sigmabar_t^2``,
   ``sigmabar_t = sqrt(1 - abar_t) / sqrt(abar_t)``, then
   ``x0 <- x0 + guidance_scale * (x0_hat - x0)``.
3. (all but the last step) ``eps_hat = (x_t - sqrt(abar_t) x0) / sqrt(1 - abar_t)`` and
   ``x_{t'} = sqrt(abar_t') x0 + sqrt(1-zeta) (sqrt(1-abar_t' - s^2) eps_hat + s n1)
   + sqrt(zeta) sqrt(1 - abar_t') n2`` with ``s = eta sqrt(1-abar_t')/sqrt(1-abar_t) sqrt(beta_t)``.

Upstream behaviours kept by default, each behind a flag:

* ``use_last_x0=False``: upstream skips the data step at the last timestep
  (t = 0) and returns ``x_0`` of the chain, discarding the last ``x0`` estimate.
  ``True`` runs the data step there and returns that estimate instead.
* ``official_rng=True``: upstream calls guided-diffusion's ``p_sample``, which
  draws (and throws away) one Gaussian sample per network evaluation. Keeping
  the draw keeps the random stream identical to upstream's for a given seed.
* ``rho_t`` mixes scales as upstream does: ``sigma_n`` is the noise std on
  [0, 1] images, ``sigmabar_t`` is on [-1, 1]; the published lambdas are tuned
  for this, so it is kept as is.
* ``skip_type='uniform'`` evaluates the network ``steps + 1`` times (upstream
  appends t = 0 to ``range(0, 1000, 1000 // steps)``).
* inpainting pastes the observed pixels into the output at the end.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Callable

import numpy as np
import torch

from ...diffusion import LinearSchedule
from ...io import pad_to_multiple
from ...operators.base import LinearOperator
from ...operators.inpaint import Inpainting


@dataclass
class DiffPIRConfig:
    steps: int = 100  # iter_num
    lambda_: float = 7.0
    zeta: float = 0.3
    eta: float = 0.0
    skip_type: str = "quad"  # "quad" | "uniform"
    noise_level: float = 0.05  # sigma_n of y, on [0, 1] images
    guidance_scale: float = 1.0
    t_start: int | None = None  # None -> T-1 ("noise_init_img: max")
    use_last_x0: bool = False
    official_rng: bool = True

    def to_dict(self) -> dict:
        return asdict(self)


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


def diffpir_rhos(lambda_: float, noise_level: float, schedule: LinearSchedule) -> torch.Tensor:
    """``rho_t = lambda * max(sigma_n, 0.001)^2 / sigmabar_t^2`` for every t (float32)."""
    sigma = max(0.001, noise_level)
    return (lambda_ * sigma ** 2 / schedule.reduced_alpha_cumprod ** 2).float()


class EpsToX0:
    """Wraps an epsilon-network into ``x0(x_t, t)`` as guided-diffusion's ``p_mean_variance``.

    Takes the first 3 output channels as epsilon, uses float64 schedule
    coefficients, clips to [-1, 1]. ``size_multiple`` pads the input
    (reflect) so the UNet sees a valid size, and crops the result back.
    """

    def __init__(self, net: Callable, schedule: LinearSchedule, size_multiple: int = 1, clip: bool = True):
        self.net = net
        self.size_multiple = size_multiple
        self.clip = clip
        a, b = schedule.x0_coefficients()
        self._a, self._b = a, b

    @torch.no_grad()
    def __call__(self, x: torch.Tensor, t: int) -> torch.Tensor:
        xin, (h, w) = pad_to_multiple(x, self.size_multiple)
        tt = torch.full((x.shape[0],), t, device=x.device, dtype=torch.long)
        eps = self.net(xin, tt)[:, :3, :h, :w].to(x.dtype)
        x0 = self._a[t].float().item() * x - self._b[t].float().item() * eps
        return x0.clamp(-1, 1) if self.clip else x0


def _randn(shape, generator: torch.Generator | None, device, dtype) -> torch.Tensor:
    # drawn on the CPU so that a seed gives the same image on every device
    return torch.randn(shape, generator=generator, dtype=torch.float32).to(device=device, dtype=dtype)


def diffpir_sample(x0_fn: Callable[[torch.Tensor, int], torch.Tensor], y: torch.Tensor, operator: LinearOperator,
                   x_init: torch.Tensor, config: DiffPIRConfig, schedule: LinearSchedule | None = None,
                   generator: torch.Generator | None = None,
                   callback: Callable[[int, int, int], None] | None = None) -> torch.Tensor:
    """Run DiffPIR. ``y`` and ``x_init`` are in [0, 1]; returns the restored image in [0, 1].

    ``x_init`` is the image the chain starts from (upstream: ``y`` for
    deblurring, the bicubic upsampling of ``y`` for SR, ``y * mask`` for
    inpainting), noised to ``t_start``.
    """
    sch = schedule or LinearSchedule()
    T = sch.num_train_timesteps
    device, dtype = y.device, y.dtype
    sac = sch.sqrt_alphas_cumprod.to(device)
    s1m = sch.sqrt_1m_alphas_cumprod.to(device)
    betas = sch.betas.to(device)
    rhos = diffpir_rhos(config.lambda_, config.noise_level, sch).to(device)
    t_start = T - 1 if config.t_start is None else int(config.t_start)
    seq = diffpir_sequence(config.steps, config.skip_type, T)
    ts = [T - 1 - s for s in seq]
    inpaint = isinstance(operator, Inpainting)

    x = sac[t_start] * (2 * x_init - 1) + s1m[t_start] * _randn(x_init.shape, generator, device, dtype)
    n = len(ts)
    for i, t in enumerate(ts):
        if t > t_start:
            continue
        last = i == n - 1
        x0 = x0_fn(x, t)
        if config.official_rng:
            _randn(x.shape, generator, device, dtype)  # p_sample's discarded noise
        if not last or config.use_last_x0:
            z = x0 / 2 + 0.5
            x0_hat = operator.data_solution(z, y, rhos[t]) * 2 - 1
            x0 = x0 + config.guidance_scale * (x0_hat - x0)
        if not last:
            tp = ts[i + 1]
            eps = (x - sac[t] * x0) / s1m[t]
            eta_sigma = config.eta * s1m[tp] / s1m[t] * torch.sqrt(betas[t])
            n1 = _randn(x.shape, generator, device, dtype)
            n2 = _randn(x.shape, generator, device, dtype)
            x = (sac[tp] * x0
                 + np.sqrt(1 - config.zeta) * (torch.sqrt(s1m[tp] ** 2 - eta_sigma ** 2) * eps + eta_sigma * n1)
                 + np.sqrt(config.zeta) * s1m[tp] * n2)
        elif config.use_last_x0:
            x = x0
        if callback is not None:
            callback(i, n, t)
    out = x / 2 + 0.5
    if inpaint:
        m = operator.mask.to(device=device, dtype=dtype).expand_as(out).bool()
        out = torch.where(m, y, out)
    return out
