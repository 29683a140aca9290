"""MATLAB-style bicubic resizing as a separable linear map (the ``Resizer`` that DiffPIR/DPS use).

Each output sample ``j`` (1-based) of an axis of length ``n`` resized by ``s``
sits at input position ``p_j = (j - (m - n s)/2)/s + (1 - 1/s)/2`` with
``m = ceil(n s)``. Its weights are Keys' cubic (a = -0.5) evaluated at the
distances to the ``ceil(4/s) + 2`` input samples around it, stretched by
``1/s`` when downscaling (antialiasing), normalised to sum to one; samples
outside the axis are mirrored (``0 1 .. n-1 n-1 .. 0``). Rows are then the
dense matrices ``W_h`` and ``W_w`` and ``resize(x) = W_h x W_w^T``.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F


def _keys_cubic(x: np.ndarray) -> np.ndarray:
    ax = np.abs(x)
    return ((1.5 * ax ** 3 - 2.5 * ax ** 2 + 1) * (ax <= 1)
            + (-0.5 * ax ** 3 + 2.5 * ax ** 2 - 4 * ax + 2) * ((ax > 1) & (ax <= 2)))


def resize_matrix(n_in: int, scale: float, antialias: bool = True) -> np.ndarray:
    """(n_out, n_in) float64 matrix of the 1-D bicubic resize by ``scale``."""
    if scale <= 0:
        raise ValueError("scale must be positive")
    n_out = int(math.ceil(n_in * scale))
    aa = antialias and scale < 1
    width = 4.0 / scale if aa else 4.0

    def kern(d):
        return scale * _keys_cubic(scale * d) if aa else _keys_cubic(d)

    j = np.arange(1, n_out + 1, dtype=np.float64)
    centre = (j - (n_out - n_in * scale) / 2) / scale + 0.5 * (1 - 1 / scale)
    first = np.floor(centre - width / 2)
    taps = int(math.ceil(width)) + 2
    pos = (first[:, None] + np.arange(taps)[None] - 1).astype(np.int64)  # 0-based input indices
    w = kern(centre[:, None] - pos - 1)
    s = w.sum(axis=1, keepdims=True)
    s[s == 0] = 1.0
    w = w / s
    mirror = np.concatenate([np.arange(n_in), np.arange(n_in - 1, -1, -1)])
    idx = mirror[np.mod(pos, 2 * n_in)]
    M = np.zeros((n_out, n_in))
    np.add.at(M, (np.repeat(np.arange(n_out), taps), idx.reshape(-1)), w.reshape(-1))
    return M


class MatlabResize:
    """``x -> W_h x W_w^T`` for (N, C, H, W) tensors: bicubic resize by ``scale`` with antialiasing.

    ``MatlabResize(1/sf)`` is the degradation of DiffPIR's ``sr_mode='cubic'``.
    """

    def __init__(self, scale: float, antialias: bool = True):
        self.scale = float(scale)
        self.antialias = antialias
        self._cache: dict = {}

    def _mats(self, h: int, w: int, device, dtype):
        key = (h, w, str(device), dtype)
        if key not in self._cache:
            self._cache[key] = tuple(torch.from_numpy(resize_matrix(n, self.scale, self.antialias)).to(device, dtype)
                                     for n in (h, w))
        return self._cache[key]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        wh, ww = self._mats(x.shape[-2], x.shape[-1], x.device, x.dtype)
        return wh @ x @ ww.T

    def adjoint(self, y: torch.Tensor, h: int, w: int) -> torch.Tensor:
        wh, ww = self._mats(h, w, y.device, y.dtype)
        return wh.T @ y @ ww


def nearest_upsample(x: torch.Tensor, sf: int) -> torch.Tensor:
    """Pixel replication by ``sf`` (``F.interpolate`` default mode)."""
    return F.interpolate(x, scale_factor=sf, mode="nearest")
