"""DiffBIR's official files at full size (random weights, official layout and names) loaded through the public API.

The folder holds what DiffBIR's ``pretrained_models.py`` downloads: the SD 2.1 ldm checkpoints (UNet, VAE and the
OpenCLIP-H text tower as ``cond_stage_model.model.*``, the visual tower deleted as ``FrozenOpenCLIPEmbedder``
does), the stand-alone IRControlNets (v1_general, v1_face, v2, v2.1), the five stage-1 files, and SD 2.1's
tokenizer files (``vocab.json`` / ``merges.txt``, written from open_clip's BPE table, which is the same table).
The prompt embedding is compared with an independent reference: open_clip's text tower, run as the official
``FrozenOpenCLIPEmbedder(layer="penultimate")`` runs it.
"""

import gc
import gzip
import json
import os
import warnings

import pytest
import torch

pytestmark = pytest.mark.slow

open_clip = pytest.importorskip("open_clip")

PROMPTS = ["", "Cinematic, High Contrast, highly detailed, taken using a Canon EOS R camera, hyper detailed photo - "
           "realistic maximum detail, 32k, Color Grading, ultra HD, extreme meticulous detailing, skin pore "
           "detailing, hyper sharpness, perfect without deformations.",
           "It's a dog's life!! 3.14 &amp; café " + "long " * 80]


def _write_tokenizer_files(folder):
    """vocab.json / merges.txt in Hugging Face's CLIP format, from open_clip's BPE merges (49152 - 258 merges)."""
    from open_clip.tokenizer import bytes_to_unicode, default_bpe

    merges = gzip.open(default_bpe()).read().decode("utf-8").split("\n")[1:49152 - 256 - 2 + 1]
    chars = list(bytes_to_unicode().values())
    vocab = chars + [c + "</w>" for c in chars] + ["".join(m.split()) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    (folder / "vocab.json").write_text(json.dumps({v: i for i, v in enumerate(vocab)}))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")


_GAINS = ("norm.weight", "norm1.weight", "norm2.weight", "norm3.weight", "norm_out.weight", "ln_1.weight",
          "ln_2.weight", "ln_final.weight")


def _random_like(shapes: dict, seed: int, std: float = 0.02, dtype=torch.float16) -> dict:
    g = torch.Generator().manual_seed(seed)
    out = {}
    for k, shape in shapes.items():
        t = torch.empty(tuple(shape), dtype=dtype).normal_(0, std, generator=g)
        if k.endswith(_GAINS):
            t += 1  # normalisation gains around 1
        out[k] = t
    return out


def _openclip_text_tower(seed: int):
    """open_clip's CLIP with the ViT-H-14 text tower (official clip_cfg text_cfg), visual tower deleted, random
    float16 weights (returned as the state dict to save) loaded as float32."""
    from open_clip.model import CLIP

    with torch.device("meta"):
        m = CLIP(1024, dict(image_size=32, layers=1, width=64, patch_size=16, head_width=64),
                 dict(context_length=77, vocab_size=49408, width=1024, heads=16, layers=24))
    del m.visual
    sd = _random_like({k: v.shape for k, v in m.state_dict().items()}, seed)
    m.load_state_dict({k: v.float() for k, v in sd.items()}, assign=True)
    m.register_buffer("attn_mask", torch.full((77, 77), float("-inf")).triu_(1), persistent=False)  # causal mask
    return m.eval(), sd


@torch.no_grad()
def _reference_embedding(model, prompts):
    """FrozenOpenCLIPEmbedder.encode_with_transformer with layer="penultimate" (DiffBIR diffbir/model/clip.py
    L37-L54): token + positional embedding, all residual blocks but the last with the causal mask, ln_final."""
    tokens = open_clip.tokenize(prompts)
    x = model.token_embedding(tokens) + model.positional_embedding
    if not getattr(model.transformer, "batch_first", False):
        x = x.permute(1, 0, 2)
    for r in model.transformer.resblocks[:-1]:
        x = r(x, attn_mask=model.attn_mask)
    if not getattr(model.transformer, "batch_first", False):
        x = x.permute(1, 0, 2)
    return model.ln_final(x)


def write_sd21_checkpoint(path, text_sd: dict) -> None:
    """The SD 2.1 ldm checkpoint at full size: random UNet and VAE in the official names, ``text_sd`` (the
    OpenCLIP-H text tower) under ``cond_stage_model.model.``, and the schedule buffers an SD checkpoint carries."""
    import numpy as np
    from diffusers import AutoencoderKL, UNet2DConditionModel

    from restorekit.methods.diffbir.convert import SD21_UNET, SD21_VAE, unet_to_ldm, vae_to_ldm

    with torch.device("meta"):
        unet = UNet2DConditionModel(**SD21_UNET)
        vae = AutoencoderKL(**SD21_VAE)
    ckpt = {f"cond_stage_model.model.{k}": v for k, v in text_sd.items()}
    ckpt.update({f"model.diffusion_model.{k}": v for k, v in
                 _random_like({k: v.shape for k, v in unet_to_ldm(unet.state_dict(), SD21_UNET).items()}, 1).items()})
    ckpt.update({f"first_stage_model.{k}": v for k, v in
                 _random_like({k: v.shape for k, v in vae_to_ldm(vae.state_dict(), SD21_VAE).items()}, 2).items()})
    betas = np.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000) ** 2
    ckpt["betas"] = torch.tensor(betas, dtype=torch.float32)
    ckpt["alphas_cumprod"] = torch.tensor(np.cumprod(1 - betas), dtype=torch.float32)
    torch.save({"state_dict": ckpt}, path)
    del ckpt
    gc.collect()


@pytest.fixture(scope="module")
def official(tmp_path_factory):
    from diffusers import UNet2DConditionModel

    from restorekit.methods.diffbir import IRControlNet
    from restorekit.methods.diffbir.convert import SD21_UNET, controlnet_to_ldm
    from restorekit.nets.bsrnet import RRDBNet
    from restorekit.nets.scunet import SCUNet
    from restorekit.nets.swinir import SwinIR, SwinIRConfig

    d = tmp_path_factory.mktemp("diffbir_official")
    _write_tokenizer_files(d)
    # text tower first: the reference embedding is computed from exactly the (fp16-rounded) tensors written
    clip, text_sd = _openclip_text_tower(seed=0)
    ref = _reference_embedding(clip, PROMPTS)
    del clip
    write_sd21_checkpoint(d / "v2-1_512-ema-pruned.ckpt", text_sd)
    del text_sd
    with torch.device("meta"):
        cn = IRControlNet.from_unet_config(UNet2DConditionModel(**SD21_UNET))
    os.link(d / "v2-1_512-ema-pruned.ckpt", d / "sd2.1-base-zsnr-laionaes5.ckpt")
    cn_sd = _random_like({k: v.shape for k, v in controlnet_to_ldm(cn.state_dict(), SD21_UNET).items()}, 3)
    torch.save(cn_sd, d / "v2.pth")
    del cn_sd
    for f in ("v1_general.pth", "v1_face.pth", "DiffBIR_v2.1.pt"):
        os.link(d / "v2.pth", d / f)
    # stage 1: BSRNet (plain state dict), SwinIR (Lightning-style "state_dict" with "module." names), SCUNet
    torch.save(_random_like({k: v.shape for k, v in RRDBNet().state_dict().items()}, 4, dtype=torch.float32),
               d / "BSRNet.pth")
    swin = {"module." + k: v for k, v in _random_like({k: v.shape for k, v in SwinIR(SwinIRConfig()).state_dict()
                                                        .items()}, 5, dtype=torch.float32).items()}
    for f in ("general_swinir_v1.ckpt", "realesrgan_s4_swinir_100k.pth", "face_swinir_v1.ckpt"):
        torch.save({"state_dict": swin}, d / f)
    torch.save(_random_like({k: v.shape for k, v in SCUNet().state_dict().items()}, 6, dtype=torch.float32),
               d / "scunet_color_real_psnr.pth")
    del swin
    gc.collect()
    return d, ref


def test_full_size_official_files_load_strictly_and_embed_as_open_clip(official):
    from restorekit import Restorer, WeightsError

    folder, ref = official
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        r = Restorer.from_pretrained(folder, method="diffbir", version="v2.1", torch_dtype=torch.float16)
    # the meta-device modules take the file's tensors in one strict load (no "copying ... is a no-op" warnings)
    assert not [w for w in seen if "no-op" in str(w.message)], str(seen[0].message)
    assert r.version == "v2.1" and r.tokenizer.model_max_length == 77
    assert r.pipeline.unet.dtype == torch.float16 and r.text_encoder.dtype == torch.float32  # text stays fp32
    ids = r.tokenizer(PROMPTS)
    assert torch.equal(ids, open_clip.tokenize(PROMPTS))  # SD 2.1 padding: eot then zeros, 77 long
    emb = r.pipeline.encode_prompt(PROMPTS)
    assert emb.shape == (len(PROMPTS), 77, 1024)
    err = (emb - ref).abs().max().item()
    assert err < 1e-5, err
    # the other tasks' files load strictly too (denoise: same SwinIR, face: SwinIR-face)
    for task in ("denoise", "face"):
        net, kind = r.stage1_for(task)
        assert kind == "swinir" and isinstance(net, torch.nn.Module)
    del r
    gc.collect()
    r = Restorer.from_pretrained(folder, method="diffbir", version="v1", task="face", torch_dtype="fp16")
    assert r.controlnet_for("face") is not r.controlnet_for("sr")  # v1_face.pth and v1_general.pth
    del r
    gc.collect()
    r = Restorer.from_pretrained(folder, method="diffbir", version="v2", task="denoise", torch_dtype="fp16")
    net, kind = r.stage1_for("denoise")
    assert kind == "scunet" and r.stage1_for("sr")[1] == "bsrnet"
    del r, net
    gc.collect()
    os.unlink(folder / "face_swinir_v1.ckpt")
    with pytest.raises(WeightsError, match="face_swinir_v1.ckpt"):
        Restorer.from_pretrained(folder, method="diffbir", version="v2", task="face")
