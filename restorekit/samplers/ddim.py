"""DiffBIR's ``ddim`` sampler (DDIM, Song et al. 2021).

Timesteps ``range(0, T, T // steps) + 1`` (LDM's "uniform" discretisation); the previous alpha of the last
step is ``abar_0``. v outputs are turned into eps. Each step draws one noise tensor (scaled by sigma_t, which
is 0 for eta = 0). The official pipeline always builds this sampler with eta = 0.
"""

from __future__ import annotations

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


def ddim_timesteps(num_timesteps: int, steps: int) -> np.ndarray:
    """``range(0, num_timesteps, num_timesteps // steps) + 1``; its length can differ from ``steps``."""
    stride = num_timesteps // steps
    if stride < 1:
        raise SamplerError(f"ddim: cannot take {steps} steps from {num_timesteps} timesteps")
    timesteps = np.arange(0, num_timesteps, stride, dtype=np.int64) + 1
    if timesteps[-1] >= num_timesteps:
        raise SamplerError(f"ddim: {steps} steps give timestep {timesteps[-1]}, beyond the schedule "
                           f"(the official code fails the same way); choose a step count dividing {num_timesteps} "
                           "more evenly")
    return timesteps


def sample_ddim(model_fn: ModelFn, x: torch.Tensor, *, steps: int, betas: np.ndarray, parameterization: str,
                cond, uncond, cfg_scale: float, rescale_cfg: bool = False, eta: float = 0.0,
                generator: torch.Generator | None = None, progress=None) -> torch.Tensor:
    """Run DDIM from ``x`` (= x_T) with stochasticity ``eta``."""
    train_ac = np.cumprod(1.0 - np.asarray(betas, dtype=np.float64))
    timesteps = ddim_timesteps(len(train_ac), steps)
    a = train_ac[timesteps]
    a_prev = np.concatenate([train_ac[:1], train_ac[timesteps[:-1]]])
    sigmas = eta * np.sqrt((1 - a_prev) / (1 - a) * (1 - a / a_prev))

    def f32(v):
        return torch.tensor(v, dtype=torch.float32, device=x.device)

    n, b = len(timesteps), x.shape[0]
    for i in range(n):
        index = n - 1 - i
        step = int(timesteps[index])
        model_t = torch.full((b,), step, dtype=torch.long, device=x.device)
        scale = step_cfg_scale(cfg_scale, step, rescale_cfg)
        out = model_fn(x, model_t, cond)
        if uses_uncond(uncond, scale):
            out = guided(out, model_fn(x, model_t, uncond), scale)
        sqrt_1m_a = f32(np.sqrt(1.0 - a[index]))
        eps = out if parameterization == "eps" else f32(np.sqrt(a[index])) * out + sqrt_1m_a * x
        a_t, a_p, sigma_t = f32(a[index]), f32(a_prev[index]), f32(sigmas[index])
        x0 = (x - sqrt_1m_a * eps) / a_t.sqrt()
        direction = (1.0 - a_p - sigma_t**2).sqrt() * eps
        x = a_p.sqrt() * x0 + direction + sigma_t * randn_like(x, generator)
        if progress is not None:
            progress(i, n, step)
    return x
