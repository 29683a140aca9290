"""DiffBIR's ``spaced`` sampler: ancestral DDPM steps on a respaced schedule.

Timesteps: ``spaced_timesteps`` -- guided-diffusion's float stride with Python rounding (the official
``space_timesteps(num_timesteps, str(steps))``). The respaced betas are ``1 - abar_t / abar_prev`` over the
kept timesteps (float64), and each step takes the posterior mean of q(x_{t-1} | x_t, x0) plus
``sqrt(posterior variance) * noise`` (no noise on the last step; its noise is still drawn).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .common import (
    ModelFn,
    SamplerError,
    guided,
    randn_like,
    step_cfg_scale,
    uses_uncond,
)


def spaced_timesteps(num_timesteps: int, steps: int) -> np.ndarray:
    """The ``steps`` timesteps (ascending int64) kept from ``num_timesteps``: start at 0, advance by the
    float stride ``(num_timesteps - 1) / (steps - 1)`` and round each position half-to-even."""
    if steps < 1 or steps > num_timesteps:
        raise SamplerError(f"cannot take {steps} steps from {num_timesteps} timesteps")
    stride = 1 if steps == 1 else (num_timesteps - 1) / (steps - 1)
    position, kept = 0.0, []
    for _ in range(steps):
        kept.append(round(position))
        position += stride
    return np.array(sorted(set(kept)), dtype=np.int64)


@dataclass
class SpacedSchedule:
    """Respaced DDPM schedule (float64 arrays indexed by step, 0 = least noisy)."""

    timesteps: np.ndarray  # model timesteps, ascending
    alphas_cumprod: np.ndarray
    posterior_variance: np.ndarray
    posterior_mean_coef1: np.ndarray  # weight of x0 in the posterior mean
    posterior_mean_coef2: np.ndarray  # weight of x_t in the posterior mean

    @classmethod
    def from_betas(cls, betas: np.ndarray, steps: int) -> SpacedSchedule:
        train_ac = np.cumprod(1.0 - np.asarray(betas, dtype=np.float64))
        timesteps = spaced_timesteps(len(train_ac), steps)
        kept = train_ac[timesteps]
        previous = np.concatenate([[1.0], kept[:-1]])
        step_betas = np.array([1 - a / p for a, p in zip(kept, previous)], dtype=np.float64)
        step_alphas = 1.0 - step_betas
        ac = np.cumprod(step_alphas)
        ac_prev = np.append(1.0, ac[:-1])
        return cls(
            timesteps=timesteps,
            alphas_cumprod=ac,
            posterior_variance=step_betas * (1.0 - ac_prev) / (1.0 - ac),
            posterior_mean_coef1=step_betas * np.sqrt(ac_prev) / (1.0 - ac),
            posterior_mean_coef2=(1.0 - ac_prev) * np.sqrt(step_alphas) / (1.0 - ac),
        )


def _f32(values: np.ndarray | float, device) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32, device=device)


def predict_x0(x: torch.Tensor, out: torch.Tensor, ac: float, parameterization: str) -> torch.Tensor:
    """x0 from a model output: eps -> sqrt(1/abar) x - sqrt(1/abar - 1) eps; v -> sqrt(abar) x - sqrt(1-abar) v
    (float64 coefficients rounded to float32)."""
    with np.errstate(divide="ignore"):
        if parameterization == "eps":
            return _f32(np.sqrt(1.0 / ac), x.device) * x - _f32(np.sqrt(1.0 / ac - 1), x.device) * out
        return _f32(np.sqrt(ac), x.device) * x - _f32(np.sqrt(1 - ac), x.device) * out


def sample_spaced(model_fn: ModelFn, x: torch.Tensor, *, steps: int, betas: np.ndarray, parameterization: str,
                  cond, uncond, cfg_scale: float, rescale_cfg: bool = False,
                  generator: torch.Generator | None = None, cond_fn=None, progress=None) -> torch.Tensor:
    """Run the spaced sampler from ``x`` (= x_T). ``cond_fn(x0, t, index)`` may correct each x0 prediction
    before the posterior mean is taken."""
    sched = SpacedSchedule.from_betas(betas, steps)
    n, b = len(sched.timesteps), x.shape[0]
    for i in range(n):
        index = n - 1 - i
        step = int(sched.timesteps[index])
        model_t = torch.full((b,), step, dtype=torch.long, device=x.device)
        scale = step_cfg_scale(cfg_scale, step, rescale_cfg)
        out = model_fn(x, model_t, cond)
        if uses_uncond(uncond, scale):
            out = guided(out, model_fn(x, model_t, uncond), scale)
        x0 = predict_x0(x, out, sched.alphas_cumprod[index], parameterization)
        if cond_fn is not None:
            x0 = cond_fn(x0, step, index)
        mean = (_f32(sched.posterior_mean_coef1[index], x.device) * x0
                + _f32(sched.posterior_mean_coef2[index], x.device) * x)
        noise = randn_like(x, generator)
        std = torch.sqrt(_f32(sched.posterior_variance[index], x.device))
        x = mean + (float(index != 0) * std) * noise
        if progress is not None:
            progress(i, n, step)
    return x
