"""Noise-level estimators against known truth (oscfast.noise_level)."""
from __future__ import annotations

import io
import logging

import numpy as np
import pytest
import torch
from PIL import Image

from oscfast import jpeg_error as je
from oscfast import jpeg_files as jf
from oscfast import noise_level as nl
from oscfast.tasks import observation_noise_level


def smooth(size: int = 128, channels: int = 3, seed: int = 0) -> np.ndarray:
    """A smooth image in [0.2, 0.8] (no texture the estimators could mistake for noise)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    layers = []
    for _ in range(channels):
        phase = rng.uniform(0, 2 * np.pi, 2)
        layers.append(0.5 + 0.2 * np.sin(3 * xx + phase[0]) * np.cos(2 * yy + phase[1]))
    return np.stack(layers, axis=-1)


def noisy(clean: np.ndarray, sigma: float, seed: int = 1) -> tuple[np.ndarray, float]:
    """``clean`` plus Gaussian noise, and the true RMS of the noise that was added."""
    noise = np.random.default_rng(seed).normal(0.0, sigma, clean.shape)
    return clean + noise, float(np.sqrt(np.mean(noise**2)))


def photo(size: int = 128, gray: bool = False) -> np.ndarray:
    """scikit-image's astronaut (or camera) resized to ``size`` px, 8-bit."""
    from skimage import data

    image = Image.fromarray(data.camera() if gray else data.astronaut())
    return np.asarray(image.resize((size, size), Image.LANCZOS))


def jpeg_round_trip(image: np.ndarray, quality: int, **options) -> tuple[np.ndarray, bytes]:
    """Pillow JPEG encode/decode: the decoded image in [0, 1] and the file's bytes."""
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, "JPEG", quality=quality, **options)
    raw = buffer.getvalue()
    return np.asarray(Image.open(io.BytesIO(raw))) / 255.0, raw


# --------------------------------------------------------------------------------------------
# White noise
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("sigma", [0.02, 0.05, 0.1])
def test_pca_recovers_sigma_on_smooth_image(sigma):
    image, truth = noisy(smooth(), sigma)
    assert nl.pca_noise_level(image) == pytest.approx(truth, rel=0.04)


@pytest.mark.parametrize("sigma", [0.02, 0.1])
def test_donoho_close_on_smooth_image(sigma):
    image, truth = noisy(smooth(), sigma)
    assert nl.donoho_noise_level(image) == pytest.approx(truth, rel=0.08)


def test_flat_image_is_noise_only():
    image, truth = noisy(np.full((96, 96, 3), 0.5), 0.07, seed=3)
    assert nl.pca_noise_level(image) == pytest.approx(truth, rel=0.03)
    assert nl.donoho_noise_level(image) == pytest.approx(truth, rel=0.05)


def test_clean_smooth_image_has_no_noise():
    assert nl.pca_noise_level(smooth(64)) < 1e-3
    assert nl.donoho_noise_level(smooth(64)) < 1e-3


def test_pca_averages_variances_over_channels():
    clean = smooth(channels=2)
    noise = np.random.default_rng(4).normal(0.0, 1.0, clean.shape) * np.array([0.02, 0.08])
    truth = float(np.sqrt(np.mean(noise**2)))
    assert nl.pca_noise_level(clean + noise) == pytest.approx(truth, rel=0.04)


def test_gray_2d_image_equals_one_channel():
    image, _ = noisy(smooth(channels=1), 0.05)
    assert nl.pca_noise_level(image[..., 0]) == nl.pca_noise_level(image)
    assert nl.donoho_noise_level(image[..., 0]) == nl.donoho_noise_level(image)


def test_donoho_matches_historical_tasks_estimator():
    image, _ = noisy(smooth(size=37), 0.1)  # Odd size: the last row and column are dropped.
    tensor = torch.from_numpy(image).permute(2, 0, 1)[None]
    # the formula written out with torch: diagonal Haar coefficients, lower median, / 0.6745
    x = tensor[0].double()[:, :36, :36]
    diagonal = (x[:, 0::2, 0::2] - x[:, 0::2, 1::2] - x[:, 1::2, 0::2] + x[:, 1::2, 1::2]) / 2
    expected = float(diagonal.abs().flatten(1).median(dim=1).values.mean() / 0.6745)
    assert nl.donoho_noise_level(image) == pytest.approx(expected, rel=1e-12)
    assert observation_noise_level(tensor) == pytest.approx(expected, rel=1e-6)


def test_pca_strided_patches_on_large_image():
    image, truth = noisy(smooth(size=300), 0.05)
    assert nl.pca_noise_level(image, max_patches=4096) == pytest.approx(truth, rel=0.04)


def test_dispatcher():
    image, _ = noisy(smooth(64), 0.05)
    assert nl.estimate_noise_level(image) == nl.donoho_noise_level(image)
    assert nl.estimate_noise_level(image, method="pca") == nl.pca_noise_level(image)


# --------------------------------------------------------------------------------------------
# JPEG tables
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("quality", [1, 5, 10, 23, 50, 75, 90, 100])
def test_tables_for_quality_match_pillow(quality):
    _, raw = jpeg_round_trip(photo(16), quality)
    saved = Image.open(io.BytesIO(raw)).quantization
    expected = jf.jpeg_tables_for_quality(quality)
    assert sorted(saved) == sorted(expected) == [0, 1]
    for index in saved:
        assert list(saved[index]) == expected[index].tolist()


def test_quantization_and_subsampling_readers(tmp_path):
    _, raw = jpeg_round_trip(photo(32), 30, subsampling=1)
    path = tmp_path / "x.jpg"
    path.write_bytes(raw)
    tables = jf.jpeg_quantization(path)
    assert tables[1].tolist() == jf.jpeg_tables_for_quality(30)[1].tolist()
    assert jf.jpeg_subsampling(str(path)) == 1
    with Image.open(path) as opened:
        assert jf.jpeg_quantization(opened)[0].tolist() == tables[0].tolist()
    png = tmp_path / "x.png"
    Image.fromarray(photo(32)).save(png)
    assert jf.jpeg_quantization(png) is None
    assert jf.jpeg_subsampling(png.read_bytes()) is None
    with pytest.raises(ValueError, match="no such file"):
        jf.jpeg_quantization(tmp_path / "missing.jpg")


# --------------------------------------------------------------------------------------------
# JPEG error
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("quality", [10, 50])
def test_jpeg_estimate_near_true_error_colour(quality):
    clean = photo(128)
    decoded, raw = jpeg_round_trip(clean, quality)
    truth = float(np.sqrt(np.mean((decoded - clean / 255.0) ** 2)))
    tables, subsampling = jf.jpeg_quantization(raw), jf.jpeg_subsampling(raw)
    estimate = je.jpeg_noise_level(decoded, tables, subsampling=subsampling)
    assert estimate == pytest.approx(truth, rel=0.2)
    # The historical estimator sees almost none of it.
    assert nl.donoho_noise_level(decoded) < 0.5 * truth


@pytest.mark.parametrize("quality", [10, 50])
def test_jpeg_estimate_near_true_error_gray(quality):
    clean = photo(128, gray=True)
    decoded, raw = jpeg_round_trip(clean, quality)
    truth = float(np.sqrt(np.mean((decoded - clean / 255.0) ** 2)))
    estimate = je.jpeg_noise_level(decoded, jf.jpeg_quantization(raw))
    assert estimate == pytest.approx(truth, rel=0.15)


def test_jpeg_budget_terms():
    clean = photo(128)
    decoded, raw = jpeg_round_trip(clean, 30, subsampling=0)
    tables = jf.jpeg_quantization(raw)
    full = je.jpeg_error_budget(decoded, tables, subsampling=0)
    assert full.subsampling == 0.0
    assert full.lattice_fit > 0.7
    assert full.total == pytest.approx(full.luma + full.chroma + full.rounding)
    assert full.rms == pytest.approx(np.sqrt(full.total))
    truth = float(np.sqrt(np.mean((decoded - clean / 255.0) ** 2)))
    assert full.rms == pytest.approx(truth, rel=0.2)
    subsampled = je.jpeg_error_budget(decoded, tables, subsampling=2)
    assert subsampled.subsampling > 0.0
    without = je.jpeg_noise_level(decoded, tables, subsampling=2, include_subsampling=False)
    assert without == pytest.approx(np.sqrt(subsampled.total - subsampled.subsampling))


def test_jpeg_zigzag_tables_give_the_same_estimate():
    decoded, raw = jpeg_round_trip(photo(64), 20)
    natural = jf.jpeg_quantization(raw)
    zigzag = {k: v[jf._ZIGZAG] for k, v in natural.items()}
    expected = je.jpeg_noise_level(decoded, natural)
    assert je.jpeg_noise_level(decoded, zigzag, order="zigzag") == expected
    assert je.jpeg_noise_level(decoded, zigzag) != expected


def test_jpeg_estimate_grows_with_compression():
    clean = photo(128)
    levels = []
    for quality in (90, 50, 10):
        decoded, raw = jpeg_round_trip(clean, quality)
        levels.append(je.jpeg_noise_level(decoded, jf.jpeg_quantization(raw)))
    assert levels[0] < levels[1] < levels[2]


def test_jpeg_resized_image_flags_poor_lattice_fit(caplog):
    decoded, raw = jpeg_round_trip(photo(128), 50)
    pil = Image.fromarray(np.uint8(np.rint(decoded * 255)))
    resized = np.asarray(pil.resize((120, 120), Image.BILINEAR)) / 255.0
    with caplog.at_level(logging.WARNING, logger="oscfast.noise_level"):
        budget = je.jpeg_error_budget(resized, jf.jpeg_quantization(raw))
    assert budget.lattice_fit < 0.5
    assert "lattice" in caplog.text


def test_dispatcher_jpeg():
    decoded, raw = jpeg_round_trip(photo(64), 25)
    tables = jf.jpeg_quantization(raw)
    expected = je.jpeg_noise_level(decoded, tables)
    assert nl.estimate_noise_level(decoded, method="jpeg", tables=tables) == expected


# --------------------------------------------------------------------------------------------
# Bad input
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "function", [nl.donoho_noise_level, nl.pca_noise_level, nl.estimate_noise_level]
)
def test_wrong_ndim_raises(function):
    with pytest.raises(ValueError, match=r"shape \(H, W\) or \(H, W, C\)"):
        function(np.zeros(64))
    with pytest.raises(ValueError, match=r"shape \(H, W\) or \(H, W, C\)"):
        function(np.zeros((1, 32, 32, 3)))


@pytest.mark.parametrize("function", [nl.donoho_noise_level, nl.pca_noise_level])
def test_nan_raises(function):
    image = smooth(32)
    image[3, 4, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        function(image)


def test_too_small_raises():
    with pytest.raises(ValueError, match="at least 9x9"):
        nl.pca_noise_level(np.zeros((8, 40)))
    with pytest.raises(ValueError, match="at least 16x16"):
        je.jpeg_noise_level(np.zeros((8, 8, 3)), jf.jpeg_tables_for_quality(50))


def test_bad_jpeg_arguments_raise():
    tables = jf.jpeg_tables_for_quality(50)
    image = photo(32) / 255.0
    with pytest.raises(ValueError, match="1 or 3 channels"):
        je.jpeg_noise_level(image[..., :2], tables)
    with pytest.raises(ValueError, match="NaN"):
        je.jpeg_noise_level(np.full((32, 32, 3), np.nan), tables)
    with pytest.raises(ValueError, match="64 numbers"):
        je.jpeg_noise_level(image, {0: list(range(1, 64))})
    with pytest.raises(ValueError, match="outside 1..65535"):
        je.jpeg_noise_level(image, {0: [0] * 64})
    with pytest.raises(ValueError, match="non-empty dict"):
        je.jpeg_noise_level(image, {})
    with pytest.raises(ValueError, match="subsampling must be"):
        je.jpeg_noise_level(image, tables, subsampling=3)
    with pytest.raises(ValueError, match="order must be"):
        je.jpeg_noise_level(image, tables, order="columns")
    for quality in (0, 101, 2.5):
        with pytest.raises(ValueError, match="quality"):
            jf.jpeg_tables_for_quality(quality)


def test_bad_dispatcher_arguments_raise():
    image = smooth(32)
    with pytest.raises(ValueError, match="method must be one of"):
        nl.estimate_noise_level(image, method="mad")
    with pytest.raises(ValueError, match="needs the quantisation tables"):
        nl.estimate_noise_level(image, method="jpeg")
    with pytest.raises(ValueError, match="patch must be"):
        nl.pca_noise_level(image, patch=1)
