"""DiffIR behind the :class:`~restorekit.api.Restorer` interface (stage-2 inference)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from ...api import Restorer, check_loader_options, check_one_mask, other_method_hint, resolve_dtype
from ...errors import TaskError, WeightsError, check_flag
from ...limits import check_option
from ...io import pad_to_multiple
from ...nets.diffir import PRESETS, DiffIRConfig, DiffIRS2
from ...operators import Inpainting
from ...registry import register_method
from ...weights import ModelCard, load_state_dict, load_strict


def pad_symmetric(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """Pad bottom/right to multiples of ``multiple`` as numpy's ``np.pad(mode="symmetric")`` (edge repeated,
    any pad width), which the official LaMa / DiffIR-inpainting predict path uses."""
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple

    def index(n, p):
        i = torch.arange(n + p, device=x.device) % (2 * n)
        return torch.where(i < n, i, 2 * n - 1 - i)

    if ph:
        x = x.index_select(-2, index(h, ph))
    if pw:
        x = x.index_select(-1, index(w, pw))
    return x


def convert_checkpoint(sd: dict) -> dict:
    """Official checkpoints -> DiffIRS2 state dict.

    BasicSR ``.pth`` files are unwrapped (``params_ema``/``params``) by
    :func:`~restorekit.weights.load_state_dict`. The inpainting models are
    PyTorch-Lightning checkpoints whose ``state_dict`` holds ``generator.*``
    (the stage-2 network) next to ``generatorS1.*``, ``discriminator.*`` and
    loss modules: keep ``generator.*`` without the prefix.
    """
    if any(k.startswith("generator.") for k in sd):
        return {k[len("generator."):]: v for k, v in sd.items() if k.startswith("generator.")}
    if any(k.startswith("module.") for k in sd):
        return {k[len("module."):]: v for k, v in sd.items()}
    return sd


def _shapes(cfg: DiffIRConfig) -> dict:
    with torch.device("meta"):
        m = DiffIRS2(cfg)
    return {k: tuple(v.shape) for k, v in m.state_dict().items()}


def preset_for(sd: dict) -> str | None:
    """The official stage-2 preset whose tensor layout ``sd`` (converted) has, if any. RealSR x4 and SRGAN x4
    share one layout; x2/x1 are told apart by the first conv's input channels."""
    got = {k: tuple(v.shape) for k, v in sd.items()}
    return next((name for name in ("realsr_x4", "realsr_x2", "realsr_x1", "gopro", "inpaint_place2")
                 if _shapes(PRESETS[name]) == got), None)


def infer_config(sd: dict, meta: dict | None = None, path=None) -> tuple[str, DiffIRConfig]:
    """(preset name, config) of a stage-2 checkpoint: metadata first, else by tensor shapes (:func:`preset_for`).
    Otherwise a :class:`WeightsError` naming ``path`` and, where its metadata or layout tells, the method it
    belongs to."""
    if meta and "diffir_config" in meta:
        return meta.get("name", "custom"), DiffIRConfig.from_dict(json.loads(meta["diffir_config"]))
    name = preset_for(sd)
    if name is not None:
        return name, PRESETS[name]
    from ..diffpir.restorer import preset_for as unet_preset_for

    what = str(path) if path is not None else "this checkpoint"
    hint = other_method_hint(what, meta, "diffir")
    if hint is None and unet_preset_for(sd) is not None:
        hint = (f"{what} is a DiffPIR prior (an official guided-diffusion UNet), not a DiffIR model; "
                f"use --method diffpir / method='diffpir'")
    if hint is not None:
        raise WeightsError(hint)
    raise WeightsError(f"cannot tell which DiffIR model {what} is: its tensors match none of the official "
                       "stage-2 layouts (RealSR/SRGAN x4, x2, x1, GoPro, inpainting) and it has no restorekit "
                       "metadata (diffir_config); from Python pass config={...} (a DiffIRConfig) to from_pretrained "
                       "(the CLI has no flag for it)")


@dataclass
class DiffIRRunConfig:
    noise_level: float = 0.0  # only used by `restorekit run --degrade`
    official_rng: bool = True

    def to_dict(self) -> dict:
        return asdict(self)


@register_method
class DiffIR(Restorer):
    """Compact-prior diffusion restoration: CPEN_S2 + 4-step IPR diffusion + DIRformer."""

    name = "diffir"
    tasks = ("sr", "deblur", "inpaint")
    blind = True  # needs no kernel (inpainting still needs the mask)
    supports_batch = True
    default_models = {"sr": "diffir-demo-sr", "deblur": "diffir-demo-deblur", "inpaint": "diffir-demo-inpaint"}
    default_model = "diffir-demo-sr"

    def __init__(self, net: DiffIRS2, device=None, preset: str = "custom", torch_dtype=None):
        super().__init__(device)
        self.dtype = resolve_dtype(torch_dtype)
        self.net = net.to(self.device, self.dtype).eval()
        for p in self.net.parameters():
            p.requires_grad_(False)
        self.config: DiffIRConfig = net.config
        self.preset = preset
        self.tasks = (self.config.variant,)  # one checkpoint does one task (variant names are task names)

    @classmethod
    def default_model_for(cls, task: str | None) -> str:
        return cls.default_models.get(task, cls.default_model)

    @classmethod
    def _from_weights(cls, path: Path, card: ModelCard | None, device=None, config=None, torch_dtype=None,
                      **kwargs):
        """``torch_dtype`` (float16 / bfloat16, or "fp16" / "bf16") runs the network in that precision; inputs and
        outputs stay float32."""
        torch_dtype = kwargs.pop("precision", torch_dtype)
        check_loader_options("DiffIR", kwargs)
        sd, meta = load_state_dict(path)
        sd = convert_checkpoint(sd)
        if config is not None:
            name, cfg = "custom", config if isinstance(config, DiffIRConfig) else DiffIRConfig.from_dict(config)
        elif card is not None and card.options.get("preset") in PRESETS:
            name = card.options["preset"]
            cfg = PRESETS[name]
        else:
            name, cfg = infer_config(sd, meta, path)
        net = DiffIRS2(cfg)
        load_strict(net, {k: v.float() for k, v in sd.items()}, str(path))
        return cls(net, device=device, preset=name, torch_dtype=torch_dtype)

    def make_config(self, task: str, steps: int | None = None, **options) -> DiffIRRunConfig:
        cfg = DiffIRRunConfig()
        for k, v in options.items():
            if v is None:
                continue
            if k in ("noise_level", "noise"):
                cfg.noise_level = float(check_option(v, "noise_level", k, error=TaskError))
            elif k == "official_rng":
                cfg.official_rng = check_flag(v, k, error=TaskError)
            elif k == "scale":
                v = check_option(v, "scale", error=TaskError)
                if task == "sr" and v != self.config.scale:
                    raise TaskError(f"this DiffIR model is x{self.config.scale}; it cannot do x{v} (use a "
                                    f"x{v} checkpoint)")
            else:
                raise TaskError(f"option {k!r} does not apply to DiffIR (its IPR diffusion has a fixed "
                                f"{self.config.timesteps}-step schedule and no tunable weights)")
        if steps is not None and steps != self.config.timesteps:
            raise TaskError(f"DiffIR's IPR diffusion always runs the {self.config.timesteps} steps it was trained "
                            f"with; do not pass --steps")
        return cfg

    def check_task(self, task: str) -> None:
        if task not in DiffIR.tasks:
            raise TaskError(f"method 'diffir' does not do task {task!r}; it does: {', '.join(DiffIR.tasks)}")
        if task not in self.tasks:
            raise TaskError(f"this DiffIR checkpoint ({self.preset}) is a {self.tasks[0]} model; it cannot do "
                            f"{task!r} - load a {task} checkpoint")

    def _check_public_operator(self, task: str, operator) -> None:
        """What :meth:`restore` / :meth:`check_options` take as ``operator``: the mask for inpainting; nothing for
        blind SR and deblurring, which estimate the degradation and would ignore it. (:meth:`restore_tensor` /
        :meth:`restore_batch` still take, and ignore, the synthetic operator of ``restorekit run --degrade``.)"""
        ops = list(operator) if isinstance(operator, (list, tuple)) else [operator]
        if task == "inpaint":
            for op in ops:
                if op is not None and not isinstance(op, Inpainting):
                    raise TaskError(f"operator {type(op).__name__} does not fit task 'inpaint': DiffIR inpainting "
                                    f"needs the mask: operator=Inpainting(mask) (1 = known pixel)")
            return
        given = next((op for op in ops if op is not None), None)
        if given is not None:
            what = (f"its factor is the model's, x{self.config.scale}" if task == "sr"
                    else "it estimates the blur itself")
            raise TaskError(f"DiffIR {'super-resolution' if task == 'sr' else 'deblurring'} is blind and would "
                            f"ignore operator={type(given).__name__}(...) ({what}); leave operator out")

    def restore(self, image, task: str | None = None, operator=None, *args, **kwargs):
        t = task or (self.tasks[0] if len(self.tasks) == 1 else None)
        if t in DiffIR.tasks:
            self._check_public_operator(t, operator)
        return super().restore(image, task, operator, *args, **kwargs)

    def check_options(self, task: str, operator=None, steps: int | None = None, **options) -> None:
        super().check_options(task, operator, steps, **options)
        if callable(operator) and not hasattr(operator, "forward"):
            return  # made per image
        self._check_public_operator(task, operator)
        if task == "inpaint" and operator is None:
            raise TaskError("DiffIR inpainting needs the mask: operator=Inpainting(mask) (1 = known pixel)")

    def _prepare(self, y: torch.Tensor, task: str, operator):
        """(network input, missing-pixel map or None) of one observation, as upstream pads it."""
        h, w = y.shape[-2:]
        if task == "inpaint":
            if not isinstance(operator, Inpainting):
                raise TaskError("DiffIR inpainting needs the mask: operator=Inpainting(mask) (1 = known pixel)")
            # official predict.py: mask = (mask > 0), with mask = 1 - known here
            missing = ((1.0 - operator.mask.to(y)[:, :1]) > 0).to(y).expand(y.shape[0], 1, h, w)
            net_in = torch.cat([y * (1 - missing), missing], dim=1)
            return pad_symmetric(net_in, self.config.size_multiple), missing  # LaMa's pad_img_to_modulo
        net_in, _ = pad_to_multiple(y, self.config.size_multiple)  # reflect, as upstream's pad_test
        return net_in, None

    @torch.no_grad()
    def restore_tensor(self, y: torch.Tensor, task: str, operator=None, steps: int | None = None,
                       seed: int | None = None, progress=None, **options) -> torch.Tensor:
        check_one_mask(operator)
        return self.restore_batch([y], [operator], [seed], task=task, steps=steps, progress=progress, **options)[0]

    @torch.no_grad()
    def restore_batch(self, ys, ops=None, seeds=None, *, task: str, steps: int | None = None, progress=None,
                      **options) -> list[torch.Tensor]:
        """Restore the (1, C, h, w) observations ``ys`` in one network call per group of same-size images; image k
        uses ``ops[k]`` (its inpainting mask) and its own random stream seeded ``seeds[k]`` (``None``: 0), so each
        result equals a one-image run up to the network's batch-size rounding."""
        from ...api import per_image_operators, same_size_groups

        self.check_task(task)
        run = self.make_config(task, steps, **options)
        n = len(ys)
        ops = per_image_operators(ops, n)
        ys, plan = same_size_groups(ys, seeds, device=self.device, default_seed=0)
        outs: list = [None] * n
        sf = self.config.sf
        for idx, gens in plan:
            prepared = [self._prepare(ys[k], task, ops[k]) for k in idx]
            net_in = torch.cat([p[0] for p in prepared])
            h, w = ys[idx[0]].shape[-2:]
            out = self.net(net_in.to(self.dtype), generator=gens, official_rng=run.official_rng)
            out = out[..., : h * sf, : w * sf].float()
            for j, k in enumerate(idx):
                o = out[j:j + 1]
                missing = prepared[j][1]
                if missing is not None:
                    o = missing * o + (1 - missing) * ys[k]  # keep the known pixels, as upstream
                outs[k] = o.clamp(0, 1)
        if progress is not None:
            progress(0, 1, 0)
        return outs
