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

from ..errors import ConfigError, RestoreKitError, check_number
from ..limits import DEGRADATION, check_option
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
    from ..files import read_yaml_mapping

    cfg = read_yaml_mapping(path, "benchmark config")
    unknown = sorted(str(k) for k in set(cfg) - set(CONFIG_KEYS))
    if unknown:
        raise ConfigError(f"benchmark config {path}: unknown key(s) {', '.join(unknown)}; allowed: "
                          f"{', '.join(CONFIG_KEYS)}")
    for k in ("datasets", "tasks", "methods"):
        if not cfg.get(k):
            raise ConfigError(f"benchmark config {path} needs '{k}'")
    if not isinstance(cfg["datasets"], dict) or not isinstance(cfg["tasks"], dict):
        raise ConfigError(f"benchmark config {path}: 'datasets' and 'tasks' must be mappings (label: entry)")
    if not isinstance(cfg["methods"], list) or not all(isinstance(m, dict) for m in cfg["methods"]):
        raise ConfigError(f"benchmark config {path}: 'methods' must be a list of mappings")
    from ..operators.factory import TASKS

    for label, spec in cfg["tasks"].items():
        spec = spec or {}
        cfg["tasks"][label] = spec
        kind = spec.get("task", label)
        if kind not in TASKS:
            raise ConfigError(f"benchmark config {path}: task {label!r} is not one of {', '.join(TASKS)} "
                              f"(give 'task:' for a labelled entry)")
        check_degradation(spec, f"benchmark config {path}: task {label!r}")
    for ds, spec in cfg["datasets"].items():
        check_dataset(spec, f"benchmark config {path}: dataset {ds!r}")
        for t in (spec or {}).get("tasks", []) or []:
            if t not in cfg["tasks"]:
                raise ConfigError(f"benchmark config {path}: dataset {ds!r} names unknown task {t!r}")
    for m in cfg["methods"]:
        if "method" not in m:
            raise ConfigError(f"benchmark config {path}: every method entry needs 'method'")
        check_method(m, f"benchmark config {path}: method {m.get('name', m['method'])!r}")
        for t in m.get("tasks", []) or []:
            if t not in cfg["tasks"] and t not in TASKS:
                raise ConfigError(f"benchmark config {path}: method {m.get('name', m['method'])!r} names unknown "
                                  f"task {t!r}")
    cfg["seeds"] = check_seeds(cfg.get("seeds", [0]), f"benchmark config {path}")
    check_metrics(cfg.get("metrics", ["psnr", "ssim", "lpips"]), f"benchmark config {path}")
    if cfg.get("report") is not None and not isinstance(cfg["report"], dict):
        raise ConfigError(f"benchmark config {path}: 'report' must be a mapping (grid_images, grid_tile)")
    for k in ("name", "output", "device"):
        if cfg.get(k) is not None and not isinstance(cfg[k], str):
            raise ConfigError(f"benchmark config {path}: '{k}' must be text, got {cfg[k]!r}")
    return cfg


# -- validation of the config's entries (before anything is degraded or written) --------------------------------

#: top-level keys of a sweep config
CONFIG_KEYS = ("name", "output", "device", "datasets", "tasks", "methods", "seeds", "metrics", "report")
#: keys of a dataset entry / a method entry
DATASET_KEYS = ("path", "pattern", "limit", "crop", "tasks")
METHOD_KEYS = ("name", "method", "weights", "steps", "options", "tasks")
#: keys of a task entry that describe its degradation from files
FILE_KEYS = ("kernel_file", "kernel_index", "mask_file")
CHOICES = {"kernel": ("gaussian", "motion"), "sr_mode": ("bicubic", "blur", "realesrgan"),
           "mask": ("random", "box", "half", "extreme", "both")}


def degradation_keys() -> tuple:
    import inspect

    from ..operators.factory import make_operator

    ops = [k for k in inspect.signature(make_operator).parameters
           if k not in ("task", "hr_size", "kernel_tensor", "mask_tensor", "seed")]
    return (*NON_DEGRADATION_KEYS, "noise", *FILE_KEYS, *ops)


def check_degradation(spec: dict, where: str) -> None:
    """A task entry: known keys, finite values in range (a NaN or negative noise is a config error)."""
    if not isinstance(spec, dict):
        raise ConfigError(f"{where} must be a mapping of degradation options, got {spec!r}")
    allowed = degradation_keys()
    unknown = sorted(str(k) for k in set(spec) - set(allowed))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(allowed)}")
    for key, name in DEGRADATION.items():  # the CLI's ranges: restorekit.limits
        if key in spec and not (key == "kernel_std" and spec[key] is None):  # None: DiffPIR's random std
            check_option(spec[key], name, f"{where}: {key}")
    size = spec.get("kernel_size")
    if size is not None and (size % 2 == 0 or (spec.get("kernel") == "motion" and size < 3)):
        raise ConfigError(f"{where}: kernel_size must be an odd number"
                          f"{' >= 3' if spec.get('kernel') == 'motion' else ''}, got {size}")
    for k, choices in CHOICES.items():
        if k in spec and spec[k] not in choices:
            raise ConfigError(f"{where}: {k} {spec[k]!r}; choose {', '.join(choices)}")
    idx = spec.get("kernel_index")
    if idx is not None and idx != "by_image":
        check_number(idx, f"{where}: kernel_index (or by_image)", lo=0, integer=True)
    if "eval" in spec:
        ev = spec["eval"] or {}
        if not isinstance(ev, dict):
            raise ConfigError(f"{where}: 'eval' must be a mapping (y_channel, border)")
        try:
            eval_convention(spec)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: 'eval' border must be a whole number") from None
        if "border" in ev:
            check_number(ev["border"], f"{where}: eval border", lo=0, integer=True)


def check_dataset(spec, where: str) -> None:
    if not isinstance(spec, dict) or "path" not in spec:
        raise ConfigError(f"{where} must be a mapping with 'path'")
    unknown = sorted(str(k) for k in set(spec) - set(DATASET_KEYS))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(DATASET_KEYS)}")
    for k in ("limit", "crop"):
        if spec.get(k) is not None:
            check_number(spec[k], f"{where}: {k}", lo=1, integer=True)
    if spec.get("pattern") is not None and not isinstance(spec["pattern"], str):
        raise ConfigError(f"{where}: pattern must be text (a glob), got {spec['pattern']!r}")
    if not isinstance(spec.get("tasks") or [], list):
        raise ConfigError(f"{where}: tasks must be a list of task labels")


def check_method(m: dict, where: str) -> None:
    """A method entry: known keys and method, options a mapping, steps whole numbers >= 1. The options
    themselves are checked against the method by :func:`check_method_options` once the items are known."""
    from .peers import get_bench_method

    unknown = sorted(str(k) for k in set(m) - set(METHOD_KEYS))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(METHOD_KEYS)} "
                          f"(method options go under 'options')")
    if not isinstance(m["method"], str):
        raise ConfigError(f"{where}: 'method' must be a method name, got {m['method']!r}")
    try:
        get_bench_method(m["method"])
    except RestoreKitError as e:
        raise ConfigError(f"{where}: {e}") from None
    if not isinstance(m.get("options") or {}, dict):
        raise ConfigError(f"{where}: 'options' must be a mapping, got {m['options']!r}")
    steps = m.get("steps")
    for s in steps if isinstance(steps, list) else [steps]:
        if s is not None:
            check_option(s, "steps", f"{where}: steps")
    if not isinstance(m.get("tasks") or [], list):
        raise ConfigError(f"{where}: tasks must be a list of task labels or kinds")
    w = m.get("weights")
    if w is not None and not isinstance(w, (str, dict)):
        raise ConfigError(f"{where}: weights must be a name/path or a mapping task: weights, got {w!r}")


def check_seeds(seeds, where: str) -> list:
    if isinstance(seeds, int) and not isinstance(seeds, bool):
        seeds = [seeds]
    if not isinstance(seeds, list) or not seeds:
        raise ConfigError(f"{where}: 'seeds' must be a non-empty list of whole numbers >= 0, got {seeds!r}")
    return [check_option(s, "seed", f"{where}: seed") for s in seeds]


def check_metrics(metrics, where: str) -> None:
    from .scoring import KNOWN

    known = (*KNOWN, "fid")
    if not isinstance(metrics, list) or not all(isinstance(m, str) for m in metrics):
        raise ConfigError(f"{where}: 'metrics' must be a list of metric names ({', '.join(known)})")
    unknown = [m for m in metrics if m not in known]
    if unknown:
        raise ConfigError(f"{where}: unknown metric(s) {', '.join(unknown)}; known: {', '.join(known)}")


def check_method_options(items: list) -> None:
    """Each method's options (and steps) against the method itself, for every task it runs, before anything runs.

    Methods that need no weights (the classical baselines) build their settings here; deepinv's peers check
    their option names. Methods with weights check theirs once loaded, before the first image (``runner``)."""
    from .peers import PEERS, get_bench_method

    seen = set()
    instances: dict = {}
    for it in items:
        key = option_key(it)
        if key in seen:
            continue
        seen.add(key)
        where = f"method {it.method!r} ({it.method_name}), task {it.task!r}"
        if it.method_name in PEERS:
            allowed = PEERS[it.method_name].options
            unknown = sorted(set(it.options) - set(allowed))
            if unknown:
                raise ConfigError(f"{where}: unknown option(s) {', '.join(unknown)}; options are "
                                  f"{', '.join(allowed)}")
            continue
        cls = get_bench_method(it.method_name)
        if getattr(cls, "needs_weights", True):
            continue
        if it.method_name not in instances:
            instances[it.method_name] = cls(device="cpu")
        validate_options(instances[it.method_name], it, where)


def option_key(it: Item) -> tuple:
    """What an item's option check depends on: items with equal keys need checking once."""
    options = json.dumps(it.options, sort_keys=True, default=str)
    return (it.method, it.method_name, it.weights, it.kind, it.steps, options)


def validate_options(restorer, it: Item, where: str) -> None:
    """``restorer.make_config`` for the item's task, steps and options; a refusal is a :class:`ConfigError`.

    A classical algorithm that exists for another task only is not checked against this one: that item is
    skipped when it runs (a method that cannot do a task)."""
    kind = it.kind
    algo = it.options.get("algorithm") if it.method_name == "classical" else None
    if algo is not None:
        from ..methods.classical.restorer import ALGORITHMS

        if not isinstance(algo, str) or not any(algo in a for a in ALGORITHMS.values()):
            raise ConfigError(f"{where}: classical algorithm {algo!r}; choose one of "
                              + "; ".join(f"{t}: {', '.join(a)}" for t, a in ALGORITHMS.items()))
        if algo not in ALGORITHMS.get(kind, ()):
            kind = next(t for t, a in ALGORITHMS.items() if algo in a)
    make = getattr(restorer, "make_config", None)
    if make is None:
        return
    try:
        make(kind, it.steps, **it.options)
    except RestoreKitError as e:
        raise ConfigError(f"{where}: {e}") from None
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{where}: bad option value ({e})") from None


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
    # from the config's folder (README); the working folder as a fallback; a missing file is named as the former
    return p if (not (base / p).exists() and p.exists()) else base / p


def dataset_images(spec: dict, base: Path) -> list[Path]:
    p = resolve_path(spec["path"], base)
    if p.is_file():
        return [p]
    if not p.is_dir():
        rel = "" if Path(spec["path"]).expanduser().is_absolute() else f" (path {spec['path']!r}, taken from {base})"
        raise ConfigError(f"dataset folder not found: {p.resolve()}{rel}")  # .resolve(): no '..' left
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
