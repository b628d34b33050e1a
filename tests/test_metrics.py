"""Tests for oscfast.metrics against scikit-image's reference PSNR."""
from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from skimage.metrics import peak_signal_noise_ratio

from oscfast.metrics import psnr, psnr_torch


def _pairs(seed: int = 0):
    rng = np.random.default_rng(seed)
    cases = [((16, 16, 3), 0.01), ((33, 20, 1), 0.1), ((64, 48, 3), 0.3), ((8, 9), 0.05)]
    for shape, sigma in cases:
        reference = rng.random(shape).astype(np.float32)
        image = np.clip(reference + sigma * rng.standard_normal(shape), 0, 1).astype(np.float32)
        yield reference, image


@pytest.mark.parametrize(("reference", "image"), list(_pairs()))
def test_psnr_matches_skimage(reference, image):
    expected = peak_signal_noise_ratio(reference, image, data_range=1.0)
    assert psnr(reference, image) == pytest.approx(expected, abs=1e-12)
    assert isinstance(psnr(reference, image), float)


def test_psnr_data_range():
    rng = np.random.default_rng(1)
    reference = rng.integers(0, 256, (10, 10, 3)).astype(np.uint8)
    image = np.clip(reference.astype(int) + rng.integers(-3, 4, reference.shape), 0, 255)
    expected = peak_signal_noise_ratio(reference, image.astype(np.uint8), data_range=255)
    assert psnr(reference, image.astype(np.uint8), data_range=255) == pytest.approx(expected)


def test_psnr_known_value():
    reference = np.zeros((4, 4, 3))
    assert psnr(reference, reference + 0.1) == pytest.approx(20.0)


def test_psnr_identical_is_inf_without_warning():
    image = np.random.default_rng(2).random((5, 5, 3))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert psnr(image, image.copy()) == math.inf


def test_psnr_shape_mismatch():
    with pytest.raises(ValueError, match=r"\(4, 4, 3\).*\(4, 4, 1\)"):
        psnr(np.zeros((4, 4, 3)), np.zeros((4, 4, 1)))


def test_psnr_bad_data_range():
    with pytest.raises(ValueError, match="data_range"):
        psnr(np.zeros((2, 2)), np.ones((2, 2)), data_range=0)


@pytest.mark.parametrize(("reference", "image"), list(_pairs(3)))
def test_psnr_torch_matches_psnr(reference, image):
    expected = psnr(reference, image)
    value = psnr_torch(torch.from_numpy(reference), torch.from_numpy(image))
    assert value.ndim == 0 and value.dtype == torch.float32
    assert value.item() == pytest.approx(expected, abs=1e-4)


def test_psnr_torch_bchw_half_and_float64():
    reference, image = next(_pairs(4))
    ref_t = torch.from_numpy(reference).permute(2, 0, 1)[None]
    img_t = torch.from_numpy(image).permute(2, 0, 1)[None]
    expected = psnr(reference, image)
    assert psnr_torch(ref_t.double(), img_t.double()).item() == pytest.approx(expected, abs=1e-6)
    # float16 inputs quantise the images themselves; the metric is accumulated in float32.
    half = psnr_torch(ref_t.half(), img_t.half())
    assert half.dtype == torch.float32
    assert half.item() == pytest.approx(psnr(ref_t.half().numpy(), img_t.half().numpy()), abs=1e-3)


def test_psnr_torch_identical_is_inf_and_detached():
    image = torch.rand(1, 3, 8, 8, requires_grad=True)
    value = psnr_torch(image, image * 1.0)
    assert math.isinf(value.item()) and value.item() > 0
    assert not value.requires_grad


def test_psnr_torch_shape_mismatch():
    with pytest.raises(ValueError, match=r"\(1, 3, 4, 4\).*\(1, 1, 4, 4\)"):
        psnr_torch(torch.zeros(1, 3, 4, 4), torch.zeros(1, 1, 4, 4))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_psnr_torch_stays_on_device():
    reference = torch.rand(1, 3, 32, 32, device="cuda")
    image = (reference + 0.05 * torch.randn_like(reference)).clamp(0, 1)
    value = psnr_torch(reference, image)
    assert value.device == reference.device
    expected = psnr(reference.cpu().numpy(), image.cpu().numpy())
    assert value.item() == pytest.approx(expected, abs=1e-4)
