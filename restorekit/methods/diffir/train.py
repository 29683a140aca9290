"""DiffIR training, as the official DiffIR_S1_model / DiffIR_S2_model / DiffIRGANS2Model (BasicSR).

Stages (``--stage``):

* ``1`` -- ``DiffIRS1`` (CPEN_S1 sees LQ and GT) with L1 (``pixel_opt``) and optionally a VGG perceptual loss.
* ``2`` -- ``DiffIRS2`` starts from the stage-1 DIRformer; the frozen stage-1 CPEN gives the target IPR. While
  ``current_iter < encoder_iter`` only CPEN_S2 + the denoiser train, on the KD loss's L1 term, with
  ``lr_encoder * gamma_encoder ** (current_iter // lr_decay_encoder)``; afterwards everything trains on
  L1(output) + L1(IPR) with ``lr_sr * gamma_sr ** ((current_iter - encoder_iter) // lr_decay_sr)``.
* ``gan`` / ``finetune`` -- the GAN stage (``train_DiffIRS2_GAN_*`` / ``finetune_*_V2``): starts from the stage-2
  weights, adds ``UNetDiscriminatorSN``, VGG perceptual and GAN losses, optional USM-sharpened targets
  (``l1_gt_usm``, ``percep_gt_usm``, ``gan_gt_usm``); ``finetune`` also loads a discriminator.
* inpainting stages with ``losses:`` -- DiffIR-inpainting's LaMa trainer: masked L1, KD (stage 2), R1
  non-saturating adversarial loss with the NLayer discriminator, feature matching and ResNetPL; per batch a
  generator step, then a discriminator step on a second generator forward (as Lightning runs
  ``training_step`` once per optimizer); LaMa's masks (``masks: train_256`` or ``mask_gen_kwargs``).

The EMA starts as a copy of the network (upstream's stage-2 EMA draws its own random CPEN / denoiser init).
``--steps`` overrides ``total_iter`` and scales ``encoder_iter`` by the same factor.

Iterations count from 1 as BasicSR's ``current_iter``; a scheduler's step is ``current_iter - 1``. EMA is
BasicSR's (parameters only, constant ``ema_decay``). Pairs come from clean images (Real-ESRGAN second-order
degradation with an optional training-pair pool, bicubic, motion blur, inpainting masks) or from paired folders
(``data: {lq: DIR, gt: DIR}``, e.g. GoPro), with optional progressive patches (``gt_sizes``,
``mini_batch_sizes``, ``iters``).

The loop is :class:`restorekit.training.StepLoop`, shared with the DiffBIR and DiffPIR-prior trainers: accelerate
(one CPU, one GPU or ``accelerate launch`` processes, each drawing its own ``batch_size`` from its own random
streams, seed + rank), ``mixed_precision`` (restorekit option: no | fp16 | bf16; unset: as ``accelerate
launch`` says), training states every
``save_checkpoint_freq`` iterations (each process's random streams and training-pair pool in its own file) from
which ``resume`` continues exactly (weights, optimizers, EMA, pool, iteration and random states), ``time_limit``
and validation hooks (``val: {val_freq, data, metrics}`` scores the EMA network with pyiqa metrics).

Configuration (YAML), e.g. ``configs/diffir/realsr_x4.yaml``::

    task: sr                   # sr | deblur | inpaint
    preset: realsr_x4          # or network: {DiffIRConfig fields}
    data: path/to/clean/images # or {lq: DIR, gt: DIR}
    degradation: realesrgan    # sr: realesrgan | bicubic | mixed (p_bicubic: share of plain bicubic crops)
    gt_size: 256
    batch_size: 8
    queue_size: 180            # Real-ESRGAN pair pool (0: none)
    seed: 0
    ema_decay: 0.999
    val: {val_freq: 10000, data: DIR, metrics: [psnr, ssim]}
    stage1: {total_iter: 1000000, optim_g: {lr: 2.0e-4, betas: [0.9, 0.99]},
             scheduler: {type: MultiStepLR, milestones: [500000, 700000], gamma: 0.5}, output: s1.safetensors}
    stage2: {total_iter: 1000000, encoder_iter: 100000, lr_encoder: 2.0e-4, lr_sr: 2.0e-4, gamma_encoder: 0.1,
             gamma_sr: 0.5, lr_decay_encoder: 60000, lr_decay_sr: 600000, output: s2.safetensors}
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ...errors import ConfigError, check_number
from ...nets.diffir import PRESETS, DiffIRConfig, DiffIRS1, DiffIRS2
from ...operators import Blur, motion_kernel
from ...operators.realesrgan import second_order_degrade


def load_config(path: str | Path | dict) -> dict:
    from ...files import read_yaml_mapping

    if isinstance(path, dict):
        return dict(path)
    return read_yaml_mapping(path, "training config")


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


def degradation_config(cfg: dict):
    """Real-ESRGAN degradation options under their official names (top level of the config)."""
    from dataclasses import fields

    from ...operators.realesrgan import SecondOrderConfig

    kw = {}
    for f in fields(SecondOrderConfig):
        if f.name in cfg:
            v = cfg[f.name]
            kw[f.name] = tuple(v) if isinstance(v, list) else v
    if "blur_kernel_size" in cfg:
        kw["kernel_range"] = (7, int(cfg["blur_kernel_size"]))
    return SecondOrderConfig(**kw)


def make_pairs(gt: torch.Tensor, task: str, cfg: dict, net_cfg: DiffIRConfig, rng: np.random.Generator):
    """(network input, ground truth) for a batch of clean crops."""
    if task == "sr":
        sf = net_cfg.scale
        kind = cfg.get("degradation", "realesrgan")
        if kind not in ("realesrgan", "bicubic", "mixed"):
            raise ConfigError(f"degradation must be realesrgan, bicubic or mixed, not {kind!r}")
        # "mixed" (restorekit): the first round(p_bicubic * batch) crops are plainly bicubic-downsampled,
        # the others get the Real-ESRGAN degradation
        n_bic = {"realesrgan": 0, "bicubic": gt.shape[0]}.get(kind, int(round(float(cfg.get("p_bicubic", 0.5))
                                                                                * gt.shape[0])))
        parts = []
        if n_bic:
            parts.append(F.interpolate(gt[:n_bic], scale_factor=1 / sf, mode="bicubic", antialias=True,
                                       align_corners=False))
        if n_bic < gt.shape[0]:
            lq = second_order_degrade(gt[n_bic:], sf, seed=int(rng.integers(2 ** 31)), cfg=degradation_config(cfg))
            parts.append((lq * 255.0).round().clamp(0, 255) / 255.0)  # as upstream's feed_data
        return torch.cat(parts).clamp(0, 1), gt
    if task == "deblur":
        lq = torch.empty_like(gt)
        for i in range(gt.shape[0]):
            k = motion_kernel(int(cfg.get("kernel_size", 31)), float(rng.uniform(0.1, 0.9)), rng)
            lq[i:i + 1] = Blur(k).forward(gt[i:i + 1])
        sigma = float(cfg.get("noise", 0.01))
        lq = lq + sigma * torch.from_numpy(rng.standard_normal(lq.shape).astype(np.float32))
        return lq.clamp(0, 1), gt
    if task == "inpaint":
        spec = cfg.get("mask_gen_kwargs") or cfg.get("masks")
        if spec:  # LaMa's generators (restorekit.operators.lama_masks): a preset name or MixedMaskGenerator kwargs
            from ...operators.lama_masks import lama_masks

            m = lama_masks(gt.shape[0], gt.shape[-1], spec, np.random.RandomState(int(rng.integers(2 ** 31))))
        else:
            m = random_inpaint_mask(gt.shape[0], gt.shape[-1], rng)
        return torch.cat([gt * (1 - m), m], dim=1), gt
    raise ConfigError(f"unknown DiffIR task {task!r}")


def _save(state: dict, path: str | Path, net_cfg: DiffIRConfig, stage, info: dict, name: str) -> None:
    from ...training import save_safetensors_atomic

    meta = {"restorekit_method": "diffir", "stage": str(stage), "name": name,
            "diffir_config": json.dumps(net_cfg.to_dict()), "training": json.dumps(info)}
    # shared modules (diffusion.model / diffusion.condition) are separate tensors in the file; the file gets
    # mode 0o666 & ~umask, as any new file
    save_safetensors_atomic({k: v.detach().cpu().contiguous().clone() for k, v in state.items()}, path,
                            metadata=meta)


STAGES = {"1": "stage1", "2": "stage2", "gan": "gan", "finetune": "finetune"}


def _stage_name(stage) -> str:
    key = str(stage).lower().replace("s2-gan", "gan").replace("stage", "")
    if key not in STAGES:
        raise ConfigError(f"--stage must be one of {', '.join(STAGES)} (got {stage!r})")
    return key


def _opt(scfg: dict, cfg: dict, key: str, default=None):
    """A stage option, else the top-level one, else ``default``."""
    if key in scfg:
        return scfg[key]
    return cfg.get(key, default)


def stage_options(cfg: dict, stage) -> dict:
    """Options of one stage under their official (BasicSR option file) names, defaults filled in."""
    st = _stage_name(stage)
    scfg = dict(cfg.get(STAGES[st]) or {})
    o: dict = {"stage": st}
    o["total_iter"] = int(scfg.get("total_iter", scfg.get("steps", 1000)))
    optim_g = dict(scfg.get("optim_g") or {})
    optim_g.setdefault("lr", float(scfg.get("lr", 2e-4)))
    optim_g.setdefault("betas", [0.9, 0.99])
    optim_g.setdefault("weight_decay", 0)
    optim_g.pop("type", None)
    o["optim_g"] = optim_g
    o["scheduler"] = scfg.get("scheduler")
    o["time_limit"] = None if scfg.get("time_limit") is None else float(scfg["time_limit"])  # restorekit
    # restorekit: no | fp16 | bf16; unset: as accelerate launch says (--mixed_precision), else no
    o["mixed_precision"] = _opt(scfg, cfg, "mixed_precision", None)
    o["warmup_iter"] = int(scfg.get("warmup_iter", -1))
    o["pixel_opt"] = {"loss_weight": 1.0, **dict(scfg.get("pixel_opt") or {})}
    o["perceptual_opt"] = scfg.get("perceptual_opt")
    o["kd_opt"] = {"loss_weight": 1.0, "temperature": 0.15, **dict(scfg.get("kd_opt") or {})}
    big = 1 << 62
    o["encoder_iter"] = int(scfg.get("encoder_iter", o["total_iter"] // 3 if st == "2" else 0))
    o["lr_encoder"] = float(scfg.get("lr_encoder", optim_g["lr"]))
    o["lr_sr"] = float(scfg.get("lr_sr", optim_g["lr"]))
    o["gamma_encoder"] = float(scfg.get("gamma_encoder", 1.0))
    o["gamma_sr"] = float(scfg.get("gamma_sr", 1.0))
    o["lr_decay_encoder"] = int(scfg.get("lr_decay_encoder", big))
    o["lr_decay_sr"] = int(scfg.get("lr_decay_sr", big))
    # RealSR / GoPro models set the stage-2 / GAN learning rates by hand every iteration (lr_sr, gamma_sr, ...);
    # DiffIR-SRGAN's models have that code commented out and follow the scheduler instead
    o["manual_lr"] = bool(scfg.get("manual_lr", True))
    if st in ("gan", "finetune"):
        optim_d = dict(scfg.get("optim_d") or {})
        optim_d.setdefault("lr", optim_g["lr"])
        optim_d.setdefault("betas", optim_g["betas"])
        optim_d.setdefault("weight_decay", 0)
        optim_d.pop("type", None)
        o["optim_d"] = optim_d
        nd = dict(scfg.get("network_d") or {})
        nd.pop("type", None)
        o["network_d"] = {"num_in_ch": 3, "num_feat": 64, "skip_connection": True, **nd}
        o["gan_opt"] = {"gan_type": "vanilla", "real_label_val": 1.0, "fake_label_val": 0.0, "loss_weight": 1.0,
                        **{k: v for k, v in dict(scfg.get("gan_opt") or {}).items() if k != "type"}}
        o["net_d_iters"] = int(scfg.get("net_d_iters", 1))
        o["net_d_init_iters"] = int(scfg.get("net_d_init_iters", 0))
        for k in ("l1_gt_usm", "percep_gt_usm", "gan_gt_usm"):
            o[k] = bool(_opt(scfg, cfg, k, False))
        o["s2_weights"] = scfg.get("s2_weights")
        o["d_weights"] = scfg.get("d_weights")
        if st == "finetune" and not o["d_weights"]:
            raise ConfigError("the finetune stage needs d_weights: the GAN stage's discriminator (net_d)")
    o["lama"] = None
    if scfg.get("losses") is not None:  # DiffIR-inpainting (LaMa trainer): configs/training/DiffIRS{1,2}-*.yaml
        if cfg.get("task") not in (None, "inpaint") or st not in ("1", "2"):
            raise ConfigError("LaMa losses (losses:) are for inpainting stages 1 and 2")
        losses = dict(scfg["losses"])
        if float((losses.get("perceptual") or {}).get("weight", 0)) > 0:
            raise ConfigError("LaMa's VGG perceptual loss (losses.perceptual.weight > 0) is not implemented")
        adv = dict(losses.get("adversarial") or {})
        if adv.pop("kind", "r1") != "r1":
            raise ConfigError("only LaMa's adversarial loss kind r1 (NonSaturatingWithR1) is implemented")
        o["lama"] = {"l1": {"weight_known": 10.0, "weight_missing": 0.0, **dict(losses.get("l1") or {})},
                     "kd": {"loss_weight": 1.0, **dict(losses.get("kd") or {})},
                     "adversarial": {"weight": 10, "gp_coef": 0.001, "mask_as_fake_target": True,
                                     "allow_scale_mask": True, **adv},
                     "feature_matching": float((losses.get("feature_matching") or {}).get("weight", 100)),
                     "resnet_pl": float((losses.get("resnet_pl") or {}).get("weight", 30))}
        disc = dict(scfg.get("discriminator") or {})
        disc.pop("kind", None)
        o["network_d"] = {"input_nc": 3, "ndf": 64, "n_layers": 4, **disc}
        opts = dict(scfg.get("optimizers") or {})
        for name, key, lr in (("generator", "optim_g", 2e-4), ("discriminator", "optim_d", 1e-4)):
            d = {k: v for k, v in dict(opts.get(name) or {}).items() if k != "kind"}
            o[key] = {"lr": float(d.get("lr", lr)), "betas": d.get("betas", [0.9, 0.999]),
                      "weight_decay": d.get("weight_decay", 0)}
        o["encoder_iter"] = 0
        o["gradient_clip_val"] = float(scfg.get("gradient_clip_val", 0) or 0)  # Lightning trainer kwarg
        o["resnet_pl_weights"] = _opt(scfg, cfg, "resnet_pl_weights")
    o["s1_weights"] = scfg.get("s1_weights") or (cfg.get("stage1") or {}).get("output")
    o["vgg_weights"] = _opt(scfg, cfg, "vgg_weights")
    o["gt_usm"] = bool(_opt(scfg, cfg, "gt_usm", False))
    for k in ("gt_sizes", "mini_batch_sizes", "iters"):  # progressive patches (GoPro)
        o[k] = _opt(scfg, cfg, k)
    o["ema_decay"] = float(_opt(scfg, cfg, "ema_decay", 0.999))
    o["ema_warmup"] = bool(_opt(scfg, cfg, "ema_warmup", False))
    o["output"] = scfg.get("output") or f"diffir_{st if st in ('gan', 'finetune') else 's' + st}.safetensors"
    o["save_checkpoint_freq"] = int(float(_opt(scfg, cfg, "save_checkpoint_freq",
                                              (cfg.get("logger") or {}).get("save_checkpoint_freq", 0)) or 0))
    o["state_dir"] = _opt(scfg, cfg, "state_dir")
    val = dict(cfg.get("val") or {})
    val.update(scfg.get("val") or {})
    o["val"] = val
    return o


def _opt_pairs(o: dict) -> dict:
    return {"lr": float(o["lr"]), "betas": tuple(float(b) for b in o["betas"]),
            "weight_decay": float(o.get("weight_decay", 0))}


def _add_perceptual(cri_perc, out, gt, names, loss, rec: dict):
    """``loss`` plus BasicSR's perceptual and style terms (those it computes), recorded in ``rec`` as ``names``."""
    for k, v in zip(names, cri_perc(out, gt)):
        if v is not None:
            loss = loss + v
            rec[k] = v
    return loss


def _set_lr(opt, lr: float) -> None:
    for group in opt.param_groups:
        group["lr"] = lr


def _validate(net_ema, stage: str, task: str, net_cfg: DiffIRConfig, val_pairs, metrics, device) -> dict:
    """Mean pyiqa scores of the EMA network on the validation pairs (LQ inputs as the restorer pads them)."""
    from ...io import pad_to_multiple
    from ...metrics import compute_metrics
    from .restorer import pad_symmetric

    sums: dict = {}
    counts: dict = {}
    sf = net_cfg.sf
    with torch.no_grad():
        for i, (lq, gt) in enumerate(val_pairs):
            lq, gt = lq[None].to(device), gt[None].to(device)
            h, w = lq.shape[-2:]
            if task == "inpaint":
                x = pad_symmetric(lq, net_cfg.size_multiple)
            else:
                x, _ = pad_to_multiple(lq, net_cfg.size_multiple)
            if stage == "1":
                gp, _ = pad_to_multiple(gt, net_cfg.size_multiple * sf)
                gp = gp[..., : x.shape[-2] * sf, : x.shape[-1] * sf]
                out, _ = net_ema(x, gp)
            else:
                out = net_ema(x, generator=torch.Generator().manual_seed(i))
            out = out[..., : h * sf, : w * sf]
            if task == "inpaint":
                m = lq[:, 3:4]
                out = m * out + (1 - m) * lq[:, :3]
            scores, _ = compute_metrics(out.clamp(0, 1), gt, tuple(metrics))
            for k, v in scores.items():
                if v is not None:
                    sums[k] = sums.get(k, 0.0) + v
                    counts[k] = counts.get(k, 0) + 1
    return {k: sums[k] / counts[k] for k in sums}


def _val_pairs(val: dict, task: str, cfg: dict, net_cfg: DiffIRConfig) -> list:
    from ...training import load_images, load_pairs

    data = val.get("data")
    if not data:
        return []
    if isinstance(data, dict):
        return load_pairs(data.get("lq") or data.get("dataroot_lq"), data.get("gt") or data.get("dataroot_gt"))
    size = int(val.get("gt_size", cfg.get("gt_size", 64)))
    m = net_cfg.size_multiple * net_cfg.sf
    imgs = load_images(data, size)
    rng = np.random.default_rng(int(val.get("seed", 0)))
    pairs = []
    for img in imgs:
        h, w = (img.shape[-2] // m) * m, (img.shape[-1] // m) * m
        gt = img[None, :, :h, :w]
        lq, gt = make_pairs(gt, task, cfg, net_cfg, rng)
        pairs.append((lq[0], gt[0]))
    return pairs


def train_diffir(config: str | Path | dict, stage, data: str | None = None, output: str | None = None,
                 steps: int | None = None, s1_weights: str | None = None, log=print, resume=None,
                 s2_weights: str | None = None, d_weights: str | None = None, state_dir: str | None = None,
                 val_freq: int | None = None, save_checkpoint_freq: int | None = None,
                 time_limit: float | None = None) -> dict:
    """Train one DiffIR stage (``stage``: 1, 2, "gan" or "finetune"); returns a summary with the loss history.

    ``resume``: a ``<iter>.state`` file, a folder of them, or ``"auto"`` (the latest in ``state_dir``).
    ``time_limit`` (seconds): stop after the iteration that passes it and save what was trained
    (the summary's ``steps`` says how many iterations ran)."""
    from ...nets.gan import GANLoss, PerceptualLoss, UNetDiscriminatorSN, USMSharp
    from ...training import (
        ParamEMA,
        StepLoop,
        TrainingPairPool,
        check_seed,
        check_training_output,
        load_images,
        load_pairs,
        out_of_memory_as_error,
        overwrite_note,
        paired_random_crops,
        progressive_size,
        random_crops,
        save_atomic,
        scheduled_lr,
    )
    from ...weights import load_state_dict, load_strict

    cfg = load_config(config)
    task = cfg.get("task")
    if task not in ("sr", "deblur", "inpaint"):
        raise ConfigError("training config needs task: sr | deblur | inpaint")
    net_cfg = network_config(cfg)
    if task != net_cfg.variant:
        raise ConfigError(f"task {task!r} does not match the network variant {net_cfg.variant!r}")
    o = stage_options(cfg, stage)
    st = o["stage"]
    data = data or cfg.get("data")
    if not data:
        raise ConfigError("no training data: pass --data DIR or set data: in the config")
    out_name = "--output" if output else f"{STAGES[st]}.output"
    output = output or o["output"]
    if not isinstance(output, (str, Path)):
        raise ConfigError(f"{out_name} must be a file name, got {output!r}")
    time_limit = time_limit if time_limit is not None else o["time_limit"]
    if time_limit is not None:
        check_number(time_limit, "--time-limit", lo=0)
    # every setting is checked here, before any image is read or network built
    total = (check_number(steps, "--steps", lo=1, integer=True) if steps is not None
             else check_number(o["total_iter"], f"{STAGES[st]}.total_iter", lo=1, integer=True))
    for key in ("optim_g", "optim_d"):
        if key in o:
            check_number(o[key]["lr"], f"{STAGES[st]}.{key}.lr", lo=0, lo_open=True)
    encoder_iter = 0
    if st == "2":
        # keep the configured encoder-phase fraction when --steps overrides the length
        encoder_iter = int(round(o["encoder_iter"] * total / max(o["total_iter"], 1)))
    gt_size = check_number(cfg.get("gt_size", 64), "gt_size", lo=1, integer=True)
    sf = net_cfg.sf
    batch = check_number(cfg.get("batch_size", 8), "batch_size", lo=1, integer=True)
    prog = o["gt_sizes"], o["mini_batch_sizes"], o["iters"]
    progressive = all(v is not None for v in prog)
    if progressive:
        for name, v in zip(("gt_sizes", "mini_batch_sizes", "iters"), prog):
            if not isinstance(v, (list, tuple)) or not v:
                raise ConfigError(f"{name} must be a list of numbers, got {v!r}")
            for x in v:
                check_number(x, name, lo=1, integer=True)
        if not len(prog[0]) == len(prog[1]) == len(prog[2]):
            raise ConfigError(f"gt_sizes, mini_batch_sizes and iters must have the same length, got "
                              f"{len(prog[0])}, {len(prog[1])} and {len(prog[2])}")
        prog = tuple([int(x) for x in v] for v in prog)
    size_key = "gt_sizes" if progressive else "gt_size"
    sizes_to_check = list(prog[0]) if progressive else [gt_size]
    # the network's input crop is gt_size / scale; DIRformer (pixel_unshuffle, then 3 downsamplings) and CPEN
    # need it to be a multiple of size_multiple
    m = net_cfg.size_multiple
    for size in sizes_to_check:
        if size % (m * sf):
            raise ConfigError(f"{size_key} {size} does not fit the network: with scale {sf} the input crops are "
                              f"{size}/{sf} px, and DiffIR needs input crops that are a multiple of {m} px; "
                              f"{size_key} must be a multiple of {m * sf}")
    if save_checkpoint_freq is not None:
        o["save_checkpoint_freq"] = check_number(save_checkpoint_freq, "--save-every", lo=0, integer=True)
    check_number(o["save_checkpoint_freq"], "save_checkpoint_freq", lo=0, integer=True)
    sdir = Path(state_dir or o["state_dir"] or Path(output).with_name(Path(output).stem + "_training_states"))
    # the weights (and a GAN stage's discriminator beside them) must not overwrite an input, nor be unwritable
    writes_d = st in ("gan", "finetune") or o["lama"] is not None
    inputs = {"training config": config if isinstance(config, (str, Path)) else None,
              "--resume state": resume, "VGG weights (vgg_weights)": o["vgg_weights"]}
    if st != "1":
        inputs["stage-1 weights (--s1-weights)"] = s1_weights or o["s1_weights"]
    if st in ("gan", "finetune"):
        inputs["stage-2 weights (--s2-weights)"] = (s2_weights or o.get("s2_weights")
                                                     or (cfg.get("stage2") or {}).get("output"))
        inputs["discriminator weights (--d-weights)"] = d_weights or o.get("d_weights")
    if o["lama"] is not None:
        inputs["ResNetPL weights"] = o.get("resnet_pl_weights")
    seed = check_seed(cfg.get("seed", 0), "seed")
    also = [Path(output).with_name(Path(output).stem + "_net_d.pth")] if writes_d else []
    check_training_output(output, data=[data, (o["val"] or {}).get("data")], inputs=inputs, also=also,
                          state_dir=sdir if o["save_checkpoint_freq"] else None, name=out_name, resume=resume)
    # each process draws its own data (seeds seed + rank; rank 0 = a single-process run) and its own batch
    # (BasicSR's batch_size_per_gpu); stage 2's encoder phase leaves the DIRformer unused
    loop = StepLoop(total, sdir, seed=seed, save_every=o["save_checkpoint_freq"],
                    mixed_precision=o["mixed_precision"], log=log, tag=f"diffir stage {st}",
                    find_unused_parameters=True, time_limit=time_limit, log_skip=("gt_size", "batch"))
    acc, rng, g = loop.acc, loop.rng, loop.g
    paired = isinstance(data, dict)
    if paired:
        pairs = load_pairs(data.get("lq") or data.get("dataroot_lq"), data.get("gt") or data.get("dataroot_gt"))
        need = max(sizes_to_check) // sf
        for lq_t, gt_t in pairs:  # paired crops are never upscaled: every pair must hold the largest patch
            h, w = lq_t.shape[-2:]
            if gt_t.shape[-2:] != (h * sf, w * sf):
                raise ConfigError(f"paired images do not fit scale {sf}: input {w}x{h}, ground truth "
                                  f"{gt_t.shape[-1]}x{gt_t.shape[-2]}")
            if min(h, w) < need:
                raise ConfigError(f"{size_key} {max(sizes_to_check)} needs input images of at least {need}x{need} "
                                  f"px; a paired input image is {w}x{h}")
    else:
        imgs = load_images(data, max(sizes_to_check), crop_name=size_key)
    val = dict(o["val"])
    if val_freq is not None:
        val["val_freq"] = val_freq
    vf = int(float(val.get("val_freq", 0) or 0))
    val_pairs = _val_pairs(val, task, cfg, net_cfg) if vf > 0 else []

    teacher = net_d = opt_e = opt_d = cri_gan = None
    if st == "1":
        net = DiffIRS1(net_cfg)
    else:
        s1_path = s1_weights or o["s1_weights"]
        if not s1_path or not Path(s1_path).is_file():
            raise ConfigError(f"stage {st} needs the stage-1 weights (--s1-weights / s1_weights); not found: {s1_path}")
        s1 = DiffIRS1(net_cfg)
        sd, _ = load_state_dict(s1_path)
        load_strict(s1, sd, str(s1_path))
        teacher = s1.E.eval()
        for p in teacher.parameters():
            p.requires_grad_(False)
        net = DiffIRS2(net_cfg)
        if st == "2":
            net.G.load_state_dict(s1.G.state_dict())  # stage 2 starts from the stage-1 DIRformer
        else:
            s2_path = s2_weights or o.get("s2_weights") or (cfg.get("stage2") or {}).get("output")
            if not s2_path or not Path(s2_path).is_file():
                raise ConfigError(f"the {st} stage needs the stage-2 weights (s2_weights); not found: {s2_path}")
            sd, _ = load_state_dict(s2_path)
            load_strict(net, {k: v.float() for k, v in sd.items()}, str(s2_path))
            net_d = UNetDiscriminatorSN(**o["network_d"])
            dp = d_weights or o.get("d_weights")
            if dp:
                sd, _ = load_state_dict(dp)
                load_strict(net_d, sd, str(dp))
            cri_gan = GANLoss(**o["gan_opt"])
    from ...nets.lama import feature_matching_loss, masked_l1_loss

    lama = o["lama"]
    adv = resnet_pl = None
    if lama is not None:
        from ...nets.lama import NLayerDiscriminator, NonSaturatingWithR1, ResNetPL

        net_d = NLayerDiscriminator(**o["network_d"])
        adv = NonSaturatingWithR1(**lama["adversarial"])
        if lama["resnet_pl"] > 0:
            resnet_pl = ResNetPL(lama["resnet_pl"], o["resnet_pl_weights"]).to(acc.device)
    opt_g = torch.optim.Adam(net.parameters(), **_opt_pairs(o["optim_g"]))
    if st == "2" and lama is None:
        enc_params = [p for n, p in net.named_parameters() if n.startswith(("condition.", "denoise."))]
        opt_e = torch.optim.Adam(enc_params, **_opt_pairs({**o["optim_g"], "lr": o["lr_encoder"]}))
    if net_d is not None:
        opt_d = torch.optim.Adam(net_d.parameters(), **_opt_pairs(o["optim_d"]))
    cri_perc = None
    if o["perceptual_opt"]:
        popt = {k: v for k, v in dict(o["perceptual_opt"]).items() if k != "type"}
        cri_perc = PerceptualLoss(**popt, weights=o["vgg_weights"] if o["vgg_weights"] else None).to(acc.device)
    usm = USMSharp().to(acc.device) if (o["gt_usm"] or any(o.get(k) for k in
                                                            ("l1_gt_usm", "percep_gt_usm", "gan_gt_usm"))) else None
    ema = ParamEMA(net, o["ema_decay"], warmup=o["ema_warmup"])
    queue = int(cfg.get("queue_size", 0) or 0)
    pool = TrainingPairPool(queue) if queue > 0 and task == "sr" and not paired else None

    mods = [net, opt_g] + ([opt_e] if opt_e is not None else []) + ([net_d, opt_d] if net_d is not None else [])
    prepared = acc.prepare(*mods)
    net, opt_g = prepared[0], prepared[1]
    rest = list(prepared[2:])
    if opt_e is not None:
        opt_e = rest.pop(0)
    if net_d is not None:
        net_d, opt_d = rest
    ema.module.to(acc.device)
    if teacher is not None:
        teacher = teacher.to(acc.device)
    bare = acc.unwrap_model(net)
    bare_d = acc.unwrap_model(net_d) if net_d is not None else None

    state = {"net": bare, "ema": ema, "opt_g": opt_g}
    if opt_e is not None:
        state["opt_e"] = opt_e
    if net_d is not None:
        state.update(net_d=bare_d, opt_d=opt_d)
    local = {"pool": pool} if pool is not None else {}  # each process fills its own pool
    loop.resume(resume, state, {"stage": st, "total": total, "task": task, "processes": loop.world}, local)
    if loop.start == 0 and loop.is_main:
        overwrite_note([output, *also], log)

    def save_net_d(it: int) -> None:  # as BasicSR, the discriminator beside each training state
        if net_d is not None and loop.is_main:
            save_atomic({"params": {k: v.cpu() for k, v in bare_d.state_dict().items()}}, sdir / f"net_d_{it}.pth")

    def sched_lr(base: float, it: int) -> float:
        """BasicSR's update_learning_rate: the scheduler at step it - 1, linear warm-up below warmup_iter."""
        if it < o["warmup_iter"]:
            return base / o["warmup_iter"] * it
        return scheduled_lr(base, it - 1, o["scheduler"])

    def step(it: int) -> dict:
        size, bsz = progressive_size(it, *[list(v) for v in (prog[2], prog[0], prog[1])]) if progressive \
            else (gt_size, batch)
        if paired:
            lq, gt = paired_random_crops(pairs, bsz, size, sf, g, flip=bool(cfg.get("use_hflip", True)),
                                         rot=bool(cfg.get("use_rot", True)))
        else:
            clean = random_crops(imgs, bsz, size, g)
            src = usm(clean.to(acc.device)).cpu() if usm is not None and (o["gt_usm"] or o.get("l1_gt_usm")) \
                else clean
            lq, _ = make_pairs(src, task, cfg, net_cfg, rng)
            gt = src if o["gt_usm"] else clean
        lq, gt = lq.to(acc.device), gt.to(acc.device)
        if pool is not None:
            lq, gt = pool(lq, gt, g)
        rec = {}
        if lama is not None:  # LaMa trainer (DiffIR-inpainting defaultS1 / defaultS2)
            img, mask = gt, lq[:, 3:4]

            def generate(grad: bool, lq=lq, img=img):
                with torch.set_grad_enabled(grad):
                    if st == "1":
                        return net(lq, img)[0], None, None
                    with torch.no_grad():
                        t = teacher(lq, img)
                    out, steps_ipr = net(lq, t, generator=g)
                    return out, steps_ipr[-1], t

            for p in net_d.parameters():
                p.requires_grad_(False)
            pred, ipr, target = generate(True)
            l1 = masked_l1_loss(pred, img, mask, lama["l1"]["weight_known"], lama["l1"]["weight_missing"])
            loss, rec["gen_l1"] = l1, l1
            if ipr is not None:
                l_abs = lama["kd"]["loss_weight"] * F.l1_loss(ipr, target)
                loss, rec["gen_labs"] = loss + l_abs, l_abs
            _, real_feats = net_d(img)
            fake_pred, fake_feats = net_d(pred)
            l_adv = adv.generator_loss(fake_pred, mask)
            loss, rec["gen_adv"] = loss + l_adv, l_adv
            if lama["feature_matching"] > 0:
                fm = feature_matching_loss(fake_feats, real_feats) * lama["feature_matching"]
                loss, rec["gen_fm"] = loss + fm, fm
            if resnet_pl is not None:
                rpl = resnet_pl(pred, img)
                loss, rec["gen_resnet_pl"] = loss + rpl, rpl
            opt_g.zero_grad(set_to_none=True)
            acc.backward(loss)
            if o["gradient_clip_val"]:
                acc.clip_grad_norm_(net.parameters(), o["gradient_clip_val"])
            opt_g.step()
            # discriminator step: Lightning runs training_step (a new generator forward) for each optimizer
            for p in net_d.parameters():
                p.requires_grad_(True)
            pred2 = generate(False)[0]
            real = img.detach().clone().requires_grad_(True)
            rp, _ = net_d(real)
            fp, _ = net_d(pred2.detach())
            l_d = adv.discriminator_loss(real, rp, fp, mask)
            opt_d.zero_grad(set_to_none=True)
            acc.backward(l_d)
            if o["gradient_clip_val"]:
                acc.clip_grad_norm_(net_d.parameters(), o["gradient_clip_val"])
            opt_d.step()
            rec["discr_adv"] = l_d
        elif st == "1":
            _set_lr(opt_g, sched_lr(o["optim_g"]["lr"], it))
            out, _ = net(lq, gt)
            loss = o["pixel_opt"]["loss_weight"] * F.l1_loss(out, gt)
            rec["l_pix"] = loss
            if cri_perc is not None:
                loss = _add_perceptual(cri_perc, out, gt, ("l_percep", "l_style"), loss, rec)
            opt_g.zero_grad(set_to_none=True)
            acc.backward(loss)
            opt_g.step()
        elif st == "2":
            kdw = o["kd_opt"]["loss_weight"]
            with torch.no_grad():
                target = teacher(lq, gt)
            if it < encoder_iter:  # CPEN_S2 + denoiser only (official: current_iter < encoder_iter)
                _set_lr(opt_e, o["lr_encoder"] * o["gamma_encoder"] ** (it // o["lr_decay_encoder"]) if o["manual_lr"]
                        else sched_lr(o["optim_g"]["lr"], it))
                ipr = net(lq, target, generator=g, ipr_only=True)
                loss = kdw * F.l1_loss(ipr, target)
                rec["l_ipr"] = loss
                opt = opt_e
            else:  # joint
                _set_lr(opt_g, o["lr_sr"] * o["gamma_sr"] ** ((it - encoder_iter) // o["lr_decay_sr"]) if o["manual_lr"]
                        else sched_lr(o["optim_g"]["lr"], it))
                out, steps_ipr = net(lq, target, generator=g)
                l_pix = o["pixel_opt"]["loss_weight"] * F.l1_loss(out, gt)
                l_ipr = kdw * F.l1_loss(steps_ipr[-1], target)
                loss = l_pix + l_ipr
                rec.update(l_pix=l_pix, l_ipr=l_ipr)
                opt = opt_g
            opt.zero_grad(set_to_none=True)
            acc.backward(loss)
            opt.step()
        else:  # GAN stage (DiffIRGANS2Model.optimize_parameters)
            _set_lr(opt_g, o["lr_sr"] * o["gamma_sr"] ** (it // o["lr_decay_sr"]) if o["manual_lr"]
                    else sched_lr(o["optim_g"]["lr"], it))
            _set_lr(opt_d, sched_lr(o["optim_d"]["lr"], it))
            gt_usm = usm(gt) if usm is not None else gt
            l1_gt = gt_usm if o["l1_gt_usm"] else gt
            percep_gt = gt_usm if o["percep_gt_usm"] else gt
            gan_gt = gt_usm if o["gan_gt_usm"] else gt
            with torch.no_grad():
                target = teacher(lq, l1_gt)
            for p in net_d.parameters():
                p.requires_grad_(False)
            out, steps_ipr = net(lq, target, generator=g)
            if it % o["net_d_iters"] == 0 and it > o["net_d_init_iters"]:
                l_pix = o["pixel_opt"]["loss_weight"] * F.l1_loss(out, l1_gt)
                l_ipr = o["kd_opt"]["loss_weight"] * F.l1_loss(steps_ipr[-1], target)
                loss = l_pix + l_ipr
                rec.update(l_g_pix=l_pix, l_ipr=l_ipr)
                if cri_perc is not None:
                    loss = _add_perceptual(cri_perc, out, percep_gt, ("l_g_percep", "l_g_style"), loss, rec)
                l_gan = cri_gan(net_d(out), True, is_disc=False)
                loss = loss + l_gan
                rec["l_g_gan"] = l_gan
                opt_g.zero_grad(set_to_none=True)
                acc.backward(loss)
                opt_g.step()
            for p in net_d.parameters():
                p.requires_grad_(True)
            opt_d.zero_grad(set_to_none=True)
            real = net_d(gan_gt)
            l_real = cri_gan(real, True, is_disc=True)
            acc.backward(l_real)
            fake = net_d(out.detach().clone())
            l_fake = cri_gan(fake, False, is_disc=True)
            acc.backward(l_fake)
            opt_d.step()
            rec.update(l_d_real=l_real, l_d_fake=l_fake, out_d_real=real.detach().mean(),
                       out_d_fake=fake.detach().mean())
        ema.update(bare)
        entry = dict(rec)
        entry.update(lr=float(opt_g.param_groups[0]["lr"] if st != "2" or it >= encoder_iter or opt_e is None
                              else opt_e.param_groups[0]["lr"]), gt_size=int(gt.shape[-1]), batch=int(gt.shape[0]))
        if opt_d is not None:
            entry["lr_d"] = float(opt_d.param_groups[0]["lr"])
        return entry

    def validate(it: int):
        if not val_pairs or not loop.is_main:
            return None
        scores = _validate(ema.module, st, task, net_cfg, val_pairs, val.get("metrics", ["psnr", "ssim"]), acc.device)
        log(f"validation iter {it}: " + " ".join(f"{k} {v:.4f}" for k, v in scores.items()))
        return scores

    t0 = time.time()
    what = (f"gt_sizes up to {max(prog[0])} and mini_batch_sizes up to {max(prog[1])}" if progressive
            else f"gt_size {gt_size} and batch_size {batch}")
    with out_of_memory_as_error(what, f"use a smaller {size_key} or "
                                      f"{'mini_batch_sizes' if progressive else 'batch_size'} in the config"):
        loop.run(step, state, hooks=[(vf, validate)], local=local, on_save=save_net_d)
    info = {"stage": st, "steps": loop.last, "encoder_iter": encoder_iter, "seconds": time.time() - t0,
            "task": task, "history": loop.history, "validation": loop.val_history, "resumed_from": loop.start}
    if loop.is_main:
        _save(ema.state, output, net_cfg, st, {k: v for k, v in info.items() if k not in ("history", "validation")},
              cfg.get("name", f"diffir-{task}"))
        if net_d is not None:
            save_atomic({"params": {k: v.cpu() for k, v in bare_d.state_dict().items()}},
                        Path(output).with_name(Path(output).stem + "_net_d.pth"))
    return info
