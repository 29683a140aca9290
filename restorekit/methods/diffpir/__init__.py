"""DiffPIR: plug-and-play image restoration with a diffusion prior."""

from ...registry import register_card
from ...weights import ModelCard
from .restorer import DiffPIR, infer_unet_config
from .sampler import TASK_DEFAULTS, DiffPIRConfig, diffpir_sample, diffpir_sequence, diffpir_timesteps

register_card(ModelCard(
    name="diffpir-demo", method="diffpir", filename="diffpir_demo_prior.safetensors",
    bundled="diffpir_demo_prior.safetensors", demo=True,
    description="DEMO QUALITY: tiny guided-diffusion UNet trained by restorekit on a few scikit-image "
                "sample photos (restorekit train prior). Lets the CLI run offline; not for real results."))
register_card(ModelCard(
    name="diffpir-ffhq", method="diffpir", filename="diffusion_ffhq_10m.pt",
    sources=["hf://deepinv/diffunet/diffusion_ffhq_10m.pt"], options={"unet": "ffhq_10m"},
    description="Official DiffPIR face prior (ILVR FFHQ 10M, 128 ch). Also on the DiffPIR Google Drive "
                "(model_zoo/README.md of yuanzhi-zhu/DiffPIR)."))
register_card(ModelCard(
    name="diffpir-imagenet", method="diffpir", filename="256x256_diffusion_uncond.pt",
    sources=["https://openaipublic.blob.core.windows.net/diffusion/jul-2021/256x256_diffusion_uncond.pt",
             "hf://deepinv/diffunet/diffusion_openai.pt"], options={"unet": "imagenet_256_uncond"},
    description="Official OpenAI ImageNet 256x256 unconditional prior (256 ch), as used by DiffPIR."))

__all__ = ["DiffPIR", "DiffPIRConfig", "TASK_DEFAULTS", "diffpir_sample", "diffpir_sequence", "diffpir_timesteps",
           "infer_unet_config"]
