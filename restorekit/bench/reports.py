"""Reports of a sweep: results.csv, summary.md, image grids, plots and a static HTML report (report.html)."""

from __future__ import annotations

import csv
import html
import json
import os
from pathlib import Path

import numpy as np

METRICS = ("psnr", "ssim", "lpips", "dists", "niqe", "musiq")
#: lower is better
LOWER_BETTER = ("lpips", "dists", "niqe")
CLASSICAL = "classical"


def _fmt(vals):
    vals = [v for v in vals if v is not None]
    if not vals:
        return "n/a"
    if len(vals) == 1:
        return f"{vals[0]:.3f}"
    return f"{np.mean(vals):.3f} ± {np.std(vals):.3f}"


def method_type(r: dict) -> str:
    name = r.get("method_name") or ""
    if name == CLASSICAL:
        return "classical"
    if name.startswith("deepinv"):
        return "peer (deepinv)"
    return "diffusion" if name else "-"


def _nfe(r):
    return r.get("nfe") or r.get("steps")


def _group_key(r):
    return (r["dataset"], r["task"], r["method"], _nfe(r))


def _seed_stats(rs: list[dict], m: str):
    """(mean over seeds of the per-seed mean over images, std over seeds); None when no values."""
    per_seed: dict = {}
    for r in rs:
        if r.get(m) is not None:
            per_seed.setdefault(r["seed"], []).append(r[m])
    if not per_seed:
        return None, None
    means = [float(np.mean(v)) for v in per_seed.values()]
    return float(np.mean(means)), (float(np.std(means)) if len(means) > 1 else None)


def _cell(mean, std, digits=3):
    if mean is None:
        return "n/a"
    return f"{mean:.{digits}f}" + (f" ± {std:.{digits}f}" if std is not None else "")


def _describe_degradation(spec: dict) -> str:
    parts = []
    for k, v in spec.items():
        if k in ("task", "eval") or k.endswith("_sha256"):
            continue
        if k in ("kernel_file", "mask_file"):
            v = Path(str(v)).name
        parts.append(f"{k} {v}")
    return ", ".join(parts) or "defaults"


def _convention(cfg: dict, task: str, records: list[dict]) -> str:
    for r in records:
        if r["task"] == task and r.get("metric_convention"):
            return r["metric_convention"]
    from .config import eval_convention
    from .scoring import describe

    return describe(eval_convention(cfg.get("tasks", {}).get(task) or {}))


def _missing_reasons(metric_cols: list[str], records: list[dict], notes: list[str]) -> dict:
    """metric -> why its column is empty (when every value is empty)."""
    reasons = {}
    for m in metric_cols:
        if any(r.get(m) is not None for r in records):
            continue
        found = [n for n in notes if n.upper().startswith(m.upper() + " ")]
        found += [n for r in records for n in r.get("notes", []) if n.upper().startswith(m.upper() + " ")]
        if not found:
            from .scoring import unavailable_reason

            found = [unavailable_reason(m) or f"{m.upper()}: no values"]
        reasons[m] = found[0]
    return reasons


def summary_rows(records: list[dict], metric_cols: list[str]) -> list[dict]:
    groups: dict = {}
    for r in records:
        groups.setdefault(_group_key(r), []).append(r)
    rows = []
    for (ds, task, method, nfe), rs in sorted(groups.items(), key=lambda kv: tuple(str(x) for x in kv[0])):
        row = {"dataset": ds, "task": task, "method": method, "type": method_type(rs[0]), "nfe": nfe,
               "n": len(rs), "images": len({r["image"] for r in rs}), "seeds": len({r["seed"] for r in rs})}
        for m in metric_cols + ["seconds", "peak_mem_mib"]:
            row[m] = _seed_stats(rs, m)
        rows.append(row)
    return rows


def write_reports(out: Path, records: list[dict], notes: list[str], cfg: dict) -> dict:
    from ..io import atomic_write_bytes

    out = Path(out)
    metric_cols = [m for m in METRICS if any(m in r for r in records)]
    cols = ["key", "dataset", "image", "task", "task_kind", "method", "method_name", "weights", "steps", "nfe", "seed",
            "seconds", "peak_mem_mib", "memory_kind", "device"] + metric_cols + ["metric_convention", "image_file"]
    import io as _io

    buf = _io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols, extrasaction="ignore")
    w.writeheader()
    for r in sorted(records, key=lambda r: r["key"]):
        w.writerow(r)
    atomic_write_bytes(out / "results.csv", buf.getvalue().encode())
    rows = summary_rows(records, metric_cols)
    reasons = _missing_reasons(metric_cols, records, notes)
    devices = sorted({r.get("device", "?") for r in records})
    intro = (f"{len(records)} items on {', '.join(devices)}. Each cell: mean ± std over seeds of the mean over the "
             f"images (n = images x seeds; no ± with one seed). Time is wall-clock seconds per image; peak memory is "
             f"CUDA max-allocated on GPU, RSS increase on CPU. Classical baselines (type 'classical') sit beside the "
             f"diffusion methods in every table.")
    lines = [f"# Benchmark: {cfg.get('name', out.name)}", "", intro, ""]
    summary = {}
    tasks_seen = []
    for row in rows:
        if (row["dataset"], row["task"]) not in tasks_seen:
            tasks_seen.append((row["dataset"], row["task"]))
    for ds, task in tasks_seen:
        spec = (cfg.get("tasks") or {}).get(task) or {}
        kind = spec.get("task", task)
        lines += [f"## {ds} / {task}", "",
                  f"{kind}: {_describe_degradation(spec)}. Metrics: {_convention(cfg, task, records)}.", "",
                  "| dataset | task | method | type | NFE | n | " + " | ".join(m.upper() for m in metric_cols)
                  + " | s / image | peak MiB |",
                  "|---|---|---|---|---|---|" + "---|" * len(metric_cols) + "---|---|"]
        for row in rows:
            if (row["dataset"], row["task"]) != (ds, task):
                continue
            lines.append(f"| {ds} | {task} | {row['method']} | {row['type']} | {row['nfe'] or '-'} | {row['n']} | "
                         + " | ".join(_cell(*row[m]) for m in metric_cols)
                         + f" | {_cell(*row['seconds'], digits=2)} | {_cell(*row['peak_mem_mib'], digits=0)} |")
            summary[f"{ds}/{task}/{row['method']}/{row['nfe']}"] = {
                m: [r.get(m) for r in records if _group_key(r) == (ds, task, row["method"], row["nfe"])]
                for m in metric_cols}
        lines.append("")
    if reasons:
        lines += ["Empty columns:"] + [f"- {m.upper()}: {why}" for m, why in reasons.items()] + [""]
    lines += _fid_section(out, records, cfg)
    other = sorted({n for n in notes if not any(n == why for why in reasons.values())})
    if other:
        lines += ["", "Notes:"] + [f"- {n}" for n in other]
    atomic_write_bytes(out / "summary.md", ("\n".join(lines) + "\n").encode())
    grids = _grids(out, records, cfg)
    _nfe_plot(out, records)
    _seconds_plot(out, records)
    write_html(out, cfg, records, rows, metric_cols, reasons, grids)
    return summary


def _fid_section(out: Path, records: list[dict], cfg: dict) -> list[str]:
    if "fid" not in cfg.get("metrics", []):
        return []
    from ..metrics import fid

    lines = ["", "| dataset | task | method | NFE | FID |", "|---|---|---|---|---|"]
    groups: dict = {}
    for r in records:
        groups.setdefault(_group_key(r), []).append(r)
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


# ----------------------------------------------------------------------------- image grids
def _zoom_box(clean: np.ndarray, frac: float = 0.25) -> tuple[int, int, int]:
    """(top, left, side) of the square crop with the most gradient energy in the clean image."""
    g = clean.mean(-1)
    e = np.abs(np.diff(g, axis=0))[:, :-1] + np.abs(np.diff(g, axis=1))[:-1, :]
    h, w = g.shape
    s = max(8, int(min(h, w) * frac))
    best, tl = -1.0, (0, 0)
    step = max(1, s // 4)
    for t in range(0, max(1, h - s), step):
        for left in range(0, max(1, w - s), step):
            v = float(e[t:t + s, left:left + s].sum())
            if v > best:
                best, tl = v, (t, left)
    return tl[0], tl[1], s


def _grids(out: Path, records: list[dict], cfg: dict) -> list[dict]:
    """One PNG per (dataset, image, task, seed): input, each method (its largest NFE), ground truth; below each, the
    same zoomed crop. ``report: {grid_images: N}`` limits the grids to the first N images of a dataset/task."""
    from PIL import Image, ImageDraw

    rep = cfg.get("report") or {}
    tile = int(rep.get("grid_tile", 128))
    limit = rep.get("grid_images")
    (out / "grids").mkdir(exist_ok=True)
    groups: dict = {}
    for r in records:
        groups.setdefault((r["dataset"], r["image"], r["task"], r["seed"]), []).append(r)
    firsts: dict = {}
    for ds, img, task, _seed in sorted(groups):
        firsts.setdefault((ds, task), [])
        if img not in firsts[(ds, task)]:
            firsts[(ds, task)].append(img)
    made = []
    for (ds, img, task, seed), rs in sorted(groups.items(), key=lambda kv: tuple(str(x) for x in kv[0])):
        if limit is not None and img not in firsts[(ds, task)][: int(limit)]:
            continue
        stem = f"{ds}__{img}__{task}__seed{seed}"
        clean_p = out / "images" / f"{stem}__clean.png"
        deg_p = out / "images" / f"{stem}__degraded.png"
        best: dict = {}
        for r in rs:
            if r["method"] not in best or (_nfe(r) or 0) > (_nfe(best[r["method"]]) or 0):
                best[r["method"]] = r
        tiles = [("input\n", deg_p, None)]
        order = sorted(best.values(), key=lambda r: (method_type(r) == "classical", r["method"]))
        for r in order:
            label = r["method"] + "\n" + (f"{_nfe(r)} NFE " if _nfe(r) else "")
            if r.get("psnr") is not None:
                label += f"{r['psnr']:.2f} dB"
            tiles.append((label, out / r["image_file"], r))
        tiles.append(("ground truth\n", clean_p, None))
        if not clean_p.exists():
            # the images are not kept in git: a grid made when they were here stays, and stays listed
            if (out / "grids" / f"{stem}.png").exists():
                made.append({"dataset": ds, "image": img, "task": task, "seed": seed, "file": f"grids/{stem}.png",
                             "labels": [lb.replace("\n", " ").strip() for lb, _, _ in tiles], "zoom": None})
            continue
        clean = Image.open(clean_p).convert("RGB")
        H, W = clean.height, clean.width
        t, left, s = _zoom_box(np.asarray(clean, dtype=np.float32) / 255)
        scale = tile / max(H, W)
        tw, th = max(1, round(W * scale)), max(1, round(H * scale))
        zs = min(tw, th)
        ims = []
        for label, p, _ in tiles:
            if not p.exists():
                continue
            im = Image.open(p).convert("RGB")
            if im.size != (W, H):  # the SR input: shown at the output size
                im = im.resize((W, H), Image.NEAREST)
            full = im.resize((tw, th), Image.BICUBIC) if (tw, th) != (W, H) else im
            zoom = im.crop((left, t, left + s, t + s)).resize((zs, zs), Image.NEAREST)
            ims.append((label, full, zoom))
        pad, head = 4, 26
        gw = len(ims) * (tw + pad) - pad
        grid = Image.new("RGB", (gw, head + th + pad + zs), "white")
        d = ImageDraw.Draw(grid)
        for i, (label, full, zoom) in enumerate(ims):
            x = i * (tw + pad)
            for j, line in enumerate(label.split("\n")):
                d.text((x + 1, 1 + 12 * j), line[: max(4, tw // 6)], fill="black")
            grid.paste(full, (x, head))
            grid.paste(zoom, (x, head + th + pad))
        # the zoomed region on the first tile
        d.rectangle([round(left * scale), head + round(t * scale), round((left + s) * scale) - 1,
                     head + round((t + s) * scale) - 1], outline=(255, 0, 0))
        name = f"{stem}.png"
        tmp = out / "grids" / f".{name}.part"
        grid.save(tmp, format="PNG", optimize=True)
        os.replace(tmp, out / "grids" / name)
        made.append({"dataset": ds, "image": img, "task": task, "seed": seed, "file": f"grids/{name}",
                     "labels": [lb.replace("\n", " ").strip() for lb, _, _ in ims], "zoom": [int(t), int(left), int(s)]})
    return made


# ----------------------------------------------------------------------------- plots
def _plot_setup():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _panels(records):
    tasks = sorted({(r["dataset"], r["task"]) for r in records if r.get("psnr") is not None})
    return tasks


def _save(fig, out: Path, name: str, plt):
    tmp = out / f".{name}.part.png"
    fig.savefig(tmp, dpi=90)
    plt.close(fig)
    os.replace(tmp, out / name)


def _panel_grid(plt, records: list[dict]):
    """A figure with one panel per dataset/task (3 per row): (fig, axes, [(ax, (dataset, task), records)])."""
    keys = _panels(records)
    cols = min(3, len(keys))
    rows = (len(keys) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), squeeze=False)
    panels = [(ax, (ds, task), [r for r in records if (r["dataset"], r["task"]) == (ds, task)
                                and r.get("psnr") is not None])
              for ax, (ds, task) in zip(axes.ravel(), keys)]
    return fig, axes, panels


def _label_panel(ax, xlabel: str) -> None:
    ax.set_xlabel(xlabel)
    ax.set_ylabel("PSNR (dB)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6)


def _finish_grid(fig, axes, n: int, out: Path, name: str, plt) -> None:
    for ax in axes.ravel()[n:]:
        ax.axis("off")
    fig.tight_layout()
    _save(fig, out, name, plt)


def _nfe_plot(out: Path, records: list[dict]) -> None:
    """PSNR against network evaluations, one panel per dataset/task; methods without NFE as dashed lines."""
    if not any(_nfe(r) and r.get("psnr") is not None for r in records):
        return
    plt = _plot_setup()
    fig, axes, panels = _panel_grid(plt, records)
    for ax, (ds, task), rs in panels:
        by: dict = {}
        flat: dict = {}
        for r in rs:
            if _nfe(r):
                by.setdefault(r["method"], {}).setdefault(_nfe(r), []).append(r["psnr"])
            else:
                flat.setdefault(r["method"], []).append(r["psnr"])
        ticks = sorted({x for d in by.values() for x in d})
        for m, d in sorted(by.items()):
            xs = sorted(d)
            ax.plot(xs, [np.mean(d[x]) for x in xs], marker="o", label=m)
        for m, v in sorted(flat.items()):
            ax.axhline(float(np.mean(v)), linestyle="--", linewidth=1, label=m, color=f"C{len(ax.lines) % 10}")
        if ticks:
            ax.set_xscale("log")
            ax.set_xticks(ticks)
            ax.set_xticklabels([str(t) for t in ticks])
            ax.minorticks_off()
        ax.set_title(f"{ds} / {task}", fontsize=9)
        _label_panel(ax, "NFE")
    _finish_grid(fig, axes, len(panels), out, "quality_vs_nfe.png", plt)


def _seconds_plot(out: Path, records: list[dict]) -> None:
    """PSNR against seconds per image, one panel per dataset/task, one point per method and NFE."""
    if not any(r.get("psnr") is not None for r in records):
        return
    plt = _plot_setup()
    fig, axes, panels = _panel_grid(plt, records)
    for ax, (ds, task), rs in panels:
        by: dict = {}
        for r in rs:
            by.setdefault(r["method"], {}).setdefault(_nfe(r) or 0, []).append((r["seconds"], r["psnr"]))
        for i, (m, d) in enumerate(sorted(by.items())):
            keys = sorted(d)
            xs = [max(np.mean([a for a, _ in d[k]]), 1e-3) for k in keys]
            ys = [np.mean([b for _, b in d[k]]) for k in keys]
            ax.plot(xs, ys, marker="o", label=m, color=f"C{i % 10}")
        ax.set_xscale("log")
        ax.set_title(f"{ds} / {task}", fontsize=9)
        _label_panel(ax, "seconds per image")
    _finish_grid(fig, axes, len(panels), out, "psnr_vs_seconds.png", plt)


# ----------------------------------------------------------------------------- HTML
_JS = r"""
(function () {
  var table = document.getElementById('summary');
  var body = table.tBodies[0];
  function sortBy(col, dir) {
    var rows = Array.prototype.slice.call(body.rows);
    var ths = table.tHead.rows[0].cells;
    var numeric = ths[col].getAttribute('data-type') === 'num';
    rows.sort(function (a, b) {
      var x = a.cells[col].getAttribute('data-v'), y = b.cells[col].getAttribute('data-v');
      if (numeric) {
        x = x === '' ? NaN : parseFloat(x); y = y === '' ? NaN : parseFloat(y);
        if (isNaN(x) && isNaN(y)) return 0; if (isNaN(x)) return 1; if (isNaN(y)) return -1;
        return dir * (x - y);
      }
      return dir * x.localeCompare(y);
    });
    rows.forEach(function (r) { body.appendChild(r); });
    for (var i = 0; i < ths.length; i++) ths[i].removeAttribute('data-sorted');
    ths[col].setAttribute('data-sorted', dir > 0 ? 'asc' : 'desc');
    table.setAttribute('data-sort', ths[col].getAttribute('data-key') + ':' + (dir > 0 ? 'asc' : 'desc'));
  }
  var ths = table.tHead.rows[0].cells;
  for (var i = 0; i < ths.length; i++) {
    (function (i) {
      ths[i].addEventListener('click', function () {
        sortBy(i, ths[i].getAttribute('data-sorted') === 'asc' ? -1 : 1);
      });
    })(i);
  }
  // #sort=psnr:desc sorts on load (links and tests)
  var sel = document.getElementById('filter');
  sel.addEventListener('change', function () {
    var rows = body.rows;
    for (var k = 0; k < rows.length; k++) {
      var key = rows[k].getAttribute('data-group');
      rows[k].style.display = (sel.value === '' || sel.value === key) ? '' : 'none';
    }
  });
  var m = /sort=([a-z_]+):(asc|desc)/.exec(location.hash);
  if (m) {
    for (var j = 0; j < ths.length; j++) if (ths[j].getAttribute('data-key') === m[1]) sortBy(j, m[2] === 'asc' ? 1 : -1);
  }
  function ready() {
    var imgs = document.images, ok = 0;
    for (var k = 0; k < imgs.length; k++) if (imgs[k].complete && imgs[k].naturalWidth > 0) ok++;
    document.body.setAttribute('data-rows', String(body.rows.length));
    document.body.setAttribute('data-images', String(imgs.length));
    document.body.setAttribute('data-images-loaded', String(ok));
    document.body.setAttribute('data-status', ok === imgs.length ? 'ready' : 'images-missing');
  }
  if (document.readyState === 'complete') ready(); else window.addEventListener('load', ready);
})();
"""

_CSS = """
body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}
table{border-collapse:collapse;font-size:13px}
th,td{border:1px solid #ccc;padding:3px 6px;text-align:right}
th{background:#f0f0f0;cursor:pointer;user-select:none}
th[data-sorted=asc]::after{content:" \\25B2"} th[data-sorted=desc]::after{content:" \\25BC"}
td.t,th.t{text-align:left}
tr.classical td{background:#f6fbff}
.grid img{max-width:100%;image-rendering:pixelated;border:1px solid #ddd}
.note{color:#555;font-size:13px}
"""


def write_html(out: Path, cfg: dict, records: list[dict], rows: list[dict], metric_cols: list[str], reasons: dict,
               grids: list[dict]) -> None:
    """``report.html``: the summary table (sortable), the plots and the image grids, all by relative path."""
    from ..io import atomic_write_bytes

    e = html.escape
    title = f"Benchmark: {cfg.get('name', out.name)}"
    cols = ([("dataset", "dataset", "str"), ("task", "task", "str"), ("method", "method", "str"),
             ("type", "type", "str"), ("nfe", "NFE", "num"), ("n", "n", "num")]
            + [(m, m.upper() + (" ↓" if m in LOWER_BETTER else ""), "num") for m in metric_cols]
            + [("seconds", "s / image", "num"), ("peak_mem_mib", "peak MiB", "num")])
    devices = e(", ".join(sorted({str(r.get("device")) for r in records})))
    intro = (f"<p class='note'>{len(records)} items. Each cell: mean ± std over seeds of the mean over the images "
             f"(n = images × seeds). Seconds are wall-clock per image on {devices}. "
             "Click a column header to sort. Rows of classical baselines are tinted.</p>")
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{e(title)}</title>",
             f"<style>{_CSS}</style></head><body data-status='loading'>", f"<h1>{e(title)}</h1>", intro]
    # metric conventions per task
    tasks = []
    for r in rows:
        if r["task"] not in tasks:
            tasks.append(r["task"])
    parts.append("<h2>Protocols</h2><ul>")
    for t in tasks:
        spec = (cfg.get("tasks") or {}).get(t) or {}
        parts.append(f"<li><b>{e(t)}</b> ({e(spec.get('task', t))}): {e(_describe_degradation(spec))}. "
                     f"Metrics: {e(_convention(cfg, t, records))}.</li>")
    parts.append("</ul>")
    if reasons:
        parts.append("<p class='note'>Empty columns: " + "; ".join(
            f"<b>{e(m.upper())}</b>: {e(why)}" for m, why in reasons.items()) + "</p>")
    groups = []
    for r in rows:
        if f"{r['dataset']} / {r['task']}" not in groups:
            groups.append(f"{r['dataset']} / {r['task']}")
    parts.append("<h2>Summary</h2><p><label>Show <select id='filter'><option value=''>all datasets and tasks</option>"
                 + "".join(f"<option value='{e(g)}'>{e(g)}</option>" for g in groups) + "</select></label></p>")
    parts.append("<table id='summary'><thead><tr>")
    for key, label, typ in cols:
        parts.append(f"<th data-key='{key}' data-type='{typ}' class='{'t' if typ == 'str' else ''}'>{e(label)}</th>")
    parts.append("</tr></thead><tbody>")
    for row in rows:
        cls = "classical" if row["type"] == "classical" else ""
        parts.append(f"<tr class='{cls}' data-group='{e(row['dataset'] + ' / ' + row['task'])}'>")
        for key, _label, typ in cols:
            v = row.get(key)
            if isinstance(v, tuple):
                mean, std = v
                digits = 2 if key == "seconds" else (0 if key == "peak_mem_mib" else 3)
                parts.append(f"<td data-v='{'' if mean is None else repr(mean)}'>{e(_cell(mean, std, digits))}</td>")
            elif typ == "num":
                parts.append(f"<td data-v='{'' if v is None else v}'>{e(str(v) if v is not None else '-')}</td>")
            else:
                parts.append(f"<td class='t' data-v='{e(str(v))}'>{e(str(v))}</td>")
        parts.append("</tr>")
    parts.append("</tbody></table>")
    parts.append("<h2>Quality against cost</h2>")
    for name, alt in (("quality_vs_nfe.png", "PSNR vs NFE"), ("psnr_vs_seconds.png", "PSNR vs seconds per image")):
        if (out / name).exists():
            parts.append(f"<figure><img class='plot' src='{name}' alt='{alt}'><figcaption>{alt} "
                         f"(dashed: methods without NFE)</figcaption></figure>"
                         if name == "quality_vs_nfe.png" else
                         f"<figure><img class='plot' src='{name}' alt='{alt}'><figcaption>{alt}</figcaption></figure>")
    parts.append("<h2>Images</h2><p class='note'>Per dataset and task (first seed): the input, each method at its "
                 "largest NFE, the ground truth; below, the same zoomed crop (red box on the input).</p>")
    by_ds: dict = {}
    first_seed = min((g["seed"] for g in grids), default=None)
    grids = [g for g in grids if g["seed"] == first_seed]  # one seed's grids: the page stays light
    for g in grids:
        by_ds.setdefault(g["dataset"], []).append(g)
    for ds, gs in by_ds.items():
        parts.append(f"<h3>{e(ds)}</h3>")
        for g in gs:
            cap = f"{g['image']} · {g['task']} · seed {g['seed']}: " + " | ".join(g["labels"])
            parts.append(f"<figure class='grid'><img src='{e(g['file'])}' alt='{e(cap)}'>"
                         f"<figcaption class='note'>{e(cap)}</figcaption></figure>")
    parts.append(f"<script type='application/json' id='grids'>{json.dumps(grids)}</script>")
    parts.append(f"<script>{_JS}</script></body></html>")
    atomic_write_bytes(out / "report.html", "\n".join(parts).encode())
