"""Running a sweep: degrade each clean image, restore it with each method, record metrics, time and memory."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import torch

from ..errors import ConfigError, RestoreKitError
from ..io import read_image, save_image
from .config import dataset_images, expand_items, load_bench_config
from .memory import PeakMemory
from .records import BenchLock, read_records, repair_records
from .reports import write_reports


def _crop(x: torch.Tensor, size: int | None) -> torch.Tensor:
    if not size:
        return x
    h, w = x.shape[-2:]
    s = min(size, h, w)
    t, l = (h - s) // 2, (w - s) // 2
    return x[..., t:t + s, l:l + s]


def degrade(x: torch.Tensor, task: str, spec: dict, seed: int):
    """(clean image cropped to the operator's grid, observation, operator), deterministic in ``seed``.

    ``task`` is the restoration task; ``spec`` the (resolved) task entry of the sweep."""
    from ..operators import synthesize
    from .degradations import synthesize_kwargs

    spec = synthesize_kwargs(spec)
    noise = float(spec.pop("noise", 0.0))
    if task == "sr":
        scale = int(spec.get("scale", 4))
        h, w = x.shape[-2:]
        x = x[..., : h - h % scale, : w - w % scale]
    y, op = synthesize(x, task, noise=noise, seed=seed, **spec)
    return x, y, op


def run_bench(config_path, output: str | None = None, device: str | None = None, limit: int | None = None,
              log=print) -> dict:
    from accelerate import PartialState

    from ..api import resolve_device
    from .config import check_method_options

    # everything is checked before a folder is made or an image degraded
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ConfigError(f"--limit must be a whole number >= 1 (the first N items), got {limit!r}")
    cfg = load_bench_config(config_path)
    base = Path(config_path).resolve().parent
    out = Path(output or cfg.get("output") or f"results/{cfg.get('name', 'bench')}")
    check_output_folder(out)
    check_report_has_records(out)
    dev = resolve_device(device or cfg.get("device"))
    items = expand_items(cfg, base)
    reported = {it.key for it in items}  # the report covers every recorded item of the config, not just --limit's
    check_method_options(items)
    _check_images(cfg, base, items[:limit])
    # several processes (accelerate launch / torchrun): GPUs get one device each; CPUs join a gloo group
    state = PartialState(cpu=dev.type == "cpu")
    if dev.type == "cuda" and state.num_processes > 1:
        dev = state.device
    made = _missing_folders(out / "images")
    try:
        out.mkdir(parents=True, exist_ok=True)
        (out / "images").mkdir(exist_ok=True)
    except OSError as e:
        raise ConfigError(f"cannot create the results folder {out}: {e.strerror or e}") from None
    from .peers import PEERS

    missing = sorted({it.method_name for it in items if it.method_name in PEERS and not PEERS[it.method_name].available()})
    if missing:
        log(f"bench: skipping {', '.join(missing)} (deepinv is not installed)")
        items = [it for it in items if it.method_name not in missing]
    if limit is not None:
        items = items[:limit]
    # one sweep at a time per folder: rank 0 takes the lock and tells the other ranks whether it got it
    lock = BenchLock(out)
    problem = None
    if state.is_main_process:
        try:
            lock.acquire()
        except RestoreKitError as e:
            problem = str(e)
    if state.num_processes > 1:
        import torch.distributed as dist

        box = [problem]
        dist.broadcast_object_list(box, src=0)
        problem = box[0]
    if problem:
        raise RestoreKitError(problem)
    try:
        return _run_locked(cfg, base, out, dev, state, items, reported, log)
    except ConfigError:
        lock.release()
        _remove_if_empty(made)  # refused before anything was written: leave no folder
        raise
    finally:
        lock.release()


def _check_images(cfg, base, items) -> None:
    """Every image the sweep will use decodes: an unreadable one stops it before it starts, not halfway."""
    specs = cfg["datasets"]
    paths = {(ds, p.name): p for ds in {it.dataset for it in items} for p in dataset_images(specs[ds], base)}
    for key in sorted({(it.dataset, it.image) for it in items}):
        try:
            read_image(paths[key])
        except RestoreKitError as e:
            raise ConfigError(f"dataset {key[0]!r}: {e}; remove or replace that file") from None


def check_output_folder(out: Path) -> None:
    """The results folder is a folder, or can be made: no part of its path is a file."""
    for p in [out, *out.parents]:
        if p.exists():
            if not p.is_dir():
                what = "is a file" if p == out else f"lies under the file {p}"
                raise ConfigError(f"results folder {out} {what}; choose another --output")
            return


#: the files :func:`write_reports` rewrites from the records
REPORT_FILES = ("summary.md", "results.csv", "report.html")


def check_report_has_records(out: Path) -> None:
    """A results folder that holds a report but none of the records it was made from (records-*.jsonl: a copy
    without them, a deleted file) is refused: writing a report there would replace it by one of fewer items."""
    if not out.is_dir() or any(out.glob("records-*.jsonl")):
        return
    have = [n for n in REPORT_FILES if (out / n).exists()]
    if have:
        raise ConfigError(f"results folder {out} holds a report ({', '.join(have)}) but not the records it was made "
                          f"from (records-*.jsonl); writing there would replace it: choose another --output")


def _missing_folders(out: Path) -> list:
    return [p for p in [out, *out.parents] if not p.exists()]


def _remove_if_empty(folders) -> None:
    for p in sorted(set(folders), key=lambda q: len(q.parts), reverse=True):
        try:
            p.rmdir()
        except OSError:
            pass  # not empty, or already gone


def _run_locked(cfg, base, out, dev, state, items, reported, log) -> dict:
    from .config import eval_convention, option_key, validate_options
    from .peers import PEERS, get_bench_method
    from .scoring import describe, score

    repair_records(out / f"records-{state.process_index}.jsonl")
    state.wait_for_everyone()
    done = read_records(out)
    mine = [it for i, it in enumerate(items) if i % state.num_processes == state.process_index]
    todo = [it for it in mine if it.key not in done]
    restorers: dict = {}
    # methods with weights: loaded and their options checked before the first image is degraded
    checked: set = set()
    for it in todo:
        rkey = (it.method_name, it.weights)
        if rkey not in restorers:
            restorers[rkey] = get_bench_method(it.method_name).from_pretrained(it.weights, device=dev)
        ckey = option_key(it)
        if ckey not in checked and it.method_name not in PEERS:
            checked.add(ckey)
            validate_options(restorers[rkey], it, f"method {it.method!r} ({it.method_name}), task {it.task!r}")
    log(f"bench: {len(items)} items, {len(items) - len([i for i in items if i.key not in done])} already done, "
        f"{len(todo)} to run on rank {state.process_index}")
    metrics = tuple(m for m in cfg.get("metrics", ["psnr", "ssim", "lpips"]) if m != "fid")
    notes: set = set()
    rec_path = out / f"records-{state.process_index}.jsonl"
    ds_specs = cfg["datasets"]
    files = {(ds, p.name): p for ds in {it.dataset for it in todo} for p in dataset_images(ds_specs[ds], base)}
    written: set = set()
    for n, it in enumerate(todo, 1):
        arr, _ = read_image(files[(it.dataset, it.image)])
        clean = _crop(torch.from_numpy(arr).permute(2, 0, 1)[None], ds_specs[it.dataset].get("crop"))
        clean, y, op = degrade(clean, it.kind, it.degradation, it.seed)
        deg_file = out / "images" / f"{it.dataset}__{it.image}__{it.task}__seed{it.seed}__degraded.png"
        clean_file = out / "images" / f"{it.dataset}__{it.image}__{it.task}__seed{it.seed}__clean.png"
        if deg_file.name not in written:  # written once per run: the degradation settings may have changed
            save_image(deg_file, y.clamp(0, 1))
            save_image(clean_file, clean)
            written.add(deg_file.name)
        rkey = (it.method_name, it.weights)
        if rkey not in restorers:
            restorers[rkey] = get_bench_method(it.method_name).from_pretrained(it.weights, device=dev)
        r = restorers[rkey]
        opts = dict(it.options)
        if it.kind == "sr":
            opts.setdefault("scale", int(it.degradation.get("scale", 4)))
        if "noise" in it.degradation and (it.method_name in ("diffpir", "classical") or it.method_name in PEERS):
            opts.setdefault("noise_level", float(it.degradation["noise"]))
        nfe = {"n": 0}

        def count(i, total, t):
            nfe["n"] = total

        try:
            with PeakMemory(dev) as mem:
                t0 = time.perf_counter()
                result = r.restore_tensor(y.to(dev), task=it.kind, operator=op, steps=it.steps, seed=it.seed,
                                          progress=count, **opts)
                if dev.type == "cuda":
                    torch.cuda.synchronize(dev)
                seconds = time.perf_counter() - t0
        except RestoreKitError as e:
            log(f"  {it.key}: skipped ({e})")
            continue
        result = result.cpu()[..., : clean.shape[-2], : clean.shape[-1]]
        conv = eval_convention(cfg["tasks"][it.task])
        scores, mnotes = score(result, clean, metrics, conv)
        notes.update(mnotes)
        img_file = out / "images" / f"{it.file_stem}.png"
        save_image(img_file, result)
        rec = {"key": it.key, "dataset": it.dataset, "image": it.image, "task": it.task, "task_kind": it.kind,
               "method": it.method, "method_name": it.method_name, "metric_convention": describe(conv),
               "weights": it.weights,
               "nfe": nfe["n"] if (it.method_name == "diffpir" or it.method_name in PEERS) else None,
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
        # records of an earlier, different config are not reported
        records = [r for k, r in read_records(out).items() if k in reported]
        summary = write_reports(out, records, sorted(notes), cfg)
    return summary




def rebuild_reports(config_path, output: str | None = None) -> dict:
    """Rewrite results.csv, summary.md, grids, plots and report.html from the recorded items of the config's
    current items (the restored images under ``images/`` are needed for the grids); runs no method."""
    cfg = load_bench_config(config_path)
    base = Path(config_path).resolve().parent
    out = Path(output or cfg.get("output") or f"results/{cfg.get('name', 'bench')}")
    if not out.is_dir():
        raise RestoreKitError(f"no results folder {out}: run the sweep first")
    check_report_has_records(out)
    if not any(out.glob("records-*.jsonl")):
        raise RestoreKitError(f"no records in {out} (records-*.jsonl): run the sweep first")
    with BenchLock(out):
        current = {it.key for it in expand_items(cfg, base)}
        records = [r for k, r in read_records(out).items() if k in current]
        return write_reports(out, records, [], cfg)
