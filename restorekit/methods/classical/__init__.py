"""Classical baselines behind the Restorer interface (no weights): the methods a diffusion method must beat.

* ``sr``: ``bicubic`` (default) or ``lanczos`` interpolation.
* ``deblur``: ``wiener`` (default; the true kernel's OTF and a power-law image spectrum fitted to the observation)
  or ``tv`` (total-variation deconvolution by ADMM, circular boundaries as the shared Blur operator).
* ``inpaint``: ``biharmonic`` (scikit-image's ``inpaint_biharmonic``, default) or ``diffusion`` (harmonic fill).
* ``denoise``: ``bm3d`` (the ``bm3d`` package; install ``restorekit[classical]``).

Choose with the option ``algorithm=`` (CLI: ``--opt algorithm=tv``).
"""

from .restorer import ALGORITHMS, Classical, ClassicalConfig

__all__ = ["ALGORITHMS", "Classical", "ClassicalConfig"]
