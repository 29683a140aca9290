"""Pieces shared by the training loops: image folders, random crops, EMA."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from .errors import ConfigError
from .io import read_image

IMAGE_EXTS = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}


def load_images(data: str | Path, min_size: int) -> list[torch.Tensor]:
    """All images under ``data`` as (3,H,W) tensors in [0,1]; small ones are upscaled to ``min_size``."""
    root = Path(data)
    if not root.is_dir():
        raise ConfigError(f"training data folder not found: {root}")
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_EXTS)
    imgs = []
    for f in files:
        arr, _ = read_image(f)
        t = torch.from_numpy(arr).permute(2, 0, 1).contiguous()
        if min(t.shape[-2:]) < min_size:
            scale = min_size / min(t.shape[-2:])
            t = F.interpolate(t[None], scale_factor=scale, mode="bicubic", align_corners=False)[0].clamp(0, 1)
        imgs.append(t)
    if not imgs:
        raise ConfigError(f"no images ({', '.join(sorted(IMAGE_EXTS))}) found under {root}")
    return imgs


def random_crops(imgs: list[torch.Tensor], batch: int, size: int, g: torch.Generator,
                 rescale: tuple[float, float] = (0.5, 1.0)) -> torch.Tensor:
    """``batch`` random crops (random rescale, flip, 90-degree rotation), in [0, 1]."""
    out = []
    for _ in range(batch):
        img = imgs[int(torch.randint(len(imgs), (1,), generator=g))]
        s = float(torch.empty(1).uniform_(rescale[0], rescale[1], generator=g))
        h, w = img.shape[-2:]
        if min(h, w) * s >= size and s != 1.0:
            img = F.interpolate(img[None], scale_factor=s, mode="bilinear", antialias=True, align_corners=False)[0]
        h, w = img.shape[-2:]
        top = int(torch.randint(h - size + 1, (1,), generator=g))
        left = int(torch.randint(w - size + 1, (1,), generator=g))
        crop = img[:, top:top + size, left:left + size]
        if torch.rand(1, generator=g) < 0.5:
            crop = crop.flip(-1)
        crop = torch.rot90(crop, int(torch.randint(4, (1,), generator=g)), dims=(-2, -1))
        out.append(crop)
    return torch.stack(out).clamp(0, 1)


class EMA:
    """Exponential moving average of a module's state (kept on the CPU in float32)."""

    def __init__(self, module: torch.nn.Module, decay: float = 0.999):
        self.decay = decay
        self.state = {k: v.detach().float().cpu().clone() for k, v in module.state_dict().items()}
        self.n = 0

    @torch.no_grad()
    def update(self, module: torch.nn.Module) -> None:
        self.n += 1
        d = min(self.decay, (1 + self.n) / (10 + self.n))
        for k, v in module.state_dict().items():
            self.state[k].mul_(d).add_(v.detach().float().cpu(), alpha=1 - d)
