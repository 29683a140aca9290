"""Trials towards the demo-models issue's inpainting target (diffpir-demo 2 dB above the biharmonic fill).

Not the benchmark: tuning images only (T91 centre crops, neither training nor evaluation data), the
``inpaint_random50`` problem of ``demo_vs_classical.py`` (50% random pixels, noise-free, image k with seed 1000 + k).
Each trial calls :func:`diffpir_sample` directly, so it can try starting points restorekit has no option for:

* ``masked``: upstream's start, ``y * mask`` noised from t = 999 (the card's setting, 100 NFE);
* ``biharmonic``: the biharmonic fill noised to upstream's ``noise_init_img`` level (0-255 scale; the chain then
  skips every step above that level, so NFE < steps);
* ``avg``: the mean of that many chains (one generator per image, continued from chain to chain), an MMSE-style
  estimate.

    python benchmarks/diffpir_inpaint_trials.py --tune .rkdata/t91 --limit 8 --size 128
    python benchmarks/diffpir_inpaint_trials.py --tune .rkdata/t91 --limit 4 --size 64 --sweep steps \
        --out benchmarks/results/diffpir_inpaint_steps.md

Writes ``--out`` (markdown) and prints each row as it finishes.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

CARD = dict(lambda_=1.0, zeta=1.0, use_last_x0=True, paste_observed=True)
TRIALS = [
    dict(start="masked", avg=1, steps=100, **CARD),
    dict(start="biharmonic", avg=1, steps=130, noise_init_img=50, **CARD),
    dict(start="biharmonic", avg=4, steps=130, noise_init_img=50, **CARD),
]
# --sweep steps: does a longer chain (more steps, or upstream's inner iterations iter_num_U) close the gap?
STEP_TRIALS = [dict(start="masked", avg=1, steps=n, **CARD) for n in (30, 100, 300)] + [
    dict(start="masked", avg=1, steps=100, iter_num_U=3, **CARD),
    dict(start="masked", avg=1, steps=1000, **CARD),
]


def main(argv=None) -> int:
    import demo_vs_classical as B
    from throughput import _machine

    from restorekit import Restorer
    from restorekit.methods.diffpir.sampler import GuidedDiffusionModel, diffpir_sample

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tune", required=True, help="folder of tuning images (not training, not evaluation data)")
    ap.add_argument("--limit", type=int, default=8)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--trials", default=None, help="JSON list of trials instead of the built-in ones")
    ap.add_argument("--sweep", choices=["start", "steps"], default="start",
                    help="built-in trials: 'start' (starting points, chain means) or 'steps' (chain length)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "diffpir_inpaint_trials.md"))
    args = ap.parse_args(argv)

    crops = [x for _, x in B.centre_crops(Path(args.tune), args.size)][:args.limit]
    obs = [B.observe("inpaint_random50", x, 1000 + k) for k, x in enumerate(crops)]
    r = Restorer.from_pretrained("diffpir-demo", method="diffpir", device=args.device)
    model = GuidedDiffusionModel(r.unet, r.schedule, r.unet.size_multiple)
    fills = [B.restore_classical("biharmonic", "inpaint_random50", o[0], o[1], x) for o, x in zip(obs, crops)]
    base = float(np.mean([B.psnr(f, x) for f, x in zip(fills, crops)]))
    y = torch.cat([o[0] for o in obs]).to(args.device)
    ops = [o[1] for o in obs]
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    lines = [f"diffpir-demo, 50% random-pixel inpainting, {len(crops)} T91 centre crops of {args.size}x{args.size}, "
             f"{_machine(args.device)}, started {started}, load {os.getloadavg()[0]:.2f}", "",
             f"Biharmonic fill: {base:.2f} dB.", "",
             "| start | chains averaged | options | NFE | PSNR (dB) | vs biharmonic | seconds |", "|---|---|---|---|---|---|---|"]
    for trial in (json.loads(args.trials) if args.trials else STEP_TRIALS if args.sweep == "steps" else TRIALS):
        opts = dict(trial)
        start, avg, steps = opts.pop("start"), opts.pop("avg"), opts.pop("steps")
        cfg = r.make_config("inpaint", steps, **opts)
        x_init = (torch.cat(fills) if start == "biharmonic"
                  else torch.cat([r._x_init(o[0], o[1], "inpaint", cfg) for o in obs])).to(args.device)
        gens = [torch.Generator().manual_seed(0) for _ in obs]
        t0, total, calls = time.time(), 0, []
        for _ in range(avg):
            total = total + diffpir_sample(model, y, ops, x_init, cfg, r.schedule, gens, task="inpaint",
                                           callback=lambda i, n, t: calls.append(t)).clamp(0, 1)
        out = (total / avg).cpu()
        p = float(np.mean([B.psnr(out[k:k + 1], x) for k, x in enumerate(crops)]))
        nfe = len(calls) * int(cfg.iter_num_U)
        shown = ", ".join(f"{k}={v}" for k, v in {**opts, "steps": steps}.items())
        lines.append(f"| {start} | {avg} | {shown} | {nfe} | {p:.2f} | {p - base:+.2f} | {time.time() - t0:.0f} |")
        print(lines[-1], flush=True)
        Path(args.out).write_text("\n".join(lines) + "\n")
    sweep = f" --sweep {args.sweep}" if args.sweep != "start" and not args.trials else ""
    lines += ["", "Command: `python benchmarks/diffpir_inpaint_trials.py --tune .rkdata/t91 --limit "
              f"{args.limit} --size {args.size}{sweep}`"]
    Path(args.out).write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
