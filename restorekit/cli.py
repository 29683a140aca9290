"""Command line: ``restorekit run | train | models``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .errors import RestoreKitError, TaskError

TASK_CHOICES = ("deblur", "sr", "inpaint")


def _add_run(sub):
    p = sub.add_parser("run", help="restore one image",
                       description="Restore an image. With --degrade the input is treated as the clean image and "
                                   "degraded synthetically first (then PSNR/SSIM against it are printed); "
                                   "otherwise the input is the degraded observation.")
    p.add_argument("--config", default=None,
                   help="YAML with method, task and method options (e.g. configs/diffpir/deblur.yaml); "
                        "flags given on the command line win")
    p.add_argument("--method", default=None, help="restoration method (default: diffpir)")
    p.add_argument("--task", default=None, choices=TASK_CHOICES)
    p.add_argument("--input", required=True, help="input image (PNG/JPEG/TIFF/...; gray, RGB, RGBA, 8/16-bit)")
    p.add_argument("--output", required=True, help="output image path, or an existing folder")
    p.add_argument("--weights", default=None,
                   help="model name (see 'restorekit models') or checkpoint path; default: the method's bundled demo")
    p.add_argument("--degrade", action="store_true", help="degrade the input synthetically before restoring")
    p.add_argument("--save-degraded", default=None, help="where to save the degraded image (with --degrade); "
                                                          "default: <output>_degraded.png")
    p.add_argument("--kernel", choices=("gaussian", "motion"), default=None,
                   help="blur kernel for --degrade (default gaussian)")
    p.add_argument("--kernel-std", type=float, default=None,
                   help="Gaussian kernel std (default: DiffPIR's random 3(1+2U) drawn from --seed)")
    p.add_argument("--kernel-size", type=int, default=61)
    p.add_argument("--motion-intensity", type=float, default=0.5)
    p.add_argument("--kernel-file", default=None, help="blur kernel (.npy or image) of an already blurred input")
    p.add_argument("--scale", type=int, default=None, help="SR factor (default 4)")
    p.add_argument("--sr-mode", choices=("bicubic", "blur", "realesrgan"), default=None,
                   help="SR degradation: bicubic (DiffPIR default), Gaussian blur + decimation, or (with --degrade) "
                        "Real-ESRGAN second-order degradation")
    p.add_argument("--sr-kernel-std", type=float, default=1.6, help="Gaussian std for --sr-mode blur")
    p.add_argument("--mask", choices=("random", "box", "half"), default=None,
                   help="inpainting mask for --degrade (default random)")
    p.add_argument("--mask-prob", type=float, default=0.5, help="fraction of pixels dropped by the random mask")
    p.add_argument("--box-size", type=int, default=128)
    p.add_argument("--mask-file", default=None, help="mask image of an already masked input (white = known)")
    p.add_argument("--noise", type=float, default=None,
                   help="Gaussian noise std on [0,1] images: added by --degrade and assumed by the method "
                        "(default: the method's task default, 0.05 for deblur/sr, 0 for inpaint)")
    p.add_argument("--steps", type=int, default=None, help="sampling steps / NFE (default: the official value)")
    p.add_argument("--seed", type=int, default=None, help="random seed (default 0)")
    p.add_argument("--lambda", dest="lambda_", type=float, default=None, help="DiffPIR lambda")
    p.add_argument("--zeta", type=float, default=None, help="DiffPIR zeta")
    p.add_argument("--eta", type=float, default=None, help="DiffPIR eta")
    p.add_argument("--skip-type", choices=("quad", "uniform"), default=None)
    p.add_argument("--use-last-x0", action="store_true",
                   help="return the data-consistent last x0 instead of upstream's final x_t")
    p.add_argument("--opt", action="append", default=[], metavar="KEY=VALUE",
                   help="any other method option, e.g. DiffBIR: --opt tiled=true --opt guidance_scale=0.1 "
                        "--opt cfg_scale=4 --opt pos_prompt='a photo'; DiffPIR: --opt guidance_scale=1 (repeatable)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    p.add_argument("--json", action="store_true", help="print a JSON summary on stdout")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_run)


def _add_train(sub):
    p = sub.add_parser("train", help="train models",
                       description="'restorekit train prior --data DIR --output P' trains a DiffPIR prior; "
                                   "'restorekit train --method diffir --stage 1|2 --config C.yaml' trains DiffIR.")
    p.add_argument("what", nargs="?", choices=("prior",), help="'prior': a guided-diffusion UNet for DiffPIR")
    p.add_argument("--method", default=None, choices=("diffpir", "diffir"))
    p.add_argument("--stage", type=int, choices=(1, 2), default=None, help="DiffIR training stage")
    p.add_argument("--config", default=None,
                   help="DiffIR: training YAML (configs/diffir/...); prior: JSON GuidedUNetConfig")
    p.add_argument("--data", default=None, help="folder of clean training images")
    p.add_argument("--output", default=None, help="output .safetensors")
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--s1-weights", default=None, help="DiffIR stage 2: the stage-1 weights")
    p.add_argument("--batch-size", type=int, default=16, help="prior only")
    p.add_argument("--crop", type=int, default=64, help="prior only")
    p.add_argument("--lr", type=float, default=2e-4, help="prior only")
    p.add_argument("--seed", type=int, default=0, help="prior only")
    p.add_argument("--time-limit", type=float, default=None, help="prior only: stop after this many seconds")
    p.add_argument("--init", default=None, help="prior only: start from these weights")
    p.set_defaults(func=cmd_train)


def _add_bench(sub):
    p = sub.add_parser("bench", help="run a benchmark sweep from a YAML file (resumes if interrupted)")
    p.add_argument("config", help="sweep YAML, e.g. benchmarks/configs/demo.yaml")
    p.add_argument("--output", default=None, help="results folder (default: the config's output)")
    p.add_argument("--device", default=None)
    p.add_argument("--limit", type=int, default=None, help="only the first N items (smoke runs)")
    p.set_defaults(func=cmd_bench)


def cmd_bench(args) -> int:
    from .bench import run_bench

    run_bench(args.config, output=args.output, device=args.device, limit=args.limit,
              log=lambda s: print(s, file=sys.stderr))
    return 0


def _add_models(sub):
    p = sub.add_parser("models", help="list known models and whether their weights are here")
    p.add_argument("--method", default=None)
    p.set_defaults(func=cmd_models)


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    ap = argparse.ArgumentParser(prog="restorekit", description="Diffusion image restoration (DiffPIR, ...)")
    ap.add_argument("--version", action="version", version=f"restorekit {__version__}")
    sub = ap.add_subparsers(dest="command", required=True)
    _add_run(sub)
    _add_train(sub)
    _add_bench(sub)
    _add_models(sub)
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


def _read_kernel(path: str) -> torch.Tensor:
    p = Path(path)
    if not p.is_file():
        raise TaskError(f"kernel file not found: {p}")
    if p.suffix == ".npy":
        try:
            k = np.load(p).astype(np.float64)
        except Exception as e:
            raise TaskError(f"cannot read kernel {p}: {e}") from None
    else:
        from .io import read_image

        arr, _ = read_image(p)
        k = arr.mean(axis=2).astype(np.float64)
    k = np.squeeze(k)
    if k.ndim != 2 or k.sum() <= 0 or not np.all(np.isfinite(k)) or (k < 0).any():
        raise TaskError(f"kernel {p} must be a 2-D non-negative array with a positive sum")
    return torch.from_numpy(k / k.sum()).float()


def _read_mask(path: str, h: int, w: int) -> torch.Tensor:
    from .io import read_image

    arr, _ = read_image(path)
    m = (arr.mean(axis=2) > 0.5).astype(np.float32)
    if m.shape != (h, w):
        raise TaskError(f"mask {path} is {m.shape[1]}x{m.shape[0]} but the image is {w}x{h}")
    return torch.from_numpy(m)[None, None]


def _progress(total_hint: str, disable: bool):
    from tqdm.auto import tqdm

    bar = {"b": None}

    def cb(i, n, t):
        if bar["b"] is None:
            bar["b"] = tqdm(total=n, desc=total_hint, unit="step", disable=disable, file=sys.stderr)
        bar["b"].update(1)
        if i == n - 1:
            bar["b"].close()

    return cb


def _default_out(out: Path, inp: Path, method: str, task: str) -> Path:
    if out.is_dir():
        return out / f"{inp.stem}_{method}_{task}.png"
    return out


RUN_DEFAULTS = {"method": "diffpir", "scale": 4, "seed": 0, "kernel": "gaussian", "sr_mode": "bicubic", "mask": "random"}
CONFIG_KEYS = {"method", "task", "scale", "steps", "lambda_", "zeta", "eta", "skip_type", "noise_level", "seed",
               "sr_mode", "kernel", "kernel_std", "mask"}


def _apply_config(args) -> None:
    """Fill options not given on the command line from --config (YAML)."""
    if args.config:
        import yaml

        try:
            data = yaml.safe_load(Path(args.config).read_text()) or {}
        except (OSError, yaml.YAMLError) as e:
            raise RestoreKitError(f"cannot read config {args.config}: {e}") from None
        if not isinstance(data, dict) or set(data) - CONFIG_KEYS:
            bad = sorted(set(data) - CONFIG_KEYS) if isinstance(data, dict) else data
            raise RestoreKitError(f"config {args.config}: unknown keys {bad}; allowed: {sorted(CONFIG_KEYS)}")
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
    if args.task not in TASK_CHOICES:
        raise TaskError(f"unknown task {args.task!r}; tasks are {', '.join(TASK_CHOICES)}")


def cmd_run(args) -> int:
    from .io import pad_to_multiple, read_image, save_image
    from .metrics import compute_metrics
    from .operators import make_operator, synthesize
    from .registry import get_method

    _apply_config(args)
    cls = get_method(args.method)
    if args.task not in cls.tasks:
        raise TaskError(f"method {args.method!r} does not do task {args.task!r}; it does: {', '.join(cls.tasks)}")
    inp = Path(args.input)
    out_path = _default_out(Path(args.output), inp, args.method, args.task)
    arr, info = read_image(inp)  # fails early, before loading weights
    x = torch.from_numpy(arr).permute(2, 0, 1)[None].contiguous()
    restorer = cls.from_pretrained(args.weights or cls.default_model_for(args.task), device=args.device)
    card = restorer.card
    if card is not None and card.demo:
        print(f"NOTE: using the bundled DEMO model '{card.name}' - demo quality only. For real results pass "
              f"--weights with an official model (see 'restorekit models').", file=sys.stderr)
    extra = _parse_opts(args.opt)
    cfg = restorer.make_config(args.task, args.steps, lambda_=args.lambda_, zeta=args.zeta, eta=args.eta,
                               skip_type=args.skip_type, noise_level=args.noise,
                               use_last_x0=True if args.use_last_x0 else None, **extra)
    reference = None
    orig_hw = tuple(x.shape[-2:])
    if args.degrade:
        reference = x
        if args.task == "sr":
            x, orig_hw = pad_to_multiple(x, args.scale)
        kernel_tensor = _read_kernel(args.kernel_file) if args.kernel_file else None
        mask_tensor = _read_mask(args.mask_file, *x.shape[-2:]) if args.mask_file else None
        noise = args.noise if args.noise is not None else getattr(cfg, "noise_level", 0.0)
        y, op = synthesize(x, args.task, noise=noise, seed=args.seed, sr_mode=args.sr_mode, kernel=args.kernel,
                           kernel_size=args.kernel_size, kernel_std=args.kernel_std,
                           motion_intensity=args.motion_intensity, scale=args.scale,
                           sr_kernel_std=args.sr_kernel_std, mask=args.mask, mask_prob=args.mask_prob,
                           box_size=args.box_size, kernel_tensor=kernel_tensor, mask_tensor=mask_tensor)
        deg_path = Path(args.save_degraded) if args.save_degraded else out_path.with_name(out_path.stem + "_degraded.png")
        save_image(deg_path, y.clamp(0, 1), info if args.task != "inpaint" else None)
        print(f"degraded input written to {deg_path}", file=sys.stderr)
    else:
        y = x
        h, w = y.shape[-2:]
        if args.task == "deblur" and getattr(cls, "blind", False) and not args.kernel_file:
            op = None  # blind method: no kernel needed
        elif args.task == "deblur":
            if not args.kernel_file:
                raise TaskError("DiffPIR deblurring is non-blind: give the blur kernel with --kernel-file "
                                "(or use --degrade to blur the input synthetically)")
            op = make_operator("deblur", (h, w), kernel_tensor=_read_kernel(args.kernel_file))
        elif args.task == "inpaint":
            if not args.mask_file:
                raise TaskError("inpainting an already masked image needs --mask-file (white = known pixels), "
                                "or use --degrade to mask the input synthetically")
            op = make_operator("inpaint", (h, w), mask_tensor=_read_mask(args.mask_file, h, w))
        else:  # the observation is low resolution: the operator acts on the (h*scale, w*scale) image
            op = make_operator("sr", (h * args.scale, w * args.scale), scale=args.scale,
                               sr_mode="bicubic" if args.sr_mode == "realesrgan" else args.sr_mode,
                               sr_kernel_std=args.sr_kernel_std)
    progress = _progress(f"{args.method} {args.task}", args.no_progress)
    result = restorer.restore_tensor(y.to(restorer.device), task=args.task, operator=op, steps=args.steps,
                                     seed=args.seed, progress=progress, scale=args.scale, lambda_=args.lambda_,
                                     zeta=args.zeta, eta=args.eta, skip_type=args.skip_type,
                                     noise_level=args.noise, use_last_x0=True if args.use_last_x0 else None,
                                     **extra)
    if args.degrade and args.task == "sr":
        result = result[..., : orig_hw[0], : orig_hw[1]]
    save_image(out_path, result, info)
    summary = {"output": str(out_path), "method": args.method, "task": args.task,
               "model": card.name if card else str(restorer.weights_path), "demo_model": bool(card and card.demo),
               "config": cfg.to_dict(), "size": list(result.shape[-2:])}
    if reference is not None:
        base = y.clamp(0, 1)
        if args.task == "sr":
            base = F.interpolate(base, size=tuple(x.shape[-2:]), mode="bicubic", align_corners=False)
            base = base[..., : orig_hw[0], : orig_hw[1]].clamp(0, 1)
        s_in, notes = compute_metrics(base.cpu(), reference, ("psnr", "ssim", "lpips"))
        s_out, _ = compute_metrics(result.cpu(), reference, ("psnr", "ssim", "lpips"))
        summary["metrics_degraded"], summary["metrics_restored"] = s_in, s_out
        label = "bicubic" if args.task == "sr" else "degraded"
        fmt = lambda s: "  ".join(f"{k.upper()} {v:.4f}" for k, v in s.items() if v is not None)  # noqa: E731
        print(f"{label:>9}: {fmt(s_in)}", file=sys.stderr)
        print(f" restored: {fmt(s_out)}", file=sys.stderr)
        for n in notes:
            print(n, file=sys.stderr)
    print(f"restored image written to {out_path}", file=sys.stderr)
    if args.json:
        print(json.dumps(summary, indent=2))
    return 0


def cmd_train(args) -> int:
    if args.method == "diffir":
        if args.stage is None or not args.config:
            raise RestoreKitError("DiffIR training needs --stage 1|2 and --config (see configs/diffir/)")
        from .methods.diffir.train import train_diffir

        info = train_diffir(args.config, args.stage, data=args.data, output=args.output, steps=args.steps,
                            s1_weights=args.s1_weights, log=lambda s: print(s, file=sys.stderr))
        info.pop("history", None)
        print(json.dumps(info))
        return 0
    if args.what != "prior" and args.method != "diffpir":
        raise RestoreKitError("say what to train: 'restorekit train prior ...' or 'restorekit train --method diffir ...'")
    if not args.data or not args.output:
        raise RestoreKitError("prior training needs --data DIR and --output FILE")
    from .methods.diffpir.train import DEMO_UNET, train_prior
    from .nets.guided_unet import GuidedUNetConfig

    cfg = DEMO_UNET
    if args.config:
        try:
            cfg = GuidedUNetConfig.from_dict(json.loads(Path(args.config).read_text()))
        except (OSError, ValueError, TypeError) as e:
            raise RestoreKitError(f"bad UNet config {args.config}: {e}") from None
    info = train_prior(args.data, args.output, steps=args.steps or 2000, batch_size=args.batch_size, crop=args.crop,
                       lr=args.lr, seed=args.seed, config=cfg, time_limit=args.time_limit, init=args.init,
                       log=lambda s: print(s, file=sys.stderr))
    print(json.dumps(info))
    return 0


def cmd_models(args) -> int:
    from .registry import model_cards
    from .weights import WeightsError, resolve_card

    for c in model_cards(args.method):
        try:
            where = str(resolve_card(c, download=False))
        except WeightsError:
            where = "not downloaded"
        tag = " [DEMO]" if c.demo else ""
        print(f"{c.name}{tag}  (method {c.method}, file {c.filename})\n    {c.description}\n    weights: {where}")
    return 0


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except RestoreKitError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; no partial output was written", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
