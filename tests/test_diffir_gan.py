"""GAN-stage pieces against the BasicSR / Real-ESRGAN definitions, on fixed inputs.

References: BasicSR basicsr/archs/discriminator_arch.py (UNetDiscriminatorSN), basicsr/losses/gan_loss.py
(GANLoss), basicsr/losses/basic_loss.py + basicsr/archs/vgg_arch.py (PerceptualLoss, VGGFeatureExtractor),
basicsr/utils/img_process_util.py (usm_sharp, USMSharp). Independent libraries: torchvision (VGG19), OpenCV
(Gaussian kernel and blur)."""

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from torch.nn.utils import spectral_norm

from restorekit.nets.gan import (
    GANLoss,
    PerceptualLoss,
    UNetDiscriminatorSN,
    USMSharp,
    VGGFeatureExtractor,
    gaussian_kernel_1d,
)


class _RefUNetD(nn.Module):
    """Transcribed from BasicSR basicsr/archs/discriminator_arch.py UNetDiscriminatorSN (__init__, forward)."""

    def __init__(self, num_in_ch, num_feat=64, skip_connection=True):
        super().__init__()
        self.skip_connection = skip_connection
        norm = spectral_norm
        self.conv0 = nn.Conv2d(num_in_ch, num_feat, kernel_size=3, stride=1, padding=1)
        self.conv1 = norm(nn.Conv2d(num_feat, num_feat * 2, 4, 2, 1, bias=False))
        self.conv2 = norm(nn.Conv2d(num_feat * 2, num_feat * 4, 4, 2, 1, bias=False))
        self.conv3 = norm(nn.Conv2d(num_feat * 4, num_feat * 8, 4, 2, 1, bias=False))
        self.conv4 = norm(nn.Conv2d(num_feat * 8, num_feat * 4, 3, 1, 1, bias=False))
        self.conv5 = norm(nn.Conv2d(num_feat * 4, num_feat * 2, 3, 1, 1, bias=False))
        self.conv6 = norm(nn.Conv2d(num_feat * 2, num_feat, 3, 1, 1, bias=False))
        self.conv7 = norm(nn.Conv2d(num_feat, num_feat, 3, 1, 1, bias=False))
        self.conv8 = norm(nn.Conv2d(num_feat, num_feat, 3, 1, 1, bias=False))
        self.conv9 = nn.Conv2d(num_feat, 1, 3, 1, 1)

    def forward(self, x):
        x0 = F.leaky_relu(self.conv0(x), negative_slope=0.2, inplace=True)
        x1 = F.leaky_relu(self.conv1(x0), negative_slope=0.2, inplace=True)
        x2 = F.leaky_relu(self.conv2(x1), negative_slope=0.2, inplace=True)
        x3 = F.leaky_relu(self.conv3(x2), negative_slope=0.2, inplace=True)
        x3 = F.interpolate(x3, scale_factor=2, mode='bilinear', align_corners=False)
        x4 = F.leaky_relu(self.conv4(x3), negative_slope=0.2, inplace=True)
        if self.skip_connection:
            x4 = x4 + x2
        x4 = F.interpolate(x4, scale_factor=2, mode='bilinear', align_corners=False)
        x5 = F.leaky_relu(self.conv5(x4), negative_slope=0.2, inplace=True)
        if self.skip_connection:
            x5 = x5 + x1
        x5 = F.interpolate(x5, scale_factor=2, mode='bilinear', align_corners=False)
        x6 = F.leaky_relu(self.conv6(x5), negative_slope=0.2, inplace=True)
        if self.skip_connection:
            x6 = x6 + x0
        out = F.leaky_relu(self.conv7(x6), negative_slope=0.2, inplace=True)
        out = F.leaky_relu(self.conv8(out), negative_slope=0.2, inplace=True)
        return self.conv9(out)


@pytest.mark.parametrize("skip", [True, False])
def test_unet_discriminator_sn_matches_basicsr(skip):
    torch.manual_seed(0)
    ref = _RefUNetD(3, 8, skip)
    ours = UNetDiscriminatorSN(3, 8, skip)
    assert list(ours.state_dict()) == list(ref.state_dict())  # official net_d_*.pth keys, incl. weight_orig/_u/_v
    ours.load_state_dict(ref.state_dict(), strict=True)
    x = torch.rand(2, 3, 32, 24)
    for mode in (True, False):  # train mode runs the spectral-norm power iteration; eval does not
        ref.train(mode), ours.train(mode)
        a, b = ref(x), ours(x)
        assert a.shape == (2, 1, 32, 24) and torch.allclose(a, b, atol=1e-6, rtol=0)
    assert torch.allclose(ref.conv3.weight_u, ours.conv3.weight_u)


def _ref_gan_loss(gan_type, pred, real, is_disc, rv=1.0, fv=0.0, w=1.0):
    """Transcribed from BasicSR basicsr/losses/gan_loss.py GANLoss (_wgan_loss, _wgan_softplus_loss,
    get_target_label, forward)."""
    if gan_type in ("wgan", "wgan_softplus"):
        target = real
    else:
        target = pred.new_ones(pred.size()) * (rv if real else fv)
    if gan_type == "hinge":
        if is_disc:
            p = -pred if real else pred
            loss = nn.ReLU()(1 + p).mean()
        else:
            loss = -pred.mean()
    elif gan_type == "vanilla":
        loss = nn.BCEWithLogitsLoss()(pred, target)
    elif gan_type == "lsgan":
        loss = nn.MSELoss()(pred, target)
    elif gan_type == "wgan":
        loss = -pred.mean() if target else pred.mean()
    else:
        loss = F.softplus(-pred).mean() if target else F.softplus(pred).mean()
    return loss if is_disc else loss * w


@pytest.mark.parametrize("gan_type", ["vanilla", "lsgan", "wgan", "wgan_softplus", "hinge"])
def test_gan_loss_matches_basicsr(gan_type):
    pred = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(1)) * 3
    loss = GANLoss(gan_type, real_label_val=0.9, fake_label_val=0.1, loss_weight=0.3)
    for real in (True, False):
        for disc in (True, False):
            assert torch.allclose(loss(pred, real, disc), _ref_gan_loss(gan_type, pred, real, disc, 0.9, 0.1, 0.3))
    assert loss(pred, True, False) != loss(pred, True, True) or gan_type == "hinge"  # weight only for G


@pytest.fixture(scope="module")
def tv_vgg19(tmp_path_factory):
    """torchvision's VGG19 ``features`` (random init) saved with torchvision's ``features.*`` keys (the
    classifier, which the loss never uses, is left out to keep the file small)."""
    torch.manual_seed(3)
    net = nn.Module()
    net.features = torchvision.models.vgg.make_layers(torchvision.models.vgg.cfgs["E"]).eval()
    p = tmp_path_factory.mktemp("vgg") / "vgg19-dcbb9e9d.pth"
    torch.save(net.state_dict(), p)
    return net, p


def test_perceptual_loss_matches_basicsr_on_torchvision_vgg19(tv_vgg19):
    """Random weights in torchvision's VGG19 file layout: the formula is checked, not ImageNet values."""
    tv, path = tv_vgg19
    layer_weights = {"conv1_2": 0.1, "conv2_2": 0.1, "conv3_4": 1, "conv4_4": 1, "conv5_4": 1}
    loss = PerceptualLoss(layer_weights, perceptual_weight=1.0, style_weight=0.5, criterion="l1", weights=path)
    g = torch.Generator().manual_seed(0)
    x, gt = torch.rand(2, 3, 32, 32, generator=g), torch.rand(2, 3, 32, 32, generator=g)
    # reference: torchvision's features with BasicSR's layer indices (vgg_arch.py NAMES['vgg19'])
    idx = {"conv1_2": 2, "conv2_2": 7, "conv3_4": 16, "conv4_4": 25, "conv5_4": 34}
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)

    def feats(img):
        out, h = {}, (img - mean) / std
        for i, layer in enumerate(tv.features[:35]):
            h = layer(h)
            for k, j in idx.items():
                if i == j:
                    out[k] = h.clone()
        return out

    def gram(f):  # basic_loss.py PerceptualLoss._gram_mat
        n, c, h, w = f.size()
        f = f.view(n, c, w * h)
        return f.bmm(f.transpose(1, 2)) / (c * h * w)

    with torch.no_grad():
        fx, fg = feats(x), feats(gt)
        ref_p = sum(F.l1_loss(fx[k], fg[k]) * w for k, w in layer_weights.items()) * 1.0
        ref_s = sum(F.l1_loss(gram(fx[k]), gram(fg[k])) * w for k, w in layer_weights.items()) * 0.5
        p, s = loss(x, gt)
    assert torch.allclose(p, ref_p, rtol=1e-5) and torch.allclose(s, ref_s, rtol=1e-5)
    assert not any(q.requires_grad for q in loss.parameters())
    y = x.clone().requires_grad_(True)
    loss(y, gt)[0].backward()
    assert y.grad is not None and y.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="unknown vgg19 layers"):
        VGGFeatureExtractor(["conv6_1"], weights="random")


def test_vgg_weights_load_strictly(tmp_path, tv_vgg19):
    from restorekit.errors import WeightsError

    tv, path = tv_vgg19
    sd = tv.state_dict()
    sd.pop("features.34.weight")
    bad = tmp_path / "bad.pth"
    torch.save(sd, bad)
    with pytest.raises(WeightsError, match="missing"):
        VGGFeatureExtractor(["conv5_4"], weights=bad)


def test_usm_sharp_matches_basicsr_numpy_version():
    # Gaussian kernel: OpenCV's getGaussianKernel(51, 0)
    assert np.allclose(gaussian_kernel_1d(51), cv2.getGaussianKernel(51, 0)[:, 0], atol=1e-12)
    img = np.random.default_rng(0).random((48, 40, 3)).astype(np.float32)
    img = cv2.GaussianBlur(img, (5, 5), 0)  # some structure
    # transcribed from BasicSR basicsr/utils/img_process_util.py usm_sharp (weight 0.5, radius 50, threshold 10)
    radius = 51
    blur = cv2.GaussianBlur(img, (radius, radius), 0)
    residual = img - blur
    mask = (np.abs(residual) * 255 > 10).astype("float32")
    soft_mask = cv2.GaussianBlur(mask, (radius, radius), 0)
    K = np.clip(img + 0.5 * residual, 0, 1)
    ref = soft_mask * K + (1 - soft_mask) * img
    ours = USMSharp()(torch.from_numpy(img).permute(2, 0, 1)[None])[0].permute(1, 2, 0).numpy()
    assert np.abs(ours - ref).max() < 1e-5
    assert np.abs(ours - img).max() > 1e-2  # it does sharpen
