"""DiffBIR's ``edm_*`` samplers: k-diffusion solvers on the discrete SD schedule seen as sigmas.

Schedule: timesteps ``linspace(T - 1, 0, steps, endpoint=False)`` truncated to int, sigma_i =
sqrt((1 - abar_t) / abar_t) with abar of the first (noisiest) entry replaced by 1e-8, then sigma = 0 (timestep
0) appended; float32. x_T is scaled by sqrt(1 + sigma_0^2). The denoiser feeds the model ``x / sqrt(sigma^2 + 1)``
and the timestep whose sigma is nearest to the requested one (so intermediate sigmas of Heun / DPM-2 / SDE
sub-steps map to a schedule timestep), and turns the output into x0: eps -> x - sigma eps; v -> x / (sigma^2 + 1)
- sigma v / sqrt(sigma^2 + 1). Guidance mixes the two x0 estimates with the (optionally rescaled) scale of that
timestep.
"""

from __future__ import annotations

import numpy as np
import torch

from . import k_solvers
from .common import ModelFn, guided, step_cfg_scale, uses_uncond

# official name (without "edm_") -> (solver, the options it takes)
SOLVERS = {
    "euler": (k_solvers.euler, ("s_churn", "s_tmin", "s_tmax", "s_noise")),
    "euler_a": (k_solvers.euler_ancestral, ("eta", "s_noise")),
    "heun": (k_solvers.heun, ("s_churn", "s_tmin", "s_tmax", "s_noise")),
    "dpm_2": (k_solvers.dpm_2, ("s_churn", "s_tmin", "s_tmax", "s_noise")),
    "dpm_2_a": (k_solvers.dpm_2_ancestral, ("eta", "s_noise")),
    "lms": (k_solvers.lms, ("order",)),
    "dpm++_2s_a": (k_solvers.dpmpp_2s_ancestral, ("eta", "s_noise")),
    "dpm++_sde": (k_solvers.dpmpp_sde, ("eta", "s_noise")),
    "dpm++_2m": (k_solvers.dpmpp_2m, ()),
    "dpm++_2m_sde": (k_solvers.dpmpp_2m_sde, ("eta", "s_noise")),
    "dpm++_3m_sde": (k_solvers.dpmpp_3m_sde, ("eta", "s_noise")),
}
RANDOM_SOLVERS = {"euler", "heun", "dpm_2", "euler_a", "dpm_2_a", "dpm++_2s_a", "dpm++_sde", "dpm++_2m_sde",
                  "dpm++_3m_sde"}  # draw noise (the churn samplers draw it every step even without churn)


def edm_schedule(betas: np.ndarray, steps: int, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """(sigmas float32 (steps + 1,), timesteps int64 (steps + 1,)), both ending in 0."""
    train_ac = np.cumprod(1.0 - np.asarray(betas, dtype=np.float64))
    timesteps = np.linspace(len(train_ac) - 1, 0, steps, endpoint=False).astype(int)
    ac = train_ac[timesteps].copy()
    ac[0] = 1e-8
    sigmas = np.append(((1 - ac) / ac) ** 0.5, 0)
    timesteps = np.append(timesteps, 0)
    return (torch.tensor(sigmas, dtype=torch.float32, device=device),
            torch.tensor(timesteps, dtype=torch.long, device=device))


def make_denoiser(model_fn: ModelFn, sigmas: torch.Tensor, timesteps: torch.Tensor, parameterization: str,
                  cond, uncond, cfg_scale: float, rescale_cfg: bool):
    """``denoiser(x, sigma[b]) -> x0`` wrapping the raw model as described in the module docstring."""
    def denoiser(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        c_in = 1 / (sigma**2 + 1.0) ** 0.5
        if parameterization == "eps":
            c_skip, c_out = torch.ones_like(sigma), -sigma
        else:
            c_skip, c_out = 1.0 / (sigma**2 + 1.0), -sigma / (sigma**2 + 1.0) ** 0.5
        model_t = timesteps[(sigma - sigmas[:, None]).abs().argmin(dim=0).view(sigma.shape)]
        scale = step_cfg_scale(cfg_scale, model_t[0].item(), rescale_cfg)
        c_in, c_out, c_skip = (c[(...,) + (None,) * (x.ndim - c.ndim)] for c in (c_in, c_out, c_skip))
        x_in = x * c_in
        out = model_fn(x_in, model_t, cond) * c_out + x * c_skip
        if uses_uncond(uncond, cfg_scale):
            out = guided(out, model_fn(x_in, model_t, uncond) * c_out + x * c_skip, scale)
        return out

    return denoiser


def sample_edm(solver: str, model_fn: ModelFn, x_T: torch.Tensor, *, steps: int, betas: np.ndarray,
               parameterization: str, cond, uncond, cfg_scale: float, rescale_cfg: bool = False,
               generator: torch.Generator | None = None, progress=None, **options) -> torch.Tensor:
    """Run ``edm_<solver>`` from ``x_T``; ``options`` (s_churn, s_tmin, s_tmax, s_noise, eta, order) are passed to
    the solvers that take them and ignored by the others."""
    fn, takes = SOLVERS[solver]
    sigmas, timesteps = edm_schedule(betas, steps, device=x_T.device)
    denoiser = make_denoiser(model_fn, sigmas, timesteps, parameterization, cond, uncond, cfg_scale, rescale_cfg)
    kwargs = {k: options[k] for k in takes}
    if solver in RANDOM_SOLVERS:
        kwargs["generator"] = generator
    callback = None
    if progress is not None:
        def callback(i, n, sigma):
            progress(i, n, int(timesteps[i]))
    x = x_T * torch.sqrt(1.0 + sigmas[0] ** 2.0)
    return fn(denoiser, x, sigmas, callback=callback, **kwargs)
