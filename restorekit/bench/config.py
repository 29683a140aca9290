"""Sweep configuration: the YAML file and the items (image x task x method x NFE x seed) it expands to."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigError
from ..training import IMAGE_EXTS


@dataclass
class Item:
    dataset: str
    image: str  # the file name, suffix included (a.png and a.jpg are different items)
    task: str
    method: str  # label from the config
    method_name: str  # registry name
    weights: str | None
    steps: int | None
    seed: int
    options: dict
    #: hash of everything that affects the result (image bytes, crop, degradation, weights, options, ...)
    fingerprint: str = ""

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
    for k in ("datasets", "tasks", "methods"):
        if not cfg.get(k):
            raise ConfigError(f"benchmark config {path} needs '{k}'")
    return cfg


def dataset_images(spec: dict, base: Path) -> list[Path]:
    p = Path(spec["path"])
    p = p if p.is_absolute() else (base / p if (base / p).exists() else p)
    if p.is_file():
        return [p]
    if not p.is_dir():
        raise ConfigError(f"dataset folder not found: {p}")
    files = sorted(f for f in p.iterdir() if f.suffix.lower() in IMAGE_EXTS)
    if spec.get("limit"):
        files = files[: int(spec["limit"])]
    if not files:
        raise ConfigError(f"no images in {p}")
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


def expand_items(cfg: dict, base: Path) -> list[Item]:
    from ..registry import get_method

    items = []
    digests: dict = {}
    seeds = cfg.get("seeds", [0])
    for ds, spec in cfg["datasets"].items():
        for img in dataset_images(spec, base):
            for task in cfg["tasks"]:
                for m in cfg["methods"]:
                    cls = get_method(m["method"])
                    if task not in cls.tasks:
                        continue
                    w = m.get("weights")
                    if isinstance(w, dict):
                        if task not in w:
                            continue
                        w = w[task]
                    steps_list = m.get("steps", [None])
                    if not isinstance(steps_list, list):
                        steps_list = [steps_list]
                    for steps in steps_list:
                        for seed in seeds:
                            opts = dict(m.get("options", {}))
                            fp = fingerprint(image=_file_digest(img, digests), crop=spec.get("crop"),
                                             degradation=cfg["tasks"][task], method=m["method"],
                                             weights=weights_identity(w), steps=steps, seed=int(seed), options=opts)
                            items.append(Item(ds, img.name, task, m.get("name", m["method"]), m["method"], w, steps,
                                              int(seed), opts, fp))
    return items


