"""BSRNet (BSRGAN's RRDBNet), DiffBIR v2's stage-1 model for blind SR, on spandrel's ESRGAN (RRDBNet) architecture.

spandrel's ``RRDBNet`` is the old-arch ESRGAN network: the same convolutions, LeakyReLU(0.2), nearest x2
upsamplings and 0.2 residual scalings as BSRGAN's; it names its tensors ``model.N...``. :class:`RRDBNet` reads and
writes state dicts in BSRGAN's layout (``conv_first``, ``RRDB_trunk.N.RDB{1,2,3}.conv{1..5}``, ``trunk_conv``,
``upconv1/2``, ``HRconv``, ``conv_last``), so ``BSRNet.pth`` loads strictly.
"""

from __future__ import annotations

import math
import re

from spandrel.architectures.__arch_helpers import block as B
from spandrel.architectures.ESRGAN import ESRGAN as _SpandrelRRDBNet

from ._official_keys import OfficialKeys


class RRDBNet(OfficialKeys, _SpandrelRRDBNet):
    """spandrel's RRDBNet with BSRGAN's key names; ``gc`` (growth channels) other than spandrel's 32 swaps in
    spandrel's ``RRDB`` blocks built with that ``gc``."""

    def __init__(self, in_nc: int = 3, out_nc: int = 3, nf: int = 64, nb: int = 23, gc: int = 32, sf: int = 4):
        if sf not in (2, 4):
            raise ValueError("RRDBNet upscales by 2 or 4")
        super().__init__(in_nc=in_nc, out_nc=out_nc, num_filters=nf, num_blocks=nb, scale=sf)
        if gc != 32:
            trunk = self.model[1].sub
            for i in range(nb):
                trunk[i] = B.RRDB(nf=nf, kernel_size=3, gc=gc, stride=1, bias=True, pad_type="zero",
                                  norm_type=None, act_type="leakyrelu", mode="CNA")
        self.sf = sf
        n_up = int(math.log2(sf))
        names = {"model.0": "conv_first", f"model.1.sub.{nb}": "trunk_conv", f"model.{3 * n_up + 2}": "HRconv",
                 f"model.{3 * n_up + 4}": "conv_last", **{f"model.{3 * u}": f"upconv{u}" for u in range(1, n_up + 1)}}

        def to_official(k):
            m = re.fullmatch(r"model\.1\.sub\.(\d+)\.(RDB\d)\.(conv\d)\.0\.(weight|bias)", k)
            if m:
                return f"RRDB_trunk.{m[1]}.{m[2]}.{m[3]}.{m[4]}"
            mod, _, param = k.rpartition(".")
            return f"{names[mod]}.{param}"

        self._init_official_keys(to_official)
