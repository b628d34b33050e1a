"""Tests of oscfast.degrade: the observation generators and the degrade() dispatcher."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from oscfast.degradations import (
    add_gaussian_noise,
    apply_mask,
    blur,
    crop_to_multiple,
    downsample,
    jpeg_compress,
    random_pixel_mask,
    text_mask,
)
from oscfast.operators import BlurOperator, gaussian_kernel
from oscfast.tasks import TASKS, degrade


@pytest.fixture
def image() -> np.ndarray:
    """A smooth-ish RGB test image, uint8 / 255 like a loaded file, 64 x 48."""
    rng = np.random.default_rng(123)
    yy, xx = np.mgrid[0:64, 0:48]
    base = 0.5 + 0.3 * np.sin(xx / 5.0)[..., None] * np.cos(yy / 7.0)[..., None]
    img = base + 0.1 * rng.random((64, 48, 3))
    return (np.rint(np.clip(img, 0, 1) * 255) / 255).astype(np.float32)


# ------------------------------------------------------------------------------------------
# Gaussian noise
# ------------------------------------------------------------------------------------------
def test_noise_statistics_on_mid_grey() -> None:
    sigma = 25 / 255
    x = np.full((64, 64, 3), 0.5, dtype=np.float32)
    y = add_gaussian_noise(x, sigma, seed=0)
    assert y.shape == x.shape and y.dtype == np.float32
    n = x.size
    noise = y.astype(np.float64) - 0.5
    # 0.5 is 5.1 sigma from either clip bound, so clipping is negligible. The sample std has
    # standard error ~ sigma / sqrt(2n) and the mean sigma / sqrt(n): allow 5 standard errors.
    assert abs(noise.std() - sigma) < 5 * sigma / math.sqrt(2 * n)
    assert abs(noise.mean()) < 5 * sigma / math.sqrt(n)


def test_noise_seeded_clipped_not_quantised(image: np.ndarray) -> None:
    a = add_gaussian_noise(image, seed=7)
    np.testing.assert_array_equal(a, add_gaussian_noise(image, seed=7))
    assert not np.array_equal(a, add_gaussian_noise(image, seed=8))
    assert a.min() >= 0.0 and a.max() <= 1.0
    assert not np.allclose(a * 255, np.rint(a * 255))  # not quantised to 8 bits
    # Reference recipe: float64 noise from default_rng(seed), clipped, cast to float32.
    noise = np.random.default_rng(7).normal(0.0, 25 / 255, image.shape)
    ref = np.clip(image.astype(np.float64) + noise, 0.0, 1.0)
    np.testing.assert_array_equal(a, ref.astype(np.float32))


def test_noise_without_clip_and_zero_sigma(image: np.ndarray) -> None:
    x = np.full((32, 32), 0.02, dtype=np.float32)
    assert add_gaussian_noise(x, 0.1, clip=False).min() < 0.0
    np.testing.assert_array_equal(add_gaussian_noise(image, 0.0), image)
    with pytest.raises(ValueError, match="sigma"):
        add_gaussian_noise(image, -0.1)


# ------------------------------------------------------------------------------------------
# JPEG
# ------------------------------------------------------------------------------------------
def test_jpeg_changes_image_keeps_shape_and_range(image: np.ndarray) -> None:
    y = jpeg_compress(image, quality=10)
    assert y.shape == image.shape and y.dtype == np.float32
    assert y.min() >= 0.0 and y.max() <= 1.0
    err10 = float(np.mean((y - image) ** 2))
    err90 = float(np.mean((jpeg_compress(image, quality=90) - image) ** 2))
    assert err10 > 0.0
    assert err90 < err10
    np.testing.assert_array_equal(y * 255, np.rint(y * 255))  # 8-bit round trip


@pytest.mark.parametrize("gray_shape", [(40, 24), (40, 24, 1)])
def test_jpeg_grayscale_stays_grayscale(gray_shape: tuple[int, ...]) -> None:
    rng = np.random.default_rng(0)
    x = rng.random(gray_shape).astype(np.float32)
    y = jpeg_compress(x, quality=30)
    assert y.shape == gray_shape


def test_jpeg_errors(image: np.ndarray) -> None:
    with pytest.raises(ValueError, match="quality"):
        jpeg_compress(image, quality=0)
    with pytest.raises(ValueError, match="1 or 3 channels"):
        jpeg_compress(np.zeros((8, 8, 4), np.float32))


# ------------------------------------------------------------------------------------------
# Crop and downsample
# ------------------------------------------------------------------------------------------
def test_crop_to_multiple_floor_offset() -> None:
    # The snail case of reference-configs.md section 3: 400 x 261 -> 384 x 256, box (8, 2).
    h, w = 261, 400
    img = np.arange(h * w, dtype=np.float64).reshape(h, w)
    out = crop_to_multiple(img, 32)
    assert out.shape == (256, 384)
    assert out[0, 0] == img[2, 8]
    # Odd excess: floor of half. 37 rows, d=32 -> excess 5, offset 2.
    assert crop_to_multiple(np.zeros((37, 32, 3)), 32).shape == (32, 32, 3)
    assert crop_to_multiple(np.arange(37.0)[:, None].repeat(32, 1), 32)[0, 0] == 2.0
    with pytest.raises(ValueError, match="smaller"):
        crop_to_multiple(np.zeros((16, 64)), 32)
    with pytest.raises(ValueError, match="multiple"):
        crop_to_multiple(np.zeros((64, 64)), 0)


@pytest.mark.parametrize("factor", [2, 4, 8])
def test_downsample_equals_pil(image: np.ndarray, factor: int) -> None:
    u8 = np.rint(image * 255).astype(np.uint8)
    h, w = image.shape[:2]
    ref = np.asarray(Image.fromarray(u8).resize((w // factor, h // factor), Image.LANCZOS))
    out = downsample(image, factor)
    assert out.shape == (h // factor, w // factor, 3) and out.dtype == np.float32
    np.testing.assert_array_equal(out, ref.astype(np.float32) / np.float32(255))


def test_downsample_grayscale_shapes(image: np.ndarray) -> None:
    gray = image[..., 0]
    assert downsample(gray, 4).shape == (16, 12)
    assert downsample(image[..., :1], 4).shape == (16, 12, 1)
    np.testing.assert_array_equal(downsample(image[..., :1], 4)[..., 0], downsample(gray, 4))


def test_downsample_rejects_non_multiple(image: np.ndarray) -> None:
    with pytest.raises(ValueError, match="multiple of factor 5"):
        downsample(image, 5)


# ------------------------------------------------------------------------------------------
# Masks
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("keep", [0.5, 0.02, 0.9])
def test_random_pixel_mask_keep_fraction(keep: float) -> None:
    h, w = 128, 96
    m = random_pixel_mask((h, w), keep, seed=3)
    assert m.shape == (h, w, 1) and m.dtype == np.float32
    assert set(np.unique(m)) <= {0.0, 1.0}
    n = h * w
    # Kept count ~ Binomial(n, keep): allow 5 standard deviations.
    assert abs(m.mean() - keep) < 5 * math.sqrt(keep * (1 - keep) / n)
    np.testing.assert_array_equal(m, random_pixel_mask((h, w), keep, seed=3))
    assert not np.array_equal(m, random_pixel_mask((h, w), keep, seed=4))


def test_random_pixel_mask_channels_and_errors() -> None:
    m = random_pixel_mask((16, 16), 0.5, seed=0, channels=3)
    assert m.shape == (16, 16, 3)
    assert not np.array_equal(m[..., 0], m[..., 1])
    with pytest.raises(ValueError, match="keep"):
        random_pixel_mask((4, 4), 1.5)
    with pytest.raises(ValueError, match="shape_hw"):
        random_pixel_mask((4, 0))


def test_apply_mask_broadcast(image: np.ndarray) -> None:
    m = random_pixel_mask(image.shape[:2], 0.5, seed=1)
    expected = image * m
    for mask in (m, m[..., 0], np.repeat(m, 3, axis=2), m.astype(bool)):
        out = apply_mask(image, mask)
        assert out.shape == image.shape and out.dtype == np.float32
        np.testing.assert_array_equal(out, expected)
    gray = image[..., 0]
    np.testing.assert_array_equal(apply_mask(gray, m), gray * m[..., 0])
    np.testing.assert_array_equal(apply_mask(gray, m[..., 0]), gray * m[..., 0])


def test_apply_mask_errors(image: np.ndarray) -> None:
    with pytest.raises(ValueError, match=r"mask has shape \(10, 10\), image is \(64, 48"):
        apply_mask(image, np.ones((10, 10)))
    with pytest.raises(ValueError, match="divide a"):
        apply_mask(image, np.full(image.shape[:2], 255.0))
    with pytest.raises(ValueError, match="mask has shape"):
        apply_mask(image, np.ones((64, 48, 2)))


def test_text_mask() -> None:
    m = text_mask((256, 192), seed=0)
    assert m.shape == (256, 192, 1) and m.dtype == np.float32
    assert set(np.unique(m)) == {0.0, 1.0}
    missing = 1 - m.mean()
    assert 0.05 <= missing < 0.08
    np.testing.assert_array_equal(m, text_mask((256, 192), seed=0))
    assert not np.array_equal(m, text_mask((256, 192), seed=1))
    assert 0.2 <= 1 - text_mask((64, 64), seed=2, coverage=0.2).mean() < 0.3
    # Strokes are thin: most hole pixels have an observed pixel within 2 px along a row or column.
    holes = m[..., 0] == 0
    near = np.zeros_like(holes)
    for axis in (0, 1):
        for s in (-2, -1, 1, 2):
            near |= np.roll(m[..., 0], s, axis=axis) == 1
    assert (near & holes).sum() > 0.9 * holes.sum()
    with pytest.raises(ValueError, match="coverage"):
        text_mask((8, 8), coverage=0.0)


# ------------------------------------------------------------------------------------------
# Blur
# ------------------------------------------------------------------------------------------
def test_blur_equals_blur_operator(image: np.ndarray) -> None:
    out = blur(image, sigma=1.5)
    assert out.shape == image.shape and out.dtype == np.float32
    op = BlurOperator(gaussian_kernel(1.5))
    x = torch.from_numpy(image).permute(2, 0, 1)[None].double()
    ref = op(x)[0].permute(1, 2, 0).numpy()
    np.testing.assert_allclose(out, ref, rtol=0, atol=1e-7)
    # The float32 task operator gives the same observation to float32 precision.
    ref32 = op.to(torch.float32)(x.float())[0].permute(1, 2, 0).numpy()
    np.testing.assert_allclose(out, ref32, rtol=0, atol=1e-6)


def test_blur_kernel_grayscale_and_errors(image: np.ndarray) -> None:
    k = np.zeros((3, 3))
    k[1, 2] = 1.0  # shift by one pixel: y[i, j] = x[i, j - 1] (true convolution)
    gray = image[..., 0]
    out = blur(gray, kernel=k)
    assert out.shape == gray.shape
    np.testing.assert_array_equal(out[:, 1:], gray[:, :-1])
    np.testing.assert_array_equal(blur(image), blur(image, sigma=2.0))
    with pytest.raises(ValueError, match="not both"):
        blur(image, sigma=1.0, kernel=k)


# ------------------------------------------------------------------------------------------
# Dispatcher
# ------------------------------------------------------------------------------------------
def test_degrade_tasks(image: np.ndarray) -> None:
    np.testing.assert_array_equal(
        degrade(image, "denoise", seed=5, sigma=0.1), add_gaussian_noise(image, 0.1, seed=5)
    )
    np.testing.assert_array_equal(degrade(image, "jpeg", quality=20), jpeg_compress(image, 20))
    np.testing.assert_array_equal(
        degrade(image, "super_resolution", factor=8), downsample(image, 8)
    )
    np.testing.assert_array_equal(degrade(image, "deblur", sigma=1.0), blur(image, sigma=1.0))
    k = gaussian_kernel(1.0, size=5)
    np.testing.assert_array_equal(degrade(image, "deblur", kernel=k), blur(image, kernel=k))

    y, m = degrade(image, "inpaint", seed=2)
    np.testing.assert_array_equal(m, text_mask(image.shape[:2], seed=2))
    np.testing.assert_array_equal(y, image * m)

    given = random_pixel_mask(image.shape[:2], 0.7, seed=9)
    y, m = degrade(image, "inpaint", mask=given)
    np.testing.assert_array_equal(m, given)
    np.testing.assert_array_equal(y, image * given)

    y, m = degrade(image, "restore_pixels", seed=4, keep=0.3)
    np.testing.assert_array_equal(m, random_pixel_mask(image.shape[:2], 0.3, seed=4))
    np.testing.assert_array_equal(y, image * m)

    y, m = degrade(image[..., 0], "restore_pixels")
    assert y.shape == image.shape[:2] and m.shape == (*image.shape[:2], 1)


def test_degrade_unknown_task_and_option(image: np.ndarray) -> None:
    with pytest.raises(ValueError, match="valid tasks: denoise, jpeg, super_resolution"):
        degrade(image, "sharpen")
    with pytest.raises(ValueError, match=r"option\(s\) factor .*valid options: noise, severity, sigma, clip"):
        degrade(image, "denoise", factor=4)
    with pytest.raises(ValueError, match="coverage and keep apply only to a generated mask"):
        degrade(image, "inpaint", mask=np.ones(image.shape[:2]), coverage=0.1)
    degradable = {name for name, cls in TASKS.items() if cls.degrade_options}
    assert degradable == {"denoise", "jpeg", "super_resolution", "inpaint", "restore_pixels", "deblur"}
    with pytest.raises(ValueError, match="unknown task 'custom'"):
        degrade(image, "custom")


@pytest.mark.parametrize(
    ("bad", "error", "match"),
    [
        (np.zeros((4, 4), np.uint8), TypeError, "divide a uint8 image by 255"),
        (np.full((4, 4), 1.5, np.float32), ValueError, r"\[0, 1\]"),
        (np.full((4, 4), np.nan, np.float32), ValueError, "NaN"),
        (np.zeros((1, 4, 4, 3), np.float32), ValueError, r"\(H, W\) or \(H, W, C\)"),
        (np.zeros((0, 4), np.float32), ValueError, "empty"),
        ([[0.5]], TypeError, "numpy array"),
    ],
)
def test_degrade_rejects_bad_images(bad: object, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        degrade(bad, "denoise")  # type: ignore[arg-type]
