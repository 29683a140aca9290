"""The one interface every method implements."""

from __future__ import annotations

import inspect
import math
import os
from pathlib import Path
from typing import ClassVar

import torch

from .errors import ConfigError, RestoreKitError, TaskError, check_api_number
from .limits import LIMITS, check_option
from .files import batches_by_size
from .io import from_tensor, to_tensor
from .registry import get_card, get_method
from .weights import ModelCard, resolve_card


class OptionError(ConfigError, TypeError):
    """An argument a method's ``from_pretrained`` does not take: a one-line :class:`ConfigError`, and a
    ``TypeError`` as Python's own unexpected-keyword error (the CLI maps one for ``--precision``)."""


#: how messages name each method
METHOD_NAMES = {"diffpir": "DiffPIR", "diffir": "DiffIR", "diffbir": "DiffBIR", "classical": "classical"}


def check_loader_options(cls_name: str, kwargs: dict) -> None:
    """``kwargs`` left over by a method's ``_from_weights``: none, else an :class:`OptionError` naming them."""
    if kwargs:
        raise OptionError(f"unexpected options for {cls_name}.from_pretrained: {sorted(kwargs)}")


def other_method_hint(path, meta: dict | None, this: str) -> str | None:
    """When the restorekit metadata of the weights file ``path`` names a method other than ``this``: the sentence
    saying which method the file belongs to and how to use it; else ``None``."""
    other = (meta or {}).get("restorekit_method")
    if not isinstance(other, str) or not other or other == this:
        return None
    name = METHOD_NAMES.get(other, other)
    return (f"{path} is a {name} model (restorekit_method={other}), not a {METHOD_NAMES.get(this, this)} one; "
            f"use --method {other} / method='{other}'")


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


_DTYPES = {"fp32": torch.float32, "float32": torch.float32, "fp16": torch.float16, "float16": torch.float16,
           "half": torch.float16, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16}


def resolve_dtype(torch_dtype) -> torch.dtype:
    """``torch_dtype`` as a torch dtype: a dtype, or "fp32" / "fp16" / "bf16" (also "float16", ...)."""
    if torch_dtype is None:
        return torch.float32
    if isinstance(torch_dtype, torch.dtype) and torch_dtype in _DTYPES.values():
        return torch_dtype
    key = str(torch_dtype).replace("torch.", "").lower()
    if key not in _DTYPES:
        raise TaskError(f"unsupported torch_dtype {torch_dtype!r}; use float32, float16 or bfloat16")
    return _DTYPES[key]


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``None`` -> CUDA when available, else CPU; a name that does not exist here is a :class:`RestoreKitError`."""
    if device is None:
        return default_device()
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise RestoreKitError(f"unknown device {device!r}; use cpu, cuda, cuda:N or mps") from None
    if dev.type == "cuda":
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if n == 0:
            raise RestoreKitError(f"device {device!r} asked for, but no CUDA GPU is available here; use --device cpu")
        if dev.index is not None and dev.index >= n:
            raise RestoreKitError(f"device {device!r} does not exist: this machine has {n} CUDA GPU(s) "
                                  f"(cuda:0..cuda:{n - 1})")
    elif dev.type == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise RestoreKitError(f"device {device!r} asked for, but MPS is not available here")
    elif dev.type not in ("cpu", "cuda", "mps"):
        raise RestoreKitError(f"unsupported device {device!r}; use cpu, cuda, cuda:N or mps")
    return dev


#: largest image (in megapixels) a method restores in one piece by default, and why; ``max_megapixels=`` (the
#: CLI's --max-megapixels) lifts it. DiffPIR's UNet attends over the whole image, so its memory grows with the square
#: of the pixel count; the classical filters hold several full-size float and FFT copies (per megapixel of the
#: result about 0.3 GB for Wiener, 0.9 for biharmonic, 1.3 for TV: benchmarks/results/classical_memory.md).
MAX_MEGAPIXELS = {"diffpir": 1.1, "classical": 32.0}
_WHY_LIMIT = {"diffpir": "its UNet attends over the whole image: memory grows with the square of the pixel count",
              "classical": "its filters hold several full-size float and FFT copies"}


def check_image_size(method: str, h: int, w: int, max_megapixels: float | None = None) -> None:
    """The restored image (``h`` x ``w``) within ``method``'s limit, or one line saying how to lift it."""
    limit = max_megapixels if max_megapixels is not None else MAX_MEGAPIXELS.get(method)
    if limit is not None and h * w > limit * 1e6:
        why = f" ({_WHY_LIMIT[method]})" if method in _WHY_LIMIT else ""
        raise RestoreKitError(
            f"the result would be {w}x{h} ({h * w / 1e6:.1f} MP), larger than {method}'s limit of {limit:g} MP "
            f"for one piece{why}; crop or downscale it, or raise the limit with --max-megapixels / max_megapixels=")


#: largest ``scale`` the Python API and the CLI (``--scale``) take for SR
MAX_SCALE = LIMITS["scale"]["hi"]


def check_seed(seed, what: str = "seed") -> int | None:
    """``seed`` as an int in [0, 2**63 - 1] (the CLI's --seed range), ``None`` left alone; else a
    :class:`ConfigError` naming ``what``."""
    if seed is None:
        return None
    return check_option(seed, "seed", what)


def check_scale(scale, what: str = "scale") -> int | None:
    """An SR factor for methods with whole factors (DiffPIR, classical): an int in [1, MAX_SCALE], as --scale;
    ``None`` (not given: the operator's factor, else the method's default) left alone."""
    if scale is None:
        return None
    return check_option(scale, "scale", what, error=TaskError)


def check_operator_scale(operator, scale: int | None) -> None:
    """An SR ``operator`` whose factor contradicts an explicitly given ``scale`` is a :class:`TaskError`."""
    if operator is not None and scale is not None and operator.sf != scale:
        raise TaskError(f"scale={scale} contradicts the operator's factor x{operator.sf} "
                        f"({type(operator).__name__}); leave scale out or make them agree")


def check_one_mask(operator, what: str = "there is 1 image") -> None:
    """An operator carrying a batch of N > 1 masks (``mask`` shaped (N, C, H, W)) for one image is a
    :class:`TaskError`, as a batch with another number of images is (:func:`per_image_operators`)."""
    mask = getattr(operator, "mask", None)
    if isinstance(mask, torch.Tensor) and mask.ndim == 4 and mask.shape[0] > 1:
        raise TaskError(f"the operator carries {mask.shape[0]} masks but {what}")


def check_operator_fits(operator, hw) -> None:
    """An operator built for another image size is a :class:`TaskError`, not a shape error deep inside."""
    if operator is None:
        return
    if isinstance(operator, (list, tuple)):
        raise TaskError("pass one operator per image: a list of operators needs a list of images")
    check_one_mask(operator)
    h, w = int(hw[0]), int(hw[1])
    mask = getattr(operator, "mask", None)
    if isinstance(mask, torch.Tensor) and tuple(mask.shape[-2:]) != (h, w):
        raise TaskError(f"the inpainting mask is {mask.shape[-1]}x{mask.shape[-2]} but the image is {w}x{h}")
    size = getattr(operator, "image_size", None)  # operators built for a fixed measurement size
    if size is not None and tuple(size) != (h, w):
        raise TaskError(f"the operator was built for {size[1]}x{size[0]} images but the image is {w}x{h}")


def per_image_operators(operator, n: int) -> list:
    """``operator`` for each of ``n`` images: a list of ``n``, one operator for all, or an operator carrying a
    batch of ``n`` masks (``mask`` shaped (n, C, H, W)), split into one operator per image."""
    import copy

    if isinstance(operator, (list, tuple)):
        if len(operator) != n:
            raise RestoreKitError(f"got {n} images but {len(operator)} operators")
        return list(operator)
    mask = getattr(operator, "mask", None)
    if isinstance(mask, torch.Tensor) and mask.ndim == 4 and mask.shape[0] > 1:
        if mask.shape[0] != n:
            raise TaskError(f"the operator carries {mask.shape[0]} masks but there are {n} images")
        ops = []
        for k in range(n):
            op = copy.copy(operator)
            op.mask = mask[k:k + 1]
            ops.append(op)
        return ops
    return [operator] * n


def same_size_groups(ys: list, seeds=None, *, device, default_seed: int, key=None) -> tuple[list, list]:
    """The batching plan of a ``restore_batch``: ``ys`` as float32 (1, C, h, w) tensors on ``device``, and
    ``[(indices, generators)]``, one entry per group of images with the same shape (or the same ``key(k)``), in
    order of first appearance; image k's CPU generator is seeded ``seeds[k]`` (None: ``default_seed``)."""
    n = len(ys)
    seeds = [None] * n if seeds is None else list(seeds)
    if len(seeds) != n:
        raise TaskError(f"got {n} images but {len(seeds)} seeds")
    ys = [y.to(device, torch.float32) for y in ys]
    for y in ys:
        if y.ndim != 4 or y.shape[0] != 1:
            raise TaskError(f"restore_batch takes (1, C, h, w) images, got shape {tuple(y.shape)}")
    groups: dict = {}
    for k, y in enumerate(ys):
        groups.setdefault(key(k) if key is not None else tuple(y.shape), []).append(k)
    seeds = [default_seed if s is None else check_seed(s) for s in seeds]
    plan = [(idx, [torch.Generator().manual_seed(seeds[k]) for k in idx]) for idx in groups.values()]
    return ys, plan


class Restorer:
    """Base class of the method plugins.

    Use :meth:`from_pretrained` to build one, then :meth:`restore`::

        r = Restorer.from_pretrained("diffpir-demo")
        out = r.restore(image, task="deblur", operator=Blur(kernel), steps=50, seed=0)

    ``image`` may be a PIL image, a numpy array (HxW or HxWxC, uint8 / uint16 /
    float in [0, 1]), a tensor (CxHxW or 1xCxHxW in [0, 1]) or a file path;
    the result has the same kind as the input (a path gives a PIL image).
    """

    name: ClassVar[str] = ""
    tasks: ClassVar[tuple] = ()
    #: True when :meth:`restore_batch` runs several images through the network at once (otherwise it loops)
    supports_batch: ClassVar[bool] = False

    def __init__(self, device: str | torch.device | None = None):
        self.device = resolve_device(device)
        self.card: ModelCard | None = None
        self.weights_path: Path | None = None

    # -- construction ---------------------------------------------------------
    @classmethod
    def from_pretrained(cls, name_or_path: str | os.PathLike | None = None, *, method: str | None = None,
                        device: str | torch.device | None = None, download: bool = True, **kwargs) -> "Restorer":
        """Build a restorer from a model-card name or a weights file.

        ``name_or_path``: a model card (``restorekit models`` lists them) or a
        path to a checkpoint; ``None`` picks the method's default (bundled demo).
        ``method`` is needed with a path when called on :class:`Restorer` itself.
        """
        card = None
        path = None
        if name_or_path is not None and not isinstance(name_or_path, (str, os.PathLike)):
            raise RestoreKitError(f"from_pretrained expects a model name or a weights path, got {name_or_path!r}")
        # "" is no name: refused below where the method needs weights (the CLI passes a weightless method's "")
        empty = name_or_path is not None and str(name_or_path) == ""
        if empty:
            name_or_path = None
        resolve_device(device)  # an impossible device fails before any weights are read
        if name_or_path is None and cls is Restorer and method is None:
            method = "diffpir"  # the default method and its bundled default model
        named = cls if cls is not Restorer else (get_method(method) if method is not None else None)
        if named is not None and not getattr(named, "needs_weights", True) and name_or_path is not None:
            # before the name is looked up: "x.pt not found" would hide that no file is wanted
            raise RestoreKitError(f"method {named.name!r} takes no weights (got {name_or_path!r})")
        if name_or_path is not None and Path(name_or_path).exists():
            path = Path(name_or_path)
        elif name_or_path is not None:
            card = get_card(str(name_or_path))
            if card is None:
                if any(s in str(name_or_path) for s in ("/", "\\", ".pt", ".pth", ".safetensors", ".ckpt")):
                    from .errors import WeightsError
                    raise WeightsError(f"weights file not found: {name_or_path}")
                raise RestoreKitError(f"unknown model {name_or_path!r}; run 'restorekit models' to list them")
        target = cls
        if cls is Restorer:
            m = method or (card.method if card else None)
            if m is None:
                raise RestoreKitError("pass method=... when loading weights from a path")
            target = get_method(m)
        elif card is not None and card.method != cls.name:
            raise RestoreKitError(f"model {card.name!r} belongs to method {card.method!r}, not {cls.name!r}")
        if empty and getattr(target, "needs_weights", True):
            raise RestoreKitError(f"empty model name: pass a model card or a weights path, or leave it out (None) for "
                                  f"{target.name}'s default model")
        if not getattr(target, "needs_weights", True):
            if name_or_path is not None:
                raise RestoreKitError(f"method {target.name!r} takes no weights (got {name_or_path!r})")
            obj = target._from_weights(None, card=None, device=device, **kwargs)
            obj.card, obj.weights_path = None, None
            return obj
        if card is None and path is None:
            card = get_card(target.default_model)
        if card is not None and path is None and not getattr(target, "resolves_own_weights", False):
            path = resolve_card(card, download=download)
        obj = target._from_weights(path, card=card, device=device, **kwargs)
        obj.card, obj.weights_path = card, path
        return obj

    #: model card used when from_pretrained gets no name
    default_model: ClassVar[str] = ""

    @classmethod
    def default_model_for(cls, task: str | None) -> str:
        """Default model card for a task (methods with one model per task override this)."""
        return cls.default_model

    @classmethod
    def _from_weights(cls, path: Path, card: ModelCard | None, device=None, **kwargs) -> "Restorer":
        raise NotImplementedError

    @classmethod
    def check_options_unloaded(cls, task: str, steps: int | None = None, **options) -> None:
        """The option checks of :meth:`make_config` that need no weights, run before :meth:`from_pretrained` (a bad
        option fails before a download). By default none: a method overrides it where loading is costly (DiffBIR)."""

    def to(self, device: str | torch.device) -> "Restorer":
        """Move every network of this restorer to ``device`` (precision is chosen at load: ``torch_dtype=``)."""
        dev = resolve_device(device)
        for v in vars(self).values():
            if isinstance(v, torch.nn.Module):
                v.to(dev)
            elif hasattr(v, "to") and hasattr(v, "device") and not isinstance(v, torch.Tensor):
                try:
                    v.to(dev)
                except TypeError:
                    pass
        self.device = dev
        return self

    # -- restoration ------------------------------------------------------------
    def is_blind(self, config=None) -> bool:
        """Whether deblurring with ``config`` (a :meth:`make_config` result) needs no blur kernel: the class's
        ``blind`` flag (DiffIR, DiffBIR), or what a method's options choose (classical ``blind_wiener``)."""
        return bool(getattr(type(self), "blind", False))

    def check_operator_used(self, task: str, operator, options: dict) -> None:
        """A :class:`TaskError` when this method would ignore ``operator`` for ``task``: a blind method estimates
        the degradation from the image (DiffBIR; DiffIR's sr / deblur, which say so in their own words; classical
        ``blind_wiener``). Inpainting always uses its mask. :meth:`restore` and :meth:`restore_folder` call it; the
        front ends' ``restore_tensor`` calls still pass, and ignore, the operator of a synthetic degradation."""
        ops = list(operator) if isinstance(operator, (list, tuple)) else [operator]
        if task == "inpaint" or all(op is None for op in ops):
            return
        blind = self.is_blind()
        if not blind and task == "deblur":  # the options may choose a blind algorithm
            try:
                blind = self.is_blind(self._config_for(task, None, options))
            except RestoreKitError:
                return  # a bad option: the restore call reports it
        if blind:
            op = next(op for op in ops if op is not None)
            raise TaskError(f"{self.name} {task} is blind: it estimates the degradation from the image and would "
                            f"ignore operator={type(op).__name__}(...); leave operator out")

    def check_task(self, task: str) -> None:
        if task not in self.tasks:
            raise TaskError(f"method {self.name!r} does not do task {task!r}; it does: {', '.join(self.tasks)}")

    def _own_options(self) -> set:
        """The keyword arguments :meth:`restore_tensor` names itself beyond the common ones (DiffPIR's ``scale``):
        they do not go to ``make_config``."""
        common = {"self", "y", "task", "operator", "steps", "seed", "progress"}
        return {n for n, p in inspect.signature(self.restore_tensor).parameters.items()
                if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and n not in common}

    def restored_size(self, task: str, operator, hw, options: dict) -> tuple[int, int]:
        """Size of the image the method makes from an ``hw`` observation, for the megapixel guard: SR multiplies by
        the operator's factor, or by the ``scale`` option (the method's default when not given)."""
        h, w = int(hw[0]), int(hw[1])
        f = getattr(operator, "sf", None)
        if f is None and task == "sr":
            f = options.get("scale")
            if f is None:
                p = inspect.signature(self.restore_tensor).parameters.get("scale")
                f = None if p is None or p.default is inspect.Parameter.empty else p.default
            if f is None:
                f = getattr(self, "default_scale", None)
        if isinstance(f, bool) or not isinstance(f, (int, float)) or not math.isfinite(f) or not 1 < f <= 1e4:
            return h, w  # no factor, or a bad one that the method refuses
        return int(h * f), int(w * f)

    def check_options(self, task: str, operator=None, steps: int | None = None, **options) -> None:
        """Check a run's options before its first image (:meth:`restore_folder`): one operator (or a callable
        ``operator(image) -> operator``), not a list, and options that :meth:`make_config` (where the method has one)
        accepts. Methods extend it with the checks of their own arguments (``scale``, the operator's kind)."""
        if isinstance(operator, (list, tuple)):
            raise TaskError("restore_folder takes one operator for every image (or a callable "
                            "operator(image_tensor) -> operator), not a list")
        check_one_mask(operator, "restore_folder restores one image at a time with the same operator")
        self.check_operator_used(task, operator, options)
        self._config_for(task, steps, options)

    def _config_for(self, task: str, steps, options: dict):
        """:meth:`make_config` of ``options`` less the ones :meth:`restore_tensor` names itself; ``None`` for a
        method without one."""
        make = getattr(self, "make_config", None)
        if make is None:
            return None
        own = self._own_options()
        return make(task, steps, **{k: v for k, v in options.items() if k not in own})

    def restore(self, image, task: str | None = None, operator=None, steps: int | None = None,
                seed: int | None = None, max_megapixels: float | None = None, max_batch: int | None = None,
                **options):
        """Restore ``image`` (the degraded observation) and return the same kind of object.

        A list of images, or a tensor shaped (N, C, H, W) with N > 1, gives a list / stacked tensor; image k gets
        seed ``seed + k`` (as if it ran alone with that seed), so results do not depend on how images are
        grouped. ``operator`` may then be a list (one per image) or carry a batch of N masks. They go through
        :meth:`restore_batch`, ``max_batch`` images at a time (default: all), same-size images together
        (``restorekit run --batch-size``; the name leaves DiffBIR's own ``batch_size`` option alone).
        """
        task = task or (self.tasks[0] if len(self.tasks) == 1 else None)
        if task is None:
            raise TaskError(f"pass task=...; method {self.name!r} does: {', '.join(self.tasks)}")
        self.check_task(task)
        self.check_operator_used(task, operator, options)
        seed = check_seed(seed)
        if max_megapixels is not None:
            max_megapixels = check_option(max_megapixels, "max_megapixels")
        batched_tensor = isinstance(image, torch.Tensor) and image.ndim == 4 and image.shape[0] != 1
        if isinstance(image, (list, tuple)) or batched_tensor:
            items = list(image.unbind(0)) if batched_tensor else list(image)
            if not items:
                raise RestoreKitError("restore() got an empty list of images")
            if max_batch is not None and (isinstance(max_batch, bool) or int(max_batch) != max_batch
                                          or max_batch < 1):
                raise RestoreKitError(f"max_batch must be a whole number >= 1, got {max_batch!r}")
            ops = per_image_operators(operator, len(items))
            base = 0 if seed is None else int(seed)
            xs, infos = [], []
            for im, op in zip(items, ops):
                x, info = to_tensor(im)
                check_image_size(self.name, *self.restored_size(task, op, x.shape[-2:], options),
                                 max_megapixels=max_megapixels)
                check_operator_fits(op, x.shape[-2:])
                xs.append(x.to(self.device))
                infos.append(info)
            n = len(xs)
            size = n if max_batch is None else int(max_batch)
            outs: list = [None] * n
            for chunk in batches_by_size(list(range(n)), size, lambda k: tuple(xs[k].shape)):
                res = self.restore_batch([xs[k] for k in chunk], [ops[k] for k in chunk],
                                         [base + k for k in chunk], task=task, steps=steps, **options)
                for k, r in zip(chunk, res):
                    info = infos[k]
                    if info.kind == "file":
                        info.kind = "pil"
                    outs[k] = from_tensor(r, info)
            return torch.stack(outs) if batched_tensor else outs
        check_one_mask(operator)  # N masks for one image: before the image is read
        x, info = to_tensor(image)
        check_image_size(self.name, *self.restored_size(task, operator, x.shape[-2:], options),
                         max_megapixels=max_megapixels)
        check_operator_fits(operator, x.shape[-2:])
        out = self.restore_tensor(x.to(self.device), task=task, operator=operator, steps=steps, seed=seed, **options)
        if info.kind == "file":
            info.kind = "pil"
        return from_tensor(out, info)

    def restore_batch(self, ys: list, ops=None, seeds=None, *, task: str, steps: int | None = None,
                      progress=None, **options) -> list:
        """Restore the (1, C, h, w) tensors ``ys`` (image k with operator ``ops[k]`` and seed ``seeds[k]``) and
        return their results in order. This default restores them one by one with :meth:`restore_tensor`;
        methods with ``supports_batch`` run same-size images through the network together, with the same
        results."""
        n = len(ys)
        ops = per_image_operators(ops, n)
        seeds = [None] * n if seeds is None else list(seeds)
        if len(seeds) != n:
            raise RestoreKitError(f"got {n} images but {len(seeds)} seeds")
        return [self.restore_tensor(y, task=task, operator=op, steps=steps, seed=s, progress=progress, **options)
                for y, op, s in zip(ys, ops, seeds)]

    def compile(self, **kwargs) -> "Restorer":
        """Compile the method's networks with ``torch.compile`` (methods that support it override this)."""
        raise RestoreKitError(f"method {self.name!r} does not support --compile / compile()")

    def restore_folder(self, input, output, task: str | None = None, operator=None, steps: int | None = None,
                       seed: int = 0, recursive: bool = False, overwrite: bool = False, progress=None,
                       max_batch: int = 1, **options) -> dict:
        """Restore every image of a folder, glob or ``.txt`` list into the folder ``output``, as ``restorekit run``.

        Results are ``<output>/<relative sub-folder>/<stem>_<method>_<task>.png``; images already restored are
        skipped unless ``overwrite``; image k (sorted) gets seed ``seed + k``; an image that fails is reported
        and the others go on. ``operator`` is one operator for every image, or a callable
        ``operator(image_tensor) -> operator``. ``max_batch`` same-size images (in sorted order) are restored
        together through :meth:`restore_batch`, with the results they get one at a time. Returns
        ``{"written": [...], "skipped": [...], "failed": {path: message}}``. The options, seed and operator are
        checked before the first image (:meth:`check_options`): a bad one raises instead of failing every image.
        """
        from .files import check_not_inputs, check_writable, collect_inputs, image_size, plan_outputs
        from .io import read_image, save_image

        task = task or (self.tasks[0] if len(self.tasks) == 1 else None)
        if task is None:
            raise TaskError(f"pass task=...; method {self.name!r} does: {', '.join(self.tasks)}")
        self.check_task(task)
        if not isinstance(output, (str, os.PathLike)) or str(output) == "":
            raise RestoreKitError(f"restore_folder needs an output folder (a path), got {output!r}")
        seed = check_seed(0 if seed is None else seed)
        max_batch = check_api_number(max_batch, "max_batch", lo=1, integer=True)
        self.check_options(task, operator, steps, **options)  # a bad option fails here, not on every image
        jobs, _ = collect_inputs(input, recursive)
        plan_outputs(jobs, output, False, self.name, task)
        check_not_inputs([j.output for j in jobs], [j.input for j in jobs], overwrite)
        for j in jobs:
            check_writable(j.output)
        report = {"written": [], "skipped": [], "failed": {}}
        todo = []
        for j in jobs:
            if j.output.exists() and not overwrite:
                report["skipped"].append(j.output)
            else:
                todo.append(j)
        for chunk in batches_by_size(todo, max_batch, lambda j: image_size(j.input)):
            loaded = []
            for j in chunk:
                try:
                    arr, info = read_image(j.input)
                    x = torch.from_numpy(arr).permute(2, 0, 1)[None].contiguous()
                    op = operator(x) if callable(operator) and not hasattr(operator, "forward") else operator
                    check_image_size(self.name, *self.restored_size(task, op, x.shape[-2:], options))
                    check_operator_fits(op, x.shape[-2:])
                    loaded.append((j, x.to(self.device), info, op))
                except RestoreKitError as e:
                    report["failed"][j.input] = str(e)
            try:
                outs = self.restore_batch([x for _, x, _, _ in loaded], [op for *_, op in loaded],
                                          [seed + j.index for j, *_ in loaded], task=task, steps=steps, **options)
            except RestoreKitError as e:
                if len(loaded) == 1:
                    report["failed"][loaded[0][0].input] = str(e)
                    outs = [None]
                else:  # find out which image failed: restore them one by one
                    outs = []
                    for j, x, _, op in loaded:
                        try:
                            outs.extend(self.restore_batch([x], [op], [seed + j.index], task=task, steps=steps,
                                                           **options))
                        except RestoreKitError as e1:
                            report["failed"][j.input] = str(e1)
                            outs.append(None)
            for (j, _, info, _), out in zip(loaded, outs):
                if out is None:
                    continue
                try:
                    save_image(j.output, out, info)
                    report["written"].append(j.output)
                except RestoreKitError as e:
                    report["failed"][j.input] = str(e)
            if progress is not None:
                for j in chunk:
                    progress(j.index, len(jobs), j.input)
        return report

    def restore_tensor(self, y: torch.Tensor, task: str, operator=None, steps: int | None = None,
                       seed: int | None = None, progress=None, **options) -> torch.Tensor:
        """Tensor-level restoration: (1,3,h,w) in [0,1] -> (1,3,H,W) in [0,1]."""
        raise NotImplementedError
