"""Peak memory of the classical baselines against the size of their result: the figure behind their 32 MP limit.

``restorekit.api.MAX_MEGAPIXELS["classical"]`` refuses results above 32 MP because the filters hold several
full-size float and FFT copies. This script measures it: each case restores one image through the public API
(``Restorer.from_pretrained(method="classical").restore``) in a fresh process, and reports the growth of the
process's peak resident set size (``ru_maxrss``) from just before the call to just after it, per megapixel of
the result. Inputs are a natural photo (``examples/coffee.png``) resized to the size needed; the values do not
matter for memory.

    python benchmarks/classical_memory.py     # Wiener 1/2/4 MP, bicubic x4 to 4/16 MP, TV 1 MP, biharmonic 0.25/1
    python benchmarks/classical_memory.py --cases wiener:1 wiener:4

Writes ``--out`` (markdown) and the same name with ``.json``, and prints each row.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

#: case -> (task, algorithm, result megapixels per unit, scale): a case "NAME:MP" restores a result of MP megapixels
CASES = {"wiener": ("deblur", "wiener", 1), "tv": ("deblur", "tv", 1), "bicubic": ("sr", "bicubic", 4),
         "biharmonic": ("inpaint", "biharmonic", 1)}
DEFAULT = ["wiener:1", "wiener:2", "wiener:4", "bicubic:4", "bicubic:16", "tv:1", "biharmonic:0.25", "biharmonic:1"]

_CHILD = r"""
import json, resource, sys, time
import numpy as np, torch
from PIL import Image
from restorekit import Restorer
from restorekit.operators import BicubicDownsample, Blur, Inpainting, gaussian_kernel, make_mask
task, algorithm, h, w, scale = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
img = Image.open(sys.argv[6]).convert("RGB").resize((w, h), Image.BICUBIC)
y = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255).permute(2, 0, 1)[None]
r = Restorer.from_pretrained(method="classical")
if task == "inpaint":  # 50% random pixels, as the demo benchmark
    op = Inpainting(make_mask("random", h, w, rng=np.random.default_rng(0), prob=0.5))
else:
    op = Blur(gaussian_kernel(61, 3.0)) if task == "deblur" else BicubicDownsample(scale)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t0 = time.time()
kw = {"scale": scale} if task == "sr" else {}
out = r.restore(y, task=task, operator=op, algorithm=algorithm, max_megapixels=1000, **kw)
seconds = time.time() - t0
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"result": list(out.shape[-2:]), "before_kb": before, "after_kb": after, "seconds": seconds}))
"""


def run_case(case: str, photo: Path) -> dict:
    name, mp = case.split(":")
    task, algorithm, _ = CASES[name]
    scale = 4 if task == "sr" else 1
    side = int(round((float(mp) * 1e6) ** 0.5 / scale))  # the input's side; the result is scale x it
    r = subprocess.run([sys.executable, "-c", _CHILD, task, algorithm, str(side), str(side), str(scale), str(photo)],
                       capture_output=True, text=True)
    if r.returncode:
        raise SystemExit(f"{case}: {r.stderr.strip().splitlines()[-1] if r.stderr.strip() else r.returncode}")
    rec = json.loads(r.stdout.strip().splitlines()[-1])
    h, w = rec["result"]
    grown_gb = (rec["after_kb"] - rec["before_kb"]) / 2**20
    return {"case": case, "task": task, "algorithm": algorithm, "input": [side, side], "result": [h, w],
            "result_mp": h * w / 1e6, "peak_rss_growth_gb": grown_gb, "gb_per_mp": grown_gb / (h * w / 1e6),
            "peak_rss_gb": rec["after_kb"] / 2**20, "seconds": rec["seconds"]}


def main(argv=None) -> int:
    from throughput import _machine

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cases", nargs="+", default=DEFAULT, help="NAME:MP with NAME in " + ", ".join(CASES))
    ap.add_argument("--photo", default=str(ROOT / "examples" / "coffee.png"))
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "classical_memory.md"))
    args = ap.parse_args(argv)
    for c in args.cases:
        if c.split(":")[0] not in CASES or len(c.split(":")) != 2:
            ap.error(f"case {c!r}: use NAME:MP with NAME in {', '.join(CASES)}")
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    rows = []
    for c in args.cases:
        rows.append(run_case(c, Path(args.photo)))
        r = rows[-1]
        print(f"{c}: result {r['result'][0]}x{r['result'][1]} ({r['result_mp']:.2f} MP), peak RSS +"
              f"{r['peak_rss_growth_gb']:.2f} GB ({r['gb_per_mp']:.3f} GB/MP), {r['seconds']:.1f} s", flush=True)
    lines = [f"Classical baselines: peak memory per megapixel of the result. {_machine('cpu')}, started {started}.",
             "", "Each row is one `Restorer.restore` call in a fresh process; 'peak RSS growth' is `ru_maxrss` after "
             "the call minus before it (the process's own peak, so a call that frees memory early still counts).",
             "", "| algorithm | task | input | result | result MP | peak RSS growth (GB) | GB per MP | seconds |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['algorithm']} | {r['task']} | {r['input'][0]}x{r['input'][1]} | {r['result'][0]}x"
                     f"{r['result'][1]} | {r['result_mp']:.2f} | {r['peak_rss_growth_gb']:.2f} | {r['gb_per_mp']:.3f}"
                     f" | {r['seconds']:.1f} |")
    cases = "" if args.cases == DEFAULT else " --cases " + " ".join(args.cases)
    lines += ["", f"Command: `python benchmarks/classical_memory.py{cases}`"]
    out = Path(args.out)
    out.write_text("\n".join(lines) + "\n")
    out.with_suffix(".json").write_text(json.dumps({"machine": _machine("cpu"), "started": started, "rows": rows},
                                                   indent=1) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
