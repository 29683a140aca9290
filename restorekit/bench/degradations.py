"""Degradations of a sweep from files: blur kernels in ``.mat``/``.npy`` files (Levin et al.'s motion kernels,
DiffPIR's kernel sets) and inpainting masks in ``.npy``/image files."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from ..errors import ConfigError
from .config import NON_DEGRADATION_KEYS


@lru_cache(maxsize=16)
def _kernels(path: str) -> tuple:
    p = Path(path)
    if p.suffix.lower() == ".npy":
        a = np.load(p)
        arrs = [a] if a.ndim == 2 else list(a)
    elif p.suffix.lower() == ".mat":
        arrs = _mat_kernels(p)
    else:
        raise ConfigError(f"kernel file {p}: use a .mat or .npy file")
    out = []
    for a in arrs:
        a = np.asarray(a, dtype=np.float64)
        if a.ndim != 2 or a.sum() <= 0:
            raise ConfigError(f"kernel file {p}: expected 2-D kernels with a positive sum, got shape {a.shape}")
        out.append(a / a.sum())
    return tuple(out)


def _mat_kernels(p: Path) -> list:
    try:  # MATLAB v7.3 (HDF5): arrays are stored column-major, so they read transposed
        import h5py

        with h5py.File(p, "r") as f:
            var = f["kernels"] if "kernels" in f else f[next(k for k in f if not k.startswith("#"))]
            if var.dtype == object:
                return [np.array(f[r]).T for r in var[()].T.ravel()]
            a = np.array(var).T
            return [a] if a.ndim == 2 else [a[..., i] for i in range(a.shape[-1])]
    except OSError:  # not HDF5: MATLAB v5
        pass
    from scipy.io import loadmat

    m = loadmat(p)
    var = m["kernels"] if "kernels" in m else m[next(k for k in m if not k.startswith("__"))]
    if var.dtype == object:
        return [var.ravel()[i] for i in range(var.size)]
    return [var] if var.ndim == 2 else [var[..., i] for i in range(var.shape[-1])]


def count_kernels(path: Path) -> int:
    return len(_kernels(str(path)))


def load_kernel(path, index: int = 0) -> torch.Tensor:
    ks = _kernels(str(path))
    return torch.from_numpy(ks[index].astype(np.float32))


def load_mask(path) -> torch.Tensor:
    """A mask file as a (1, 1, H, W) float tensor, 1 = known pixel."""
    p = Path(path)
    if p.suffix.lower() == ".npy":
        a = np.load(p).astype(np.float32)
    else:
        from ..io import read_image

        a = read_image(p)[0].mean(-1)
    if a.ndim == 3:
        a = a[..., 0] if a.shape[-1] in (1, 3) else a[0]
    if a.ndim != 2:
        raise ConfigError(f"mask file {p}: expected a 2-D mask, got shape {a.shape}")
    return torch.from_numpy((a > 0.5).astype(np.float32))[None, None]


def synthesize_kwargs(spec: dict) -> dict:
    """A (resolved) task entry -> keyword arguments of ``operators.synthesize``."""
    d = {k: v for k, v in spec.items() if k not in NON_DEGRADATION_KEYS and not k.endswith("_sha256")}
    if "kernel_file" in d:
        d["kernel_tensor"] = load_kernel(d.pop("kernel_file"), int(d.pop("kernel_index", 0)))
    d.pop("kernel_index", None)
    if "mask_file" in d:
        d["mask_tensor"] = load_mask(d.pop("mask_file"))
    return d
