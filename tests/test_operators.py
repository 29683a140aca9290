import numpy as np
import pytest
import scipy.ndimage
import scipy.sparse.linalg as spla
import torch

from restorekit.errors import TaskError
from restorekit.operators import (BicubicDownsample, Blur, BlurDownsample, Inpainting, bicubic_kernel, box_mask,
                                  diffpir_gaussian_std, gaussian_kernel, half_mask, make_operator, motion_kernel,
                                  random_mask)


def _f64(op):
    """Run an operator in float64 so algebraic identities can be checked tightly."""
    if isinstance(op, BlurDownsample):
        op.kernel = op.kernel.double()
        op._cache.clear()
    return op


def _operators():
    g = torch.Generator().manual_seed(0)
    rand_kernel = torch.rand(7, 5, generator=g)
    mask = (torch.rand(1, 1, 24, 24, generator=g) > 0.4).float()
    return {
        "blur_gauss": Blur(gaussian_kernel(9, 1.5)),
        "blur_asym": Blur(rand_kernel / rand_kernel.sum()),
        "blur_big_kernel": Blur(gaussian_kernel(61, 3.0)),  # kernel larger than the 24x24 image
        "motion": Blur(motion_kernel(15, 0.7, rng=1)),
        "sr2_gauss": BlurDownsample(gaussian_kernel(9, 1.2), 2),
        "sr3_asym": BlurDownsample(rand_kernel / rand_kernel.sum(), 3),
        "bicubic4": BicubicDownsample(4),
        "bicubic2": BicubicDownsample(2),
        "inpaint": Inpainting(mask),
    }


OPS = _operators()


@pytest.mark.parametrize("name", list(OPS))
def test_adjoint(name):
    op = _f64(OPS[name])
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 3, 24, 24, generator=g, dtype=torch.float64)
    ax = op.forward(x)
    y = torch.randn(ax.shape, generator=g, dtype=torch.float64)
    lhs = (ax * y).sum()
    rhs = (x * op.adjoint(y)).sum()
    assert torch.allclose(lhs, rhs, rtol=1e-10, atol=1e-10), (lhs, rhs)


@pytest.mark.parametrize("name", list(OPS))
@pytest.mark.parametrize("rho", [1e-3, 0.37, 25.0])
def test_data_solution_matches_conjugate_gradient(name, rho):
    """Closed form vs scipy's CG on (A^T A + rho I) x = A^T y + rho z."""
    op = _f64(OPS[name])
    g = torch.Generator().manual_seed(2)
    shape = (1, 3, 24, 24)
    z = torch.rand(shape, generator=g, dtype=torch.float64)
    y = op.forward(torch.rand(shape, generator=g, dtype=torch.float64))
    y = y + 0.05 * torch.randn(y.shape, generator=g, dtype=torch.float64)
    closed = op.data_solution(z, y, rho)

    n = int(np.prod(shape))

    def matvec(v):
        t = torch.from_numpy(np.asarray(v, dtype=np.float64).reshape(shape))
        return (op.adjoint(op.forward(t)) + rho * t).numpy().ravel()

    A = spla.LinearOperator((n, n), matvec=matvec, dtype=np.float64)
    b = (op.adjoint(y) + rho * z).numpy().ravel()
    sol, info = spla.cg(A, b, rtol=1e-12, atol=0.0, maxiter=20000)
    assert info == 0
    np.testing.assert_allclose(closed.numpy().ravel(), sol, atol=2e-7 / min(1.0, rho) ** 0.5 * 10)
    # and it really is the minimiser: gradient of the objective vanishes
    grad = op.adjoint(op.forward(closed) - y) + rho * (closed - z)
    assert grad.abs().max() < 1e-8


def test_blur_is_wrapped_convolution():
    """Forward blur equals scipy's convolve with mode='wrap' (what DiffPIR degrades with)."""
    k = motion_kernel(11, 0.8, rng=3)
    x = np.random.default_rng(0).random((30, 26))
    ours = Blur(k).forward(torch.from_numpy(x)[None, None].float())[0, 0].numpy()
    ref = scipy.ndimage.convolve(x, k.numpy().astype(np.float64), mode="wrap")
    np.testing.assert_allclose(ours, ref, atol=1e-5)


@pytest.mark.parametrize("sf", [2, 3, 4])
def test_blur_downsample_is_classical_degradation(sf):
    """USRNet/DiffPIR classical degradation: wrapped convolution, then keep x[0::sf, 0::sf]."""
    k = gaussian_kernel(13, 1.7)
    x = np.random.default_rng(1).random((24, 36))
    ours = BlurDownsample(k, sf).forward(torch.from_numpy(x)[None, None].float())[0, 0].numpy()
    ref = scipy.ndimage.convolve(x, k.numpy().astype(np.float64), mode="wrap")[0::sf, 0::sf]
    np.testing.assert_allclose(ours, ref, atol=1e-5)


@pytest.mark.parametrize("sf", [2, 3, 4])
def test_bicubic_kernel_reproduces_antialiased_bicubic(sf):
    """Blur by bicubic_kernel + decimation == antialiased bicubic downscaling, away from the border."""
    g = torch.Generator().manual_seed(sf)
    x = torch.rand(1, 3, 12 * sf * 2, 12 * sf * 2, generator=g)
    op = BicubicDownsample(sf)
    a, b = op.forward(x), op.degrade(x)
    assert a.shape == b.shape == (1, 3, 24, 24)
    m = 2 * sf
    assert (a[..., m:-m, m:-m] - b[..., m:-m, m:-m]).abs().max() < 1e-5
    # sanity: the check is sensitive (a shifted kernel fails it)
    shifted = BlurDownsample(torch.roll(bicubic_kernel(sf), 1, dims=0), sf).forward(x)
    assert (shifted[..., m:-m, m:-m] - b[..., m:-m, m:-m]).abs().max() > 1e-2


def test_kernels_sum_to_one_and_are_valid():
    for k in [gaussian_kernel(61, 3.0), gaussian_kernel(61, 9.0), gaussian_kernel(5, 0.5)]:
        assert abs(k.sum().item() - 1) < 1e-6 and (k >= 0).all()
    for seed in range(5):
        for inten in (0.0, 0.5, 1.0):
            k = motion_kernel(61, inten, rng=seed)
            assert k.shape == (61, 61)
            assert abs(k.sum().item() - 1) < 1e-6 and (k >= 0).all()
    for sf in (1, 2, 3, 4):
        assert abs(bicubic_kernel(sf).sum().item() - 1) < 1e-6


def test_gaussian_kernel_shape():
    k = gaussian_kernel(21, 2.0).double()
    r = torch.arange(21, dtype=torch.float64) - 10
    g1 = torch.exp(-r ** 2 / (2 * 2.0 ** 2))
    ref = torch.outer(g1, g1)
    ref /= ref.sum()
    assert (k - ref).abs().max() < 1e-4
    assert k.argmax().item() == 10 * 21 + 10


def test_diffpir_gaussian_std_range():
    stds = [diffpir_gaussian_std(s) for s in range(200)]
    assert min(stds) >= 3.0 and max(stds) < 9.0
    assert max(stds) - min(stds) > 4  # really random over the range
    assert diffpir_gaussian_std(7) == diffpir_gaussian_std(7)


def _spread(k):
    k = k.double()
    yy, xx = torch.meshgrid(torch.arange(k.shape[0]), torch.arange(k.shape[1]), indexing="ij")
    cy, cx = (k * yy).sum(), (k * xx).sum()
    return float((k * ((yy - cy) ** 2 + (xx - cx) ** 2)).sum().sqrt())


def test_motion_kernel_intensity_and_seed():
    low = np.mean([_spread(motion_kernel(61, 0.0, rng=s)) for s in range(8)])
    high = np.mean([_spread(motion_kernel(61, 1.0, rng=s)) for s in range(8)])
    assert high > 1.5 * low
    assert torch.equal(motion_kernel(61, 0.5, rng=4), motion_kernel(61, 0.5, rng=4))
    assert not torch.equal(motion_kernel(61, 0.5, rng=4), motion_kernel(61, 0.5, rng=5))
    k = motion_kernel(61, 0.5, rng=0)
    assert (k > 1e-4).sum() > 10  # a streak, not a delta


def test_masks():
    m = random_mask(64, 48, 0.5, rng=0)
    assert m.shape == (1, 1, 64, 48)
    assert int((m == 0).sum()) == int(64 * 48 * 0.5)
    b = box_mask(256, 256, 128, 16, rng=0)
    holes = (b[0, 0] == 0).nonzero()
    assert len(holes) == 128 * 128
    assert holes[:, 0].min() >= 16 and holes[:, 0].max() < 256 - 16
    assert holes[:, 1].min() >= 16 and holes[:, 1].max() < 256 - 16
    h = half_mask(10, 10)
    assert h[..., :, :5].eq(1).all() and h[..., :, 5:].eq(0).all()
    with pytest.raises(TaskError, match="needs an image over 160 px"):
        box_mask(100, 100, 128)
    with pytest.raises(TaskError, match="needs an image over 64 px on each side"):  # the corner range is empty
        box_mask(64, 64, 32)
    assert box_mask(65, 65, 32).eq(0).sum() == 32 * 32 * 1


def test_make_operator():
    op = make_operator("deblur", (64, 64), kernel="gaussian", seed=0)
    assert isinstance(op, Blur) and op.kernel.shape == (61, 61)
    assert torch.equal(make_operator("deblur", (64, 64), kernel="motion", seed=3).kernel,
                       make_operator("deblur", (64, 64), kernel="motion", seed=3).kernel)
    assert make_operator("sr", (64, 64), scale=4).output_size(64, 64) == (16, 16)
    assert make_operator("sr", (64, 64), scale=2, sr_mode="blur").sf == 2
    assert isinstance(make_operator("inpaint", (64, 64), mask="half"), Inpainting)
    with pytest.raises(TaskError):
        make_operator("colorize", (64, 64))
    with pytest.raises(TaskError):
        make_operator("deblur", (64, 64), kernel="disk")


def test_inpaint_solution_elementwise():
    m = torch.tensor([[[[1.0, 0.0]]]])
    op = Inpainting(m)
    z = torch.tensor([[[[0.2, 0.7]]]])
    y = torch.tensor([[[[1.0, 0.0]]]])
    out = op.data_solution(z, y, 1.0)
    assert torch.allclose(out, torch.tensor([[[[0.6, 0.7]]]]))


def test_sr_interpolate_consistency():
    # upsampling a constant image then degrading gives the constant back
    x = torch.full((1, 3, 32, 32), 0.3)
    for op in (BicubicDownsample(4), BlurDownsample(gaussian_kernel(9, 1.0), 2)):
        assert torch.allclose(op.forward(x), torch.full_like(op.forward(x), 0.3), atol=1e-6)
