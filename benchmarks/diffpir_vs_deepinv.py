"""Speed and peak memory: restorekit's DiffPIR vs deepinv's DiffPIR on the same UNet weights.

Both run Gaussian deblurring of the same image with the same number of
network evaluations and the same guided-diffusion UNet (FFHQ layout; the
official ``diffusion_ffhq_10m.pt`` with ``--weights``, otherwise random
weights of that exact architecture, which cost the same to evaluate). Each
implementation runs in its own fresh process so that its peak memory (CUDA
``max_memory_allocated`` on GPU, peak RSS on CPU) is its own.

    python benchmarks/diffpir_vs_deepinv.py --size 256 --steps 20 --device cuda
    python benchmarks/diffpir_vs_deepinv.py --size 128 --steps 5          # CPU smoke run

Writes a markdown table (``--out``) and prints it.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import platform
import resource
import time
from pathlib import Path


def _setup(args):
    import torch

    from restorekit.nets import FFHQ_10M, GuidedUNet

    torch.manual_seed(0)
    net = GuidedUNet(FFHQ_10M)
    if args["weights"]:
        from restorekit.weights import load_state_dict, load_strict

        sd, _ = load_state_dict(args["weights"])
        load_strict(net, sd, args["weights"])
    else:
        g = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for p in net.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.02)
    n = args["size"]
    x = torch.rand(1, 3, n, n, generator=torch.Generator().manual_seed(1))
    return torch, net, x


def _run_restorekit(args, q):
    torch, net, x = _setup(args)
    from restorekit.methods.diffpir import DiffPIR
    from restorekit.operators import Blur, add_gaussian_noise, gaussian_kernel

    dev = torch.device(args["device"])
    op = Blur(gaussian_kernel(61, 3.0))
    y = add_gaussian_noise(op.forward(x), 0.05, torch.Generator().manual_seed(2)).to(dev)
    r = DiffPIR(net, device=dev)
    nfe = {"n": 0}
    fwd = r.unet.forward

    def counted(*a, **k):
        nfe["n"] += 1
        return fwd(*a, **k)

    r.unet.forward = counted
    r.restore_tensor(y, "deblur", op, steps=2, seed=0)  # warm-up
    if dev.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    nfe["n"] = 0
    t0 = time.perf_counter()
    for _ in range(args["repeats"]):
        out = r.restore_tensor(y, "deblur", op, steps=args["steps"], seed=0)
    if dev.type == "cuda":
        torch.cuda.synchronize()
    dt = (time.perf_counter() - t0) / args["repeats"]
    q.put(_result("restorekit", dt, nfe["n"] // args["repeats"], dev, torch, float(((out.cpu() - x) ** 2).mean())))


def _run_deepinv(args, q):
    torch, net, x = _setup(args)
    import deepinv as dinv
    from deepinv.models import DiffUNet

    from restorekit.operators import gaussian_kernel

    dev = torch.device(args["device"])
    model = DiffUNet(large_model=False, pretrained=None)
    model.load_state_dict(net.state_dict(), strict=False)  # deepinv adds two schedule buffers of its own
    model = model.to(dev).eval()
    nfe = {"n": 0}
    fwd = model.forward_diffusion

    def counted(*a, **k):
        nfe["n"] += 1
        return fwd(*a, **k)

    model.forward_diffusion = counted
    k = gaussian_kernel(61, 3.0)[None, None].to(dev)
    physics = dinv.physics.BlurFFT(img_size=(3, args["size"], args["size"]), filter=k, device=dev,
                                   noise_model=dinv.physics.GaussianNoise(sigma=0.05))
    y = physics(x.to(dev))

    def sampler(steps):
        return dinv.sampling.DiffPIR(model, data_fidelity=dinv.optim.data_fidelity.L2(), max_iter=steps,
                                     sigma=0.05, zeta=0.3, lambda_=7.0, device=dev)

    sampler(2)(y, physics, seed=1)  # warm-up
    if dev.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    nfe["n"] = 0
    s = sampler(args["steps"])
    t0 = time.perf_counter()
    for _ in range(args["repeats"]):
        out = s(y, physics, seed=1)
    if dev.type == "cuda":
        torch.cuda.synchronize()
    dt = (time.perf_counter() - t0) / args["repeats"]
    q.put(_result("deepinv", dt, nfe["n"] // args["repeats"], dev, torch, float(((out.cpu() - x) ** 2).mean())))


def _result(name, dt, nfe, dev, torch, mse):
    if dev.type == "cuda":
        peak = torch.cuda.max_memory_allocated() / 2 ** 20
        kind = "CUDA max allocated"
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        kind = "peak RSS"
    return {"impl": name, "seconds": dt, "nfe": nfe, "s_per_nfe": dt / max(nfe, 1), "peak_mib": peak,
            "memory_kind": kind, "mse_vs_clean": mse}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--weights", default=None, help="diffusion_ffhq_10m.pt (optional)")
    ap.add_argument("--out", default="benchmarks/results/diffpir_vs_deepinv.md")
    args = vars(ap.parse_args())
    ctx = mp.get_context("spawn")
    rows = []
    for fn in (_run_restorekit, _run_deepinv):
        q = ctx.Queue()
        p = ctx.Process(target=fn, args=(args, q))
        p.start()
        rows.append(q.get())
        p.join()
    base = rows[1]["seconds"]
    import torch

    lines = [f"DiffPIR Gaussian deblur, {args['size']}x{args['size']}, {args['steps']} steps, FFHQ-layout UNet "
             f"({'official weights' if args['weights'] else 'random weights'}), device {args['device']}, "
             f"torch {torch.__version__}, {platform.processor() or platform.machine()}, "
             f"{torch.get_num_threads()} threads, mean of {args['repeats']} run(s)",
             "",
             "| implementation | NFE | time / image (s) | time / NFE (s) | time vs deepinv | peak memory (MiB) |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['impl']} | {r['nfe']} | {r['seconds']:.2f} | {r['s_per_nfe']:.3f} | "
                     f"{r['seconds'] / base:.2f}x | {r['peak_mib']:.0f} ({r['memory_kind']}) |")
    text = "\n".join(lines) + "\n"
    print(text)
    out = Path(args["out"])
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    (out.with_suffix(".json")).write_text(json.dumps({"args": args, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
