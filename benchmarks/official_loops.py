"""Side by side: the OFFICIAL loops and restorekit on the same random full-size networks and the same inputs.

For each method this script

1. copies the official checkout (``--official ROOT``, holding ``DiffPIR/``, ``DiffIR/``, ``DiffBIR/``) into a work
   folder outside the repository (``--work``, default ``/tmp/rk_official_bench``), so that its hard-coded settings
   can be changed there (every text edit is listed by :data:`EDITS` and printed into the results; none touches the
   math);
2. writes random weights of the official full-size architecture in the official file layout where the official
   code looks for them;
3. runs the official entry point as a subprocess (``cwd`` = the copy, interpreter ``--official-python``), through a
   small runner (``_official_runner.py``, written into the work folder) that sets ``sys.argv``, wraps a few
   official functions to time the sampling loop (first to last network call) and to capture the inputs the loop
   received and its float output, then calls the script's ``main`` / ``__main__`` code unchanged;
4. runs restorekit (this repository's API) in a fresh subprocess on the same weight file and the same captured
   inputs with the same settings and seed;
5. reports per image: sampling-loop wall time (first network call to last), process wall time, model-loading time
   where it can be separated, peak RSS (``wait4``), NFE, and the max abs difference of the outputs (float and
   saved 8-bit), with the 1-minute load average before and after each row.

    python benchmarks/official_loops.py --official /work/official --official-python /tmp/venv/bin/python \\
        --methods diffpir --diffpir-size 256 --diffpir-steps 10 --repeats 2

Writes ``--out`` (markdown) and the same path with ``.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# ---------------------------------------------------------------------------------------------------------------
# Text edits made in the COPY of an official checkout (file, old text, new text, why). Each old text must occur
# exactly once; the edit is refused otherwise.
def diffpir_edits(steps: int, seed: int, testset: str) -> list:
    """The edits of main_ddpir_deblur.py in the copy: its settings are hard-coded in main()."""
    f = "main_ddpir_deblur.py"
    return [
        (f, "    testset_name            = 'demo_test'", f"    testset_name            = '{testset}'",
         "test set folder (one image made by this script)"),
        (f, "    iter_num                = 100 ", f"    iter_num                = {steps} ", "NFE"),
        (f, "    calc_LPIPS              = True", "    calc_LPIPS              = False",
         "LPIPS would download VGG weights (no network); it is computed after the loop"),
        (f, "            x = sqrt_alpha_effective * (2*y-1) + torch.sqrt(",
         f"            torch.manual_seed({seed})  # restorekit benchmark: seed torch before the first draw\n"
         "            x = sqrt_alpha_effective * (2*y-1) + torch.sqrt(",
         "upstream's main_ddpir_deblur.py never seeds torch (its noise differs on every run); seeded here "
         "right before the first randn_like so that both sides draw from the same stream"),
    ]


def apply_edits(copy: Path, edits: list) -> list[dict]:
    done = []
    for fname, old, new, why in edits:
        p = copy / fname
        text = p.read_text()
        if text.count(old) != 1:
            raise SystemExit(f"edit of {p} refused: the text to replace occurs {text.count(old)} times")
        p.write_text(text.replace(old, new))
        done.append({"file": fname, "old": old, "new": new, "why": why})
    return done


def copy_checkout(src: Path, dst: Path, ignore=()) -> Path:
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns(".git", *ignore), symlinks=True)
    return dst


# ---------------------------------------------------------------------------------------------------------------
# The runner executed inside the official copy. It only wraps (times / records) official functions and then runs
# the official entry point unchanged.
RUNNER = r'''
import json, os, resource, runpy, sys, time
spec = json.load(open(sys.argv[1]))
os.chdir(spec["cwd"])
sys.path.insert(0, spec["cwd"])
for p in spec.get("extra_path", []):
    sys.path.insert(0, p)
import numpy as np
import torch
rec = {"calls": 0, "first": None, "last": None, "t_start_script": time.perf_counter(), "captured": {},
       "durations": [], "totals": []}

def timed(mod, name, count=True):
    f = getattr(mod, name)
    def w(*a, **k):
        t0 = time.perf_counter()
        if rec["first"] is None:
            rec["first"] = t0
        out = f(*a, **k)
        rec["last"] = time.perf_counter()
        if count:
            rec["calls"] += 1
            rec["durations"].append(rec["last"] - t0)
        return out
    setattr(mod, name, w)

def capture(mod, name, keys, which):
    f = getattr(mod, name)
    def w(*a, **k):
        if name not in rec["captured"]:
            rec["captured"][name] = {kk: (a[i].detach().cpu() if torch.is_tensor(a[i]) else a[i])
                                     for kk, i in zip(keys, which)}
        return f(*a, **k)
    setattr(mod, name, w)

def capture_out(mod, name, key):
    f = getattr(mod, name)
    def w(*a, **k):
        out = f(*a, **k)
        rec["captured"].setdefault(key, []).append(a[0].detach().cpu().clone() if torch.is_tensor(a[0]) else a[0])
        return out
    setattr(mod, name, w)

HOOKS = {}

def _diffpir():
    from utils import utils_model, utils_sisr, utils_image
    timed(utils_model, "model_fn")
    capture(utils_sisr, "pre_calculate", ["y", "k"], [0, 1])
    capture_out(utils_image, "tensor2uint", "x0")
HOOKS["diffpir"] = _diffpir

def _diffir():
    from DiffIR.models import DiffIR_GAN_S2_model as mm
    cls = mm.DiffIRGANS2Model
    f = cls.test
    def w(self):
        t0 = time.perf_counter()
        if rec["first"] is None:
            rec["first"] = t0
        f(self)
        rec["last"] = time.perf_counter()
        rec["calls"] += 1
        rec["durations"].append(rec["last"] - t0)
        rec["captured"].setdefault("lq", []).append(self.lq.detach().cpu().clone())
        rec["captured"].setdefault("x0", []).append(self.output.detach().cpu().clone())
    cls.test = w
HOOKS["diffir"] = _diffir

def _diffbir():
    from diffbir.model import cldm as cldm_mod
    from diffbir import pipeline as pl
    timed(cldm_mod.ControlLDM, "forward")
    f = pl.Pipeline.run
    def run(self, lq, *a, **k):
        t0 = time.perf_counter()
        out = f(self, lq, *a, **k)
        rec["totals"].append(time.perf_counter() - t0)
        rec["captured"].setdefault("lq", []).append(torch.from_numpy(lq.copy()))
        rec["captured"].setdefault("out_uint8", []).append(torch.from_numpy(out.copy()))
        return out
    pl.Pipeline.run = run
HOOKS["diffbir"] = _diffbir
''' + r'''
def vmhwm_mib():
    """This process's own peak RSS (VmHWM; getrusage's ru_maxrss would start at the parent's RSS at fork)."""
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

HOOKS[spec["method"]]()
sys.argv = [spec["script"]] + spec["argv"]
t0 = time.perf_counter()
runpy.run_path(spec["script"], run_name="__main__")
t1 = time.perf_counter()
out = {"loop_s": (rec["last"] - rec["first"]) if rec["first"] else None, "calls": rec["calls"],
       "durations": rec["durations"], "totals": rec["totals"],
       "script_s": t1 - t0, "peak_rss_mib": vmhwm_mib()}
torch.save(rec["captured"], spec["capture"])
json.dump(out, open(spec["result"], "w"))
'''


def run_measured(cmd, cwd, env=None) -> dict:
    """Run ``cmd``; wall time, peak RSS of the child (wait4), exit code, output tail, load average around it."""
    la0 = os.getloadavg()[0]
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out = p.stdout.read()
    _, status, ru = os.wait4(p.pid, 0)
    p.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - t0
    return {"rc": p.returncode, "wall_s": wall, "peak_rss_mib": ru.ru_maxrss / 1024, "load_before": la0,
            "load_after": os.getloadavg()[0], "tail": out[-3000:]}


def run_official(method, copy: Path, script: str, argv: list, work: Path, py: str, tag: str, extra_path=()) -> dict:
    runner = work / "_official_runner.py"
    runner.write_text(RUNNER)
    spec = {"method": method, "cwd": str(copy), "script": script, "argv": argv, "extra_path": list(extra_path),
            "capture": str(work / f"{method}_{tag}_capture.pt"), "result": str(work / f"{method}_{tag}_result.json")}
    sp = work / f"{method}_{tag}_spec.json"
    sp.write_text(json.dumps(spec))
    env = dict(os.environ, PYTHONHASHSEED="0")
    m = run_measured([py, str(runner), str(sp)], cwd=copy, env=env)
    if m["rc"] != 0:
        raise RuntimeError(f"official {method} failed (rc {m['rc']}):\n{m['tail']}")
    m.update(json.loads(Path(spec["result"]).read_text()))
    m["capture"] = spec["capture"]
    return m


def run_restorekit(method: str, spec: dict, work: Path, tag: str) -> dict:
    sp = work / f"{method}_{tag}_rk_spec.json"
    spec = dict(spec, result=str(work / f"{method}_{tag}_rk_result.json"))
    sp.write_text(json.dumps(spec))
    m = run_measured([sys.executable, str(Path(__file__).resolve()), "--_rk", method, str(sp)], cwd=REPO)
    if m["rc"] != 0:
        raise RuntimeError(f"restorekit {method} failed (rc {m['rc']}):\n{m['tail']}")
    m.update(json.loads(Path(spec["result"]).read_text()))
    return m


def _count_calls(*modules, count=None):
    """Wrap each module's ``forward``: counts the calls of ``count`` (default: the first module), first call start
    and last call end over all of them (perf_counter), and each counted call's duration."""
    rec = {"calls": 0, "first": None, "last": None, "durations": []}
    count = modules[0] if count is None else count
    for module in modules:
        fwd = module.forward

        def w(*a, _fwd=fwd, _m=module, **k):
            t0 = time.perf_counter()
            if rec["first"] is None:
                rec["first"] = t0
            out = _fwd(*a, **k)
            rec["last"] = time.perf_counter()
            if _m is count:
                rec["calls"] += 1
                rec["durations"].append(rec["last"] - t0)
            return out

        module.forward = w
    return rec


def _rss_mib() -> float:
    """This process's own peak RSS: VmHWM (getrusage's ru_maxrss starts at the parent's RSS at fork on Linux)."""
    import resource

    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ---------------------------------------------------------------------------------------------------------------
# DiffPIR: main_ddpir_deblur.py (Gaussian deblurring; its settings are hard-coded in main()), FFHQ layout.
# main_ddpir.py --opt configs/deblur.yaml cannot run deblurring on CPU or GPU: its batched kernel k has shape
# (B, 61, 61) and torch.einsum('ab,cd->abcd', eye(3), k) raises (main_ddpir.py L302).

def diffpir_weights(path: Path, seed: int = 0) -> None:
    """Random weights of ``diffusion_ffhq_10m.pt``'s architecture, saved as the official file (a plain
    state_dict with guided-diffusion's key names; restorekit's GuidedUNet uses the same keys)."""
    import torch

    from restorekit.nets import FFHQ_10M, GuidedUNet

    net = GuidedUNet(FFHQ_10M)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.02)
    torch.save(net.state_dict(), path)


def bench_image(n: int):
    """examples/coffee.png, centre square, resized to n x n (bicubic)."""
    from PIL import Image

    im = Image.open(REPO / "examples" / "coffee.png").convert("RGB")
    s = min(im.size)
    im = im.crop(((im.width - s) // 2, (im.height - s) // 2, (im.width - s) // 2 + s, (im.height - s) // 2 + s))
    return im.resize((n, n), Image.BICUBIC)


def prepare_diffpir(args, work: Path) -> dict:
    copy = copy_checkout(Path(args.official) / "DiffPIR", work / "DiffPIR", ignore=("testsets", "results", "figs"))
    edits = apply_edits(copy, diffpir_edits(args.diffpir_steps, args.seed, "rk_bench"))
    # DiffPIR's README: "download https://github.com/LeviBorodenko/motionblur to the DiffPIR folder"
    # (utils_deblur.py imports it at the top, also for Gaussian blur)
    mb = Path(args.motionblur)
    if mb.name == ".git" or (mb / "HEAD").is_file():
        (copy / "motionblur").mkdir()
        tar = subprocess.run(["git", f"--git-dir={mb}", "archive", "HEAD"], check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(copy / "motionblur")], input=tar, check=True)
    else:
        shutil.copytree(mb, copy / "motionblur", ignore=shutil.ignore_patterns(".git"))
    (copy / "model_zoo").mkdir(exist_ok=True)
    wpath = copy / "model_zoo" / "diffusion_ffhq_10m.pt"
    diffpir_weights(wpath)
    n = args.diffpir_size
    ts = copy / "testsets" / "rk_bench"
    ts.mkdir(parents=True)
    bench_image(n).save(ts / "coffee.png")
    # main_ddpir_deblur.py: lambdas = [lambda_*i for i in range(7,8)], zeta_i = zeta*3 -> lambda 7, zeta 0.3
    opts = {"steps": args.diffpir_steps, "seed": args.seed, "lambda_": 1.0 * 7, "zeta": 0.1 * 3,
            "noise_level": 12.75 / 255.0, "start_from_t_y": True}
    return {"copy": copy, "weights": wpath, "edits": edits, "opts": opts,
            "official_cmd": f"cd {copy} && {args.official_python} main_ddpir_deblur.py",
            "setting": f"main_ddpir_deblur.py: Gaussian deblurring, 61x61 kernel (upstream's per-image std), "
                       f"sigma_n 12.75/255, {n}x{n} (examples/coffee.png), {args.diffpir_steps} NFE (quad), "
                       f"lambda 7, zeta 0.3, start from t_y, torch seed {args.seed}; FFHQ-layout UNet "
                       f"(diffusion_ffhq_10m.pt architecture, random weights N(0, 0.02^2))"}


def official_diffpir(args, prep, work, tag) -> dict:
    m = run_official("diffpir", prep["copy"], "main_ddpir_deblur.py", [], work, args.official_python, tag)
    saved = sorted(Path(prep["copy"], "results").glob("*/coffee_diffusion_ffhq_10m.png"))
    m["saved_png"] = str(saved[-1]) if saved else None
    m["nfe"] = m.pop("calls")
    return m


def rk_diffpir(spec: dict) -> dict:
    import numpy as np
    import torch

    t0 = time.perf_counter()
    from restorekit import Restorer
    from restorekit.operators import Blur

    cap = torch.load(spec["capture"])
    y = cap["pre_calculate"]["y"].float()
    k = cap["pre_calculate"]["k"].float()[0, 0]  # (1,1,kh,kw) -> (kh, kw): single2tensor4_batch(k[..., None])
    t1 = time.perf_counter()
    r = Restorer.from_pretrained(spec["weights"], method="diffpir", device="cpu")
    load_s = time.perf_counter() - t1
    rec = _count_calls(r.unet)
    t2 = time.perf_counter()
    out = r.restore_tensor(y, "deblur", Blur(k), **spec["opts"])
    restore_s = time.perf_counter() - t2
    timing = {"loop_s": rec["last"] - rec["first"], "restore_s": restore_s, "load_s": load_s, "nfe": rec["calls"],
              "durations": rec["durations"],
              "script_s": time.perf_counter() - t0, "peak_rss_self_mib": _rss_mib()}
    ref = cap["x0"][0].float()
    u8 = lambda z: np.uint8((z.clamp(0, 1).numpy() * 255.0).round()).astype(np.int16)
    res = {}
    if spec.get("saved_png"):
        from PIL import Image

        from restorekit.io import save_image

        mine = Path(spec["result"]).with_suffix(".png")
        save_image(mine, out)
        a = np.asarray(Image.open(mine).convert("RGB")).astype(np.int16)
        b = np.asarray(Image.open(spec["saved_png"]).convert("RGB")).astype(np.int16)
        res["max_abs_saved_png"] = int(np.abs(a - b).max())
        res["pixels_differing_png"] = int((a != b).any(-1).sum())
    if spec.get("diagnose"):
        res |= diffpir_diagnose(r, y, k, ref, spec)
    return res | timing | {
            "max_abs_float": float((out - ref.clamp(0, 1)).abs().max()),
            "max_abs_uint8": int(np.abs(u8(out) - u8(ref)).max()),
            "mean_abs_float": float((out - ref.clamp(0, 1)).abs().mean())}


def diffpir_diagnose(r, y, k, ref, spec) -> dict:
    """Where an output difference comes from: (a) restorekit with its data step replaced by upstream's own
    float32 ``utils_sisr.data_solution`` (imported from the copy; restorekit runs that step in float64);
    (b) restorekit with the next seed (how far apart two noise draws put the outputs)."""
    import importlib.util

    from restorekit.methods.diffpir import sampler
    from restorekit.operators import Blur

    spec_ = importlib.util.spec_from_file_location("official_utils_sisr",
                                                   Path(spec["official_copy"]) / "utils" / "utils_sisr.py")
    sisr = importlib.util.module_from_spec(spec_)
    spec_.loader.exec_module(sisr)
    k4 = k[None, None]
    FB, FBC, F2B, FBFy = sisr.pre_calculate(y, k4, 1)
    orig = sampler._Problem.analytic

    def official_fp32(self, x0, rho):
        x0_p = x0 / 2 + 0.5
        x0_p = sisr.data_solution(x0_p.float(), FB, FBC, F2B, FBFy, rho.float().repeat(1, 1, 1, 1), 1)
        x0_p = x0_p * 2 - 1
        return x0 + self.cfg.guidance_scale * (x0_p - x0)

    sampler._Problem.analytic = official_fp32
    try:
        a = r.restore_tensor(y, "deblur", Blur(k), **spec["opts"])
    finally:
        sampler._Problem.analytic = orig
    opts = dict(spec["opts"], seed=spec["opts"]["seed"] + 1)
    b = r.restore_tensor(y, "deblur", Blur(k), **opts)
    c = r.restore_tensor(y, "deblur", Blur(k), data_precision="float32", **spec["opts"])  # the public option
    return {"diag_fp32_official_data_step_max_abs": float((a - ref.clamp(0, 1)).abs().max()),
            "diag_data_precision_float32_max_abs": float((c - ref.clamp(0, 1)).abs().max()),
            "diag_next_seed_max_abs": float((b - ref.clamp(0, 1)).abs().max()),
            "diag_next_seed_mean_abs": float((b - ref.clamp(0, 1)).abs().mean())}


def restorekit_diffpir(args, prep, work, tag, official_result) -> dict:
    spec = {"capture": official_result["capture"], "weights": str(prep["weights"]), "opts": prep["opts"],
            "saved_png": official_result.get("saved_png"), "official_copy": str(prep["copy"]),
            "diagnose": args.diagnose and tag == "r0"}
    return run_restorekit("diffpir", spec, work, tag)


# ---------------------------------------------------------------------------------------------------------------
# DiffIR: DiffIR-RealSR `python DiffIR/test.py -opt options/test_DiffIRS2_GAN_x4.yml` (BasicSR test_pipeline).

def diffir_edits(seed: int) -> list:
    f = "DiffIR/models/DiffIR_GAN_S2_model.py"
    return [
        (f, "        self.jpeger = DiffJPEG(differentiable=False).cuda()",
         "        self.jpeger = DiffJPEG(differentiable=False).to(self.device)",
         "device only: hard-coded .cuda() (a training-time degradation module, unused at test time)"),
        (f, "        self.usm_sharpener = USMSharp().cuda()", "        self.usm_sharpener = USMSharp().to(self.device)",
         "device only, as above"),
        (f, "        else:\n            self.model_Es1 = self.net_g_S1.module.E",
         "        else:\n            self.model_Es1 = self.net_g_S1.E",
         "BasicSR's model_to_device wraps in DataParallel only with more than one GPU, so `.module` does not "
         "exist on CPU (nor on one GPU); model_Es1 is used only in training"),
        (f, "        else:\n            self.net_g.eval()\n            with torch.no_grad():",
         f"        else:\n            self.net_g.eval()\n            torch.manual_seed({seed})  # restorekit benchmark\n"
         "            with torch.no_grad():",
         "parity only: test_pipeline seeds torch (manual_seed 0) before building the networks, whose random "
         "init consumes the generator; re-seeding right before the forward makes the 4-step diffusion's "
         "draws start at the seed, as restorekit's seed does"),
    ]


BUILD_DIFFIR = r'''
import sys, torch, yaml
sys.path.insert(0, ".")
import DiffIR.archs  # registers DiffIRS1 / DiffIRS2
from basicsr.archs import build_network
opt = yaml.safe_load(open(sys.argv[1]))
for i, (key, path) in enumerate((("network_g", sys.argv[2]), ("network_S1", sys.argv[3]))):
    torch.manual_seed(i)
    net = build_network(dict(opt[key]))
    g = torch.Generator().manual_seed(10 + i)
    with torch.no_grad():  # official init plus N(0, 0.02^2), so that zero-initialised layers are not zero
        for p in net.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.02)
    sd = net.state_dict()
    torch.save({"params": sd, "params_ema": sd}, path)  # BasicSR save_network layout
'''


def prepare_diffir(args, work: Path) -> dict:
    import yaml

    src = Path(args.official) / "DiffIR" / "DiffIR-RealSR"
    copy = copy_checkout(src, work / "DiffIR-RealSR", ignore=("figs", "docs", "results", "experiments"))
    # what `python setup.py develop` writes (DiffIR/__init__.py imports it)
    (copy / "DiffIR" / "version.py").write_text(
        f"# GENERATED VERSION FILE\n__version__ = '{(copy / 'VERSION').read_text().strip()}'\n"
        "__gitsha__ = 'unknown'\nversion_info = (0, 2, 5, 0)\n")
    edits = apply_edits(copy, diffir_edits(args.seed))
    opt = yaml.safe_load((copy / "options" / "test_DiffIRS2_GAN_x4.yml").read_text())
    ts = copy / "testsets" / "rk_bench"
    ts.mkdir(parents=True)
    n = args.diffir_size
    bench_image(n).save(ts / "coffee.png")
    (copy / "experiments").mkdir()
    opt["name"] = "rk_bench"
    opt["datasets"] = {"test_1": {"name": "rk_bench", "type": "SingleImageDataset", "dataroot_lq": str(ts),
                                  "io_backend": {"type": "disk"}}}
    opt["path"]["pretrain_network_S1"] = "experiments/DiffIRS1.pth"
    opt["path"]["pretrain_network_g"] = "experiments/DiffIRS2-GAN.pth"
    (copy / "options" / "rk_bench.yml").write_text(yaml.safe_dump(opt, sort_keys=False))
    build = work / "_build_diffir.py"
    build.write_text(BUILD_DIFFIR)
    r = subprocess.run([args.official_python, str(build), "options/rk_bench.yml", "experiments/DiffIRS2-GAN.pth",
                        "experiments/DiffIRS1.pth"], cwd=copy, capture_output=True, text=True, check=False)
    if r.returncode != 0:
        raise RuntimeError(f"building the DiffIR weights failed:\n{r.stderr[-3000:]}")
    return {"copy": copy, "weights": copy / "experiments" / "DiffIRS2-GAN.pth", "edits": edits,
            "official_cmd": f"cd {copy} && {args.official_python} DiffIR/test.py -opt options/rk_bench.yml",
            "setting": f"DiffIR-RealSR x4 (test_DiffIRS2_GAN_x4.yml networks: DIRformer dim 64, blocks "
                       f"[13,1,1,1], 4-step IPR diffusion), {n}x{n} LR input (examples/coffee.png) -> "
                       f"{4 * n}x{4 * n}, seed {args.seed}; weights: the official modules' own init plus "
                       f"N(0, 0.02^2), built by the official code and saved as BasicSR .pth (params / params_ema)"}


def official_diffir(args, prep, work, tag) -> dict:
    m = run_official("diffir", prep["copy"], "DiffIR/test.py", ["-opt", "options/rk_bench.yml"], work,
                     args.official_python, tag)
    m["nfe"] = None
    m["images"] = m.pop("calls")
    saved = sorted(Path(prep["copy"], "results", "rk_bench", "visualization").rglob("coffee*.png"))
    m["saved_png"] = str(saved[-1]) if saved else None
    return m


def _png_diff(out, saved_png, mine) -> dict:
    import numpy as np
    from PIL import Image

    from restorekit.io import save_image

    save_image(mine, out)
    a = np.asarray(Image.open(mine).convert("RGB")).astype(np.int16)
    b = np.asarray(Image.open(saved_png).convert("RGB")).astype(np.int16)
    return {"max_abs_saved_png": int(np.abs(a - b).max()), "pixels_differing_png": int((a != b).any(-1).sum())}


def rk_diffir(spec: dict) -> dict:
    import numpy as np
    import torch

    t0 = time.perf_counter()
    from restorekit import Restorer

    cap = torch.load(spec["capture"])
    lq = cap["lq"][0].float()
    ref = cap["x0"][0].float()
    t1 = time.perf_counter()
    r = Restorer.from_pretrained(spec["weights"], method="diffir", device="cpu")
    load_s = time.perf_counter() - t1
    rec = _count_calls(r.net)
    t2 = time.perf_counter()
    out = r.restore_tensor(lq, "sr", seed=spec["seed"])
    restore_s = time.perf_counter() - t2
    res = {"loop_s": rec["last"] - rec["first"], "restore_s": restore_s, "load_s": load_s, "images": rec["calls"],
           "durations": rec["durations"],
           "nfe": None, "script_s": time.perf_counter() - t0, "peak_rss_self_mib": _rss_mib(),
           "preset": getattr(r, "preset", None)}
    u8 = lambda z: np.uint8((z.clamp(0, 1).numpy() * 255.0).round()).astype(np.int16)
    res |= {"max_abs_float": float((out - ref.clamp(0, 1)).abs().max()),
            "max_abs_uint8": int(np.abs(u8(out) - u8(ref)).max())}
    if spec.get("saved_png"):
        res |= _png_diff(out, spec["saved_png"], Path(spec["result"]).with_suffix(".png"))
    if spec.get("diagnose"):
        b = r.restore_tensor(lq, "sr", seed=spec["seed"] + 1)
        res["diag_next_seed_max_abs"] = float((b - ref.clamp(0, 1)).abs().max())
    return res


def restorekit_diffir(args, prep, work, tag, official_result) -> dict:
    spec = {"capture": official_result["capture"], "weights": str(prep["weights"]), "seed": args.seed,
            "saved_png": official_result.get("saved_png"), "diagnose": args.diagnose and tag == "r0"}
    return run_restorekit("diffir", spec, work, tag)


# ---------------------------------------------------------------------------------------------------------------
# DiffBIR: `python inference.py --version v2 --task sr ...` (BSRNet stage 1, SD 2.1 + IRControlNet v2).

def diffbir_edits(seed: int) -> list:
    return [
        ("diffbir/sampler/edm_sampler.py", "        x_size: torch.Tuple[int],", "        x_size: tuple,",
         "annotation only: torch >= 2.x no longer re-exports typing.Tuple as torch.Tuple (import error)"),
        ("diffbir/utils/common.py",
         "    def __exit__(self, exc_type, exc_value, traceback):\n        torch.cuda.synchronize()",
         "    def __exit__(self, exc_type, exc_value, traceback):\n        if torch.cuda.is_available():\n"
         "            torch.cuda.synchronize()",
         "device only: VRAMPeakMonitor synchronises CUDA unconditionally, which raises on a machine without "
         "a GPU (monitoring code, no effect on results)"),
        ("diffbir/pipeline.py", "    ) -> np.ndarray:\n        lq_tensor = (",
         f"    ) -> np.ndarray:\n        torch.manual_seed({seed})  # restorekit benchmark\n        lq_tensor = (",
         "parity only: inference.py calls set_seed(seed) before building the models, whose random init "
         "consumes the generator; re-seeding at the start of Pipeline.run makes the sampler's draws start at "
         "the seed, as restorekit's seed does"),
    ]


def diffbir_weights(folder: Path) -> None:
    """What pretrained_models.py downloads for v2 / sr, at full size with random weights in the official layout and
    names (the builders of tests/test_diffbir_official_files.py): SD 2.1 ldm checkpoint (UNet, VAE, OpenCLIP-H
    text tower), IRControlNet v2, BSRNet; plus SD 2.1's tokenizer files, which restorekit reads."""
    import gc

    import torch
    from diffusers import UNet2DConditionModel

    sys.path.insert(0, str(REPO))
    from tests.test_diffbir_official_files import (
        _openclip_text_tower,
        _random_like,
        _write_tokenizer_files,
        write_sd21_checkpoint,
    )

    from restorekit.methods.diffbir import IRControlNet
    from restorekit.methods.diffbir.convert import SD21_UNET, controlnet_to_ldm
    from restorekit.nets.bsrnet import RRDBNet

    folder.mkdir(parents=True, exist_ok=True)
    _write_tokenizer_files(folder)
    _, text_sd = _openclip_text_tower(seed=0)
    write_sd21_checkpoint(folder / "v2-1_512-ema-pruned.ckpt", text_sd)
    del text_sd
    gc.collect()
    with torch.device("meta"):
        cn = IRControlNet.from_unet_config(UNet2DConditionModel(**SD21_UNET))
    torch.save(_random_like({k: v.shape for k, v in controlnet_to_ldm(cn.state_dict(), SD21_UNET).items()}, 3),
               folder / "v2.pth")
    torch.save(_random_like({k: v.shape for k, v in RRDBNet().state_dict().items()}, 4, dtype=torch.float32),
               folder / "BSRNet.pth")


def diffbir_options(args) -> dict:
    """The official argparse defaults (v2.1's prompts, edm_dpm++_3m_sde, CFG 6) except steps, version v2,
    no captioner, fp32 on the CPU."""
    from restorekit.methods.diffbir.pipeline import V21_NEG_PROMPT, V21_POS_PROMPT

    return {"sampler": args.diffbir_sampler, "steps": args.diffbir_steps, "cfg_scale": 6.0,
            "pos_prompt": V21_POS_PROMPT, "neg_prompt": V21_NEG_PROMPT, "start_point_type": "noise",
            "seed": args.diffbir_seed}


def prepare_diffbir(args, work: Path) -> dict:
    copy = copy_checkout(Path(args.official) / "DiffBIR", work / "DiffBIR", ignore=("assets", "inputs", "results"))
    edits = apply_edits(copy, diffbir_edits(args.diffbir_seed))
    wdir = copy / "weights"  # load_file_from_url(url, model_dir="weights") finds the files there
    cache = work / "diffbir_weights"
    if not (cache / "v2.pth").exists():
        diffbir_weights(cache)
    wdir.mkdir(exist_ok=True)
    for f in cache.iterdir():
        os.link(f, wdir / f.name)
    ins = copy / "rk_inputs"
    ins.mkdir()
    n = args.diffbir_size
    bench_image(n).save(ins / "coffee.png")
    o = diffbir_options(args)
    argv = ["--version", "v2", "--task", "sr", "--upscale", "4", "--sampler", o["sampler"], "--steps",
            str(o["steps"]), "--cfg_scale", str(o["cfg_scale"]), "--pos_prompt", o["pos_prompt"], "--neg_prompt",
            o["neg_prompt"], "--start_point_type", o["start_point_type"], "--captioner", "none", "--device", "cpu",
            "--precision", "fp32", "--seed", str(o["seed"]), "--input", "rk_inputs", "--output", "rk_outputs"]
    shown = " ".join(a if " " not in a else "'...'" for a in argv)
    return {"copy": copy, "weights": wdir, "edits": edits, "opts": o, "argv": argv,
            "official_cmd": f"cd {copy} && {args.official_python} inference.py {shown}",
            "setting": f"DiffBIR v2, task sr x4: BSRNet stage 1 on a {n}x{n} LR input (examples/coffee.png), "
                       f"upscaled to {4 * n}x{4 * n} (the official pipeline never runs stage 2 below 512 px: "
                       f"latent {max(4 * n, 512) // 8}x{max(4 * n, 512) // 8}), sampler {o['sampler']}, "
                       f"{o['steps']} steps, CFG {o['cfg_scale']} (two ControlNet+UNet evaluations per step), "
                       f"official default prompts, no captioner, fp32, seed {o['seed']}, not tiled; SD 2.1 UNet + "
                       f"VAE + OpenCLIP-H text tower, IRControlNet v2, BSRNet at full size with random weights "
                       f"(N(0, 0.02^2), fp16 files as the released ones)"}


def official_diffbir(args, prep, work, tag) -> dict:
    m = run_official("diffbir", prep["copy"], "inference.py", prep["argv"], work, args.official_python, tag)
    m["nfe"] = m.pop("calls")
    m["pipeline_s"] = m["totals"][0] if m.get("totals") else None
    saved = Path(prep["copy"], "rk_outputs", "coffee.png")
    m["saved_png"] = str(saved) if saved.exists() else None
    return m


def rk_diffbir(spec: dict) -> dict:
    import numpy as np
    import torch

    t0 = time.perf_counter()
    from restorekit import Restorer

    cap = torch.load(spec["capture"])
    lq = cap["lq"][0].permute(0, 3, 1, 2).float() / 255  # as Pipeline.run: uint8 NHWC -> [0, 1]
    ref = cap["out_uint8"][0].numpy().astype(np.int16)
    t1 = time.perf_counter()
    r = Restorer.from_pretrained(spec["weights"], method="diffbir", version="v2", device="cpu",
                                 torch_dtype=torch.float32)
    load_s = time.perf_counter() - t1
    pipe = r.pipeline
    rec = _count_calls(pipe.controlnet, pipe.unet, count=pipe.unet)
    o = dict(spec["opts"])
    seed = o.pop("seed")
    t2 = time.perf_counter()
    out = r.restore_tensor(lq, "sr", seed=seed, scale=4, captioner="none", **o)
    restore_s = time.perf_counter() - t2
    # Pipeline.run's own 8-bit conversion: (x * 255).clamp(0, 255).to(uint8) (truncation)
    u8 = lambda z: (z[0] * 255.0).clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy().astype(np.int16)
    mine = u8(out)
    res = {"loop_s": rec["last"] - rec["first"], "pipeline_s": restore_s, "load_s": load_s, "nfe": rec["calls"],
           "durations": rec["durations"], "script_s": time.perf_counter() - t0, "peak_rss_self_mib": _rss_mib(),
           "max_abs_uint8": int(np.abs(mine - ref).max()), "mean_abs_uint8": float(np.abs(mine - ref).mean()),
           "pixels_differing_uint8": int((mine != ref).any(-1).sum()),
           "max_abs_float": float(np.abs(out[0].permute(1, 2, 0).numpy() * 255 - ref).max() / 255)}
    if spec.get("diagnose"):
        b = u8(r.restore_tensor(lq, "sr", seed=seed + 1, scale=4, captioner="none", **o))
        res["diag_next_seed_max_abs_uint8"] = int(np.abs(b - ref).max())
        res["diag_next_seed_mean_abs_uint8"] = float(np.abs(b - ref).mean())
    return res


def restorekit_diffbir(args, prep, work, tag, official_result) -> dict:
    spec = {"capture": official_result["capture"], "weights": str(prep["weights"]), "opts": prep["opts"],
            "diagnose": args.diagnose and tag == "r0"}
    return run_restorekit("diffbir", spec, work, tag)


# ---------------------------------------------------------------------------------------------------------------
# The DiffPIR network alone, interleaved in one process: official guided_diffusion UNetModel (imported from the
# DiffPIR copy), restorekit's GuidedUNet and deepinv's DiffUNet, same weights (the DiffPIR weight file), same input.
# Interleaving (A, B, C, B, C, A, ...) spreads the shared machine's load drift over all three.

def rk_unets(spec: dict) -> dict:
    import torch

    from restorekit.nets import FFHQ_10M, GuidedUNet
    from restorekit.weights import load_strict

    sys.path.insert(0, str(REPO / "benchmarks"))
    from unet_vs_official import official_unet

    sd = torch.load(spec["weights"])
    nets = {}
    off = official_unet(spec["official_copy"])
    off.load_state_dict(sd, strict=True)
    nets["official UNetModel"] = (off.eval(), lambda m, x, t: m(x, t))
    ours = GuidedUNet(FFHQ_10M)
    load_strict(ours, sd, spec["weights"])
    nets["restorekit GuidedUNet"] = (ours.eval(), lambda m, x, t: m(x, t))
    try:
        from deepinv.models import DiffUNet

        d = DiffUNet(large_model=False, pretrained=None)
        missing, unexpected = d.load_state_dict(sd, strict=False)
        assert not unexpected and all("alphas" in k or "betas" in k for k in missing), (missing, unexpected)
        nets["deepinv DiffUNet"] = (d.eval(), lambda m, x, t: m.forward_diffusion(x, t))
    except ImportError:
        pass
    n = spec["size"]
    x = torch.randn(1, 3, n, n, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([500])
    times = {k: [] for k in nets}
    outs = {}
    names = list(nets)
    with torch.no_grad():
        for k in names:  # warm-up
            outs[k] = nets[k][1](nets[k][0], x, t)
        for rep in range(spec["reps"]):
            order = names[rep % len(names):] + names[:rep % len(names)]
            for k in order:
                t0 = time.perf_counter()
                nets[k][1](nets[k][0], x, t)
                times[k].append(time.perf_counter() - t0)
    ref = outs["official UNetModel"]
    return {"times": times, "max_abs_vs_official": {k: float((o - ref).abs().max()) for k, o in outs.items()},
            "peak_rss_self_mib": _rss_mib()}


def run_unets(args, work: Path, weights: Path, copy: Path) -> dict:
    spec = {"weights": str(weights), "official_copy": str(copy), "size": args.unet_size, "reps": args.unet_reps}
    return run_restorekit("unets", spec, work, "u")


METHODS = {"diffpir": (prepare_diffpir, official_diffpir, restorekit_diffpir),
           "diffir": (prepare_diffir, official_diffir, restorekit_diffir),
           "diffbir": (prepare_diffbir, official_diffbir, restorekit_diffbir)}
RK_SIDE = {"unets": rk_unets, "diffpir": rk_diffpir, "diffir": rk_diffir, "diffbir": rk_diffbir}


# ---------------------------------------------------------------------------------------------------------------

def _fmt(v, f="{:.2f}"):
    return "-" if v is None else f.format(v)


def report(rows: list, meta: dict) -> str:
    lines = [f"# Official loops vs restorekit ({meta['machine']})", "",
             f"torch {meta['torch']}, {meta['threads']} threads, {meta['cpu']}; run {meta['date']}. "
             "Random full-size weights in the official file layout; same weight file, same inputs, same seed on "
             "both sides. loop = wall time from the first to the last network call of one image's sampling loop; "
             "process = the whole subprocess (imports, model building and loading, I/O); peak RSS of that "
             "process (its own VmHWM). Load = 1-minute load average before -> after the row (2-core machine shared with "
             "other work).", ""]
    if meta.get("kept_from_earlier_run"):
        lines += ["Rows of " + ", ".join(meta["kept_from_earlier_run"]) + " are kept from an earlier run (date in "
                  "their section); their peak RSS is wait4's ru_maxrss of the child (on Linux at least the "
                  "orchestrating process's RSS at fork, here far below the values shown).", ""]
    for method in meta["methods"]:
        mrows = [r for r in rows if r["method"] == method]
        if not mrows:
            if method in meta.get("failed", {}):
                lines += [f"## {method}", "", f"**Did not run:** {meta['failed'][method]}", ""]
            continue
        when = meta.get("kept_from_earlier_run", {}).get(method)
        lines += [f"## {method}", ""] + ([f"(rows from the run of {when})", ""] if when else []) + [
                  meta["settings"][method], "",
                  "| round | implementation | network calls | loop (s) | median s / call | restore call (s) | "
                  "model load (s) | process (s) | peak RSS (MiB) | load avg | max abs diff vs official "
                  "(float / 8-bit) |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in mrows:
            calls = r.get("nfe") if r.get("nfe") is not None else r.get("images")
            d = sorted(r.get("durations") or [])
            med = d[len(d) // 2] if len(d) % 2 else (sum(d[len(d) // 2 - 1:len(d) // 2 + 1]) / 2 if d else None)
            whole = r.get("restore_s", r.get("pipeline_s"))
            diff = "-"
            if "max_abs_float" in r:
                diff = f"{r['max_abs_float']:.2e} / {r.get('max_abs_saved_png', r.get('max_abs_uint8'))}"
            lines.append(f"| {r['round']} | {r['impl']} | {calls} | {_fmt(r.get('loop_s'))} | "
                         f"{_fmt(med, '{:.3f}')} | {_fmt(whole)} | {_fmt(r.get('load_s'))} | "
                         f"{_fmt(r.get('wall_s'))} | {r['peak_rss_mib']:.0f} | "
                         f"{r['load_before']:.2f} -> {r['load_after']:.2f} | {diff} |")
        off = [r["loop_s"] for r in mrows if r["impl"] == "official"]
        rk = [r["loop_s"] for r in mrows if r["impl"] == "restorekit"]
        if off and rk:
            lines += ["", f"Mean loop time restorekit / official: {sum(rk) / len(rk):.2f} / "
                          f"{sum(off) / len(off):.2f} s = {sum(rk) / len(rk) / (sum(off) / len(off)):.3f}x."]
        if any(k.startswith("diag_") for r in mrows for k in r):
            lines += ["", "The restorekit row with diag_* values also ran the diagnostic restorations (`--diagnose`) in "
                          "its process: its process time includes them; loop and restore call do not."]
        for r in mrows:
            extra = {k: v for k, v in r.items() if k.startswith(("diag_", "pixels_differing", "mean_abs"))}
            if r["impl"] == "restorekit" and extra:
                lines.append("")
                lines.append(f"Parity details, round {r['round']}: " + ", ".join(
                    f"{k} = {v:.3g}" if isinstance(v, float) else f"{k} = {v}" for k, v in extra.items()))
        eds = meta["edits"].get(method, [])
        lines += ["", "Official command (in the copy): `" + meta["commands"][method] + "` (through "
                  "`_official_runner.py`, which wraps the timed functions and runs the script as `__main__`)."]
        if eds:
            lines += ["", "Edits in the copy:"]
            for e in eds:
                flat = lambda t: " ⏎ ".join(x.strip() for x in t.strip("\n").splitlines())
                lines.append(f"* `{e['file']}`: `{flat(e['old'])}` → `{flat(e['new'])}` — {e['why']}")
        lines.append("")
        if method in meta.get("failed", {}):
            lines += [f"**Did not complete:** {meta['failed'][method]}", ""]
        if method == "diffpir" and meta.get("unets"):
            u = meta["unets"]
            lines += [f"### The network alone (interleaved, {meta['args']['unet_size']}x{meta['args']['unet_size']}, "
                      f"batch 1, fp32, t = 500, {meta['args']['unet_reps']} rounds; load "
                      f"{u['load_before']:.2f} -> {u['load_after']:.2f})", "",
                      "| network | median s / forward | min | max | max abs diff vs official |", "|---|---|---|---|---|"]
            for k, ts in u["times"].items():
                ts = sorted(ts)
                med = ts[len(ts) // 2] if len(ts) % 2 else (ts[len(ts) // 2 - 1] + ts[len(ts) // 2]) / 2
                lines.append(f"| {k} | {med:.3f} | {ts[0]:.3f} | {ts[-1]:.3f} | "
                             f"{u['max_abs_vs_official'][k]:.1e} |")
            lines.append("")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--official", default="/work/official", help="folder holding DiffPIR/, DiffIR/, DiffBIR/")
    ap.add_argument("--official-python", default=sys.executable,
                    help="interpreter for the official code (needs its extra packages, e.g. hdf5storage)")
    ap.add_argument("--work", default="/tmp/rk_official_bench", help="work folder OUTSIDE the repository")
    ap.add_argument("--methods", nargs="+", default=["diffpir"], choices=sorted(METHODS))
    ap.add_argument("--repeats", type=int, default=1, help="rounds; official and restorekit alternate in order")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--diagnose", action="store_true",
                    help="round 0: also run restorekit with upstream's float32 data step, and with the next seed")
    ap.add_argument("--motionblur", default="/work/.mirror/LeviBorodenko+motionblur/repo/.git",
                    help="a checkout (or bare git dir) of LeviBorodenko/motionblur, which DiffPIR imports")
    ap.add_argument("--diffpir-size", type=int, default=256)
    ap.add_argument("--diffpir-steps", type=int, default=10)
    ap.add_argument("--diffir-size", type=int, default=64, help="LR side (x4 output)")
    ap.add_argument("--diffbir-size", type=int, default=128, help="LR side (x4; stage 2 runs at >= 512 px)")
    ap.add_argument("--diffbir-steps", type=int, default=2)
    ap.add_argument("--diffbir-sampler", default="edm_dpm++_3m_sde")
    ap.add_argument("--diffbir-seed", type=int, default=231)
    ap.add_argument("--diffbir-repeats", type=int, default=1, help="rounds for DiffBIR (each one is minutes on a CPU)")
    ap.add_argument("--unet-reps", type=int, default=0,
                    help="with diffpir: also time the three DiffPIR UNets interleaved, this many rounds each")
    ap.add_argument("--unet-size", type=int, default=256)
    ap.add_argument("--machine", default=None, help="name of the machine for the report (default: CPU model)")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "official_loops.md"))
    ap.add_argument("--keep-other-methods", action="store_true",
                    help="keep the rows of methods not run now from the existing --out .json (marked with its date)")
    ap.add_argument("--report-only", action="store_true", help="rewrite --out from its .json, run nothing")
    ap.add_argument("--_rk", nargs=2, metavar=("METHOD", "SPEC"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.report_only:  # rebuild the markdown from the .json of an earlier run
        data = json.loads(Path(args.out).with_suffix(".json").read_text())
        Path(args.out).write_text(report(data["rows"], data["meta"]))
        return 0
    if args._rk:
        spec = json.loads(Path(args._rk[1]).read_text())
        res = RK_SIDE[args._rk[0]](spec)
        res["peak_rss_mib"] = _rss_mib()  # replaces wait4's ru_maxrss (see _rss_mib)
        Path(spec["result"]).write_text(json.dumps(res))
        return 0
    work = Path(args.work).resolve()
    if REPO in work.parents or work == REPO:
        ap.error("--work must be outside the repository")
    work.mkdir(parents=True, exist_ok=True)
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    meta = {"machine": args.machine or f"CPU only, {os.cpu_count()} cores", "cpu": cpu, "torch": torch.__version__,
            "threads": torch.get_num_threads(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "methods": args.methods, "settings": {}, "commands": {}, "edits": {}, "args": vars(args)}
    rows = []
    meta["failed"] = {}
    out = Path(args.out)
    if args.keep_other_methods and out.with_suffix(".json").exists():
        old = json.loads(out.with_suffix(".json").read_text())
        kept = [m for m in old["meta"]["methods"] if m not in args.methods]
        rows = [r for r in old["rows"] if r["method"] in kept]
        for key in ("settings", "commands", "edits", "failed"):
            meta.setdefault(key, {}).update({m: v for m, v in old["meta"].get(key, {}).items() if m in kept})
        meta["kept_from_earlier_run"] = {m: old["meta"]["date"] for m in kept}
        meta["methods"] = kept + list(args.methods)
        if "diffpir" in kept and "unets" in old["meta"]:
            meta["unets"] = old["meta"]["unets"]
    out.parent.mkdir(parents=True, exist_ok=True)
    for method in args.methods:
        prep_fn, off_fn, rk_fn = METHODS[method]
        try:
            prep = prep_fn(args, work)
        except Exception as e:  # one method that cannot run does not stop the others
            meta["failed"][method] = f"preparation failed: {e}"
            print(meta["failed"][method], file=sys.stderr, flush=True)
            continue
        meta["settings"][method] = prep["setting"]
        meta["commands"][method] = prep["official_cmd"]
        meta["edits"][method] = prep["edits"]
        last_off = None
        repeats = args.diffbir_repeats if method == "diffbir" else args.repeats
        try:
            for rnd in range(repeats):
                order = ("official", "restorekit") if rnd % 2 == 0 or last_off is None else ("restorekit", "official")
                for impl in order:
                    tag = f"r{rnd}"
                    if impl == "official":
                        res = off_fn(args, prep, work, tag)
                        last_off = res
                    else:
                        res = rk_fn(args, prep, work, tag, last_off)
                    res.pop("tail", None)
                    res.update(method=method, impl=impl, round=rnd)
                    rows.append(res)
                    print(json.dumps({k: v for k, v in res.items() if k != "capture"}), flush=True)
            if method == "diffpir" and args.unet_reps:
                u = run_unets(args, work, prep["weights"], prep["copy"])
                u.pop("tail", None)
                meta["unets"] = u
                print(json.dumps(u), flush=True)
        except Exception as e:
            meta["failed"][method] = f"run failed: {str(e)[-2000:]}"
            print(meta["failed"][method], file=sys.stderr, flush=True)
        out.with_suffix(".json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1, default=str))
    text = report(rows, meta)
    print(text)
    out.write_text(text)
    meta["args"] = {k: v for k, v in vars(args).items() if k != "_rk"}
    out.with_suffix(".json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
