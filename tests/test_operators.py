"""Tests of oscfast.operators: published Lanczos taps, shapes, borders and exact adjoints."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from oscfast.operators import (
    BlurOperator,
    IdentityOperator,
    LanczosDownsampler,
    MaskOperator,
    gaussian_kernel,
    lanczos2_kernel,
    lanczos2_taps_1d,
)

# reference-configs.md section 4: normalised x4 taps, first half of a symmetric set of 16.
PUBLISHED_X4_TAPS = [
    -0.001065, -0.009752, -0.020384, -0.014878, 0.024594, 0.098658, 0.183115, 0.239711,
]


def _dot(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a * b).sum())


def _assert_adjoint(op: torch.nn.Module, x_shape: tuple[int, ...], seed: int = 0) -> None:
    """Dot test <A x, y> == <x, A^T y> in float64."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(*x_shape, generator=g, dtype=torch.float64)
    ax = op(x)
    y = torch.randn(ax.shape, generator=g, dtype=torch.float64)
    aty = op.adjoint(y)
    assert aty.shape == x.shape
    lhs, rhs = _dot(ax, y), _dot(x, aty)
    assert lhs == pytest.approx(rhs, rel=1e-10, abs=1e-12)


# ------------------------------------------------------------------------------------------
# Lanczos kernel
# ------------------------------------------------------------------------------------------
def test_x4_taps_match_published_values() -> None:
    taps = lanczos2_taps_1d(4)
    assert taps.dtype == np.float64
    assert taps.shape == (16,)
    np.testing.assert_allclose(taps[:8], PUBLISHED_X4_TAPS, atol=1e-6)
    np.testing.assert_array_equal(taps, taps[::-1])
    assert taps.sum() == pytest.approx(1.0, abs=1e-14)


@pytest.mark.parametrize(("factor", "size"), [(2, 8), (4, 16), (8, 32)])
def test_kernel_size_normalised_separable(factor: int, size: int) -> None:
    k = lanczos2_kernel(factor)
    assert k.shape == (size, size)
    assert k.dtype == np.float64
    assert k.sum() == pytest.approx(1.0, abs=1e-12)
    taps = lanczos2_taps_1d(factor)
    np.testing.assert_allclose(k, np.outer(taps, taps), rtol=0, atol=1e-16)
    assert np.linalg.matrix_rank(k) == 1
    np.testing.assert_allclose(k, k.T, atol=0)


def test_kernel_matches_unnormalised_formula() -> None:
    # k[i, j] = L(t_i) L(t_j) normalised to sum 1, written out independently of the module.
    f, a = 8, 2
    i = np.arange(1, 4 * f + 1)
    t = np.abs(i + 0.5 - (4 * f + 2) / 2) / f
    lw = a * np.sin(np.pi * t) * np.sin(np.pi * t / a) / (np.pi**2 * t**2)
    k = np.outer(lw, lw)
    np.testing.assert_allclose(lanczos2_kernel(f), k / k.sum(), rtol=1e-12)


@pytest.mark.parametrize(("bad", "error"), [(0, ValueError), (-2, ValueError), (2.5, ValueError), (True, TypeError)])
def test_kernel_rejects_bad_factor(bad: object, error: type[Exception]) -> None:
    # one message style for every number (oscfast.checks): a bool is not a number, a wrong value is a ValueError
    with pytest.raises(error, match="factor must be a positive integer"):
        lanczos2_taps_1d(bad)  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------
# LanczosDownsampler
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("factor", "pad"), [(4, 6), (8, 12)])
def test_replication_padding_width(factor: int, pad: int) -> None:
    down = LanczosDownsampler(factor, channels=3)
    assert down.padding == (pad, pad, pad, pad)
    assert down.weight.shape == (3, 1, 4 * factor, 4 * factor)
    assert not list(down.parameters())


@pytest.mark.parametrize(
    ("factor", "hw", "out"),
    [(4, (64, 64), (16, 16)), (4, (32, 48), (8, 12)), (8, (64, 128), (8, 16)), (8, (8, 8), (1, 1))],
)
def test_downsampler_output_shape(
    factor: int, hw: tuple[int, int], out: tuple[int, int]
) -> None:
    down = LanczosDownsampler(factor, channels=3)
    y = down(torch.rand(2, 3, *hw))
    assert y.shape == (2, 3, *out)


def test_downsampler_matches_dense_reference() -> None:
    # Upstream: ReplicationPad2d(6) then a full Conv2d with weight[c, c] = k, zero cross-channel
    # weights and stride 4.
    factor, c = 4, 3
    k = torch.from_numpy(lanczos2_kernel(factor))
    weight = torch.zeros(c, c, 16, 16, dtype=torch.float64)
    for ch in range(c):
        weight[ch, ch] = k
    x = torch.rand(1, c, 40, 24, dtype=torch.float64)
    ref = F.conv2d(torch.nn.ReplicationPad2d(6)(x), weight, stride=factor)
    torch.testing.assert_close(LanczosDownsampler(factor, c)(x), ref, rtol=1e-12, atol=1e-14)


def test_lr_pixel_centred_on_hr_block() -> None:
    # LR pixel m is centred on HR coordinate 4m + 1.5: a ramp in x maps onto that grid.
    factor = 4
    w = 64
    ramp = torch.arange(w, dtype=torch.float64).expand(1, 1, 8, w)
    y = LanczosDownsampler(factor, channels=1)(ramp)
    centres = factor * torch.arange(w // factor, dtype=torch.float64) + 1.5
    # Away from the replicated border the symmetric kernel reproduces a linear ramp exactly.
    torch.testing.assert_close(y[0, 0, 1, 2:-2], centres[2:-2], rtol=0, atol=1e-10)


@pytest.mark.parametrize("factor", [2, 3, 4, 8])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_constant_image_stays_constant(factor: int, dtype: torch.dtype) -> None:
    down = LanczosDownsampler(factor, channels=3)
    x = torch.full((1, 3, 8 * factor, 5 * factor), 0.37, dtype=dtype)
    y = down(x)
    assert y.dtype == dtype
    tol = 1e-6 if dtype == torch.float32 else 1e-13
    # Including the border rows and columns: replication padding creates no dark edge.
    torch.testing.assert_close(y, torch.full_like(y, 0.37), rtol=0, atol=tol)


@pytest.mark.parametrize(
    ("factor", "hw"),
    [(2, (10, 14)), (3, (9, 15)), (4, (16, 16)), (4, (12, 28)), (8, (16, 40)), (8, (8, 8))],
)
def test_downsampler_adjoint(factor: int, hw: tuple[int, int]) -> None:
    _assert_adjoint(LanczosDownsampler(factor, channels=3), (2, 3, *hw), seed=factor)


def test_downsampler_adjoint_matches_autograd() -> None:
    down = LanczosDownsampler(4, channels=2)
    x = torch.randn(1, 2, 20, 12, dtype=torch.float64)
    y = torch.randn(1, 2, 5, 3, dtype=torch.float64)
    _, vjp = torch.func.vjp(down, x)
    (ref,) = vjp(y)
    torch.testing.assert_close(down.adjoint(y), ref, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("hw", [(30, 32), (32, 30), (2, 4)])
def test_downsampler_rejects_non_multiple(hw: tuple[int, int]) -> None:
    down = LanczosDownsampler(4, channels=3)
    with pytest.raises(ValueError, match="multiple"):
        down(torch.rand(1, 3, *hw))


def test_downsampler_rejects_bad_input() -> None:
    down = LanczosDownsampler(4, channels=3)
    with pytest.raises(ValueError, match="channels"):
        down(torch.rand(1, 1, 16, 16))
    with pytest.raises(ValueError, match="BCHW"):
        down(torch.rand(3, 16, 16))
    with pytest.raises(TypeError, match="floating"):
        down(torch.ones(1, 3, 16, 16, dtype=torch.int64))
    with pytest.raises(ValueError, match="channels"):
        LanczosDownsampler(4, channels=0)


def test_downsampler_channels_last() -> None:
    down = LanczosDownsampler(4, channels=3)
    x = torch.rand(2, 3, 32, 24)
    xc = x.to(memory_format=torch.channels_last)
    torch.testing.assert_close(down(xc), down(x), rtol=1e-6, atol=1e-7)
    y = torch.rand(2, 3, 8, 6).to(memory_format=torch.channels_last)
    torch.testing.assert_close(down.adjoint(y), down.adjoint(y.contiguous()), rtol=1e-6, atol=1e-7)


def test_downsampler_module_cast_and_grad() -> None:
    down = LanczosDownsampler(2, channels=1).to(torch.float32)
    assert down.weight.dtype == torch.float32
    x = torch.rand(1, 1, 8, 8, requires_grad=True)
    down(x).sum().backward()
    assert x.grad is not None and x.grad.shape == x.shape


# ------------------------------------------------------------------------------------------
# Mask, blur, identity
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("mask_channels", [1, 3])
def test_mask_operator(mask_channels: int) -> None:
    g = torch.Generator().manual_seed(1)
    m = (torch.rand(1, mask_channels, 9, 7, generator=g) > 0.5).double()
    op = MaskOperator(m)
    x = torch.rand(2, 3, 9, 7, dtype=torch.float64, generator=g)
    torch.testing.assert_close(op(x), x * m)
    assert op(x.float()).dtype == torch.float32
    _assert_adjoint(op, (2, 3, 9, 7))
    xc = x.to(memory_format=torch.channels_last)
    torch.testing.assert_close(op(xc), op(x))


def test_mask_operator_accepts_numpy_and_bool() -> None:
    m = np.zeros((5, 5), dtype=bool)
    m[1:3] = True
    op = MaskOperator(m)
    assert op.mask.shape == (1, 1, 5, 5)
    assert float(op(torch.ones(1, 1, 5, 5)).sum()) == 10.0


def test_mask_operator_errors() -> None:
    with pytest.raises(ValueError, match="0 or 1"):
        MaskOperator(torch.full((1, 1, 4, 4), 0.5))
    with pytest.raises(ValueError, match="shape"):
        MaskOperator(torch.ones(2, 1, 4, 4))
    op = MaskOperator(torch.ones(1, 1, 4, 4))
    with pytest.raises(ValueError, match="mask is"):
        op(torch.ones(1, 3, 4, 5))
    with pytest.raises(ValueError, match="mask is"):
        MaskOperator(torch.ones(1, 2, 4, 4))(torch.ones(1, 3, 4, 4))


def test_gaussian_kernel() -> None:
    k = gaussian_kernel(1.0)
    assert k.shape == (7, 7)
    assert k.sum() == pytest.approx(1.0, abs=1e-14)
    np.testing.assert_allclose(k, k.T)
    np.testing.assert_allclose(k, k[::-1, ::-1])
    assert k.argmax() == 24  # centre
    assert gaussian_kernel(1.6).shape == (11, 11)
    assert gaussian_kernel(2.0, size=5).shape == (5, 5)
    with pytest.raises(ValueError, match="sigma"):
        gaussian_kernel(0.0)
    with pytest.raises(ValueError, match="size"):
        gaussian_kernel(1.0, size=0)


def test_blur_matches_scipy_convolve_nearest() -> None:
    # Independent reference: scipy's convolution with 'nearest' (= replicate) borders.
    from scipy import ndimage

    rng = np.random.default_rng(0)
    k = rng.random((5, 3))  # asymmetric, odd sizes: the flip and centre conventions matter
    x = rng.random((11, 13))
    ref = ndimage.convolve(x, k, mode="nearest")
    out = BlurOperator(k)(torch.from_numpy(x)[None, None])[0, 0].numpy()
    np.testing.assert_allclose(out, ref, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("ksize", [(7, 7), (4, 6), (1, 5), (9, 2)])
def test_blur_shape_and_adjoint(ksize: tuple[int, int]) -> None:
    rng = np.random.default_rng(sum(ksize))
    k = rng.random(ksize)
    op = BlurOperator(k / k.sum())
    x = torch.rand(2, 3, 10, 8, dtype=torch.float64)
    assert op(x).shape == x.shape
    _assert_adjoint(op, (2, 3, 10, 8), seed=ksize[0])
    _assert_adjoint(op, (1, 1, 3, 2), seed=ksize[1])  # kernel larger than the image


def test_blur_constant_image_and_dtypes() -> None:
    op = BlurOperator(gaussian_kernel(2.0))
    for dtype in (torch.float32, torch.float64):
        x = torch.full((1, 3, 16, 12), 0.6, dtype=dtype)
        y = op(x)
        assert y.dtype == dtype
        torch.testing.assert_close(y, x, rtol=0, atol=1e-6)


def test_blur_channels_last_and_errors() -> None:
    op = BlurOperator(torch.from_numpy(gaussian_kernel(1.0)))
    x = torch.rand(2, 3, 16, 12)
    torch.testing.assert_close(op(x.to(memory_format=torch.channels_last)), op(x))
    torch.testing.assert_close(op.kernel, torch.from_numpy(gaussian_kernel(1.0)))
    with pytest.raises(ValueError, match="2-D"):
        BlurOperator(np.ones(3))
    with pytest.raises(TypeError, match="numpy array or torch.Tensor"):
        BlurOperator([[1.0]])  # type: ignore[arg-type]


def test_identity_operator() -> None:
    op = IdentityOperator()
    x = torch.rand(1, 3, 5, 5, dtype=torch.float64)
    assert op(x) is x
    assert op.adjoint(x) is x
    assert op.A(x) is x and op.A_adjoint(x) is x
    _assert_adjoint(op, (2, 3, 4, 6))


def test_deepinv_aliases() -> None:
    op = LanczosDownsampler(2, channels=1)
    x = torch.rand(1, 1, 8, 8, dtype=torch.float64)
    torch.testing.assert_close(op.A(x), op(x))
    torch.testing.assert_close(op.A_adjoint(op(x)), op.adjoint(op(x)))
