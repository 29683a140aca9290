"""DiffBIR behind the Restorer interface: stage 1 (BSRNet / SwinIR / SCUNet) + IRControlNet-guided SD 2.1.

Which files a (version, task) uses is the official ``pretrained_models.py`` / task loops' pairing
(:data:`PLAN`). ``from_pretrained`` loads SD 2.1, the tokenizer and the files of ``task`` (default "sr");
other tasks load their stage-1 model / ControlNet on first use, from the same folder or the cache.
``stage1`` may also be any model file spandrel loads (:func:`load_stage1_file`); it then serves every task but the
face crops of ``unaligned_face``.
"""

from __future__ import annotations

import math
import os
from dataclasses import fields
from pathlib import Path

import torch

from ...api import Restorer
from ...errors import TaskError, WeightsError, coerce_option, first_line, one_line
from ...registry import get_card, register_method
from ...weights import ModelCard, cache_dir, load_state_dict, load_strict, resolve_card
from .pipeline import DiffBIRPipeline, DiffBIRSettings

TASKS = ("sr", "face", "denoise", "unaligned_face")
VERSIONS = ("v1", "v2", "v2.1")
PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}

#: (version, task) -> stage-1 card, pipeline kind, ControlNet card (+ the face stage 1 of unaligned_face)
PLAN: dict[tuple[str, str], dict] = {}
for _v, _cn, _sr, _sr_kind, _dn, _dn_kind in [
        ("v1", "diffbir-v1-controlnet", "swinir-general", "swinir", "swinir-general", "swinir"),
        ("v2", "diffbir-v2-controlnet", "bsrnet", "bsrnet", "scunet-psnr", "scunet"),
        ("v2.1", "diffbir-v2.1-controlnet", "swinir-realesrgan", "swinir", "swinir-realesrgan", "swinir")]:
    PLAN[(_v, "sr")] = {"controlnet": _cn, "stage1": _sr, "kind": _sr_kind}
    PLAN[(_v, "denoise")] = {"controlnet": _cn, "stage1": _dn, "kind": _dn_kind}
    PLAN[(_v, "face")] = {"controlnet": "diffbir-v1-face-controlnet" if _v == "v1" else _cn, "stage1": "swinir-face",
                          "kind": "swinir"}
    if _v != "v1":
        PLAN[(_v, "unaligned_face")] = {"controlnet": _cn, "stage1": _sr, "kind": _sr_kind,
                                        "face_stage1": "swinir-face"}

SD_CARD = {"v1": "sd-v2.1-base", "v2": "sd-v2.1-base", "v2.1": "sd-v2.1-base-zsnr"}
TOKENIZER_CARDS = ("sd-v2.1-tokenizer-vocab", "sd-v2.1-tokenizer-merges")
#: top-level keys of an ldm SD checkpoint that are not network weights (the training schedule, EMA state)
LDM_SCHEDULE_KEYS = {"betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod",
                     "sqrt_one_minus_alphas_cumprod", "log_one_minus_alphas_cumprod", "sqrt_recip_alphas_cumprod",
                     "sqrt_recipm1_alphas_cumprod", "posterior_variance", "posterior_log_variance_clipped",
                     "posterior_mean_coef1", "posterior_mean_coef2", "logvar"}


def make_encode_prompt(text_encoder, tokenizer, device):
    """list[str] -> (N, 77, 1024) float32: ``FrozenOpenCLIPEmbedder(layer="penultimate").encode``."""
    cache: dict = {}

    @torch.no_grad()
    def encode(prompts: list[str]) -> torch.Tensor:
        key = tuple(prompts)
        if key not in cache:
            ids = tokenizer(list(prompts)).to(device)
            cache[key] = text_encoder(input_ids=ids).last_hidden_state.float()
        return cache[key]

    return encode


def _load_assign(module: torch.nn.Module, sd: dict, source: str, dtype: torch.dtype) -> torch.nn.Module:
    """Strict load (restorekit.weights.load_strict's checks) into a module built on the meta device; the file's
    tensors become the parameters, then the module is cast to ``dtype``."""
    load_strict(module, sd, source, assign=True)
    return _cast(module, dtype)


def _cast(module: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    """``module.to(dtype)`` (without diffusers' ModelMixin.to warning), GroupNorms kept in float32 as upstream's
    ``ControlLDM.cast_dtype`` keeps its GroupNorm32 layers."""
    torch.nn.Module.to(module, dtype)
    for m in module.modules():
        if isinstance(m, torch.nn.GroupNorm):
            torch.nn.Module.to(m, torch.float32)
    return module


def _check_ldm_keys(ckpt: dict, used_counts: dict, extra_ok: list, source: str) -> None:
    """Every tensor of the SD checkpoint is used, or is a schedule / EMA entry or a known unused text key."""
    prefixes = {"model.diffusion_model.": "unet", "first_stage_model.": "vae", "cond_stage_model.model.": "text"}
    counts = {v: 0 for v in prefixes.values()}
    other = []
    for k in ckpt:
        p = next((p for p in prefixes if k.startswith(p)), None)
        if p is not None:
            counts[prefixes[p]] += 1
        elif k not in LDM_SCHEDULE_KEYS and not k.startswith("model_ema."):
            other.append(k)
    if other:
        raise WeightsError(f"{source}: {len(other)} unexpected keys, e.g. {other[:3]}")
    for part in ("unet", "vae"):
        if counts[part] != used_counts[part]:
            raise WeightsError(f"{source}: {counts[part] - used_counts[part]} {part} tensors were not used by the "
                               f"conversion (unexpected keys)")
    if counts["text"] == 0:
        raise WeightsError(f"{source} holds no OpenCLIP text encoder (cond_stage_model.model.*)")


@register_method
class DiffBIR(Restorer):
    """Blind image restoration: a stage-1 restorer, then Stable Diffusion + IRControlNet."""

    name = "diffbir"
    tasks = TASKS
    blind = True
    default_model = "diffbir-v2.1"
    #: from_pretrained hands a card over unresolved: _from_weights finds all its files and lists every missing one
    resolves_own_weights = True

    def __init__(self, pipeline: DiffBIRPipeline, version: str = "v2.1", device=None, locate=None,
                 stage1_override: str | None = None):
        super().__init__(device)
        self.pipeline, self.version = pipeline, version
        pipeline.device = self.device
        for m in (pipeline.unet, pipeline.controlnet, pipeline.vae):
            if isinstance(m, torch.nn.Module):
                m.to(self.device).eval().requires_grad_(False)
        self._locate = locate  # card name -> Path (folder or cache); None: components were given directly
        self._stage1: dict[str, torch.nn.Module] = {}
        self._controlnets: dict[str, torch.nn.Module] = {}
        self._stage1_override = stage1_override
        self._stage1_given = None
        self._stage1_file = None  # (network, kind) of a stage1=PATH model file
        self.face_helper_factory = None

    # -- construction ---------------------------------------------------------------------
    @classmethod
    def from_components(cls, unet, controlnet, vae, text_encoder=None, tokenizer=None, stage1=None,
                        stage1_kind: str | None = None, version="v2.1", device=None, encode_prompt=None,
                        torch_dtype: torch.dtype | None = None) -> DiffBIR:
        """Build from modules; ``stage1`` (with its pipeline kind "bsrnet" | "swinir" | "scunet", default
        "swinir") serves every task. ``stage1`` may be a model file path: it is loaded with spandrel and its
        kind follows from its scale (:func:`load_stage1_file`)."""
        dev = torch.device(device) if device else torch.device("cuda" if torch.cuda.is_available() else "cpu")
        if isinstance(stage1, (str, Path)):
            if stage1_kind is not None:
                raise TaskError("stage1_kind is decided by the stage-1 file's scale; do not pass it with a file")
            stage1, stage1_kind = load_stage1_file(stage1, dev)
        stage1_kind = stage1_kind or "swinir"
        dtype = torch_dtype or (torch.float16 if dev.type == "cuda" else torch.float32)
        if encode_prompt is None:
            text_encoder = text_encoder.to(dev).eval()
            encode_prompt = make_encode_prompt(text_encoder, tokenizer, dev)
        _cast(unet, dtype)
        _cast(controlnet, dtype)
        pipe = DiffBIRPipeline(unet, controlnet, vae, encode_prompt, dev, dtype)
        obj = cls(pipe, version, dev)
        obj._stage1_given = (stage1, stage1_kind)
        if isinstance(stage1, torch.nn.Module):
            stage1.to(dev).eval().requires_grad_(False)
        return obj

    @classmethod
    def _from_weights(cls, path: Path, card: ModelCard | None, device=None, **kwargs):
        """``path``: a folder holding the official files, or the ControlNet file of a ``diffbir-*`` card."""
        from diffusers import AutoencoderKL, UNet2DConditionModel
        from transformers import CLIPTextConfig, CLIPTextModel

        from .convert import SD21_TEXT, SD21_UNET, SD21_VAE, sd_from_ldm
        from .text import CLIPBPETokenizer, openclip_text_to_transformers

        version = kwargs.pop("version", None)
        if version == "custom":  # the output folder of restorekit train --method diffbir --stage 2
            from .train import load_custom

            if path is None or not Path(path).is_dir():
                raise WeightsError("version='custom' needs the folder written by 'restorekit train --method diffbir "
                                   "--stage 2' (with diffbir_custom.json)")
            dtype = kwargs.pop("torch_dtype", None) or kwargs.pop("precision", None)
            layout = kwargs.pop("layout", "official")
            kwargs.pop("task", None)
            if kwargs:
                raise TypeError(f"unexpected options for DiffBIR.from_pretrained: {sorted(kwargs)}")
            if isinstance(dtype, str):
                dtype = precision_dtype(dtype)
            return load_custom(path, device=device, torch_dtype=dtype, layout=layout)
        version = load_version(card, version)
        task = kwargs.pop("task", "sr")
        check_version_task(version, task)
        dtype = kwargs.pop("torch_dtype", None)
        dtype = kwargs.pop("precision", None) if dtype is None else dtype
        if isinstance(dtype, str):
            dtype = precision_dtype(dtype)
        stage1 = kwargs.pop("stage1", None)
        stage1_file = None
        if stage1 is not None and (not isinstance(stage1, str) or stage1 not in STAGE1):
            if not Path(stage1).is_file():
                raise TaskError(f"unknown DiffBIR stage-1 model {str(stage1)!r}: not a file, and not one of "
                                f"{', '.join(STAGE1)}")
            stage1_file, stage1 = Path(stage1), None
        if kwargs:
            raise TypeError(f"unexpected options for DiffBIR.from_pretrained: {sorted(kwargs)}")
        dev = torch.device(device) if device else torch.device("cuda" if torch.cuda.is_available() else "cpu")
        # a stage-1 file is read first: a file spandrel cannot load fails before the 5 GB of SD are read
        file_stage1 = load_stage1_file(stage1_file, dev) if stage1_file is not None else None
        dtype = dtype or (torch.float16 if dev.type == "cuda" else torch.float32)
        folder = Path(path) if path is not None and Path(path).is_dir() else None
        given_cn = None if (folder is not None or path is None) else Path(path)

        plan = PLAN[(version, task)]
        # a file given as the weights is the ControlNet: the card's, or (a bare path) the one this task needs
        cn_name = card.options.get("controlnet") if card is not None else plan["controlnet"]

        def locate(name: str) -> Path:
            c = get_card(name)
            if given_cn is not None and name == cn_name:
                return given_cn
            if folder is not None:
                p = folder / c.filename
                if not p.is_file():
                    raise WeightsError(f"'{c.filename}' (from {_source(c)})")
                return p
            return resolve_card(c)

        needed = {"sd": SD_CARD[version], "tokenizer_vocab": TOKENIZER_CARDS[0],
                  "tokenizer_merges": TOKENIZER_CARDS[1], "controlnet": plan["controlnet"]}
        if file_stage1 is None:
            needed["stage1"] = stage1 or plan["stage1"]
        if "face_stage1" in plan:
            needed["face_stage1"] = plan["face_stage1"]
        paths, missing = {}, []
        for comp, name in needed.items():
            try:
                paths[comp] = locate(name)
            except WeightsError:
                c = get_card(name)
                target = (folder or cache_dir()) / c.filename
                missing.append(f"{comp}: {c.filename} from {_source(c)} -> put it at {target}")
        if missing:
            where = folder or "the restorekit cache"
            given = f" ({given_cn} is used as its ControlNet)" if given_cn is not None else ""
            raise WeightsError(f"DiffBIR {version} ({task}) needs {len(missing)} file(s) that are not in {where} "
                               f"(or $RESTOREKIT_WEIGHTS){given}:\n  " + "\n  ".join(missing))
        if paths["tokenizer_merges"].parent != paths["tokenizer_vocab"].parent:
            raise WeightsError("vocab.json and merges.txt must be in the same folder")

        # Stable Diffusion 2.1: UNet, VAE, OpenCLIP text tower (all from the one ldm checkpoint)
        sd_path = paths["sd"]
        ckpt, _ = load_state_dict(sd_path)
        with torch.device("meta"):
            unet = UNet2DConditionModel(**SD21_UNET)
            vae = AutoencoderKL(**SD21_VAE)
            text = CLIPTextModel(CLIPTextConfig(**SD21_TEXT))
        u, v, _ = sd_from_ldm(ckpt)
        t, unused_text = openclip_text_to_transformers(ckpt, text, str(sd_path))
        _check_ldm_keys(ckpt, {"unet": len(u), "vae": len(v)}, unused_text, str(sd_path))
        del ckpt
        _load_assign(unet, u, str(sd_path), dtype)
        del u
        _load_assign(vae, v, str(sd_path), torch.float32)
        del v
        for mod in text.modules():  # the one non-persistent buffer, not in any checkpoint
            if "position_ids" in mod._buffers:
                mod.register_buffer("position_ids", torch.arange(SD21_TEXT["max_position_embeddings"])[None],
                                    persistent=False)
        _load_assign(text, t, str(sd_path), torch.float32)
        del t
        tok = CLIPBPETokenizer(paths["tokenizer_vocab"], paths["tokenizer_merges"])
        controlnet = _load_controlnet(paths["controlnet"], unet, dtype)
        encode_prompt = make_encode_prompt(text.to(dev).eval(), tok, dev)
        pipe = DiffBIRPipeline(unet, controlnet, vae, encode_prompt, dev, dtype)
        obj = cls(pipe, version, dev, locate=locate, stage1_override=stage1)
        obj.text_encoder, obj.tokenizer = text, tok
        obj._stage1_file = file_stage1
        obj._controlnets[plan["controlnet"]] = controlnet
        for comp in ("stage1", "face_stage1"):
            if comp in paths:
                obj._stage1[needed[comp]] = _load_stage1(needed[comp], paths[comp], dev)
        return obj

    # -- per-task components ------------------------------------------------------------------
    def _component(self, cache: dict, name: str, load):
        if name not in cache:
            if self._locate is None:
                raise WeightsError(f"DiffBIR was built from components; it has no '{name}' for this task")
            try:
                p = self._locate(name)
            except WeightsError as e:
                raise WeightsError(f"DiffBIR {self.version} needs {first_line(e, 1000)}") from None
            cache[name] = load(p)
        return cache[name]

    def stage1_for(self, task: str, face: bool = False):
        """(network or None, pipeline kind) used for ``task`` (the face crops of unaligned_face: ``face=True``)."""
        if self._stage1_given is not None:
            return self._stage1_given
        if self._stage1_file is not None and not face:
            return self._stage1_file
        plan = PLAN[(self.version, task)]
        name = plan["face_stage1"] if face else (self._stage1_override or plan["stage1"])
        kind = "swinir" if face else STAGE1[name][1]
        net = self._component(self._stage1, name, lambda p: _load_stage1(name, p, self.device))
        return net, kind

    def controlnet_for(self, task: str):
        if self._locate is None:
            return self.pipeline.controlnet
        name = PLAN[(self.version, task)]["controlnet"]
        return self._component(self._controlnets, name,
                               lambda p: _load_controlnet(p, self.pipeline.unet, self.pipeline.dtype).to(self.device))

    # -- options ------------------------------------------------------------------------------
    ALIASES = {"start_point": "start_point_type", "guidance_scale": "g_scale", "guidance_loss": "g_loss",
               "guidance_space": "g_space", "guidance_start": "g_start", "guidance_stop": "g_stop",
               "guidance_repeat": "g_repeat"}

    @classmethod
    def check_options_unloaded(cls, task: str, steps: int | None = None, *, model=None, version=None,
                               **options) -> None:
        """Every check of :meth:`make_config` (the same one-line :class:`TaskError`), without any weights: call it
        before :meth:`from_pretrained`, so that a bad option fails before gigabytes are downloaded or read.

        ``options`` are make_config's, as values or as the CLI's ``--opt`` text (``"nan"``, ``"1e3"``, ``"off"``
        are read as make_config reads them). ``model`` (what ``from_pretrained`` gets: a ``diffbir-*`` card name,
        a path; None: the default model) and ``version`` (from_pretrained's ``version=``) decide the version whose
        defaults complete the options, as from_pretrained decides it (a path without ``version``: v2.1); a version
        that contradicts the card is refused here as there. With ``version="custom"`` (a trained folder, its base
        version unknown here) the one check that depends on a version's default sampler (guidance needs
        ``spaced``) waits for make_config."""
        if version == "custom":
            ver = None
        else:
            card = None
            if model is None or str(model) == "":
                card = get_card(cls.default_model_for(task))
            elif isinstance(model, (str, os.PathLike)) and not Path(model).exists():
                card = get_card(str(model))  # an unknown name is from_pretrained's to refuse
                card = card if card is not None and card.method == cls.name else None
            ver = load_version(card, version)
        cls._settings(task, steps, ver, options)

    def make_config(self, task: str, steps: int | None = None, **options) -> DiffBIRSettings:
        """The settings of one restore call: ``options`` (official names, :attr:`ALIASES`, ``tiled``) over this
        version's defaults, every value checked (:meth:`check_options_unloaded` runs the same checks without the
        networks). ``scale`` / ``upscale`` / ``noise_level`` are the restore call's; ``precision`` /
        ``torch_dtype`` are checked here and applied by the restore call."""
        return self._settings(task, steps, self.version, options)

    @classmethod
    def _settings(cls, task: str, steps, version: str | None, options: dict) -> DiffBIRSettings:
        """``options`` read and checked into the settings of ``version``: the one place of DiffBIR's option checks,
        none of which needs a network. ``version`` None (not known yet): v2.1's defaults fill the settings, and
        the guidance / sampler check applies to a sampler given in ``options`` only."""
        from ...samplers import SAMPLER_NAMES
        from .caption import check_captioner

        if task not in TASKS:
            raise TaskError(f"method {cls.name!r} does not do task {task!r}; it does: {', '.join(TASKS)}")
        if version is not None:
            check_version_task(version, task)
        names = set(_FIELD_DEFAULTS) - {"version"}
        extra = {}
        for k, v in options.items():
            if v is None or k in ("scale", "upscale", "noise_level", "noise"):
                continue
            if k in ("precision", "torch_dtype"):
                precision_dtype(v)
                continue
            k = cls.ALIASES.get(k, k)
            if k == "tiled":
                flag = option_value(k, v, False)
                for f in ("cleaner_tiled", "vae_encoder_tiled", "vae_decoder_tiled", "cldm_tiled"):
                    extra[f] = flag
                continue
            if k not in names:
                raise TaskError(f"option {k!r} does not apply to DiffBIR; options are {', '.join(sorted(names))}")
            extra[k] = option_value(k, v)
        if steps is not None:
            steps = option_value("steps", steps)
        if "g_scale" in extra and "guidance" not in extra:
            extra["guidance"] = extra["g_scale"] > 0
        s = DiffBIRSettings.for_version(version or "v2.1", steps=steps, **extra)
        choices = {"start_point_type": ("noise", "cond", "low_freq"), "g_space": ("latent", "rgb"),
                   "g_loss": ("mse", "w_mse"), "color_fix": ("wavelet", "none"), "sampler": SAMPLER_NAMES}
        for k, allowed in choices.items():
            if getattr(s, k) not in allowed:
                raise TaskError(f"DiffBIR option {k}={getattr(s, k)!r}; choose one of {', '.join(allowed)}")
        check_captioner(s.captioner)
        if s.steps < 1 or s.batch_size < 1 or s.n_samples < 1:
            raise TaskError("DiffBIR needs steps, batch_size and n_samples >= 1")
        if s.sampler == "dpm++_m2" and s.steps < 2:
            raise TaskError("DiffBIR's dpm++_m2 sampler needs at least 2 steps (its order)")
        if (s.cldm_tile_size % 64 or s.cldm_tile_size < 64 or s.cldm_tile_stride < 8 or s.vae_encoder_tile_size % 8
                or s.vae_encoder_tile_size < 8):
            raise TaskError("DiffBIR needs cldm_tile_size a positive multiple of 64, cldm_tile_stride >= 8 and "
                            "vae_encoder_tile_size a positive multiple of 8")
        if not 0 <= s.noise_aug < 1000:
            raise TaskError("DiffBIR noise_aug is a timestep in [0, 999]")
        if s.guidance and s.g_scale > 0 and s.sampler != "spaced" and (version is not None or "sampler" in extra):
            raise TaskError(f"restoration guidance (g_scale > 0) is applied by the 'spaced' sampler only, "
                            f"not {s.sampler!r}")
        return s

    # -- restoration -------------------------------------------------------------------------
    @torch.no_grad()
    def restore_tensor(self, y: torch.Tensor, task: str, operator=None, steps: int | None = None,
                       seed: int | None = None, progress=None, scale: float | None = 4, **options) -> torch.Tensor:
        """(b,3,h,w) in [0,1] -> (b * n_samples, 3, H, W); ``seed`` None is the official default 231."""
        s, upscale = self._prepare(task, steps, scale, options)
        gen = torch.Generator().manual_seed(231 if seed is None else int(seed))
        pos = self._caption_prompt(y, s)
        self.pipeline.controlnet = self.controlnet_for(task)
        net, kind = self.stage1_for(task)
        if task == "unaligned_face":
            from .face import restore_unaligned_faces

            return restore_unaligned_faces(self, y, s, upscale, gen, progress, pos)
        return self.run_samples(y, s, net, kind, upscale, gen, progress, pos)

    def _prepare(self, task: str, steps, scale, options: dict) -> tuple[DiffBIRSettings, float]:
        """Checks the task, applies ``precision`` / ``torch_dtype``; returns the settings and the upscale factor."""
        self.check_task(task)
        check_version_task(self.version, task)
        options = dict(options)
        upscale = float(options.pop("upscale", None) or scale or 4)
        precision, dtype = options.pop("precision", None), options.pop("torch_dtype", None)
        self.set_precision(precision if precision is not None else dtype)
        return self.make_config(task, steps, **options), upscale

    supports_batch = True

    @torch.no_grad()
    def restore_batch(self, ys, ops=None, seeds=None, *, task: str, steps: int | None = None, progress=None,
                      scale: float | None = 4, **options) -> list[torch.Tensor]:
        """Restore the (1, 3, h, w) images ``ys`` (image k with seed ``seeds[k]``, None: 231): same-size images go
        through both stages together (one UNet / ControlNet call per step for the group), each drawing its noise
        from its own generator, so image k gets what ``restore_tensor(ys[k], seed=seeds[k])`` gives it.
        ``unaligned_face`` and ``n_samples`` > 1 restore image by image. DiffBIR is blind: ``ops`` is unused."""
        from ...api import per_image_operators, same_size_groups

        n = len(ys)
        per_image_operators(ops, n)
        s, upscale = self._prepare(task, steps, scale, options)
        if task == "unaligned_face" or s.n_samples > 1 or n == 1:
            return super().restore_batch(ys, ops, seeds, task=task, steps=steps, progress=progress, scale=scale,
                                         **options)
        ys, plan = same_size_groups(ys, seeds, device=self.device, default_seed=231)
        self.pipeline.controlnet = self.controlnet_for(task)
        net, kind = self.stage1_for(task)
        outs: list = [None] * n
        for idx, gens in plan:
            pos = [self._caption_prompt(ys[k], s) for k in idx]  # one prompt per image (its caption, if any)
            out = self.pipeline.run(torch.cat([ys[k] for k in idx]), s, net, kind, upscale, gens, progress, pos)
            for j, k in enumerate(idx):
                outs[k] = out[j:j + 1]
        return outs

    def set_precision(self, precision) -> None:
        """``fp32`` | ``fp16`` | ``bf16`` (or a torch dtype): the UNet and ControlNet weights' dtype and the
        autocast dtype of the pipeline (upstream's ``--precision``); None keeps the current one."""
        if precision is None:
            return
        dtype = precision_dtype(precision)
        if dtype != self.pipeline.dtype:
            for m in (self.pipeline.unet, self.pipeline.controlnet, *self._controlnets.values()):
                _cast(m, dtype)
            self.pipeline.dtype = dtype

    def run_samples(self, y, s, net, kind, upscale, gen, progress, pos, pre_resized=False):
        """``n_samples`` results of each image, in batches of ``batch_size`` copies, as the official loop."""
        outs = []
        for img in y:
            done = 0
            while done < s.n_samples:
                n = min(s.batch_size, s.n_samples - done)
                outs.append(self.pipeline.run(img[None].expand(n, -1, -1, -1), s, net, kind, upscale, gen, progress,
                                              pos, pre_resized=pre_resized))
                done += n
        return torch.cat(outs)

    def _caption_prompt(self, y, s):
        if s.captioner == "none":
            return s.pos_prompt
        from .caption import caption_prompt

        return caption_prompt(s.captioner, y, s.pos_prompt, self.device)


#: DiffBIRSettings field -> its default, whose type an option's value is read as (as the CLI reads --opt values)
_FIELD_DEFAULTS = {f.name: f.default for f in fields(DiffBIRSettings)}
#: ranges of numeric options beyond "finite" ("whole" for the int ones); steps, batch_size, n_samples, noise_aug and
#: the VAE encoder / ControlNet tile sizes are checked on the settings (DiffBIR._settings), with their own messages
_RANGES = {"cleaner_tile_size": dict(lo=1), "cleaner_tile_stride": dict(lo=1), "vae_decoder_tile_size": dict(lo=8),
           "order": dict(lo=1), "g_repeat": dict(lo=1), "eta": dict(lo=0), "s_churn": dict(lo=0),
           "s_noise": dict(lo=0), "strength": dict(lo=0)}


def option_value(key: str, value, default=None):
    """``value`` read as DiffBIR option ``key`` (the type of its default, or of ``default``; text where the default
    is not a bool or a number) by :func:`restorekit.errors.coerce_option`, as the CLI reads --opt values, with the
    ranges of :data:`_RANGES`; or a one-line :class:`TaskError`."""
    d = _FIELD_DEFAULTS[key] if default is None else default
    if not isinstance(d, (bool, int, float)):
        d = ""
    if key == "s_tmax" and isinstance(value, (str, float)):
        try:
            if float(value) == math.inf:
                return math.inf  # k-diffusion's default: churn at every noise level
        except ValueError:
            pass
    return coerce_option(key, value, d, error=TaskError, **_RANGES.get(key, {}))


def precision_dtype(precision) -> torch.dtype:
    """``fp32`` | ``fp16`` | ``bf16`` (or one of their torch dtypes) as a torch dtype, or a one-line TaskError."""
    dtype = PRECISIONS.get(precision, precision) if isinstance(precision, str) else precision
    if dtype not in PRECISIONS.values():
        raise TaskError(f"unknown precision {precision!r}; choose fp32, fp16 or bf16")
    return dtype


def load_version(card: ModelCard | None, version) -> str:
    """The DiffBIR version ``from_pretrained`` loads: its ``version=``, else the card's, else v2.1."""
    card_version = card.options.get("version") if card else None
    if version is not None and card_version is not None and version != card_version:
        raise TaskError(f"model {card.name!r} is DiffBIR {card_version}, not {version}")
    version = version or card_version or "v2.1"
    if version not in VERSIONS:
        raise TaskError(f"unknown DiffBIR version {version!r}; choose {', '.join(VERSIONS)}")
    return version


def check_version_task(version: str, task: str) -> None:
    if (version, task) not in PLAN:
        raise TaskError(f"DiffBIR {version} does not do task {task!r}"
                        + ("; use v2 or v2.1" if task == "unaligned_face" else ""))


def _source(c: ModelCard) -> str:
    return c.sources[0] if c.sources else "?"


def _load_controlnet(path: Path, unet, dtype):
    from .convert import controlnet_from_ldm
    from .ircontrolnet import IRControlNet

    sd, _ = load_state_dict(path)
    if any(k.startswith("control_model.") for k in sd):
        other = [k for k in sd if not k.startswith("control_model.")]
        if other:
            raise WeightsError(f"{path}: {len(other)} keys outside control_model.*, e.g. {other[:3]}")
    with torch.device("meta"):
        net = IRControlNet.from_unet_config(unet)
    conv = controlnet_from_ldm(sd, {"layers_per_block": 2})
    n_src = len(sd)
    if len(conv) != n_src:
        raise WeightsError(f"{path}: {n_src - len(conv)} tensors were not used by the ControlNet conversion")
    del sd
    return _load_assign(net, conv, str(path), dtype).eval().requires_grad_(False)


def _load_stage1(name: str, path: Path, device) -> torch.nn.Module:
    net = STAGE1[name][0]()
    sd, _ = load_state_dict(path)
    if sd and all(k.startswith("module.") for k in sd):
        sd = {k[len("module."):]: v for k, v in sd.items()}
    load_strict(net, sd, str(path))
    return net.to(device).eval().requires_grad_(False)


class SpandrelStage1(torch.nn.Module):
    """A stage-1 restorer loaded by spandrel, called as spandrel's ``ImageModelDescriptor`` (input padded to the
    model's size requirements, output clamped to [0, 1] and cropped); ``scale`` is the model's upscaling factor."""

    def __init__(self, desc, source: str):
        super().__init__()
        self.model = desc.model
        self.scale = int(desc.scale)
        self.architecture = str(desc.architecture.name)
        self.source = source
        self._desc = desc

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # spandrel's call runs in inference mode; clone so later autograd (restoration guidance) may use the result
        return self._desc(x).clone()


def load_stage1_file(path, device=None) -> tuple[SpandrelStage1, str]:
    """Any model file spandrel loads -> (network, pipeline kind). The kind follows the model's scale: a x1 model
    runs on the LQ image already resized by ``upscale`` (as SCUNet in the official pipeline); a model that
    upscales runs on the LQ image and its result is resized to ``upscale`` x the LQ size (as BSRNet).

    Loading is strict: spandrel loads the converted state dict with ``strict=True``, and every tensor of the file
    must reach the network (same count and total size), otherwise a :class:`WeightsError` names the file and the
    keys. The model must map 3 channels to 3 channels."""
    import spandrel

    from ...nets._compat import meshgrid_default_indexing

    p = Path(path)
    sd, _ = load_state_dict(p)
    if not isinstance(sd, dict):
        raise WeightsError(f"{p}: not a state dict (a {type(sd).__name__})")
    sd = spandrel.canonicalize_state_dict(sd)
    bad = [k for k, v in sd.items() if not isinstance(v, torch.Tensor)]
    if bad or not sd:
        raise WeightsError(f"{p}: not a state dict of tensors" + (f" (non-tensor entries {bad[:3]})" if bad else ""))
    try:
        with meshgrid_default_indexing():  # spandrel's SwinIR / HAT / Swin2SR call torch.meshgrid without indexing=
            desc = spandrel.ModelLoader(device="cpu").load_from_state_dict(dict(sd))
    except spandrel.UnsupportedModelError:
        raise WeightsError(f"{p}: spandrel does not recognise this model's architecture") from None
    except Exception as e:  # noqa: BLE001  (a recognised architecture whose tensors do not fit, or malformed)
        msg = one_line(e) or "no message"
        raise WeightsError(f"{p}: spandrel cannot load it ({type(e).__name__}: {msg[:400]})") from None
    if not isinstance(desc, spandrel.ImageModelDescriptor):
        raise WeightsError(f"{p}: a {desc.architecture.name} model ({desc.purpose}) is not an image-to-image "
                           f"restorer and cannot be a DiffBIR stage 1")
    if desc.input_channels != 3 or desc.output_channels != 3:
        raise WeightsError(f"{p}: a DiffBIR stage 1 maps RGB to RGB, but this {desc.architecture.name} model takes "
                           f"{desc.input_channels} and gives {desc.output_channels} channels")
    own = desc.model.state_dict()
    n_file, n_own = sum(v.numel() for v in sd.values()), sum(v.numel() for v in own.values())
    if len(own) != len(sd) or n_own != n_file:
        unused = _unused_tensors(sd, own)
        raise WeightsError(f"{p}: spandrel's {desc.architecture.name} network uses {len(own)} tensors "
                           f"({n_own} values) of the file's {len(sd)} ({n_file} values); keys not in the network, "
                           f"e.g. {unused[:3]}")
    net = SpandrelStage1(desc, str(p)).to(device or "cpu").eval().requires_grad_(False)
    return net, ("scunet" if desc.scale == 1 else "bsrnet")


def _unused_tensors(sd: dict, own: dict) -> list[str]:
    """Keys of ``sd`` whose tensor appears nowhere in ``own`` (same shape and values; names may differ)."""
    by_shape: dict = {}
    for v in own.values():
        by_shape.setdefault(tuple(v.shape), []).append(v)
    return [k for k, v in sd.items()
            if not any(torch.equal(v.to(o.dtype), o) for o in by_shape.get(tuple(v.shape), []))]


def _stage1_factories():
    """Networks are built on spandrel's architectures (imported when a stage 1 is first built)."""

    def bsrnet():
        from ...nets.bsrnet import RRDBNet

        return RRDBNet()

    def swinir():
        from ...nets.swinir import SwinIR, SwinIRConfig

        return SwinIR(SwinIRConfig())

    def scunet():
        from ...nets.scunet import SCUNet

        return SCUNet()

    swin = (swinir, "swinir")
    return {"bsrnet": (bsrnet, "bsrnet"), "swinir-general": swin, "swinir-realesrgan": swin,
            "swinir-face": swin, "scunet-psnr": (scunet, "scunet")}


#: stage-1 model card -> (() -> network, pipeline kind)
STAGE1 = _stage1_factories()

#: files of the default task (sr) per version, for 'restorekit models'
DEFAULT_COMPONENTS = {v: {"sd": SD_CARD[v], "controlnet": PLAN[(v, "sr")]["controlnet"],
                          "stage1": PLAN[(v, "sr")]["stage1"], "tokenizer_vocab": TOKENIZER_CARDS[0],
                          "tokenizer_merges": TOKENIZER_CARDS[1]} for v in VERSIONS}
