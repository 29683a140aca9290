"""DiffIR inpainting as the official LaMa-based predict path: the Lightning checkpoint, symmetric padding to 8,
``mask > 0`` binarisation."""

import numpy as np
import pytest
import torch

from restorekit import Restorer
from restorekit.methods.diffir.restorer import pad_symmetric
from restorekit.nets.diffir import PRESETS, DiffIRConfig, DiffIRS1, DiffIRS2
from restorekit.operators import Inpainting

from .test_diffir import DATA, MANIFEST, _fill_official_order
from .test_weights import _lightning_ckpt

TINY_INPAINT = DiffIRConfig(variant="inpaint", inp_channels=4, n_encoder_res=1, dim=8, num_blocks=(1, 1, 1, 1),
                            num_refinement_blocks=0, heads=(1, 1, 2, 2), ffn_expansion_factor=2.0,
                            layernorm_type="WithBias", n_feats=8)


@pytest.mark.parametrize("shape,mult", [((37, 53), 8), ((5, 3), 8), ((16, 9), 8), ((1, 2), 8)])
def test_pad_symmetric_is_numpy_symmetric(shape, mult):
    x = torch.randn(2, 3, *shape, dtype=torch.float64)
    h, w = shape
    # transcribed from DiffIR-inpainting saicinpainting/evaluation/data.py L23-L33 (ceil_modulo, pad_img_to_modulo)
    ref = np.pad(x.numpy(), ((0, 0), (0, 0), (0, -h % mult), (0, -w % mult)), mode="symmetric")
    assert np.array_equal(pad_symmetric(x, mult).numpy(), ref)


def _official_predict(net, img, hole, seed):
    """DiffIR-inpainting bin/predict.py L73-L87 with evaluation/data.py InpaintingDataset (pad_out_to_modulo 8):
    numpy-symmetric padding of image and mask, mask > 0, masked image + mask into the generator, composite,
    crop to the unpadded size."""
    h, w = img.shape[-2:]
    pad = ((0, 0), (0, -h % 8), (0, -w % 8))
    im = torch.from_numpy(np.pad(img[0].numpy(), pad, mode="symmetric"))[None]
    mk = torch.from_numpy(np.pad(hole[0].numpy(), pad, mode="symmetric"))[None]
    mk = (mk > 0) * 1
    masked = im * (1 - mk)
    with torch.no_grad():
        pred = net(torch.cat([masked, mk], 1), generator=torch.Generator().manual_seed(seed))
    inpainted = mk * pred + (1 - mk) * im
    return inpainted[..., :h, :w]


def test_odd_size_and_soft_mask_follow_official_predict(tmp_path):
    net = DiffIRS2(TINY_INPAINT).eval()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    r = Restorer.from_pretrained(_save(net, tmp_path / "inp.pth"), method="diffir", config=TINY_INPAINT,
                                 device="cpu")
    img = torch.rand(1, 3, 37, 53, generator=g)
    hole = torch.zeros(1, 1, 37, 53)
    hole[..., 10:30, 20:45] = 1.0
    hole[..., 30:37, 45:53] = 0.3  # soft mask values at the padded corner: official mask > 0 makes them holes
    hole[..., 0:4, 0:4] = 0.002
    ref = _official_predict(net, img, hole, seed=3)
    out = r.restore(img, task="inpaint", operator=Inpainting(1 - hole), seed=3)
    assert (out - ref.clamp(0, 1)).abs().max() <= 1e-6
    # reflect padding (what restorekit did before) gives a different result: the check is sharp
    hard = (hole > 0).float()
    refl_in = torch.nn.functional.pad(torch.cat([img * (1 - hard), hard], 1), (0, 3, 0, 3), mode="reflect")
    with torch.no_grad():
        refl = net(refl_in, generator=torch.Generator().manual_seed(3))[..., :37, :53]
    refl = (hard * refl + (1 - hard) * img).clamp(0, 1)
    assert (refl - out).abs().max() > 1e-4
    # and treating 0.3 as a soft/known value also differs
    soft = r.restore(img, task="inpaint", operator=Inpainting((1 - hole).clamp(0, 1).round()), seed=3)
    assert (soft - out).abs().max() > 1e-4


def _save(net, path):
    torch.save({"params_ema": net.state_dict()}, path)
    return path


def test_official_lightning_checkpoint_loads_and_matches_official_network(tmp_path):
    """The released inpainting ``last.ckpt`` layout: a Lightning checkpoint whose state_dict holds
    ``generator.*`` (stage 2) next to ``generatorS1.*``, ``discriminator.*`` and loss-network weights, with an
    OmegaConf DictConfig in hyper_parameters. Loaded through Restorer.from_pretrained, it reproduces the
    official DiffIRS2's golden output (tests/data/diffir_golden.pt, see test_diffir.test_matches_official_networks)."""
    cfg = PRESETS["inpaint_place2"]
    s2 = DiffIRS2(cfg).eval()
    _fill_official_order(s2, MANIFEST["inpaint_place2/S2"])
    s1 = DiffIRS1(cfg)
    sd = {f"generator.{k}": v for k, v in s2.state_dict().items()}
    sd.update({f"generatorS1.{k}": v for k, v in s1.state_dict().items()})
    sd.update({"discriminator.model0.0.weight": torch.randn(64, 3, 4, 4),
               "loss_resnet_pl.impl.conv1.weight": torch.randn(64, 3, 3, 3)})
    p = tmp_path / "last.ckpt"
    _lightning_ckpt(p, sd)
    r = Restorer.from_pretrained(p, method="diffir", device="cpu")
    assert r.preset == "inpaint_place2" and r.tasks == ("inpaint",)
    own = r.net.state_dict()
    assert all(torch.equal(own[k], v) for k, v in s2.state_dict().items())  # bit-exact weights
    gi = torch.Generator().manual_seed(2)
    lq = torch.rand(1, 4, 32, 32, generator=gi)
    golden = torch.load(DATA / "diffir_golden.pt")["inpaint_place2/S2"]
    with torch.no_grad():
        out = r.net(lq, generator=torch.Generator().manual_seed(5))
    assert (out - golden).abs().max() <= 1e-5 * max(1.0, golden.abs().max().item())  # float32 rounding only
