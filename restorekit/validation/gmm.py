"""Gaussian-mixture toy problems with exact posteriors, to check diffusion samplers (MCGdiff's setup).

Prior: 25 equally spaced isotropic Gaussians in dimension ``d`` with means
``scale * (i, j, i, j, ...)``, i, j in {-2..2}, random weights. Observation:
``y = A z + sigma n`` with a random ``A`` (random orthogonal factors, singular
values in (0, 1]). Because the prior is a mixture of Gaussians, both the MMSE
denoiser E[x0 | x_t] (what a perfect diffusion network computes) and the
posterior p(z | y) are mixtures in closed form, so a sampler's output can be
compared with exact posterior samples (sliced Wasserstein distance).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class GMMProblem:
    means: torch.Tensor  # (K, d) in z-space ([0, 1] "image" units)
    std: float  # component std in z-space
    weights: torch.Tensor  # (K,)
    A: torch.Tensor  # (m, d)
    sigma: float
    y: torch.Tensor  # (m,)

    @property
    def d(self) -> int:
        return self.means.shape[1]


def make_problem(d: int = 8, m: int = 2, sigma: float = 0.05, seed: int = 0, spread: float = 0.1,
                 std: float = 0.025) -> GMMProblem:
    g = torch.Generator().manual_seed(seed)
    grid = torch.tensor([(i, j) for i in range(-2, 3) for j in range(-2, 3)], dtype=torch.float64)
    means = 0.5 + spread * grid.repeat(1, (d + 1) // 2)[:, :d]
    w = torch.rand(25, generator=g, dtype=torch.float64) + 0.1
    w = w / w.sum()
    U, _ = torch.linalg.qr(torch.randn(m, m, generator=g, dtype=torch.float64))
    V, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
    s = torch.sort(torch.rand(m, generator=g, dtype=torch.float64) * 0.9 + 0.1, descending=True).values
    A = U @ torch.cat([torch.diag(s), torch.zeros(m, d - m, dtype=torch.float64)], 1) @ V.T
    k = int(torch.multinomial(w, 1, generator=g))
    z = means[k] + std * torch.randn(d, generator=g, dtype=torch.float64)
    y = A @ z + sigma * torch.randn(m, generator=g, dtype=torch.float64)
    return GMMProblem(means, std, w, A, sigma, y)


def _log_normal_iso(x, mu, var):
    # log N(x; mu, var I) up to the shared constant, for x (N, d) and mu (K, d)
    d2 = ((x[:, None, :] - mu[None]) ** 2).sum(-1)
    return -0.5 * d2 / var - 0.5 * x.shape[1] * np.log(var)


def mmse_x0(prob: GMMProblem, x_t: torch.Tensor, abar: float) -> torch.Tensor:
    """E[x0 | x_t] in the sampler's x = 2z - 1 space, for x_t = sqrt(abar) x0 + sqrt(1 - abar) eps."""
    mu = 2 * prob.means - 1
    c2 = (2 * prob.std) ** 2
    xt = x_t.reshape(x_t.shape[0], -1).double()
    var = abar * c2 + 1 - abar
    logr = torch.log(prob.weights)[None] + _log_normal_iso(xt, np.sqrt(abar) * mu, var)
    r = torch.softmax(logr, dim=1)  # (N, K)
    cond = mu[None] + (np.sqrt(abar) * c2 / var) * (xt[:, None, :] - np.sqrt(abar) * mu[None])
    return (r[..., None] * cond).sum(1).to(x_t.dtype).reshape(x_t.shape)


def posterior_samples(prob: GMMProblem, n: int, seed: int = 0) -> torch.Tensor:
    """Exact samples of p(z | y) (z-space), shape (n, d)."""
    g = torch.Generator().manual_seed(seed)
    A, s2, c2 = prob.A, prob.sigma ** 2, prob.std ** 2
    d = prob.d
    P = torch.eye(d, dtype=torch.float64) / c2 + A.T @ A / s2
    cov = torch.linalg.inv(P)
    means = (prob.means / c2 + (A.T @ prob.y / s2)[None]) @ cov.T
    S = A @ A.T * c2 + s2 * torch.eye(A.shape[0], dtype=torch.float64)
    diff = prob.y[None] - prob.means @ A.T
    logw = torch.log(prob.weights) - 0.5 * (diff @ torch.linalg.inv(S) * diff).sum(1)
    k = torch.multinomial(torch.softmax(logw, 0), n, replacement=True, generator=g)
    L = torch.linalg.cholesky(cov)
    return means[k] + torch.randn(n, d, generator=g, dtype=torch.float64) @ L.T


def prior_samples(prob: GMMProblem, n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    k = torch.multinomial(prob.weights, n, replacement=True, generator=g)
    return prob.means[k] + prob.std * torch.randn(n, prob.d, generator=g, dtype=torch.float64)


def sliced_wasserstein(a: torch.Tensor, b: torch.Tensor, n_proj: int = 500, seed: int = 0) -> float:
    """Sliced 2-Wasserstein distance between two equal-size sample sets (n, d)."""
    if a.shape != b.shape:
        raise ValueError("sample sets must have the same shape")
    g = torch.Generator().manual_seed(seed)
    th = torch.randn(a.shape[1], n_proj, generator=g, dtype=torch.float64)
    th = th / th.norm(dim=0, keepdim=True)
    pa = torch.sort(a.double() @ th, dim=0).values
    pb = torch.sort(b.double() @ th, dim=0).values
    return float(((pa - pb) ** 2).mean().sqrt())


def diffpir_posterior_samples(prob: GMMProblem, n: int, config, seed: int = 0) -> torch.Tensor:
    """Run restorekit's DiffPIR sampler with the exact MMSE denoiser on ``n`` particles (z-space, (n, d))."""
    from ..diffusion import LinearSchedule
    from ..methods.diffpir.sampler import diffpir_sample
    from ..operators.dense import DenseOperator

    sch = LinearSchedule()
    ac = np.cumprod(1 - np.linspace(sch.beta_start, sch.beta_end, sch.num_train_timesteps))

    def x0_fn(x, t):
        return mmse_x0(prob, x, float(ac[t]))

    op = DenseOperator(prob.A.float())
    y = prob.y.float()[None, :, None, None]
    x_init = op.adjoint(y).expand(n, -1, -1, -1).contiguous()
    out = diffpir_sample(x0_fn, y, op, x_init, config, sch, torch.Generator().manual_seed(seed))
    return out.reshape(n, -1).double()
