"""Train a guided-diffusion UNet prior (epsilon prediction, linear schedule).

This is how the bundled demo prior was made (``restorekit train prior``).
It is the standard DDPM objective ``E ||eps - eps_theta(sqrt(abar_t) x0 +
sqrt(1-abar_t) eps, t)||^2`` with t uniform in [0, T), random crops with
flips/rotations, Adam and an EMA of the weights. The loop is
:class:`restorekit.training.StepLoop`, shared with the DiffIR and DiffBIR trainers: accelerate (one CPU, one GPU
or ``accelerate launch`` processes, each drawing its own ``batch_size`` from its own random streams, seed + rank),
mixed precision, training states every ``save_every`` steps and an exact ``resume`` from them, ``time_limit``.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from ...diffusion import LinearSchedule
from ...errors import ConfigError, check_number
from ...nets.guided_unet import GuidedUNet, GuidedUNetConfig
from ...training import check_training_output, load_images, out_of_memory_as_error, random_crops

#: small configuration of the bundled demo prior
DEMO_UNET = GuidedUNetConfig(image_size=64, model_channels=32, out_channels=3, num_res_blocks=1,
                             attention_resolutions="8", channel_mult=(1, 2, 2, 2), num_head_channels=32,
                             norm_groups=16)


def random_batch(imgs: list[torch.Tensor], batch: int, size: int, g: torch.Generator) -> torch.Tensor:
    """Random crops mapped to [-1, 1], the diffusion model's range."""
    return random_crops(imgs, batch, size, g) * 2 - 1


def device_crops(imgs: list[torch.Tensor], batch: int, size: int, g: torch.Generator,
                 rescale: tuple[float, float] = (0.5, 1.0)) -> torch.Tensor:
    """``batch`` random crops in [-1, 1] from images already on the training device.

    Each crop takes a random square of side ``size / s`` (``s`` uniform in ``rescale``, at most the image's short
    side) and resizes it to ``size`` (bilinear, antialiased), then a random flip and 90-degree rotation; whole
    images are never resized."""
    out = []
    r = torch.rand(batch, 5, generator=g).tolist()
    for i in range(batch):
        img = imgs[int(r[i][0] * len(imgs)) % len(imgs)]
        h, w = img.shape[-2:]
        s = rescale[0] + (rescale[1] - rescale[0]) * r[i][1]
        side = min(h, w, max(size, int(round(size / s))))
        top = int(r[i][2] * (h - side + 1))
        left = int(r[i][3] * (w - side + 1))
        crop = img[None, :, top:top + side, left:left + side]
        if side != size:
            crop = F.interpolate(crop, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        k = int(r[i][4] * 8)
        if k & 4:
            crop = crop.flip(-1)
        out.append(torch.rot90(crop, k & 3, dims=(-2, -1)))
    return torch.cat(out).clamp(0, 1) * 2 - 1


class DeviceEMA:
    """EMA of a module's floating-point state, kept on the module's device (``ema = d*ema + (1-d)*w`` with
    ``d = min(decay, (1 + n) / (10 + n))``)."""

    def __init__(self, module: torch.nn.Module, decay: float):
        self.decay, self.n = float(decay), 0
        self.state = {k: v.detach().clone().float() for k, v in module.state_dict().items()}

    @torch.no_grad()
    def update(self, module: torch.nn.Module) -> None:
        self.n += 1
        d = min(self.decay, (1 + self.n) / (10 + self.n))
        cur = module.state_dict()
        keys = [k for k, v in self.state.items() if v.is_floating_point()]
        torch._foreach_lerp_([self.state[k] for k in keys], [cur[k].detach().float() for k in keys], 1 - d)

    def state_dict(self) -> dict:
        return {"n": self.n, "state": self.state}

    def load_state_dict(self, sd: dict) -> None:
        if set(sd["state"]) != set(self.state):
            raise ConfigError(f"EMA state keys differ: {sorted(set(sd['state']) ^ set(self.state))[:5]}")
        self.n = int(sd["n"])
        for k, v in self.state.items():
            v.copy_(sd["state"][k])


#: training options a prior config (YAML ``train:`` section) may set, with their defaults
TRAIN_DEFAULTS = dict(steps=2000, batch_size=16, crop=64, lr=2e-4, ema_decay=0.999, seed=0, warmup=200,
                      mixed_precision="no", time_budget=None, save_dtype="fp32", log_every=100, save_every=0,
                      t_power=1.0)


_UNET_INTS = {"image_size": 1, "in_channels": 1, "model_channels": 1, "out_channels": 1, "num_res_blocks": 1,
              "num_heads": 1, "norm_groups": 1}
_UNET_BOOLS = ("use_scale_shift_norm", "resblock_updown", "use_new_attention_order", "conv_resample")


def check_unet_config(cfg: GuidedUNetConfig, where: str = "unet config") -> GuidedUNetConfig:
    """Refuse, with one :class:`ConfigError` line naming ``where`` and the key, a UNet config the network cannot
    be built from (checked before any data is read or any training starts): positive whole channel counts,
    ``channel_mult`` a list of positive numbers, every channel count divisible by ``norm_groups`` (GroupNorm) and,
    at the attention levels, by ``num_head_channels``; ``attention_resolutions`` comma-separated positive whole
    numbers. Then the network is built on the meta device (no memory, no compute) and any error it raises is a
    :class:`ConfigError` too."""

    def bad(key, msg):
        return ConfigError(f"{where}: unet: {key} {msg}")

    for key, lo in _UNET_INTS.items():
        v = getattr(cfg, key)
        if isinstance(v, bool) or not isinstance(v, int) or v < lo:
            raise bad(key, f"must be a whole number >= {lo}, got {v!r}")
    for key in ("num_head_channels", "num_heads_upsample"):
        v = getattr(cfg, key)
        if isinstance(v, bool) or not isinstance(v, int) or not (v == -1 or v >= 1):
            raise bad(key, f"must be -1 or a whole number >= 1, got {v!r}")
    d = cfg.dropout
    if isinstance(d, bool) or not isinstance(d, (int, float)) or not 0 <= d < 1:
        raise bad("dropout", f"must be a number in [0, 1), got {d!r}")
    for key in _UNET_BOOLS:
        if not isinstance(getattr(cfg, key), bool):
            raise bad(key, f"must be true or false, got {getattr(cfg, key)!r}")
    cm = cfg.channel_mult
    if cm:
        if not isinstance(cm, (list, tuple)) or any(isinstance(m, bool) or not isinstance(m, (int, float))
                                                    or not m > 0 or m != m or m == float("inf") for m in cm):
            shown = "".join(cm) if isinstance(cm, tuple) and all(isinstance(m, str) and len(m) == 1 for m in cm) \
                else cm
            raise bad("channel_mult", f"must be a list of positive numbers (e.g. [1, 2, 2]), got {shown!r}")
    try:
        mult = cfg.resolved_channel_mult()
    except ValueError as e:
        raise bad("channel_mult", f"is needed: {e}") from None
    ar = cfg.attention_resolutions
    parts = [] if ar in (None, "") else str(ar).split(",")
    if isinstance(ar, bool) or any(not p.strip().isdigit() or int(p) < 1 for p in parts):
        raise bad("attention_resolutions", f"must be comma-separated positive whole numbers (e.g. \"16,8\"), "
                                           f"got {ar!r}")
    attn_ds = {cfg.image_size // int(p) for p in parts}
    g, head_ch = cfg.norm_groups, cfg.num_head_channels
    heads = {cfg.num_heads, cfg.num_heads if cfg.num_heads_upsample == -1 else cfg.num_heads_upsample}
    for level, m in enumerate(mult):
        ch = int(m * cfg.model_channels)
        if ch < 1:
            raise bad("channel_mult", f"{m} times model_channels {cfg.model_channels} gives {ch} channels")
        if ch % g:
            raise bad("norm_groups", f"{g} does not divide the {ch} channels of level {level} (model_channels "
                                     f"{cfg.model_channels} x channel_mult {m}); GroupNorm needs channel counts "
                                     f"divisible by norm_groups")
        if 2 ** level in attn_ds or level == len(mult) - 1:  # the middle block always has attention
            if head_ch != -1 and ch % head_ch:
                raise bad("num_head_channels", f"{head_ch} does not divide the {ch} channels of the attention at "
                                               f"level {level}")
            for h in heads if head_ch == -1 else ():
                if ch % h:
                    raise bad("num_heads", f"{h} (num_heads / num_heads_upsample) does not divide the {ch} "
                                           f"channels of the attention at level {level}")
    from ...nets.guided_unet import GuidedUNet

    try:
        with torch.device("meta"):
            GuidedUNet(cfg)
    except (ValueError, TypeError, RuntimeError, ZeroDivisionError, AssertionError) as e:
        raise ConfigError(f"{where}: the UNet cannot be built from unet: ({type(e).__name__}: "
                          f"{str(e).splitlines()[0] if str(e) else 'no detail'})") from None
    return cfg


def load_prior_config(path: str | Path) -> tuple[GuidedUNetConfig, dict]:
    """A prior training config: YAML with ``unet:`` (GuidedUNetConfig fields) and ``train:`` (TRAIN_DEFAULTS
    keys), or a JSON file holding only a GuidedUNetConfig. Unknown keys are an error."""
    p = Path(path)
    from ...files import read_text_file

    text = read_text_file(p, "prior config")
    import yaml

    try:
        if p.suffix.lower() in (".yaml", ".yml"):
            data = yaml.safe_load(text) or {}
        else:
            data = {"unet": json.loads(text)}
        if not isinstance(data, dict) or set(data) - {"unet", "train", "name"}:
            got = sorted(data) if isinstance(data, dict) else type(data).__name__
            raise ValueError(f"top-level keys must be unet, train, name; got {got}")
        cfg = GuidedUNetConfig.from_dict(data.get("unet") or {})
        train = dict(data.get("train") or {})
        bad = set(train) - set(TRAIN_DEFAULTS)
        if bad:
            raise ValueError(f"unknown train keys {sorted(bad)}; allowed: {sorted(TRAIN_DEFAULTS)}")
    except (ValueError, TypeError, yaml.YAMLError) as e:
        raise ConfigError(f"bad prior config {p}: {e}") from None
    check_unet_config(cfg, f"bad prior config {p}")
    if "seed" in train:  # named with its file here; train_prior checks every other value (flags may override)
        from ...training import check_seed

        check_seed(train["seed"], f"bad prior config {p}: train: seed")
    return cfg, train


def train_prior(data: str | Path, output: str | Path, steps: int = 2000, batch_size: int = 16, crop: int = 64,
                lr: float = 2e-4, ema_decay: float = 0.999, seed: int = 0, config: GuidedUNetConfig | None = None,
                log_every: int = 100, time_limit: float | None = None, init: str | Path | None = None,
                log=print, mixed_precision: str = "no", time_budget: float | None = None, warmup: int = 200,
                save_dtype: str = "fp32", save_every: int = 0, resume=None,
                state_dir: str | Path | None = None, t_power: float = 1.0,
                config_file: str | Path | None = None) -> dict:
    """Train and save EMA weights as safetensors with the UNet config in its metadata.

    ``time_budget`` (seconds): after 50 steps the run measures its speed and shortens ``steps`` so that it ends
    within the budget (the cosine learning-rate schedule follows the shortened length). ``time_limit`` stops
    the loop outright. ``mixed_precision``: "no" | "bf16" | "fp16" (accelerate's autocast; CUDA only).
    ``save_dtype``: "fp32" | "fp16" for the saved EMA weights. ``save_every``: a training state every N steps in
    ``state_dir`` (default ``<output stem>_training_states``); ``resume``: an ``<iter>.state`` file, a folder of
    them or ``"auto"``. ``batch_size`` is per process. ``t_power``: timesteps drawn as ``floor(T * u**t_power)``
    with ``u`` uniform; 1 is DDPM's uniform draw, larger values train the low-noise end (which decides the PSNR of
    a restoration) more often. ``config_file``: the config file ``config`` came from (an input: never the output).
    A fresh run (no ``resume``) refuses a state folder that holds states of an earlier run."""
    from ...training import RandomStream, StepLoop, check_seed, overwrite_note, save_safetensors_atomic

    cfg = check_unet_config(config or DEMO_UNET, f"bad prior config {config_file}" if config_file else "unet config")
    # every setting is checked before anything is read or trained (flags and config values alike)
    steps, batch_size, crop = (check_number(v, name, lo=1, integer=True)
                               for name, v in (("steps", steps), ("batch_size", batch_size), ("crop", crop)))
    lr = check_number(lr, "lr", lo=0, lo_open=True)
    ema_decay = check_number(ema_decay, "ema_decay", lo=0, hi=1)
    seed = check_seed(seed, "seed")
    warmup = check_number(warmup, "warmup", lo=0, integer=True)
    save_every = check_number(save_every or 0, "save_every", lo=0, integer=True)
    log_every = check_number(log_every or 0, "log_every", lo=0, integer=True)
    if time_limit is not None:
        check_number(time_limit, "time_limit", lo=0)
    if time_budget is not None:
        check_number(time_budget, "time_budget", lo=0, lo_open=True)
    if crop % cfg.size_multiple:
        raise ConfigError(f"crop size must be a multiple of {cfg.size_multiple}")
    if not check_number(t_power, "t_power") > 0:
        raise ConfigError("t_power must be > 0")
    if save_dtype not in ("fp32", "fp16"):
        raise ConfigError("save_dtype must be fp32 or fp16")
    sdir = Path(state_dir) if state_dir else Path(output).with_name(Path(output).stem + "_training_states")
    out = check_training_output(output, data=[data], inputs={"--init weights": init, "--resume state": resume,
                                                             "training config": config_file},
                                state_dir=sdir if save_every else None, resume=resume)
    imgs = load_images(data, crop, crop_name="crop")
    loop = StepLoop(int(steps), sdir, seed=seed,
                    save_every=save_every, mixed_precision=mixed_precision if torch.cuda.is_available() else "no",
                    log=log, log_every=log_every, tag="prior", time_limit=time_limit)
    acc = loop.acc
    torch.manual_seed(seed)  # the same initial network on every process
    net = GuidedUNet(cfg)
    if init:
        from ...weights import load_state_dict, load_strict
        sd, _ = load_state_dict(init)
        load_strict(net, {k: v.float() for k, v in sd.items()}, str(init))
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    warm = max(1, min(int(warmup), int(steps) // 10))
    # cosine over loop.total, which a time budget may shorten
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda i: min(1.0, (i + 1) / warm) * (0.5 + 0.5 * math.cos(math.pi * min(i, loop.total) / loop.total)))
    net, opt = acc.prepare(net, opt)
    bare = acc.unwrap_model(net)
    ema = DeviceEMA(bare, ema_decay)
    on_device = acc.device.type != "cpu"
    if on_device:
        imgs = [im.to(acc.device) for im in imgs]
    sch = LinearSchedule()
    sac = sch.sqrt_alphas_cumprod.to(acc.device)
    s1m = sch.sqrt_1m_alphas_cumprod.to(acc.device)
    g = loop.g  # crops: seed + rank
    gd = torch.Generator(device=acc.device).manual_seed(seed + 1000 + loop.rank) if on_device else g
    state = {"net": bare, "opt": opt, "sched": sched, "ema": ema}
    meta = {"steps": int(steps), "batch_size": int(batch_size), "crop": int(crop), "lr": float(lr), "seed": int(seed),
            "processes": loop.world}
    if float(t_power) != 1.0:
        meta["t_power"] = float(t_power)
    local = {"noise": RandomStream(gd)} if on_device else None  # the device's own noise stream
    loop.resume(resume, state, meta, local)
    if loop.start == 0 and loop.is_main:
        overwrite_note([out], log)
    t0 = time.time()

    def step(it: int) -> dict:
        x0 = (device_crops(imgs, batch_size, crop, g) if on_device
              else random_batch(imgs, batch_size, crop, g).to(acc.device))
        T = sch.num_train_timesteps
        if float(t_power) == 1.0:
            t = torch.randint(0, T, (x0.shape[0],), generator=gd, device=gd.device)
        else:
            u = torch.rand(x0.shape[0], generator=gd, device=gd.device, dtype=torch.float64)
            t = (T * u ** float(t_power)).long().clamp_(0, T - 1)
        t = t.to(acc.device)
        noise = torch.randn(x0.shape, generator=gd, device=gd.device).to(acc.device)
        xt = sac[t].view(-1, 1, 1, 1) * x0 + s1m[t].view(-1, 1, 1, 1) * noise
        with acc.autocast():
            loss = F.mse_loss(net(xt, t)[:, :3].float(), noise)
        opt.zero_grad(set_to_none=True)
        acc.backward(loss)
        acc.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        sched.step()
        ema.update(bare)
        if it == 50 and time_budget is not None and loop.start < 50:
            rate = (it - loop.start) / max(time.time() - t0, 1e-6)
            loop.total = int(loop.agree(max(it + 1, min(loop.total, int(rate * float(time_budget)))), op=min))
            if loop.is_main:
                log(f"time budget {time_budget:.0f}s at {rate:.1f} steps/s: {loop.total} steps")
        return {"loss": loss}

    with out_of_memory_as_error(f"crop {crop} and batch size {batch_size}", "use a smaller --crop or --batch-size"):
        loop.run(step, state, local=local)
    tail = [r["loss"] for r in loop.history[-200:]]
    info = {"steps": loop.last, "final_loss": torch.tensor(tail).mean().item() if tail else float("nan"),
            "seconds": time.time() - t0, "images": len(imgs), "crop": crop, "batch_size": batch_size, "lr": lr,
            "seed": seed, "mixed_precision": acc.mixed_precision, "device": str(acc.device),
            "resumed_from": loop.start, "t_power": float(t_power)}
    if loop.is_main:
        out.parent.mkdir(parents=True, exist_ok=True)
        meta = {"restorekit_method": "diffpir", "unet_config": json.dumps(cfg.to_dict()),
                "training": json.dumps(info)}
        dt = torch.float16 if save_dtype == "fp16" else torch.float32
        sd = {k: (v.to(dt) if v.is_floating_point() else v).cpu().contiguous() for k, v in ema.state.items()}
        save_safetensors_atomic(sd, out, metadata=meta)  # mode 0o666 & ~umask, as any new file
    return info


def train_prior_from_config(config: str | Path, data: str | Path, output: str | Path, log=print,
                            **overrides) -> dict:
    """``train_prior`` with the UNet and training options of a config file; ``overrides`` (not None) win."""
    cfg, train = load_prior_config(config)
    opts = {**TRAIN_DEFAULTS, **train, **{k: v for k, v in overrides.items() if v is not None}}
    return train_prior(data, output, config=cfg, log=log, config_file=config, **opts)
