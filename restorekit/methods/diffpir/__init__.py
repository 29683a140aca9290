"""DiffPIR: plug-and-play image restoration with a diffusion prior."""

from ...registry import register_card
from ...weights import ModelCard
from .restorer import DiffPIR, infer_unet_config
from .sampler import TASK_DEFAULTS, DiffPIRConfig, diffpir_sample, diffpir_sequence, diffpir_timesteps

register_card(ModelCard(
    name="diffpir-demo", method="diffpir", filename="diffpir_demo_prior.safetensors",
    bundled="diffpir_demo_prior.safetensors", demo=True,
    # tuned on T91 crops (neither training nor evaluation data; benchmarks/demo_vs_classical.py --tune): 30 NFE for
    # deblurring and SR, 100 NFE for inpainting (3.3 dB above 30 NFE there)
    options={"task_defaults": {
        "deblur": {"steps": 30, "lambda_": 2.0, "zeta": 1.0, "use_last_x0": True},
        "sr": {"steps": 30, "lambda_": 1.0, "zeta": 1.0, "use_last_x0": True},
        "inpaint": {"steps": 100, "lambda_": 1.0, "zeta": 1.0, "use_last_x0": True, "paste_observed": True}}},
    description="DEMO QUALITY: small guided-diffusion UNet (6.0 M parameters) trained by restorekit for 4 minutes "
                "(1940 steps) on one H100 on BSD200 (configs/diffpir/demo_prior.yaml), with its own option "
                "defaults (30 NFE; 100 for inpainting). Lets the CLI run offline; not for real results."))
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
