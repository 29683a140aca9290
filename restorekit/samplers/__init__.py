"""DiffBIR's samplers under their official names, behind one function, :func:`sample`.

``sample(name, model_fn, x_T, shape, steps=..., betas=..., parameterization=..., cond=..., uncond=...,
cfg_scale=..., generator=...)`` returns the final latent. ``model_fn(x, t, cond)`` is the raw model (eps or v
output); ``t`` is a ``long`` tensor of timesteps, except for ``dpm++_m2`` which passes the continuous model time
as a float tensor. All randomness (x_T when it is None, per-step noise, Brownian-tree seeds) comes from
``generator``: with a CPU generator seeded s the result equals the official DiffBIR sampler run after
``torch.manual_seed(s)`` (tests/test_samplers.py, float32, max abs difference < 1e-5).

Options each sampler takes (the others are ignored, as in the official pipeline): ``edm_euler`` / ``edm_heun`` /
``edm_dpm_2``: s_churn, s_tmin, s_tmax, s_noise; ``edm_euler_a`` / ``edm_dpm_2_a`` / ``edm_dpm++_2s_a`` /
``edm_dpm++_sde`` / ``edm_dpm++_2m_sde`` / ``edm_dpm++_3m_sde``: eta, s_noise; ``edm_lms``: order.
``ddim`` runs with eta = 0, as the official pipeline builds it (``sample_ddim`` takes other values).
Only ``spaced`` applies ``cond_fn``.
"""

from __future__ import annotations

import numpy as np
import torch

from .common import (
    SamplerError,
    check_common,
    diffbir_betas,
    randn,
    randn_like,
    rescaled_cfg_scale,
)
from .ddim import ddim_timesteps, sample_ddim
from .dpm_solver import ContinuousVPSchedule, sample_dpmpp_m2
from .edm import SOLVERS as EDM_SOLVERS
from .edm import edm_schedule, sample_edm
from .spaced import SpacedSchedule, sample_spaced, spaced_timesteps

SAMPLER_NAMES: tuple[str, ...] = ("spaced", "ddim", "dpm++_m2") + tuple("edm_" + k for k in EDM_SOLVERS)

__all__ = [
    "SAMPLER_NAMES",
    "ContinuousVPSchedule",
    "SamplerError",
    "SpacedSchedule",
    "ddim_timesteps",
    "diffbir_betas",
    "edm_schedule",
    "randn",
    "randn_like",
    "rescaled_cfg_scale",
    "sample",
    "sample_ddim",
    "sample_dpmpp_m2",
    "sample_edm",
    "sample_spaced",
    "spaced_timesteps",
]


def sample(name: str, model_fn, x_T: torch.Tensor | None, shape: tuple, *, steps: int, betas: np.ndarray,
           parameterization: str, cond, uncond, cfg_scale: float, rescale_cfg: bool = False,
           generator: torch.Generator | None = None, s_churn: float = 0.0, s_tmin: float = 0.0,
           s_tmax: float = 300.0, s_noise: float = 1.0, eta: float = 1.0, order: int = 1, cond_fn=None,
           progress=None) -> torch.Tensor:
    """Run sampler ``name`` (one of :data:`SAMPLER_NAMES`) and return x_0. x_T None: drawn from ``generator``
    (float32, ``shape``)."""
    if name not in SAMPLER_NAMES:
        raise SamplerError(f"unknown sampler {name!r}; choose one of: {', '.join(SAMPLER_NAMES)}")

    betas = check_common(name, steps, betas, parameterization)
    if name == "edm_lms" and (not isinstance(order, (int, np.integer)) or order < 1):
        raise SamplerError(f"edm_lms: order must be a positive integer, got {order!r}")
    if x_T is None:
        x_T = randn(tuple(shape), generator)
    common = {"steps": steps, "betas": betas, "parameterization": parameterization, "cond": cond, "uncond": uncond,
              "cfg_scale": cfg_scale, "rescale_cfg": rescale_cfg, "progress": progress}
    with torch.no_grad():
        if name == "spaced":
            return sample_spaced(model_fn, x_T, generator=generator, cond_fn=cond_fn, **common)
        if name == "ddim":
            return sample_ddim(model_fn, x_T, eta=0.0, generator=generator, **common)
        if name == "dpm++_m2":
            return sample_dpmpp_m2(model_fn, x_T, **common)
        return sample_edm(name[len("edm_"):], model_fn, x_T, generator=generator, s_churn=s_churn, s_tmin=s_tmin,
                          s_tmax=s_tmax, s_noise=s_noise, eta=eta, order=order, **common)
