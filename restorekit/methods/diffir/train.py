"""DiffIR two-stage training, as the official DiffIR_S1_model / DiffIR_S2_model.

Stage 1: ``DiffIRS1`` (CPEN_S1 sees LQ and GT) trained with L1 on the output.
Stage 2: ``DiffIRS2`` starts from the stage-1 DIRformer; the frozen stage-1
CPEN gives the target IPR. For the first ``encoder_iter`` iterations only
CPEN_S2 + the IPR denoiser are trained (L1 between the diffusion's final IPR
and the target); afterwards everything is optimised jointly with
L1(output, GT) + L1(IPR). Pairs are made on the fly from clean images with the
shared operators: Real-ESRGAN second-order (or bicubic) for SR, random motion
blur + noise for deblurring, random boxes/strokes for inpainting. accelerate
runs it on one CPU, one GPU or several.

Configuration (YAML), e.g. ``configs/diffir/demo_sr_x4.yaml``::

    task: sr                   # sr | deblur | inpaint
    preset: realsr_x4          # or network: {DiffIRConfig fields}
    data: path/to/clean/images
    degradation: realesrgan    # sr: realesrgan | bicubic
    gt_size: 256
    batch_size: 8
    seed: 0
    ema_decay: 0.999
    stage1: {steps: 1000, lr: 2.0e-4, output: s1.safetensors}
    stage2: {steps: 1000, encoder_iter: 300, lr: 2.0e-4, lr_encoder: 2.0e-4, output: s2.safetensors}
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ...errors import ConfigError
from ...nets.diffir import PRESETS, DiffIRConfig, DiffIRS1, DiffIRS2
from ...operators import Blur, motion_kernel
from ...operators.realesrgan import second_order_degrade
from ...training import EMA, load_images, random_crops


def load_config(path: str | Path | dict) -> dict:
    import yaml

    if isinstance(path, dict):
        return dict(path)
    try:
        cfg = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError) as e:
        raise ConfigError(f"cannot read training config {path}: {e}") from None
    if not isinstance(cfg, dict):
        raise ConfigError(f"training config {path} must be a mapping")
    return cfg


def network_config(cfg: dict) -> DiffIRConfig:
    if "network" in cfg:
        return DiffIRConfig.from_dict(cfg["network"])
    if cfg.get("preset") in PRESETS:
        return PRESETS[cfg["preset"]]
    raise ConfigError(f"training config needs 'network' or a 'preset' ({', '.join(PRESETS)})")


def random_inpaint_mask(n: int, size: int, rng: np.random.Generator) -> torch.Tensor:
    """Masks with 1 = missing: a few boxes and thick random strokes (LaMa-like 'medium' masks)."""
    masks = np.zeros((n, 1, size, size), np.float32)
    yy, xx = np.mgrid[:size, :size]
    for i in range(n):
        for _ in range(rng.integers(1, 3)):
            bh, bw = rng.integers(size // 8, size // 2, size=2)
            t, l = rng.integers(0, size - bh), rng.integers(0, size - bw)
            masks[i, 0, t:t + bh, l:l + bw] = 1
        for _ in range(rng.integers(1, 4)):
            p = rng.uniform(0, size, 2)
            width = rng.uniform(size / 32, size / 10)
            for _ in range(rng.integers(3, 8)):
                q = np.clip(p + rng.normal(0, size / 5, 2), 0, size - 1)
                d = q - p
                tt = np.clip(((xx - p[0]) * d[0] + (yy - p[1]) * d[1]) / max(d @ d, 1e-6), 0, 1)
                dist = np.hypot(xx - p[0] - tt * d[0], yy - p[1] - tt * d[1])
                masks[i, 0][dist < width] = 1
                p = q
    return torch.from_numpy(masks)


def make_pairs(gt: torch.Tensor, task: str, cfg: dict, net_cfg: DiffIRConfig, rng: np.random.Generator):
    """(network input, ground truth) for a batch of clean crops."""
    if task == "sr":
        sf = net_cfg.scale
        if cfg.get("degradation", "realesrgan") == "realesrgan":
            lq = second_order_degrade(gt, sf, seed=int(rng.integers(2 ** 31)))
        else:
            lq = F.interpolate(gt, scale_factor=1 / sf, mode="bicubic", antialias=True, align_corners=False)
        return lq.clamp(0, 1), gt
    if task == "deblur":
        lq = torch.empty_like(gt)
        for i in range(gt.shape[0]):
            k = motion_kernel(int(cfg.get("kernel_size", 31)), float(rng.uniform(0.1, 0.9)), rng)
            lq[i:i + 1] = Blur(k).forward(gt[i:i + 1])
        sigma = float(cfg.get("noise", 0.01))
        lq = lq + sigma * torch.from_numpy(rng.standard_normal(lq.shape).astype(np.float32))
        return lq.clamp(0, 1), gt
    if task == "inpaint":
        m = random_inpaint_mask(gt.shape[0], gt.shape[-1], rng)
        return torch.cat([gt * (1 - m), m], dim=1), gt
    raise ConfigError(f"unknown DiffIR task {task!r}")


def _save(state: dict, path: str | Path, net_cfg: DiffIRConfig, stage: int, info: dict, name: str) -> None:
    from safetensors.torch import save_file

    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"restorekit_method": "diffir", "stage": str(stage), "name": name,
            "diffir_config": json.dumps(net_cfg.to_dict()), "training": json.dumps(info)}
    # shared modules (diffusion.model / diffusion.condition) are separate tensors in the file
    tmp = out.with_name(out.name + ".part")
    save_file({k: v.contiguous().clone() for k, v in state.items()}, str(tmp), metadata=meta)
    tmp.replace(out)


def train_diffir(config: str | Path | dict, stage: int, data: str | None = None, output: str | None = None,
                 steps: int | None = None, s1_weights: str | None = None, log=print) -> dict:
    from accelerate import Accelerator

    from ...weights import load_state_dict, load_strict

    cfg = load_config(config)
    task = cfg.get("task")
    if task not in ("sr", "deblur", "inpaint"):
        raise ConfigError("training config needs task: sr | deblur | inpaint")
    net_cfg = network_config(cfg)
    if task != net_cfg.variant:
        raise ConfigError(f"task {task!r} does not match the network variant {net_cfg.variant!r}")
    scfg = dict(cfg.get(f"stage{stage}", {}))
    if stage not in (1, 2):
        raise ConfigError("--stage must be 1 or 2")
    data = data or cfg.get("data")
    if not data:
        raise ConfigError("no training data: pass --data DIR or set data: in the config")
    output = output or scfg.get("output") or f"diffir_s{stage}.safetensors"
    n_steps = int(steps if steps is not None else scfg.get("steps", 1000))
    gt_size = int(cfg.get("gt_size", 64))
    if gt_size % (net_cfg.size_multiple * net_cfg.sf) and task != "sr":
        raise ConfigError(f"gt_size must be a multiple of {net_cfg.size_multiple}")
    batch = int(cfg.get("batch_size", 8))
    seed = int(cfg.get("seed", 0))
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    g = torch.Generator().manual_seed(seed)
    imgs = load_images(data, gt_size)
    from accelerate import DistributedDataParallelKwargs

    # stage 2's encoder phase leaves the DIRformer unused
    acc = Accelerator(kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)])
    lr = float(scfg.get("lr", 2e-4))

    if stage == 1:
        net = DiffIRS1(net_cfg)
        teacher = None
        opt_g = torch.optim.Adam(net.parameters(), lr=lr, betas=(0.9, 0.99))
        opt_e = None
    else:
        s1_path = s1_weights or scfg.get("s1_weights") or cfg.get("stage1", {}).get("output")
        if not s1_path or not Path(s1_path).is_file():
            raise ConfigError(f"stage 2 needs the stage-1 weights (--s1-weights); not found: {s1_path}")
        s1 = DiffIRS1(net_cfg)
        sd, _ = load_state_dict(s1_path)
        load_strict(s1, sd, str(s1_path))
        teacher = s1.E.eval()
        for p in teacher.parameters():
            p.requires_grad_(False)
        net = DiffIRS2(net_cfg)
        net.G.load_state_dict(s1.G.state_dict())  # stage 2 starts from the stage-1 DIRformer
        opt_g = torch.optim.Adam(net.parameters(), lr=lr, betas=(0.9, 0.99))
        enc_params = [p for n, p in net.named_parameters() if n.startswith(("condition.", "denoise."))]
        opt_e = torch.optim.Adam(enc_params, lr=float(scfg.get("lr_encoder", lr)), betas=(0.9, 0.99))
    encoder_iter = 0
    if stage == 2:
        cfg_steps = int(scfg.get("steps", n_steps))
        # keep the configured encoder-phase fraction when --steps overrides the length
        encoder_iter = int(round(int(scfg.get("encoder_iter", cfg_steps // 3)) * n_steps / max(cfg_steps, 1)))
    ema = EMA(net, float(cfg.get("ema_decay", 0.999)))
    if opt_e is not None:
        net, opt_g, opt_e = acc.prepare(net, opt_g, opt_e)
    else:
        net, opt_g = acc.prepare(net, opt_g)
    if teacher is not None:
        teacher = teacher.to(acc.device)
    t0 = time.time()
    hist = []
    for step in range(1, n_steps + 1):
        gt = random_crops(imgs, batch, gt_size, g)
        lq, gt = make_pairs(gt, task, cfg, net_cfg, rng)
        lq, gt = lq.to(acc.device), gt.to(acc.device)
        if stage == 1:
            out, _ = net(lq, gt)
            loss = F.l1_loss(out, gt)
            opt, rec = opt_g, {"l_pix": loss}
        else:
            with torch.no_grad():
                target = teacher(lq, gt)
            if step <= encoder_iter:  # CPEN_S2 + denoiser only
                ipr = net(lq, target, generator=g, ipr_only=True)
                loss = F.l1_loss(ipr, target)
                opt, rec = opt_e, {"l_ipr": loss}
            else:  # joint
                out, steps_ipr = net(lq, target, generator=g)
                l_pix, l_ipr = F.l1_loss(out, gt), F.l1_loss(steps_ipr[-1], target)
                loss = l_pix + l_ipr
                opt, rec = opt_g, {"l_pix": l_pix, "l_ipr": l_ipr}
        opt.zero_grad(set_to_none=True)
        acc.backward(loss)
        opt.step()
        rec = {k: v.item() for k, v in rec.items()}
        ema.update(acc.unwrap_model(net))
        hist.append(rec)
        if step % max(1, n_steps // 10) == 0 and acc.is_main_process:
            keys = sorted({k for r in hist[-50:] for k in r})
            msg = " ".join(f"{k} {np.mean([r[k] for r in hist[-50:] if k in r]):.4f}" for k in keys)
            log(f"stage {stage} step {step}/{n_steps} {msg} ({time.time() - t0:.0f}s)")
    info = {"stage": stage, "steps": n_steps, "encoder_iter": encoder_iter, "seconds": time.time() - t0,
            "task": task, "history": hist}
    if acc.is_main_process:
        _save(ema.state, output, net_cfg, stage, {k: v for k, v in info.items() if k != "history"},
              cfg.get("name", f"diffir-{task}"))
    return info
