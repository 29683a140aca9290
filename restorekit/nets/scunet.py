"""SCUNet (Zhang et al. 2023), DiffBIR v2's stage-1 model for blind denoising, on spandrel's SCUNet architecture.

spandrel's ``SCUNet`` has the official key names (``m_head``, ``m_down1..3``, ``m_body``, ``m_up3..1``, ``m_tail``;
``msa.relative_position_params`` stored as (heads, 2w-1, 2w-1)). It pads the input to a multiple of 64 by
reflection; the official network (DiffBIR ``diffbir/model/scunet.py``) replicates the border, so :class:`SCUNet`
replicate-pads first (spandrel's padding is then a no-op) and crops the result.
"""

from __future__ import annotations

import torch.nn.functional as F
from spandrel.architectures.SCUNet import SCUNet as _SpandrelSCUNet

from ._official_keys import OfficialKeys


class SCUNet(OfficialKeys, _SpandrelSCUNet):
    """spandrel's SCUNet with the official border handling (head_dim 32 and window size 8, as spandrel's)."""

    def __init__(self, in_nc: int = 3, config=(4, 4, 4, 4, 4, 4, 4), dim: int = 64, input_resolution: int = 256,
                 head_dim: int = 32, window_size: int = 8):
        if (head_dim, window_size) != (32, 8):
            raise ValueError("spandrel's SCUNet has head_dim 32 and window_size 8 (the official values)")
        super().__init__(in_nc=in_nc, config=list(config), dim=dim, drop_path_rate=0.0,
                         input_resolution=input_resolution)
        self._init_official_keys({})

    def forward(self, x0):
        h, w = x0.shape[-2:]
        x0 = F.pad(x0, (0, (-w) % 64, 0, (-h) % 64), mode="replicate")
        return super().forward(x0)[..., :h, :w]
