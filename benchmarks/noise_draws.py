"""DiffPIR's host-side Gaussian draws: upstream's channels-last ``randn_like`` against restorekit's draw, in one run.

Upstream's ``x`` is channels-last (``single2tensor4`` permutes an HWC array), so each ``torch.randn_like(x)`` runs
torch's serial CPU ``normal_`` kernel; restorekit draws the same numbers (``official_rng=True``) from the
generator's 64-bit stream with vectorised Box-Muller (``sampler.serial_normal``) and draws a batch's images in
threads. Three tables, each side by side in this process, on the same generators and seeds:

1. one 3 x S x S draw: ``torch.randn_like`` of a channels-last tensor (upstream) vs restorekit's ``_draw``;
2. a batch of N images, one generator each: upstream's draw in a loop vs restorekit's threaded ``_draw``;
3. the whole DiffPIR sampler with a stub network (zeros, so only the work outside the UNet is timed), N images,
   30 steps, deblur / SR / inpainting: restorekit as shipped vs the same code with the shortcut switched off
   (every draw through torch's serial kernel, one image after another: the draw of earlier restorekit versions).

Every row checks that the values are bit-identical. Times are medians of ``--repeats`` runs.

    python benchmarks/noise_draws.py                  # -> benchmarks/results/noise_draws.md
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))


def _median_ms(fn, repeats: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times), out


def upstream_draw(shape, g):
    """main_ddpir_*.py: ``torch.randn_like(x)`` with ``x`` channels-last (here with an explicit generator)."""
    x = torch.empty(shape, dtype=torch.float32, memory_format=torch.channels_last)
    return torch.empty_like(x).normal_(generator=g)


class _Stub(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(()))

    def forward(self, x, t):
        return torch.cat([x, x], 1) * self.w


def _sampler_row(problem: str, n: int, size: int, fast: bool):
    import demo_vs_classical as B

    from restorekit import Restorer
    from restorekit.methods.diffpir import sampler

    saved = sampler.serial_normal, sampler._pool
    if not fast:
        class _Serial:
            def map(self, fn, items):
                return map(fn, items)
        sampler.serial_normal, sampler._pool = (lambda shape, g: None), (lambda: _Serial())
    try:
        r = Restorer.from_pretrained("diffpir-demo", method="diffpir")
        r._compiled = _Stub()  # the network the sampler calls (what --compile replaces)
        x = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(0))
        obs = [B.observe(problem, x, k) for k in range(n)]
        t0 = time.perf_counter()
        out = r.restore_batch([o[0] for o in obs], [o[1] for o in obs], list(range(n)),
                              task=B.PROBLEMS[problem]["task"], **B.diffpir_options(problem, 30, None))
        return time.perf_counter() - t0, torch.cat(out)
    finally:
        sampler.serial_normal, sampler._pool = saved


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "noise_draws.md"))
    args = ap.parse_args(argv)

    from throughput import _machine

    from restorekit.methods.diffpir.sampler import _draw

    S, N = args.size, args.batch
    load0 = os.getloadavg()[0]
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    lines = [f"DiffPIR's Gaussian draws (`official_rng=True`), {_machine('cpu')}, started {started}, "
             f"1-minute load average {load0:.2f} before", ""]

    lines += ["| draw | upstream (ms) | restorekit (ms) | speed-up | bit-identical |", "|---|---|---|---|---|"]
    shape = (1, 3, S, S)
    up, a = _median_ms(lambda: upstream_draw(shape, torch.Generator().manual_seed(1)), args.repeats)
    rk, b = _median_ms(lambda: _draw(shape, torch.Generator().manual_seed(1), "cpu", torch.float32, True),
                       args.repeats)
    lines.append(f"| one image, 3x{S}x{S} | {up:.2f} | {rk:.2f} | {up / rk:.1f}x | {torch.equal(a, b)} |")
    up, a = _median_ms(lambda: torch.cat([upstream_draw(shape, torch.Generator().manual_seed(k)) for k in range(N)]),
                       args.repeats)
    rk, b = _median_ms(lambda: _draw((N, 3, S, S), [torch.Generator().manual_seed(k) for k in range(N)], "cpu",
                                     torch.float32, True), args.repeats)
    lines.append(f"| {N} images, one generator each | {up:.2f} | {rk:.2f} | {up / rk:.1f}x | {torch.equal(a, b)} |")

    lines += ["", f"Whole sampler, stub network (only the work outside the UNet), {N} images of {S}x{S}, 30 steps, "
              "batched; the old draw = the shortcut switched off in the same process:", "",
              "| problem | old draw (s) | restorekit (s) | speed-up | bit-identical |", "|---|---|---|---|---|"]
    for problem in ("deblur_gaussian", "sr_x4_bicubic", "inpaint_random50"):
        t_old, o_old = _sampler_row(problem, N, S, fast=False)
        t_new, o_new = _sampler_row(problem, N, S, fast=True)
        lines.append(f"| {problem} | {t_old:.2f} | {t_new:.2f} | {t_old / t_new:.1f}x | {torch.equal(o_old, o_new)} |")
    lines += ["", f"1-minute load average {os.getloadavg()[0]:.2f} after. "
              "Command: `python benchmarks/noise_draws.py`"]
    text = "\n".join(lines) + "\n"
    Path(args.out).write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
