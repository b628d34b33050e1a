"""JPEG files: their quantisation tables and chroma subsampling, and the standard tables of a
quality (IJG scaling), as the JPEG task and its error model need them."""
from __future__ import annotations

import io
import os
from collections.abc import Callable
from typing import Any, TypeVar

import numpy as np

from oscfast.checks import check_integer

__all__ = ["Tables", "jpeg_quantization", "jpeg_subsampling", "jpeg_tables_for_quality"]

T = TypeVar("T")

#: Quantisation tables: table index -> 64 values in natural (row-major) order.
Tables = dict[int, np.ndarray]


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
    quality = check_integer(quality, "quality", minimum=1)
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
    def read(image: object) -> Tables:
        tables = getattr(image, "quantization", None) or {}
        return {int(k): np.asarray(list(v), dtype=np.int64) for k, v in tables.items()}

    return _read_jpeg(source, read)


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

    return _read_jpeg(source, lambda image: int(JpegImagePlugin.get_sampling(image)))


def _read_jpeg(source: object, read: Callable[[Any], T]) -> T | None:
    """``read(image)`` of the JPEG ``source`` (closed after if opened here); None if it is no JPEG."""
    image, opened = _open_jpeg(source)
    if image is None:
        return None
    try:
        return read(image)
    finally:
        if opened:
            image.close()


