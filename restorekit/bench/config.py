"""Sweep configuration: the YAML file and the items (image x task x method x NFE x seed) it expands to.

``tasks`` maps a *label* to a degradation. The label is the task's name unless the entry says ``task:``
(``deblur_levin: {task: deblur, kernel_file: ..., kernel_index: by_image}``), so one sweep can hold several
degradations of one task. Keys of a task entry besides the degradation options:

* ``eval``: the metric convention of that task, ``{y_channel: true, border: 4}`` (the SR convention: PSNR and
  SSIM on the BT.601 luma, a 4-pixel border shaved). Default: PSNR on RGB, SSIM on Y (pyiqa's default), no shave.
* ``kernel_file`` (+ ``kernel_index``: an int or ``by_image``): blur kernels from a ``.mat`` (v7.3/HDF5 or older)
  or ``.npy`` file; ``mask_file``: an inpainting mask (``.npy``/image, 1 = known). Paths are relative to the
  config file (or the working folder).

A dataset entry may say ``pattern`` (a glob, e.g. ``"*_HR.png"``), ``limit`` (the first N files), ``crop``
(centre crop side) and ``tasks`` (labels to run on it). A method entry may say ``tasks`` (the labels or task kinds
it runs).
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ConfigError
from ..training import IMAGE_EXTS

#: keys of a task entry that are not options of the degradation (``operators.synthesize``)
NON_DEGRADATION_KEYS = ("task", "eval")


@dataclass
class Item:
    dataset: str
    image: str  # the file name, suffix included (a.png and a.jpg are different items)
    task: str  # label from the config (the task's name unless the entry says 'task:')
    method: str  # label from the config
    method_name: str  # registry name
    weights: str | None
    steps: int | None
    seed: int
    options: dict
    #: hash of everything that affects the result (image bytes, crop, degradation, weights, options, ...)
    fingerprint: str = ""
    #: the restoration task (sr / deblur / inpaint / denoise)
    kind: str = ""
    #: the degradation of this item (the task entry with per-image choices such as the kernel index resolved)
    degradation: dict = field(default_factory=dict)

    @property
    def key(self) -> str:
        return (f"{self.dataset}/{self.image}/{self.task}/{self.method}/nfe{self.steps or 'default'}/seed{self.seed}"
                f"/{self.fingerprint[:12] or 'nofp'}")

    @property
    def file_stem(self) -> str:
        return self.key.replace("/", "__")


def load_bench_config(path) -> dict:
    import yaml

    try:
        cfg = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError) as e:
        raise ConfigError(f"cannot read benchmark config {path}: {e}") from None
    if not isinstance(cfg, dict):
        raise ConfigError(f"benchmark config {path} must be a mapping")
    for k in ("datasets", "tasks", "methods"):
        if not cfg.get(k):
            raise ConfigError(f"benchmark config {path} needs '{k}'")
    from ..operators.factory import TASKS

    for label, spec in cfg["tasks"].items():
        spec = spec or {}
        cfg["tasks"][label] = spec
        kind = spec.get("task", label)
        if kind not in TASKS:
            raise ConfigError(f"benchmark config {path}: task {label!r} is not one of {', '.join(TASKS)} "
                              f"(give 'task:' for a labelled entry)")
    for ds, spec in cfg["datasets"].items():
        for t in (spec or {}).get("tasks", []) or []:
            if t not in cfg["tasks"]:
                raise ConfigError(f"benchmark config {path}: dataset {ds!r} names unknown task {t!r}")
    for m in cfg["methods"]:
        if "method" not in m:
            raise ConfigError(f"benchmark config {path}: every method entry needs 'method'")
        for t in m.get("tasks", []) or []:
            if t not in cfg["tasks"] and t not in TASKS:
                raise ConfigError(f"benchmark config {path}: method {m.get('name', m['method'])!r} names unknown "
                                  f"task {t!r}")
    return cfg


def task_kind(cfg: dict, label: str) -> str:
    return (cfg["tasks"][label] or {}).get("task", label)


def eval_convention(spec: dict) -> dict:
    """The metric convention of a task entry: ``{"y_channel": bool, "border": int}``."""
    ev = dict(spec.get("eval") or {})
    unknown = set(ev) - {"y_channel", "border"}
    if unknown:
        raise ConfigError(f"unknown 'eval' keys {sorted(unknown)}; use y_channel and border")
    return {"y_channel": bool(ev.get("y_channel", False)), "border": int(ev.get("border", 0))}


def resolve_path(p, base: Path) -> Path:
    p = Path(str(p))
    if p.is_absolute():
        return p
    return base / p if (base / p).exists() else p


def dataset_images(spec: dict, base: Path) -> list[Path]:
    p = resolve_path(spec["path"], base)
    if p.is_file():
        return [p]
    if not p.is_dir():
        raise ConfigError(f"dataset folder not found: {p}")
    files = sorted(f for f in p.iterdir() if f.suffix.lower() in IMAGE_EXTS)
    if spec.get("pattern"):
        files = [f for f in files if fnmatch.fnmatch(f.name, spec["pattern"])]
    if spec.get("limit"):
        files = files[: int(spec["limit"])]
    if not files:
        raise ConfigError(f"no images in {p}" + (f" matching {spec['pattern']!r}" if spec.get("pattern") else ""))
    return files


def _file_digest(p: Path, cache: dict) -> str:
    if p not in cache:
        cache[p] = hashlib.sha256(p.read_bytes()).hexdigest()
    return cache[p]


def weights_identity(w) -> str | None:
    """A model card name as is; a weights file by resolved path, size and modification time."""
    if w is None:
        return None
    p = Path(str(w))
    if p.exists():
        st = p.stat()
        return f"{p.resolve()}:{st.st_size}:{st.st_mtime_ns}"
    return str(w)


def fingerprint(**parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def item_degradation(spec: dict, base: Path, image_index: int, digests: dict) -> dict:
    """The task entry for one image: ``kernel_index: by_image`` resolved, kernel/mask files by content."""
    from .degradations import count_kernels

    d = dict(spec)
    for key in ("kernel_file", "mask_file"):
        if key in d:
            p = resolve_path(d[key], base)
            if not p.is_file():
                raise ConfigError(f"{key} not found: {p}")
            d[key] = str(p)
            d[key + "_sha256"] = _file_digest(p, digests)
    if "kernel_file" in d:
        n = count_kernels(Path(d["kernel_file"]))
        idx = d.get("kernel_index", 0)
        if idx == "by_image":
            idx = image_index % n
        if not isinstance(idx, int) or not 0 <= idx < n:
            raise ConfigError(f"kernel_index {idx!r}: {d['kernel_file']} holds {n} kernels (0..{n - 1}, or by_image)")
        d["kernel_index"] = idx
    return d


def expand_items(cfg: dict, base: Path) -> list[Item]:
    from .peers import get_bench_method

    items = []
    digests: dict = {}
    seeds = cfg.get("seeds", [0])
    for ds, spec in cfg["datasets"].items():
        ds_tasks = spec.get("tasks") or list(cfg["tasks"])
        for idx, img in enumerate(dataset_images(spec, base)):
            for task in cfg["tasks"]:
                if task not in ds_tasks:
                    continue
                kind = task_kind(cfg, task)
                deg = item_degradation(cfg["tasks"][task], base, idx, digests)
                # files count by content (their sha256), not by where they are
                fp_deg = {k: v for k, v in deg.items() if k not in ("kernel_file", "mask_file")}
                for m in cfg["methods"]:
                    if m.get("tasks") and task not in m["tasks"] and kind not in m["tasks"]:
                        continue
                    cls = get_bench_method(m["method"])
                    if kind not in cls.tasks:
                        continue
                    w = m.get("weights")
                    if isinstance(w, dict):
                        if task in w:
                            w = w[task]
                        elif kind in w:
                            w = w[kind]
                        else:
                            continue
                    steps_list = m.get("steps", [None])
                    if not isinstance(steps_list, list):
                        steps_list = [steps_list]
                    for steps in steps_list:
                        for seed in seeds:
                            opts = dict(m.get("options", {}))
                            fp = fingerprint(image=_file_digest(img, digests), crop=spec.get("crop"),
                                             degradation=fp_deg, method=m["method"],
                                             weights=weights_identity(w), steps=steps, seed=int(seed), options=opts)
                            items.append(Item(ds, img.name, task, m.get("name", m["method"]), m["method"], w, steps,
                                              int(seed), opts, fp, kind, deg))
    return items
