"""Train a guided-diffusion UNet prior (epsilon prediction, linear schedule).

This is how the bundled demo prior was made (``restorekit train prior``).
It is the standard DDPM objective ``E ||eps - eps_theta(sqrt(abar_t) x0 +
sqrt(1-abar_t) eps, t)||^2`` with t uniform in [0, T), random crops with
flips/rotations, Adam and an EMA of the weights; accelerate places it on one
CPU or GPU or spreads it over several.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ...diffusion import LinearSchedule
from ...errors import ConfigError
from ...training import EMA, load_images, random_crops
from ...nets.guided_unet import GuidedUNet, GuidedUNetConfig

#: small configuration of the bundled demo prior
DEMO_UNET = GuidedUNetConfig(image_size=64, model_channels=32, out_channels=3, num_res_blocks=1,
                             attention_resolutions="8", channel_mult=(1, 2, 2, 2), num_head_channels=32,
                             norm_groups=16)


def random_batch(imgs: list[torch.Tensor], batch: int, size: int, g: torch.Generator) -> torch.Tensor:
    """Random crops mapped to [-1, 1], the diffusion model's range."""
    return random_crops(imgs, batch, size, g) * 2 - 1


def train_prior(data: str | Path, output: str | Path, steps: int = 2000, batch_size: int = 16, crop: int = 64,
                lr: float = 2e-4, ema_decay: float = 0.999, seed: int = 0, config: GuidedUNetConfig | None = None,
                log_every: int = 100, time_limit: float | None = None, init: str | Path | None = None,
                log=print) -> dict:
    """Train and save EMA weights as safetensors with the UNet config in its metadata."""
    from accelerate import Accelerator
    from safetensors.torch import save_file

    cfg = config or DEMO_UNET
    if crop % cfg.size_multiple:
        raise ConfigError(f"crop size must be a multiple of {cfg.size_multiple}")
    torch.manual_seed(seed)
    imgs = load_images(data, crop)
    acc = Accelerator()
    net = GuidedUNet(cfg)
    if init:
        from ...weights import load_state_dict, load_strict
        sd, _ = load_state_dict(init)
        load_strict(net, {k: v.float() for k, v in sd.items()}, str(init))
    ema = EMA(net, ema_decay)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    warmup = max(1, min(200, steps // 10))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda i: min(1.0, (i + 1) / warmup) * (0.5 + 0.5 * math.cos(math.pi * min(i, steps) / steps)))
    net, opt = acc.prepare(net, opt)
    sch = LinearSchedule()
    sac = sch.sqrt_alphas_cumprod.to(acc.device)
    s1m = sch.sqrt_1m_alphas_cumprod.to(acc.device)
    g = torch.Generator().manual_seed(seed + acc.process_index)
    t0 = time.time()
    losses = []
    step = 0
    for step in range(1, steps + 1):
        x0 = random_batch(imgs, batch_size, crop, g).to(acc.device)
        t = torch.randint(0, sch.num_train_timesteps, (x0.shape[0],), generator=g).to(acc.device)
        noise = torch.randn(x0.shape, generator=g).to(acc.device)
        xt = sac[t].view(-1, 1, 1, 1) * x0 + s1m[t].view(-1, 1, 1, 1) * noise
        loss = F.mse_loss(net(xt, t)[:, :3], noise)
        opt.zero_grad(set_to_none=True)
        acc.backward(loss)
        acc.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        sched.step()
        ema.update(acc.unwrap_model(net))
        losses.append(loss.item())
        if step % log_every == 0 and acc.is_main_process:
            log(f"step {step}/{steps} loss {np.mean(losses[-log_every:]):.4f} ({time.time() - t0:.0f}s)")
        if time_limit is not None and time.time() - t0 > time_limit:
            log(f"time limit reached at step {step}")
            break
    info = {"steps": step, "final_loss": float(np.mean(losses[-min(len(losses), 200):])), "seconds": time.time() - t0,
            "images": len(imgs), "crop": crop, "batch_size": batch_size}
    if acc.is_main_process:
        out = Path(output)
        out.parent.mkdir(parents=True, exist_ok=True)
        meta = {"restorekit_method": "diffpir", "unet_config": json.dumps(cfg.to_dict()),
                "training": json.dumps(info)}
        tmp = out.with_name(out.name + ".part")
        save_file({k: v.contiguous() for k, v in ema.state.items()}, str(tmp), metadata=meta)
        tmp.replace(out)
    return info
