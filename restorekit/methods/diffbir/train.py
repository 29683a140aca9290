"""DiffBIR training, as the official ``train_stage1.py`` / ``train_stage2.py`` and ``configs/train/*.yaml``.

* Stage 1 (``--stage 1``): a restoration network (``model.swinir``: SwinIR with PixelUnshuffle 8 and
  "nearest+conv" upsampling as the official training config; also ``RRDBNet`` = BSRNet and ``SCUNet``) trained
  with ``F.mse_loss(pred, gt, reduction="sum")`` and AdamW (``learning_rate``, weight decay 0) on CodeFormer-degraded
  pairs. BSRNet upscales by ``sf``: its input is the LQ image bicubic-downscaled by ``sf`` (restorekit's choice;
  DiffBIR has no BSRNet recipe).
* Stage 2 (``--stage 2``): SD 2.1 (``train.sd_path``) loads strictly into the frozen UNet, VAE and OpenCLIP text
  tower; the IRControlNet starts from the UNet (:func:`controlnet_from_unet`, the official
  ``load_controlnet_from_unet``) or from ``train.resume`` (a ControlNet file), and is the only trained part (AdamW,
  ``learning_rate``, torch's default weight decay as upstream). Per batch: ``z_0 = VAE.encode(gt).sample() *
  scale``, the condition ``c_img = VAE.encode(2 * stage1(lq) - 1).mode() * scale`` (optionally noised to a
  timestep below ``noise_aug_timestep``), the prompt embedding (captions; empty with the dataset's probability),
  ``t ~ U{0..T-1}``, and the latent diffusion loss (MSE to eps, v or x0 as ``model.diffusion.params.
  parameterization``; ``zero_snr`` rescales the betas).

Shared machinery (:class:`restorekit.training.StepLoop`): accelerate (``accelerate launch`` for several processes;
``train.batch_size`` is the total batch, split over processes as upstream's ``split_batches=True``),
``train.mixed_precision``, gradient checkpointing (``use_checkpoint``), exact ``--resume`` from training states,
official checkpoints every ``ckpt_every`` steps, image grids every ``image_every`` steps and validation
(``val_every``). Upstream keeps no EMA in either stage, and neither does this trainer.

Outputs under ``train.exp_dir`` (``--output``): ``checkpoints/NNNNNNN.pt`` (official layout: stage 1 the
network's state dict, stage 2 the ControlNet's in DiffBIR's ldm names), ``states/`` (training states),
``images/``; at the end, stage 1 writes ``stage1.pt`` + ``stage1.json``, stage 2 ``controlnet.pth`` (official
layout), ``controlnet/`` (diffusers' layout: ``IRControlNet.from_pretrained``) and ``diffbir_custom.json``, which
:func:`load_custom` turns into a :class:`~restorekit.methods.diffbir.DiffBIR` restorer.
"""

from __future__ import annotations

import json
import time
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ...errors import ConfigError, WeightsError

# ----------------------------------------------------------------------------- configuration


def load_config(path) -> dict:
    """A training YAML (or a dict) as plain dicts."""
    from ..diffir.train import load_config as _load

    return json.loads(json.dumps(_load(path)))


def _target_name(entry: dict) -> str:
    return str(entry.get("target", "")).rsplit(".", 1)[-1]


STAGE1_KINDS = {"SwinIR": "swinir", "RRDBNet": "bsrnet", "SCUNet": "scunet"}


def build_stage1(entry: dict) -> tuple[torch.nn.Module, str]:
    """(network, pipeline kind) from an official ``model.swinir``-style entry (target + params)."""
    name = _target_name(entry)
    p = dict(entry.get("params") or {})
    if name == "SwinIR":
        from ...nets.swinir import SwinIR, SwinIRConfig

        checks = {"upsampler": "nearest+conv", "unshuffle": True, "patch_size": 1, "img_range": 1.0,
                  "resi_connection": "1conv"}
        for k, want in checks.items():
            if k in p and p[k] != want:
                raise ConfigError(f"stage-1 SwinIR: {k}={p[k]!r} is not supported (DiffBIR uses {want!r})")
        sf = int(p.get("sf", 8))
        if int(p.get("unshuffle_scale", sf)) != sf:
            raise ConfigError("stage-1 SwinIR: unshuffle_scale must equal sf (the output keeps the input size)")
        cfg = SwinIRConfig(img_size=int(p.get("img_size", 64)), in_chans=int(p.get("in_chans", 3)),
                           embed_dim=int(p.get("embed_dim", 180)), depths=tuple(p.get("depths", (6,) * 8)),
                           num_heads=tuple(p.get("num_heads", (6,) * 8)), window_size=int(p.get("window_size", 8)),
                           mlp_ratio=float(p.get("mlp_ratio", 2.0)), sf=sf)
        if hasattr(cfg, "drop_path_rate"):  # the official SwinIR's default stochastic depth, 0.1
            cfg.drop_path_rate = float(p.get("drop_path_rate", 0.1))
        return SwinIR(cfg), "swinir"
    if name == "RRDBNet":
        from ...nets.bsrnet import RRDBNet

        kw = {k: int(p[k]) for k in ("in_nc", "out_nc", "nf", "nb", "gc", "sf") if k in p}
        return RRDBNet(**kw), "bsrnet"
    if name == "SCUNet":
        from ...nets.scunet import SCUNet

        kw = {k: p[k] for k in ("in_nc", "dim", "input_resolution", "head_dim", "window_size") if k in p}
        if "config" in p:
            kw["config"] = tuple(p["config"])
        return SCUNet(**kw), "scunet"
    raise ConfigError(f"unknown stage-1 network {entry.get('target')!r} (SwinIR, RRDBNet, SCUNet)")


def stage1_forward(net, kind: str, lq: torch.Tensor) -> torch.Tensor:
    """The stage-1 output at the LQ image's size (BSRNet sees the LQ image downscaled by its factor)."""
    if kind == "bsrnet":
        sf = getattr(net, "sf", 4)
        small = F.interpolate(lq, scale_factor=1 / sf, mode="bicubic", antialias=True, align_corners=False)
        return net(small)
    return net(lq)


def diffusers_unet_config(c: dict) -> dict:
    """ldm ``unet_cfg`` (DiffBIR's ControlledUnetModel options) -> ``UNet2DConditionModel`` kwargs."""
    mult = list(c.get("channel_mult", (1, 2, 4, 4)))
    mc = int(c.get("model_channels", 320))
    chans = [mc * m for m in mult]
    attn = {int(a) for a in c.get("attention_resolutions", (4, 2, 1))}
    has_attn = [2 ** i in attn for i in range(len(mult))]
    if not c.get("use_spatial_transformer", True) or c.get("legacy", False):
        raise ConfigError("unet_cfg: only use_spatial_transformer: true, legacy: false (SD 2.x) is supported")
    nhc = int(c.get("num_head_channels", -1))
    heads = [ch // nhc for ch in chans] if nhc > 0 else [int(c["num_heads"])] * len(chans)
    return {"sample_size": int(c.get("image_size", 32)), "in_channels": int(c.get("in_channels", 4)),
                "out_channels": int(c.get("out_channels", 4)),
                "down_block_types": tuple("CrossAttnDownBlock2D" if a else "DownBlock2D" for a in has_attn),
                "up_block_types": tuple("CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(has_attn)),
                "block_out_channels": tuple(chans), "layers_per_block": int(c.get("num_res_blocks", 2)),
                "cross_attention_dim": int(c.get("context_dim", 1024)), "attention_head_dim": tuple(heads),
                "use_linear_projection": bool(c.get("use_linear_in_transformer", True)),
                "transformer_layers_per_block": int(c.get("transformer_depth", 1)),
                "norm_num_groups": int(c.get("norm_num_groups", 32))}


def diffusers_vae_config(c: dict, scale: float) -> dict:
    """ldm ``vae_cfg`` (``embed_dim`` + ``ddconfig``) -> ``AutoencoderKL`` kwargs."""
    dd = dict(c.get("ddconfig") or {})
    if dd.get("attn_resolutions"):
        raise ConfigError("vae_cfg: attention inside the VAE levels (attn_resolutions) is not supported")
    if int(c.get("embed_dim", 4)) != int(dd.get("z_channels", 4)):
        raise ConfigError("vae_cfg: embed_dim must equal z_channels (as SD)")
    n = len(dd.get("ch_mult", (1, 2, 4, 4)))
    return {"in_channels": int(dd.get("in_channels", 3)), "out_channels": int(dd.get("out_ch", 3)),
                "latent_channels": int(dd.get("z_channels", 4)), "sample_size": int(dd.get("resolution", 256)),
                "layers_per_block": int(dd.get("num_res_blocks", 2)),
                "block_out_channels": tuple(int(dd.get("ch", 128)) * m for m in dd.get("ch_mult", (1, 2, 4, 4))),
                "down_block_types": ("DownEncoderBlock2D",) * n, "up_block_types": ("UpDecoderBlock2D",) * n,
                "norm_num_groups": int(dd.get("norm_num_groups", 32)), "scaling_factor": float(scale)}


def clip_text_config(c: dict) -> dict:
    """ldm ``clip_cfg`` (FrozenOpenCLIPEmbedder, layer penultimate) -> ``CLIPTextConfig`` kwargs."""
    t = dict(c.get("text_cfg") or {})
    layer = c.get("layer", "penultimate")
    if layer not in ("penultimate", "last"):
        raise ConfigError(f"clip_cfg.layer must be penultimate or last, not {layer!r}")
    width = int(t.get("width", 1024))
    return {"vocab_size": int(t.get("vocab_size", 49408)), "hidden_size": width,
                "intermediate_size": int(width * float(t.get("mlp_ratio", 4.0))), "num_attention_heads": int(t.get("heads", 16)),
                "num_hidden_layers": int(t.get("layers", 24)) - (1 if layer == "penultimate" else 0),
                "max_position_embeddings": int(t.get("context_length", 77)), "hidden_act": "gelu",
                "projection_dim": int(c.get("embed_dim", 512))}


# ----------------------------------------------------------------------------- Stable Diffusion + ControlNet


def load_sd(sd_path, unet_kw: dict, vae_kw: dict, text_kw: dict, log=print):
    """(UNet, VAE, text encoder) from an SD ldm checkpoint, strictly (restorekit.weights.load_strict): every
    tensor is used except the schedule / EMA entries and the text-tower parts the penultimate layer never runs."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from ...weights import load_state_dict
    from .convert import sd_from_ldm
    from .restorer import _check_ldm_keys, _load_assign
    from .text import openclip_text_to_transformers

    if not sd_path or not Path(sd_path).is_file():
        raise ConfigError(f"stage 2 needs the Stable Diffusion checkpoint (train.sd_path / --sd-path); "
                          f"not found: {sd_path}")
    ckpt, _ = load_state_dict(sd_path)
    with torch.device("meta"):
        unet = UNet2DConditionModel(**unet_kw)
        vae = AutoencoderKL(**vae_kw)
        text = CLIPTextModel(CLIPTextConfig(**text_kw))
    u, v, _ = sd_from_ldm(ckpt, unet_config=unet_kw, vae_config=vae_kw)
    t, unused = openclip_text_to_transformers(ckpt, text, str(sd_path))
    _check_ldm_keys(ckpt, {"unet": len(u), "vae": len(v)}, unused, str(sd_path))
    del ckpt
    for mod in text.modules():  # the one non-persistent buffer, not in any checkpoint
        if "position_ids" in mod._buffers:
            mod.register_buffer("position_ids", torch.arange(text_kw["max_position_embeddings"])[None],
                                persistent=False)
    with warnings.catch_warnings():  # load_strict's checking load into the meta modules copies nothing
        warnings.filterwarnings("ignore", message=".*copying from a non-meta parameter.*")
        _load_assign(unet, u, str(sd_path), torch.float32)
        _load_assign(vae, v, str(sd_path), torch.float32)
        _load_assign(text, t, str(sd_path), torch.float32)
    log(f"strictly loaded SD from {sd_path}; unused text-tower weights (never run by the penultimate layer): "
        f"{len(unused)}")
    for m in (unet, vae, text):
        m.eval().requires_grad_(False)
    return unet, vae, text


def _ldm_names(sd_keys, config: dict) -> dict:
    """diffusers IRControlNet key -> DiffBIR ldm key."""
    from .convert import controlnet_to_ldm

    return {v: k for k, v in controlnet_to_ldm({k: k for k in sd_keys}, config).items()}


@torch.no_grad()
def controlnet_from_unet(unet, hint_channels: int = 4):
    """The official ``ControlLDM.load_controlnet_from_unet`` on diffusers modules: every ControlNet tensor the
    UNet has with the same shape is copied; the input convolution (4 + ``hint_channels`` input channels) gets the
    UNet's weights plus zero columns; the rest (zero convolutions) keeps its fresh initialisation.

    Returns ``(controlnet, report)``; ``report`` has ``copied``, ``new_zero`` and ``scratch`` key lists in
    DiffBIR's ldm names (as upstream prints them)."""
    from .ircontrolnet import IRControlNet

    net = IRControlNet.from_unet_config(unet, cond_channels=hint_channels)
    own, src = net.state_dict(), unet.state_dict()
    init, copied, new_zero, scratch = {}, [], [], []
    for k, v in own.items():
        if k in src and src[k].shape == v.shape:
            init[k] = src[k].clone()
            copied.append(k)
        elif k in src:
            t = src[k]
            zeros = torch.zeros((v.shape[0], v.shape[1] - t.shape[1], *v.shape[2:]), dtype=t.dtype)
            init[k] = torch.cat((t, zeros), dim=1)
            new_zero.append(k)
        else:
            init[k] = v.clone()
            scratch.append(k)
    net.load_state_dict(init, strict=True)
    names = _ldm_names(own.keys(), {"block_out_channels": unet.config.block_out_channels,
                                    "layers_per_block": unet.config.layers_per_block})
    report = {"copied": sorted(names[k] for k in copied), "new_zero": sorted(names[k] for k in new_zero),
              "scratch": sorted(names[k] for k in scratch)}
    return net, report


def controlnet_official_state(net) -> dict:
    """The IRControlNet's state dict in DiffBIR's ldm names (the official ``controlnet.state_dict()`` layout)."""
    from .convert import controlnet_to_ldm

    sd = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
    out = controlnet_to_ldm(sd, {"block_out_channels": net.config.block_out_channels,
                                 "layers_per_block": net.config.layers_per_block})
    if len(out) != len(sd):
        raise RuntimeError(f"ControlNet export mapped {len(out)} of {len(sd)} tensors")
    return out


def load_controlnet_file(path, unet, hint_channels: int = 4):
    """An IRControlNet from an official ControlNet file (strict)."""
    from ...weights import load_state_dict, load_strict
    from .convert import controlnet_from_ldm
    from .ircontrolnet import IRControlNet

    sd, _ = load_state_dict(path)
    conv = controlnet_from_ldm(sd, {"layers_per_block": unet.config.layers_per_block})
    if len(conv) != len(sd):
        raise WeightsError(f"{path}: {len(sd) - len(conv)} tensors were not used by the ControlNet conversion")
    net = IRControlNet.from_unet_config(unet, cond_channels=hint_channels)
    load_strict(net, conv, str(path))
    return net


def load_controlnet_diffusers(folder):
    """An IRControlNet from diffusers' layout (``config.json`` + ``diffusion_pytorch_model.safetensors``, as
    ``save_pretrained`` writes it), strictly. (``IRControlNet.from_pretrained`` cannot rebuild the network: its
    ``__init__`` takes ``*args, **kwargs``, so diffusers drops every configuration entry.)"""
    import inspect

    from diffusers import ControlNetModel
    from safetensors.torch import load_file

    from .ircontrolnet import IRControlNet
    from .restorer import _load_assign

    folder = Path(folder)
    cfg_file, weights = folder / "config.json", folder / "diffusion_pytorch_model.safetensors"
    for f in (cfg_file, weights):
        if not f.is_file():
            raise WeightsError(f"{folder} is not a diffusers ControlNet folder: {f.name} is missing")
    cfg = json.loads(cfg_file.read_text())
    names = set(inspect.signature(ControlNetModel.__init__).parameters) - {"self"}
    with torch.device("meta"):
        net = IRControlNet(**{k: v for k, v in cfg.items() if k in names})
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*copying from a non-meta parameter.*")
        return _load_assign(net, load_file(str(weights)), str(weights), torch.float32)


class ControlLDM(torch.nn.Module):
    """The trained graph: ControlNet residuals into the frozen UNet (``ControlLDM.forward``)."""

    def __init__(self, unet, controlnet):
        super().__init__()
        self.unet, self.controlnet = unet, controlnet

    def forward(self, x, t, c_txt, c_img):
        down, mid = self.controlnet(x, t, c_txt, c_img, return_dict=False)
        return self.unet(x, t, encoder_hidden_states=c_txt, down_block_additional_residuals=down,
                         mid_block_additional_residual=mid).sample


class Diffusion:
    """``diffbir.model.gaussian_diffusion.Diffusion`` (linear schedule): betas, q_sample, v target, loss."""

    def __init__(self, params: dict):
        from ...samplers import diffbir_betas

        if params.get("beta_schedule", "linear") != "linear" or params.get("loss_type", "l2") != "l2":
            raise ConfigError("model.diffusion: only beta_schedule linear and loss_type l2 are implemented")
        self.parameterization = params.get("parameterization", "eps")
        if self.parameterization not in ("eps", "v"):  # upstream's x0 has no sampler (and no config uses it)
            raise ConfigError(f"parameterization must be eps or v, not {self.parameterization!r}")
        self.num_timesteps = int(params.get("timesteps", 1000))
        self.zero_snr = bool(params.get("zero_snr", False))
        self.betas = diffbir_betas(self.zero_snr, self.num_timesteps, float(params.get("linear_start", 1e-4)),
                                   float(params.get("linear_end", 2e-2)))
        ac = np.cumprod(1.0 - self.betas)
        self.sqrt_ac = torch.tensor(np.sqrt(ac), dtype=torch.float32)
        self.sqrt_1m_ac = torch.tensor(np.sqrt(1.0 - ac), dtype=torch.float32)

    def _c(self, a, t, x):
        return a.to(x.device)[t].reshape(-1, *([1] * (x.ndim - 1)))

    def q_sample(self, x0, t, noise):
        return self._c(self.sqrt_ac, t, x0) * x0 + self._c(self.sqrt_1m_ac, t, x0) * noise

    def target(self, x0, t, noise):
        if self.parameterization == "eps":
            return noise
        return self._c(self.sqrt_ac, t, x0) * noise - self._c(self.sqrt_1m_ac, t, x0) * x0

    def loss(self, model, x0, t, noise, c_txt, c_img):
        out = model(self.q_sample(x0, t, noise), t, c_txt, c_img)
        return F.mse_loss(out.float(), self.target(x0, t, noise).float())


def _randn(shape, g: torch.Generator, device) -> torch.Tensor:
    return torch.randn(shape, generator=g).to(device)


# ----------------------------------------------------------------------------- data stream


class BatchStream:
    """Epochs of shuffled indices (``torch.randperm`` from the loop's generator) with ``drop_last``, as
    upstream's ``DataLoader(shuffle=True, drop_last=True)``; its position is part of the training state."""

    def __init__(self, n: int, batch: int, g: torch.Generator):
        if n < batch:
            raise ConfigError(f"the training set has {n} images, fewer than the batch of {batch} (drop_last)")
        self.n, self.batch, self.g = n, batch, g
        self.perm: list[int] = []
        self.pos, self.epoch = 0, 0

    def next(self) -> list[int]:
        if self.pos + self.batch > len(self.perm):
            self.perm = torch.randperm(self.n, generator=self.g).tolist()
            self.pos = 0
            self.epoch += 1
        out = self.perm[self.pos:self.pos + self.batch]
        self.pos += self.batch
        return out

    def state_dict(self) -> dict:
        return {"perm": torch.tensor(self.perm, dtype=torch.long), "pos": self.pos, "epoch": self.epoch}

    def load_state_dict(self, sd: dict) -> None:
        self.perm, self.pos, self.epoch = sd["perm"].tolist(), int(sd["pos"]), int(sd["epoch"])


def _draw(dataset, transform, stream: BatchStream, rng, g, device):
    hqs, lqs, txt = [], [], []
    for i in stream.next():
        hq, lq, prompt = dataset.sample(i, rng)
        hqs.append(hq)
        lqs.append(lq)
        txt.append(prompt)
    hq = torch.stack(hqs).to(device)
    if transform is not None:
        hq, lq, txt = transform(hq, txt, rng, g)
    else:
        lq = torch.stack(lqs)
    return hq.to(device), lq.to(device), list(txt)


def _save_grid(path: Path, rows: list[torch.Tensor]) -> None:
    from PIL import Image

    n = min(r.shape[0] for r in rows)
    h, w = rows[0].shape[-2:]
    tiles = [torch.nn.functional.interpolate(r[:n].float().cpu(), size=(h, w), mode="nearest") for r in rows]
    grid = torch.cat([torch.cat(list(t), dim=-1) for t in tiles], dim=-2).clamp(0, 1)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((grid.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)).save(path)


def _first_and_every(every: int, fn):
    """``fn`` at iteration 1 and every ``every`` iterations (upstream's ``global_step % image_every == 0 or
    global_step == 1``)."""
    return lambda it: fn(it) if it == 1 or it % every == 0 else None


def _psnr(pred: torch.Tensor, gt: torch.Tensor) -> float:
    """Mean PSNR (dB) over the batch on [0, 1] RGB, as upstream's ``calculate_psnr_pt(crop_border=0)``."""
    mse = ((pred.clamp(0, 1).float() - gt.float()) ** 2).mean(dim=(1, 2, 3))
    return float((10 * torch.log10(1.0 / mse.clamp_min(1e-12))).mean())


def _val_pairs(cfg: dict, val_data, seed: int = 231, limit: int = 16):
    """Fixed validation pairs: the validation images degraded once with a fixed seed."""
    from .data import build_dataset

    ds_cfg = (cfg.get("dataset") or {}).get("val") or (cfg.get("dataset") or {}).get("train") or {}
    if val_data is None and not (ds_cfg.get("params") or {}).get("file_list"):
        return []
    ds, transform = build_dataset(ds_cfg, cfg.get("batch_transform"), data=val_data)
    if transform is not None and transform.pool is not None:
        transform.pool = None  # validation pairs are not pooled
    rng, g = np.random.default_rng(seed), torch.Generator().manual_seed(seed)
    out = []
    for i in range(min(len(ds), limit)):
        hq, lq, prompt = ds.sample(i, rng)
        hq = hq[None]
        if transform is not None:
            hq, lq, txt = transform(hq, [prompt], rng, g)
            prompt = txt[0]
        else:
            lq = lq[None]
        out.append((hq, lq, prompt))
    return out


# ----------------------------------------------------------------------------- stage 1


def _train_opts(cfg: dict, steps, output):
    from ...training import check_seed

    tr = dict(cfg.get("train") or {})
    tr["seed"] = check_seed(tr.get("seed", 231), "train.seed")  # before torch.manual_seed sees it
    total = int(steps if steps is not None else tr.get("train_steps", 1000))
    exp = Path(output or tr.get("exp_dir") or "diffbir_train")
    return tr, total, exp


def _step_loop(tr: dict, total: int, exp: Path, state_dir, save_every: int, log, tag: str):
    """The shared training loop with the ``train:`` options both stages read (seed, precision, logs, and the
    restorekit option ``time_limit`` in seconds)."""
    from ...training import StepLoop

    limit = tr.get("time_limit")
    return StepLoop(total, state_dir or exp / "states", seed=int(tr.get("seed", 231)), save_every=save_every,
                    mixed_precision=tr.get("mixed_precision", "no"), log=log,
                    log_every=int(tr.get("log_every", 0) or 0), tag=tag,
                    time_limit=None if limit is None else float(limit))


def train_stage1(cfg: dict, data=None, output=None, steps=None, resume=None, state_dir=None, val_freq=None,
                 save_every=None, val_data=None, log=print) -> dict:
    from ...weights import load_state_dict, load_strict
    from .data import build_dataset

    tr, total, exp = _train_opts(cfg, steps, output)
    torch.manual_seed(int(tr.get("seed", 231)))  # upstream's set_seed(231) before the network is built
    model_cfg = dict((cfg.get("model") or {}).get("swinir") or (cfg.get("model") or {}).get("stage1") or {})
    if not model_cfg:
        raise ConfigError("stage 1 needs model.swinir (target + params)")
    net, kind = build_stage1(model_cfg)
    if tr.get("resume"):
        sd, _ = load_state_dict(tr["resume"])
        load_strict(net, sd, str(tr["resume"]))
        log(f"strictly loaded the stage-1 weights from {tr['resume']}")
    ds, transform = build_dataset((cfg.get("dataset") or {}).get("train") or {}, cfg.get("batch_transform"), data)
    ckpt_every = int(tr.get("ckpt_every", 0) or 0)
    loop = _step_loop(tr, total, exp, state_dir, ckpt_every if save_every is None else save_every, log,
                      "diffbir stage 1")
    batch = loop.per_process(int(tr.get("batch_size", 16)))
    opt = torch.optim.AdamW(net.parameters(), lr=float(tr.get("learning_rate", 1e-4)), weight_decay=0)
    net.train().to(loop.device)
    net, opt = loop.acc.prepare(net, opt)
    bare = loop.acc.unwrap_model(net)
    stream = BatchStream(len(ds), batch, loop.g)
    state, local = {"net": bare, "opt": opt}, {"data": stream}
    if transform is not None:
        local["transform"] = transform
    meta = {"stage": "1", "total": total, "kind": kind, "processes": loop.world}
    loop.resume(resume, state, meta, local)
    ckpt_dir = exp / "checkpoints"
    val_every = int(val_freq if val_freq is not None else tr.get("val_every", 0) or 0)
    vpairs = _val_pairs(cfg, val_data) if val_every else []
    last = {}

    def step(it):
        hq, lq, _ = _draw(ds, transform, stream, loop.rng, loop.g, loop.device)
        pred = stage1_forward(net, kind, lq)
        loss = F.mse_loss(pred.float(), hq.float(), reduction="sum")
        opt.zero_grad(set_to_none=True)
        loop.acc.backward(loss)
        opt.step()
        last.update(hq=hq, lq=lq)
        return {"loss": loop.acc.gather(loss.detach()[None]).mean()}  # the mean over processes, as upstream logs

    def checkpoint(it):
        if loop.is_main:
            from ...training import save_atomic

            save_atomic({k: v.detach().cpu() for k, v in bare.state_dict().items()}, ckpt_dir / f"{it:07d}.pt")

    def images(it):
        if loop.is_main:
            bare.eval()
            with torch.no_grad():
                pred = stage1_forward(bare, kind, last["lq"][:12])
            bare.train()
            _save_grid(exp / "images" / f"stage1_{it:07d}.png", [pred, last["hq"][:12], last["lq"][:12]])

    def validate(it):
        if not loop.is_main or not vpairs:
            return None
        bare.eval()
        losses, psnrs = [], []
        with torch.no_grad():
            for hq, lq, _ in vpairs:
                pred = stage1_forward(bare, kind, lq.to(loop.device))
                losses.append(float(F.mse_loss(pred, hq.to(loop.device), reduction="sum")))
                psnrs.append(_psnr(pred, hq.to(loop.device)))
        bare.train()
        out = {"val_loss": float(np.mean(losses)), "val_psnr": float(np.mean(psnrs))}
        log(f"diffbir stage 1 validation iter {it}: " + " ".join(f"{k} {v:.4f}" for k, v in out.items()))
        return out

    image_every = int(tr.get("image_every", 0) or 0)
    t0 = time.time()
    loop.run(step, state, hooks=[(ckpt_every, checkpoint), (1 if image_every else 0, _first_and_every(image_every, images)),
                                 (val_every, validate)], local=local)
    out = exp / "stage1.pt"
    if loop.is_main:
        from ...training import save_atomic

        save_atomic({k: v.detach().cpu() for k, v in bare.state_dict().items()}, out)
        (exp / "stage1.json").write_text(json.dumps({"target": model_cfg.get("target"), "kind": kind,
                                                     "params": model_cfg.get("params") or {}}, indent=1))
    return {"stage": "1", "steps": loop.last, "kind": kind, "output": str(out), "seconds": time.time() - t0,
            "resumed_from": loop.start, "history": loop.history, "validation": loop.val_history}


# ----------------------------------------------------------------------------- stage 2


def _tokenizer(tr: dict):
    from ...registry import get_card
    from ...weights import resolve_card
    from .restorer import TOKENIZER_CARDS
    from .text import CLIPBPETokenizer

    if tr.get("tokenizer"):
        d = Path(tr["tokenizer"])
        return CLIPBPETokenizer(d / "vocab.json", d / "merges.txt"), d
    vocab = resolve_card(get_card(TOKENIZER_CARDS[0]))
    merges = resolve_card(get_card(TOKENIZER_CARDS[1]))
    if vocab.parent != merges.parent:
        raise WeightsError("vocab.json and merges.txt must be in the same folder")
    return CLIPBPETokenizer(vocab, merges), vocab.parent


def _load_stage1_file(entry: dict, path):
    from ...weights import load_state_dict, load_strict

    net, kind = build_stage1(entry)
    if not path or not Path(path).is_file():
        raise ConfigError(f"stage 2 needs the stage-1 weights (train.swinir_path / --s1-weights); not found: {path}")
    sd, _ = load_state_dict(path)
    if sd and all(k.startswith("module.") for k in sd):
        sd = {k[len("module."):]: v for k, v in sd.items()}
    load_strict(net, sd, str(path))
    return net.eval().requires_grad_(False), kind


def build_stage2(cfg: dict, sd_path=None, log=print):
    """(unet, vae, text, controlnet, init report) as ``train_stage2.py`` builds them."""
    cl = dict(((cfg.get("model") or {}).get("cldm") or {}).get("params") or {})
    scale = float(cl.get("latent_scale_factor", 0.18215))
    unet_kw = diffusers_unet_config(cl.get("unet_cfg") or {})
    cn_cfg = dict(cl.get("controlnet_cfg") or {})
    if cn_cfg and diffusers_unet_config({**cn_cfg, "out_channels": cl.get("unet_cfg", {}).get("out_channels", 4)}) \
            != unet_kw:
        raise ConfigError("controlnet_cfg must describe the same encoder as unet_cfg (plus hint_channels)")
    unet, vae, text = load_sd(sd_path, unet_kw, diffusers_vae_config(cl.get("vae_cfg") or {}, scale),
                              clip_text_config(cl.get("clip_cfg") or {}), log=log)
    hint = int(cn_cfg.get("hint_channels", 4))
    tr = dict(cfg.get("train") or {})
    if tr.get("resume"):
        cn = load_controlnet_file(tr["resume"], unet, hint)
        report = {"loaded": str(tr["resume"])}
        log(f"strictly loaded the ControlNet from {tr['resume']}")
    else:
        cn, report = controlnet_from_unet(unet, hint)
        log(f"ControlNet from the UNet: {len(report['copied'])} tensors copied; new zero input channels: "
            f"{report['new_zero']}; from scratch: {report['scratch']}")
    if cn_cfg.get("use_checkpoint", False):
        cn.enable_gradient_checkpointing()
    if (cl.get("unet_cfg") or {}).get("use_checkpoint", False):
        unet.enable_gradient_checkpointing()
    return unet, vae, text, cn, report, scale


def train_stage2(cfg: dict, data=None, output=None, steps=None, resume=None, state_dir=None, val_freq=None,
                 save_every=None, val_data=None, sd_path=None, s1_weights=None, log=print) -> dict:
    from ...training import save_atomic
    from .data import build_dataset

    tr, total, exp = _train_opts(cfg, steps, output)
    torch.manual_seed(int(tr.get("seed", 231)))
    sd_path = sd_path or tr.get("sd_path")
    s1_path = s1_weights or tr.get("swinir_path")
    model = dict(cfg.get("model") or {})
    s1_entry = dict(model.get("swinir") or model.get("stage1") or {})
    stage1, kind = _load_stage1_file(s1_entry, s1_path)
    unet, vae, text, cn, report, scale = build_stage2(cfg, sd_path, log=log)
    tok, tok_dir = _tokenizer(tr)
    diffusion = Diffusion(dict((model.get("diffusion") or {}).get("params") or {}))
    ds, transform = build_dataset((cfg.get("dataset") or {}).get("train") or {}, cfg.get("batch_transform"), data)
    ckpt_every = int(tr.get("ckpt_every", 0) or 0)
    loop = _step_loop(tr, total, exp, state_dir, ckpt_every if save_every is None else save_every, log,
                      "diffbir stage 2")
    batch = loop.per_process(int(tr.get("batch_size", 16)))
    dev = loop.device
    cldm = ControlLDM(unet, cn)
    cldm.unet.eval()
    cldm.controlnet.train()
    opt = torch.optim.AdamW(cn.parameters(), lr=float(tr.get("learning_rate", 1e-4)))
    cldm.to(dev)
    vae.to(dev)
    text.to(dev)
    stage1.to(dev)
    cldm, opt = loop.acc.prepare(cldm, opt)
    bare = loop.acc.unwrap_model(cldm)
    stream = BatchStream(len(ds), batch, loop.g)
    state, local = {"controlnet": bare.controlnet, "opt": opt}, {"data": stream}
    if transform is not None:
        local["transform"] = transform
    loop.resume(resume, state, {"stage": "2", "total": total, "processes": loop.world}, local)
    nat = int(tr.get("noise_aug_timestep", 0) or 0)

    def encode_prompt(prompts):
        return text(input_ids=tok(list(prompts)).to(dev)).last_hidden_state

    def vae_encode(img, sample: bool):
        dist = vae.encode(img).latent_dist
        if sample:
            return (dist.mean + dist.std * _randn(dist.mean.shape, loop.g, dev)) * scale
        return dist.mode() * scale

    def condition(lq, prompts):
        clean = stage1_forward(stage1, kind, lq)
        return clean, encode_prompt(prompts), vae_encode(clean * 2 - 1, sample=False)

    last = {}

    def step(it):
        hq, lq, prompts = _draw(ds, transform, stream, loop.rng, loop.g, dev)
        with torch.no_grad():
            z0 = vae_encode(hq * 2 - 1, sample=True)
            clean, c_txt, c_img = condition(lq, prompts)
            c_aug = c_img
            if nat > 0:
                ta = torch.randint(0, nat, (z0.shape[0],), generator=loop.g).to(dev)
                c_aug = diffusion.q_sample(c_img, ta, _randn(c_img.shape, loop.g, dev))
        t = torch.randint(0, diffusion.num_timesteps, (z0.shape[0],), generator=loop.g).to(dev)
        noise = _randn(z0.shape, loop.g, dev)
        loss = diffusion.loss(cldm, z0, t, noise, c_txt, c_aug)
        opt.zero_grad(set_to_none=True)
        loop.acc.backward(loss)
        opt.step()
        last.update(hq=hq, lq=lq, clean=clean, c_txt=c_txt, c_img=c_img, prompts=prompts)
        return {"loss": loop.acc.gather(loss.detach()[None]).mean()}

    sample_steps = int(tr.get("image_steps", 50))

    def sample(c_txt, c_img, gen):
        from ...samplers import sample as run_sampler

        bare.eval()
        z = run_sampler("spaced", lambda x, t, c: bare(x, t, c["c_txt"], c["c_img"]), None, tuple(c_img.shape),
                        steps=sample_steps, betas=diffusion.betas, parameterization=diffusion.parameterization,
                        cond={"c_txt": c_txt, "c_img": c_img},
                        uncond=None, cfg_scale=1.0, generator=gen)
        bare.controlnet.train()
        with torch.no_grad():
            return (vae.decode(z.to(dev) / scale).sample + 1) / 2

    def images(it):
        if not loop.is_main:
            return
        n = 8
        with torch.no_grad():
            x = sample(last["c_txt"][:n], last["c_img"][:n], torch.Generator().manual_seed(it))
            cond_dec = (vae.decode(last["c_img"][:n] / scale).sample + 1) / 2
        _save_grid(exp / "images" / f"stage2_{it:07d}.png",
                   [x, last["hq"][:n], last["lq"][:n], last["clean"][:n], cond_dec])
        return

    val_every = int(val_freq if val_freq is not None else tr.get("val_every", 0) or 0)
    vpairs = _val_pairs(cfg, val_data) if val_every else []

    def validate(it):
        if not loop.is_main or not vpairs:
            return None
        ps = []
        with torch.no_grad():
            for i, (hq, lq, prompt) in enumerate(vpairs):
                _, c_txt, c_img = condition(lq.to(dev), [prompt])
                x = sample(c_txt, c_img, torch.Generator().manual_seed(i))
                ps.append(_psnr(x, hq.to(dev)))
        out = {"val_psnr": float(np.mean(ps))}
        log(f"diffbir stage 2 validation iter {it}: val_psnr {out['val_psnr']:.4f}")
        return out

    def checkpoint(it):
        if loop.is_main:
            save_atomic(controlnet_official_state(bare.controlnet), exp / "checkpoints" / f"{it:07d}.pt")

    image_every = int(tr.get("image_every", 0) or 0)
    t0 = time.time()
    hooks = [(ckpt_every, checkpoint), (1 if image_every else 0, _first_and_every(image_every, images)),
             (val_every, validate)]
    loop.run(step, state, hooks, local=local)
    if loop.is_main:
        write_custom(exp, bare.controlnet, cfg, sd_path=sd_path, tokenizer_dir=tok_dir, s1_entry=s1_entry,
                     s1_path=s1_path, diffusion=diffusion)
    return {"stage": "2", "steps": loop.last, "output": str(exp), "seconds": time.time() - t0,
            "resumed_from": loop.start, "init": report, "history": loop.history, "validation": loop.val_history}


# ----------------------------------------------------------------------------- the trained model


def write_custom(folder, controlnet, cfg: dict, *, sd_path, tokenizer_dir, s1_entry, s1_path, diffusion) -> None:
    """``controlnet.pth`` (official layout), ``controlnet/`` (diffusers' layout) and ``diffbir_custom.json``."""
    from ...training import save_atomic

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_atomic(controlnet_official_state(controlnet), folder / "controlnet.pth")
    controlnet.save_pretrained(folder / "controlnet", safe_serialization=True)
    cl = dict(((cfg.get("model") or {}).get("cldm") or {}).get("params") or {})
    manifest = {
        "format": "restorekit-diffbir-custom/1",
        "base_version": "v2.1" if diffusion.parameterization == "v" else "v2",
        "parameterization": diffusion.parameterization, "zero_snr": diffusion.zero_snr,
        "diffusion": dict((cfg.get("model") or {}).get("diffusion", {}).get("params") or {}),
        "latent_scale_factor": float(cl.get("latent_scale_factor", 0.18215)),
        "unet_cfg": cl.get("unet_cfg") or {}, "vae_cfg": cl.get("vae_cfg") or {}, "clip_cfg": cl.get("clip_cfg") or {},
        "controlnet_cfg": cl.get("controlnet_cfg") or {},
        "sd_path": str(Path(sd_path).resolve()), "tokenizer": str(Path(tokenizer_dir).resolve()),
        "stage1": {"target": s1_entry.get("target"), "params": s1_entry.get("params") or {},
                   "path": str(Path(s1_path).resolve())},
        "controlnet": "controlnet.pth", "controlnet_diffusers": "controlnet",
    }
    (folder / "diffbir_custom.json").write_text(json.dumps(manifest, indent=1))


def load_custom(folder, device=None, torch_dtype=None, layout: str = "official"):
    """A :class:`DiffBIR` restorer from a stage-2 output folder (``diffbir_custom.json``): SD from ``sd_path``
    (strict), the tokenizer, the stage-1 network (strict) and the ControlNet (``layout="official"``:
    ``controlnet.pth``; ``"diffusers"``: ``controlnet/``). Sampling defaults are those of ``base_version``."""
    from .restorer import DiffBIR
    from .text import CLIPBPETokenizer

    folder = Path(folder)
    mf = folder / "diffbir_custom.json"
    if not mf.is_file():
        raise WeightsError(f"{folder} holds no diffbir_custom.json (the output of restorekit train --method diffbir "
                           f"--stage 2)")
    m = json.loads(mf.read_text())
    if (m["parameterization"], bool(m["zero_snr"])) not in (("eps", False), ("v", True)):
        raise ConfigError(f"{mf}: DiffBIR samples eps models on SD's betas (v1/v2) or v models on zero-terminal-SNR "
                          f"betas (v2.1), not {m['parameterization']} with zero_snr={m['zero_snr']}")
    d = m.get("diffusion") or {}
    if (float(d.get("linear_start", 0.00085)), float(d.get("linear_end", 0.012)), int(d.get("timesteps", 1000))) \
            != (0.00085, 0.012, 1000):
        raise ConfigError(f"{mf}: the restorer samples on SD's schedule (linear_start 0.00085, linear_end 0.012, "
                          f"1000 timesteps); this model was trained on another")
    if len((m["vae_cfg"].get("ddconfig") or {}).get("ch_mult", (1, 2, 4, 4))) != 4:
        raise ConfigError(f"{mf}: the DiffBIR pipeline needs a VAE that downsamples by 8 (4 levels in ch_mult)")
    scale = float(m["latent_scale_factor"])
    unet, vae, text = load_sd(m["sd_path"], diffusers_unet_config(m["unet_cfg"]),
                              diffusers_vae_config(m["vae_cfg"], scale), clip_text_config(m["clip_cfg"]),
                              log=lambda s: None)
    hint = int((m.get("controlnet_cfg") or {}).get("hint_channels", 4))
    if layout == "official":
        cn = load_controlnet_file(folder / m["controlnet"], unet, hint)
    elif layout == "diffusers":
        cn = load_controlnet_diffusers(folder / m["controlnet_diffusers"])
    else:
        raise ConfigError(f"layout must be official or diffusers, not {layout!r}")
    tok_dir = Path(m["tokenizer"])
    tok = CLIPBPETokenizer(tok_dir / "vocab.json", tok_dir / "merges.txt")
    s1, kind = _load_stage1_file({"target": m["stage1"]["target"], "params": m["stage1"]["params"]},
                                 m["stage1"]["path"])
    r = DiffBIR.from_components(unet, cn.eval(), vae, text_encoder=text, tokenizer=tok, stage1=s1, stage1_kind=kind,
                                version=m["base_version"], device=device, torch_dtype=torch_dtype)
    r.pipeline.scaling = scale
    return r


# ----------------------------------------------------------------------------- entry point


def train_diffbir(config, stage, data=None, output=None, steps=None, resume=None, state_dir=None, val_freq=None,
                  save_every=None, log=print, sd_path=None, s1_weights=None, val_data=None,
                  time_limit: float | None = None) -> dict:
    """Train DiffBIR stage ``stage`` (1 or 2) from an official-style YAML (configs/diffbir/train_*.yaml).

    ``data``: a folder of images or a file list (replaces the config's ``file_list``); ``output``: the experiment
    folder (``train.exp_dir``); ``steps``: ``train.train_steps``; ``resume``: a training state
    (``<iter>.state``), a folder of them or ``"auto"``; ``save_every``: a state every N steps (default
    ``ckpt_every``); ``val_freq``: validation every N steps on ``val_data`` (or ``dataset.val``);
    ``time_limit`` (``train.time_limit``, seconds): stop after the step that passes it and save what was trained
    (the summary's ``steps``: the steps that ran)."""
    cfg = load_config(config)
    if time_limit is not None:
        cfg = {**cfg, "train": {**(cfg.get("train") or {}), "time_limit": float(time_limit)}}
    st = str(stage).lower().replace("stage", "")
    kw = {"data": data, "output": output, "steps": steps, "resume": resume, "state_dir": state_dir, "val_freq": val_freq,
              "save_every": save_every, "val_data": val_data, "log": log}
    if st == "1":
        return train_stage1(cfg, **kw)
    if st == "2":
        return train_stage2(cfg, sd_path=sd_path, s1_weights=s1_weights, **kw)
    raise ConfigError(f"DiffBIR --stage must be 1 or 2 (got {stage!r})")
