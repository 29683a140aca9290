"""Throughput and peak memory of DiffPIR: batch 1 vs batch N, fp32 vs fp16 / bf16.

Each configuration restores the same ``--images`` Gaussian-blurred images (``--size`` x ``--size``, ``--steps``
NFE, image k with its own kernel and seed k) through :meth:`Restorer.restore_batch`, ``--batch`` images per
network call (batch 1 = one image at a time). Models: the bundled ``diffpir-demo`` UNet and a randomly
initialised UNet of the official FFHQ layout (``diffusion_ffhq_10m.pt``'s architecture; random weights cost the
same to evaluate). All configurations run in one process (starting a process costs about a minute on a loaded
2-core machine), each model after an untimed 2-step warm-up; peak memory is the largest resident set size
sampled every 2 ms while the configuration runs (CPU), or ``torch.cuda.max_memory_allocated`` (GPU).

    python benchmarks/throughput.py                          # CPU: 64x64, 5 NFE, 8 images, fp32 and bf16
    python benchmarks/throughput.py --device cuda --size 256 --steps 20 --precisions fp32 fp16 bf16

Writes ``--out`` (markdown) and the same name with ``.json``, and prints the table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import threading
import time
from pathlib import Path


def _machine(device: str) -> str:
    import torch

    if device.startswith("cuda"):
        return f"{torch.cuda.get_device_name(0)} (CUDA {torch.version.cuda}), torch {torch.__version__}"
    model = platform.processor() or "unknown CPU"
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                model = line.split(":", 1)[1].strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return f"{model}, {os.cpu_count()} cores, torch {torch.__version__} with {torch.get_num_threads()} threads"


def _restorer(model: str, precision: str, device: str):
    import torch

    from restorekit import Restorer
    from restorekit.methods.diffpir import DiffPIR
    from restorekit.nets import FFHQ_10M, GuidedUNet

    dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[precision]
    if model == "diffpir-demo":
        return Restorer.from_pretrained("diffpir-demo", device=device, torch_dtype=dtype)
    net = GuidedUNet(FFHQ_10M)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.02)
    return DiffPIR(net, device=device, torch_dtype=dtype)


def _problem(cfg: dict, n: int):
    import torch

    from restorekit.operators import Blur, add_gaussian_noise, gaussian_kernel

    g = torch.Generator().manual_seed(1)
    s = cfg["size"]
    ops = [Blur(gaussian_kernel(9, 1.0 + 0.2 * k)) for k in range(n)]
    ys = [add_gaussian_noise(op.forward(torch.rand(1, 3, s, s, generator=g)), 0.05, g).to(cfg["device"])
          for op in ops]
    return ys, ops


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


class _PeakRSS:
    """Largest resident set size seen (sampled every 2 ms by a thread) while the block runs."""

    def __enter__(self):
        self.peak = self.before = _rss_mib()
        self._stop = threading.Event()

        def watch():
            while not self._stop.wait(0.002):
                self.peak = max(self.peak, _rss_mib())

        self._t = threading.Thread(target=watch, daemon=True)
        self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()
        self.peak = max(self.peak, _rss_mib())


def measure(cfg: dict, restorers: dict) -> dict:
    """Restore ``cfg['images']`` images ``cfg['batch']`` at a time; time and peak memory of that alone."""
    import torch

    try:
        dev = cfg["device"]
        key = (cfg["model"], cfg["precision"])
        if key not in restorers:
            restorers.clear()  # one model in memory at a time
            restorers[key] = _restorer(cfg["model"], cfg["precision"], dev)
            ys, ops = _problem(cfg, 1)
            restorers[key].restore_batch(ys, ops, [0], task="deblur", steps=2)  # warm-up, untimed
        r = restorers[key]
        ys, ops = _problem(cfg, cfg["images"])
        if dev.startswith("cuda"):
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        b, n = cfg["batch"], cfg["images"]
        outs = []
        with _PeakRSS() as mem:
            t0 = time.perf_counter()
            for i in range(0, n, b):
                outs += r.restore_batch(ys[i:i + b], ops[i:i + b], list(range(i, min(n, i + b))), task="deblur",
                                        steps=cfg["steps"])
            if dev.startswith("cuda"):
                torch.cuda.synchronize()
            dt = time.perf_counter() - t0
        if dev.startswith("cuda"):
            peak, kind = torch.cuda.max_memory_allocated() / 2**20, "CUDA max_memory_allocated"
        else:
            peak, kind = mem.peak, "peak RSS of the process"
        return {**cfg, "seconds": dt, "images_per_s": n / dt, "peak_mib": peak, "rss_before_mib": mem.before,
                "peak_kind": kind, "finite": all(bool(torch.isfinite(o).all()) for o in outs),
                "machine": _machine(dev)}
    except Exception as e:  # noqa: BLE001 - reported in the table
        return {**cfg, "error": f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"}


def table(rows: list[dict]) -> str:
    lines = ["| model | precision | batch | images | seconds | images/s | speed-up vs batch 1 | peak MiB |",
             "|---|---|---|---|---|---|---|---|"]
    base = {(r["model"], r["precision"]): r["images_per_s"] for r in rows if r.get("batch") == 1 and "error" not in r}
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['model']} | {r['precision']} | {r['batch']} | {r['images']} | - | - | - | "
                         f"{r['error']} |")
            continue
        b1 = base.get((r["model"], r["precision"]))
        sp = f"{r['images_per_s'] / b1:.2f}x" if b1 else "-"
        lines.append(f"| {r['model']} | {r['precision']} | {r['batch']} | {r['images']} | {r['seconds']:.1f} | "
                     f"{r['images_per_s']:.3f} | {sp} | {r['peak_mib']:.0f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--models", nargs="+", default=["diffpir-demo", "ffhq-layout-random"],
                    choices=["diffpir-demo", "ffhq-layout-random"])
    ap.add_argument("--precisions", nargs="+", default=["fp32", "bf16"], choices=["fp32", "fp16", "bf16"])
    ap.add_argument("--batches", nargs="+", type=int, default=[1, 8])
    ap.add_argument("--images", type=int, default=8)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--budget", type=float, default=600,
                    help="seconds for the whole sweep: configurations not started by then are listed as not run")
    ap.add_argument("--out", default="benchmarks/results/throughput.md")
    ap.add_argument("--note", default="", help="text put under the table (e.g. how loaded the machine was)")
    args = ap.parse_args(argv)

    import torch

    torch.set_grad_enabled(False)
    rows: list[dict] = []
    restorers: dict = {}
    load0 = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    start = time.perf_counter()
    for prec in args.precisions:
        for model in args.models:
            for b in args.batches:
                cfg = dict(model=model, precision=prec, batch=b, images=args.images, size=args.size,
                           steps=args.steps, device=args.device)
                if time.perf_counter() - start > args.budget:
                    row = {**cfg, "error": f"not run: the sweep's --budget of {args.budget:.0f} s was spent"}
                else:
                    row = measure(cfg, restorers)
                rows.append(row)
                msg = row.get("error") or f"{row['images_per_s']:.3f} images/s, peak {row['peak_mib']:.0f} MiB"
                print(f"{model} {prec} batch {b}: {msg}", file=sys.stderr, flush=True)
    load1 = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    machine = next((r["machine"] for r in rows if "machine" in r), args.device)
    peak_kind = next((r["peak_kind"] for r in rows if "peak_kind" in r), "peak memory")
    cmd = " ".join(argv if argv is not None else sys.argv[1:])
    text = "\n".join([
        "# DiffPIR throughput: batch size and precision",
        "",
        f"Machine: {machine}; device `{args.device}`. Gaussian deblurring of {args.images} images of "
        f"{args.size}x{args.size} (own 9x9 kernel and seed each), {args.steps} NFE, through "
        f"`Restorer.restore_batch` (batch 1 = one image per UNet call). All rows ran in one process, in the order "
        f"shown, each model after an untimed 2-step warm-up; \"peak MiB\" is the {peak_kind} while that row ran "
        f"(sampled every 2 ms; model and Python included). 1-minute load average {load0:.1f} before and "
        f"{load1:.1f} after the sweep (the machine has {os.cpu_count()} cores).",
        "",
        table(rows),
        "",
        f"Command: `python benchmarks/throughput.py{' ' + cmd if cmd else ''}`",
        "",
        args.note,
    ]).rstrip() + "\n"
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    out.with_suffix(".json").write_text(json.dumps(rows, indent=1))
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
