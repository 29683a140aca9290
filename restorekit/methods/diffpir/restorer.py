"""DiffPIR behind the :class:`~restorekit.api.Restorer` interface."""

from __future__ import annotations

import json
from dataclasses import fields
from pathlib import Path

import torch
import torch.nn.functional as F

from ...api import (Restorer, check_loader_options, check_one_mask, check_operator_scale, check_scale, check_seed,
                   other_method_hint, resolve_dtype)
from ...diffusion import LinearSchedule
from ...errors import TaskError, WeightsError, check_api_number, check_flag
from ...limits import check_option
from ...nets.guided_unet import FFHQ_10M, IMAGENET_256_UNCOND, GuidedUNet, GuidedUNetConfig
from ...operators import BicubicDownsample, Blur, BlurDownsample, Inpainting, LinearOperator
from ...registry import register_method
from ...weights import ModelCard, load_state_dict, load_strict
from .sampler import TASK_DEFAULTS, DiffPIRConfig, GuidedDiffusionModel, diffpir_sample

PRESETS = {"ffhq_10m": FFHQ_10M, "imagenet_256_uncond": IMAGENET_256_UNCOND}

def _shapes(cfg: GuidedUNetConfig) -> dict:
    with torch.device("meta"):
        return {k: tuple(v.shape) for k, v in GuidedUNet(cfg).state_dict().items()}


def preset_for(state_dict: dict) -> GuidedUNetConfig | None:
    """The official UNet preset whose tensor layout ``state_dict`` has, if any."""
    got = {k: tuple(v.shape) for k, v in state_dict.items()}
    return next((cfg for cfg in PRESETS.values() if _shapes(cfg) == got), None)


def _diffir_layout(state_dict: dict) -> str | None:
    """The official DiffIR preset whose stage-2 layout ``state_dict`` has, if any (to name a DiffIR file)."""
    from ..diffir.restorer import convert_checkpoint, preset_for as diffir_preset_for

    try:
        return diffir_preset_for(convert_checkpoint(state_dict))
    except Exception:  # noqa: BLE001  (a foreign dict DiffIR's key conversion cannot read: not DiffIR's either)
        return None


def infer_unet_config(state_dict: dict, meta: dict | None = None, path=None) -> GuidedUNetConfig:
    """UNet config of a checkpoint: from restorekit metadata, else by matching the official presets; otherwise a
    :class:`WeightsError` naming ``path`` and, where its metadata or layout tells, the method it belongs to."""
    if meta and "unet_config" in meta:
        return GuidedUNetConfig.from_dict(json.loads(meta["unet_config"]))
    cfg = preset_for(state_dict)
    if cfg is not None:
        return cfg
    what = str(path) if path is not None else "this checkpoint"
    hint = other_method_hint(what, meta, "diffpir")
    if hint is None and (preset := _diffir_layout(state_dict)) is not None:
        hint = (f"{what} is a DiffIR model (the official {preset} layout), not a DiffPIR prior; "
                f"use --method diffir / method='diffir'")
    if hint is not None:
        raise WeightsError(hint)
    raise WeightsError(f"{what} is not a DiffPIR checkpoint of a known layout: its tensors match neither "
                       "diffusion_ffhq_10m.pt nor 256x256_diffusion_uncond.pt and it carries no restorekit "
                       "metadata (unet_config); from Python pass unet_config={...} to from_pretrained (the CLI has "
                       "no flag for it)")


@register_method
class DiffPIR(Restorer):
    """Plug-and-play diffusion restoration with an unconditional guided-diffusion prior."""

    name = "diffpir"
    tasks = ("deblur", "sr", "inpaint")
    default_model = "diffpir-demo"
    #: SR factor without an operator or ``scale``
    default_scale = 4

    def __init__(self, unet: GuidedUNet, device=None, schedule: LinearSchedule | None = None, torch_dtype=None,
                 model_defaults: dict | None = None):
        super().__init__(device)
        #: per-task option defaults of this model (a model card's ``task_defaults``) over the official ones
        self.model_defaults = {t: dict(o) for t, o in (model_defaults or {}).items()}
        self.dtype = resolve_dtype(torch_dtype)
        self.unet = unet.to(self.device, self.dtype).eval()
        for p in self.unet.parameters():
            p.requires_grad_(False)
        self.schedule = schedule or LinearSchedule()

    @classmethod
    def _from_weights(cls, path: Path, card: ModelCard | None, device=None, unet_config=None, torch_dtype=None,
                      **kwargs):
        """``torch_dtype`` (float16 / bfloat16, or "fp16" / "bf16") runs the UNet in that precision;
        the sampler and the data step stay in float32 / float64."""
        check_loader_options("DiffPIR", kwargs)
        sd, meta = load_state_dict(path)
        if unet_config is not None:
            cfg = unet_config if isinstance(unet_config, GuidedUNetConfig) else GuidedUNetConfig.from_dict(unet_config)
        elif card is not None and card.options.get("unet") in PRESETS:
            cfg = PRESETS[card.options["unet"]]
        else:
            cfg = infer_unet_config(sd, meta, path)
        unet = GuidedUNet(cfg)
        load_strict(unet, {k: v.float() for k, v in sd.items()}, str(path))
        return cls(unet, device=device, torch_dtype=torch_dtype,
                   model_defaults=card.options.get("task_defaults") if card is not None else None)

    # ------------------------------------------------------------------------
    @staticmethod
    def default_config(task: str) -> DiffPIRConfig:
        return DiffPIRConfig(**TASK_DEFAULTS[task])

    def make_config(self, task: str, steps: int | None = None, **options) -> DiffPIRConfig:
        cfg = self.default_config(task)
        for k, v in self.model_defaults.get(task, {}).items():
            setattr(cfg, k, v)
        names = {f.name for f in fields(DiffPIRConfig)}
        aliases = {"lambda": "lambda_", "lam": "lambda_", "noise": "noise_level", "nfe": "steps", "iter_num": "steps"}
        for k, v in options.items():
            k = aliases.get(k, k)
            if k not in names:
                raise TaskError(f"unknown DiffPIR option {k!r}; options are {', '.join(sorted(names))}")
            if v is not None:
                setattr(cfg, k, v)
        if steps is not None:
            cfg.steps = steps
        self._check_values(cfg)
        try:
            cfg.check()
        except ValueError as e:
            raise TaskError(str(e)) from None
        if task == "inpaint" and cfg.generate_mode.startswith("DPS"):
            raise TaskError("generate_mode DPS_y0 / DPS_yt is not available for inpainting "
                            "(main_ddpir.py allows DiffPIR, repaint and vanilla there)")
        if task != "inpaint" and cfg.generate_mode == "repaint":
            raise TaskError("generate_mode 'repaint' is an inpainting mode")
        if cfg.sr_mode == "cubic" and task != "sr":
            raise TaskError("sr_mode='cubic' (the IBP data step) applies to task 'sr' only")
        return cfg

    #: bool options: a text such as "false" would be read as true
    _FLAGS = ("use_last_x0", "official_rng", "sub_1_analytic", "skip_noise_model_t", "ddim_sample",
              "classical_degradation", "start_from_t_y", "paste_observed")

    def _check_values(self, cfg: DiffPIRConfig) -> None:
        """Every number of ``cfg`` finite and in range (restorekit.limits for the options the CLI has flags for), whole
        where it counts steps, and the flags bools: a NaN or infinite lambda / eta gave an all-black image."""
        def num(name, **limits):
            v = check_api_number(getattr(cfg, name), name, error=TaskError, **limits)
            if limits.get("integer"):
                setattr(cfg, name, v)

        T = self.schedule.num_train_timesteps
        for name in ("steps", "lambda_", "zeta", "eta", "noise_level"):
            v = check_option(getattr(cfg, name), name, error=TaskError, **({"hi": T} if name == "steps" else {}))
            setattr(cfg, name, v)
        num("guidance_scale")
        num("gamma")
        num("iter_num_U", lo=1, integer=True)
        num("inIter", lo=0, integer=True)
        if cfg.t_start is not None:
            num("t_start", lo=0, hi=T - 1, integer=True)
        if cfg.noise_level_model is not None:
            num("noise_level_model", lo=0)
        if cfg.noise_init_img is not None and cfg.noise_init_img != "max":
            check_api_number(cfg.noise_init_img, "noise_init_img ('max' or a noise level on the 0-255 scale)",
                             lo=0, error=TaskError)
        for name in self._FLAGS:
            setattr(cfg, name, check_flag(getattr(cfg, name), name, error=TaskError))

    def _check_operator(self, task: str, operator, scale: int | None) -> LinearOperator:
        """The operator of ``task`` (SR without one: bicubic x``scale``), else a :class:`TaskError`: the wrong
        kind, or an SR operator whose factor contradicts an explicit ``scale``."""
        if operator is None:
            if task == "sr":
                return BicubicDownsample(self.default_scale if scale is None else scale)
            what = "a blur kernel: operator=Blur(kernel)" if task == "deblur" else "a mask: operator=Inpainting(mask)"
            raise TaskError(f"DiffPIR is non-blind; task {task!r} needs {what}")
        # SR: blur + decimation (BicubicDownsample, BlurDownsample / classical_operator, also with sf 1 for --scale
        # 1), not a deblurring operator (Blur), whose result would not be upscaled
        ok = {"deblur": isinstance(operator, BlurDownsample) and operator.sf == 1,
              "sr": isinstance(operator, BlurDownsample) and not isinstance(operator, Blur),
              "inpaint": isinstance(operator, Inpainting)}[task]
        if not ok:
            fits = {"deblur": "Blur(kernel)", "sr": "BicubicDownsample(sf) or BlurDownsample(kernel, sf)",
                    "inpaint": "Inpainting(mask)"}[task]
            raise TaskError(f"operator {type(operator).__name__} does not fit task {task!r} (it takes {fits})")
        if task == "sr":
            check_operator_scale(operator, scale)
        return operator

    def check_options(self, task: str, operator=None, steps: int | None = None, scale: int | None = None,
                      **options) -> None:
        super().check_options(task, operator, steps, **options)
        scale = check_scale(scale)
        if operator is None or isinstance(operator, LinearOperator):  # not a callable that makes one per image
            self._check_operator(task, operator, scale)

    def _x_init(self, y: torch.Tensor, op, task: str, cfg: DiffPIRConfig) -> torch.Tensor:
        """The image the chain starts from: y (deblur), bicubic(y) (SR), y * mask (inpaint)."""
        H, W = op.input_size(*y.shape[-2:])
        if task == "sr":
            x_init = F.interpolate(y, size=(H, W), mode="bicubic", align_corners=False)
            if cfg.classical_degradation:  # main_ddpir_sisr.py L243-L249
                from ...operators.classical_sr import shift_pixel

                sh = shift_pixel(x_init[0].permute(1, 2, 0).cpu().numpy(), op.sf)
                x_init = torch.from_numpy(sh).permute(2, 0, 1)[None].to(y)
            return x_init
        if task == "inpaint":
            return y * op.mask.to(y)
        return y

    def _sample(self, y, op, x_init, cfg, gen, progress, task) -> torch.Tensor:
        model = GuidedDiffusionModel(self._net(), self.schedule, self.unet.size_multiple)
        try:
            out = diffpir_sample(model, y, op, x_init, cfg, self.schedule, gen, callback=progress, task=task)
        except ValueError as e:
            raise TaskError(str(e)) from None
        if not bool(torch.isfinite(out).all()):
            raise TaskError("DiffPIR produced non-finite values (nan or inf); check the options (lambda_, zeta, eta, "
                            "noise_level, guidance_scale), the operator and the weights (a damaged file with nan "
                            "values gives this too)")
        return out.clamp(0, 1)

    def _net(self):
        compiled = getattr(self, "_compiled", None)
        return self.unet if compiled is None else compiled

    def compile(self, **kwargs) -> "DiffPIR":
        """Run the UNet through ``torch.compile(unet, **kwargs)`` from now on (``restorekit run --compile``)."""
        self._compiled = torch.compile(self.unet, **kwargs)
        return self

    @torch.no_grad()
    def restore_tensor(self, y: torch.Tensor, task: str, operator=None, steps: int | None = None,
                       seed: int | None = None, progress=None, scale: int | None = None, **options) -> torch.Tensor:
        """``scale``: the SR factor without an operator (default 4); with one, it must agree with its factor."""
        self.check_task(task)
        cfg = self.make_config(task, steps, **options)
        check_one_mask(operator)
        op = self._check_operator(task, operator, check_scale(scale))
        seed = check_seed(seed)
        y = y.to(self.device, torch.float32)
        x_init = self._x_init(y, op, task, cfg)
        gen = torch.Generator().manual_seed(0 if seed is None else int(seed))
        return self._sample(y, op, x_init, cfg, gen, progress, task)

    supports_batch = True

    @torch.no_grad()
    def restore_batch(self, ys, ops=None, seeds=None, *, task: str, steps: int | None = None, progress=None,
                      scale: int | None = None, **options) -> list[torch.Tensor]:
        """Restore the (1, C, h, w) observations ``ys`` with one UNet call per step for each group of
        same-size images; ``ops[k]`` / ``seeds[k]`` are image k's operator and seed (``None``: seed 0). Each
        result equals ``restore_tensor(ys[k], task, ops[k], seed=seeds[k], ...)`` up to the network's
        batch-size rounding."""
        from ...api import per_image_operators, same_size_groups

        self.check_task(task)
        cfg = self.make_config(task, steps, **options)
        n = len(ys)
        scale = check_scale(scale)
        ops = [self._check_operator(task, op, scale) for op in per_image_operators(ops, n)]
        ys, plan = same_size_groups(ys, seeds, device=self.device, default_seed=0,
                                    key=lambda k: (tuple(ys[k].shape), ops[k].input_size(*ys[k].shape[-2:])))
        outs: list = [None] * n
        for idx, gens in plan:
            x_init = torch.cat([self._x_init(ys[k], ops[k], task, cfg) for k in idx])
            y = torch.cat([ys[k] for k in idx])
            if len(idx) == 1:  # exactly restore_tensor's call
                out = self._sample(y, ops[idx[0]], x_init, cfg, gens[0], progress, task)
            else:
                out = self._sample(y, [ops[k] for k in idx], x_init, cfg, gens, progress, task)
            for j, k in enumerate(idx):
                outs[k] = out[j:j + 1]
        return outs
