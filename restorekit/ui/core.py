"""What the web UI does, without Gradio: model lists, one restoration, a comparison of methods.

Everything here takes plain values (file paths, numbers, strings) and returns tensors, paths and text, so the
Gradio layer in :mod:`restorekit.ui.app` only wires widgets to these functions.
"""

from __future__ import annotations

import logging
import tempfile
import threading
import time
import traceback
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from ..errors import ImageReadError, RestoreKitError, TaskError, WeightsError, first_line
from ..limits import DEGRADATION, check_option

log = logging.getLogger("restorekit.ui")

#: methods offered in the UI, in menu order
METHODS = ("diffpir", "diffir", "classical", "diffbir")
#: below these step counts a method's result is poor (as the CLI warns)
USEFUL_MIN_STEPS = {"diffpir": 10, "diffbir": 5}
NO_WEIGHTS = "(no weights)"


# ----------------------------------------------------------------------------- models
def method_tasks(method: str) -> tuple[str, ...]:
    from ..registry import get_method

    return tuple(get_method(method).tasks)


def default_model(method: str, task: str | None) -> str:
    from ..registry import get_method

    cls = get_method(method)
    if not getattr(cls, "needs_weights", True):
        return NO_WEIGHTS
    return cls.default_model_for(task)


def card_files(card) -> list:
    """The cards whose files a model needs: the card itself, plus a DiffBIR card's components."""
    from ..registry import get_card

    cards = [card]
    for name in (card.options.get("components") or {}).values():
        c = get_card(name)
        if c is not None and c.name != card.name and c.filename != card.filename:
            cards.append(c)
    return cards


def missing_files(card) -> list[str]:
    """File names of ``card`` (and its components) that are not on this machine."""
    from ..weights import resolve_card

    out = []
    for c in card_files(card):
        try:
            resolve_card(c, download=False)
        except WeightsError:
            out.append(c.filename)
    return out


def model_choices(method: str) -> list[tuple[str, str]]:
    """(label, card name) for the model menu; the label says whether the weights are here."""
    from ..registry import get_method, model_cards

    if not getattr(get_method(method), "needs_weights", True):
        return [("no weights needed", NO_WEIGHTS)]
    out = []
    for c in model_cards(method):
        miss = missing_files(c)
        state = "on this machine" if not miss else (f"missing {miss[0]}" if len(miss) == 1
                                                    else f"missing {len(miss)} files")
        tag = ", DEMO" if c.demo else ""
        out.append((f"{c.name} ({state}{tag})", c.name))
    return out


def models_markdown() -> str:
    """A table of every model card of the offered methods with its download state."""
    from ..registry import model_cards
    from ..weights import cache_dir

    rows = ["| model | method | weights |", "|---|---|---|"]
    for m in METHODS:
        for c in model_cards(m):
            miss = missing_files(c)
            state = "here" if not miss else "missing: " + ", ".join(f"`{f}`" for f in miss)
            rows.append(f"| `{c.name}`{' (demo)' if c.demo else ''} | {m} | {state} |")
    rows.append("")
    rows.append(f"Missing files go in `{cache_dir()}` (or the folder named by `$RESTOREKIT_WEIGHTS`); "
                "`restorekit models` prints where each one comes from.")
    return "\n".join(rows)


class RestorerCache:
    """Loaded restorers, one per (method, model, device); the least recently used goes past ``size``."""

    def __init__(self, size: int = 3):
        self.size = size
        self._items: OrderedDict = OrderedDict()
        self._lock = threading.Lock()

    def get(self, method: str, model: str | None, device: str | None = None, download: bool = False):
        from ..registry import get_method

        cls = get_method(method)
        if not getattr(cls, "needs_weights", True):
            model = None
        key = (method, model, device)
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
            name = model or None
            if name is not None and not Path(name).exists():
                from ..registry import get_card

                card = get_card(name)
                if card is not None and card.method != method:
                    raise RestoreKitError(f"model {name!r} belongs to method {card.method!r}, not {method!r}")
                if card is not None and not download:
                    miss = missing_files(card)
                    if miss:
                        raise WeightsError(_missing_message(card, miss))
            r = cls.from_pretrained(name, device=device, download=download)
            self._items[key] = r
            while len(self._items) > self.size:
                self._items.popitem(last=False)
            return r


def _missing_message(card, missing: list[str]) -> str:
    from ..weights import cache_dir

    where = cache_dir()
    return (f"weights missing for model '{card.name}': {', '.join(missing)}. Put "
            f"{'it' if len(missing) == 1 else 'them'} in {where} (or in the folder named by $RESTOREKIT_WEIGHTS); "
            f"'restorekit models' lists where each file comes from. Or tick 'allow downloads'.")


CACHE = RestorerCache()


# ----------------------------------------------------------------------------- one restoration
@dataclass
class Degradation:
    """How the observation was made (synthetic) or what the method must assume (given observation)."""

    degrade: bool = False
    kernel: str = "gaussian"
    kernel_std: float | None = None
    kernel_size: int = 61
    kernel_file: str | None = None
    scale: int = 4
    sr_mode: str = "bicubic"
    mask: str = "random"
    mask_prob: float = 0.5
    box_size: int = 128
    mask_file: str | None = None
    noise: float | None = None

    def check(self, task: str) -> None:
        """Its numbers finite and in range, as the CLI's flags (restorekit.limits.DEGRADATION); an SR task needs a
        scale."""
        for key, name in DEGRADATION.items():
            if not hasattr(self, key):  # the UI has no SR blur std or motion intensity
                continue
            v = getattr(self, key)
            if v is not None or (key == "scale" and task == "sr"):
                setattr(self, key, check_option(v, name, key))


@dataclass
class Outcome:
    method: str
    task: str
    model: str
    observation: torch.Tensor  # what the method saw, (1,3,h,w)
    result: torch.Tensor  # (1,3,H,W)
    before: torch.Tensor  # the observation at the result's size (bicubic for SR), for the slider
    output_path: Path
    reference: torch.Tensor | None = None
    metrics_before: dict = field(default_factory=dict)
    metrics_after: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0
    demo: bool = False


def load_input(path, max_side: int | None = None):
    """(1,3,H,W) tensor and ImageInfo of an uploaded file; ``max_side`` > 0 downsizes it (antialiased)."""
    from ..io import read_image

    if path is None or str(path) == "":
        raise ImageReadError("upload an image first")
    arr, info = read_image(path)
    x = torch.from_numpy(arr).permute(2, 0, 1)[None].contiguous()
    return resize_max(x, max_side), info


def resize_max(x: torch.Tensor, max_side: int | None) -> torch.Tensor:
    if not max_side or max_side <= 0:
        return x
    h, w = x.shape[-2:]
    if max(h, w) <= max_side:
        return x
    f = max_side / max(h, w)
    size = (max(1, round(h * f)), max(1, round(w * f)))
    return F.interpolate(x, size=size, mode="bicubic", antialias=True, align_corners=False).clamp(0, 1)


def observe(x: torch.Tensor, task: str, d: Degradation, seed: int, noise_default: float, blind: bool):
    """(observation, operator, reference, original size) for a clean upload (``d.degrade``) or an observation."""
    from ..io import pad_to_multiple, read_kernel, read_mask
    from ..operators import observed_operator, synthesize

    if d.degrade:
        reference, orig_hw = x, tuple(x.shape[-2:])
        if task == "sr":
            x, orig_hw = pad_to_multiple(x, d.scale)
        kt = read_kernel(d.kernel_file) if d.kernel_file else None
        mt = read_mask(d.mask_file, *x.shape[-2:]) if d.mask_file else None
        noise = d.noise if d.noise is not None else noise_default
        y, op = synthesize(x, task, noise=noise, seed=seed, sr_mode=d.sr_mode, kernel=d.kernel,
                           kernel_size=d.kernel_size, kernel_std=d.kernel_std, scale=d.scale, mask=d.mask,
                           mask_prob=d.mask_prob, box_size=d.box_size, kernel_tensor=kt, mask_tensor=mt)
        return y, op, reference, orig_hw
    op = observed_operator(
        task, tuple(x.shape[-2:]), blind=blind, kernel_file=d.kernel_file, mask_file=d.mask_file, scale=d.scale,
        sr_mode=d.sr_mode,
        no_kernel="this method's deblurring is non-blind: upload the blur kernel (.npy or image), "
                  "or tick 'degrade the upload synthetically' to blur a sharp image first",
        no_mask="inpainting an already masked image needs a mask image (white = known pixels), "
                "or tick 'degrade the upload synthetically' to mask it first")
    h, w = x.shape[-2:]
    return x, op, None, (h, w) if task != "sr" else (h * d.scale, w * d.scale)


def method_options(method: str, options: dict) -> dict:
    """Drop options the UI shows for other methods and empty fields."""
    allowed = {"diffpir": {"lambda_", "zeta", "eta", "skip_type", "use_last_x0"},
               "diffbir": {"sampler", "cfg_scale", "tiled", "pos_prompt", "neg_prompt"},
               "classical": {"algorithm"},
               "diffir": set()}.get(method, set())
    return {k: v for k, v in (options or {}).items() if k in allowed and v not in (None, "")}


def restore(image, method: str, task: str, model: str | None = None, *, steps: int | None = None, seed: int = 0,
            degradation: Degradation | None = None, options: dict | None = None, max_side: int | None = None,
            ground_truth=None, device: str | None = None, download: bool = False, progress=None,
            out_dir: str | Path | None = None, prepared=None) -> Outcome:
    """Restore an uploaded image the way ``restorekit run`` does; returns the observation, result and scores.

    ``prepared``: an ``(observation, operator, reference, size)`` from :func:`observe` to reuse (the compare tab
    degrades once for every method).
    """
    from ..api import check_image_size, check_operator_fits
    from ..io import save_image
    from ..registry import get_method

    d = degradation or Degradation()
    cls = get_method(method)
    if task not in cls.tasks:
        raise TaskError(f"method {method!r} does not do task {task!r}; it does: {', '.join(cls.tasks)}")
    if steps is not None:
        steps = check_option(steps, "steps")
    seed = check_option(seed or 0, "seed")
    d.check(task)
    x, info = load_input(image, max_side)
    t0 = time.time()
    notes = []
    restorer = CACHE.get(method, None if model in (None, "", NO_WEIGHTS) else model, device, download)
    card = restorer.card
    if card is not None and card.demo:
        notes.append(f"'{card.name}' is a bundled DEMO model: demo quality only.")
    if steps is not None and steps < USEFUL_MIN_STEPS.get(method, 0):
        notes.append(f"{steps} steps is far below {method}'s useful range (>= {USEFUL_MIN_STEPS[method]}); "
                     f"expect a result worse than the input.")
    opts = method_options(method, options)
    cfg = restorer.make_config(task, None, **opts)  # a bad option stops here, with its one-line error
    noise_default = getattr(cfg, "noise_level", 0.0)  # the UI's options never set it
    blind = restorer.is_blind(cfg)  # classical blind_wiener: no kernel
    if prepared is None:
        prepared = observe(x, task, d, seed, noise_default, blind)
    y, op, reference, hw = prepared
    if reference is None and ground_truth is not None:
        reference, _ = load_input(ground_truth, max_side)
    f = d.scale if (task == "sr" and not d.degrade) else 1
    check_image_size(method, y.shape[-2] * f, y.shape[-1] * f)
    if task == "inpaint":
        check_operator_fits(op, y.shape[-2:])
    noise_level = d.noise if method in ("diffpir", "classical") else None
    cb = None
    if progress is not None:
        def cb(i, n, t=None):
            progress(i + 1, n)
    result = restorer.restore_tensor(y.to(restorer.device), task=task, operator=op, steps=steps, seed=seed,
                                     progress=cb, scale=d.scale, noise_level=noise_level, **opts)
    result = result.detach().float().cpu()
    if d.degrade and task == "sr":
        result = result[..., : hw[0], : hw[1]]
    if not bool(torch.isfinite(result).all()):
        raise RestoreKitError(f"{method} produced non-finite values; check the options")
    result = result.clamp(0, 1)
    yc = y.detach().float().cpu().clamp(0, 1)
    if tuple(yc.shape[-2:]) != tuple(result.shape[-2:]):  # SR: the observation upscaled (bicubic), cropped
        size = (yc.shape[-2] * d.scale, yc.shape[-1] * d.scale) if task == "sr" else tuple(result.shape[-2:])
        before = F.interpolate(yc, size=size, mode="bicubic", align_corners=False).clamp(0, 1)
        before = before[..., : result.shape[-2], : result.shape[-1]]
    else:
        before = yc
    m_before, m_after = {}, {}
    if reference is not None:
        from ..metrics import compute_metrics

        if tuple(reference.shape[-2:]) != tuple(result.shape[-2:]):
            notes.append(f"ground truth is {reference.shape[-1]}x{reference.shape[-2]} but the result is "
                         f"{result.shape[-1]}x{result.shape[-2]}: no PSNR/SSIM")
        else:
            m_before, n1 = compute_metrics(before, reference, ("psnr", "ssim"))
            m_after, _ = compute_metrics(result, reference, ("psnr", "ssim"))
            notes.extend(n1)
    out_dir = Path(out_dir) if out_dir else Path(tempfile.mkdtemp(dir=_results_dir()))
    stem = Path(str(image)).stem if image else "image"
    output_path = save_image(out_dir / f"{stem}_{method}_{task}.png", result, info)
    name = card.name if card is not None else (str(restorer.weights_path) if restorer.weights_path else method)
    return Outcome(method=method, task=task, model=name, observation=yc, result=result, before=before,
                   output_path=Path(output_path), reference=reference, metrics_before=m_before,
                   metrics_after=m_after, notes=notes, seconds=time.time() - t0, demo=bool(card and card.demo))


_RESULTS: list[Path] = []


def _results_dir() -> Path:
    """One folder per server process for the result files (removed when the process exits)."""
    if not _RESULTS:
        import atexit
        import shutil

        d = Path(tempfile.mkdtemp(prefix="restorekit-ui-"))
        atexit.register(shutil.rmtree, d, True)
        _RESULTS.append(d)
    return _RESULTS[0]


def friendly_error(e: BaseException) -> str:
    """One readable message for the page; unexpected errors are logged with their traceback on the server."""
    if isinstance(e, RestoreKitError):
        return str(e)
    if isinstance(e, MemoryError) or "out of memory" in str(e).lower():
        return "out of memory: use a smaller image (set 'downscale the upload'), or fewer steps / tiling"
    log.error("unexpected error in the web UI:\n%s", "".join(traceback.format_exception(e)))
    return f"unexpected error ({type(e).__name__}: {first_line(e, 300, '')}); the server log has the details"


def to_pil(x: torch.Tensor):
    """(1,3,H,W) in [0,1] -> PIL RGB."""
    import numpy as np
    from PIL import Image

    a = (x.detach().float().clamp(0, 1)[0].permute(1, 2, 0).cpu().numpy() * 255).round().astype(np.uint8)
    return Image.fromarray(a)


def metrics_markdown(o: Outcome) -> str:
    if not o.metrics_after:
        return ""
    label = "bicubic" if o.task == "sr" else "degraded"

    def fmt(v, digits):
        return "n/a" if v is None else f"{v:.{digits}f}"

    rows = ["| vs ground truth | PSNR (dB) | SSIM |", "|---|---|---|"]
    for name, m in ((label, o.metrics_before), ("restored", o.metrics_after)):
        rows.append(f"| {name} | {fmt(m.get('psnr'), 2)} | {fmt(m.get('ssim'), 4)} |")
    return "\n".join(rows)
