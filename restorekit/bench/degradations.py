"""Degradations of a sweep from files: blur kernels in ``.mat``/``.npy``/image files (Levin et al.'s motion kernels,
DiffPIR's kernel sets) and inpainting masks in ``.npy``/image files, read as ``restorekit run`` reads them
(:mod:`restorekit.io`)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from .config import NON_DEGRADATION_KEYS


@lru_cache(maxsize=16)
def _kernels(path: str) -> tuple:
    from ..io import read_kernels

    return tuple(read_kernels(path))


def count_kernels(path: Path) -> int:
    return len(_kernels(str(path)))


def load_kernel(path, index: int = 0) -> torch.Tensor:
    ks = _kernels(str(path))
    return torch.from_numpy(ks[index].astype(np.float32))


def load_mask(path) -> torch.Tensor:
    """A mask file as a (1, 1, H, W) float tensor, 1 = known pixel (:func:`restorekit.io.read_mask_array`)."""
    from ..io import read_mask_array

    return torch.from_numpy(read_mask_array(path))[None, None]


def synthesize_kwargs(spec: dict) -> dict:
    """A (resolved) task entry -> keyword arguments of ``operators.synthesize``."""
    d = {k: v for k, v in spec.items() if k not in NON_DEGRADATION_KEYS and not k.endswith("_sha256")}
    if "kernel_file" in d:
        d["kernel_tensor"] = load_kernel(d.pop("kernel_file"), int(d.pop("kernel_index", 0)))
    d.pop("kernel_index", None)
    if "mask_file" in d:
        d["mask_tensor"] = load_mask(d.pop("mask_file"))
    return d
