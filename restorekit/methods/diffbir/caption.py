"""Optional captions for the positive prompt, as DiffBIR's ``--captioner`` (``diffbir/utils/caption.py``).

``captioner="none"`` (default) adds nothing. ``"llava"`` is LLaVA-1.5-7B through transformers
(``llava-hf/llava-1.5-7b-hf``, the transformers port of the official ``liuhaotian/llava-v1.5-7b``), asked the
official question greedily; any other value is used as a transformers image-text-to-text model id or folder.
The caption of the LQ image is joined before the positive prompt: ``", ".join([caption, pos_prompt])``
(empty parts dropped), as the official loop does. RAM (``"ram"``) has no transformers port.
"""

from __future__ import annotations

import torch

from ...errors import TaskError, WeightsError, first_line

LLAVA_ID = "llava-hf/llava-1.5-7b-hf"
QUESTION = "Please give me a very short description of this image."
_CACHE: dict = {}


def join_prompt(caption: str, pos_prompt: str) -> str:
    return ", ".join(t for t in (caption, pos_prompt) if t)


def check_captioner(name) -> None:
    """Refuse a ``captioner`` no model can serve (``ram``, an empty name) before any weights are read; whether a
    model id exists is known only when it loads (:func:`load_captioner`)."""
    if name == "ram":
        raise TaskError("captioner 'ram' (Recognize Anything) has no transformers port; use captioner='llava' or a "
                        "transformers image-text-to-text model id")
    if not isinstance(name, str) or not name.strip():
        raise TaskError(f"captioner {name!r}: use 'none', 'llava' or a transformers image-text-to-text model id")


def load_captioner(name: str, device):
    check_captioner(name)
    model_id = LLAVA_ID if name == "llava" else name
    key = (model_id, str(device))
    if key not in _CACHE:
        from transformers import pipeline

        try:
            _CACHE[key] = pipeline("image-text-to-text", model=model_id, device=device)
        except (OSError, ValueError) as e:
            raise WeightsError(f"captioner model {model_id!r} is not available on this machine (offline or unknown "
                               f"id): {first_line(e, 200)}. Download it with the Hugging Face hub while "
                               f"online, or use captioner='none'.") from None
    return _CACHE[key]


def caption_prompt(name: str, lq: torch.Tensor, pos_prompt: str, device) -> str:
    """The positive prompt with the caption of the (first) LQ image in front."""
    from PIL import Image

    pipe = load_captioner(name, device)
    arr = (lq[0].clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    msgs = [{"role": "user", "content": [{"type": "image", "image": Image.fromarray(arr)},
                                         {"type": "text", "text": QUESTION}]}]
    out = pipe(text=msgs, max_new_tokens=512, do_sample=False, return_full_text=False)
    text = out[0]["generated_text"] if isinstance(out, list) else out["generated_text"]
    if isinstance(text, list):  # chat format: the assistant's reply
        text = text[-1]["content"]
    return join_prompt(str(text).strip(), pos_prompt)
