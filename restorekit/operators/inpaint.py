"""Inpainting: element-wise masking and the mask generators of the DiffPIR benchmarks.

Masks are float tensors with 1 where a pixel is observed and 0 where it is
missing, shaped (1, 1, H, W) (shared by all channels) or (1, C, H, W).
"""

from __future__ import annotations

import numpy as np
import torch

from ..errors import TaskError
from .base import LinearOperator, OperatorError, as_rho


class Inpainting(LinearOperator):
    """``y = m * x`` with a binary (or soft) mask ``m``."""

    name = "inpaint"

    def __init__(self, mask: torch.Tensor):
        self.mask = check_mask(mask)

    def _m(self, ref: torch.Tensor) -> torch.Tensor:
        m = self.mask.to(device=ref.device, dtype=ref.dtype)
        if m.shape[-2:] != ref.shape[-2:]:
            raise OperatorError(f"mask size {tuple(m.shape[-2:])} does not match image size {tuple(ref.shape[-2:])}")
        return m

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._m(x) * x

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        return self._m(y) * y

    def data_solution(self, z: torch.Tensor, y: torch.Tensor, rho) -> torch.Tensor:
        m = self._m(z)
        rho = as_rho(rho, z)
        return (m * y + rho * z) / (m * m + rho)

    def describe(self) -> dict:
        return {"operator": self.name, "observed_fraction": float(self.mask.mean())}


def check_mask(mask) -> torch.Tensor:
    """``mask`` as a float32 (N, C, H, W) tensor (fewer dims get leading dims of size 1), or an
    :class:`OperatorError`: not numbers, more than 4-D, empty, or values that are not finite or outside [0, 1]
    (1 = observed pixel, 0 = missing; soft masks in between are allowed)."""
    try:
        m = torch.as_tensor(mask, dtype=torch.float32)
    except (TypeError, ValueError, RuntimeError):
        raise OperatorError(f"inpainting mask must be an array of numbers in [0, 1], "
                            f"got {type(mask).__name__}") from None
    if m.ndim > 4 or m.numel() == 0:
        raise OperatorError(f"inpainting mask must be a non-empty (H, W), (C, H, W) or (N, C, H, W) array, "
                            f"got shape {tuple(m.shape)}")
    while m.ndim < 4:
        m = m[None]
    if not bool(torch.isfinite(m).all()):
        raise OperatorError("inpainting mask has non-finite values (nan or inf); use 1 = observed, 0 = missing")
    lo, hi = float(m.min()), float(m.max())
    if lo < 0 or hi > 1:
        raise OperatorError(f"inpainting mask values must be in [0, 1] (1 = observed, 0 = missing), got "
                            f"{lo:g} to {hi:g}")
    return m


def random_mask(h: int, w: int, prob: float = 0.5, rng: np.random.Generator | int | None = None) -> torch.Tensor:
    """Drop exactly ``int(h*w*prob)`` pixels chosen uniformly (all channels), as DPS/DiffPIR."""
    if not 0.0 <= prob < 1.0:
        raise TaskError("random mask probability must be in [0, 1)")
    rng = np.random.default_rng(rng)
    m = np.ones(h * w, dtype=np.float32)
    m[rng.choice(h * w, int(h * w * prob), replace=False)] = 0
    return torch.from_numpy(m.reshape(1, 1, h, w))


def box_mask(h: int, w: int, size: int = 128, margin: int = 16,
             rng: np.random.Generator | int | None = None) -> torch.Tensor:
    """A ``size x size`` hole at a random position at least ``margin`` from the border."""
    if size + 2 * margin >= min(h, w):
        raise TaskError(f"a {size}x{size} box with a {margin}-pixel margin needs an image over {size + 2 * margin} "
                        f"px on each side (its corner is drawn from [margin, side - margin - size), as DPS's "
                        f"mask generator), not {h}x{w}; use a smaller --box-size")
    rng = np.random.default_rng(rng)
    top = int(rng.integers(margin, h - margin - size))
    left = int(rng.integers(margin, w - margin - size))
    m = torch.ones(1, 1, h, w)
    m[..., top:top + size, left:left + size] = 0
    return m


def half_mask(h: int, w: int, side: str = "right") -> torch.Tensor:
    """Hide one half of the image (``side`` in left/right/top/bottom)."""
    m = torch.ones(1, 1, h, w)
    if side == "right":
        m[..., :, w // 2:] = 0
    elif side == "left":
        m[..., :, : w - w // 2] = 0
    elif side == "bottom":
        m[..., h // 2:, :] = 0
    elif side == "top":
        m[..., : h - h // 2, :] = 0
    else:
        raise TaskError(f"unknown half-mask side {side!r}")
    return m


def make_mask(kind: str, h: int, w: int, rng=None, prob: float = 0.5, box_size: int = 128,
              margin: int = 16) -> torch.Tensor:
    """Mask by name: ``random`` (50 %), ``box`` (128 px, 16 px margin) or ``half``."""
    if kind == "random":
        return random_mask(h, w, prob, rng)
    if kind == "box":
        return box_mask(h, w, box_size, margin, rng)
    if kind == "half":
        return half_mask(h, w)
    raise TaskError(f"unknown mask type {kind!r}; choose random, box or half")
