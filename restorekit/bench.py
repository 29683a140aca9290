"""Benchmark sweeps: methods x tasks x datasets x seeds from a YAML file.

Every (dataset image, task, method variant, seed) is one *item*. The clean
image is degraded once per (image, task, seed) with the shared operators, each
method restores it, and the item's record (metrics, seconds, peak memory) is
appended to ``records-<rank>.jsonl`` and flushed to disk before the next item
starts. Restarting the same sweep skips every item already recorded, so an
interrupted sweep resumes without recomputing. With several processes
(``accelerate launch -m restorekit.cli bench ...``) items are dealt round-robin
to the ranks; rank 0 writes the reports once all are done:

* ``results.csv`` -- one row per item
* ``summary.md``  -- mean +- std per dataset / task / method / NFE
* ``grids/*.png`` -- clean | degraded | each method, per image, task and seed
* ``quality_vs_nfe.png`` -- PSNR against network evaluations, per method and task

Example (``benchmarks/configs/demo.yaml``)::

    name: demo
    output: results/demo
    device: cpu
    datasets:
      coffee: {path: examples, crop: 128}
    tasks:
      deblur: {kernel: gaussian, kernel_std: 3.0, noise: 0.05}
      sr: {scale: 4, noise: 0.0}
      inpaint: {mask: random}
    methods:
      - {name: diffpir, method: diffpir, weights: diffpir-demo, steps: [10, 20]}
      - {name: diffir, method: diffir, weights: {sr: diffir-demo-sr, deblur: diffir-demo-deblur}}
    seeds: [0]
    metrics: [psnr, ssim, lpips]
"""

from __future__ import annotations

import csv
import json
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .errors import ConfigError, RestoreKitError
from .io import read_image, save_image
from .training import IMAGE_EXTS


@dataclass
class Item:
    dataset: str
    image: str
    task: str
    method: str  # label from the config
    method_name: str  # registry name
    weights: str | None
    steps: int | None
    seed: int
    options: dict

    @property
    def key(self) -> str:
        return f"{self.dataset}/{self.image}/{self.task}/{self.method}/nfe{self.steps or 'default'}/seed{self.seed}"

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


def expand_items(cfg: dict, base: Path) -> list[Item]:
    from .registry import get_method

    items = []
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
                            items.append(Item(ds, img.stem, task, m.get("name", m["method"]), m["method"], w, steps,
                                              int(seed), dict(m.get("options", {}))))
    return items


def _crop(x: torch.Tensor, size: int | None) -> torch.Tensor:
    if not size:
        return x
    h, w = x.shape[-2:]
    s = min(size, h, w)
    t, l = (h - s) // 2, (w - s) // 2
    return x[..., t:t + s, l:l + s]


def degrade(x: torch.Tensor, task: str, spec: dict, seed: int):
    """(clean image cropped to the operator's grid, observation, operator), deterministic in ``seed``."""
    from .operators import synthesize

    spec = dict(spec)
    noise = float(spec.pop("noise", 0.0))
    if task == "sr":
        scale = int(spec.get("scale", 4))
        h, w = x.shape[-2:]
        x = x[..., : h - h % scale, : w - w % scale]
    y, op = synthesize(x, task, noise=noise, seed=seed, **spec)
    return x, y, op


class PeakMemory:
    """Peak memory of a block: CUDA max allocated, or peak RSS above the start (sampled every 5 ms)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.peak_mib = 0.0

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.base = torch.cuda.memory_allocated(self.device)
            return self
        import psutil

        self.proc = psutil.Process()
        self.base = self.proc.memory_info().rss
        self.top = self.base
        self.stop = threading.Event()

        def watch():
            while not self.stop.is_set():
                self.top = max(self.top, self.proc.memory_info().rss)
                time.sleep(0.005)

        self.thread = threading.Thread(target=watch, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak_mib = (torch.cuda.max_memory_allocated(self.device) - self.base) / 2 ** 20
        else:
            self.stop.set()
            self.thread.join()
            self.top = max(self.top, self.proc.memory_info().rss)
            self.peak_mib = (self.top - self.base) / 2 ** 20
        return False


def _repair(path: Path) -> None:
    """Drop a line cut short by an interruption, so that new records start on a line of their own."""
    if not path.exists():
        return
    from .io import atomic_write_bytes

    text = path.read_text()
    good = []
    for line in text.splitlines():
        try:
            json.loads(line)
            good.append(line)
        except json.JSONDecodeError:
            pass
    fixed = "".join(line + "\n" for line in good)
    if fixed != text:
        atomic_write_bytes(path, fixed.encode())


def _read_records(out: Path) -> dict:
    done = {}
    for f in sorted(out.glob("records-*.jsonl")):
        for line in f.read_text().splitlines():
            try:
                r = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut by an interruption: that item runs again
            done[r["key"]] = r
    return done


def run_bench(config_path, output: str | None = None, device: str | None = None, limit: int | None = None,
              log=print) -> dict:
    from accelerate import PartialState

    from .metrics import compute_metrics
    from .registry import get_method

    cfg = load_bench_config(config_path)
    base = Path(config_path).resolve().parent
    out = Path(output or cfg.get("output") or f"results/{cfg.get('name', 'bench')}")
    dev = torch.device(device or cfg.get("device") or ("cuda" if torch.cuda.is_available() else "cpu"))
    # several processes (accelerate launch / torchrun): GPUs get one device each; CPUs join a gloo group
    state = PartialState(cpu=dev.type == "cpu")
    if dev.type == "cuda" and state.num_processes > 1:
        dev = state.device
    out.mkdir(parents=True, exist_ok=True)
    (out / "images").mkdir(exist_ok=True)
    items = expand_items(cfg, base)
    if limit is not None:
        items = items[:limit]
    _repair(out / f"records-{state.process_index}.jsonl")
    state.wait_for_everyone()
    done = _read_records(out)
    mine = [it for i, it in enumerate(items) if i % state.num_processes == state.process_index]
    todo = [it for it in mine if it.key not in done]
    log(f"bench: {len(items)} items, {len(items) - len([i for i in items if i.key not in done])} already done, "
        f"{len(todo)} to run on rank {state.process_index}")
    metrics = tuple(cfg.get("metrics", ["psnr", "ssim", "lpips"]))
    nr_metrics = tuple(m for m in metrics if m in ("niqe", "musiq"))
    fr_metrics = tuple(m for m in metrics if m in ("psnr", "ssim", "lpips"))
    restorers: dict = {}
    notes: set = set()
    rec_path = out / f"records-{state.process_index}.jsonl"
    ds_specs = cfg["datasets"]
    files = {(ds, p.stem): p for ds in {it.dataset for it in todo} for p in dataset_images(ds_specs[ds], base)}
    for n, it in enumerate(todo, 1):
        arr, _ = read_image(files[(it.dataset, it.image)])
        clean = _crop(torch.from_numpy(arr).permute(2, 0, 1)[None], ds_specs[it.dataset].get("crop"))
        clean, y, op = degrade(clean, it.task, cfg["tasks"][it.task], it.seed)
        deg_file = out / "images" / f"{it.dataset}__{it.image}__{it.task}__seed{it.seed}__degraded.png"
        clean_file = out / "images" / f"{it.dataset}__{it.image}__{it.task}__seed{it.seed}__clean.png"
        if not deg_file.exists():
            save_image(deg_file, y.clamp(0, 1))
            save_image(clean_file, clean)
        rkey = (it.method_name, it.weights)
        if rkey not in restorers:
            restorers[rkey] = get_method(it.method_name).from_pretrained(it.weights, device=dev)
        r = restorers[rkey]
        opts = dict(it.options)
        if it.task == "sr":
            opts.setdefault("scale", int(cfg["tasks"]["sr"].get("scale", 4)))
        if "noise" in cfg["tasks"][it.task] and it.method_name == "diffpir":
            opts.setdefault("noise_level", float(cfg["tasks"][it.task]["noise"]))
        nfe = {"n": 0}

        def count(i, total, t):
            nfe["n"] = total

        try:
            with PeakMemory(dev) as mem:
                t0 = time.perf_counter()
                result = r.restore_tensor(y.to(dev), task=it.task, operator=op, steps=it.steps, seed=it.seed,
                                          progress=count, **opts)
                if dev.type == "cuda":
                    torch.cuda.synchronize(dev)
                seconds = time.perf_counter() - t0
        except RestoreKitError as e:
            log(f"  {it.key}: skipped ({e})")
            continue
        result = result.cpu()[..., : clean.shape[-2], : clean.shape[-1]]
        scores, mnotes = compute_metrics(result, clean, fr_metrics)
        if nr_metrics:
            s2, n2 = compute_metrics(result, None, nr_metrics)
            scores.update(s2)
            mnotes += n2
        notes.update(mnotes)
        img_file = out / "images" / f"{it.file_stem}.png"
        save_image(img_file, result)
        rec = {"key": it.key, "dataset": it.dataset, "image": it.image, "task": it.task, "method": it.method,
               "weights": it.weights, "nfe": nfe["n"] if it.method_name == "diffpir" else None,
               "steps": it.steps, "seed": it.seed, "seconds": seconds, "peak_mem_mib": mem.peak_mib,
               "memory_kind": "cuda_max_allocated" if dev.type == "cuda" else "rss_increase",
               "device": str(dev), "image_file": str(img_file.relative_to(out)), **scores}
        with open(rec_path, "a") as f:  # one whole line per finished item
            f.write(json.dumps(rec) + "\n")
            f.flush()
            os.fsync(f.fileno())
        log(f"  [{n}/{len(todo)}] {it.key}: " + " ".join(f"{k} {v:.3f}" for k, v in scores.items() if v is not None)
            + f" ({seconds:.1f}s)")
    state.wait_for_everyone()
    summary = {}
    if state.is_main_process:
        records = list(_read_records(out).values())
        summary = write_reports(out, records, sorted(notes), cfg)
    return summary


def _fmt(vals):
    vals = [v for v in vals if v is not None]
    if not vals:
        return "n/a"
    if len(vals) == 1:
        return f"{vals[0]:.3f}"
    return f"{np.mean(vals):.3f} ± {np.std(vals):.3f}"


def write_reports(out: Path, records: list[dict], notes: list[str], cfg: dict) -> dict:
    from .io import atomic_write_bytes

    metric_cols = [m for m in ("psnr", "ssim", "lpips", "niqe", "musiq") if any(m in r for r in records)]
    cols = ["key", "dataset", "image", "task", "method", "weights", "steps", "nfe", "seed", "seconds",
            "peak_mem_mib", "memory_kind", "device"] + metric_cols + ["image_file"]
    import io as _io

    buf = _io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols, extrasaction="ignore")
    w.writeheader()
    for r in sorted(records, key=lambda r: r["key"]):
        w.writerow(r)
    atomic_write_bytes(out / "results.csv", buf.getvalue().encode())
    groups: dict = {}
    for r in records:
        groups.setdefault((r["dataset"], r["task"], r["method"], r.get("nfe") or r.get("steps")), []).append(r)
    lines = [f"# Benchmark: {cfg.get('name', out.name)}", "",
             f"{len(records)} items. Mean ± std over images and seeds. Time is wall-clock per image; peak memory is "
             f"CUDA max-allocated on GPU, RSS increase on CPU.", "",
             "| dataset | task | method | NFE | n | " + " | ".join(m.upper() for m in metric_cols)
             + " | s / image | peak MiB |",
             "|---|---|---|---|---|" + "---|" * len(metric_cols) + "---|---|"]
    summary = {}
    for (ds, task, method, nfe), rs in sorted(groups.items(), key=lambda kv: tuple(str(x) for x in kv[0])):
        row = {m: _fmt([r.get(m) for r in rs]) for m in metric_cols}
        lines.append(f"| {ds} | {task} | {method} | {nfe if nfe else '-'} | {len(rs)} | "
                     + " | ".join(row[m] for m in metric_cols)
                     + f" | {_fmt([r['seconds'] for r in rs])} | {_fmt([r['peak_mem_mib'] for r in rs])} |")
        summary[f"{ds}/{task}/{method}/{nfe}"] = {m: [r.get(m) for r in rs] for m in metric_cols}
    fid_lines = _fid_section(out, records, cfg)
    lines += fid_lines
    if notes:
        lines += ["", "Notes:"] + [f"- {n}" for n in notes]
    atomic_write_bytes(out / "summary.md", ("\n".join(lines) + "\n").encode())
    _grids(out, records)
    _nfe_plot(out, records)
    return summary


def _fid_section(out: Path, records: list[dict], cfg: dict) -> list[str]:
    if "fid" not in cfg.get("metrics", []):
        return []
    from .metrics import fid

    lines = ["", "| dataset | task | method | NFE | FID |", "|---|---|---|---|---|"]
    groups: dict = {}
    for r in records:
        groups.setdefault((r["dataset"], r["task"], r["method"], r.get("nfe") or r.get("steps")), []).append(r)
    for (ds, task, method, nfe), rs in sorted(groups.items(), key=lambda kv: tuple(str(x) for x in kv[0])):
        import shutil
        import tempfile

        with tempfile.TemporaryDirectory() as a, tempfile.TemporaryDirectory() as b:
            for i, r in enumerate(rs):
                shutil.copy(out / r["image_file"], Path(a) / f"{i}.png")
                shutil.copy(out / "images" / f"{r['dataset']}__{r['image']}__{r['task']}__seed{r['seed']}__clean.png",
                            Path(b) / f"{i}.png")
            value, reason = fid(a, b)
        if value is None:
            return ["", reason]
        lines.append(f"| {ds} | {task} | {method} | {nfe or '-'} | {value:.2f} |")
    return lines


def _grids(out: Path, records: list[dict]) -> None:
    from PIL import Image, ImageDraw

    (out / "grids").mkdir(exist_ok=True)
    groups: dict = {}
    for r in records:
        groups.setdefault((r["dataset"], r["image"], r["task"], r["seed"]), []).append(r)
    for (ds, img, task, seed), rs in groups.items():
        stem = f"{ds}__{img}__{task}__seed{seed}"
        tiles = [("clean", out / "images" / f"{stem}__clean.png"), ("degraded", out / "images" / f"{stem}__degraded.png")]
        for r in sorted(rs, key=lambda r: (r["method"], r.get("nfe") or 0)):
            label = r["method"] + (f" {r['nfe']} NFE" if r.get("nfe") else "")
            if r.get("psnr") is not None:
                label += f" {r['psnr']:.2f}dB"
            tiles.append((label, out / r["image_file"]))
        ims = []
        for label, p in tiles:
            if p.exists():
                ims.append((label, Image.open(p).convert("RGB")))
        if not ims:
            continue
        h = max(i.height for _, i in ims)
        ims = [(lb, i if i.height == h else i.resize((round(i.width * h / i.height), h), Image.NEAREST)) for lb, i in ims]
        grid = Image.new("RGB", (sum(i.width for _, i in ims) + 4 * (len(ims) - 1), h + 16), "white")
        x = 0
        d = ImageDraw.Draw(grid)
        for lb, i in ims:
            grid.paste(i, (x, 16))
            d.text((x + 2, 2), lb, fill="black")
            x += i.width + 4
        save_image(out / "grids" / f"{stem}.png", np.asarray(grid).astype(np.float32) / 255)


def _nfe_plot(out: Path, records: list[dict]) -> None:
    pts: dict = {}
    for r in records:
        if r.get("nfe") and r.get("psnr") is not None:
            pts.setdefault((r["task"], r["method"]), {}).setdefault(r["nfe"], []).append(r["psnr"])
    if not pts:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    for (task, method), d in sorted(pts.items()):
        xs = sorted(d)
        ax.plot(xs, [np.mean(d[x]) for x in xs], marker="o", label=f"{method} / {task}")
    ax.set_xlabel("network evaluations (NFE)")
    ax.set_ylabel("PSNR (dB)")
    ax.set_xscale("log")
    ticks = sorted({x for d in pts.values() for x in d})
    ax.set_xticks(ticks)
    ax.set_xticklabels([str(t) for t in ticks])
    ax.minorticks_off()
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    tmp = out / ".quality_vs_nfe.part.png"
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    os.replace(tmp, out / "quality_vs_nfe.png")

