"""DiffPIR's network, side by side: the official guided-diffusion ``UNetModel`` (imported from a DiffPIR checkout
given by ``--official``) and restorekit's ``GuidedUNet``, with the same random weights of the official FFHQ layout
(``diffusion_ffhq_10m.pt``: 128 channels, 1 res block, attention at 16, learn_sigma), on the same inputs.

For each precision and batch size it times ``--reps`` UNet evaluations at ``--size`` (one DiffPIR step is one
evaluation), checks the two outputs agree, and reports evaluations/s, images/s and peak CUDA memory. fp16 for the
official network is its own ``use_fp16`` path (``convert_to_fp16``: float16 convolutions, float32 norms) as
DiffPIR would run it; restorekit's is ``Restorer.from_pretrained(..., torch_dtype=float16)``'s conversion.

    python benchmarks/unet_vs_official.py --official /path/to/DiffPIR --device cuda --out results/unet_vs_official.md
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


def official_unet(path: str):
    sys.path.insert(0, str(Path(path).resolve()))
    from guided_diffusion.script_util import create_model  # the official code, not restorekit's

    # utils/utils_model.py create_argparser defaults + main_ddpir.py's model_config for diffusion_ffhq_10m
    return create_model(image_size=256, num_channels=128, num_res_blocks=1, channel_mult="", learn_sigma=True,
                        class_cond=False, use_checkpoint=False, attention_resolutions="16", num_heads=4,
                        num_head_channels=64, num_heads_upsample=-1, use_scale_shift_norm=True, dropout=0.0,
                        resblock_updown=True, use_fp16=False, use_new_attention_order=False)


def timed(fn, reps: int, device: str) -> tuple[float, float]:
    import torch

    fn()  # warm-up
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for _ in range(reps):
        out = fn()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated() / 2**20 if device.startswith("cuda") else float("nan")
    return dt, peak, out


def main(argv=None) -> int:
    import torch

    from restorekit.methods.diffpir import DiffPIR
    from restorekit.nets import FFHQ_10M, GuidedUNet
    from restorekit.weights import load_strict

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--official", required=True, help="a checkout of yuanzhi-zhu/DiffPIR")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--batches", nargs="+", type=int, default=[1, 8])
    ap.add_argument("--precisions", nargs="+", default=["fp32", "fp16"])
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--out", default="benchmarks/results/unet_vs_official.md")
    args = ap.parse_args(argv)

    torch.manual_seed(0)
    off = official_unet(args.official)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in off.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.02)
    sd = {k: v.clone() for k, v in off.state_dict().items()}
    rows = []
    for prec in args.precisions:
        dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[prec]
        o = official_unet(args.official)
        o.load_state_dict(sd, strict=True)
        o = o.to(args.device).eval()
        if prec == "fp16":
            o.convert_to_fp16()
            o.dtype = torch.float16
        ours_net = GuidedUNet(FFHQ_10M)
        load_strict(ours_net, sd, "official-layout random weights")
        ours = DiffPIR(ours_net, device=args.device, torch_dtype=dtype)
        net = ours.unet
        for b in args.batches:
            x = torch.randn(b, 3, args.size, args.size, generator=torch.Generator().manual_seed(b)).to(args.device)
            t = torch.full((b,), 500, device=args.device)
            with torch.no_grad():
                if prec == "bf16":
                    off_res = None
                else:
                    dt_o, pk_o, out_o = timed(lambda: o(x, t), args.reps, args.device)
                    off_res = (dt_o, pk_o)
                dt_r, pk_r, out_r = timed(lambda: net(x.to(dtype) if prec != "fp32" else x, t), args.reps,
                                          args.device)
            diff = (float((out_o.float() - out_r.float()).abs().max()) if off_res is not None else None)
            for who, res in (("official UNetModel", off_res), ("restorekit GuidedUNet", (dt_r, pk_r))):
                if res is None:
                    rows.append(dict(network=who, precision=prec, batch=b, note="no bf16 path upstream"))
                    continue
                rows.append(dict(network=who, precision=prec, batch=b, evals_per_s=args.reps / res[0],
                                 images_per_s=args.reps * b / res[0], peak_mib=res[1], max_abs_diff=diff))
            print(rows[-2], rows[-1], file=sys.stderr)
        del o, ours, net
        if args.device.startswith("cuda"):
            torch.cuda.empty_cache()
    dev = torch.cuda.get_device_name(0) if args.device.startswith("cuda") else "CPU"
    lines = [f"# DiffPIR UNet: official vs restorekit ({dev}, torch {torch.__version__}, {args.size}x{args.size}, "
             f"{args.reps} evaluations after one warm-up)", "",
             "| network | precision | batch | UNet evals/s | images x evals/s | peak CUDA MiB | max abs diff |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        if "note" in r:
            lines.append(f"| {r['network']} | {r['precision']} | {r['batch']} | - | - | - | {r['note']} |")
            continue
        d = "-" if r["max_abs_diff"] is None else f"{r['max_abs_diff']:.2e}"
        lines.append(f"| {r['network']} | {r['precision']} | {r['batch']} | {r['evals_per_s']:.1f} | "
                     f"{r['images_per_s']:.1f} | {r['peak_mib']:.0f} | {d} |")
    Path(args.out).write_text("\n".join(lines) + "\n")
    Path(args.out).with_suffix(".json").write_text(json.dumps(rows, indent=1))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
