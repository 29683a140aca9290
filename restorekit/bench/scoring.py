"""Scores of one restored image under a task's metric convention (``eval`` in the task entry).

* default: PSNR on RGB (as DiffPIR reports), SSIM on the YIQ luma (pyiqa's default), no border shaved;
* ``{y_channel: true, border: 4}`` (the SR convention): PSNR and SSIM on the BT.601 luma Y of YCbCr (pyiqa's
  ``test_y_channel`` with ``color_space='ycbcr'``), a 4-pixel border shaved from both images before every metric.

PSNR/SSIM always run; LPIPS, DISTS, NIQE, MUSIQ run when pyiqa has their weights, otherwise the score is empty and
a note says why (every call returns it: the runner keeps each note once). On an offline machine setting a metric up
downloads and prints nothing (``restorekit.metrics.create_pyiqa_metric``).
"""

from __future__ import annotations

import torch

from ..metrics import MetricUnavailable, compute_metrics, create_pyiqa_metric

FULL_REFERENCE = ("psnr", "ssim", "lpips", "dists")
NO_REFERENCE = ("niqe", "musiq")
KNOWN = FULL_REFERENCE + NO_REFERENCE

_cache: dict = {}
_failed: dict = {}


def describe(conv: dict) -> str:
    """The convention in words, for table headers."""
    if conv.get("y_channel"):
        s = "PSNR/SSIM on Y of YCbCr (BT.601)"
    else:
        s = "PSNR on RGB, SSIM on the YIQ luma (pyiqa's default)"
    b = int(conv.get("border", 0))
    return s + (f", {b}-px border shaved" if b else ", no border shaved")


def _pyiqa(name: str, **opts):
    """The pyiqa metric ``name`` with ``opts`` (built once, quietly: an offline machine downloads and prints
    nothing), or the one-line reason why it cannot be set up."""
    key = (name, tuple(sorted(opts.items())))
    if key in _cache:
        return _cache[key]
    if name in _failed:
        return _failed[name]
    try:
        m = create_pyiqa_metric(name, name, "cpu", **opts)
    except MetricUnavailable as e:
        if name in ("psnr", "ssim"):
            raise
        _failed[name] = str(e)
        return _failed[name]
    _cache[key] = m
    return m


def score(pred: torch.Tensor, ref: torch.Tensor, metrics, conv: dict) -> tuple[dict, list[str]]:
    unknown = [m for m in metrics if m not in KNOWN]
    if unknown:
        raise ValueError(f"unknown metric(s) {unknown}; known: {', '.join(KNOWN)}")
    b = int(conv.get("border", 0))
    pred = pred.detach().float().clamp(0, 1).cpu()
    ref = ref.detach().float().clamp(0, 1).cpu()
    if b:
        pred, ref = pred[..., b:-b, b:-b], ref[..., b:-b, b:-b]
    scores: dict = {}
    notes: list[str] = []
    plain = [m for m in metrics if m in ("lpips", "niqe", "musiq")
             or (m in ("psnr", "ssim") and not conv.get("y_channel"))]
    fr = tuple(m for m in plain if m in FULL_REFERENCE)
    nr = tuple(m for m in plain if m in NO_REFERENCE)
    if fr:
        s, n = compute_metrics(pred, ref, fr, repeat_notes=True)
        scores.update(s)
        notes += n
    if nr:
        s, n = compute_metrics(pred, None, nr, repeat_notes=True)
        scores.update(s)
        notes += n
    for name in metrics:
        if name in scores:
            continue
        if name in ("psnr", "ssim"):  # y_channel convention
            m = _pyiqa(name, test_y_channel=True, color_space="ycbcr")
        else:  # dists
            m = _pyiqa(name)
        if isinstance(m, str):
            scores[name] = None
            notes.append(m)
            continue
        with torch.no_grad():
            scores[name] = float(torch.as_tensor(m(pred, ref)).reshape(-1)[0])
    return {m: scores.get(m) for m in metrics}, notes


def unavailable_reason(name: str) -> str | None:
    """Why a metric gives no values here (its weights cannot be loaded), or None when it loads."""
    if name in ("psnr", "ssim"):
        return None
    if name in ("lpips", "niqe", "musiq"):
        from ..metrics import _metric

        try:
            _metric(name, "cpu")
        except MetricUnavailable as e:
            return str(e)
        return None
    m = _pyiqa(name)
    return m if isinstance(m, str) else None
