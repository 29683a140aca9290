"""DiffBIR's ``dpm++_m2`` sampler: multistep DPM-Solver++ of order 2 (Lu et al. 2022) in continuous time.

The discrete schedule becomes a piecewise-linear log(alpha_t) over t in {1/N, 2/N, ..., 1} (float32, from
the float32 betas), with the noisiest entries cut where the half log-SNR drops below -5.1 (N shrinks; the
zero-terminal-SNR schedule loses its last entries). Times are ``linspace(1, 1/N, steps + 1)``, the model
sees ``1000 (t - 1/N)`` as a float. First step order 1, then order 2; with fewer than 10 steps the last step is
order 1 again. Guidance is applied to eps; ``rescale_cfg`` rescales by the continuous model time. No randomness
is used after x_T.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from .common import ModelFn, SamplerError, guided


class ContinuousVPSchedule:
    """log(alpha_t) of a discrete VP schedule, linearly interpolated in t (extrapolated past the ends)."""

    def __init__(self, betas: np.ndarray, device=None):
        log_alpha = 0.5 * torch.log(1 - torch.tensor(betas, dtype=torch.float32, device=device)).cumsum(dim=0)
        log_alpha = self._cut_low_snr(log_alpha)
        self.log_alpha = log_alpha
        self.total_n = len(log_alpha)
        self.t_grid = torch.linspace(0.0, 1.0, self.total_n + 1)[1:].to(device=device, dtype=torch.float32)

    @staticmethod
    def _cut_low_snr(log_alpha: torch.Tensor, min_lambda: float = -5.1) -> torch.Tensor:
        log_sigma = 0.5 * torch.log(1.0 - torch.exp(2.0 * log_alpha))
        half_log_snr = log_alpha - log_sigma
        n_cut = int(torch.searchsorted(torch.flip(half_log_snr, [0]), min_lambda))
        return log_alpha[:-n_cut] if n_cut > 0 else log_alpha

    def log_mean_coeff(self, t: torch.Tensor) -> torch.Tensor:
        """log(alpha_t) for a 0-d or 1-d ``t`` (returns 1-d)."""
        t = t.reshape(-1)
        grid, values = self.t_grid.to(t.device), self.log_alpha.to(t.device)
        k = len(grid)
        segment = (torch.searchsorted(grid, t.contiguous()) - 1).clamp(0, k - 2)
        x0, x1 = grid[segment], grid[segment + 1]
        y0, y1 = values[segment], values[segment + 1]
        return y0 + (t - x0) * (y1 - y0) / (x1 - x0)

    def alpha(self, t):
        return torch.exp(self.log_mean_coeff(t))

    def std(self, t):
        return torch.sqrt(1.0 - torch.exp(2.0 * self.log_mean_coeff(t)))

    def half_log_snr(self, t):
        lmc = self.log_mean_coeff(t)
        return lmc - 0.5 * torch.log(1.0 - torch.exp(2.0 * lmc))


def _bcast(v: torch.Tensor, ndim: int) -> torch.Tensor:
    return v[(...,) + (None,) * (ndim - v.ndim)]


def sample_dpmpp_m2(model_fn: ModelFn, x: torch.Tensor, *, steps: int, betas: np.ndarray, parameterization: str,
                    cond, uncond, cfg_scale: float, rescale_cfg: bool = False, progress=None) -> torch.Tensor:
    """Run multistep DPM-Solver++(2M) from ``x`` (= x_T)."""
    if steps < 2:
        raise SamplerError("dpm++_m2 needs at least 2 steps (its order)")
    ns = ContinuousVPSchedule(betas, device=x.device)
    t_end = 1.0 / ns.total_n
    times = torch.linspace(1.0, t_end, steps + 1).to(x.device)

    def noise_prediction(x, t):
        t_b = t.expand((x.shape[0],))
        model_t = (t_b - t_end) * 1000.0

        def eps_of(c):
            out = model_fn(x, model_t, c)
            if parameterization == "v":
                return _bcast(ns.alpha(t_b), x.ndim) * out + _bcast(ns.std(t_b), x.ndim) * x
            return out

        if cfg_scale == 1.0 or uncond is None:
            return eps_of(cond)
        eps_uncond, eps_cond = eps_of(uncond), eps_of(cond)
        scale = cfg_scale
        if rescale_cfg:  # all samples share t; the angle is computed in float32 like the model time
            angle = float((math.pi * ((1000 - model_t[:1]) / 1000) ** 5.0).item())
            scale = 1 + cfg_scale * ((1 - math.cos(angle)) / 2)
        return guided(eps_cond, eps_uncond, scale)

    def data_prediction(x, t):
        eps = noise_prediction(x, t)
        return (x - ns.std(t) * eps) / ns.alpha(t)

    def first_order(x, s, t, x0_s):
        h = ns.half_log_snr(t) - ns.half_log_snr(s)
        return ns.std(t) / ns.std(s) * x - ns.alpha(t) * torch.expm1(-h) * x0_s

    def second_order(x, t_prev1, t_prev0, t, x0_prev1, x0_prev0):
        lam1, lam0, lam = ns.half_log_snr(t_prev1), ns.half_log_snr(t_prev0), ns.half_log_snr(t)
        h0, h = lam0 - lam1, lam - lam0
        d1 = (1.0 / (h0 / h)) * (x0_prev0 - x0_prev1)
        phi = ns.alpha(t) * torch.expm1(-h)
        return (ns.std(t) / ns.std(t_prev0)) * x - phi * x0_prev0 - 0.5 * phi * d1

    t_prev = [times[0]]
    x0_prev = [data_prediction(x, times[0])]
    for step in range(1, steps + 1):
        t = times[step]
        order = 1 if step == 1 or (steps < 10 and step == steps) else 2
        if order == 1:
            x = first_order(x, t_prev[-1], t, x0_prev[-1])
        else:
            x = second_order(x, t_prev[-2], t_prev[-1], t, x0_prev[-2], x0_prev[-1])
        t_prev = (t_prev + [t])[-2:]
        if step < steps:
            x0_prev = (x0_prev + [data_prediction(x, t)])[-2:]
        if progress is not None:
            progress(step - 1, steps, float((t - t_end) * 1000.0))
    return x
