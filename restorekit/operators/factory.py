"""Build the operator of a task from plain options (CLI, configs, benchmarks)."""

from __future__ import annotations

import math

import numpy as np
import torch

from ..errors import TaskError
from .base import Identity, LinearOperator
from .blur import BicubicDownsample, Blur, BlurDownsample, diffpir_gaussian_std, gaussian_kernel, motion_kernel
from .inpaint import Inpainting, make_mask

TASKS = ("deblur", "sr", "inpaint", "denoise")


def make_operator(task: str, hr_size: tuple[int, int], *, kernel: str = "gaussian", kernel_size: int = 61,
                  kernel_std: float | None = None, motion_intensity: float = 0.5, scale: int = 4,
                  sr_mode: str = "bicubic", sr_kernel_std: float = 1.6, mask: str = "random",
                  mask_prob: float = 0.5, box_size: int = 128, kernel_tensor: torch.Tensor | None = None,
                  mask_tensor: torch.Tensor | None = None, seed: int | None = 0) -> LinearOperator:
    """Operator for ``task`` acting on clean images of size ``hr_size``.

    * ``deblur``: ``kernel`` = ``gaussian`` (61x61, std ``kernel_std`` or the
      DiffPIR benchmark's random ``3(1+2U)``) or ``motion`` (intensity 0.5), or
      an explicit ``kernel_tensor``.
    * ``sr``: ``sr_mode`` = ``bicubic`` (DiffPIR default) or ``blur``
      (Gaussian blur with ``sr_kernel_std`` + upper-left decimation), factor ``scale``.
    * ``inpaint``: ``mask`` = ``random`` / ``box`` / ``half`` / ``extreme`` / ``both`` or ``mask_tensor``.

    ``seed`` makes the random kernel/mask reproducible.
    """
    rng = np.random.default_rng(seed)
    h, w = hr_size
    if task == "deblur":
        if kernel_tensor is not None:
            return Blur(kernel_tensor)
        if kernel == "gaussian":
            std = kernel_std if kernel_std is not None else diffpir_gaussian_std(rng)
            return Blur(gaussian_kernel(kernel_size, std))
        if kernel == "motion":
            return Blur(motion_kernel(kernel_size, motion_intensity, rng))
        raise TaskError(f"unknown blur kernel {kernel!r}; choose gaussian or motion")
    if task == "sr":
        if scale < 1 or int(scale) != scale:
            raise TaskError("--scale must be a positive integer")
        if sr_mode == "bicubic":
            return BicubicDownsample(int(scale))
        if sr_mode == "blur":
            # window wide enough that gaussian_filter's 4-sigma support is not folded back
            k = kernel_tensor if kernel_tensor is not None else gaussian_kernel(
                2 * math.ceil(4 * sr_kernel_std) + 1, sr_kernel_std)
            return BlurDownsample(k, int(scale))
        raise TaskError(f"unknown SR mode {sr_mode!r}; choose bicubic or blur")
    if task == "inpaint":
        if mask_tensor is not None:
            m = torch.as_tensor(mask_tensor, dtype=torch.float32)
            if m.shape[-2:] != (h, w):
                raise TaskError(f"mask size {tuple(m.shape[-2:])} does not match image size {(h, w)}")
            return Inpainting(m)
        if mask in ("extreme", "both"):
            from .dps_masks import both_mask, extreme_mask

            if mask == "extreme":
                return Inpainting(extreme_mask(h, w, box_size, rng=rng))
            return Inpainting(both_mask(h, w, box_size, mask_prob, rng=rng))
        return Inpainting(make_mask(mask, h, w, rng=rng, prob=mask_prob, box_size=box_size))
    if task == "denoise":
        return Identity()
    raise TaskError(f"unknown task {task!r}; tasks are {', '.join(TASKS)}")


def synthesize(x: torch.Tensor, task: str, noise: float = 0.0, seed: int | None = 0, sr_mode: str = "bicubic",
               **operator_kwargs) -> tuple[torch.Tensor, LinearOperator]:
    """Degrade a clean image: (observation, operator). Deterministic in ``seed``.

    ``sr_mode='realesrgan'`` uses the Real-ESRGAN second-order pipeline (the returned operator is then only
    the bicubic model of it); otherwise ``y = A x + noise``, and for inpainting the missing pixels stay 0.
    The observation is not clamped (it is the noisy measurement, as in DiffPIR's benchmarks).
    """
    from .base import add_gaussian_noise

    if task == "sr" and sr_mode == "realesrgan":
        from .realesrgan import second_order_degrade

        scale = int(operator_kwargs.get("scale", 4))
        return second_order_degrade(x, scale, seed=seed), make_operator("sr", tuple(x.shape[-2:]), scale=scale)
    op = make_operator(task, tuple(x.shape[-2:]), seed=seed, sr_mode=sr_mode, **operator_kwargs)
    y = add_gaussian_noise(op.degrade(x), noise, torch.Generator().manual_seed(0 if seed is None else seed))
    if isinstance(op, Inpainting):
        y = op.forward(y)
    return y, op


def observed_operator(task: str, hw: tuple[int, int], *, blind: bool, kernel_file=None, mask_file=None,
                      scale: int = 4, sr_mode: str = "bicubic", sr_kernel_std: float = 1.6,
                      no_kernel: str = "", no_mask: str = "") -> LinearOperator | None:
    """The operator for an observation of size ``hw`` that is already degraded (no ``--degrade``): the kernel /
    mask come from files, SR acts on the (h*scale, w*scale) image; ``None`` for blind methods and other tasks.
    ``no_kernel`` / ``no_mask`` are the messages when a needed file was not given."""
    from ..io import read_kernel, read_mask

    h, w = hw
    if task not in ("deblur", "sr", "inpaint") or (blind and task != "inpaint" and not kernel_file):
        return None
    if task == "deblur":
        if not kernel_file:
            raise TaskError(no_kernel)
        return make_operator("deblur", (h, w), kernel_tensor=read_kernel(kernel_file))
    if task == "inpaint":
        if not mask_file:
            raise TaskError(no_mask)
        return make_operator("inpaint", (h, w), mask_tensor=read_mask(mask_file, h, w))
    return make_operator("sr", (h * scale, w * scale), scale=scale,
                         sr_mode="bicubic" if sr_mode == "realesrgan" else sr_mode, sr_kernel_std=sr_kernel_std)
