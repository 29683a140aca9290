"""DiffIR: efficient diffusion model for image restoration (compact IR prior + DIRformer)."""

from ...registry import register_card
from ...weights import ModelCard
from .restorer import DiffIR, convert_checkpoint, infer_config

for _task, _what in (("sr", "4x super-resolution (half plain bicubic, half Real-ESRGAN second-order degradations)"),
                     ("deblur", "motion deblurring (random camera-shake kernels + noise)"),
                     ("inpaint", "inpainting (random boxes and strokes)")):
    register_card(ModelCard(
        name=f"diffir-demo-{_task}", method="diffir", filename=f"diffir_demo_{_task}.safetensors",
        bundled=f"diffir_demo_{_task}.safetensors", demo=True,
        description=f"DEMO QUALITY: small DiffIR (stage 2, ~4 M parameters) for {_what}, trained by restorekit "
                    f"for a few minutes on one GPU on BSD200 (the BSDS300 training images, minus 302003 which is in "
                    f"Set5) with 'restorekit train --method diffir' (configs/diffir/demo_{_task}.yaml). "
                    f"Official checkpoints: Google Drive folders linked from Zj-BinXia/DiffIR's README; "
                    f"pass the .pth with --weights (the model is recognised from its tensor shapes)."))

__all__ = ["DiffIR", "convert_checkpoint", "infer_config"]
