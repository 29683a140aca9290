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
        self.device = torch.device(device) if device is not None else default_device()
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

    # -- restoration ------------------------------------------------------------
    def check_task(self, task: str) -> None:
        if task not in self.tasks:
            raise TaskError(f"method {self.name!r} does not do task {task!r}; it does: {', '.join(self.tasks)}")

    def restore(self, image, task: str | None = None, operator=None, steps: int | None = None,
                seed: int | None = None, **options):
        """Restore ``image`` (the degraded observation) and return the same kind of object."""
        task = task or (self.tasks[0] if len(self.tasks) == 1 else None)
        if task is None:
            raise TaskError(f"pass task=...; method {self.name!r} does: {', '.join(self.tasks)}")
        self.check_task(task)
        x, info = to_tensor(image)
        out = self.restore_tensor(x.to(self.device), task=task, operator=operator, steps=steps, seed=seed, **options)
        if info.kind == "file":
            info.kind = "pil"
        return from_tensor(out, info)

    def restore_tensor(self, y: torch.Tensor, task: str, operator=None, steps: int | None = None,
                       seed: int | None = None, progress=None, **options) -> torch.Tensor:
        """Tensor-level restoration: (1,3,h,w) in [0,1] -> (1,3,H,W) in [0,1]."""
        raise NotImplementedError
