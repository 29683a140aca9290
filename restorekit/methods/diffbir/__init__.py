"""DiffBIR: blind image restoration with a generative diffusion prior (stage 1 + IRControlNet on SD 2.1)."""

from ...registry import register_card
from ...weights import ModelCard
from .ircontrolnet import IRControlNet
from .pipeline import DiffBIRPipeline, DiffBIRSettings
from .restorer import DEFAULT_COMPONENTS, DiffBIR

_HF = "hf://lxq007/DiffBIR-v2/"
for name, fn, src, desc in [
    ("sd-v2.1-base", "v2-1_512-ema-pruned.ckpt", "hf://stabilityai/stable-diffusion-2-1-base/v2-1_512-ema-pruned.ckpt",
     "Stable Diffusion 2.1-base (ldm checkpoint), DiffBIR v1/v2's generative prior"),
    ("sd-v2.1-base-zsnr", "sd2.1-base-zsnr-laionaes5.ckpt", _HF + "sd2.1-base-zsnr-laionaes5.ckpt",
     "SD 2.1-base fine-tuned for zero terminal SNR (DiffBIR v2.1)"),
    ("sd-v2.1-tokenizer-vocab", "vocab.json", "hf://stabilityai/stable-diffusion-2-1-base/tokenizer/vocab.json",
     "CLIP BPE vocabulary of SD 2.1"),
    ("sd-v2.1-tokenizer-merges", "merges.txt", "hf://stabilityai/stable-diffusion-2-1-base/tokenizer/merges.txt",
     "CLIP BPE merges of SD 2.1"),
    ("diffbir-v1-controlnet", "v1_general.pth", _HF + "v1_general.pth", "DiffBIR v1 IRControlNet (general)"),
    ("diffbir-v2-controlnet", "v2.pth", _HF + "v2.pth", "DiffBIR v2 IRControlNet"),
    ("diffbir-v2.1-controlnet", "DiffBIR_v2.1.pt", _HF + "DiffBIR_v2.1.pt", "DiffBIR v2.1 IRControlNet"),
    ("bsrnet", "BSRNet.pth", "https://github.com/cszn/KAIR/releases/download/v1.0/BSRNet.pth",
     "BSRNet (BSRGAN's RRDBNet), DiffBIR v2's stage-1 model for blind SR"),
    ("swinir-general", "general_swinir_v1.ckpt", "hf://lxq007/DiffBIR/general_swinir_v1.ckpt",
     "SwinIR (pixel-unshuffle variant) trained by DiffBIR on ImageNet with Real-ESRGAN degradations (v1 stage 1)"),
    ("swinir-realesrgan", "realesrgan_s4_swinir_100k.pth", _HF + "realesrgan_s4_swinir_100k.pth",
     "DiffBIR v2.1's stage-1 SwinIR"),
    ("scunet-psnr", "scunet_color_real_psnr.pth",
     "https://github.com/cszn/KAIR/releases/download/v1.0/scunet_color_real_psnr.pth",
     "SCUNet-PSNR, DiffBIR v2's stage-1 model for blind denoising (pass stage1='scunet-psnr')"),
]:
    register_card(ModelCard(name=name, method="diffbir-component", filename=fn, sources=[src], description=desc))

for v in ("v1", "v2", "v2.1"):
    register_card(ModelCard(
        name=f"diffbir-{v}", method="diffbir", filename=f"{'v1_general.pth' if v == 'v1' else 'v2.pth' if v == 'v2' else 'DiffBIR_v2.1.pt'}",
        sources=[f"{_HF}{'v1_general.pth' if v == 'v1' else 'v2.pth' if v == 'v2' else 'DiffBIR_v2.1.pt'}"],
        options={"version": v, "components": DEFAULT_COMPONENTS[v]},
        description=f"DiffBIR {v} blind SR: {DEFAULT_COMPONENTS[v]['stage1']} stage 1 + IRControlNet {v} on SD 2.1-base"
                    f"{' (zero terminal SNR, v-prediction)' if v == 'v2.1' else ''}. Needs 5 files (~6 GB), "
                    f"see 'restorekit models'; no demo model is bundled."))

__all__ = ["DiffBIR", "DiffBIRPipeline", "DiffBIRSettings", "IRControlNet"]
