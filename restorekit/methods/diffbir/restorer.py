"""DiffBIR behind the Restorer interface: stage 1 (BSRNet) + IRControlNet-guided SD 2.1 (stage 2)."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

import torch

from ...api import Restorer
from ...errors import TaskError, WeightsError
from ...registry import get_card, register_method
from ...weights import ModelCard, load_state_dict, load_strict, resolve_card
from .pipeline import DiffBIRPipeline, DiffBIRSettings


def make_encode_prompt(text_encoder, tokenizer, device):
    cache: dict = {}

    @torch.no_grad()
    def encode(prompts: list[str]) -> torch.Tensor:
        key = tuple(prompts)
        if key not in cache:
            ids = tokenizer(list(prompts), padding="max_length", max_length=tokenizer.model_max_length,
                            truncation=True, return_tensors="pt").input_ids.to(device)
            cache[key] = text_encoder(ids)[0].float()
        return cache[key]

    return encode


@register_method
class DiffBIR(Restorer):
    """Blind image restoration: a stage-1 restorer, then Stable Diffusion + IRControlNet."""

    name = "diffbir"
    tasks = ("sr",)
    blind = True
    default_model = "diffbir-v2"

    def __init__(self, pipeline: DiffBIRPipeline, version: str = "v2", device=None):
        super().__init__(device)
        self.pipeline, self.version = pipeline, version
        pipeline.device = self.device
        for m in (pipeline.unet, pipeline.controlnet, pipeline.vae, pipeline.stage1):
            if isinstance(m, torch.nn.Module):
                m.to(self.device).eval().requires_grad_(False)

    @classmethod
    def from_components(cls, unet, controlnet, vae, text_encoder=None, tokenizer=None, stage1=None, stage1_sf=4,
                        version="v2", device=None, encode_prompt=None) -> "DiffBIR":
        dev = torch.device(device) if device else torch.device("cuda" if torch.cuda.is_available() else "cpu")
        if encode_prompt is None:
            text_encoder = text_encoder.to(dev).eval()
            encode_prompt = make_encode_prompt(text_encoder, tokenizer, dev)
        pipe = DiffBIRPipeline(unet, controlnet, vae, encode_prompt, stage1, stage1_sf, dev)
        return cls(pipe, version, dev)

    @classmethod
    def _from_weights(cls, path: Path, card: ModelCard | None, device=None, **kwargs):
        """``path``: the IRControlNet file (from a card) or a folder holding all component files."""
        from diffusers import AutoencoderKL, UNet2DConditionModel
        from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

        from .convert import SD21_TEXT, SD21_UNET, SD21_VAE, controlnet_from_ldm, sd_from_ldm
        from .ircontrolnet import IRControlNet

        version = (card.options.get("version") if card else None) or kwargs.pop("version", "v2")
        comps = dict(card.options.get("components", {})) if card else dict(DEFAULT_COMPONENTS[version])
        stage1_name = kwargs.pop("stage1", None)
        if stage1_name is not None:
            if stage1_name not in STAGE1:
                raise TaskError(f"unknown DiffBIR stage-1 model {stage1_name!r}; choose {', '.join(STAGE1)}")
            comps["stage1"] = stage1_name
        if kwargs:
            raise TypeError(f"unexpected options for DiffBIR.from_pretrained: {sorted(kwargs)}")
        folder = Path(path) if Path(path).is_dir() else None

        paths, missing = {}, []
        for component, card_name in comps.items():
            if component == "controlnet" and folder is None:
                paths[component] = Path(path)
                continue
            c = get_card(card_name)
            try:
                if folder is not None:
                    p = folder / c.filename
                    if not p.exists():
                        raise WeightsError(f"'{c.filename}' (from {c.sources[0] if c.sources else '?'})")
                    paths[component] = p
                else:
                    paths[component] = resolve_card(c)
            except WeightsError as e:
                missing.append(f"{component}: {str(e).splitlines()[0]}")
        if missing:
            where = folder or "the restorekit cache (see 'restorekit models')"
            raise WeightsError(f"DiffBIR {version} needs files that are not in {where}:\n  " + "\n  ".join(missing))
        cn_path, sd_path, st1_path = paths["controlnet"], paths["sd"], paths["stage1"]
        tok_dir = paths["tokenizer_vocab"].parent
        if paths["tokenizer_merges"].parent != tok_dir:
            raise WeightsError("vocab.json and merges.txt must be in the same folder")
        unet = UNet2DConditionModel(**SD21_UNET)
        vae = AutoencoderKL(**SD21_VAE)
        text = CLIPTextModel(CLIPTextConfig(**SD21_TEXT))
        sd, _ = load_state_dict(sd_path)
        u, v, t = sd_from_ldm(sd, text_encoder=text)
        load_strict(unet, u, str(sd_path))
        load_strict(vae, v, str(sd_path))
        if t is None:
            raise WeightsError(f"{sd_path} holds no OpenCLIP text encoder (cond_stage_model.model.*)")
        text.load_state_dict(t, strict=False)
        controlnet = IRControlNet.from_unet_config(unet)
        cn_sd, _ = load_state_dict(cn_path)
        load_strict(controlnet, controlnet_from_ldm(cn_sd, {"layers_per_block": 2}), str(cn_path))
        stage1, stage1_sf = STAGE1[comps["stage1"]]()
        st1_sd, _ = load_state_dict(st1_path)
        st1_sd = {(k[len("module."):] if k.startswith("module.") else k): v for k, v in st1_sd.items()}
        load_strict(stage1, st1_sd, str(st1_path))
        tok = CLIPTokenizer(str(tok_dir / "vocab.json"), str(tok_dir / "merges.txt"), pad_token="!")
        return cls.from_components(unet, controlnet, vae, text, tok, stage1, stage1_sf, version, device)

    def make_config(self, task: str, steps: int | None = None, **options) -> DiffBIRSettings:
        names = {f.name for f in fields(DiffBIRSettings)}
        extra = {}
        for k, v in options.items():
            if v is None or k in ("scale", "noise_level", "noise"):
                continue
            if k not in names:
                raise TaskError(f"option {k!r} does not apply to DiffBIR; options are {', '.join(sorted(names))}")
            extra[k] = v
        s = DiffBIRSettings.for_version(self.version, steps=steps, **extra)
        choices = {"start_point": ("noise", "cond", "low_freq"), "guidance_space": ("latent", "rgb"),
                   "guidance_loss": ("mse", "w_mse"), "color_fix": ("wavelet", "none")}
        for k, allowed in choices.items():
            if getattr(s, k) not in allowed:
                raise TaskError(f"DiffBIR option {k}={getattr(s, k)!r}; choose one of {', '.join(allowed)}")
        if s.steps < 1 or s.tile_size % 64 or s.tile_stride < 8:
            raise TaskError("DiffBIR needs steps >= 1, tile_size a multiple of 64 and tile_stride >= 8")
        return s

    @torch.no_grad()
    def restore_tensor(self, y: torch.Tensor, task: str, operator=None, steps: int | None = None,
                       seed: int | None = None, progress=None, scale: int = 4, **options) -> torch.Tensor:
        self.check_task(task)
        s = self.make_config(task, steps, **options)
        h, w = y.shape[-2:]
        out = self.pipeline(y.to(self.device, torch.float32), (h * int(scale), w * int(scale)), s,
                            seed=0 if seed is None else int(seed), progress=progress)
        return out


def _stage1_factories():
    from ...nets.bsrnet import RRDBNet
    from ...nets.scunet import SCUNet
    from ...nets.swinir import SwinIR, SwinIRConfig

    return {"bsrnet": lambda: (RRDBNet(), 4), "swinir-general": lambda: (SwinIR(SwinIRConfig()), 1),
            "swinir-realesrgan": lambda: (SwinIR(SwinIRConfig()), 1), "scunet-psnr": lambda: (SCUNet(), 1)}


#: stage-1 model card -> () -> (network, its upscaling factor)
STAGE1 = _stage1_factories()

DEFAULT_COMPONENTS = {
    v: {"sd": "sd-v2.1-base", "controlnet": f"diffbir-{v}-controlnet", "stage1": "bsrnet",
        "tokenizer_vocab": "sd-v2.1-tokenizer-vocab", "tokenizer_merges": "sd-v2.1-tokenizer-merges"}
    for v in ("v1", "v2")
}
DEFAULT_COMPONENTS["v1"]["stage1"] = "swinir-general"
DEFAULT_COMPONENTS["v2.1"] = {**DEFAULT_COMPONENTS["v2"], "sd": "sd-v2.1-base-zsnr",
                              "controlnet": "diffbir-v2.1-controlnet", "stage1": "swinir-realesrgan"}
