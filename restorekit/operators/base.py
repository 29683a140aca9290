"""Linear degradation operators shared by every method.

Each operator ``A`` maps a clean image ``x`` (N, C, H, W) to a measurement
``y = A x`` and provides

* :meth:`forward`  -- ``A x``
* :meth:`adjoint`  -- ``A^T y`` (exact adjoint w.r.t. the Euclidean inner product)
* :meth:`data_solution` -- the closed-form minimiser of
  ``||A x - y||^2 + rho ||x - z||^2``, i.e. ``(A^T A + rho I)^{-1} (A^T y + rho z)``.

All images are float tensors; pixel range does not matter for linear maps but
the methods use [0, 1].
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch

from ..errors import TaskError, check_api_number


class OperatorError(TaskError, ValueError):
    """A bad operator argument (kernel, mask, scale factor, ...): a one-line :class:`TaskError`, and a
    ``ValueError`` as these checks raised before."""


def check_scale_factor(sf, what: str = "scale factor") -> int:
    """``sf`` as an int >= 1 (a whole float or numpy number is fine), else an :class:`OperatorError`."""
    return check_api_number(sf, what, lo=1, integer=True, error=OperatorError)


class LinearOperator(ABC):
    """Base class of the degradations (blur, blur + decimation, masking)."""

    #: short name used in configs and the CLI
    name: str = "linear"

    @abstractmethod
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply ``A``."""

    @abstractmethod
    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        """Apply ``A^T``."""

    @abstractmethod
    def data_solution(self, z: torch.Tensor, y: torch.Tensor, rho) -> torch.Tensor:
        """``argmin_x ||A x - y||^2 + rho ||x - z||^2`` in closed form.

        ``rho`` is a positive float or a tensor broadcastable to (N, 1, 1, 1).
        """

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward(x)

    def degrade(self, x: torch.Tensor) -> torch.Tensor:
        """Noise-free synthetic degradation of a clean image.

        Defaults to :meth:`forward`; operators whose usual benchmark
        degradation differs from their algebraic model (bicubic SR) override it.
        """
        return self.forward(x)

    def output_size(self, h: int, w: int) -> tuple[int, int]:
        """Size of ``A x`` for an ``h x w`` image."""
        return h, w

    def input_size(self, h: int, w: int) -> tuple[int, int]:
        """Size of ``x`` for an ``h x w`` measurement."""
        return h, w

    def describe(self) -> dict:
        """JSON-friendly description (for logs and benchmark records)."""
        return {"operator": self.name}


def as_rho(rho, ref: torch.Tensor) -> torch.Tensor:
    """Turn a scalar / tensor ``rho`` into a (N,1,1,1) tensor on ``ref``'s device."""
    r = torch.as_tensor(rho, dtype=ref.dtype, device=ref.device)
    if r.ndim == 0:
        r = r.reshape(1, 1, 1, 1)
    elif r.ndim == 1:
        r = r.reshape(-1, 1, 1, 1)
    if not bool(torch.all(r > 0)):
        raise OperatorError("rho must be positive")
    return r


def add_gaussian_noise(y: torch.Tensor, sigma: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Additive white Gaussian noise with std ``sigma`` (image scale [0, 1])."""
    sigma = check_api_number(sigma, "noise sigma", lo=0, error=OperatorError)
    if sigma == 0:
        return y.clone()
    noise = torch.randn(y.shape, generator=generator, dtype=y.dtype, device="cpu").to(y.device)
    return y + sigma * noise


class Identity(LinearOperator):
    """``y = x`` (denoising): the data solution is ``(y + rho z) / (1 + rho)``."""

    name = "denoise"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        return y

    def data_solution(self, z: torch.Tensor, y: torch.Tensor, rho) -> torch.Tensor:
        rho = as_rho(rho, z)
        return (y + rho * z) / (1 + rho)
