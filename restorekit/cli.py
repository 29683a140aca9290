"""Command line: ``restorekit run | train | models``."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from .errors import RestoreKitError, TaskError, coerce_option, one_line
from .limits import DEGRADATION

def _add_run(sub):
    p = sub.add_parser("run", help="restore an image, a folder, a glob or a list of images",
                       description="Restore images. With --degrade the input is treated as the clean image and "
                                   "degraded synthetically first (then PSNR/SSIM against it are printed); "
                                   "otherwise the input is the degraded observation.")
    p.add_argument("--config", default=None,
                   help="YAML with method, task and method options (e.g. configs/diffpir/deblur.yaml); "
                        "flags given on the command line win")
    p.add_argument("--method", default=None, help="restoration method (default: diffpir)")
    p.add_argument("--task", default=None, help="deblur | sr | inpaint (DiffPIR, DiffIR); sr | face | denoise | "
                                                "unaligned_face (DiffBIR)")
    p.add_argument("--input", required=True,
                   help="an image (PNG/JPEG/TIFF/...; gray, RGB, RGBA, 8/16-bit), a folder of images, a glob "
                        "('photos/*.jpg', quoted) or a .txt file listing image paths")
    p.add_argument("--output", required=True,
                   help="output image path, or a folder (a trailing '/', an existing folder or a name without an "
                        "image suffix; created if missing). Several inputs always write into a folder")
    p.add_argument("--recursive", action="store_true", help="with a folder --input: also its sub-folders")
    p.add_argument("--overwrite", action="store_true",
                   help="redo images whose output exists (folder mode skips them by default); also needed to "
                        "write over an input file")
    p.add_argument("--weights", default=None,
                   help="model name (see 'restorekit models') or checkpoint path; default: the method's bundled demo")
    p.add_argument("--degrade", action="store_true", help="degrade the input synthetically before restoring")
    p.add_argument("--save-degraded", default=None, help="where to save the degraded image (with --degrade, one "
                                                          "input); default: <output>_degraded.png")
    p.add_argument("--kernel", choices=("gaussian", "motion"), default=None,
                   help="blur kernel for --degrade (default gaussian)")
    p.add_argument("--kernel-std", type=float, default=None,
                   help="Gaussian kernel std (default: DiffPIR's random 3(1+2U) drawn from --seed)")
    p.add_argument("--kernel-size", type=int, default=61)
    p.add_argument("--motion-intensity", type=float, default=0.5)
    p.add_argument("--kernel-file", default=None, help="blur kernel (.npy, .mat or image) of an already blurred input")
    p.add_argument("--scale", type=int, default=None, help="SR factor (default 4)")
    p.add_argument("--sr-mode", choices=("bicubic", "blur", "realesrgan"), default=None,
                   help="SR degradation: bicubic (DiffPIR default), Gaussian blur + decimation, or (with --degrade) "
                        "Real-ESRGAN second-order degradation")
    p.add_argument("--sr-kernel-std", type=float, default=1.6, help="Gaussian std for --sr-mode blur")
    p.add_argument("--mask", choices=("random", "box", "half", "extreme", "both"), default=None,
                   help="inpainting mask for --degrade (default random)")
    p.add_argument("--mask-prob", type=float, default=0.5, help="fraction of pixels dropped by the random mask")
    p.add_argument("--box-size", type=int, default=128)
    p.add_argument("--mask-file", default=None, help="mask image of an already masked input (white = known)")
    p.add_argument("--noise", type=float, default=None,
                   help="Gaussian noise std on [0,1] images: added by --degrade and assumed by the method "
                        "(default: the method's task default, 0.05 for deblur/sr, 0 for inpaint)")
    p.add_argument("--steps", type=int, default=None, help="sampling steps / NFE (default: the official value)")
    p.add_argument("--seed", type=int, default=None,
                   help="random seed (default 0); with several inputs image k (in sorted order) gets seed+k")
    p.add_argument("--lambda", dest="lambda_", type=float, default=None, help="DiffPIR lambda")
    p.add_argument("--zeta", type=float, default=None, help="DiffPIR zeta")
    p.add_argument("--eta", type=float, default=None, help="DiffPIR eta")
    p.add_argument("--skip-type", choices=("quad", "uniform"), default=None)
    p.add_argument("--use-last-x0", action="store_true", default=None,
                   help="return the data-consistent last x0 instead of upstream's final x_t")
    p.add_argument("--stage1", default=None, metavar="NAME|PATH",
                   help="DiffBIR stage-1 restorer: a stage-1 model name (bsrnet, swinir-general, swinir-realesrgan, "
                        "swinir-face, scunet-psnr) or any model file spandrel loads (Real-ESRGAN, SwinIR, HAT, ...; "
                        ".pth/.ckpt/.safetensors). A x1 model runs on the LQ image resized by --scale, a model that "
                        "upscales runs on the LQ image and its result is resized to --scale x")
    p.add_argument("--opt", action="append", default=[], metavar="KEY=VALUE",
                   help="any other method option, e.g. DiffBIR: --opt tiled=true --opt guidance_scale=0.1 "
                        "--opt cfg_scale=4 --opt pos_prompt='a photo'; DiffPIR: --opt guidance_scale=1 (repeatable). "
                        "A KEY that is also a flag (eta, zeta, lambda, steps, ...) is the same as the flag; giving "
                        "both with different values is an error. VALUE is read as the option's type")
    p.add_argument("--max-megapixels", type=float, default=None,
                   help="refuse results larger than this (default: DiffPIR 1.1 MP, whose UNet attends over the "
                        "whole image; classical 32 MP; DiffIR and DiffBIR unlimited)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    p.add_argument("--precision", choices=("fp32", "fp16", "bf16"), default=None,
                   help="network precision (default: the method's; data steps and metrics keep float32/64)")
    p.add_argument("--batch-size", type=int, default=None,
                   help="restore up to N same-size images per network call (folder mode; default 1). Image k "
                        "keeps seed+k, so results do not depend on N (methods without batching loop)")
    p.add_argument("--compile", action="store_true",
                   help="run the network through torch.compile (DiffPIR; the first call compiles, slowly)")
    p.add_argument("--json", action="store_true", help="print a JSON summary on stdout")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("-v", "--verbose", action="store_true", help="per-step progress bars inside each image")
    p.set_defaults(func=cmd_run)


def _add_train(sub):
    p = sub.add_parser("train", help="train models",
                       description="'restorekit train prior --data DIR --output P' trains a DiffPIR prior; "
                                   "'restorekit train --method diffir --stage 1|2|gan|finetune --config C.yaml' "
                                   "trains DiffIR (configs/diffir/); 'restorekit train --method diffbir --stage 1|2 "
                                   "--config C.yaml' trains DiffBIR's stage 1 or IRControlNet (configs/diffbir/).")
    p.add_argument("what", nargs="?", choices=("prior",), help="'prior': a guided-diffusion UNet for DiffPIR")
    p.add_argument("--method", default=None, choices=("diffpir", "diffir", "diffbir"))
    p.add_argument("--stage", choices=("1", "2", "gan", "finetune"), default=None,
                   help="DiffIR training stage: 1, 2, gan (S2-GAN), finetune (GAN V2 finetune); DiffBIR: 1 (stage-1 "
                        "restorer) or 2 (IRControlNet)")
    p.add_argument("--config", default=None,
                   help="DiffIR: training YAML (configs/diffir/...); prior: YAML with unet: and train: "
                        "(configs/diffpir/demo_prior.yaml) or a JSON GuidedUNetConfig")
    p.add_argument("--data", default=None, help="folder of clean training images")
    p.add_argument("--output", default=None, help="output .safetensors")
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--s1-weights", default=None, help="DiffIR / DiffBIR stage 2: the stage-1 weights "
                                                      "(DiffBIR: train.swinir_path)")
    p.add_argument("--sd-path", default=None, help="DiffBIR stage 2: the SD 2.1 ldm checkpoint (train.sd_path)")
    p.add_argument("--val-data", default=None, help="DiffBIR: validation images (folder or file list)")
    p.add_argument("--s2-weights", default=None, help="DiffIR gan/finetune: the generator weights it starts from")
    p.add_argument("--d-weights", default=None, help="DiffIR finetune: the GAN stage's discriminator (.pth)")
    p.add_argument("--resume", default=None,
                   help="continue from a training state: ITER.state, a folder of them, or 'auto' (latest)")
    p.add_argument("--state-dir", default=None,
                   help="folder of training states (default: DiffIR, prior: <output stem>_training_states; "
                        "DiffBIR: EXP/states)")
    p.add_argument("--val-freq", type=int, default=None, help="DiffIR: validate every N iterations (config val.data)")
    p.add_argument("--save-every", type=int, default=None, help="save a training state every N iterations")
    p.add_argument("--batch-size", type=int, default=None, help="prior only (default: the config's, else 16)")
    p.add_argument("--crop", type=int, default=None, help="prior only (default: the config's, else 64)")
    p.add_argument("--lr", type=float, default=None, help="prior only (default: the config's, else 2e-4)")
    p.add_argument("--seed", type=int, default=None, help="prior only (default: the config's, else 0)")
    p.add_argument("--time-limit", type=float, default=None,
                   help="stop after this many seconds and save what was trained (prior; DiffIR, DiffBIR: "
                        "per stage)")
    p.add_argument("--init", default=None, help="prior only: start from these weights")
    p.set_defaults(func=cmd_train)


def _add_bench(sub):
    p = sub.add_parser("bench", help="run a benchmark sweep from a YAML file (resumes if interrupted)")
    p.add_argument("config", help="sweep YAML, e.g. benchmarks/configs/demo.yaml")
    p.add_argument("--output", default=None, help="results folder (default: the config's output)")
    p.add_argument("--device", default=None)
    p.add_argument("--limit", type=int, default=None, help="only the first N items (smoke runs)")
    p.add_argument("--report-only", action="store_true", help="rewrite the reports from the records; run nothing")
    p.set_defaults(func=cmd_bench)


def cmd_bench(args) -> int:
    from .bench import rebuild_reports, run_bench

    if args.report_only:
        rebuild_reports(args.config, output=args.output)
        return 0
    run_bench(args.config, output=args.output, device=args.device, limit=args.limit,
              log=lambda s: print(s, file=sys.stderr))
    return 0


def _add_models(sub):
    p = sub.add_parser("models", help="list known models and whether their weights are here")
    p.add_argument("--method", default=None)
    p.set_defaults(func=cmd_models)


class _Parser(argparse.ArgumentParser):
    """Usage mistakes are one line on stderr, exit code 2 (argparse prints its usage block first)."""

    def error(self, message):
        self.exit(2, f"error: {message} (see '{self.prog} --help')\n")


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    ap = _Parser(prog="restorekit", description="Diffusion image restoration (DiffPIR, ...)")
    ap.add_argument("--version", action="version", version=f"restorekit {__version__}")
    sub = ap.add_subparsers(dest="command", required=True)
    _add_run(sub)
    _add_train(sub)
    _add_bench(sub)
    _add_models(sub)
    from .ui.cli import add_ui_parser  # imports no Gradio until the app is built

    add_ui_parser(sub)
    return ap


# ----------------------------------------------------------------------------


def _parse_opts(items: list[str]) -> dict:
    """``KEY=VALUE`` strings -> options; values are read as YAML scalars (numbers, true/false, text)."""
    import yaml

    out = {}
    for it in items:
        if "=" not in it:
            raise RestoreKitError(f"--opt expects KEY=VALUE, got {it!r}")
        k, v = it.split("=", 1)
        try:
            out[k.strip()] = yaml.safe_load(v) if v.strip() else ""
        except yaml.YAMLError:
            out[k.strip()] = v
    return out


def _progress(total_hint: str, disable: bool):
    from tqdm.auto import tqdm

    bar = {"b": None}

    def cb(i, n, t):
        if bar["b"] is None:
            bar["b"] = tqdm(total=n, desc=total_hint, unit="step", disable=disable, file=sys.stderr, leave=False)
        bar["b"].update(1)
        if i == n - 1:
            bar["b"].close()

    return cb


RUN_DEFAULTS = {"method": "diffpir", "scale": 4, "seed": 0, "kernel": "gaussian", "sr_mode": "bicubic", "mask": "random"}
CONFIG_KEYS = {"method", "task", "scale", "steps", "lambda_", "zeta", "eta", "skip_type", "noise_level", "seed",
               "sr_mode", "kernel", "kernel_std", "mask"}
#: --opt keys that are also named flags -> the flag's attribute (one rule: the same option, whichever way given)
FLAG_OPTS = {"lambda": "lambda_", "lambda_": "lambda_", "lam": "lambda_", "zeta": "zeta", "eta": "eta",
             "skip_type": "skip_type", "noise": "noise", "noise_level": "noise", "steps": "steps", "nfe": "steps",
             "seed": "seed", "scale": "scale", "use_last_x0": "use_last_x0", "stage1": "stage1"}
#: below these step counts a method's result is poor (DiffPIR at 1-3 NFE is worse than its input)
USEFUL_MIN_STEPS = {"diffpir": 10, "diffbir": 5}


def _apply_config(args) -> None:
    """Fill options not given on the command line from --config (YAML)."""
    args._given_sr_mode = getattr(args, "sr_mode", None)  # on the command line (a run refuses it where unused)
    if args.config:
        from .files import read_yaml_mapping

        data = read_yaml_mapping(args.config, "config")
        if set(data) - CONFIG_KEYS:
            raise RestoreKitError(f"config {args.config}: unknown keys {sorted(set(data) - CONFIG_KEYS)}; allowed: "
                                  f"{sorted(CONFIG_KEYS)}")
        dest = {"noise_level": "noise"}
        for k, v in data.items():
            name = dest.get(k, k)
            if getattr(args, name, None) is None:
                setattr(args, name, v)
    for k, v in RUN_DEFAULTS.items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    if args.task is None:
        raise RestoreKitError("--task is required (or a --config that sets task)")


def _merge_opts(args) -> dict:
    """--opt KEY=VALUE: keys that are named flags set the flag (a different value for both is an error)."""
    extra = _parse_opts(args.opt)
    for k in list(extra):
        dest = FLAG_OPTS.get(k)
        if dest is None:
            continue
        v = extra.pop(k)
        cur = getattr(args, dest, None)
        if cur is not None and cur != v:
            raise RestoreKitError(f"--opt {k}={v} contradicts --{dest.rstrip('_').replace('_', '-')} {cur}")
        setattr(args, dest, v)
    return extra


def _flag(key: str) -> tuple[str, str]:
    """A degradation setting's flag (noise -> --noise, kernel_std -> --kernel-std) and its option in LIMITS."""
    return "--" + key.replace("_", "-"), DEGRADATION[key]


#: numeric flags, in the order they are checked: args attribute -> (flag, option name in restorekit.limits.LIMITS)
_NUMBER_FLAGS = {"scale": _flag("scale"), "steps": ("--steps", "steps"), "seed": ("--seed", "seed"),
                 "noise": _flag("noise"), "lambda_": ("--lambda", "lambda_"), "zeta": ("--zeta", "zeta"),
                 "eta": ("--eta", "eta"),
                 **{k: _flag(k) for k in ("kernel_std", "kernel_size", "motion_intensity", "sr_kernel_std",
                                          "mask_prob", "box_size")},
                 "max_megapixels": ("--max-megapixels", "max_megapixels"), "batch_size": ("--batch-size", "batch_size")}


def _check_numbers(args) -> None:
    """Every numeric option finite and in range (restorekit.limits, the Python API's table), before any work."""
    from .limits import LIMITS, check_option

    for dest, (flag, name) in _NUMBER_FLAGS.items():
        v = getattr(args, dest, None)
        if v is not None:
            v = check_option(v, name, flag)
            setattr(args, dest, v if LIMITS[name].get("integer") else float(v))
    if args.use_last_x0 is not None and not isinstance(args.use_last_x0, bool):
        raise RestoreKitError(f"use_last_x0 expects true or false, got {args.use_last_x0!r}")


def _coerce(key: str, value, default):
    """An --opt value read as the type of the option's default (errors.coerce_option, as DiffBIR reads its own)."""
    return coerce_option(key, value, default, error=RestoreKitError)


def _coerce_extra(restorer, task: str, extra: dict) -> dict:
    if not extra:
        return extra
    try:
        defaults = restorer.make_config(task, None)
    except RestoreKitError:
        defaults = None
    out = {}
    for k, v in extra.items():
        d = getattr(defaults, k, None) if defaults is not None else None
        out[k] = _coerce(k, v, d) if d is not None else v
    return out


def _rank_world() -> tuple[int, int]:
    import os

    try:
        return int(os.environ.get("RANK", 0)), max(1, int(os.environ.get("WORLD_SIZE", 1)))
    except ValueError:
        return 0, 1


def cmd_run(args) -> int:
    from .api import check_image_size
    from .files import check_not_inputs, check_writable, collect_inputs, degraded_name, plan_outputs
    from .io import read_image, read_kernel
    from .registry import get_method

    _apply_config(args)
    extra = _merge_opts(args)
    _check_numbers(args)
    cls = get_method(args.method)
    if getattr(args, "stage1", None) is not None and args.method != "diffbir":
        raise TaskError(f"--stage1 is a DiffBIR option; method {args.method!r} has no stage 1")
    if args.task not in cls.tasks:
        raise TaskError(f"method {args.method!r} does not do task {args.task!r}; it does: {', '.join(cls.tasks)}")
    # options a method can check without its weights (DiffBIR: before asking for ~6 GB of missing files)
    cls.check_options_unloaded(args.task, args.steps, model=args.weights or None, lambda_=args.lambda_,
                               zeta=args.zeta, eta=args.eta, skip_type=args.skip_type,
                               noise_level=args.noise, use_last_x0=args.use_last_x0, **extra)

    # --- everything that can be checked before loading a model ------------------------------------------
    jobs, single = collect_inputs(args.input, args.recursive)
    plan_outputs(jobs, args.output, single, args.method, args.task)
    if args.save_degraded and not args.degrade:
        raise RestoreKitError("--save-degraded saves the synthetic degradation: it needs --degrade")
    if args.save_degraded and not single:
        raise RestoreKitError("--save-degraded names one file: use it with a single --input")
    if args.save_degraded and Path(args.save_degraded).absolute() == jobs[0].output.absolute():
        raise RestoreKitError(f"--save-degraded {args.save_degraded} is the restored output's name; choose another")
    degraded = {}
    if args.degrade:
        for j in jobs:
            degraded[j.input] = (Path(args.save_degraded) if args.save_degraded
                                 else degraded_name(j.output))
    outputs = [j.output for j in jobs] + list(degraded.values())
    check_not_inputs(outputs, [j.input for j in jobs], args.overwrite)
    for o in outputs:
        check_writable(o)
    if args.kernel_file:
        read_kernel(args.kernel_file)  # a bad kernel file fails before any work
    # deal the images to the processes first (a fixed split of the sorted list), then skip finished ones, so
    # that one process finishing an image early never shifts another's share
    rank, world = _rank_world()
    mine = jobs[rank::world]
    todo = mine
    if not single and not args.overwrite:
        todo = [j for j in mine if not j.output.exists()]
        if len(todo) < len(mine):
            print(f"{len(mine) - len(todo)} of {len(mine)} images already restored in {args.output} "
                  f"(skipped; --overwrite redoes them)", file=sys.stderr)
    # notes wait until the first image is ready to restore (_announce): a mistake found before then is the only line
    args._notes = []
    if single:
        args._notes += [f"note: {o} exists and will be overwritten" for o in outputs if o.exists()]
    first = None
    if single:  # a single unreadable image fails before the weights are loaded
        first = read_image(jobs[0].input)
        h, w = first[0].shape[:2]
        f = args.scale if (args.task == "sr" and not args.degrade) else 1
        check_image_size(args.method, h * f, w * f, args.max_megapixels)
    if not todo:
        print("nothing to do", file=sys.stderr)
        return 0

    # --- model --------------------------------------------------------------------------------------------
    load_kw = {}
    if args.precision is not None:
        load_kw["torch_dtype"] = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[args.precision]
    if args.method == "diffbir":  # DiffBIR loads the files of the task (and version / stage 1 given as options)
        load_kw["task"] = args.task
        if "version" in extra:
            load_kw["version"] = extra.pop("version")
        if getattr(args, "stage1", None) is not None:
            load_kw["stage1"] = str(args.stage1)
    try:
        restorer = cls.from_pretrained(args.weights or cls.default_model_for(args.task), device=args.device,
                                       **load_kw)
    except TypeError as e:
        if load_kw and "torch_dtype" in str(e):
            raise RestoreKitError(f"method {args.method!r} does not support --precision {args.precision}") from None
        raise
    restorer.check_task(args.task)  # e.g. a DiffIR sr checkpoint asked to deblur
    extra = _coerce_extra(restorer, args.task, extra)
    cfg = restorer.make_config(args.task, args.steps, lambda_=args.lambda_, zeta=args.zeta, eta=args.eta,
                               skip_type=args.skip_type, noise_level=args.noise,
                               use_last_x0=args.use_last_x0, **extra)
    _check_unused_run_flags(args, restorer, cfg)
    if args.steps is not None and args.steps < USEFUL_MIN_STEPS.get(args.method, 0):
        args._notes.append(f"warning: --steps {args.steps} is far below {args.method}'s useful range (>= "
                           f"{USEFUL_MIN_STEPS[args.method]}); expect a result worse than the input")
    card = restorer.card
    if card is not None and card.demo:
        args._notes.append(f"NOTE: using the bundled DEMO model '{card.name}' - demo quality only. For real results "
                           f"pass --weights with an official model (see 'restorekit models').")
    if args.compile:
        try:
            restorer.compile()
        except RestoreKitError as e:
            print(f"note: {e}; running without torch.compile", file=sys.stderr)

    from tqdm.auto import tqdm

    summaries, failures = [], []
    bar = tqdm(total=len(todo), desc=f"{args.method} {args.task}", unit="img", file=sys.stderr,
               disable=args.no_progress or single)
    batch_size = args.batch_size or 1
    if single or batch_size == 1:
        for j in todo:
            try:
                summaries.append(_restore_one(args, restorer, cfg, extra, j, degraded.get(j.input), first,
                                              inner_progress=(single and not args.no_progress) or args.verbose))
            except RestoreKitError as e:
                if single:
                    raise
                failures.append((j.input, one_line(e)))
                tqdm.write(_folder_error(j.input, e), file=sys.stderr)
            bar.update(1)
    else:
        from .files import batches_by_size, image_size

        def on_error(job, e):
            failures.append((job.input, one_line(e)))
            tqdm.write(_folder_error(job.input, e), file=sys.stderr)

        for chunk in batches_by_size(todo, batch_size, lambda j: image_size(j.input)):
            summaries.extend(_restore_batch(args, restorer, cfg, extra, chunk, degraded, args.verbose, on_error))
            bar.update(len(chunk))
        summaries.sort(key=lambda d: d["seed"])  # sorted input order, as without batches
    bar.close()
    if args.json:  # a folder run lists its failed images too: {"input": ..., "error": ...}
        failed = [{"input": str(i), "error": m} for i, m in failures]
        print(json.dumps(summaries[0] if single else summaries + failed, indent=2))
    if failures:
        rest = "nothing was written" if len(failures) == len(todo) else "the others were written"
        print(f"error: {len(failures)} of {len(todo)} images failed (listed above); {rest}", file=sys.stderr)
        return 2
    if not single:
        print(f"{len(todo)} images restored into {args.output}", file=sys.stderr)
    return 0


def _folder_error(path, e) -> str:
    """The line of one failed image of a folder run: its path, then the error (which may name the path already)."""
    msg = one_line(e)
    return f"error: {msg}" if str(path) in msg else f"error: {path}: {msg}"


def _classical_baseline(task, y, op, noise, reference, orig_hw):
    """The classical method a restoration is printed beside with --degrade: Wiener deconvolution with the true
    kernel (deblur), biharmonic fill (inpaint); SR already prints bicubic. None where there is none."""
    from .metrics import compute_metrics
    from .methods.classical.restorer import ALGORITHMS
    from .operators import Blur, Inpainting
    from .registry import get_method

    if task not in ("deblur", "inpaint") or not isinstance(op, (Blur, Inpainting)):
        return None
    if isinstance(op, Blur) and op.sf != 1:
        return None
    base = get_method("classical")(device="cpu").restore_tensor(y.cpu(), task, op, noise_level=max(noise, 1e-3))
    base = base[..., : orig_hw[0], : orig_hw[1]]
    scores, _ = compute_metrics(base, reference, ("psnr", "ssim"))
    return ALGORITHMS[task][0], scores


def _prepare_one(args, cfg, job, degraded_path, first=None, blind: bool = False) -> dict:
    """Read (and with --degrade degrade) one input: the observation ``y``, its operator and seed."""
    from .api import check_image_size, check_operator_fits
    from .io import pad_to_multiple, read_image, read_kernel, read_mask
    from .operators import observed_operator, synthesize

    arr, info = first if first is not None else read_image(job.input)
    x = torch.from_numpy(arr).permute(2, 0, 1)[None].contiguous()
    seed = args.seed + job.index
    method, task = args.method, args.task
    reference = None
    orig_hw = tuple(x.shape[-2:])
    f = args.scale if (task == "sr" and not args.degrade) else 1
    check_image_size(method, x.shape[-2] * f, x.shape[-1] * f, args.max_megapixels)
    noise, degraded_save = 0.0, None
    if args.degrade:
        reference = x
        if task == "sr":
            x, orig_hw = pad_to_multiple(x, args.scale)
        kernel_tensor = read_kernel(args.kernel_file) if args.kernel_file else None
        mask_tensor = read_mask(args.mask_file, *x.shape[-2:]) if args.mask_file else None
        noise = args.noise if args.noise is not None else getattr(cfg, "noise_level", 0.0)
        y, op = synthesize(x, task, noise=noise, seed=seed, sr_mode=args.sr_mode, kernel=args.kernel,
                           kernel_size=args.kernel_size, kernel_std=args.kernel_std,
                           motion_intensity=args.motion_intensity, scale=args.scale,
                           sr_kernel_std=args.sr_kernel_std, mask=args.mask, mask_prob=args.mask_prob,
                           box_size=args.box_size, kernel_tensor=kernel_tensor, mask_tensor=mask_tensor)
        # written with the restoration (_finish_one), so that a run that fails writes nothing
        degraded_save = (degraded_path, y.clamp(0, 1), info if task != "inpaint" else None)
    else:
        y = x
        op = observed_operator(
            task, tuple(y.shape[-2:]), blind=blind, kernel_file=args.kernel_file, mask_file=args.mask_file,
            scale=args.scale, sr_mode=args.sr_mode, sr_kernel_std=args.sr_kernel_std,
            no_kernel=f"{method} deblurring is non-blind: give the blur kernel with --kernel-file "
                      "(or use --degrade to blur the input synthetically)",
            no_mask="inpainting an already masked image needs --mask-file (white = known pixels), "
                    "or use --degrade to mask the input synthetically")
    if task == "inpaint":
        check_operator_fits(op, y.shape[-2:])
    return {"job": job, "x": x, "y": y, "op": op, "seed": seed, "info": info, "reference": reference,
            "orig_hw": orig_hw, "noise": noise, "degraded_save": degraded_save}


def _run_options(args, extra: dict) -> dict:
    return dict(steps=args.steps, scale=args.scale, lambda_=args.lambda_, zeta=args.zeta, eta=args.eta,
                skip_type=args.skip_type, noise_level=args.noise, use_last_x0=args.use_last_x0, **extra)


def _finish_one(args, restorer, cfg, prep: dict, result: torch.Tensor) -> dict:
    """Crop, check, write one result and print / return its summary (metrics with --degrade)."""
    from .io import save_image
    from .metrics import compute_metrics

    job, x, y, op, seed, info = prep["job"], prep["x"], prep["y"], prep["op"], prep["seed"], prep["info"]
    reference, orig_hw, noise = prep["reference"], prep["orig_hw"], prep["noise"]
    method, task = args.method, args.task
    if args.degrade and task == "sr":
        result = result[..., : orig_hw[0], : orig_hw[1]]
    if not bool(torch.isfinite(result).all()):
        raise RestoreKitError(f"{method} produced non-finite values for {job.input} (nothing written); "
                              f"check the options and the weights")
    if prep["degraded_save"]:
        save_image(*prep["degraded_save"])
        print(f"degraded input written to {prep['degraded_save'][0]}", file=sys.stderr)
    save_image(job.output, result, info)
    card = restorer.card
    summary = {"input": str(job.input), "output": str(job.output), "method": method, "task": task, "seed": seed,
               "model": card.name if card else str(restorer.weights_path), "demo_model": bool(card and card.demo),
               "config": cfg.to_dict(), "size": list(result.shape[-2:])}
    if reference is not None:
        base = y.clamp(0, 1)
        if task == "sr":
            base = F.interpolate(base, size=tuple(x.shape[-2:]), mode="bicubic", align_corners=False)
            base = base[..., : orig_hw[0], : orig_hw[1]].clamp(0, 1)
        s_in, notes = compute_metrics(base.cpu(), reference, ("psnr", "ssim", "lpips"))
        s_out, _ = compute_metrics(result.cpu(), reference, ("psnr", "ssim", "lpips"))
        summary["metrics_degraded"], summary["metrics_restored"] = s_in, s_out
        label = "bicubic" if task == "sr" else "degraded"
        fmt = lambda s: "  ".join(f"{k.upper()} {v:.4f}" for k, v in s.items() if v is not None)  # noqa: E731
        pre = f"{job.input.name}: " if args.input != str(job.input) else ""
        print(f"{pre}{label:>9}: {fmt(s_in)}", file=sys.stderr)
        base_line = _classical_baseline(task, y, op, noise, reference, orig_hw) if method != "classical" else None
        if base_line is not None:
            name, s_base = base_line
            summary["metrics_baseline"] = {"algorithm": name, **s_base}
            print(f"{pre} baseline: {fmt(s_base)}   (classical {name})", file=sys.stderr)
        print(f"{pre} restored: {fmt(s_out)}   ({method})", file=sys.stderr)
        for n in notes:
            print(n, file=sys.stderr)
    print(f"restored image written to {job.output}", file=sys.stderr)
    return summary


def _announce(args) -> None:
    """Print the run's notes (demo model, few steps, an output overwritten) once, when the first image is read and
    prepared: an error found before then (a missing kernel, a mask of another size) is printed alone."""
    from tqdm.auto import tqdm

    for line in getattr(args, "_notes", []):
        tqdm.write(line, file=sys.stderr)
    args._notes = []


def _check_unused_run_flags(args, restorer, cfg) -> None:
    """Flags this run would ignore are refused, as the trainers do: a blind method takes no kernel, and --sr-mode
    describes an observation only where a method models it (a non-blind one) or where --degrade makes it."""
    if args.degrade:
        return
    name = {"diffir": "DiffIR", "diffbir": "DiffBIR"}.get(args.method, args.method)
    if args.kernel_file and args.task == "deblur" and restorer.is_blind(cfg):
        raise RestoreKitError(f"--kernel-file: {name} deblurring is blind (it estimates the blur) and would ignore "
                              f"the kernel; drop it, or use a non-blind method (diffpir, classical wiener)")
    if getattr(args, "_given_sr_mode", None) is not None and args.task == "sr":
        if restorer.is_blind(cfg):
            raise RestoreKitError(f"--sr-mode: {name} super-resolution is blind and would ignore it; it describes "
                                  f"the degradation only with --degrade (which makes it)")
        if args._given_sr_mode == "realesrgan":
            raise RestoreKitError("--sr-mode realesrgan is a random synthetic degradation (use it with --degrade); "
                                  f"{name}'s data step models bicubic or blur (--sr-mode bicubic / blur)")


def _restore_one(args, restorer, cfg, extra: dict, job, degraded_path, first=None, inner_progress=True) -> dict:
    prep = _prepare_one(args, cfg, job, degraded_path, first, blind=restorer.is_blind(cfg))
    _announce(args)
    progress = _progress(f"{args.method} {args.task}", not inner_progress)
    result = restorer.restore_tensor(prep["y"].to(restorer.device), task=args.task, operator=prep["op"],
                                     seed=prep["seed"], progress=progress, **_run_options(args, extra))
    return _finish_one(args, restorer, cfg, prep, result)


def _restore_batch(args, restorer, cfg, extra: dict, jobs, degraded: dict, inner_progress: bool, on_error):
    """Restore ``jobs`` (same-size images) with one ``restore_batch`` call; an image that cannot be read or
    prepared fails alone (``on_error(job, error)``); if the batch call fails, its images are retried one by one
    so that the error names the image. Returns the summaries of the images written."""
    preps = []
    for j in jobs:
        try:
            preps.append(_prepare_one(args, cfg, j, degraded.get(j.input), blind=restorer.is_blind(cfg)))
        except RestoreKitError as e:
            on_error(j, e)
    if not preps:
        return []
    _announce(args)
    progress = _progress(f"{args.method} {args.task} x{len(preps)}", not inner_progress)
    try:
        results = restorer.restore_batch([p["y"].to(restorer.device) for p in preps], [p["op"] for p in preps],
                                         [p["seed"] for p in preps], task=args.task, progress=progress,
                                         **_run_options(args, extra))
    except RestoreKitError as e:
        if len(preps) == 1:
            on_error(preps[0]["job"], e)
            return []
        results = []
        for p in preps:
            try:
                results.extend(restorer.restore_batch([p["y"].to(restorer.device)], [p["op"]], [p["seed"]],
                                                      task=args.task, **_run_options(args, extra)))
            except RestoreKitError as e1:
                on_error(p["job"], e1)
                results.append(None)
    summaries = []
    for p, res in zip(preps, results):
        if res is None:
            continue
        try:
            summaries.append(_finish_one(args, restorer, cfg, p, res))
        except RestoreKitError as e:
            on_error(p["job"], e)
    return summaries


#: flags each trainer reads; any other flag given is refused, not silently ignored
_TRAIN_FLAGS = {
    "diffir": {"stage", "s1_weights", "s2_weights", "d_weights", "val_freq"},
    "diffbir": {"stage", "sd_path", "s1_weights", "val_data", "val_freq"},
    "prior": {"batch_size", "crop", "lr", "seed", "init"},
}
_TRAIN_OPTIONAL = ("stage", "s1_weights", "s2_weights", "d_weights", "val_freq", "sd_path", "val_data", "batch_size",
                   "crop", "lr", "seed", "init")


def cmd_train(args) -> int:
    kind = args.method if args.method in ("diffir", "diffbir") else "prior"
    if kind == "prior" and args.what != "prior" and args.method != "diffpir":
        raise RestoreKitError("say what to train: 'restorekit train prior ...' or "
                              "'restorekit train --method diffir|diffbir --stage ...'")
    unused = [k for k in _TRAIN_OPTIONAL if getattr(args, k) is not None and k not in _TRAIN_FLAGS[kind]]
    if unused:
        flag = "--" + unused[0].replace("_", "-")
        where = "; set it in the training config (--config)" if kind != "prior" else ""
        name = {"diffir": "DiffIR", "diffbir": "DiffBIR", "prior": "prior"}[kind]
        raise RestoreKitError(f"{flag} is not used by {name} training{where}")
    if args.method == "diffir":
        if args.stage is None or not args.config:
            raise RestoreKitError("DiffIR training needs --stage 1|2|gan|finetune and --config (see configs/diffir/)")
        from .methods.diffir.train import train_diffir

        info = train_diffir(args.config, args.stage, data=args.data, output=args.output, steps=args.steps,
                            s1_weights=args.s1_weights, s2_weights=args.s2_weights, d_weights=args.d_weights,
                            resume=args.resume, state_dir=args.state_dir, val_freq=args.val_freq,
                            save_checkpoint_freq=args.save_every, time_limit=args.time_limit,
                            log=lambda s: print(s, file=sys.stderr))
        info.pop("history", None)
        print(json.dumps(info))
        return 0
    if args.method == "diffbir":
        if args.stage not in ("1", "2") or not args.config:
            raise RestoreKitError("DiffBIR training needs --stage 1|2 and --config (see configs/diffbir/)")
        from .methods.diffbir.train import train_diffbir

        info = train_diffbir(args.config, args.stage, data=args.data, output=args.output, steps=args.steps,
                             resume=args.resume, state_dir=args.state_dir, val_freq=args.val_freq,
                             save_every=args.save_every, sd_path=args.sd_path, s1_weights=args.s1_weights,
                             val_data=args.val_data, time_limit=args.time_limit,
                             log=lambda s: print(s, file=sys.stderr))
        for k in ("history", "init"):
            info.pop(k, None)
        print(json.dumps(info))
        return 0
    if not args.data or not args.output:
        raise RestoreKitError("prior training needs --data DIR and --output FILE")
    from .methods.diffpir.train import DEMO_UNET, TRAIN_DEFAULTS, load_prior_config, train_prior

    cfg, opts = DEMO_UNET, dict(TRAIN_DEFAULTS)
    if args.config:
        cfg, train = load_prior_config(args.config)
        opts.update(train)
    for k in ("steps", "batch_size", "crop", "lr", "seed", "time_limit", "save_every"):
        if getattr(args, k) is not None:
            opts[k] = getattr(args, k)
    info = train_prior(args.data, args.output, config=cfg, init=args.init, log=lambda s: print(s, file=sys.stderr),
                       resume=args.resume, state_dir=args.state_dir, config_file=args.config, **opts)
    print(json.dumps(info))
    return 0


def cmd_models(args) -> int:
    from .registry import model_cards
    from .weights import WeightsError, resolve_card

    from .weights import cache_dir

    cards = model_cards(args.method)
    if not cards:
        known = sorted({c.method for c in model_cards()})
        raise RestoreKitError(f"no models of method {args.method!r}; methods with models: {', '.join(known)}")
    for c in cards:
        try:
            where = str(resolve_card(c, download=False))
        except WeightsError:
            where = f"not here (put {c.filename} in {cache_dir()}, or pass its path with --weights)"
        tag = " [DEMO]" if c.demo else ""
        src = ("bundled with restorekit" if c.bundled else
               ", ".join(c.sources) if c.sources else "no download source: see the description")
        print(f"{c.name}{tag}  (method {c.method}, file {c.filename})\n    {c.description}\n    weights: {where}"
              f"\n    source: {src}")
    return 0


@contextlib.contextmanager
def _sigterm_as_interrupt():
    """``kill``/``timeout`` send SIGTERM: end like Ctrl-C, so that half-written temp files are removed. The
    previous handler is back afterwards (``main`` may run inside another program); off the main thread, no-op."""
    import signal
    import threading

    def handler(signum, frame):
        raise KeyboardInterrupt

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        with _sigterm_as_interrupt():
            return args.func(args)
    except RestoreKitError as e:
        print(f"error: {one_line(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; no partial output was written", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
