"""Small shims for third-party network code that restorekit builds on."""

from __future__ import annotations

import contextlib
import warnings

#: the start of the UserWarning torch gives for ``torch.meshgrid`` without ``indexing=``
MESHGRID_WARNING = r"torch\.meshgrid: in an upcoming release, it will be required to pass the indexing argument"


@contextlib.contextmanager
def meshgrid_default_indexing():
    """Build third-party networks that call ``torch.meshgrid`` without ``indexing=`` (spandrel's SwinIR, HAT,
    Swin2SR, ... window attention) without torch's 'it will be required to pass the indexing argument'
    UserWarning. Their calls keep torch's default, ``indexing="ij"``, which is what those architectures were
    written for (the relative-position index of the official code); only that one warning is silenced, others
    pass through."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=MESHGRID_WARNING, category=UserWarning)
        yield


#: bitsandbytes' logger that, on CPUs with AVX512-BF16, warns at import that its optional ``kernels`` package is
#: missing; bitsandbytes comes in with pyiqa and diffusers, and restorekit never runs its 4-bit kernels
BNB_CPU_LOGGER = "bitsandbytes.backends.cpu.ops"


def _not_bnb_kernel_note(record) -> bool:
    return "gemm_4bit_forward" not in str(record.msg)


def quiet_bitsandbytes_kernel_note() -> None:
    """Drop bitsandbytes' 'Failed to load CPU gemm_4bit_forward from kernels-community' warning, which it logs
    when it is imported (by pyiqa or diffusers) on a CPU with AVX512-BF16 and without the ``kernels`` package. It
    would be a second line beside restorekit's one-line errors and before every run's output. Other records of
    that logger pass. Idempotent."""
    import logging

    log = logging.getLogger(BNB_CPU_LOGGER)
    if _not_bnb_kernel_note not in log.filters:
        log.addFilter(_not_bnb_kernel_note)
