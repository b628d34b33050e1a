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
* :func:`jpeg_noise_level`: the RMS error that JPEG compression introduced, from the decoded image
  and the file's quantisation tables (a generalized-Gaussian model of the DCT coefficients fitted
  to the quantised ones), plus an estimate of the chroma detail removed by chroma subsampling.

:func:`estimate_noise_level` dispatches between them.

Every estimator takes an ``(H, W)`` or ``(H, W, C)`` float image with values in ``[0, 1]`` and
returns a float on the same scale (multiply by 255 for 8-bit units).
"""
from __future__ import annotations

import functools
import io
import logging
import math
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

if TYPE_CHECKING:
    from scipy import sparse

__all__ = [
    "METHODS",
    "JPEGErrorBudget",
    "donoho_noise_level",
    "estimate_noise_level",
    "jpeg_error_budget",
    "jpeg_noise_level",
    "jpeg_quantization",
    "jpeg_subsampling",
    "jpeg_tables_for_quality",
    "pca_noise_level",
]

logger = logging.getLogger(__name__)

#: Methods of :func:`estimate_noise_level`.
METHODS = ("donoho", "pca", "jpeg")

#: Quantisation tables: table index -> 64 values in natural (row-major) order.
Tables = dict[int, np.ndarray]


# --------------------------------------------------------------------------------------------
# Input checks
# --------------------------------------------------------------------------------------------
def _as_image(image: object, name: str = "image", *, min_size: int = 2) -> np.ndarray:
    """Return ``image`` as a float64 ``(H, W, C)`` array after checking shape and values.

    Args:
        image: Array of shape ``(H, W)`` or ``(H, W, C)``, float (or integer) with values in
            ``[0, 1]``.
        name: Name used in error messages.
        min_size: Smallest accepted height and width.

    Returns:
        A float64 array of shape ``(H, W, C)``.

    Raises:
        ValueError: If the array has the wrong number of dimensions, is too small or empty, or
            holds NaN or infinite values.
    """
    array = np.asarray(image)
    if array.ndim not in (2, 3):
        raise ValueError(f"{name} must have shape (H, W) or (H, W, C), got shape {array.shape}")
    if array.ndim == 2:
        array = array[..., None]
    height, width, channels = array.shape
    if channels == 0 or height < min_size or width < min_size:
        raise ValueError(
            f"{name} must be at least {min_size}x{min_size} with one channel or more, "
            f"got shape {array.shape}"
        )
    if not (np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.integer)):
        raise ValueError(f"{name} must hold real numbers, got dtype {array.dtype}")
    array = array.astype(np.float64, copy=False)
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} contains NaN or infinite values")
    return array


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
    _check_int(patch, "patch", minimum=2)
    _check_int(max_patches, "max_patches", minimum=16)
    x = _as_image(image, min_size=patch + 2)
    variances = []
    for c in range(x.shape[2]):
        eigenvalues, count = _patch_eigenvalues(x[..., c], patch, max_patches)
        tolerance = 0.1 * math.sqrt(patch * patch / count)
        variances.append(_median_mean_variance(eigenvalues, tolerance))
    return float(math.sqrt(max(float(np.mean(variances)), 0.0)))


def _check_int(value: object, name: str, *, minimum: int) -> int:
    """Return ``value`` as an int, or raise ValueError if it is not an integer >= ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


# --------------------------------------------------------------------------------------------
# JPEG: tables
# --------------------------------------------------------------------------------------------
#: IJG (ITU-T T.81 Annex K) base tables at quality 50, natural (row-major) order.
_IJG_LUMA = np.array([
    16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55,
    14, 13, 16, 24, 40, 57, 69, 56, 14, 17, 22, 29, 51, 87, 80, 62,
    18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92,
    49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99,
])  # fmt: skip
_IJG_CHROMA = np.array([
    17, 18, 24, 47, 99, 99, 99, 99, 18, 21, 26, 66, 99, 99, 99, 99,
    24, 26, 56, 99, 99, 99, 99, 99, 47, 66, 99, 99, 99, 99, 99, 99,
] + [99] * 32)  # fmt: skip


def _zigzag_order() -> np.ndarray:
    """Natural (row-major) index of the k-th coefficient in JPEG zigzag order."""
    cells = [(r, c) for r in range(8) for c in range(8)]
    cells.sort(key=lambda rc: (rc[0] + rc[1], rc[0] if (rc[0] + rc[1]) % 2 else rc[1]))
    return np.array([8 * r + c for r, c in cells])


#: ``natural[_ZIGZAG[k]] == zigzag[k]``.
_ZIGZAG = _zigzag_order()


def jpeg_tables_for_quality(quality: int) -> Tables:
    """The quantisation tables Pillow (libjpeg) writes for a JPEG ``quality``.

    libjpeg's ``jpeg_set_quality``: the IJG base tables (ITU-T T.81 Annex K) scaled by
    ``5000 / quality`` (integer division) below 50 and ``200 - 2 * quality`` from 50, as
    ``(base * scale + 50) // 100`` clamped to 1..255 (baseline). Pillow writes these for
    ``Image.save(..., quality=q)`` (the default quality is 75).

    Args:
        quality: JPEG quality, 1..100.

    Returns:
        ``{0: luma, 1: chroma}``, each 64 integers in natural (row-major) order, the layout of
        ``PIL.Image.open(path).quantization`` (Pillow >= 8.3).

    Raises:
        ValueError: If ``quality`` is not an integer in 1..100.

    Example:
        >>> jpeg_tables_for_quality(50)[0][:4].tolist()
        [16, 11, 10, 16]
    """
    quality = _check_int(quality, "quality", minimum=1)
    if quality > 100:
        raise ValueError(f"quality must be an integer in 1..100, got {quality}")
    scale = 5000 // quality if quality < 50 else 200 - 2 * quality
    return {
        index: np.clip((base * scale + 50) // 100, 1, 255).astype(np.int64)
        for index, base in enumerate((_IJG_LUMA, _IJG_CHROMA))
    }


def _open_jpeg(source: object) -> tuple[object | None, bool]:
    """Open ``source`` (path, bytes, file object or PIL image) with Pillow.

    Returns:
        The image (or None if it is not a JPEG) and whether this call opened it (and must close
        it).
    """
    from PIL import Image

    if isinstance(source, Image.Image):
        return (source if source.format == "JPEG" else None), False
    if isinstance(source, (bytes, bytearray)):
        source = io.BytesIO(source)
    elif isinstance(source, (str, os.PathLike)) and not os.path.isfile(source):
        raise ValueError(f"no such file: {os.fspath(source)!r}")
    try:
        image = Image.open(source)
    except OSError as error:  # Not an image Pillow can read (UnidentifiedImageError included).
        raise ValueError(f"cannot read an image from {source!r}: {error}") from error
    if image.format != "JPEG":
        image.close()
        return None, False
    return image, True


def jpeg_quantization(source: object) -> Tables | None:
    """The quantisation tables of a JPEG file, or None if it is not a JPEG.

    Args:
        source: Path, bytes, binary file object, or an open PIL image.

    Returns:
        Table index -> 64 integers in natural (row-major) order: Pillow >= 8.3 de-zigzags the
        DQT tables when it reads them (older Pillow returned the file's zigzag order; pass
        ``order="zigzag"`` to :func:`jpeg_noise_level` for those). None for other formats.

    Raises:
        ValueError: If ``source`` names a missing file or is not an image.
    """
    image, opened = _open_jpeg(source)
    if image is None:
        return None
    try:
        tables = getattr(image, "quantization", None) or {}
        return {int(k): np.asarray(list(v), dtype=np.int64) for k, v in tables.items()}
    finally:
        if opened:
            image.close()


def jpeg_subsampling(source: object) -> int | None:
    """Chroma subsampling of a JPEG file in Pillow's code, or None if it is not a JPEG.

    Args:
        source: Path, bytes, binary file object, or an open PIL image.

    Returns:
        ``0`` (4:4:4), ``1`` (4:2:2), ``2`` (4:2:0), ``-1`` (grayscale or another layout), as
        ``PIL.JpegImagePlugin.get_sampling``; None for other formats.

    Raises:
        ValueError: If ``source`` names a missing file or is not an image.
    """
    from PIL import JpegImagePlugin

    image, opened = _open_jpeg(source)
    if image is None:
        return None
    try:
        return int(JpegImagePlugin.get_sampling(image))
    finally:
        if opened:
            image.close()


def _luma_chroma_tables(tables: object, order: str) -> tuple[np.ndarray, np.ndarray]:
    """Luma and chroma tables as float arrays of 64 values in natural order.

    Raises:
        ValueError: If the tables are missing, malformed or hold values outside 1..65535.
    """
    if order not in ("natural", "zigzag"):
        raise ValueError(f"order must be 'natural' or 'zigzag', got {order!r}")
    if not isinstance(tables, dict) or not tables:
        raise ValueError(f"tables must be a non-empty dict index -> 64 values, got {tables!r}")
    parsed = {}
    for key, values in tables.items():
        table = np.asarray(list(values), dtype=np.float64)
        if table.shape != (64,) or not np.all(np.isfinite(table)):
            raise ValueError(f"quantisation table {key!r} must hold 64 numbers, got {table.shape}")
        if table.min() < 1 or table.max() > 65535:
            raise ValueError(f"quantisation table {key!r} has values outside 1..65535")
        if order == "zigzag":
            natural = np.empty(64)
            natural[_ZIGZAG] = table
            table = natural
        parsed[key] = table
    keys = sorted(parsed)
    luma = parsed[keys[0]]
    chroma = parsed[keys[1]] if len(keys) > 1 else luma
    return luma, chroma


# --------------------------------------------------------------------------------------------
# JPEG: colour, chroma resampling, block DCT
# --------------------------------------------------------------------------------------------
#: JFIF RGB -> YCbCr (full range, the offset 128 of Cb and Cr left out).
_RGB_TO_YCC = np.array([
    [0.299, 0.587, 0.114],
    [-0.168735892, -0.331264108, 0.5],
    [0.5, -0.418687589, -0.081312411],
])  # fmt: skip
_YCC_TO_RGB = np.linalg.inv(_RGB_TO_YCC)
#: RGB mean-square error per unit of independent Y, Cb, Cr error: mean over R, G, B of the
#: squared inverse-matrix coefficients (1, 1.09, 0.83).
_PLANE_WEIGHTS = np.mean(_YCC_TO_RGB**2, axis=0)
#: RGB mean-square error per unit of Cb-Cr error covariance (G mixes both).
_CROSS_WEIGHT = 2.0 * float(np.mean(_YCC_TO_RGB[:, 1] * _YCC_TO_RGB[:, 2]))
#: Pillow's subsampling code -> (vertical, horizontal) chroma subsampling factors.
_SAMPLING_FACTORS = {0: (1, 1), 1: (1, 2), 2: (2, 2)}


def _fancy_upsampling_matrix(n_out: int) -> sparse.csr_matrix:
    """libjpeg's 'fancy' 2x upsampling along one axis as an ``(n_out, ceil(n_out / 2))`` matrix.

    Output sample ``2i`` is ``3/4 c[i] + 1/4 c[i-1]`` and ``2i + 1`` is ``3/4 c[i] + 1/4 c[i+1]``
    (triangle filter, edge samples replicated), as ``h2v1``/``h2v2_fancy_upsample``; an odd
    ``n_out`` drops the last output row.
    """
    from scipy import sparse

    n_in = (n_out + 1) // 2
    rows = np.arange(n_out)
    centre = rows // 2
    neighbour = np.clip(np.where(rows % 2 == 0, centre - 1, centre + 1), 0, n_in - 1)
    data = np.concatenate([np.full(n_out, 0.75), np.full(n_out, 0.25)])
    return sparse.csr_matrix(
        (data, (np.concatenate([rows, rows]), np.concatenate([centre, neighbour]))),
        shape=(n_out, n_in),
    )


def _along(matrix: object, plane: np.ndarray, axis: int) -> np.ndarray:
    """Apply a (sparse) matrix to ``plane`` along ``axis``."""
    moved = np.moveaxis(plane, axis, 0)
    out = matrix @ moved.reshape(moved.shape[0], -1)
    return np.moveaxis(np.asarray(out).reshape((-1,) + moved.shape[1:]), 0, axis)


def _fancy_upsample(plane: np.ndarray, axis: int, n_out: int) -> np.ndarray:
    """2x fancy upsampling of ``plane`` along ``axis`` to ``n_out`` samples."""
    return _along(_fancy_upsampling_matrix(n_out), plane, axis)


def _invert_fancy_upsampling(plane: np.ndarray, axis: int) -> np.ndarray:
    """Least-squares inverse of :func:`_fancy_upsample` along ``axis`` (a tridiagonal solve)."""
    from scipy.linalg import solve_banded

    upsampling = _fancy_upsampling_matrix(plane.shape[axis])
    normal = (upsampling.T @ upsampling).tocsr()  # Tridiagonal.
    banded = np.zeros((3, normal.shape[0]))
    banded[0, 1:] = normal.diagonal(1)
    banded[1] = normal.diagonal(0)
    banded[2, :-1] = normal.diagonal(-1)
    right = _along(upsampling.T, plane, axis)
    moved = np.moveaxis(right, axis, 0)
    solved = solve_banded((1, 1), banded, moved.reshape(moved.shape[0], -1))
    return np.moveaxis(solved.reshape(moved.shape), 0, axis)


def _box_downsample(plane: np.ndarray, axis: int) -> np.ndarray:
    """2x box-filter downsampling along ``axis`` (an odd last sample is dropped)."""
    moved = np.moveaxis(plane, axis, 0)
    even = (moved.shape[0] // 2) * 2
    return np.moveaxis((moved[0:even:2] + moved[1:even:2]) / 2, 0, axis)


def _subsampling_detail(plane: np.ndarray, factors: tuple[int, int]) -> np.ndarray:
    """What 2x chroma subsampling with ``factors`` removes from ``plane``: x - U(D(x)).

    D is the encoder's box filter, U the decoder's fancy upsampling; the plane is cropped to
    whole 2x2 (or 1x2) cells.
    """
    rows = plane.shape[0] // factors[0] * factors[0]
    cols = plane.shape[1] // factors[1] * factors[1]
    x = plane[:rows, :cols]
    approximation = x
    for axis, factor in enumerate(factors):
        if factor == 2:
            approximation = _box_downsample(approximation, axis)
    for axis, factor in enumerate(factors):
        if factor == 2:
            approximation = _fancy_upsample(approximation, axis, x.shape[axis])
    return x - approximation


def _block_dct(plane: np.ndarray) -> np.ndarray:
    """Orthonormal 8x8 DCT-II of the whole blocks of ``plane``: ``(blocks, 64)``, natural order.

    The orthonormal DCT of level-shifted 8-bit samples is the JPEG coefficient before
    quantisation (T.81 A.3.3).
    """
    from scipy.fft import dctn

    rows, cols = plane.shape[0] // 8, plane.shape[1] // 8
    blocks = plane[: rows * 8, : cols * 8].reshape(rows, 8, cols, 8).transpose(0, 2, 1, 3)
    return dctn(blocks, axes=(2, 3), norm="ortho").reshape(rows * cols, 64)


@functools.lru_cache(maxsize=None)
def _upsampling_gains(factors: tuple[int, int]) -> np.ndarray:
    """Full-resolution error energy per unit coded-plane error, per DCT frequency (64,).

    An error ``e * B_k`` in one coded block (``B_k`` the unit-norm basis function) spreads over
    ``f`` full-resolution pixels per coded pixel after upsampling; its energy per full-resolution
    pixel, relative to ``e**2`` per coded pixel, is ``||U B_k||**2 / f``. Errors of different
    blocks and frequencies are independent, so these gains add.
    """
    from scipy.fft import idct

    basis = idct(np.eye(8), axis=0, norm="ortho")  # basis[:, u]: 1-D basis function u
    gains = []
    for factor in factors:
        if factor == 1:
            gains.append(np.ones(8))
            continue
        padded = np.zeros((12, 8))
        padded[2:10] = basis
        upsampled = _fancy_upsample(padded, 0, 24)
        gains.append(np.sum(upsampled**2, axis=0) / 2)
    table = np.outer(gains[0], gains[1]).ravel()
    table.flags.writeable = False
    return table


# --------------------------------------------------------------------------------------------
# JPEG: quantisation error of one plane
# --------------------------------------------------------------------------------------------
#: Shapes of the generalized Gaussian coefficient model tried: 1 is the Laplacian, smaller is
#: more peaked (DCT coefficients of photos are Laplacian or more peaked).
_GG_SHAPES = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 1.0)
#: Grid of log(scale / q) of the coefficient model.
_LOG_RATIO = np.linspace(math.log(1e-3), math.log(1e3), 241)
#: Grids of the spectral trend log(scale_k) = a + b * log(radial frequency_k); the spread of
#: photos' coefficients does not grow with frequency (b <= 0).
_TREND_A = np.arange(math.log(0.01), math.log(4000.0), 0.1)
_TREND_B = np.arange(-4.0, 0.0001, 0.1)
#: |quantised index| histogram bins; the last one holds the tail.
_INDEX_BINS = 64
_RADIAL = np.hypot(*np.meshgrid(np.arange(8), np.arange(8), indexing="ij")).ravel()[1:]


def _gg_cdf(x: np.ndarray, shape: float) -> np.ndarray:
    """P(|X| < x) for a unit-scale generalized Gaussian, density ~ exp(-|x|**shape)."""
    from scipy.special import gammainc

    return gammainc(1.0 / shape, np.power(x, shape))


@functools.lru_cache(maxsize=None)
def _bin_log_probabilities(shape: float) -> np.ndarray:
    """log P(|round(X / q)| = j) for scale/q on :data:`_LOG_RATIO`: ``(ratios, bins)`` (cached,
    read-only)."""
    ratio = np.exp(_LOG_RATIO)[:, None]
    edges = (np.arange(_INDEX_BINS) + 0.5)[None, :] / ratio
    cdf = _gg_cdf(edges, shape)
    probabilities = np.diff(cdf, axis=1, prepend=0.0)
    probabilities[:, -1] = 1.0 - cdf[:, -2]
    table = np.log(np.maximum(probabilities, 1e-300))
    table.flags.writeable = False
    return table


def _zero_bin_energy(ratio: np.ndarray, shape: float) -> np.ndarray:
    """E[X**2 | |X| < q/2] / q**2 for a generalized Gaussian of scale ``ratio * q``."""
    from scipy.special import gammainc, gammaln

    z = np.power(0.5 / ratio, shape)
    inner = gammainc(1.0 / shape, z)
    moment = np.exp(gammaln(3.0 / shape) - gammaln(1.0 / shape)) * gammainc(3.0 / shape, z)
    return ratio**2 * moment / np.maximum(inner, 1e-300)


def _zero_bin_energies(histograms: np.ndarray, q: np.ndarray) -> np.ndarray:
    """E[x**2 | x quantised to 0] per AC frequency of a set of blocks (8-bit units), ``(63,)``.

    Coefficient ``k`` (k = 1..63) is modelled as a generalized Gaussian of shape ``s`` (shared)
    and scale ``exp(a + b * log(rho_k))`` (``rho_k`` the radial frequency); ``(s, a, b)`` maximise
    the likelihood of the quantised indices (grid search). Sharing the shape and the trend lets
    frequencies quantised to zero everywhere borrow from the others; where the data cannot tell
    (almost every index zero) the estimate is the least certain.

    Args:
        histograms: ``(63, bins)`` counts of ``|n| = j`` per AC frequency.
        q: The 63 AC quantisation steps.
    """
    step = _LOG_RATIO[1] - _LOG_RATIO[0]
    log_scale = _TREND_A[:, None, None] + _TREND_B[None, :, None] * np.log(_RADIAL)[None, None, :]
    index = np.rint((log_scale - np.log(q) - _LOG_RATIO[0]) / step).astype(np.intp)
    index = np.clip(index, 0, len(_LOG_RATIO) - 1)
    flat = index + len(_LOG_RATIO) * np.arange(63)  # Into the raveled (63, ratios) table.
    # einsum, not BLAS: for these small products BLAS thread wake-ups cost more than the work.
    totals = np.stack([
        np.take(np.einsum("kj,rj->kr", histograms, _bin_log_probabilities(shape)).ravel(), flat)
        .sum(axis=-1)
        for shape in _GG_SHAPES
    ])  # (shapes, A, B)
    s, i, j = np.unravel_index(np.argmax(totals), totals.shape)
    return _zero_bin_energy(np.exp(_LOG_RATIO[index[i, j]]), _GG_SHAPES[s]) * q**2


def _activity_classes(indices: np.ndarray, grid: tuple[int, int], classes: int) -> np.ndarray:
    """Group blocks by the count of non-zero AC indices in their 3x3 block neighbourhood.

    Smooth and textured regions have very different coefficient spreads; fitting each group
    separately keeps the flat regions' zero coefficients from borrowing the textures' spread.
    """
    from scipy.ndimage import uniform_filter

    classes = min(classes, len(indices) // _BLOCKS_PER_CLASS)
    if classes <= 1:
        return np.zeros(len(indices), dtype=np.intp)
    active = np.count_nonzero(indices[:, 1:], axis=1).reshape(grid).astype(np.float64)
    context = uniform_filter(active, size=3, mode="nearest").ravel()
    edges = np.unique(np.quantile(context, np.linspace(0, 1, classes + 1)[1:-1]))
    return np.searchsorted(edges, context, side="right")


def _quantisation_error(
    coefficients: np.ndarray, q: np.ndarray, grid: tuple[int, int], classes: int
) -> np.ndarray:
    """Mean squared quantisation error per DCT frequency of one plane, ``(64,)`` (8-bit units).

    Decoded coefficients sit on the lattice ``n * q``. A non-zero index leaves an error
    ~U(-q/2, q/2) (``q**2 / 12``), as does the DC; a zero index hides a true value in
    ``(-q/2, q/2)``, whose second moment comes from a generalized Gaussian fitted to the
    quantised indices of the frequency (per activity class of blocks, see
    :func:`_zero_bin_energies`).

    Args:
        coefficients: ``(blocks, 64)`` decoded DCT coefficients (natural order).
        q: The 64 quantisation steps (natural order).
        grid: Blocks per column and per row.
        classes: Number of activity classes.
    """
    indices = np.rint(coefficients / q).astype(np.int64)
    nonzero = indices != 0
    error = np.where(nonzero, q**2 / 12.0, 0.0)
    error[:, 0] = q[0] ** 2 / 12.0
    group = _activity_classes(indices, grid, classes)
    for label in np.unique(group):
        members = indices[group == label][:, 1:]
        if not members.any():
            continue  # Every AC coefficient zero: no spread to measure.
        magnitudes = np.minimum(np.abs(members), _INDEX_BINS - 1)
        histograms = np.stack(
            [np.bincount(m, minlength=_INDEX_BINS) for m in magnitudes.T]
        ).astype(np.float64)
        zero_energy = _zero_bin_energies(histograms, q[1:])
        rows = group == label
        error[rows, 1:] += np.where(nonzero[rows, 1:], 0.0, zero_energy[None, :])
    return error.mean(axis=0)


def _lattice_fit(coefficients: np.ndarray, q: np.ndarray) -> float:
    """Fraction of the non-zero quantised AC coefficients (``q >= 4``) within ``q/8`` of ``n * q``.

    Near 1 for an image as decoded; near 0.25 (chance) when it was resized, shifted, filtered or
    decoded with another chroma upsampling, where the JPEG model does not apply. Coefficients
    quantised to zero are left out (they are near the lattice point 0 whatever the image); 1.0 when
    fewer than 64 coefficients are left.
    """
    steps = np.broadcast_to(q, coefficients.shape)
    ratio = coefficients / steps
    mask = (steps >= 4) & (np.abs(ratio) >= 0.5)
    mask[:, 0] = False
    if np.count_nonzero(mask) < 64:
        return 1.0
    residual = ratio[mask]
    return float(np.mean(np.abs(residual - np.rint(residual)) <= 0.125))


# --------------------------------------------------------------------------------------------
# JPEG: error budget
# --------------------------------------------------------------------------------------------
#: Most activity classes of blocks in the coefficient model, and the fewest blocks per class.
_ACTIVITY_CLASSES = 6
_BLOCKS_PER_CLASS = 64


@dataclass(frozen=True)
class JPEGErrorBudget:
    """Mean-square error that JPEG compression added, per pixel and channel, by source.

    All terms are mean squares on the ``[0, 1]`` scale, averaged over the R, G and B channels
    (or the one gray channel); they add up (the sources are independent) to :attr:`total`.

    Attributes:
        luma: Quantisation of the luma (Y) DCT coefficients.
        chroma: Quantisation of the Cb and Cr DCT coefficients, after chroma upsampling.
        subsampling: Chroma detail removed by chroma subsampling. Not measurable from the
            tables: extrapolated from the decoded image (see :func:`jpeg_error_budget`), so the
            least certain term (0 for 4:4:4 and gray images).
        rounding: 8-bit rounding in the colour conversions, the inverse DCT and upsampling.
        lattice_fit: Fraction of AC coefficients (with ``q >= 4``) that sit on the quantisation
            lattice: near 1 for an image as decoded, near 0.25 when it was resized, cropped off
            the 8x8 grid, filtered, or decoded with another chroma upsampling, where the estimate
            does not apply.
    """

    luma: float
    chroma: float
    subsampling: float
    rounding: float
    lattice_fit: float

    @property
    def total(self) -> float:
        """The mean-square error, all sources."""
        return self.luma + self.chroma + self.subsampling + self.rounding

    @property
    def rms(self) -> float:
        """The RMS error, ``sqrt(total)``."""
        return math.sqrt(self.total)


def _downsample(plane: np.ndarray, factors: tuple[int, int]) -> np.ndarray:
    """Box-filter downsampling of ``plane`` by ``factors`` (vertical, horizontal)."""
    for axis, factor in enumerate(factors):
        if factor == 2:
            plane = _box_downsample(plane, axis)
    return plane


def _coded_chroma(plane: np.ndarray, factors: tuple[int, int]) -> np.ndarray:
    """The decoder's chroma plane before upsampling, recovered from the full-resolution plane."""
    for axis, factor in enumerate(factors):
        if factor == 2:
            plane = _invert_fancy_upsampling(plane, axis)
    return plane


def _detail_energy(plane: np.ndarray, factors: tuple[int, int]) -> float:
    """Mean square of :func:`_subsampling_detail` (0 for planes too small to have any)."""
    detail = _subsampling_detail(plane, factors)
    return float(np.mean(detail**2)) if detail.size else 0.0


def _subsampling_loss(
    luma: np.ndarray, chroma: list[np.ndarray], factors: tuple[int, int]
) -> tuple[list[float], float]:
    """Estimate the chroma detail that subsampling removed (8-bit units, per full-res pixel).

    The removed detail is the next finer scale of the chroma planes, unseen. It is extrapolated
    from the finest scale that survives, the detail ``x - U(D(x))`` of the decoded coded plane at
    its own resolution, by the ratio of detail energies between adjacent scales: the geometric
    mean of the luma's ratio (full resolution / half resolution) and the coded chroma's own (its
    resolution / half of it). On the clean test photos (no compression) this extrapolation is
    within a factor 1.6 (RMS of the log ratio 0.5) of the true loss.

    Args:
        luma: Decoded luma plane (full resolution).
        chroma: Decoded coded Cb and Cr planes.
        factors: Chroma subsampling factors.

    Returns:
        The loss per chroma plane and the Cb-Cr covariance of the loss.
    """
    luma_coarse = _detail_energy(_downsample(luma, factors), factors)
    luma_ratio = _detail_energy(luma, factors) / max(luma_coarse, 1e-12)
    losses, details = [], []
    for plane in chroma:
        detail = _subsampling_detail(plane, factors)
        fine = float(np.mean(detail**2)) if detail.size else 0.0
        chroma_ratio = fine / max(_detail_energy(_downsample(plane, factors), factors), 1e-12)
        losses.append(fine * math.sqrt(luma_ratio * chroma_ratio))
        details.append(detail.ravel())
    denominator = math.sqrt(float(np.sum(details[0] ** 2) * np.sum(details[1] ** 2)))
    correlation = float(np.sum(details[0] * details[1]) / denominator) if denominator > 0 else 0.0
    return losses, correlation * math.sqrt(losses[0] * losses[1])


def _rounding_error(colour: bool, factors: tuple[int, int]) -> float:
    """Mean-square 8-bit rounding error of a JPEG round trip (8-bit units).

    Each rounding adds 1/12: gray images round once (inverse DCT output); colour images round the
    RGB -> YCbCr conversion and the inverse DCT of every plane, the downsampled and upsampled
    chroma, and the YCbCr -> RGB output.
    """
    if not colour:
        return 1.0 / 12.0
    cells = factors[0] * factors[1]
    if cells == 1:
        chroma = 2.0
    else:
        white_gain = float(np.mean(_upsampling_gains(factors)))
        chroma = (1.0 / cells + 2.0) * white_gain + 1.0
    planes = 2.0 * _PLANE_WEIGHTS[0] + chroma * (_PLANE_WEIGHTS[1] + _PLANE_WEIGHTS[2])
    return (planes + 1.0) / 12.0


def jpeg_error_budget(
    image: np.ndarray,
    tables: object,
    *,
    subsampling: int | None = None,
    order: str = "natural",
) -> JPEGErrorBudget:
    """Estimate the error that JPEG compression added to ``image``, by source.

    The model, per YCbCr plane and 8x8 DCT frequency: the decoded coefficient is ``n * q``; a
    non-zero ``n`` hides a true value uniform within its bin (error variance ``q**2 / 12``), a
    zero ``n`` a true value in ``(-q/2, q/2)`` concentrated near zero, whose second moment comes
    from a generalized Gaussian model of the frequency fitted by maximum likelihood to all the
    quantised indices of the plane (one shape <= 1 for all frequencies, scale on a power-law
    trend over radial frequency that does not grow, fitted separately for up to 6 activity
    classes of blocks, by the count of non-zero AC indices around them: smooth regions are far
    more peaked than textured ones). The DC error is ``q**2 / 12``. The orthonormal DCT keeps
    energy, so the per-plane pixel error is the mean over frequencies; chroma errors pass through
    the decoder's upsampling (per-frequency gains) and everything through the YCbCr -> RGB
    matrix.
    Chroma subsampling removes chroma detail the tables do not show: it is extrapolated from the
    decoded image (:func:`_subsampling_loss`) and reported separately.

    The image must be the decoder's output as is (libjpeg/Pillow decoding with its default
    'fancy' chroma upsampling, no resizing or cropping off the 8x8 grid):
    :attr:`JPEGErrorBudget.lattice_fit` tells whether it is.

    Accuracy (``bench/noise_level.py``, Pillow at qualities 5..90, RMS estimate vs truth): mean
    absolute relative error 5% (max 19%) on scikit-image's five photos, 6% (max 22%) on gray
    photos, 13% (max 89%) over 23 colour photos at 4:2:0. The largest errors: video frames and
    screenshots whose detail was removed before (overestimates), photos with chroma noise at
    high quality (the subsampling loss is underestimated), and sources that were JPEG files
    before (the truth is then the distance to the earlier JPEG, not to a clean scene).

    Args:
        image: Decoded image, ``(H, W, 3)`` RGB or ``(H, W)`` / ``(H, W, 1)`` gray, float in
            ``[0, 1]`` (8-bit values / 255), at least 16x16.
        tables: Quantisation tables, as ``PIL.Image.open(path).quantization`` or
            :func:`jpeg_quantization`: index -> 64 values; the lowest index is the luma table,
            the next (if any) the chroma table.
        subsampling: Chroma subsampling in Pillow's code (``0`` 4:4:4, ``1`` 4:2:2, ``2`` 4:2:0,
            as :func:`jpeg_subsampling`); None or ``-1`` assume 4:2:0, the libjpeg and Pillow
            default. Ignored for gray images.
        order: ``"natural"`` (row-major, Pillow >= 8.3) or ``"zigzag"`` (the file's order, older
            Pillow) order of the table values.

    Returns:
        The :class:`JPEGErrorBudget`.

    Raises:
        ValueError: If the image is not ``(H, W)``, ``(H, W, 1)`` or ``(H, W, 3)``, is smaller
            than 16x16 or holds NaN/inf, or the tables or ``subsampling`` are invalid.
    """
    x = _as_image(image, min_size=16)
    if x.shape[2] not in (1, 3):
        raise ValueError(f"a JPEG image has 1 or 3 channels, got shape {np.shape(image)}")
    luma_table, chroma_table = _luma_chroma_tables(tables, order)
    pixels = x * 255.0
    if x.shape[2] == 1:
        error, fit = _plane_error(pixels[..., 0] - 128.0, luma_table)
        luma, chroma, loss = float(error.mean()), 0.0, 0.0
        rounding = _rounding_error(False, (1, 1))
    else:
        factors = _sampling_factors(subsampling)
        luma, chroma, loss, fit = _colour_errors(pixels, luma_table, chroma_table, factors)
        rounding = _rounding_error(True, factors)
    if fit < 0.5:
        logger.warning(
            "only %.0f%% of the DCT coefficients sit on the JPEG quantisation lattice: the image "
            "was probably resized, shifted or filtered after decoding, so the JPEG error "
            "estimate does not apply", 100 * fit,
        )
    scale = 255.0**2
    return JPEGErrorBudget(
        luma=luma / scale,
        chroma=chroma / scale,
        subsampling=max(loss, 0.0) / scale,
        rounding=rounding / scale,
        lattice_fit=fit,
    )


def _plane_error(plane: np.ndarray, table: np.ndarray) -> tuple[np.ndarray, float]:
    """Per-frequency mean-square quantisation error of one coded plane, and its lattice fit.

    Args:
        plane: Level-shifted plane (8-bit units) at its coded resolution.
        table: Its 64 quantisation steps (natural order).

    Returns:
        ``(64,)`` mean squares per frequency (zeros for a plane smaller than one block) and
        :func:`_lattice_fit`.
    """
    coefficients = _block_dct(plane)
    if coefficients.size == 0:
        return np.zeros(64), 1.0
    grid = (plane.shape[0] // 8, plane.shape[1] // 8)
    error = _quantisation_error(coefficients, table, grid, _ACTIVITY_CLASSES)
    return error, _lattice_fit(coefficients, table)


def _colour_errors(
    pixels: np.ndarray,
    luma_table: np.ndarray,
    chroma_table: np.ndarray,
    factors: tuple[int, int],
) -> tuple[float, float, float, float]:
    """Luma, chroma and subsampling mean squares (8-bit RGB units) and the lattice fit.

    Args:
        pixels: Decoded RGB image, 8-bit units.
        luma_table: Luma quantisation steps (natural order).
        chroma_table: Chroma quantisation steps (natural order).
        factors: Chroma subsampling factors (vertical, horizontal).
    """
    ycc = pixels @ _RGB_TO_YCC.T
    luma = ycc[..., 0] - 128.0
    error, fit = _plane_error(luma, luma_table)
    gains = _upsampling_gains(factors)
    coded, chroma, fits = [], 0.0, [fit]
    for c in (1, 2):
        plane = _coded_chroma(ycc[..., c], factors)
        error_c, fit_c = _plane_error(plane, chroma_table)
        chroma += _PLANE_WEIGHTS[c] * float(np.mean(error_c * gains))
        coded.append(plane)
        fits.append(fit_c)
    loss = 0.0
    if factors != (1, 1):
        losses, covariance = _subsampling_loss(luma, coded, factors)
        loss = (
            _PLANE_WEIGHTS[1] * losses[0]
            + _PLANE_WEIGHTS[2] * losses[1]
            + _CROSS_WEIGHT * covariance
        )
    return float(error.mean()), chroma, loss, float(min(fits))


def _sampling_factors(subsampling: int | None) -> tuple[int, int]:
    """(vertical, horizontal) chroma factors of a Pillow subsampling code (None/-1: 4:2:0)."""
    if subsampling is None or (not isinstance(subsampling, bool) and subsampling == -1):
        return _SAMPLING_FACTORS[2]
    if isinstance(subsampling, bool) or subsampling not in _SAMPLING_FACTORS:
        raise ValueError(
            f"subsampling must be 0 (4:4:4), 1 (4:2:2), 2 (4:2:0), -1 or None, got {subsampling!r}"
        )
    return _SAMPLING_FACTORS[int(subsampling)]


def jpeg_noise_level(
    image: np.ndarray,
    tables: object,
    *,
    subsampling: int | None = None,
    order: str = "natural",
    include_subsampling: bool = True,
) -> float:
    """RMS error (per pixel and channel, ``[0, 1]`` scale) that JPEG compression introduced.

    ``sqrt`` of :attr:`JPEGErrorBudget.total` of :func:`jpeg_error_budget`; see there for the
    model and the arguments. ``include_subsampling=False`` leaves out the chroma-subsampling
    term (the least certain one).

    Example:
        >>> import io
        >>> from PIL import Image
        >>> rng = np.random.default_rng(0)
        >>> clean = (rng.random((64, 64)) * 255).astype(np.uint8)
        >>> buffer = io.BytesIO(); Image.fromarray(clean).save(buffer, "JPEG", quality=10)
        >>> decoded = np.asarray(Image.open(buffer)) / 255.0
        >>> level = jpeg_noise_level(decoded, jpeg_quantization(buffer.getvalue()))
    """
    budget = jpeg_error_budget(image, tables, subsampling=subsampling, order=order)
    total = budget.total - (0.0 if include_subsampling else budget.subsampling)
    return math.sqrt(total)


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
        return jpeg_noise_level(image, tables, subsampling=subsampling)
    raise ValueError(f"method must be one of {METHODS}, got {method!r}")
