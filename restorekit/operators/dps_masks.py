"""The remaining mask types of DiffPIR's ``mask_generator`` (taken from DPS): ``extreme`` and ``both``.

* ``extreme``: only a box is observed (the complement of ``box``).
* ``both``: a random box hole and random missing pixels together. Upstream
  lists ``both`` among the valid types but its ``__call__`` returns ``None``
  for it; this is restorekit's definition.
"""

from __future__ import annotations

import numpy as np
import torch

from .inpaint import box_mask, random_mask


def extreme_mask(h: int, w: int, size: int = 128, margin: int = 16, rng=None) -> torch.Tensor:
    """1 inside a random ``size`` x ``size`` box, 0 elsewhere."""
    return 1.0 - box_mask(h, w, size, margin, rng)


def both_mask(h: int, w: int, size: int = 128, prob: float = 0.5, margin: int = 16, rng=None) -> torch.Tensor:
    """A random box hole and a fraction ``prob`` of random missing pixels."""
    rng = np.random.default_rng(rng)
    return box_mask(h, w, size, margin, rng) * random_mask(h, w, prob, rng)
