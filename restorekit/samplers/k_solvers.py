"""k-diffusion-style ODE/SDE solvers over a decreasing sigma sequence ending in 0 (Karras et al. 2022;
DPM-Solver++, Lu et al. 2022), as DiffBIR's ``edm_*`` samplers run them.

``denoiser(x, sigma)`` returns the x0 estimate; ``sigmas`` is a float32 tensor. ``noise(sigma, sigma_next)``
returns standard normal noise for a step: a fresh draw (``GaussianNoise``) or a Brownian-tree increment
(``BrownianNoise``, used by the SDE solvers).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import numpy as np
import torch

from .common import SamplerError, randn_like, random_seed

Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


# ------------------------------------------------------------------------------------- noise sources
class GaussianNoise:
    """A fresh ``randn_like(x)`` from the generator at every call."""

    def __init__(self, x: torch.Tensor, generator: torch.Generator | None):
        self.x, self.generator = x, generator

    def __call__(self, sigma, sigma_next) -> torch.Tensor:
        return randn_like(self.x, self.generator)


class BrownianNoise:
    """Normalised increments ``(W(sigma_next) - W(sigma)) / sqrt(|sigma_next - sigma|)`` of one
    ``torchsde.BrownianTree`` on [sigma_min, sigma_max], seeded by a 63-bit integer drawn from the generator
    (a list of generators: one tree per image, seeded from its own generator)."""

    def __init__(self, x: torch.Tensor, sigma_min, sigma_max, generator: torch.Generator | None):
        self.seed = random_seed(generator)  # drawn now (RNG order); the tree is built on first use
        self.x, self.range = x, (torch.as_tensor(sigma_min), torch.as_tensor(sigma_max))
        self.trees = None

    def _build(self):
        try:
            import torchsde
        except ImportError as exc:
            raise SamplerError("the edm_dpm++_sde / _2m_sde / _3m_sde samplers need torchsde "
                               "(pip install torchsde)") from exc

        lo, hi = self.range
        self.flip = 1 if lo < hi else -1
        if self.flip < 0:
            lo, hi = hi, lo
        # one tree for the batch, or (a list of seeds) one per image: the tree of that image's one-image run
        parts = ([(self.x[k:k + 1], s) for k, s in enumerate(self.seed)] if isinstance(self.seed, list)
                 else [(self.x, self.seed)])
        self.trees = [torchsde.BrownianTree(lo, torch.zeros_like(x), hi, entropy=s) for x, s in parts]

    def __call__(self, sigma, sigma_next) -> torch.Tensor:
        if self.trees is None:
            self._build()
        a, b = torch.as_tensor(sigma), torch.as_tensor(sigma_next)
        lo, hi, flip = (a, b, 1) if a < b else (b, a, -1)
        with warnings.catch_warnings():  # queries can sit a float32 ulp outside the tree's interval
            warnings.filterwarnings("ignore", message="Should have", category=UserWarning)
            w = torch.cat([t(lo, hi) for t in self.trees]) * (self.flip * flip)
        return w / (b - a).abs().sqrt()


# ------------------------------------------------------------------------------------------- helpers
def _bcast(v: torch.Tensor, ndim: int) -> torch.Tensor:
    return v[(...,) + (None,) * (ndim - v.ndim)]


def derivative(x: torch.Tensor, sigma, denoised: torch.Tensor) -> torch.Tensor:
    """The probability-flow ODE slope dx/dsigma = (x - D(x)) / sigma."""
    return (x - denoised) / _bcast(sigma, x.ndim)


def ancestral_split(sigma_from, sigma_to, eta: float = 1.0):
    """(sigma_down, sigma_up): deterministic target and added-noise std of an ancestral step."""
    if not eta:
        return sigma_to, 0.0
    sigma_up = min(sigma_to, eta * (sigma_to**2 * (sigma_from**2 - sigma_to**2) / sigma_from**2) ** 0.5)
    sigma_down = (sigma_to**2 - sigma_up**2) ** 0.5
    return sigma_down, sigma_up


def churn_gamma(sigmas, i: int, s_churn: float, s_tmin: float, s_tmax: float) -> float:
    """Karras' noise-increase factor for step i: min(s_churn / n, sqrt(2) - 1) inside [s_tmin, s_tmax], else 0."""
    if s_tmin <= sigmas[i] <= s_tmax:
        return min(s_churn / (len(sigmas) - 1), 2**0.5 - 1)
    return 0.0


def _log_sigma_to_t(sigma):
    return sigma.log().neg()


def _t_to_sigma(t):
    return t.neg().exp()


def _batch(sigma, x):
    return sigma * x.new_ones([x.shape[0]])


def _churned(x, sigmas, i, gamma, s_noise, generator):
    """Raise the noise level of x from sigma_i to sigma_hat = sigma_i (1 + gamma); noise is drawn every step."""
    eps = randn_like(x, generator) * s_noise
    sigma_hat = sigmas[i] * (gamma + 1)
    if gamma > 0:
        x = x + eps * (sigma_hat**2 - sigmas[i] ** 2) ** 0.5
    return x, sigma_hat


# ------------------------------------------------------------------------------------------- solvers
def euler(denoiser: Denoiser, x, sigmas, *, generator=None, s_churn=0.0, s_tmin=0.0, s_tmax=float("inf"),
          s_noise=1.0, callback=None):
    """Euler steps with optional churn (Karras Alg. 2 without the Heun correction)."""
    for i in range(len(sigmas) - 1):
        gamma = churn_gamma(sigmas, i, s_churn, s_tmin, s_tmax)
        x, sigma_hat = _churned(x, sigmas, i, gamma, s_noise, generator)
        d = derivative(x, sigma_hat, denoiser(x, _batch(sigma_hat, x)))
        x = x + d * (sigmas[i + 1] - sigma_hat)
        _report(callback, i, sigmas)
    return x


def heun(denoiser: Denoiser, x, sigmas, *, generator=None, s_churn=0.0, s_tmin=0.0, s_tmax=float("inf"),
         s_noise=1.0, callback=None):
    """Karras Alg. 2: Euler predictor + trapezoidal corrector (Euler on the last step to sigma = 0)."""
    for i in range(len(sigmas) - 1):
        gamma = churn_gamma(sigmas, i, s_churn, s_tmin, s_tmax)
        x, sigma_hat = _churned(x, sigmas, i, gamma, s_noise, generator)
        d = derivative(x, sigma_hat, denoiser(x, _batch(sigma_hat, x)))
        dt = sigmas[i + 1] - sigma_hat
        if sigmas[i + 1] == 0:
            x = x + d * dt
        else:
            x_pred = x + d * dt
            d_pred = derivative(x_pred, sigmas[i + 1], denoiser(x_pred, _batch(sigmas[i + 1], x)))
            x = x + ((d + d_pred) / 2) * dt
        _report(callback, i, sigmas)
    return x


def dpm_2(denoiser: Denoiser, x, sigmas, *, generator=None, s_churn=0.0, s_tmin=0.0, s_tmax=float("inf"),
          s_noise=1.0, callback=None):
    """Second-order midpoint steps in log sigma (DPM-Solver-2 style), with optional churn."""
    for i in range(len(sigmas) - 1):
        gamma = churn_gamma(sigmas, i, s_churn, s_tmin, s_tmax)
        x, sigma_hat = _churned(x, sigmas, i, gamma, s_noise, generator)
        d = derivative(x, sigma_hat, denoiser(x, _batch(sigma_hat, x)))
        if sigmas[i + 1] == 0:
            x = x + d * (sigmas[i + 1] - sigma_hat)
        else:
            x = _midpoint_step(denoiser, x, d, sigma_hat, sigmas[i + 1])
        _report(callback, i, sigmas)
    return x


def _midpoint_step(denoiser, x, d, sigma, sigma_to):
    sigma_mid = sigma.log().lerp(sigma_to.log(), 0.5).exp()
    x_mid = x + d * (sigma_mid - sigma)
    d_mid = derivative(x_mid, sigma_mid, denoiser(x_mid, _batch(sigma_mid, x)))
    return x + d_mid * (sigma_to - sigma)


def euler_ancestral(denoiser: Denoiser, x, sigmas, *, generator=None, eta=1.0, s_noise=1.0, callback=None):
    """Euler step to sigma_down, then noise of std sigma_up (none on the last step)."""
    noise = GaussianNoise(x, generator)
    for i in range(len(sigmas) - 1):
        denoised = denoiser(x, _batch(sigmas[i], x))
        sigma_down, sigma_up = ancestral_split(sigmas[i], sigmas[i + 1], eta)
        x = x + derivative(x, sigmas[i], denoised) * (sigma_down - sigmas[i])
        if sigmas[i + 1] > 0:
            x = x + noise(sigmas[i], sigmas[i + 1]) * s_noise * sigma_up
        _report(callback, i, sigmas)
    return x


def dpm_2_ancestral(denoiser: Denoiser, x, sigmas, *, generator=None, eta=1.0, s_noise=1.0, callback=None):
    """Midpoint step to sigma_down, then noise of std sigma_up (Euler and no noise when sigma_down = 0)."""
    noise = GaussianNoise(x, generator)
    for i in range(len(sigmas) - 1):
        denoised = denoiser(x, _batch(sigmas[i], x))
        sigma_down, sigma_up = ancestral_split(sigmas[i], sigmas[i + 1], eta)
        d = derivative(x, sigmas[i], denoised)
        if sigma_down == 0:
            x = x + d * (sigma_down - sigmas[i])
        else:
            x = _midpoint_step(denoiser, x, d, sigmas[i], sigma_down)
            x = x + noise(sigmas[i], sigmas[i + 1]) * s_noise * sigma_up
        _report(callback, i, sigmas)
    return x


def lms_coefficient(order: int, sigmas: np.ndarray, i: int, j: int) -> float:
    """Integral over [sigma_i, sigma_{i+1}] of the Lagrange basis polynomial of node i-j among nodes i..i-order+1
    (adaptive quadrature, relative tolerance 1e-4)."""
    def basis(tau):
        value = 1.0
        for k in range(order):
            if k != j:
                value *= (tau - sigmas[i - k]) / (sigmas[i - j] - sigmas[i - k])
        return value

    from scipy import integrate  # only the LMS sampler needs it (keeps importing the samplers light)

    return integrate.quad(basis, sigmas[i], sigmas[i + 1], epsrel=1e-4)[0]


def lms(denoiser: Denoiser, x, sigmas, *, order: int = 4, callback=None):
    """Linear multistep: x += sum_j c_j d_{i-j} over the last ``order`` slopes (fewer at the start)."""
    nodes = sigmas.detach().cpu().numpy()
    slopes: list[torch.Tensor] = []
    for i in range(len(sigmas) - 1):
        slopes = (slopes + [derivative(x, sigmas[i], denoiser(x, _batch(sigmas[i], x)))])[-order:]
        cur = min(i + 1, order)
        coeffs = [lms_coefficient(cur, nodes, i, j) for j in range(cur)]
        x = x + sum(c * d for c, d in zip(coeffs, reversed(slopes)))
        _report(callback, i, sigmas)
    return x


def dpmpp_2s_ancestral(denoiser: Denoiser, x, sigmas, *, generator=None, eta=1.0, s_noise=1.0, callback=None):
    """DPM-Solver++(2S) single-step to sigma_down with the midpoint in log sigma, then ancestral noise."""
    noise = GaussianNoise(x, generator)
    for i in range(len(sigmas) - 1):
        denoised = denoiser(x, _batch(sigmas[i], x))
        sigma_down, sigma_up = ancestral_split(sigmas[i], sigmas[i + 1], eta)
        if sigma_down == 0:
            x = x + derivative(x, sigmas[i], denoised) * (sigma_down - sigmas[i])
        else:
            t, t_next = _log_sigma_to_t(sigmas[i]), _log_sigma_to_t(sigma_down)
            h = t_next - t
            s = t + 0.5 * h
            x_mid = (_t_to_sigma(s) / _t_to_sigma(t)) * x - (-h * 0.5).expm1() * denoised
            denoised_mid = denoiser(x_mid, _batch(_t_to_sigma(s), x))
            x = (_t_to_sigma(t_next) / _t_to_sigma(t)) * x - (-h).expm1() * denoised_mid
        if sigmas[i + 1] > 0:
            x = x + noise(sigmas[i], sigmas[i + 1]) * s_noise * sigma_up
        _report(callback, i, sigmas)
    return x


def _positive_range(sigmas):
    return sigmas[sigmas > 0].min(), sigmas.max()


def dpmpp_sde(denoiser: Denoiser, x, sigmas, *, generator=None, eta=1.0, s_noise=1.0, r=0.5, callback=None):
    """DPM-Solver++ SDE: two stochastic sub-steps per step (at ratio r in log sigma), Brownian-tree noise."""
    noise = BrownianNoise(x, *_positive_range(sigmas), generator)
    for i in range(len(sigmas) - 1):
        denoised = denoiser(x, _batch(sigmas[i], x))
        if sigmas[i + 1] == 0:
            x = x + derivative(x, sigmas[i], denoised) * (sigmas[i + 1] - sigmas[i])
        else:
            t, t_next = _log_sigma_to_t(sigmas[i]), _log_sigma_to_t(sigmas[i + 1])
            h = t_next - t
            s = t + h * r
            fac = 1 / (2 * r)
            sd, su = ancestral_split(_t_to_sigma(t), _t_to_sigma(s), eta)
            s_ = _log_sigma_to_t(sd)
            x_mid = (_t_to_sigma(s_) / _t_to_sigma(t)) * x - (t - s_).expm1() * denoised
            x_mid = x_mid + noise(_t_to_sigma(t), _t_to_sigma(s)) * s_noise * su
            denoised_mid = denoiser(x_mid, _batch(_t_to_sigma(s), x))
            sd, su = ancestral_split(_t_to_sigma(t), _t_to_sigma(t_next), eta)
            t_next_ = _log_sigma_to_t(sd)
            mixed = (1 - fac) * denoised + fac * denoised_mid
            x = (_t_to_sigma(t_next_) / _t_to_sigma(t)) * x - (t - t_next_).expm1() * mixed
            x = x + noise(_t_to_sigma(t), _t_to_sigma(t_next)) * s_noise * su
        _report(callback, i, sigmas)
    return x


def dpmpp_2m(denoiser: Denoiser, x, sigmas, *, callback=None):
    """DPM-Solver++(2M): exponential-integrator steps with a second-order correction from the previous x0."""
    previous = None
    for i in range(len(sigmas) - 1):
        denoised = denoiser(x, _batch(sigmas[i], x))
        t, t_next = _log_sigma_to_t(sigmas[i]), _log_sigma_to_t(sigmas[i + 1])
        h = t_next - t
        if previous is None or sigmas[i + 1] == 0:
            target = denoised
        else:
            r = (t - _log_sigma_to_t(sigmas[i - 1])) / h
            target = (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * previous
        x = (_t_to_sigma(t_next) / _t_to_sigma(t)) * x - (-h).expm1() * target
        previous = denoised
        _report(callback, i, sigmas)
    return x


def dpmpp_2m_sde(denoiser: Denoiser, x, sigmas, *, generator=None, eta=1.0, s_noise=1.0, callback=None):
    """DPM-Solver++(2M) SDE, midpoint variant; the last step returns the x0 estimate."""
    noise = BrownianNoise(x, *_positive_range(sigmas), generator)
    previous, h_last = None, None
    for i in range(len(sigmas) - 1):
        denoised = denoiser(x, _batch(sigmas[i], x))
        h = None
        if sigmas[i + 1] == 0:
            x = denoised
        else:
            h = (-sigmas[i + 1].log()) - (-sigmas[i].log())
            eta_h = eta * h
            x = sigmas[i + 1] / sigmas[i] * (-eta_h).exp() * x + (-h - eta_h).expm1().neg() * denoised
            if previous is not None:
                x = x + 0.5 * (-h - eta_h).expm1().neg() * (1 / (h_last / h)) * (denoised - previous)
            if eta:
                x = x + noise(sigmas[i], sigmas[i + 1]) * sigmas[i + 1] * (-2 * eta_h).expm1().neg().sqrt() * s_noise
        previous, h_last = denoised, h
        _report(callback, i, sigmas)
    return x


def dpmpp_3m_sde(denoiser: Denoiser, x, sigmas, *, generator=None, eta=1.0, s_noise=1.0, callback=None):
    """DPM-Solver++(3M) SDE: third-order multistep with Brownian-tree noise; the last step returns the x0
    estimate."""
    noise = BrownianNoise(x, *_positive_range(sigmas), generator)
    d_1 = d_2 = None  # previous two x0 estimates
    h_1 = h_2 = None  # previous two step sizes in log sigma
    for i in range(len(sigmas) - 1):
        denoised = denoiser(x, _batch(sigmas[i], x))
        h = None
        if sigmas[i + 1] == 0:
            x = denoised
        else:
            h = (-sigmas[i + 1].log()) - (-sigmas[i].log())
            h_eta = h * (eta + 1)
            x = torch.exp(-h_eta) * x + (-h_eta).expm1().neg() * denoised
            phi_2 = h_eta.neg().expm1() / h_eta + 1
            if h_2 is not None:
                r0, r1 = h_1 / h, h_2 / h
                slope_0 = (denoised - d_1) / r0
                slope_1 = (d_1 - d_2) / r1
                first = slope_0 + (slope_0 - slope_1) * r0 / (r0 + r1)
                second = (slope_0 - slope_1) / (r0 + r1)
                phi_3 = phi_2 / h_eta - 0.5
                x = x + phi_2 * first - phi_3 * second
            elif h_1 is not None:
                x = x + phi_2 * ((denoised - d_1) / (h_1 / h))
            if eta:
                x = x + noise(sigmas[i], sigmas[i + 1]) * sigmas[i + 1] * (-2 * h * eta).expm1().neg().sqrt() * s_noise
        d_1, d_2 = denoised, d_1
        h_1, h_2 = h, h_1
        _report(callback, i, sigmas)
    return x


def _report(callback, i, sigmas):
    if callback is not None:
        callback(i, len(sigmas) - 1, sigmas[i])
