"""Degradation operators shared by all methods (forward, adjoint, closed-form data solution)."""

from .base import Identity, LinearOperator, add_gaussian_noise
from .blur import (BicubicDownsample, Blur, BlurDownsample, bicubic_kernel, diffpir_gaussian_std,
                   gaussian_kernel, motion_kernel, psf2otf)
from .factory import TASKS, make_operator, observed_operator, synthesize
from .inpaint import Inpainting, box_mask, half_mask, make_mask, random_mask
from .classical_sr import classical_operator, load_kernels_mat, shift_pixel
from .dps_masks import both_mask, extreme_mask
from .matlab_resize import MatlabResize

__all__ = [
    "LinearOperator", "Identity", "add_gaussian_noise", "Blur", "BlurDownsample", "BicubicDownsample", "Inpainting",
    "gaussian_kernel", "motion_kernel", "bicubic_kernel", "diffpir_gaussian_std", "psf2otf",
    "random_mask", "box_mask", "half_mask", "make_mask", "make_operator", "observed_operator", "synthesize", "TASKS",
    "classical_operator", "load_kernels_mat", "shift_pixel", "both_mask", "extreme_mask", "MatlabResize",
]
