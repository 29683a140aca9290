"""LaMa's random inpainting masks (used by DiffIR-inpainting): irregular brush strokes and boxes.

Masks are float32 arrays (1, H, W) with **1 = missing**, as LaMa's. ``rs`` is a ``numpy.random.RandomState``;
with the same state the masks equal LaMa's ``MixedMaskGenerator`` on the global numpy RNG (a test checks this).
Strokes are drawn with OpenCV's ``cv2.line`` as upstream.

Presets (``MASK_PRESETS``): ``thick_256`` / ``thin_256`` / ``medium_256`` and the 512 variants are LaMa's
evaluation masks (``configs/data_gen/random_*.yaml``); ``train_256`` is the training mix of DiffIR-inpainting's
``configs/training/data/abl-04-256-mh-dist.yaml``.
"""

from __future__ import annotations

import numpy as np
import torch


def irregular_mask(shape, rs: np.random.RandomState, max_angle=4, max_len=60, max_width=20, min_times=0,
                   max_times=10, draw_method="line") -> np.ndarray:
    import cv2

    h, w = shape
    mask = np.zeros((h, w), np.float32)
    times = rs.randint(min_times, max_times + 1)
    for i in range(times):
        x, y = rs.randint(w), rs.randint(h)
        for _ in range(1 + rs.randint(5)):
            angle = 0.01 + rs.randint(max_angle)
            if i % 2 == 0:
                angle = 2 * 3.1415926 - angle
            length = 10 + rs.randint(max_len)
            brush = 5 + rs.randint(max_width)
            ex = np.clip((x + length * np.sin(angle)).astype(np.int32), 0, w)
            ey = np.clip((y + length * np.cos(angle)).astype(np.int32), 0, h)
            if draw_method == "line":
                cv2.line(mask, (int(x), int(y)), (int(ex), int(ey)), 1.0, int(brush))
            elif draw_method == "circle":
                cv2.circle(mask, (int(x), int(y)), radius=int(brush), color=1.0, thickness=-1)
            elif draw_method == "square":
                r = brush // 2
                mask[y - r:y + r, x - r:x + r] = 1
            else:
                raise ValueError(f"unknown draw method {draw_method!r}")
            x, y = ex, ey
    return mask[None]


def box_mask(shape, rs: np.random.RandomState, margin=10, bbox_min_size=30, bbox_max_size=100, min_times=0,
             max_times=3) -> np.ndarray:
    h, w = shape
    mask = np.zeros((h, w), np.float32)
    bbox_max_size = min(bbox_max_size, h - margin * 2, w - margin * 2)
    times = rs.randint(min_times, max_times + 1)
    for _ in range(times):
        bw = rs.randint(bbox_min_size, bbox_max_size)
        bh = rs.randint(bbox_min_size, bbox_max_size)
        x0 = rs.randint(margin, w - margin - bw + 1)
        y0 = rs.randint(margin, h - margin - bh + 1)
        mask[y0:y0 + bh, x0:x0 + bw] = 1
    return mask[None]


class MixedMaskGenerator:
    """LaMa's ``MixedMaskGenerator`` for irregular strokes, boxes and squares (no segmentation / outpainting /
    super-resolution kinds; no ramp). ``invert_proba`` draws from ``rs`` (upstream: Python's ``random``)."""

    def __init__(self, irregular_proba=1 / 3, irregular_kwargs=None, box_proba=1 / 3, box_kwargs=None,
                 segm_proba=0, squares_proba=0, squares_kwargs=None, invert_proba=0, **unused):
        if segm_proba or unused.get("superres_proba") or unused.get("outpainting_proba"):
            raise ValueError("segmentation, super-resolution and outpainting masks are not implemented")
        self.gens, probas = [], []
        if irregular_proba > 0:
            probas.append(irregular_proba)
            self.gens.append(("irregular", {**(irregular_kwargs or {}), "draw_method": "line"}))
        if box_proba > 0:
            probas.append(box_proba)
            self.gens.append(("box", dict(box_kwargs or {})))
        if squares_proba > 0:
            probas.append(squares_proba)
            self.gens.append(("irregular", {**(squares_kwargs or {}), "draw_method": "square"}))
        self.probas = np.array(probas, dtype="float32")
        self.probas /= self.probas.sum()
        self.invert_proba = invert_proba

    def __call__(self, shape, rs: np.random.RandomState) -> np.ndarray:
        kind, kw = self.gens[rs.choice(len(self.probas), p=self.probas)]
        # LaMa's generator classes (ramp coefficient 1) pass max_times + 1 to the stroke drawer and
        # bbox_max_size + 1 to the box drawer
        if kind == "irregular":
            kw = {"max_angle": 4, "max_len": 60, "max_width": 20, "min_times": 0, "max_times": 10, **kw}
            kw["max_times"] = int(kw["min_times"] + 1 + (kw["max_times"] - kw["min_times"]))
            m = irregular_mask(shape, rs, **kw)
        else:
            kw = {"margin": 10, "bbox_min_size": 30, "bbox_max_size": 100, "min_times": 0, "max_times": 3, **kw}
            kw["bbox_max_size"] = int(kw["bbox_min_size"] + 1 + (kw["bbox_max_size"] - kw["bbox_min_size"]))
            m = box_mask(shape, rs, **kw)
        if self.invert_proba > 0 and rs.random_sample() < self.invert_proba:
            m = 1 - m
        return m


def _eval_preset(irr, box):
    d = {"irregular_proba": 1, "irregular_kwargs": irr, "segm_proba": 0, "squares_proba": 0}
    if box is None:
        d["box_proba"] = 0
    else:
        d.update(box_proba=0.3, box_kwargs=box)
    return d


#: LaMa mask settings (``mask_generator_kwargs`` of configs/data_gen/random_{thick,thin,medium}_{256,512}.yaml and
#: ``mask_gen_kwargs`` of configs/training/data/abl-04-256-mh-dist.yaml)
MASK_PRESETS = {
    "thick_256": _eval_preset(dict(min_times=1, max_times=5, max_width=100, max_angle=4, max_len=200),
                              dict(margin=10, bbox_min_size=30, bbox_max_size=150, max_times=3, min_times=1)),
    "thin_256": _eval_preset(dict(min_times=4, max_times=50, max_width=10, max_angle=4, max_len=40), None),
    "medium_256": _eval_preset(dict(min_times=4, max_times=5, max_width=50, max_angle=4, max_len=100),
                               dict(margin=0, bbox_min_size=10, bbox_max_size=50, max_times=5, min_times=1)),
    "thick_512": _eval_preset(dict(min_times=1, max_times=5, max_width=250, max_angle=4, max_len=450),
                              dict(margin=10, bbox_min_size=30, bbox_max_size=300, max_times=4, min_times=1)),
    "thin_512": _eval_preset(dict(min_times=4, max_times=70, max_width=20, max_angle=4, max_len=100), None),
    "medium_512": _eval_preset(dict(min_times=4, max_times=10, max_width=100, max_angle=4, max_len=200),
                               dict(margin=0, bbox_min_size=30, bbox_max_size=150, max_times=5, min_times=1)),
    "train_256": {"irregular_proba": 1, "irregular_kwargs": dict(max_angle=4, max_len=200, max_width=100,
                                                                   max_times=5, min_times=1),
                  "box_proba": 1, "box_kwargs": dict(margin=10, bbox_min_size=30, bbox_max_size=150, max_times=4,
                                                     min_times=1), "segm_proba": 0},
}


def lama_masks(n: int, size: int, spec, rs: np.random.RandomState) -> torch.Tensor:
    """``n`` masks (N, 1, size, size), 1 = missing; ``spec`` is a preset name or MixedMaskGenerator kwargs."""
    kw = MASK_PRESETS[spec] if isinstance(spec, str) else dict(spec)
    gen = MixedMaskGenerator(**kw)
    return torch.from_numpy(np.stack([gen((size, size), rs) for _ in range(n)]))
