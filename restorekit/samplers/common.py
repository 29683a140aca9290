"""Pieces shared by the DiffBIR samplers: noise from a generator, classifier-free guidance, betas."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from ..errors import ConfigError

ModelFn = Callable[[torch.Tensor, torch.Tensor, Any], torch.Tensor]


class SamplerError(ConfigError):
    """A sampler was asked for something it cannot do (unknown name, bad steps or options)."""


# --------------------------------------------------------------------------------------------- noise
def randn_like(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Standard normal noise like ``x``: the numbers ``torch.randn_like(x)`` draws from the global RNG, but drawn
    from ``generator``."""
    if isinstance(generator, (list, tuple)):  # one generator per image: row k drawn as a one-image run draws it
        _check_rows(generator, x.shape[0])
        return torch.cat([randn_like(x[k:k + 1], g) for k, g in enumerate(generator)])
    if generator is None:
        return torch.randn_like(x)
    if generator.device == x.device:  # else (e.g. CPU generator, CUDA x): draw on the generator's device, move
        return torch.empty_like(x).normal_(generator=generator)
    return torch.empty_like(x, device=generator.device).normal_(generator=generator).to(x.device)


def _check_rows(generators, rows: int) -> None:
    if len(generators) != rows:
        raise SamplerError(f"{len(generators)} generators for a batch of {rows}")


def randn(shape: tuple, generator: torch.Generator | None, device=None) -> torch.Tensor:
    """float32 standard normal noise of ``shape`` (``torch.randn(shape)`` drawn from ``generator``). A list of
    generators, one per row of ``shape[0]``: row k is what generator k draws for a one-row ``shape``."""
    if isinstance(generator, (list, tuple)):
        _check_rows(generator, shape[0])
        return torch.cat([randn((1, *shape[1:]), g, device) for g in generator])
    if generator is None:
        return torch.randn(shape, dtype=torch.float32, device=device)
    out = torch.randn(shape, dtype=torch.float32, generator=generator, device=generator.device)
    return out.to(device) if device is not None else out


def random_seed(generator: torch.Generator | None) -> int | list[int]:
    """A seed in [0, 2**63 - 1), drawn as k-diffusion's BrownianTree noise sampler draws it (a list of
    generators: one seed from each)."""
    if isinstance(generator, (list, tuple)):
        return [random_seed(g) for g in generator]
    return int(torch.randint(0, 2**63 - 1, [], generator=generator).item())


# ----------------------------------------------------------------------------------- guidance
def rescaled_cfg_scale(cfg_scale: float, model_t: float) -> float:
    """DiffBIR's time-dependent guidance scale ``1 + s (1 - cos(pi ((1000 - t) / 1000)^5)) / 2``."""
    return 1 + cfg_scale * ((1 - math.cos(math.pi * ((1000 - model_t) / 1000) ** 5.0)) / 2)


def step_cfg_scale(cfg_scale: float, model_t: float, rescale_cfg: bool) -> float:
    """The guidance scale at model timestep ``model_t``: rescaled only when ``rescale_cfg`` and scale > 1."""
    if rescale_cfg and cfg_scale > 1:
        return rescaled_cfg_scale(cfg_scale, model_t)
    return cfg_scale


def guided(cond_out: torch.Tensor, uncond_out: torch.Tensor, scale: float) -> torch.Tensor:
    """Classifier-free guidance ``uncond + scale * (cond - uncond)``."""
    return uncond_out + scale * (cond_out - uncond_out)


def uses_uncond(uncond: Any, cfg_scale: float) -> bool:
    """Whether the unconditional branch is evaluated (not when ``uncond`` is None or the scale is 1)."""
    return uncond is not None and cfg_scale != 1.0


# -------------------------------------------------------------------------------------- betas
def diffbir_betas(zero_snr: bool = False, num_timesteps: int = 1000,
                  linear_start: float = 0.00085, linear_end: float = 0.012) -> np.ndarray:
    """DiffBIR's training betas (float64): SD's "linear" schedule (linspace of square roots, squared),
    rescaled to zero terminal SNR for v2.1 (``zero_snr=True``)."""
    betas = np.linspace(linear_start**0.5, linear_end**0.5, num_timesteps, dtype=np.float64) ** 2
    if zero_snr:
        betas = _zero_terminal_snr(betas)
    return betas


def _zero_terminal_snr(betas: np.ndarray) -> np.ndarray:
    """Shift and scale sqrt(alphas_cumprod) so the last is 0 and the first is kept (Lin et al. 2023)."""
    sqrt_ac = torch.from_numpy(1 - betas).cumprod(0).sqrt()
    first, last = sqrt_ac[0].clone(), sqrt_ac[-1].clone()
    sqrt_ac = (sqrt_ac - last) * (first / (first - last))
    ac = sqrt_ac**2
    alphas = torch.cat([ac[:1], ac[1:] / ac[:-1]])
    return (1 - alphas).numpy()


def check_common(name: str, steps: int, betas: np.ndarray, parameterization: str) -> np.ndarray:
    """Validate the options every sampler shares; returns betas as a float64 array."""
    if not isinstance(steps, (int, np.integer)) or isinstance(steps, bool) or steps < 1:
        raise SamplerError(f"sampler {name!r}: steps must be a positive integer, got {steps!r}")
    if parameterization not in ("eps", "v"):
        raise SamplerError(f"sampler {name!r}: parameterization must be 'eps' or 'v', got {parameterization!r}")
    betas = np.asarray(betas, dtype=np.float64)
    if betas.ndim != 1 or len(betas) < 2:
        raise SamplerError(f"sampler {name!r}: betas must be a 1-d array of training betas, got shape {betas.shape}")
    return betas
