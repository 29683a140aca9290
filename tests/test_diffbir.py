"""DiffBIR with tiny diffusers / transformers models built here (no hub)."""

import json

import pytest
import torch

from restorekit import TaskError, WeightsError
from restorekit.methods.diffbir import DiffBIR, DiffBIRSettings, IRControlNet
from restorekit.methods.diffbir.convert import controlnet_from_ldm, controlnet_to_ldm
from restorekit.methods.diffbir.pipeline import sobel_weight, wavelet_color_fix, wavelet_decompose
from restorekit.nets.bsrnet import RRDBNet

from .conftest import randomised

UNET = dict(sample_size=8, in_channels=4, out_channels=4, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), block_out_channels=(32, 64), layers_per_block=1,
            cross_attention_dim=32, attention_head_dim=8, norm_num_groups=8, use_linear_projection=True)


@pytest.fixture(scope="module")
def tiny():
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(0)
    unet = UNet2DConditionModel(**UNET).eval()
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 8, 16, 16),
                        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                        layers_per_block=1, norm_num_groups=4, sample_size=64).eval()
    text = CLIPTextModel(CLIPTextConfig(vocab_size=100, hidden_size=32, intermediate_size=37, num_attention_heads=4,
                                        num_hidden_layers=2, max_position_embeddings=77, bos_token_id=0,
                                        eos_token_id=1, pad_token_id=1)).eval()
    cn = randomised(IRControlNet.from_unet_config(unet), seed=1).eval()  # non-zero "zero convs"
    return unet, cn, vae, text


def _encode_prompt(text):
    def enc(prompts):
        ids = torch.tensor([[(sum(map(ord, p)) + i) % 100 for i in range(77)] for p in prompts])
        with torch.no_grad():
            return text(ids)[0]
    return enc




def test_ircontrolnet_concatenates_condition_and_has_no_hint_encoder(tiny):
    unet, cn, vae, text = tiny
    assert cn.conv_in.weight.shape[1] == 8
    assert not any(k.startswith("controlnet_cond_embedding") for k in cn.state_dict())
    x, c = torch.randn(1, 4, 8, 8), torch.randn(1, 4, 8, 8)
    emb = torch.randn(1, 77, 32)
    down, mid = cn(x, torch.tensor([10]), emb, c, return_dict=False)
    # one residual per UNet skip (conv_in, each resnet, each downsampler) + the middle block
    assert len(down) == 1 + 1 + 1 + 1 and mid.shape == (1, 64, 4, 4)
    down2, _ = cn(x, torch.tensor([10]), emb, c * 0 + 1, return_dict=False)
    assert not torch.allclose(down[0], down2[0])  # the condition changes the residuals
    # zero-initialised (fresh) controlnet leaves the UNet output untouched
    fresh = IRControlNet.from_unet_config(unet)
    fresh.init_from_unet(unet)
    d0, m0 = fresh(x, torch.tensor([10]), emb, c, return_dict=False)
    a = unet(x, 10, encoder_hidden_states=emb, down_block_additional_residuals=d0, mid_block_additional_residual=m0).sample
    b = unet(x, 10, encoder_hidden_states=emb).sample
    assert torch.allclose(a, b, atol=1e-6)
    assert torch.equal(fresh.conv_in.weight[:, :4], unet.conv_in.weight) and fresh.conv_in.weight[:, 4:].abs().sum() == 0


@pytest.mark.parametrize("prefix", ["", "control_model."])
def test_ldm_controlnet_checkpoint_round_trip(tiny, prefix):
    """diffusers -> DiffBIR ldm names -> diffusers' own ldm converter gives back every tensor."""
    _, cn, _, _ = tiny
    sd = cn.state_dict()
    ldm = controlnet_to_ldm(sd, {"block_out_channels": UNET["block_out_channels"], "layers_per_block": 1})
    # DiffBIR's names: 8-channel input conv, zero convs per skip, middle block out
    assert ldm["input_blocks.0.0.weight"].shape[1] == 8
    assert "zero_convs.3.0.weight" in ldm and "middle_block_out.0.weight" in ldm
    assert "input_blocks.1.0.in_layers.0.weight" in ldm and "input_blocks.1.1.proj_in.weight" in ldm
    assert "input_blocks.2.0.op.weight" in ldm and "middle_block.1.transformer_blocks.0.attn2.to_k.weight" in ldm
    assert len(ldm) == len(sd)
    back = controlnet_from_ldm({prefix + k: v for k, v in ldm.items()}, {"layers_per_block": 1})
    assert set(back) == set(sd)
    assert all(torch.equal(back[k], sd[k]) for k in sd)
    net = IRControlNet.from_unet_config(tiny[0])
    net.load_state_dict(back, strict=True)


def test_sobel_weight():
    flat = torch.full((1, 3, 16, 16), 0.5)
    assert torch.allclose(sobel_weight(flat), torch.ones(1, 1, 16, 16))
    edge = torch.zeros(1, 3, 16, 16)
    edge[..., 8:] = 1
    w = sobel_weight(edge)
    assert w.shape == (1, 1, 16, 16) and w[0, 0, :, 7:9].max() < 0.05 and w[0, 0, :, :4].min() == 1


def test_colour_fix():
    g = torch.Generator().manual_seed(0)
    img = torch.rand(1, 3, 32, 32, generator=g)
    hi, lo = wavelet_decompose(img)
    assert torch.allclose(hi + lo, img, atol=1e-6)
    assert torch.allclose(wavelet_color_fix(img, img), img, atol=1e-6)
    shifted = (img + 0.3).clamp(max=2)
    fixed = wavelet_color_fix(shifted, img)
    assert (fixed - img).abs().mean() < 0.02 < (shifted - img).abs().mean()


def test_missing_weights_are_named(tmp_path):
    with pytest.raises(WeightsError) as e:
        DiffBIR.from_pretrained("diffbir-v2")
    msg = str(e.value)
    assert "v2.pth" in msg and "lxq007/DiffBIR-v2" in msg
    with pytest.raises(WeightsError) as e:
        DiffBIR.from_pretrained(tmp_path, method="diffbir", version="v2")
    msg = str(e.value)
    for f in ("v2.pth", "v2-1_512-ema-pruned.ckpt", "BSRNet.pth", "vocab.json", "merges.txt"):
        assert f in msg
    with pytest.raises(WeightsError) as e:  # the official default: v2.1
        DiffBIR.from_pretrained(tmp_path, method="diffbir", task="face")
    msg = str(e.value)
    for f in ("DiffBIR_v2.1.pt", "sd2.1-base-zsnr-laionaes5.ckpt", "face_swinir_v1.ckpt"):
        assert f in msg
    with pytest.raises(TaskError, match="v1 does not do task 'unaligned_face'"):
        DiffBIR.from_pretrained(tmp_path, method="diffbir", version="v1", task="unaligned_face")


def test_settings_per_version():
    """v2.1: inference.py's argparse defaults; v1 / v2: the README's paper settings."""
    s = DiffBIRSettings.for_version("v2.1")
    assert (s.sampler, s.steps, s.cfg_scale, s.start_point_type) == ("edm_dpm++_3m_sde", 10, 6.0, "noise")
    assert "Cinematic" in s.pos_prompt and "oil painting" in s.neg_prompt
    assert (s.s_churn, s.s_tmin, s.s_tmax, s.s_noise, s.eta, s.order, s.strength, s.noise_aug) == (0, 0, 300, 1, 1, 1,
                                                                                                   1, 0)
    for v in ("v1", "v2"):
        s = DiffBIRSettings.for_version(v)
        assert (s.sampler, s.steps, s.cfg_scale, s.pos_prompt) == ("spaced", 50, 4.0, "")
        assert s.neg_prompt == "low quality, blurry, low-resolution, noisy, unsharp, weird textures"
    with pytest.raises(ValueError):
        DiffBIRSettings.for_version("v3")
    assert json.dumps(s.to_dict())

# ---------------------------------------------------------------------------- stage-1 networks
# Key/shape lists and outputs recorded from DiffBIR's own model classes (diffbir/model/{bsrnet,swinir,scunet}.py)
# with the inference configs; outputs for small configs with weights filled, in the official parameter order,
# by randn(generator seed 1) * 0.05 and inputs from randn(generator seed 2). restorekit's stage-1 classes are
# spandrel's architectures with the official key names (restorekit/nets/_official_keys.py).
from pathlib import Path

from restorekit.nets.scunet import SCUNet
from restorekit.nets.swinir import SwinIR, SwinIRConfig

DATA = Path(__file__).parent / "data"
STAGE1 = json.loads((DATA / "diffbir_stage1_keys.json").read_text())


def _fill(m):
    return randomised(m, seed=1, scale=0.05).eval()


@pytest.mark.parametrize("name,make", [("bsrnet", lambda: RRDBNet()), ("swinir_diffbir", lambda: SwinIR(SwinIRConfig())),
                                       ("scunet", lambda: SCUNet())])
def test_stage1_official_key_lists(name, make):
    """The spandrel-backed networks' state dicts are the official key lists, in the official order."""
    m = make()  # on the CPU: spandrel's SwinIR cannot be built on the meta device
    sd = m.state_dict()
    assert {k: list(v.shape) for k, v in sd.items()} == STAGE1[name]
    assert list(sd) == list(STAGE1[name])
    m.load_state_dict(sd, strict=True)


def test_stage1_matches_official_outputs():
    gold = torch.load(DATA / "diffbir_stage1_golden.pt")
    gi = torch.Generator().manual_seed(2)
    x = torch.rand(1, 3, 16, 16, generator=gi)
    x2 = torch.rand(1, 3, 64, 64, generator=gi)
    x3 = torch.rand(1, 3, 40, 72, generator=gi)
    with torch.no_grad():
        outs = {"bsrnet": _fill(RRDBNet(nf=8, nb=2, gc=4))(x),
                "swinir": _fill(SwinIR(SwinIRConfig(img_size=8, embed_dim=24, depths=(2, 2), num_heads=(2, 2),
                                                    window_size=4)))(x2),
                "scunet": _fill(SCUNet(config=(2, 1, 1, 2, 1, 1, 2), dim=64, input_resolution=64))(x3)}
    for k, v in outs.items():
        assert v.shape == gold[k].shape
        assert (v - gold[k]).abs().max() <= 1e-4 * max(1.0, gold[k].abs().max().item()), k


def test_ldm_unet_checkpoint_round_trip(tiny):
    """SD-style full checkpoint (model.diffusion_model.*) -> diffusers' convert_ldm_unet_checkpoint via sd_from_ldm."""
    from restorekit.methods.diffbir.convert import sd_from_ldm, unet_to_ldm

    unet = randomised(type(tiny[0])(**UNET), seed=4)
    sd = unet.state_dict()
    ldm = unet_to_ldm(sd, UNET)
    assert len(ldm) == len(sd)
    assert "output_blocks.1.1.conv.weight" in ldm or "output_blocks.1.2.conv.weight" in ldm  # first up-block upsampler
    assert "out.2.weight" in ldm and "middle_block.1.proj_out.weight" in ldm
    ckpt = {f"model.diffusion_model.{k}": v for k, v in ldm.items()}
    back, vae, text = sd_from_ldm(ckpt, unet_config=UNET)
    assert vae == {} and text is None
    assert set(back) == set(sd) and all(torch.equal(back[k], sd[k]) for k in sd)


def test_ldm_vae_checkpoint_round_trip(tiny):
    """first_stage_model.* (ldm VAE, 1x1-conv attention) -> diffusers' convert_ldm_vae_checkpoint via sd_from_ldm."""
    from restorekit.methods.diffbir.convert import sd_from_ldm, unet_to_ldm, vae_to_ldm

    vae = randomised(tiny[2].__class__.from_config(tiny[2].config), seed=5)
    sd = vae.state_dict()
    cfg = dict(vae.config)
    ldm = vae_to_ldm(sd, cfg)
    assert len(ldm) == len(sd)
    assert ldm["encoder.mid.attn_1.q.weight"].ndim == 4 and "decoder.up.3.block.0.conv1.weight" in ldm
    unet_sd = type(tiny[0])(**UNET).state_dict()
    ckpt = {f"first_stage_model.{k}": v for k, v in ldm.items()}
    ckpt.update({f"model.diffusion_model.{k}": v for k, v in unet_to_ldm(unet_sd, UNET).items()})
    _, back, _ = sd_from_ldm(ckpt, unet_config=UNET, vae_config=cfg)
    assert set(back) == set(sd) and all(torch.equal(back[k], sd[k]) for k in sd)


def test_openclip_text_tower_loads_strictly_and_matches_open_clip(tmp_path):
    """A small OpenCLIP text tower in SD's ldm naming -> transformers CLIPTextModel (one layer less): strict
    mapping, the penultimate-layer output of open_clip (as DiffBIR's FrozenOpenCLIPEmbedder) reproduced; an
    unknown key is an error naming the file and the key."""
    pytest.importorskip("open_clip")
    from open_clip.model import CLIP
    from transformers import CLIPTextConfig, CLIPTextModel

    from restorekit.methods.diffbir.text import openclip_text_to_transformers
    from restorekit.weights import load_strict

    torch.manual_seed(0)
    oc = CLIP(32, {"image_size": 32, "layers": 1, "width": 64, "patch_size": 16, "head_width": 64},
              {"context_length": 77, "vocab_size": 100, "width": 32, "heads": 4, "layers": 3}).eval()
    del oc.visual
    ckpt = {f"cond_stage_model.model.{k}": v for k, v in oc.state_dict().items()}
    text = CLIPTextModel(CLIPTextConfig(vocab_size=100, hidden_size=32, intermediate_size=128, num_attention_heads=4,
                                        num_hidden_layers=2, max_position_embeddings=77, hidden_act="gelu")).eval()
    sd, unused = openclip_text_to_transformers(ckpt, text, "sd.ckpt")
    assert sorted(unused) == sorted(k for k in ckpt if ".resblocks.2." in k or k.endswith(("text_projection",
                                                                                           "logit_scale")))
    load_strict(text, sd, "sd.ckpt")
    ids = torch.randint(1, 99, (2, 77), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        x = oc.token_embedding(ids) + oc.positional_embedding
        for blk in oc.transformer.resblocks[:-1]:  # diffbir/model/clip.py L37-L54, layer="penultimate"
            x = blk(x, attn_mask=oc.attn_mask)
        ref = oc.ln_final(x)
        ours = text(input_ids=ids).last_hidden_state
    assert (ours - ref).abs().max() < 1e-5
    ckpt["cond_stage_model.model.transformer.resblocks.0.attn.extra"] = torch.zeros(1)
    with pytest.raises(WeightsError, match=r"sd\.ckpt.*resblocks\.0\.attn\.extra"):
        openclip_text_to_transformers(ckpt, text, "sd.ckpt")


def test_ldm_checkpoint_with_unexpected_keys_is_an_error():
    from restorekit.methods.diffbir.restorer import _check_ldm_keys

    ckpt = {"model.diffusion_model.a": 0, "first_stage_model.b": 0, "cond_stage_model.model.c": 0, "betas": 0}
    _check_ldm_keys(ckpt, {"unet": 1, "vae": 1}, [], "sd.ckpt")
    with pytest.raises(WeightsError, match=r"sd\.ckpt.*1 unexpected keys.*lora\.up"):
        _check_ldm_keys({**ckpt, "lora.up": 0}, {"unet": 1, "vae": 1}, [], "sd.ckpt")
    with pytest.raises(WeightsError, match="unet tensors were not used"):
        _check_ldm_keys({**ckpt, "model.diffusion_model.z": 0}, {"unet": 1, "vae": 1}, [], "sd.ckpt")
