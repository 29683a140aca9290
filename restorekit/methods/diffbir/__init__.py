"""DiffBIR: blind image restoration with a generative diffusion prior (stage 1 + IRControlNet on SD 2.1)."""

from ...registry import get_card as _get
from ...registry import register_card
from ...weights import ModelCard
from . import face  # noqa: F401  (registers the facexlib weight cards)
from .ircontrolnet import IRControlNet
from .pipeline import DiffBIRPipeline, DiffBIRSettings
from .restorer import DEFAULT_COMPONENTS, PLAN, DiffBIR

# download sources: DiffBIR's diffbir/inference/pretrained_models.py (MODELS)
_HF = "hf://lxq007/DiffBIR-v2/"
for name, fn, src, desc in [
    ("sd-v2.1-base", "v2-1_512-ema-pruned.ckpt", "hf://stabilityai/stable-diffusion-2-1-base/v2-1_512-ema-pruned.ckpt",
     "Stable Diffusion 2.1-base (ldm checkpoint), DiffBIR v1/v2's generative prior (sd_v2.1)"),
    ("sd-v2.1-base-zsnr", "sd2.1-base-zsnr-laionaes5.ckpt", _HF + "sd2.1-base-zsnr-laionaes5.ckpt",
     "SD 2.1-base fine-tuned for zero terminal SNR (DiffBIR v2.1, sd_v2.1_zsnr)"),
    ("sd-v2.1-tokenizer-vocab", "vocab.json", "hf://stabilityai/stable-diffusion-2-1-base/tokenizer/vocab.json",
     "CLIP BPE vocabulary of SD 2.1"),
    ("sd-v2.1-tokenizer-merges", "merges.txt", "hf://stabilityai/stable-diffusion-2-1-base/tokenizer/merges.txt",
     "CLIP BPE merges of SD 2.1"),
    ("diffbir-v1-controlnet", "v1_general.pth", _HF + "v1_general.pth", "DiffBIR v1 IRControlNet (general, v1_general)"),
    ("diffbir-v1-face-controlnet", "v1_face.pth", _HF + "v1_face.pth", "DiffBIR v1 IRControlNet for faces (v1_face)"),
    ("diffbir-v2-controlnet", "v2.pth", _HF + "v2.pth", "DiffBIR v2 IRControlNet (all tasks)"),
    ("diffbir-v2.1-controlnet", "DiffBIR_v2.1.pt", _HF + "DiffBIR_v2.1.pt", "DiffBIR v2.1 IRControlNet (all tasks)"),
    ("bsrnet", "BSRNet.pth", "https://github.com/cszn/KAIR/releases/download/v1.0/BSRNet.pth",
     "BSRNet (BSRGAN's RRDBNet), DiffBIR v2's stage 1 for sr and unaligned_face backgrounds"),
    ("swinir-general", "general_swinir_v1.ckpt", "hf://lxq007/DiffBIR/general_swinir_v1.ckpt",
     "SwinIR trained by DiffBIR on ImageNet with Real-ESRGAN degradations (v1 stage 1 for sr and denoise)"),
    ("swinir-realesrgan", "realesrgan_s4_swinir_100k.pth", _HF + "realesrgan_s4_swinir_100k.pth",
     "SwinIR, DiffBIR v2.1's stage 1 for sr, denoise and unaligned_face backgrounds"),
    ("swinir-face", "face_swinir_v1.ckpt", "hf://lxq007/DiffBIR/face_swinir_v1.ckpt",
     "SwinIR pre-trained on FFHQ (from DifFace), the stage 1 for face and unaligned_face crops (all versions)"),
    ("scunet-psnr", "scunet_color_real_psnr.pth",
     "https://github.com/cszn/KAIR/releases/download/v1.0/scunet_color_real_psnr.pth",
     "SCUNet-PSNR, DiffBIR v2's stage 1 for denoise"),
]:
    register_card(ModelCard(name=name, method="diffbir-component", filename=fn, sources=[src], description=desc))

for v in ("v1", "v2", "v2.1"):
    cn = DEFAULT_COMPONENTS[v]["controlnet"]
    c = _get(cn)
    register_card(ModelCard(
        name=f"diffbir-{v}", method="diffbir", filename=c.filename, sources=list(c.sources),
        options={"version": v, "controlnet": cn, "components": DEFAULT_COMPONENTS[v]},
        description=f"DiffBIR {v} (tasks sr, face, denoise{'' if v == 'v1' else ', unaligned_face'}): SD 2.1-base"
                    f"{' zsnr (v-prediction)' if v == 'v2.1' else ''} + IRControlNet {v}; sr uses "
                    f"{DEFAULT_COMPONENTS[v]['stage1']}. Needs 5 files for sr (~6 GB), one more per other task; "
                    f"no demo model is bundled."))

__all__ = ["PLAN", "DiffBIR", "DiffBIRPipeline", "DiffBIRSettings", "IRControlNet"]
