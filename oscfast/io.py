"""Reading, validating and writing images.

Everything that enters oscfast passes through :func:`load_image` once, at the API boundary: it
accepts file paths, Pillow images, numpy arrays and torch tensors, checks them, and returns one
canonical form, a C-contiguous ``float32`` array of shape ``(H, W, C)`` with ``C`` in ``{1, 3}``
and values in ``[0, 1]``. Deeper code can then trust its input.

Importing this module stays light: torch is imported only inside the functions that convert to or
from tensors, and tifffile only when a 16-bit colour TIFF is read or written (Pillow reduces those
to 8 bits).
"""
from __future__ import annotations

import logging
import math
import numbers
import os
import struct
import tempfile
import zlib
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union

import numpy as np
from PIL import Image

from oscfast.checks import check_host_allocation, check_real, check_writable_file

if TYPE_CHECKING:
    import torch

__all__ = [
    "ImageSource",
    "check_min_size",
    "check_save_path",
    "image_to_tensor",
    "load_image",
    "save_image",
    "tensor_to_image",
    "to_uint8",
]

logger = logging.getLogger(__name__)

ImageSource = Union[str, "os.PathLike[str]", np.ndarray, Image.Image, "torch.Tensor"]
"""Anything :func:`load_image` accepts."""

# Float input may overshoot [0, 1] by rounding error (e.g. a resampling filter); more is a mistake.
_RANGE_TOLERANCE = 1e-6

_ACCEPTED_NUMPY_DTYPES = "uint8, uint16, bool, float16, float32, float64"
_ACCEPTED_TORCH_DTYPES = "uint8, bool, float16, bfloat16, float32, float64"

# Pillow decodes 16-bit colour PNGs to 8 bits. Decoding the same data a second time with the
# little-endian unpacker picks the other byte of each sample; filtering and interlacing are
# still undone by Pillow because both raw modes have the same bits per pixel.
_PNG16_LOW_BYTE_RAWMODE = {"RGB;16B": "RGB;16L", "RGBA;16B": "RGBA;16L"}

_PIL_FORMATS = {".png": "PNG", ".tif": "TIFF", ".tiff": "TIFF", ".jpg": "JPEG", ".jpeg": "JPEG", ".bmp": "BMP"}
_SAVE_SUFFIXES = {
    ".png": (8, 16),
    ".jpg": (8,),
    ".jpeg": (8,),
    ".tif": (8, 16),
    ".tiff": (8, 16),
    ".bmp": (8,),
}
_JPEG_QUALITY = 95


def _read_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


#: the process's file-creation mask, read once at import
_UMASK = _read_umask()


# --------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------


def load_image(source: ImageSource, *, name: str = "image") -> np.ndarray:
    """Read and validate an image, returning it as a float array in ``[0, 1]``.

    Accepted sources:

    * a file path (``str`` or ``os.PathLike``) to anything Pillow reads (PNG, JPEG, TIFF, BMP,
      ...). 8-bit data is divided by 255 and 16-bit data (PNG, TIFF, Pillow modes ``"I;16*"``)
      by 65535; Pillow mode ``"I"`` is taken to hold 16-bit data. Only the first frame of a
      multi-frame file is read, and EXIF orientation is not applied (pixels are used as stored,
      as ground-truth files are compared pixel by pixel).
    * a ``PIL.Image.Image``, with the same mode rules: ``"1"`` and ``"L"`` give one channel,
      ``"P"`` is expanded through its palette, ``"CMYK"``, ``"YCbCr"`` and other colour modes
      are converted to RGB.
    * a numpy array of shape ``(H, W)`` or ``(H, W, C)`` with ``C`` in ``{1, 2, 3, 4}`` (2 is
      grey + alpha, 4 is RGBA). numpy images are channels-last by convention: a 3-D array is
      read as ``(H, W, C)`` when its last dimension is at most 4. Dtypes: ``uint8`` (/255),
      ``uint16`` (/65535), ``bool`` (``False`` -> 0.0, ``True`` -> 1.0, e.g. a binary mask), and
      ``float16/32/64`` that must already lie in ``[0, 1]``.
    * a torch tensor of shape ``(H, W)``, ``(C, H, W)`` or ``(1, C, H, W)`` (channels-first,
      torch's convention), of a floating dtype (values in ``[0, 1]``), ``uint8`` or ``bool``. It
      is detached and copied to the CPU.

    Alpha: the result never has an alpha channel. Alpha is dropped and the colour channels are
    restored as they are stored (no compositing on a background). If the alpha channel is not
    fully opaque, a warning is logged through this module's logger, since the colours under
    transparent pixels are often arbitrary.

    Float input may exceed ``[0, 1]`` by at most 1e-6 (rounding error); it is then clipped.

    Args:
        source: The image (see above).
        name: What to call the image in error messages, e.g. ``"mask"``.

    Returns:
        A new C-contiguous ``float32`` array of shape ``(H, W, C)`` with ``C`` = 1 (grey) or 3
        (RGB) and values in ``[0, 1]``. It never shares memory with ``source``.

    Raises:
        FileNotFoundError: ``source`` is a path that does not exist.
        ValueError: the file cannot be decoded; the array is empty, has the wrong number of
            dimensions, more than 4 channels, a channels-first numpy layout, NaN or infinite
            values, or float values outside ``[0, 1]``; a tensor holds a batch of several images.
            :class:`oscfast.TooLargeError` (a ``ValueError``) when converting it would not fit
            in the free memory.
        TypeError: ``source`` is of an unsupported type, or its dtype is not accepted.

    Example:
        >>> import numpy as np
        >>> x = load_image(np.full((4, 6, 3), 255, dtype=np.uint8))
        >>> x.shape, x.dtype, float(x.max())
        ((4, 6, 3), dtype('float32'), 1.0)
    """
    if isinstance(source, (str, os.PathLike)):
        if not os.fspath(source):
            raise ValueError(f"{name} path is empty; expected the path of an image file")
        return _to_float_image(_read_file(Path(source).expanduser()), name)
    if isinstance(source, Image.Image):
        return _to_float_image(_pil_to_array(source), name)
    if _is_torch_tensor(source):
        return _to_float_image(_tensor_to_hwc_array(source, name), name)
    if isinstance(source, np.ndarray):
        return _to_float_image(_numpy_to_hwc_array(np.asarray(source), name), name)
    raise TypeError(
        f"{name} has type {type(source).__module__}.{type(source).__qualname__}; expected a file "
        "path (str or pathlib.Path), a PIL.Image.Image, a numpy array or a torch tensor"
    )


def check_min_size(image: np.ndarray, min_side: int, *, name: str = "image") -> None:
    """Check that both sides of an image are at least ``min_side`` pixels long.

    Args:
        image: Array of shape ``(H, W)`` or ``(H, W, C)``.
        min_side: Smallest accepted height and width, in pixels (at least 1).
        name: What to call the image in the error message.

    Raises:
        ValueError: The image is smaller than ``min_side`` along either side, ``min_side`` is
            not positive, or ``image`` is not 2-D or 3-D.

    Example:
        >>> import numpy as np
        >>> check_min_size(np.zeros((64, 48, 3), np.float32), 32)
    """
    if int(min_side) < 1:
        raise ValueError(f"min_side must be a positive number of pixels, got {min_side}")
    if image.ndim not in (2, 3):
        raise ValueError(f"expected {name} of shape HxW or HxWxC, got shape {tuple(image.shape)}")
    height, width = image.shape[:2]
    if min(height, width) < min_side:
        raise ValueError(
            f"{name} is {height}x{width} px (height x width); the smallest side must be at least "
            f"{min_side} px for this network"
        )


def to_uint8(image: np.ndarray) -> np.ndarray:
    """Quantise a float image in ``[0, 1]`` to ``uint8`` (round to nearest, clip).

    Args:
        image: Float array of any shape, values in ``[0, 1]``; values outside are clipped.
            A ``uint8`` array is returned as a copy.

    Returns:
        A new ``uint8`` array of the same shape.

    Raises:
        TypeError: ``image`` is neither a float nor a ``uint8`` array.
        ValueError: ``image`` contains NaN or infinite values.

    Example:
        >>> import numpy as np
        >>> to_uint8(np.array([0.0, 0.5, 1.0, 1.2]))
        array([  0, 128, 255, 255], dtype=uint8)
    """
    return _quantize(np.asarray(image), 8)


def save_image(path: str | os.PathLike[str], image: np.ndarray, *, bit_depth: int = 8) -> Path:
    """Write an image to a file whose format is chosen by the suffix.

    Supported suffixes: ``.png`` (8 or 16 bit), ``.tif``/``.tiff`` (8 or 16 bit), ``.jpg``/
    ``.jpeg`` (8 bit, quality 95, no chroma subsampling), ``.bmp`` (8 bit). One channel is saved
    as greyscale, three as RGB. Parent directories are created.

    Args:
        path: Destination file; an existing file is overwritten.
        image: Array of shape ``(H, W)``, ``(H, W, 1)`` or ``(H, W, 3)``; float in ``[0, 1]``
            (as returned by :func:`load_image`), or ``uint8``/``uint16``/``bool`` under the same
            rules as :func:`load_image`.
        bit_depth: 8 or 16 bits per sample.

    Returns:
        The path written to, as a ``pathlib.Path``.

    Raises:
        ValueError: Unknown suffix, a bit depth the format cannot store, or an invalid image
            (shape, channels, NaN/inf, values outside ``[0, 1]``).
        TypeError: ``image`` is not a numpy array or has an unsupported dtype.

    Example:
        >>> import numpy as np, tempfile, pathlib
        >>> out = pathlib.Path(tempfile.mkdtemp()) / "gray.png"
        >>> save_image(out, np.zeros((8, 8, 1), np.float32), bit_depth=16).name
        'gray.png'
    """
    path = check_save_path(path, bit_depth=bit_depth)
    suffix = path.suffix.lower()
    if not isinstance(image, np.ndarray):
        raise TypeError(f"image to save must be a numpy array, got {type(image).__qualname__}")
    if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] not in (1, 3)):
        raise ValueError(
            f"expected an image of shape HxW, HxWx1 or HxWx3 to save, got shape {image.shape}"
        )

    data = _quantize(_to_float_image(_as_hwc(image), "image to save", drop_alpha=False), bit_depth)
    if data.shape[2] == 1:
        data = data[:, :, 0]
    path.parent.mkdir(parents=True, exist_ok=True)
    # write a temporary file beside the target, then rename: a reader never sees half a file
    handle, name = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=suffix, dir=path.parent)
    os.close(handle)
    temporary = Path(name)
    try:
        if bit_depth == 16 and data.ndim == 3:
            # Pillow cannot write 16-bit colour images.
            if suffix == ".png":
                _write_png16_rgb(temporary, data)
            else:
                import tifffile

                tifffile.imwrite(temporary, data, photometric="rgb")
        else:
            options: dict[str, Any] = {}
            if suffix in (".jpg", ".jpeg"):
                options = {"quality": _JPEG_QUALITY, "subsampling": 0}
            Image.fromarray(data).save(temporary, format=_PIL_FORMATS[suffix], **options)
        os.chmod(temporary, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the usual permissions
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    return path


def check_save_path(path: str | os.PathLike[str], *, bit_depth: int = 8) -> Path:
    """Check, before any work, that an image can be saved at ``path``: a known suffix that
    stores ``bit_depth`` bits, and a folder that exists or can be created and is writable.

    Returns:
        The path (``~`` expanded).

    Raises:
        ValueError: an unknown suffix, a bit depth the format cannot store, a path that is a
            folder, or a folder that cannot be written.
    """
    path = Path(path).expanduser()
    suffix = path.suffix.lower()
    if suffix not in _SAVE_SUFFIXES:
        supported = ", ".join(sorted(_SAVE_SUFFIXES))
        raise ValueError(f"cannot save '{path}': unknown suffix {suffix!r}; use one of {supported}")
    if bit_depth not in (8, 16):
        raise ValueError(f"bit_depth must be 8 or 16, got {bit_depth!r}")
    if bit_depth not in _SAVE_SUFFIXES[suffix]:
        raise ValueError(
            f"cannot save '{path}' with bit_depth={bit_depth}: {suffix} stores 8 bits per sample; "
            "use .png or .tif for 16-bit output"
        )
    check_writable_file(path, what="image")
    return path


def image_to_tensor(
    image: np.ndarray, device: str | torch.device | None = None
) -> torch.Tensor:
    """Convert an ``(H, W, C)`` image array to a ``(1, C, H, W)`` float32 tensor.

    Args:
        image: Float array of shape ``(H, W, C)`` or ``(H, W)``, typically from
            :func:`load_image`. It is copied, so the tensor never shares memory with it.
        device: Where to put the tensor; ``None`` keeps it on the CPU.

    Returns:
        A contiguous float32 tensor.

    Shape:
        - image: :math:`(H, W, C)` or :math:`(H, W)`
        - output: :math:`(1, C, H, W)`, with :math:`C = 1` for 2-D input

    Raises:
        TypeError: ``image`` is not a float numpy array.
        ValueError: ``image`` is not 2-D or 3-D.

    Example:
        >>> import numpy as np
        >>> tuple(image_to_tensor(np.zeros((4, 5, 3), np.float32)).shape)
        (1, 3, 4, 5)
    """
    import torch

    if not isinstance(image, np.ndarray) or image.dtype.kind != "f":
        kind = image.dtype if isinstance(image, np.ndarray) else type(image).__qualname__
        raise TypeError(
            f"expected a float numpy array in [0, 1] (see load_image), got {kind}"
        )
    if image.ndim not in (2, 3):
        raise ValueError(f"expected an image of shape HxW or HxWxC, got shape {image.shape}")
    chw = _as_hwc(image).transpose(2, 0, 1)
    tensor = torch.from_numpy(np.array(chw, dtype=np.float32, order="C", copy=True))
    return tensor.unsqueeze(0).to(device)


def tensor_to_image(tensor: torch.Tensor) -> np.ndarray:
    """Convert a ``(1, C, H, W)`` or ``(C, H, W)`` tensor to an ``(H, W, C)`` float32 array.

    Values are not clipped; pass the result to :func:`save_image` only if it lies in ``[0, 1]``.

    Args:
        tensor: Image tensor on any device, with or without gradient.

    Returns:
        A new C-contiguous float32 numpy array.

    Shape:
        - tensor: :math:`(1, C, H, W)` or :math:`(C, H, W)`
        - output: :math:`(H, W, C)`

    Raises:
        TypeError: ``tensor`` is not a torch tensor.
        ValueError: Wrong number of dimensions, or a batch of more than one image.

    Example:
        >>> import torch
        >>> tensor_to_image(torch.zeros(1, 3, 4, 5)).shape
        (4, 5, 3)
    """
    import torch

    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"expected a torch tensor, got {type(tensor).__qualname__}")
    if tensor.ndim == 4:
        if tensor.shape[0] != 1:
            raise ValueError(
                f"batch of {tensor.shape[0]} images (shape {tuple(tensor.shape)}); pass one image, "
                "e.g. tensor[i]"
            )
        tensor = tensor[0]
    elif tensor.ndim != 3:
        raise ValueError(f"expected CxHxW or 1xCxHxW, got shape {tuple(tensor.shape)}")
    chw = tensor.detach().to(device="cpu", dtype=torch.float32).numpy()
    return np.ascontiguousarray(chw.transpose(1, 2, 0))


# --------------------------------------------------------------------------------------------
# Sources -> channels-last arrays (uint8, uint16, bool or float; C in 1..4)
# --------------------------------------------------------------------------------------------


def _is_torch_tensor(obj: object) -> bool:
    # Checked by module name so that plain numpy users never import torch.
    return type(obj).__module__.startswith("torch") and hasattr(obj, "detach")


def _as_hwc(array: np.ndarray) -> np.ndarray:
    return array[:, :, None] if array.ndim == 2 else array


def _numpy_to_hwc_array(array: np.ndarray, name: str) -> np.ndarray:
    _check_not_empty(array.shape, name)
    if array.ndim == 2:
        return array[:, :, None]
    if array.ndim != 3:
        raise ValueError(
            f"expected {name} of shape HxW or HxWxC for a numpy array, got shape {array.shape}"
        )
    first, last = array.shape[0], array.shape[2]
    if last <= 4:
        return array
    if first in (1, 3, 4):
        raise ValueError(
            f"{name} has shape {array.shape}, which looks channels-first (CxHxW); numpy images are "
            "HxWxC: transpose it with np.moveaxis(x, 0, -1)"
        )
    raise ValueError(f"{name} has >4 channels: shape {array.shape}; expected 1, 3 or 4 channels")


def _tensor_to_hwc_array(tensor: Any, name: str) -> np.ndarray:
    import torch

    shape = tuple(tensor.shape)
    if tensor.layout != torch.strided:
        raise TypeError(f"{name} is a {tensor.layout} tensor; expected a dense tensor (x.to_dense())")
    if tensor.is_meta:
        raise ValueError(f"{name} is a tensor on the meta device, which holds no data")
    _check_not_empty(shape, name)
    if tensor.ndim == 4:
        if shape[0] != 1:
            raise ValueError(
                f"{name} is a batch of {shape[0]} images (shape {shape}); pass one image, "
                "e.g. x[i]"
            )
        tensor = tensor[0]
    elif tensor.ndim == 2:
        tensor = tensor.unsqueeze(0)
    elif tensor.ndim != 3:
        raise ValueError(
            f"expected {name} of shape HxW, CxHxW or 1xCxHxW for a torch tensor, got shape {shape}"
        )
    channels, last = tensor.shape[0], tensor.shape[2]
    _check_fits_in_memory(shape, name)
    if channels > 4:
        if last <= 4:
            raise ValueError(
                f"{name} has shape {shape}, which looks channels-last (HxWxC); torch images are "
                "CxHxW: pass x.permute(2, 0, 1)"
            )
        raise ValueError(f"{name} has >4 channels: shape {shape}; expected 1, 3 or 4 channels")

    if tensor.dtype.is_floating_point:
        # numpy has no bfloat16; the float32 copy is exact for every float dtype but float64.
        target = torch.float64 if tensor.dtype == torch.float64 else torch.float32
    elif tensor.dtype in (torch.uint8, torch.bool):
        target = tensor.dtype
    else:
        raise TypeError(
            f"{name} has dtype {tensor.dtype}; accepted tensor dtypes are {_ACCEPTED_TORCH_DTYPES}"
        )
    chw = tensor.detach().to(device="cpu", dtype=target).numpy()
    return chw.transpose(1, 2, 0)


def _pil_to_array(image: Image.Image) -> np.ndarray:
    mode = image.mode
    if mode in ("L", "LA", "RGB", "RGBA", "F"):
        return _as_hwc(np.asarray(image))
    if mode.startswith("I;16"):
        return _as_hwc(np.asarray(image).astype(np.uint16))
    if mode == "I":
        values = np.asarray(image)
        low, high = int(values.min()), int(values.max())
        if low < 0 or high > 65535:
            raise ValueError(
                f"Pillow mode 'I' image has values in [{low}, {high}]; expected 16-bit data in "
                "[0, 65535]"
            )
        return _as_hwc(values.astype(np.uint16))
    if mode == "1":
        return _as_hwc(np.asarray(image.convert("L")))
    if mode == "La":
        return np.asarray(image.convert("LA"))
    if mode in ("P", "PA"):
        transparent = mode == "PA" or "transparency" in image.info
        return np.asarray(image.convert("RGBA" if transparent else "RGB"))
    if mode == "RGBa":
        return np.asarray(image.convert("RGBA"))
    # CMYK, YCbCr, LAB, HSV, RGBX, ...
    return np.asarray(image.convert("RGB"))


def _read_file(path: Path) -> np.ndarray:
    if not path.exists():
        raise FileNotFoundError(f"image file not found: '{path}'")
    if path.is_dir():
        raise ValueError(f"cannot read image '{path}': it is a directory, not a file")
    try:
        with Image.open(path) as image:
            wide = _read_wide_color(path, image)
            if wide is not None:
                return wide
            image.load()
            return _pil_to_array(image)
    except FileNotFoundError:
        raise
    except (OSError, SyntaxError, EOFError, ValueError, zlib.error, struct.error,
            Image.DecompressionBombError) as exc:
        if path.suffix.lower() in (".tif", ".tiff"):
            # Pillow does not decode every TIFF (e.g. float RGB); tifffile may.
            try:
                array = _read_tiff(path)
            except Exception:  # noqa: BLE001 - report Pillow's reason, the primary reader
                array = None
            if array is not None:
                return array
        raise ValueError(f"cannot read image '{path}': {exc}") from exc


def _read_wide_color(path: Path, image: Image.Image) -> np.ndarray | None:
    """Read a 16-bit colour PNG/TIFF at full precision, or return ``None`` for other images."""
    if image.format == "TIFF" and image.mode in ("RGB", "RGBA"):
        bits = getattr(image, "tag_v2", {}).get(258, (8,))
        if max(bits) > 8:
            array = _read_tiff(path)
            if array is not None:
                return array
            logger.warning("could not read '%s' at 16 bits; it is reduced to 8 bits", path)
        return None

    if image.format != "PNG" or len(image.tile) != 1:
        return None
    codec, extents, offset, rawmode = tuple(image.tile[0])[:4]
    if rawmode not in ("RGB;16B", "RGBA;16B", "LA;16B"):
        return None
    try:
        if rawmode == "LA;16B":
            # 16-bit grey + alpha is 4 bytes per pixel: let Pillow unfilter it as raw RGBA bytes.
            image.tile = [(codec, extents, offset, "RGBA")]
            raw = np.asarray(image).astype(np.uint16)
            return (raw[:, :, 0::2] << 8) | raw[:, :, 1::2]
        high = np.asarray(image).astype(np.uint16)
        with Image.open(path) as again:
            again.tile = [(codec, extents, offset, _PNG16_LOW_BYTE_RAWMODE[rawmode])]
            low = np.asarray(again).astype(np.uint16)
        if low.shape != high.shape:
            raise ValueError(f"byte planes differ in shape: {high.shape} and {low.shape}")
        return (high << 8) | low
    except (OSError, ValueError, KeyError) as exc:
        logger.warning("could not read '%s' at 16 bits (%s); it is reduced to 8 bits", path, exc)
        return None


def _read_tiff(path: Path) -> np.ndarray | None:
    """First page of a grey or RGB(A) TIFF via tifffile, channels-last; ``None`` if unsuitable."""
    try:
        import tifffile
    except ImportError:
        return None
    with tifffile.TiffFile(path) as tif:
        page = tif.pages[0]
        if page.photometric not in (tifffile.PHOTOMETRIC.RGB, tifffile.PHOTOMETRIC.MINISBLACK):
            return None
        array = page.asarray()
        axes = page.axes
    if axes == "SYX":
        array = np.moveaxis(array, 0, -1)
    elif axes not in ("YX", "YXS"):
        return None
    return _as_hwc(array)


# --------------------------------------------------------------------------------------------
# Validation and conversion
# --------------------------------------------------------------------------------------------


def _check_not_empty(shape: tuple[int, ...], name: str) -> None:
    if 0 in shape:
        raise ValueError(f"{name} is empty: shape {shape}")


def _check_fits_in_memory(shape: tuple[int, ...], name: str, *, bytes_per_element: int = 8) -> None:
    """Refuse, before converting it, an array of ``shape`` that would not fit in memory."""
    check_host_allocation(math.prod(int(side) for side in shape) * bytes_per_element,
                          f"{name} of shape {tuple(shape)}")


def _to_float_image(array: np.ndarray, name: str, *, drop_alpha: bool = True) -> np.ndarray:
    """Scale an HxWxC array (C <= 4) to float32 in [0, 1] and drop alpha."""
    _check_not_empty(array.shape, name)
    if array.ndim != 3 or not 1 <= array.shape[2] <= 4:
        # numpy and tensor input is checked before; this catches files read by tifffile
        raise ValueError(
            f"{name} has shape {tuple(array.shape)}; expected HxWxC with 1 to 4 channels "
            "(grey, grey + alpha, RGB or RGBA)"
        )
    _check_fits_in_memory(array.shape, name)
    dtype = array.dtype
    if dtype == np.uint8:
        image = array.astype(np.float32) / np.float32(255)
    elif dtype == np.uint16:
        image = array.astype(np.float32) / np.float32(65535)
    elif dtype == np.bool_:
        image = array.astype(np.float32)
    elif dtype.kind == "f" and dtype.itemsize <= 8:
        image = _checked_float(array, name)
    else:
        raise TypeError(
            f"{name} has dtype {dtype}; accepted dtypes are {_ACCEPTED_NUMPY_DTYPES} "
            "(e.g. x.astype(np.uint8) for integers in 0..255, or x / 255 as float)"
        )

    if drop_alpha and image.shape[2] in (2, 4):
        alpha = image[:, :, -1]
        transparent = int(np.count_nonzero(alpha < 1.0))
        if transparent:
            logger.warning(
                "%s has transparency (%d of %d pixels are not opaque); alpha is dropped and the "
                "colour channels are restored as stored",
                name, transparent, alpha.size,
            )
        image = image[:, :, :-1]
    return np.ascontiguousarray(image, dtype=np.float32)


def _checked_float(array: np.ndarray, name: str) -> np.ndarray:
    finite = np.isfinite(array)
    if not finite.all():
        n_nan = int(np.count_nonzero(np.isnan(array)))
        n_inf = int(array.size - np.count_nonzero(finite) - n_nan)
        found = " and ".join(
            text for count, text in ((n_nan, f"{n_nan} NaN"), (n_inf, f"{n_inf} infinite (inf)"))
            if count
        )
        raise ValueError(f"{name} contains {found} values; every value must be finite")
    low, high = float(array.min()), float(array.max())
    if low < -_RANGE_TOLERANCE or high > 1.0 + _RANGE_TOLERANCE:
        if low >= 0.0 and high <= 255.0:
            hint = "divide by 255 for 8-bit data"
        elif low >= 0.0 and high <= 65535.0:
            hint = "divide by 65535 for 16-bit data (or by 255 for 8-bit data)"
        else:
            hint = "rescale it, e.g. (x - x.min()) / (x.max() - x.min())"
        raise ValueError(
            f"{name} values must lie in [0, 1] for float input, got min {low:.6g} max {high:.6g}; "
            f"{hint}"
        )
    image = array.astype(np.float32)  # after the range check: a huge float64 would overflow
    return np.clip(image, 0.0, 1.0, out=image)


def _quantize(image: np.ndarray, bit_depth: int) -> np.ndarray:
    if image.dtype == np.uint8 and bit_depth == 8:
        return image.copy()
    if image.dtype.kind != "f":
        raise TypeError(f"expected a float image in [0, 1] to quantise, got dtype {image.dtype}")
    if not np.isfinite(image).all():
        raise ValueError("cannot quantise an image that contains NaN or infinite values")
    top = 255 if bit_depth == 8 else 65535
    scaled = np.rint(np.clip(image, 0.0, 1.0) * np.float64(top))
    return scaled.astype(np.uint8 if bit_depth == 8 else np.uint16)


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return (
        struct.pack(">I", len(data)) + kind + data
        + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    )


def _write_png16_rgb(path: Path, data: np.ndarray) -> None:
    """Write an HxWx3 uint16 array as a 16-bit RGB PNG (PNG spec: colour type 2, depth 16)."""
    height, width = data.shape[:2]
    rows = data.astype(">u2").reshape(height, width * 3).view(np.uint8)
    # Filter type 0 (none) on every row: simple, and zlib still compresses smooth images.
    scanlines = np.concatenate([np.zeros((height, 1), np.uint8), rows], axis=1)
    header = struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", zlib.compress(scanlines.tobytes(), 6))
        + _png_chunk(b"IEND", b"")
    )


