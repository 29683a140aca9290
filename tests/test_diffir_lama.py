"""LaMa pieces of DiffIR-inpainting training against the official code, transcribed (DiffIR-inpainting
saicinpainting/training/data/masks.py, losses/adversarial.py, losses/feature_matching.py, losses/perceptual.py,
modules/pix2pixhd.py) or compared with torchvision (ResNet bottlenecks)."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from restorekit.nets.lama import (
    NLayerDiscriminator,
    NonSaturatingWithR1,
    ResNetPL,
    feature_matching_loss,
    masked_l1_loss,
)
from restorekit.operators.lama_masks import MASK_PRESETS, lama_masks

# ----------------------------------------------------------------------------------------------------------
# masks.py, transcribed (L22-L47 make_random_irregular_mask, L50-L67 RandomIrregularMaskGenerator.__call__ without
# ramp, L70-L81 make_random_rectangle_mask, L84-L101 RandomRectangleMaskGenerator.__call__ without ramp,
# MixedMaskGenerator.__init__/__call__ for irregular + box kinds); they draw from the global numpy RNG
# ----------------------------------------------------------------------------------------------------------


def _ref_irregular(shape, max_angle=4, max_len=60, max_width=20, min_times=0, max_times=10):
    import cv2
    height, width = shape
    mask = np.zeros((height, width), np.float32)
    times = np.random.randint(min_times, max_times + 1)
    for i in range(times):
        start_x = np.random.randint(width)
        start_y = np.random.randint(height)
        for j in range(1 + np.random.randint(5)):
            angle = 0.01 + np.random.randint(max_angle)
            if i % 2 == 0:
                angle = 2 * 3.1415926 - angle
            length = 10 + np.random.randint(max_len)
            brush_w = 5 + np.random.randint(max_width)
            end_x = np.clip((start_x + length * np.sin(angle)).astype(np.int32), 0, width)
            end_y = np.clip((start_y + length * np.cos(angle)).astype(np.int32), 0, height)
            cv2.line(mask, (start_x, start_y), (end_x, end_y), 1.0, brush_w)
            start_x, start_y = end_x, end_y
    return mask[None, ...]


def _ref_irregular_gen(shape, max_angle=4, max_len=60, max_width=20, min_times=0, max_times=10):
    coef = 1
    cur_max_len = int(max(1, max_len * coef))
    cur_max_width = int(max(1, max_width * coef))
    cur_max_times = int(min_times + 1 + (max_times - min_times) * coef)
    return _ref_irregular(shape, max_angle=max_angle, max_len=cur_max_len, max_width=cur_max_width,
                          min_times=min_times, max_times=cur_max_times)


def _ref_rect(shape, margin=10, bbox_min_size=30, bbox_max_size=100, min_times=0, max_times=3):
    height, width = shape
    mask = np.zeros((height, width), np.float32)
    bbox_max_size = min(bbox_max_size, height - margin * 2, width - margin * 2)
    times = np.random.randint(min_times, max_times + 1)
    for i in range(times):
        box_width = np.random.randint(bbox_min_size, bbox_max_size)
        box_height = np.random.randint(bbox_min_size, bbox_max_size)
        start_x = np.random.randint(margin, width - margin - box_width + 1)
        start_y = np.random.randint(margin, height - margin - box_height + 1)
        mask[start_y:start_y + box_height, start_x:start_x + box_width] = 1
    return mask[None, ...]


def _ref_rect_gen(shape, margin=10, bbox_min_size=30, bbox_max_size=100, min_times=0, max_times=3):
    coef = 1
    cur_bbox_max_size = int(bbox_min_size + 1 + (bbox_max_size - bbox_min_size) * coef)
    cur_max_times = int(min_times + (max_times - min_times) * coef)
    return _ref_rect(shape, margin=margin, bbox_min_size=bbox_min_size, bbox_max_size=cur_bbox_max_size,
                     min_times=min_times, max_times=cur_max_times)


def _ref_mixed(shape, irregular_proba=1 / 3, irregular_kwargs=None, box_proba=1 / 3, box_kwargs=None, **_):
    probas, gens = [], []
    if irregular_proba > 0:
        probas.append(irregular_proba)
        gens.append(lambda: _ref_irregular_gen(shape, **(irregular_kwargs or {})))
    if box_proba > 0:
        probas.append(box_proba)
        gens.append(lambda: _ref_rect_gen(shape, **(box_kwargs or {})))
    probas = np.array(probas, dtype='float32')
    probas /= probas.sum()
    kind = np.random.choice(len(probas), p=probas)
    return gens[kind]()


@pytest.mark.parametrize("preset", sorted(MASK_PRESETS))
def test_lama_masks_equal_official_generators(preset):
    size = 512 if preset.endswith("512") else 256
    np.random.seed(7)
    ref = np.stack([_ref_mixed((size, size), **MASK_PRESETS[preset]) for _ in range(6)])
    ours = lama_masks(6, size, preset, np.random.RandomState(7)).numpy()
    assert ours.shape == (6, 1, size, size) and np.array_equal(ours, ref)
    assert 0 < ours.mean() < 1 and set(np.unique(ours)) <= {0.0, 1.0}


def test_thin_masks_are_thin():
    """thin brushes (at most 5 + 9 = 14 px) almost vanish under a 17x17 erosion (only crossings survive);
    thick ones (up to 104 px) and medium ones (up to 54 px) largely do not."""
    from scipy.ndimage import binary_erosion

    rs = np.random.RandomState(0)
    k = np.ones((17, 17), bool)
    kept = {}
    for p in ("thin_256", "thick_256", "medium_256"):
        m = lama_masks(8, 256, p, rs).numpy()[:, 0] > 0
        kept[p] = sum(binary_erosion(x, k).sum() for x in m) / m.sum()
    assert kept["thin_256"] < 0.1 and kept["thick_256"] > 0.4 and kept["medium_256"] > 0.3


# ----------------------------------------------------------------------------------------------------------
# losses
# ----------------------------------------------------------------------------------------------------------


class _RefNLayer(nn.Module):
    """Transcribed from modules/pix2pixhd.py L565-L613 (NLayerDiscriminator, BatchNorm2d)."""

    def __init__(self, input_nc, ndf=64, n_layers=3, norm_layer=nn.BatchNorm2d):
        super().__init__()
        self.n_layers = n_layers
        kw = 4
        padw = int(np.ceil((kw - 1.0) / 2))
        sequence = [[nn.Conv2d(input_nc, ndf, kernel_size=kw, stride=2, padding=padw), nn.LeakyReLU(0.2, True)]]
        nf = ndf
        for n in range(1, n_layers):
            nf_prev = nf
            nf = min(nf * 2, 512)
            sequence.append([nn.Conv2d(nf_prev, nf, kernel_size=kw, stride=2, padding=padw), norm_layer(nf),
                             nn.LeakyReLU(0.2, True)])
        nf_prev = nf
        nf = min(nf * 2, 512)
        sequence.append([nn.Conv2d(nf_prev, nf, kernel_size=kw, stride=1, padding=padw), norm_layer(nf),
                         nn.LeakyReLU(0.2, True)])
        sequence += [[nn.Conv2d(nf, 1, kernel_size=kw, stride=1, padding=padw)]]
        for n in range(len(sequence)):
            setattr(self, 'model' + str(n), nn.Sequential(*sequence[n]))

    def forward(self, x):
        res = [x]
        for n in range(self.n_layers + 2):
            res.append(getattr(self, 'model' + str(n))(res[-1]))
        act = res[1:]
        return act[-1], act[:-1]


def test_nlayer_discriminator_matches_official():
    torch.manual_seed(0)
    ref = _RefNLayer(3, 8, 4)
    ours = NLayerDiscriminator(3, 8, 4)
    assert list(ours.state_dict()) == list(ref.state_dict())
    ours.load_state_dict(ref.state_dict())
    x = torch.rand(2, 3, 64, 64)
    for mode in (True, False):
        ref.train(mode), ours.train(mode)
        (a, fa), (b, fb) = ref(x), ours(x)
        assert torch.allclose(a, b, atol=1e-6) and all(torch.allclose(u, v, atol=1e-6) for u, v in zip(fa, fb))


def _ref_r1(real, real_pred, fake_pred, mask, gp_coef, mask_as_fake_target, allow_scale_mask=True):
    """adversarial.py L79-L84 (make_r1_gp) and L134-L156 (NonSaturatingWithR1.discriminator_loss),
    interpolate_mask L69-L77 with mask_scale_mode 'nearest'."""
    real_loss = F.softplus(-real_pred)
    grad_real = torch.autograd.grad(outputs=real_pred.sum(), inputs=real, create_graph=True)[0]
    grad_penalty = (grad_real.view(grad_real.shape[0], -1).norm(2, dim=1) ** 2).mean() * gp_coef
    fake_loss = F.softplus(fake_pred)
    if mask_as_fake_target:
        mask = F.interpolate(mask, size=fake_pred.shape[-2:], mode='nearest')
        fake_loss = fake_loss * mask
        fake_loss = fake_loss + (1 - mask) * F.softplus(-fake_pred)
    return (real_loss + grad_penalty + fake_loss).mean()


@pytest.mark.parametrize("mask_as_fake_target", [True, False])
def test_r1_adversarial_loss_matches_official(mask_as_fake_target):
    torch.manual_seed(0)
    d = NLayerDiscriminator(3, 8, 2)
    real = torch.rand(2, 3, 32, 32).requires_grad_(True)
    fake = torch.rand(2, 3, 32, 32)
    mask = (torch.rand(2, 1, 32, 32) > 0.5).float()
    loss = NonSaturatingWithR1(gp_coef=0.001, weight=10, mask_as_fake_target=mask_as_fake_target,
                               allow_scale_mask=True)
    rp, fp = d(real)[0], d(fake)[0]
    ours = loss.discriminator_loss(real, rp, fp, mask)
    ref = _ref_r1(real, rp, fp, mask, 0.001, mask_as_fake_target)
    assert torch.allclose(ours, ref, rtol=1e-6)
    # generator: softplus(-D(fake)).mean() * weight (L110-L121 with extra_mask_weight_for_gen = 0)
    assert torch.allclose(loss.generator_loss(fp, mask), F.softplus(-fp).mean() * 10)
    g = loss.generator_loss(d(fake.requires_grad_(True))[0], mask)
    g.backward()
    assert fake.grad.abs().sum() > 0


def test_feature_matching_and_masked_l1_match_official():
    g = torch.Generator().manual_seed(0)
    fa = [torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 8, 4, 4, generator=g)]
    fb = [torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 8, 4, 4, generator=g)]
    mask = (torch.rand(2, 1, 16, 16, generator=g) > 0.5).float()
    # feature_matching.py L20-L33
    ref = torch.stack([F.mse_loss(a, b) for a, b in zip(fa, fb)]).mean()
    assert torch.allclose(feature_matching_loss(fa, fb), ref)
    res = 0
    for a, b in zip(fa, fb):
        cm = F.interpolate(mask, size=a.shape[-2:], mode='bilinear', align_corners=False)
        res = res + ((a - b).pow(2) * (1 - cm)).mean()
    assert torch.allclose(feature_matching_loss(fa, fb, mask), res / 2)
    # L13-L17
    p, t, m = torch.rand(2, 3, 16, 16, generator=g), torch.rand(2, 3, 16, 16, generator=g), mask
    ref = ((m * 0 + (1 - m) * 10) * F.l1_loss(p, t, reduction='none')).mean()
    assert torch.allclose(masked_l1_loss(p, t, m, 10, 0), ref)


def test_resnet_pl_matches_dilated_resnet50(tmp_path):
    """ADE20k resnet50dilated = deep stem + torchvision's Bottleneck stages (inplanes 128) with layer3/4 dilated
    (torchvision's replace_stride_with_dilation does the same as ade20k's _nostride_dilate). Random weights in
    the ade20k file layout; losses.perceptual.py ResNetPL.forward: sum of per-stage MSE times weight."""
    import torchvision
    from torchvision.models.resnet import Bottleneck, ResNet

    torch.manual_seed(0)
    tv = ResNet(Bottleneck, [3, 4, 6, 3], replace_stride_with_dilation=[False, True, True])
    tv.inplanes, tv.dilation = 128, 1  # ade20k's stem ends with 128 channels: rebuild the stages after it
    tv.layer1 = tv._make_layer(Bottleneck, 64, 3)
    tv.layer2 = tv._make_layer(Bottleneck, 128, 4, stride=2)
    tv.layer3 = tv._make_layer(Bottleneck, 256, 6, stride=2, dilate=True)
    tv.layer4 = tv._make_layer(Bottleneck, 512, 3, stride=2, dilate=True)
    stem = nn.ModuleDict(dict(conv1=nn.Conv2d(3, 64, 3, 2, 1, bias=False), bn1=nn.BatchNorm2d(64),
                              conv2=nn.Conv2d(64, 64, 3, 1, 1, bias=False), bn2=nn.BatchNorm2d(64),
                              conv3=nn.Conv2d(64, 128, 3, 1, 1, bias=False), bn3=nn.BatchNorm2d(128)))
    for m in list(stem.values()) + [tv]:
        for mod in m.modules():
            if isinstance(mod, nn.BatchNorm2d):  # non-trivial statistics
                mod.running_mean.uniform_(-0.1, 0.1)
                mod.running_var.uniform_(0.5, 1.5)
    sd = {**{k: v for k, v in stem.state_dict().items()},
          **{k: v for k, v in tv.state_dict().items() if k.startswith("layer")}}
    sd = {k: v for k, v in sd.items() if not k.endswith("num_batches_tracked")}  # an old (pre-0.4.1) file
    p = tmp_path / "encoder_epoch_20.pth"
    torch.save(sd, p)
    pl = ResNetPL(weight=30, weights=p)
    tv.eval(), stem.eval()

    def feats(x):
        mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
        std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
        x = (x - mean) / std
        for i in (1, 2, 3):
            x = F.relu(stem[f"bn{i}"](stem[f"conv{i}"](x)))
        x = F.max_pool2d(x, 3, 2, 1)
        out = []
        for layer in (tv.layer1, tv.layer2, tv.layer3, tv.layer4):
            x = layer(x)
            out.append(x)
        return out

    g = torch.Generator().manual_seed(1)
    a, b = torch.rand(1, 3, 48, 48, generator=g), torch.rand(1, 3, 48, 48, generator=g)
    with torch.no_grad():
        ref = torch.stack([F.mse_loss(u, v) for u, v in zip(feats(a), feats(b))]).sum() * 30
        ours = pl(a, b)
    assert torch.allclose(ours, ref, rtol=1e-5) and ours > 0
    assert torchvision.__version__  # the reference is torchvision's Bottleneck


def _lama_cfg(tmp_path):
    from .test_diffir import TINY

    net = {**TINY.to_dict(), "variant": "inpaint", "inp_channels": 4}
    losses = {"l1": {"weight_missing": 0, "weight_known": 10}, "kd": {"loss_weight": 1.0, "temperature": 0.15},
              "perceptual": {"weight": 0},
              "adversarial": {"kind": "r1", "weight": 10, "gp_coef": 0.001, "mask_as_fake_target": True,
                              "allow_scale_mask": True},
              "feature_matching": {"weight": 100}, "resnet_pl": {"weight": 30}}
    stage = {"total_iter": 4, "losses": losses, "discriminator": {"kind": "pix2pixhd_nlayer", "input_nc": 3,
                                                                   "ndf": 8, "n_layers": 4},
             "optimizers": {"generator": {"kind": "adam", "lr": 2e-4}, "discriminator": {"kind": "adam", "lr": 1e-4}}}
    return {"task": "inpaint", "network": net, "gt_size": 64, "batch_size": 2, "seed": 0, "ema_decay": 0,
            "masks": "train_256", "resnet_pl_weights": "random", "save_checkpoint_freq": 2,
            "stage1": {**stage, "output": str(tmp_path / "s1.safetensors")},
            "stage2": {**stage, "output": str(tmp_path / "s2.safetensors")}}


def test_lama_trainer_stages_and_resume(tmp_path):
    from PIL import Image

    from restorekit.methods.diffir.train import train_diffir
    from restorekit.weights import load_state_dict

    d = tmp_path / "data"
    d.mkdir()
    rng = np.random.default_rng(0)
    for i in range(2):
        Image.fromarray((rng.random((64, 64, 3)) * 255).astype(np.uint8)).save(d / f"{i}.png")
    cfg = _lama_cfg(tmp_path)
    for st in (1, 2):
        info = train_diffir(cfg, st, data=str(d), log=lambda s: None)
        h = info["history"]
        keys = {"gen_l1", "gen_adv", "gen_fm", "gen_resnet_pl", "discr_adv"} | ({"gen_labs"} if st == 2 else set())
        assert set(h[-1]) - {"lr", "lr_d", "gt_size", "batch"} == keys
        assert all(r["lr"] == 2e-4 and r["lr_d"] == 1e-4 for r in h)
    res = train_diffir(cfg, 2, data=str(d), output=str(tmp_path / "r.safetensors"), log=lambda s: None,
                       resume=str(tmp_path / "s2_training_states" / "2.state"))
    assert res["history"] == info["history"]
    a, _ = load_state_dict(tmp_path / "r.safetensors")
    b, _ = load_state_dict(tmp_path / "s2.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
