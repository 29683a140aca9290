"""Image-quality metrics through pyiqa.

PSNR and SSIM need no weights and always run. LPIPS, NIQE, MUSIQ, FID need
pretrained weights that pyiqa downloads on first use. On an offline machine
(the host of the weights cannot be reached) nothing is downloaded and nothing
is printed while the metric is set up: the metric is reported as skipped with
one note naming the missing file and the folder it belongs in, instead of
failing the run. :func:`compute_metrics` returns that note once per process
(the first time the metric is asked for), so that a folder of images does not
repeat it.
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
import threading
import warnings
from urllib.parse import urlparse

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
    """A metric cannot be set up here (its weights are missing); ``first`` is True the first time in this
    process that the metric was found unavailable."""

    def __init__(self, reason: str, first: bool = False):
        super().__init__(reason)
        self.first = first


class _NotCached(Exception):
    """A weights file is not in its cache folder and its host cannot be reached (nothing was downloaded)."""

    def __init__(self, url: str, dst: str, why: str):
        super().__init__(f"{os.path.basename(dst)} is not in {os.path.dirname(dst)} ({why})")
        self.url, self.dst, self.why = url, dst, why


def _host_unreachable(url: str) -> str | None:
    """Why ``url``'s host cannot be reached now (None when it can); each host is tried once per process."""
    from .weights import _reachable

    host = urlparse(url).hostname or ""
    if host.endswith("huggingface.co") and os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in (
            "1", "true", "yes", "on"):
        return "HF_HUB_OFFLINE is set"
    return _reachable(url)


_setup_lock = threading.Lock()


@contextlib.contextmanager
def _cache_only_when_offline():
    """While pyiqa builds a metric: a weights file that is not cached is downloaded only when its host can be
    reached (with one 'Downloading: URL to FILE' line on stderr); otherwise :class:`_NotCached` is raised before
    anything is printed or fetched. What torch.hub and pyiqa print meanwhile ('Downloading: ...', 'Loading
    pretrained model ...') is dropped: stdout stays clean for --json. Patches ``torch.hub.download_url_to_file``
    (also pyiqa's copy of it) for the duration, under a lock."""
    import torch.hub

    try:
        from pyiqa.utils import download_util
    except ImportError:  # pragma: no cover - other pyiqa layouts: torch.hub only
        download_util = None
    original = torch.hub.download_url_to_file

    def download(url, dst, *args, **kwargs):
        why = _host_unreachable(url)
        if why:
            raise _NotCached(url, dst, why)
        print(f'Downloading: "{url}" to {dst}', file=sys.stderr)
        return original(url, dst, *args, **kwargs)

    patched = [(torch.hub, "download_url_to_file")]
    if download_util is not None and hasattr(download_util, "download_url_to_file"):
        patched.append((download_util, "download_url_to_file"))
    with _setup_lock:
        saved = [(mod, attr, getattr(mod, attr)) for mod, attr in patched]
        try:
            for mod, attr in patched:
                setattr(mod, attr, download)
            with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
                warnings.simplefilter("ignore")
                yield
        finally:
            for mod, attr, fn in saved:
                setattr(mod, attr, fn)


#: files pyiqa asks for after the torchvision backbone (which it fetches first): (module, key of its
#: ``default_model_urls``), so that one note names every missing file
_LATER_FILES = {"lpips": ("pyiqa.archs.lpips_arch", "0.1_alex"), "dists": ("pyiqa.archs.dists_arch", "url")}


def _also_missing(name: str, first_dst: str) -> list[str]:
    """Paths of the other weights files ``name`` needs that are not cached either (best effort: [] when the
    installed pyiqa names them differently)."""
    if name not in _LATER_FILES:
        return []
    try:
        import importlib

        from pyiqa.utils.download_util import DEFAULT_CACHE_DIR

        mod, key = _LATER_FILES[name]
        url = importlib.import_module(mod).default_model_urls[key]
        path = os.path.join(DEFAULT_CACHE_DIR, os.path.basename(urlparse(url).path))
    except Exception:  # noqa: BLE001 - only a hint
        return []
    return [] if os.path.exists(path) or path == first_dst else [path]


def not_cached_note(name: str, e: _NotCached) -> str:
    """One line: which file(s) ``name`` misses, where to put them and where the first comes from."""
    also = _also_missing(name, e.dst)
    more = "".join(f" and {os.path.basename(p)} in {os.path.dirname(p)}" for p in also)
    return (f"{name.upper()} skipped: its weights ({os.path.basename(e.dst)}) are not in {os.path.dirname(e.dst)}"
            f"{more} and cannot be downloaded ({e.why}); put {'them' if also else 'it'} there (from {e.url}"
            f"{', ...' if also else ''}) or run once on a machine that is online")


def create_pyiqa_metric(name: str, pname: str, device, **opts):
    """``pyiqa.create_metric(pname, ...)`` set up quietly (see :func:`_cache_only_when_offline`); raises
    :class:`MetricUnavailable` (one line) when its weights cannot be loaded. ``name`` is our name for the note."""
    import pyiqa

    try:
        with _cache_only_when_offline():
            return pyiqa.create_metric(pname, device=device, as_loss=False, **opts)
    except _NotCached as e:
        raise MetricUnavailable(not_cached_note(name, e)) from None
    except Exception as e:  # a failed download, a corrupt file, ...
        hub = torch.hub.get_dir()
        raise MetricUnavailable(
            f"{name.upper()} skipped: pyiqa could not load its pretrained weights ({type(e).__name__}: "
            f"{first_line(e, 160)}); on an offline machine put them in {os.path.join(hub, 'pyiqa')} or "
            f"{os.path.join(hub, 'checkpoints')}") from None


def _metric(name: str, device):
    """The pyiqa metric ``name`` on ``device`` (built once); :class:`MetricUnavailable` when it cannot be set up
    (tried once per process; ``first`` tells whether this call found it out)."""
    key = (name, str(device))
    if key in _cache:
        return _cache[key]
    if name in _failed:
        raise MetricUnavailable(_failed[name])
    pname, opts = _PYIQA[name]
    try:
        m = create_pyiqa_metric(name, pname, device, **opts)
    except MetricUnavailable as e:
        if name in ALWAYS:
            raise
        _failed[name] = str(e)
        raise MetricUnavailable(str(e), first=True) from None
    _cache[key] = m
    return m


def compute_metrics(pred: torch.Tensor, ref: torch.Tensor | None = None, names=("psnr", "ssim", "lpips"),
                    device=None, repeat_notes: bool = False) -> tuple[dict, list[str]]:
    """Score ``pred`` (1,3,H,W in [0,1]) against ``ref``.

    Returns ``(scores, notes)``: scores maps metric -> float (or None when
    skipped); notes holds one human-readable line per skipped metric. A metric
    whose weights are unavailable is noted only by the first call of the
    process that asks for it (later calls give None and no note), unless
    ``repeat_notes``.
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
            if e.first or repeat_notes:
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
