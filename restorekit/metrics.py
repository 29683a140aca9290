"""Image-quality metrics through pyiqa.

PSNR and SSIM need no weights and always run. LPIPS, NIQE, MUSIQ, FID need
pretrained weights that pyiqa downloads on first use; on an offline machine
that fails, and the metric is reported as skipped with the reason (the file
pyiqa wanted), instead of failing the run.
"""

from __future__ import annotations

import contextlib
import os
import sys
import warnings

import torch

from .errors import first_line

#: metrics that never need weights
ALWAYS = ("psnr", "ssim")
#: full-reference metrics we know how to call
FULL_REFERENCE = ("psnr", "ssim", "lpips")
NO_REFERENCE = ("niqe", "musiq")

# pyiqa names and options used for each of our names
_PYIQA = {
    "psnr": ("psnr", {"test_y_channel": False}),  # RGB PSNR, as DiffPIR reports
    "ssim": ("ssim", {}),  # pyiqa default: on the Y channel
    "lpips": ("lpips", {}),
    "niqe": ("niqe", {}),
    "musiq": ("musiq", {}),
    "fid": ("fid", {}),
}

#: smallest image side each metric can score (SSIM's Gaussian window is 11x11; LPIPS' AlexNet needs 32 px,
#: NIQE 96 px patches, MUSIQ 32)
MIN_SIZE = {"ssim": 11, "lpips": 32, "niqe": 96, "musiq": 32}

_cache: dict = {}
_failed: dict = {}


class MetricUnavailable(Exception):
    pass


def _metric(name: str, device):
    key = (name, str(device))
    if key in _cache:
        return _cache[key]
    if name in _failed:
        raise MetricUnavailable(_failed[name])
    import pyiqa

    pname, opts = _PYIQA[name]
    try:
        # torch.hub prints download progress on stdout; keep stdout clean for --json
        with warnings.catch_warnings(), contextlib.redirect_stdout(sys.stderr):
            warnings.simplefilter("ignore")
            m = pyiqa.create_metric(pname, device=device, as_loss=False, **opts)
    except Exception as e:  # offline download failure, missing file, ...
        reason = (f"{name.upper()} skipped: pyiqa could not load its pretrained weights "
                  f"({type(e).__name__}: {first_line(e, 160)}). "
                  f"On an offline machine put the weights in pyiqa's cache "
                  f"({os.path.join(torch.hub.get_dir(), 'pyiqa')} / {torch.hub.get_dir()}/checkpoints).")
        if name in ALWAYS:
            raise
        _failed[name] = reason
        raise MetricUnavailable(reason) from None
    _cache[key] = m
    return m


def compute_metrics(pred: torch.Tensor, ref: torch.Tensor | None = None, names=("psnr", "ssim", "lpips"),
                    device=None) -> tuple[dict, list[str]]:
    """Score ``pred`` (1,3,H,W in [0,1]) against ``ref``.

    Returns ``(scores, notes)``: scores maps metric -> float (or None when
    skipped); notes holds one human-readable line per skipped metric.
    """
    device = device or pred.device
    scores, notes = {}, []
    pred = pred.detach().float().clamp(0, 1).to(device)
    if ref is not None:
        ref = ref.detach().float().clamp(0, 1).to(device)
        if ref.shape != pred.shape:
            raise ValueError(f"prediction {tuple(pred.shape)} and reference {tuple(ref.shape)} differ in size")
    for name in names:
        if name not in _PYIQA or name == "fid":
            raise ValueError(f"unknown per-image metric {name!r}")
        if name in FULL_REFERENCE and ref is None:
            continue
        h, w = pred.shape[-2:]
        need = MIN_SIZE.get(name, 1)
        if min(h, w) < need:
            scores[name] = None
            notes.append(f"{name.upper()} skipped: the image is {w}x{h}, smaller than the {need}x{need} "
                         f"that {name.upper()} needs")
            continue
        try:
            m = _metric(name, device)
        except MetricUnavailable as e:
            scores[name] = None
            notes.append(str(e))
            continue
        try:
            with torch.no_grad():
                v = m(pred, ref) if name in FULL_REFERENCE else m(pred)
        except Exception as e:  # a metric's own limits (sizes, ...): report, do not lose the run
            scores[name] = None
            notes.append(f"{name.upper()} skipped: pyiqa failed on this image ({type(e).__name__}: "
                         f"{first_line(e, 120)})")
            continue
        scores[name] = float(torch.as_tensor(v).reshape(-1)[0])
    return scores, notes


def fid(dir_pred: str, dir_ref: str, device=None) -> tuple[float | None, str | None]:
    """FID between two image folders; (None, reason) when the Inception weights are unavailable."""
    try:
        m = _metric("fid", device or "cpu")
    except MetricUnavailable as e:
        return None, str(e)
    return float(m(dir_pred, dir_ref)), None
