"""The guided-diffusion UNet: official key/shape lists and agreement with deepinv's independent port."""

import pytest
import torch

from restorekit.errors import WeightsError
from restorekit.methods.diffpir import infer_unet_config
from restorekit.nets import FFHQ_10M, IMAGENET_256_UNCOND, GuidedUNet
from restorekit.weights import load_strict

from .conftest import TINY, randomised


def meta_shapes(module):
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


def deepinv_shapes(large):
    from deepinv.models import DiffUNet

    with torch.device("meta"):
        ref = DiffUNet(large_model=large, pretrained=None)
    # deepinv registers two schedule buffers of its own; they are not in the official checkpoints
    return {k: v for k, v in meta_shapes(ref).items() if "alphas_cumprod" not in k}


@pytest.mark.parametrize("cfg,large,n_keys,n_params", [(FFHQ_10M, False, 362, 93_563_910),
                                                        (IMAGENET_256_UNCOND, True, 566, 552_814_086)])
def test_official_key_and_shape_lists(cfg, large, n_keys, n_params):
    with torch.device("meta"):
        net = GuidedUNet(cfg)
    ours = meta_shapes(net)
    assert ours == deepinv_shapes(large)
    assert len(ours) == n_keys
    assert sum(p.numel() for p in net.parameters()) == n_params
    # landmarks of the official checkpoints
    mc = cfg.model_channels
    assert ours["input_blocks.0.0.weight"] == (mc, 3, 3, 3)
    assert ours["time_embed.0.weight"] == (4 * mc, mc)
    assert ours["out.2.weight"] == (6, mc, 3, 3)
    assert ours["middle_block.1.qkv.weight"] == (3 * 4 * mc, 4 * mc, 1)
    assert ours["input_blocks.1.0.emb_layers.1.weight"] == (2 * mc, 4 * mc)  # scale-shift norm
    # resblock_updown: the first downsampling is a ResBlock with no conv of its own
    down = 1 + cfg.num_res_blocks
    assert f"input_blocks.{down}.0.in_layers.2.weight" in ours
    assert infer_unet_config({k: torch.empty(0).new_empty(v, device="meta") for k, v in ours.items()}) == cfg


def test_strict_load_of_official_layout_and_numerical_agreement():
    """Weights saved from deepinv's DiffUNet (same official layout) load strictly and give the same output."""
    from deepinv.models import DiffUNet

    torch.manual_seed(0)
    ref = randomised(DiffUNet(large_model=False, pretrained=None), seed=1, scale=0.03).eval()
    sd = {k: v for k, v in ref.state_dict().items() if "alphas_cumprod" not in k}
    ours = GuidedUNet(FFHQ_10M).eval()
    load_strict(ours, sd, "deepinv DiffUNet")
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    t = torch.tensor([3, 777])
    with torch.no_grad():
        a, b = ours(x, t), ref.forward_diffusion(x, t)
    assert a.shape == (2, 6, 64, 64)
    assert b.abs().max() > 0.05  # the comparison is not between zeros
    assert (a - b).abs().max() < 1e-4


def test_attention_order_matters():
    """Legacy and new QKV orders give different results on the same weights (so the choice is tested)."""
    a = randomised(GuidedUNet(TINY), scale=0.3).eval()
    b = GuidedUNet(TINY, use_new_attention_order=True).eval()
    b.load_state_dict(a.state_dict())
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert (a(x, torch.tensor([5])) - b(x, torch.tensor([5]))).abs().max() > 1e-4


def test_load_strict_reports_mismatch():
    net = GuidedUNet(TINY)
    sd = net.state_dict()
    sd.pop("out.2.bias")
    sd["extra.weight"] = torch.zeros(1)
    sd["input_blocks.0.0.weight"] = torch.zeros(1, 1, 1, 1)
    with pytest.raises(WeightsError) as e:
        load_strict(net, sd, "broken.pt")
    msg = str(e.value)
    assert "broken.pt" in msg and "missing" in msg and "unexpected" in msg and "shape" in msg


def test_size_multiple_and_odd_sizes_rejected():
    net = GuidedUNet(TINY)
    assert net.size_multiple == 4
    with pytest.raises(ValueError, match="multiple of 4"):
        net(torch.zeros(1, 3, 30, 32), torch.tensor([1]))
    assert FFHQ_10M.size_multiple == 32


def test_unknown_checkpoint_layout_is_a_clear_error():
    with pytest.raises(WeightsError, match="unet_config"):
        infer_unet_config(GuidedUNet(TINY).state_dict(), {})
