"""The error a JPEG compression introduced, from the decoded image and the quantisation tables.

A generalized-Gaussian model of each DCT frequency, fitted by maximum likelihood to the
quantised coefficients, gives the energy of the rounding error per frequency; an estimate of
the chroma detail removed by chroma subsampling is added (:func:`jpeg_error_budget`,
:func:`jpeg_noise_level`). The tables come from :mod:`oscfast.jpeg_files`.
"""
from __future__ import annotations

import functools
import logging
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from oscfast.checks import check_image_array
from oscfast.jpeg_files import _ZIGZAG

if TYPE_CHECKING:
    from scipy import sparse

__all__ = ["JPEGErrorBudget", "jpeg_error_budget", "jpeg_noise_level"]

logger = logging.getLogger(__name__)


def _as_image(image: object, name: str = "image", *, min_size: int = 2) -> np.ndarray:
    """``image`` as a float64 (H, W, C) array, checked (values need not lie in [0, 1])."""
    array = check_image_array(np.asarray(image), name, min_size=min_size, unit_range=False, allow_integer=True)
    return (array[..., None] if array.ndim == 2 else array).astype(np.float64, copy=False)


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


