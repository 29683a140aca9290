"""The one interface every method implements."""

from __future__ import annotations

import os
from pathlib import Path
from typing import ClassVar

import torch

from .errors import RestoreKitError, TaskError
from .io import from_tensor, to_tensor
from .registry import get_card, get_method
from .weights import ModelCard, resolve_card


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


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


#: largest image (in megapixels) a method restores in one piece by default; the UNet of DiffPIR attends over
#: the whole image, so its memory grows with the square of the pixel count. ``max_megapixels=`` lifts it.
MAX_MEGAPIXELS = {"diffpir": 1.1}


def check_image_size(method: str, h: int, w: int, max_megapixels: float | None = None) -> None:
    limit = max_megapixels if max_megapixels is not None else MAX_MEGAPIXELS.get(method)
    if limit is not None and h * w > limit * 1e6:
        raise RestoreKitError(
            f"image is {w}x{h} ({h * w / 1e6:.1f} MP), larger than {method}'s limit of {limit:g} MP for one "
            f"piece (its UNet attends over the whole image: memory grows with the square of the pixel count); "
            f"crop or downscale it, or raise the limit with --max-megapixels / max_megapixels=")


def check_operator_fits(operator, hw) -> None:
    """An operator built for another image size is a :class:`TaskError`, not a shape error deep inside."""
    if operator is None:
        return
    if isinstance(operator, (list, tuple)):
        raise TaskError("pass one operator per image: a list of operators needs a list of images")
    h, w = int(hw[0]), int(hw[1])
    mask = getattr(operator, "mask", None)
    if isinstance(mask, torch.Tensor) and tuple(mask.shape[-2:]) != (h, w):
        raise TaskError(f"the inpainting mask is {mask.shape[-1]}x{mask.shape[-2]} but the image is {w}x{h}")
    size = getattr(operator, "image_size", None)  # operators built for a fixed measurement size
    if size is not None and tuple(size) != (h, w):
        raise TaskError(f"the operator was built for {size[1]}x{size[0]} images but the image is {w}x{h}")


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
        if name_or_path is not None and str(name_or_path) == "":
            name_or_path = None
        resolve_device(device)  # an impossible device fails before any weights are read
        if name_or_path is None and cls is Restorer and method is None:
            method = "diffpir"  # the default method and its bundled default model
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
        if not getattr(target, "needs_weights", True):
            if name_or_path is not None:
                raise RestoreKitError(f"method {target.name!r} takes no weights (got {name_or_path!r})")
            obj = target._from_weights(None, card=None, device=device, **kwargs)
            obj.card, obj.weights_path = None, None
            return obj
        if card is None and path is None:
            card = get_card(target.default_model)
        if card is not None and path is None:
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
    def check_task(self, task: str) -> None:
        if task not in self.tasks:
            raise TaskError(f"method {self.name!r} does not do task {task!r}; it does: {', '.join(self.tasks)}")

    def restore(self, image, task: str | None = None, operator=None, steps: int | None = None,
                seed: int | None = None, max_megapixels: float | None = None, **options):
        """Restore ``image`` (the degraded observation) and return the same kind of object.

        A list of images, or a tensor shaped (N, C, H, W) with N > 1, is restored image by image and
        returned as a list / stacked tensor; image k gets seed ``seed + k`` (as if it ran alone with that
        seed), so results do not depend on how images are grouped. ``operator`` may then be a list too.
        """
        task = task or (self.tasks[0] if len(self.tasks) == 1 else None)
        if task is None:
            raise TaskError(f"pass task=...; method {self.name!r} does: {', '.join(self.tasks)}")
        self.check_task(task)
        batched_tensor = isinstance(image, torch.Tensor) and image.ndim == 4 and image.shape[0] != 1
        if isinstance(image, (list, tuple)) or batched_tensor:
            items = list(image.unbind(0)) if batched_tensor else list(image)
            if not items:
                raise RestoreKitError("restore() got an empty list of images")
            ops = operator if isinstance(operator, (list, tuple)) else [operator] * len(items)
            if len(ops) != len(items):
                raise RestoreKitError(f"got {len(items)} images but {len(ops)} operators")
            base = 0 if seed is None else int(seed)
            outs = [self.restore(im, task, op, steps, base + k, max_megapixels, **options)
                    for k, (im, op) in enumerate(zip(items, ops))]
            return torch.stack(outs) if batched_tensor else outs
        x, info = to_tensor(image)
        check_image_size(self.name, *x.shape[-2:], max_megapixels=max_megapixels)
        check_operator_fits(operator, x.shape[-2:])
        out = self.restore_tensor(x.to(self.device), task=task, operator=operator, steps=steps, seed=seed, **options)
        if info.kind == "file":
            info.kind = "pil"
        return from_tensor(out, info)

    def restore_folder(self, input, output, task: str | None = None, operator=None, steps: int | None = None,
                       seed: int = 0, recursive: bool = False, overwrite: bool = False, progress=None,
                       **options) -> dict:
        """Restore every image of a folder, glob or ``.txt`` list into the folder ``output``, as ``restorekit run``.

        Results are ``<output>/<relative sub-folder>/<stem>_<method>_<task>.png``; images already restored are
        skipped unless ``overwrite``; image k (sorted) gets seed ``seed + k``; an image that fails is reported
        and the others go on. ``operator`` is one operator for every image, or a callable
        ``operator(image_tensor) -> operator``. Returns ``{"written": [...], "skipped": [...], "failed": {path: message}}``.
        """
        from .files import check_not_inputs, check_writable, collect_inputs, plan_outputs
        from .io import read_image, save_image

        task = task or (self.tasks[0] if len(self.tasks) == 1 else None)
        if task is None:
            raise TaskError(f"pass task=...; method {self.name!r} does: {', '.join(self.tasks)}")
        self.check_task(task)
        jobs, _ = collect_inputs(input, recursive)
        plan_outputs(jobs, output, False, self.name, task)
        check_not_inputs([j.output for j in jobs], [j.input for j in jobs], overwrite)
        for j in jobs:
            check_writable(j.output)
        report = {"written": [], "skipped": [], "failed": {}}
        for j in jobs:
            if j.output.exists() and not overwrite:
                report["skipped"].append(j.output)
                continue
            try:
                arr, info = read_image(j.input)
                x = torch.from_numpy(arr).permute(2, 0, 1)[None].contiguous()
                check_image_size(self.name, *x.shape[-2:])
                op = operator(x) if callable(operator) and not hasattr(operator, "forward") else operator
                check_operator_fits(op, x.shape[-2:])
                out = self.restore_tensor(x.to(self.device), task=task, operator=op, steps=steps, seed=seed + j.index,
                                          **options)
                save_image(j.output, out, info)
                report["written"].append(j.output)
            except RestoreKitError as e:
                report["failed"][j.input] = str(e)
            if progress is not None:
                progress(j.index, len(jobs), j.input)
        return report

    def restore_tensor(self, y: torch.Tensor, task: str, operator=None, steps: int | None = None,
                       seed: int | None = None, progress=None, **options) -> torch.Tensor:
        """Tensor-level restoration: (1,3,h,w) in [0,1] -> (1,3,H,W) in [0,1]."""
        raise NotImplementedError
