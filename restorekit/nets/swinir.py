"""SwinIR as DiffBIR uses it for stage 1, on spandrel's SwinIR architecture.

DiffBIR's variant (``configs/inference/swinir.yaml``): PixelUnshuffle(sf) input, residual Swin transformer groups,
'nearest+conv' upsampling back by sf, so the output has the input's size. spandrel's ``SwinIR`` with
``start_unshuffle=sf`` and ``upsampler="nearest+conv"``, ``upscale=sf`` is that network; the only difference is one
key name: DiffBIR keeps the first convolution in ``nn.Sequential(PixelUnshuffle, Conv2d)`` (``conv_first.1.*``),
spandrel names it ``conv_first.*``. :class:`SwinIR` reads and writes state dicts in DiffBIR's layout, so official
checkpoints load strictly (``restorekit.weights.load_strict``) and ``state_dict()`` gives the official key list.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from spandrel.architectures.SwinIR import SwinIR as _SpandrelSwinIR

from ._compat import meshgrid_default_indexing
from ._official_keys import OfficialKeys


@dataclass
class SwinIRConfig:
    img_size: int = 64
    in_chans: int = 3
    embed_dim: int = 180
    depths: tuple = (6, 6, 6, 6, 6, 6, 6, 6)
    num_heads: tuple = (6, 6, 6, 6, 6, 6, 6, 6)
    window_size: int = 8
    mlp_ratio: float = 2.0
    sf: int = 8
    num_feat: int = 64
    #: stochastic depth during training (official SwinIR's default is 0.1; DropPath is the identity in eval mode)
    drop_path_rate: float = 0.0
    extra: dict = field(default_factory=dict)


class SwinIR(OfficialKeys, _SpandrelSwinIR):
    """spandrel's SwinIR configured as DiffBIR's stage-1 SwinIR, with DiffBIR's state-dict key names."""

    def __init__(self, cfg: SwinIRConfig | None = None):
        cfg = cfg or SwinIRConfig()
        if cfg.sf not in (1, 2, 4, 8):
            raise ValueError("SwinIR (nearest+conv) supports sf 1, 2, 4 or 8")
        if cfg.num_feat != 64:
            raise ValueError("spandrel's SwinIR has num_feat 64")
        # spandrel's WindowAttention calls torch.meshgrid without indexing= (torch's default "ij", as the
        # official SwinIR): same result, without torch's UserWarning
        with meshgrid_default_indexing():
            super().__init__(img_size=cfg.img_size, patch_size=1, in_chans=cfg.in_chans, embed_dim=cfg.embed_dim,
                             depths=list(cfg.depths), num_heads=list(cfg.num_heads), window_size=cfg.window_size,
                             mlp_ratio=cfg.mlp_ratio, qkv_bias=True, qk_scale=None, drop_rate=0.0,
                             attn_drop_rate=0.0, drop_path_rate=cfg.drop_path_rate, ape=False, patch_norm=True,
                             upscale=cfg.sf, img_range=1.0, upsampler="nearest+conv", resi_connection="1conv",
                             start_unshuffle=cfg.sf)
        self.cfg = cfg
        # spandrel keeps the mean as a plain tensor (not a buffer); make it a CPU tensor even when the network is
        # built under torch.device("meta"), forward moves it to the input's device
        self.mean = (torch.tensor([0.4488, 0.4371, 0.4040], device="cpu").view(1, 3, 1, 1) if cfg.in_chans == 3
                     else torch.zeros(1, 1, 1, 1, device="cpu"))
        self._init_official_keys({"conv_first.1.": "conv_first."})

    @property
    def size_multiple(self) -> int:
        """Input sides must be multiples of this (PixelUnshuffle by sf, then windows of window_size)."""
        return self.cfg.sf * self.cfg.window_size

    def forward(self, x):
        """Sides that are not multiples of :attr:`size_multiple` are padded (reflect, or replicate where the pad
        exceeds the image) and the result cropped; DiffBIR's pipeline always passes multiples of 64."""
        h, w = x.shape[-2:]
        m = self.size_multiple
        ph, pw = (-h) % m, (-w) % m
        if ph or pw:
            x = F.pad(x, (0, pw, 0, ph), mode="reflect" if max(ph, pw) < min(h, w) else "replicate")
        return super().forward(x)[..., :h, :w]
