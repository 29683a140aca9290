"""A linear operator given by a matrix, for vector-valued problems (e.g. the Gaussian-mixture posterior check).

Signals are tensors shaped (N, d, 1, 1) so that the image samplers run on them unchanged.
"""

from __future__ import annotations

import torch

from .base import LinearOperator, as_rho


class DenseOperator(LinearOperator):
    """``y = A x`` with ``A`` of shape (m, d)."""

    name = "dense"

    def __init__(self, A: torch.Tensor):
        self.A = torch.as_tensor(A)
        if self.A.ndim != 2:
            raise ValueError("A must be a matrix")
        # A^T A = V diag(s^2) V^T once, so every data solution is two matrix products
        self._evals, self._evecs = torch.linalg.eigh(self.A.T.double() @ self.A.double())

    @staticmethod
    def _vec(x):
        return x.reshape(x.shape[0], -1)

    def forward(self, x):
        return (self._vec(x) @ self.A.to(x).T)[..., None, None]

    def adjoint(self, y):
        return (self._vec(y) @ self.A.to(y))[..., None, None]

    def data_solution(self, z, y, rho):
        r = as_rho(rho, z).reshape(-1, 1).double()
        rhs = (self._vec(y).double() @ self.A.double()) + r * self._vec(z).double()
        V = self._evecs
        sol = ((rhs @ V) / (self._evals[None] + r)) @ V.T
        return sol.to(z.dtype)[..., None, None]

    def output_size(self, h, w):
        return h, w
