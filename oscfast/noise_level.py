"""Noise level of an observation, estimated from the observation alone.

The stop rule's SURE risk, ``loss - s**2 + 2 * s**2 * divergence``, needs the standard deviation
``s`` of the measurement noise ``e`` in ``y = x0 + e``. This module estimates ``s`` (on the
``[0, 1]`` scale, per pixel and channel) in three ways:

* :func:`donoho_noise_level`: Donoho's robust wavelet estimator, the median absolute finest
  diagonal Haar coefficient / 0.6745 (the library's historical estimator, and the default). Fast;
  texture inflates it and clipping at 0 and 1 biases it.
* :func:`pca_noise_level`: the patch-PCA estimator of Chen, Zhu & Heng (ICCV 2015): the noise
  variance is the mean of the smallest eigenvalues of the patch covariance, taking the largest set
  of smallest eigenvalues whose mean equals their median.
* :func:`oscfast.jpeg_error.jpeg_noise_level`: the RMS error that JPEG compression introduced, from the decoded image
  and the file's quantisation tables (a generalized-Gaussian model of the DCT coefficients fitted
  to the quantised ones), plus an estimate of the chroma detail removed by chroma subsampling.

:func:`estimate_noise_level` dispatches between them.

Every estimator takes an ``(H, W)`` or ``(H, W, C)`` float image with values in ``[0, 1]`` and
returns a float on the same scale (multiply by 255 for 8-bit units).
"""
from __future__ import annotations

import logging
import math

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from oscfast.checks import check_image_array, check_integer

__all__ = ["METHODS", "donoho_noise_level", "estimate_noise_level", "pca_noise_level"]

logger = logging.getLogger(__name__)

#: Methods of :func:`estimate_noise_level`.
METHODS = ("donoho", "pca", "jpeg")



# --------------------------------------------------------------------------------------------
# Input checks
# --------------------------------------------------------------------------------------------
def _as_image(image: object, name: str = "image", *, min_size: int = 2) -> np.ndarray:
    """``image`` as a float64 (H, W, C) array, checked (values need not lie in [0, 1]: a noisy
    observation may be unclipped)."""
    array = check_image_array(np.asarray(image), name, min_size=min_size, unit_range=False, allow_integer=True)
    return (array[..., None] if array.ndim == 2 else array).astype(np.float64, copy=False)


# --------------------------------------------------------------------------------------------
# Donoho's wavelet estimator
# --------------------------------------------------------------------------------------------
def donoho_noise_level(image: np.ndarray) -> float:
    """Donoho's robust estimate of the Gaussian noise standard deviation.

    The median absolute value of the finest diagonal Haar wavelet coefficients divided by
    0.6745, computed per channel and averaged over channels. The median of an even count is the
    lower of the two middle values (as ``torch.median``), so this returns the same number as the
    library's historical ``oscfast.tasks.estimate_noise_level``.

    Args:
        image: ``(H, W)`` or ``(H, W, C)`` float image with values in ``[0, 1]``; an odd last
            row or column is ignored.

    Returns:
        The noise standard deviation on the image's scale.

    Raises:
        ValueError: If the image has the wrong shape, is smaller than 2x2 or holds NaN/inf.

    Example:
        >>> rng = np.random.default_rng(0)
        >>> round(donoho_noise_level(0.5 + rng.normal(0, 0.1, (256, 256))), 2)
        0.1
    """
    x = _as_image(image)
    height, width = (x.shape[0] // 2) * 2, (x.shape[1] // 2) * 2
    x = x[:height, :width]
    diagonal = (x[0::2, 0::2] - x[0::2, 1::2] - x[1::2, 0::2] + x[1::2, 1::2]) / 2
    magnitudes = np.abs(diagonal).reshape(-1, x.shape[2])
    k = (magnitudes.shape[0] - 1) // 2
    lower_medians = np.partition(magnitudes, k, axis=0)[k]
    return float(lower_medians.mean() / 0.6745)


# --------------------------------------------------------------------------------------------
# Patch PCA (Chen, Zhu & Heng, ICCV 2015)
# --------------------------------------------------------------------------------------------
def _patch_eigenvalues(channel: np.ndarray, patch: int, max_patches: int) -> tuple[np.ndarray, int]:
    """Ascending eigenvalues of the covariance of the ``patch`` x ``patch`` patches of a plane.

    Patches overlap; on large planes they are taken on a grid of stride ``s`` (the smallest
    stride that keeps at most ``max_patches`` patches), which leaves the covariance unbiased.

    Returns:
        The eigenvalues (ascending) and the number of patches used.
    """
    rows, cols = channel.shape[0] - patch + 1, channel.shape[1] - patch + 1
    stride = max(1, math.ceil(math.sqrt(rows * cols / max_patches)))
    windows = sliding_window_view(channel, (patch, patch))[::stride, ::stride]
    vectors = windows.reshape(-1, patch * patch)
    centred = vectors - vectors.mean(axis=0)
    covariance = centred.T @ centred / len(centred)
    return np.linalg.eigvalsh(covariance), len(centred)


def _median_mean_variance(eigenvalues: np.ndarray, tolerance: float) -> float:
    """Chen et al.'s test: the mean of the largest set of smallest eigenvalues equal to its median.

    For ``m = 1 .. d`` the mean ``tau_m`` and median of the ``m`` smallest eigenvalues are
    compared; eigenvalues of pure noise are spread symmetrically about ``sigma**2`` (mean ==
    median) while signal eigenvalues are few and large (mean > median). The largest ``m`` with
    ``|tau_m / median_m - 1| <= tolerance`` gives ``sigma**2 = tau_m`` (``m = 1, 2`` always pass).

    Args:
        eigenvalues: Ascending eigenvalues.
        tolerance: Relative tolerance of "equal".

    Returns:
        The noise variance.
    """
    values = np.maximum(eigenvalues, 0.0)
    counts = np.arange(1, len(values) + 1)
    means = np.cumsum(values) / counts
    lower = values[(counts - 1) // 2]
    upper = values[counts // 2]
    medians = (lower + upper) / 2
    with np.errstate(divide="ignore", invalid="ignore"):
        close = np.abs(means - medians) <= tolerance * medians
    close[:2] = True
    return float(means[np.flatnonzero(close)[-1]])


def pca_noise_level(image: np.ndarray, *, patch: int = 7, max_patches: int = 65536) -> float:
    """Patch-PCA estimate of the white noise standard deviation (Chen, Zhu & Heng, ICCV 2015).

    Natural-image patches lie close to a low-dimensional subspace, so the smallest eigenvalues of
    the covariance of ``patch`` x ``patch`` patches are (nearly) pure noise: each equals
    ``sigma**2`` up to sampling spread. Per channel, the eigenvalues are sorted ascending and the
    largest ``m`` is found such that the mean of the ``m`` smallest is close to their median (the
    paper's test that the set holds noise only); that mean is the channel's noise variance.
    "Close" is relative: within ``0.1 * sqrt(d / n)`` for ``d = patch**2`` dimensions and ``n``
    patches, a tenth of the Marchenko-Pastur spread of pure-noise eigenvalues. The result is the
    square root of the mean variance over channels (the RMS noise of all pixels and channels).

    Texture that no patch basis captures (fur, foliage) leaves signal in the smallest eigenvalues,
    so the estimate is biased upwards at low noise levels (see ``bench/noise_level.py``).

    Args:
        image: ``(H, W)`` or ``(H, W, C)`` float image with values in ``[0, 1]``.
        patch: Patch side in pixels (the paper uses 7 or 8).
        max_patches: Most patches per channel; larger images use a strided grid of patches.

    Returns:
        The noise standard deviation on the image's scale.

    Raises:
        ValueError: If the image is invalid or smaller than ``patch + 2`` pixels on a side, or
            ``patch`` / ``max_patches`` is not a positive integer.

    Example:
        >>> rng = np.random.default_rng(0)
        >>> round(pca_noise_level(0.5 + rng.normal(0, 0.1, (128, 128))), 2)
        0.1
    """
    check_integer(patch, "patch", minimum=2)
    check_integer(max_patches, "max_patches", minimum=16)
    x = _as_image(image, min_size=patch + 2)
    variances = []
    for c in range(x.shape[2]):
        eigenvalues, count = _patch_eigenvalues(x[..., c], patch, max_patches)
        tolerance = 0.1 * math.sqrt(patch * patch / count)
        variances.append(_median_mean_variance(eigenvalues, tolerance))
    return float(math.sqrt(max(float(np.mean(variances)), 0.0)))


# --------------------------------------------------------------------------------------------
# Dispatcher
# --------------------------------------------------------------------------------------------
def estimate_noise_level(
    image: np.ndarray,
    *,
    method: str = "donoho",
    tables: object | None = None,
    subsampling: int | None = None,
) -> float:
    """Noise standard deviation of an observation, per pixel and channel (``[0, 1]`` scale).

    Args:
        image: ``(H, W)`` or ``(H, W, C)`` float image with values in ``[0, 1]``.
        method: ``"donoho"`` (default, :func:`donoho_noise_level`), ``"pca"``
            (:func:`pca_noise_level`) or ``"jpeg"`` (:func:`jpeg_noise_level`, which needs
            ``tables``). In ``bench/noise_level.py`` (32 photos, clipped white noise of 5..50/255,
            128 px and full size) Donoho's estimator had the lower mean error overall and at
            sigma <= 10/255 and 128 px; patch PCA was better on full-size images from 15/255 up.
            Both overestimate when the clean image has texture or noise of its own.
        tables: JPEG quantisation tables (:func:`jpeg_quantization`), for ``method="jpeg"``.
        subsampling: JPEG chroma subsampling code (:func:`jpeg_subsampling`), for
            ``method="jpeg"``.

    Returns:
        The estimated noise standard deviation.

    Raises:
        ValueError: If ``method`` is unknown, ``tables`` is missing for ``"jpeg"``, or the image
            is invalid.

    Example:
        >>> rng = np.random.default_rng(0)
        >>> noisy = 0.5 + rng.normal(0, 0.05, (64, 64, 3))
        >>> round(estimate_noise_level(noisy), 2)
        0.05
    """
    if method == "pca":
        return pca_noise_level(image)
    if method == "donoho":
        return donoho_noise_level(image)
    if method == "jpeg":
        if tables is None:
            raise ValueError("method='jpeg' needs the quantisation tables (see jpeg_quantization)")
        from oscfast.jpeg_error import jpeg_noise_level

        return jpeg_noise_level(image, tables, subsampling=subsampling)
    raise ValueError(f"method must be one of {METHODS}, got {method!r}")
