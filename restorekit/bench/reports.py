"""Reports of a sweep: results.csv, summary.md, image grids and the quality-vs-NFE plot."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np

from ..io import save_image


def _fmt(vals):
    vals = [v for v in vals if v is not None]
    if not vals:
        return "n/a"
    if len(vals) == 1:
        return f"{vals[0]:.3f}"
    return f"{np.mean(vals):.3f} ± {np.std(vals):.3f}"


def write_reports(out: Path, records: list[dict], notes: list[str], cfg: dict) -> dict:
    from ..io import atomic_write_bytes

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
    from ..metrics import fid

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

