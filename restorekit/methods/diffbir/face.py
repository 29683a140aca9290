"""DiffBIR's ``unaligned_face`` task (``UnAlignedBFRInferenceLoop``) with facexlib's face helper.

The LQ image is bicubic-upscaled by ``upscale``; facexlib's RetinaFace (ResNet-50) finds the faces and their five
landmarks (``resize=640``, ``eye_dist_threshold=5``), each face is warped to a 512 x 512 crop and restored with
the face stage 1 (SwinIR-face, no further resize); the background goes through the version's ``sr`` stage 1 and
stage 2; the restored faces are pasted back with the inverse affine transforms and ParseNet face masks.
As DiffBIR's helper, inputs with a short edge below 512 are enlarged to 512 (bilinear) before detection.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import torch

from ...errors import WeightsError
from ...registry import get_card, register_card
from ...weights import ModelCard, resolve_card

_FACEXLIB = [
    ("facexlib-retinaface-resnet50", "detection_Resnet50_Final.pth",
     "https://github.com/xinntao/facexlib/releases/download/v0.1.0/detection_Resnet50_Final.pth",
     "facexlib RetinaFace (ResNet-50) face detector, used by DiffBIR's unaligned_face task"),
    ("facexlib-parsenet", "parsing_parsenet.pth",
     "https://github.com/xinntao/facexlib/releases/download/v0.2.2/parsing_parsenet.pth",
     "facexlib ParseNet face parser (paste-back masks), used by DiffBIR's unaligned_face task"),
]
for _n, _f, _u, _d in _FACEXLIB:
    register_card(ModelCard(name=_n, method="diffbir-component", filename=_f, sources=[_u], description=_d))


def facexlib_weights_dir(download: bool = True) -> str:
    """A folder holding both facexlib weight files (resolved like every restorekit weight file)."""
    paths = []
    for name, fn, _, _ in _FACEXLIB:
        try:
            paths.append(resolve_card(get_card(name), download=download))
        except WeightsError as e:
            raise WeightsError(f"the unaligned_face task needs facexlib's {fn}:\n{e}") from None
    if len({p.parent for p in paths}) == 1:
        return str(paths[0].parent)
    d = Path(tempfile.mkdtemp(prefix="restorekit_facexlib_"))
    for p in paths:
        os.symlink(p.resolve(), d / p.name)
    return str(d)


def make_face_helper(device):
    try:
        from facexlib.utils.face_restoration_helper import FaceRestoreHelper
    except ImportError:
        from ...errors import TaskError

        raise TaskError("the unaligned_face task needs facexlib: pip install facexlib") from None
    root = facexlib_weights_dir()
    return FaceRestoreHelper(upscale_factor=1, face_size=512, crop_ratio=(1, 1), det_model="retinaface_resnet50",
                             save_ext="png", use_parse=True, device=device, model_rootpath=root)


def _to_u8(x: torch.Tensor) -> np.ndarray:
    """(3,h,w) in [0,1] on the 8-bit grid -> HxWx3 uint8 RGB."""
    return (x.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()


def restore_unaligned_faces(restorer, y: torch.Tensor, s, upscale: float, gen, progress, pos_prompt):
    import cv2

    from .pipeline import pil_bicubic_resize

    if restorer.face_helper_factory is not None:
        helper = restorer.face_helper_factory()
    else:
        helper = make_face_helper(restorer.device)
    bg_net, bg_kind = restorer.stage1_for("unaligned_face")
    face_net, _ = restorer.stage1_for("unaligned_face", face=True)
    results = []
    for img in y:
        helper.clean_all()
        up = _to_u8(pil_bicubic_resize(img[None], upscale)[0])
        bgr = cv2.cvtColor(up, cv2.COLOR_RGB2BGR)
        if min(bgr.shape[:2]) < 512:
            f = 512.0 / min(bgr.shape[:2])
            bgr = cv2.resize(bgr, (0, 0), fx=f, fy=f, interpolation=cv2.INTER_LINEAR)
        helper.read_image(bgr)
        helper.get_face_landmarks_5(resize=640, eye_dist_threshold=5)
        helper.align_warp_face()
        faces = []
        for crop in helper.cropped_faces:  # BGR uint8 512 x 512
            t = torch.from_numpy(cv2.cvtColor(crop, cv2.COLOR_BGR2RGB)).permute(2, 0, 1).float()[None] / 255
            faces.append(restorer.run_samples(t, s, face_net, "swinir", 1.0, gen, progress, pos_prompt,
                                              pre_resized=True))
        bg = restorer.run_samples(img[None], s, bg_net, bg_kind, upscale, gen, progress, pos_prompt)
        helper.get_inverse_affine()
        for k in range(bg.shape[0]):
            helper.restored_faces = []
            for f in faces:
                helper.add_restored_face(cv2.cvtColor(_to_u8(f[k]), cv2.COLOR_RGB2BGR))
            bg_bgr = cv2.cvtColor(_to_u8(bg[k]), cv2.COLOR_RGB2BGR)
            if bg_bgr.shape[:2] != helper.input_img.shape[:2]:
                bg_bgr = cv2.resize(bg_bgr, helper.input_img.shape[1::-1], interpolation=cv2.INTER_LINEAR)
            out = helper.paste_faces_to_input_image(upsample_img=bg_bgr)
            out = cv2.resize(out, (bg.shape[-1], bg.shape[-2]), interpolation=cv2.INTER_LINEAR) \
                if out.shape[:2] != tuple(bg.shape[-2:]) else out
            results.append(torch.from_numpy(cv2.cvtColor(out, cv2.COLOR_BGR2RGB)).permute(2, 0, 1).float() / 255)
    return torch.stack(results).to(y.device)
