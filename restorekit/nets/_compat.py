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
