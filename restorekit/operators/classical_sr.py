"""The classical SR degradation of DiffPIR's ``main_ddpir_sisr.py`` (``classical_degradation=True``).

``y = (k * x)[::sf, ::sf]`` with a circular convolution by one of the 12
USRNet blur kernels (``kernels_12.mat``: 8 anisotropic Gaussians, 4 motion
kernels, all 25x25), and the bicubic start image shifted by ``(sf-1)/2``
pixels toward the upper left (``shift_pixel``) so that it lines up with the
upper-left decimation.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..errors import TaskError
from .blur import BlurDownsample


def load_kernels_mat(path: str | Path, key: str = "kernels") -> list[np.ndarray]:
    """Kernels stored in a MATLAB cell array (``kernels_12.mat``, ``kernels_bicubicx234.mat``), as float64."""
    import scipy.io

    p = Path(path)
    if not p.is_file():
        raise TaskError(f"kernel file {p} not found (kernels_12.mat ships with USRNet/DiffPIR under kernels/)")
    try:
        cell = scipy.io.loadmat(str(p))[key]
    except (ValueError, KeyError, NotImplementedError, OSError) as e:
        raise TaskError(f"cannot read kernels {key!r} from {p}: {e}") from None
    return [np.asarray(cell[0, i], dtype=np.float64) for i in range(cell.shape[1])]


def classical_operator(kernel, sf: int) -> BlurDownsample:
    """``y = S(k * x)``: circular blur with ``kernel`` then upper-left ``sf``-fold decimation."""
    return BlurDownsample(torch.as_tensor(np.asarray(kernel), dtype=torch.float32), int(sf))


def shift_pixel(x: np.ndarray, sf: int, upper_left: bool = True) -> np.ndarray:
    """Resample an HxW(xC) array at positions shifted by ``(sf-1)/2`` (bilinear, clamped to the border)."""
    x = np.asarray(x, dtype=np.float64)
    h, w = x.shape[:2]
    s = (sf - 1) * 0.5 * (1 if upper_left else -1)
    cols = np.clip(np.arange(w) + s, 0, w - 1)
    rows = np.clip(np.arange(h) + s, 0, h - 1)

    def axis_weights(pos, n):
        i0 = np.minimum(np.floor(pos).astype(int), n - 1)
        i1 = np.minimum(i0 + 1, n - 1)
        return i0, i1, pos - i0

    r0, r1, fr = axis_weights(rows, h)
    c0, c1, fc = axis_weights(cols, w)
    fr = fr.reshape(-1, 1, *([1] * (x.ndim - 2)))
    fc = fc.reshape(1, -1, *([1] * (x.ndim - 2)))
    top = x[r0][:, c0] * (1 - fc) + x[r0][:, c1] * fc
    bot = x[r1][:, c0] * (1 - fc) + x[r1][:, c1] * fc
    return top * (1 - fr) + bot * fr
