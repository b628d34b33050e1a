"""Make test observations from a clean image (reference-configs.md sections 1 and 3-6).

Every helper takes a numpy image of shape (H, W) or (H, W, C), floating point with values in
[0, 1], and returns float32 numpy arrays. 8-bit steps (JPEG, the PIL Lanczos resize) convert with
rounding, ``round(x * 255)``, so an image loaded as ``uint8 / 255`` survives the round trip exactly.

The blur observation uses :class:`oscfast.operators.BlurOperator`, the deblurring task's forward
operator, so y = A(x) holds for the operator the task will use.
"""
from __future__ import annotations

import io
import math
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

from oscfast.checks import check_bool as _check_bool, check_image_array, check_integer, check_real as _check_real
from oscfast.io import _check_fits_in_memory
from oscfast.operators import BlurOperator, gaussian_kernel

__all__ = [
    "add_gaussian_noise",
    "apply_mask",
    "blur",
    "crop_to_multiple",
    "downsample",
    "jpeg_compress",
    "random_pixel_mask",
    "text_mask",
]

#: Default Gaussian blur width (pixels) of :func:`blur` when neither sigma nor kernel is given.
#: Not from the DIP paper (which has no deblurring experiment); a common moderate blur.
DEFAULT_BLUR_SIGMA = 2.0

#: Pillow cannot write a JPEG wider or taller than this.
_JPEG_MAX_SIDE = 65500


# --------------------------------------------------------------------------------------------
# Validation and 8-bit conversion
# --------------------------------------------------------------------------------------------
def check_image(image: object, name: str = "image") -> np.ndarray:
    """Return ``image`` after checking it is a float (H, W) or (H, W, C) array in [0, 1]."""
    return check_image_array(image, name)


def _check_shape_hw(shape_hw: Sequence[int]) -> tuple[int, int]:
    try:
        h, w = (int(s) for s in shape_hw)
    except (TypeError, ValueError):
        raise ValueError(f"shape_hw must be a pair (H, W) of integers, got {shape_hw!r}") from None
    if h < 1 or w < 1:
        raise ValueError(f"shape_hw must be positive, got {(h, w)}")
    return h, w


def _rng(seed: object) -> np.random.Generator:
    """``numpy.random.default_rng(seed)``, with an error that names the seed."""
    if isinstance(seed, (bool, np.bool_)):
        raise TypeError(f"seed must be a non-negative integer, got {seed!r}")
    try:
        return np.random.default_rng(seed)  # type: ignore[arg-type]
    except TypeError as error:
        raise TypeError(f"seed must be a non-negative integer, got {type(seed).__name__} {seed!r}") from error
    except ValueError as error:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}") from error


def _max_kernel_side(shape_hw: tuple[int, int]) -> int:
    """The largest blur kernel side accepted for an image of ``shape_hw``: the Gaussian of
    sigma = max(H, W), whose support is six times the image."""
    return 6 * max(shape_hw) + 1


def checked_kernel(kernel: object, shape_hw: tuple[int, int], name: str = "kernel") -> np.ndarray:
    """A blur kernel (array-like or tensor) as a finite float64 2-D numpy array.

    Raises:
        TypeError: not an array of real numbers.
        ValueError: not 2-D, empty, larger than :func:`_max_kernel_side`, or not finite.
    """
    if isinstance(kernel, torch.Tensor):
        if kernel.is_complex():
            raise TypeError(f"{name} must hold real numbers, got dtype {kernel.dtype}")
        shape = tuple(kernel.shape)
    else:
        if not isinstance(kernel, np.ndarray):
            if not isinstance(kernel, (list, tuple)):
                raise TypeError(
                    f"{name} must be a 2-D numpy array, tensor or nested list, got {type(kernel).__name__}"
                )
            try:
                kernel = np.asarray(kernel)
            except ValueError as error:
                raise ValueError(f"{name} must be a rectangular 2-D array: {error}") from None
        if kernel.dtype.kind not in "biuf":
            raise TypeError(f"{name} must hold real numbers, got dtype {kernel.dtype}")
        shape = kernel.shape
    if len(shape) != 2 or 0 in shape:
        raise ValueError(f"{name} must be a non-empty 2-D array, got shape {shape}")
    limit = _max_kernel_side(shape_hw)
    if max(shape) > limit:
        raise ValueError(
            f"{name} has shape {shape}, larger than {limit} px (6 x the {shape_hw[0]}x{shape_hw[1]} "
            "image): expected a kernel no larger than the blur it models"
        )
    if isinstance(kernel, torch.Tensor):
        array = kernel.detach().to(device="cpu", dtype=torch.float64).numpy()
    else:
        array = np.asarray(kernel, dtype=np.float64)
    if not np.isfinite(array).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    return array


def checked_gaussian_kernel(sigma: object, shape_hw: tuple[int, int], name: str = "sigma") -> np.ndarray:
    """The Gaussian kernel of ``sigma`` px, checked to be positive, at most max(H, W) and large
    enough that the kernel is defined."""
    value = _check_real(sigma, name, "a blur width in pixels > 0")
    if value <= 0:
        raise ValueError(f"{name} must be > 0 pixels, got {sigma!r}")
    if value > max(shape_hw):
        raise ValueError(
            f"{name}={sigma!r} is wider than the {shape_hw[0]}x{shape_hw[1]} image; expected "
            f"0 < {name} <= {max(shape_hw)}"
        )
    with np.errstate(all="ignore"):
        kernel = gaussian_kernel(value)
    if not np.isfinite(kernel).all():
        raise ValueError(f"{name}={sigma!r} is too small to sample a Gaussian kernel; expected {name} >= 1e-100")
    return kernel


def _to_uint8(image: np.ndarray) -> np.ndarray:
    return np.rint(np.clip(image, 0.0, 1.0) * 255.0).astype(np.uint8)


def _pil_channels(image: np.ndarray) -> list[Image.Image]:
    """Split an 8-bit image into PIL images: one RGB image, or one 'L' image per channel."""
    u8 = _to_uint8(image)
    if u8.ndim == 2 or u8.shape[2] == 3:
        return [Image.fromarray(u8)]
    return [Image.fromarray(np.ascontiguousarray(u8[..., c])) for c in range(u8.shape[2])]


def _from_pil(images: list[Image.Image], like: np.ndarray) -> np.ndarray:
    """Inverse of :func:`_pil_channels`, returning float32 in [0, 1] with ``like``'s layout."""
    if like.ndim == 2 or like.shape[2] == 3:
        out = np.asarray(images[0])
    else:
        out = np.stack([np.asarray(im) for im in images], axis=-1)
    return out.astype(np.float32) / np.float32(255.0)


# --------------------------------------------------------------------------------------------
# Observations
# --------------------------------------------------------------------------------------------
def add_gaussian_noise(
    image: np.ndarray, sigma: float = 25 / 255, *, seed: int = 0, clip: bool = True
) -> np.ndarray:
    """Add i.i.d. Gaussian noise, as in the reference denoising setup (section 3).

    The noise is drawn in float64 from ``numpy.random.default_rng(seed)`` and added to the float64
    image; the sum is clipped to [0, 1] (unless ``clip=False``) and cast to float32. It is not
    quantised to 8 bits.

    Args:
        image: Clean image (H, W) or (H, W, C), float in [0, 1].
        sigma: Noise standard deviation on the [0, 1] scale (25/255 in the DIP paper).
        seed: Seed of the noise generator.
        clip: Clip the noisy image to [0, 1].

    Returns:
        Noisy float32 image, same shape as ``image``.

    Raises:
        ValueError: If ``image`` is invalid or ``sigma`` is negative or not finite.
        TypeError: If ``image`` is not a float numpy array.

    Example:
        >>> y = add_gaussian_noise(np.full((8, 8, 3), 0.5, np.float32), seed=1)
        >>> y.shape, y.dtype
        ((8, 8, 3), dtype('float32'))
    """
    image = check_image(image)
    sigma = _check_real(sigma, "sigma", "a noise std >= 0")
    if sigma < 0:
        raise ValueError(f"sigma must be a non-negative finite number, got {sigma!r}")
    clip = _check_bool(clip, "clip")
    rng = _rng(seed)
    noisy = image.astype(np.float64) + rng.normal(0.0, sigma, size=image.shape)
    if clip:
        noisy = np.clip(noisy, 0.0, 1.0)
    with np.errstate(over="ignore"):
        out = noisy.astype(np.float32)
    if not np.isfinite(out).all():
        raise ValueError(f"sigma={sigma!r} without clipping gives values beyond the float32 range")
    return out


def jpeg_compress(image: np.ndarray, quality: int = 10) -> np.ndarray:
    """JPEG round trip through Pillow at the given quality (8-bit).

    Grayscale images ((H, W) or (H, W, 1)) are encoded as 8-bit grayscale JPEG and keep their
    shape; RGB images are encoded with Pillow's defaults for the quality (4:2:0 chroma
    subsampling, standard quantisation tables scaled by ``quality``).

    Args:
        image: Clean image (H, W), (H, W, 1) or (H, W, 3), float in [0, 1].
        quality: JPEG quality, 1 (worst) to 100.

    Returns:
        Decoded float32 image (uint8 / 255), same shape as ``image``.

    Raises:
        ValueError: If ``image`` is invalid, has a channel count other than 1 or 3, or
            ``quality`` is outside 1..100.
        TypeError: If ``image`` is not a float numpy array.

    Example:
        >>> jpeg_compress(np.full((16, 16), 0.5, np.float32), quality=50).shape
        (16, 16)
    """
    image = check_image(image)
    if (
        isinstance(quality, bool)
        or not isinstance(quality, (int, np.integer))
        or not 1 <= quality <= 100
    ):
        raise ValueError(f"quality must be an integer in 1..100, got {quality!r}")
    if image.ndim == 3 and image.shape[2] not in (1, 3):
        raise ValueError(f"JPEG needs 1 or 3 channels, image has shape {image.shape}")
    if max(image.shape[:2]) > _JPEG_MAX_SIDE:
        raise ValueError(
            f"JPEG stores at most {_JPEG_MAX_SIDE} px per side, image has shape {image.shape}"
        )
    (pil,) = _pil_channels(image)
    buffer = io.BytesIO()
    pil.save(buffer, format="JPEG", quality=int(quality))
    buffer.seek(0)
    with Image.open(buffer) as decoded:
        out = np.asarray(decoded.convert(pil.mode))
    return (out.astype(np.float32) / np.float32(255.0)).reshape(image.shape)


def crop_to_multiple(image: np.ndarray, multiple: int) -> np.ndarray:
    """Centre-crop H and W down to multiples of ``multiple`` (upstream ``crop_image``, section 1).

    The new size is H - H mod d by W - W mod d and the top/left offset is the floor of half the
    excess. (The SR loader of section 4 rounds that offset half-to-even through PIL instead; the two
    differ by one pixel only when the excess is odd and its floored half is odd.)

    Args:
        image: Array (H, W) or (H, W, C) (any dtype; masks work too).
        multiple: The divisor d.

    Returns:
        A view of ``image`` of shape (H', W'[, C]).

    Raises:
        ValueError: If ``image`` is not 2-D/3-D, ``multiple`` is not a positive integer, or the
            image is smaller than ``multiple`` along an axis.

    Example:
        >>> crop_to_multiple(np.zeros((261, 400, 3)), 32).shape
        (256, 384, 3)
    """
    if not isinstance(image, np.ndarray) or image.ndim not in (2, 3):
        shape = getattr(image, "shape", type(image).__name__)
        raise ValueError(f"image must be a numpy array (H, W) or (H, W, C), got {shape}")
    d = check_integer(multiple, "multiple", minimum=1)
    h, w = image.shape[:2]
    h2, w2 = h - h % d, w - w % d
    if h2 == 0 or w2 == 0:
        raise ValueError(f"image of size {h}x{w} is smaller than the multiple {d}")
    top, left = (h - h2) // 2, (w - w2) // 2
    return image[top : top + h2, left : left + w2]


def downsample(image: np.ndarray, factor: int = 4) -> np.ndarray:
    """Reference SR observation: PIL Lanczos resize by ``factor`` (section 4).

    The image is converted to 8 bits (rounding), resized with Pillow's ``Image.LANCZOS`` (the old
    ``Image.ANTIALIAS``: Lanczos-3 with antialiasing) to (W / factor, H / factor), and returned as
    uint8 / 255. This is *not* the Lanczos-2 loss operator
    (:class:`oscfast.operators.LanczosDownsampler`): the paper used the two on purpose. Crop first
    with :func:`crop_to_multiple` (the paper crops HR to a multiple of 32).

    Args:
        image: HR image (H, W) or (H, W, C), float in [0, 1], H and W multiples of ``factor``.
        factor: Integer downsampling factor.

    Returns:
        Float32 LR image (H / factor, W / factor[, C]).

    Raises:
        ValueError: If ``image`` is invalid, ``factor`` is not a positive integer, or H or W is not
            a multiple of ``factor``.
        TypeError: If ``image`` is not a float numpy array.

    Example:
        >>> downsample(np.zeros((32, 64, 3), np.float32), 4).shape
        (8, 16, 3)
    """
    image = check_image(image)
    f = check_integer(factor, "factor", minimum=1)
    h, w = image.shape[:2]
    if h % f or w % f:
        raise ValueError(
            f"image size {h}x{w} is not a multiple of factor {f}; crop it first "
            f"(crop_to_multiple(image, {f}))"
        )
    size = (w // f, h // f)
    resized = [im.resize(size, Image.Resampling.LANCZOS) for im in _pil_channels(image)]
    return _from_pil(resized, image)


def check_mask(mask: object, h: int, w: int) -> np.ndarray:
    """Return ``mask`` as float32 (H, W) or (H, W, C) after checking its shape and values."""
    if not isinstance(mask, np.ndarray):
        raise TypeError(f"mask must be a numpy array, got {type(mask).__name__}")
    if mask.ndim not in (2, 3) or mask.shape[:2] != (h, w):
        raise ValueError(f"mask has shape {mask.shape}, image is ({h}, {w}[, C])")
    if mask.dtype.kind not in "biuf":
        raise TypeError(f"mask must hold numbers 0 and 1 (bool, integer or float), got dtype {mask.dtype}")
    m = mask.astype(np.float32)
    if not np.all((m == 0) | (m == 1)):
        hint = " (divide a {0, 255} mask by 255)" if m.max() == 255 else ""
        raise ValueError(f"mask values must be 0 or 1 (1 = observed){hint}")
    return m


def apply_mask(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Observation y = x * m for inpainting and pixel restoration (sections 5-6).

    Args:
        image: Clean image (H, W) or (H, W, C), float in [0, 1].
        mask: {0, 1} mask (H, W), (H, W, 1) or (H, W, C) (bool accepted); 1 = observed. A
            one-channel mask is broadcast over the image's channels.

    Returns:
        Float32 masked image, same shape as ``image``.

    Raises:
        ValueError: If the shapes do not match or the mask is not binary.
        TypeError: If ``image`` or ``mask`` is not a numpy array (or ``image`` is not float).

    Example:
        >>> float(apply_mask(np.ones((4, 4, 3), np.float32), np.zeros((4, 4))).max())
        0.0
    """
    image = check_image(image)
    h, w = image.shape[:2]
    m = check_mask(mask, h, w)
    if image.ndim == 2:
        if m.ndim == 3 and m.shape[2] != 1:
            raise ValueError(f"mask has shape {mask.shape}, grayscale image is {image.shape}")
        m = m.reshape(h, w)
    else:
        if m.ndim == 2:
            m = m[..., None]
        if m.shape[2] not in (1, image.shape[2]):
            raise ValueError(f"mask has shape {mask.shape}, image is {image.shape}")
    return (image * m).astype(np.float32)


def random_pixel_mask(
    shape_hw: Sequence[int], keep: float = 0.5, *, seed: int = 0, channels: int = 1
) -> np.ndarray:
    """I.i.d. Bernoulli keep mask, as in the restoration notebook (section 6).

    Each entry is 1 with probability ``keep``, independently. With ``channels=1`` (the default and
    the upstream setup) one mask is shared by all image channels; with ``channels=C`` each channel
    gets its own.

    Args:
        shape_hw: Image size (H, W).
        keep: Probability that a pixel is observed, in [0, 1] (0.5 for Barbara, 0.02 for the
            restoration Kate).
        seed: Seed of ``numpy.random.default_rng``.
        channels: Number of independent mask channels.

    Returns:
        Float32 {0, 1} array (H, W, channels).

    Raises:
        ValueError: If ``shape_hw``, ``keep`` or ``channels`` is invalid.

    Example:
        >>> random_pixel_mask((4, 5), 0.5, seed=3).shape
        (4, 5, 1)
    """
    h, w = _check_shape_hw(shape_hw)
    keep = _check_real(keep, "keep", "a probability in [0, 1]")
    if not 0.0 <= keep <= 1.0:
        raise ValueError(f"keep must be in [0, 1], got {keep!r}")
    c = check_integer(channels, "channels", minimum=1)
    _check_fits_in_memory((h, w, c), "mask")
    rng = _rng(seed)
    return (rng.random((h, w, c)) < keep).astype(np.float32)


def text_mask(shape_hw: Sequence[int], *, seed: int = 0, coverage: float = 0.05) -> np.ndarray:
    """Synthetic text-like inpainting mask (holes = thin glyph strokes), for images without one.

    Words of 2-7 random glyphs are placed at random positions; each glyph is 2-4 straight strokes
    between points of a 3 x 3 grid in a cell of height ~min(H, W) / 24 (at least 5 px), drawn
    1-2 px thick. Words are added until at least ``coverage`` of the pixels are holes, so the
    missing fraction is ``coverage`` plus at most one word. The reference Kate mask misses 4.3 %.

    Args:
        shape_hw: Image size (H, W).
        seed: Seed of ``numpy.random.default_rng``.
        coverage: Target fraction of missing pixels, in (0, 0.5].

    Returns:
        Float32 {0, 1} array (H, W, 1); 1 = observed, 0 = hole.

    Raises:
        ValueError: If ``shape_hw`` or ``coverage`` is invalid.

    Example:
        >>> m = text_mask((128, 128), seed=0)
        >>> bool(0.04 < 1 - m.mean() < 0.1)
        True
    """
    h, w = _check_shape_hw(shape_hw)
    coverage = _check_real(coverage, "coverage", "a fraction in (0, 0.5]")
    if not 0.0 < coverage <= 0.5:
        raise ValueError(f"coverage must be in (0, 0.5], got {coverage!r}")
    _check_fits_in_memory((h, w), "mask")
    rng = _rng(seed)
    holes = np.zeros((h, w), dtype=bool)
    glyph_h = max(5, round(min(h, w) / 24))
    glyph_w = max(3, round(0.6 * glyph_h))
    target = coverage * h * w
    anchors_y = np.array([0.0, 0.5, 1.0]) * (glyph_h - 1)
    anchors_x = np.array([0.0, 0.5, 1.0]) * (glyph_w - 1)
    missing = 0
    while missing < target:
        n_glyphs = int(rng.integers(2, 8))
        y0 = int(rng.integers(-glyph_h // 2, h))
        x0 = int(rng.integers(-glyph_w, w))
        thick = int(rng.integers(1, 3))
        ys: list[np.ndarray] = []
        xs: list[np.ndarray] = []
        for g in range(n_glyphs):
            gx = x0 + g * (glyph_w + 2)
            for _ in range(int(rng.integers(2, 5))):
                a, b = rng.choice(9, size=2, replace=False)
                p0 = np.array([anchors_y[a // 3], anchors_x[a % 3]])
                p1 = np.array([anchors_y[b // 3], anchors_x[b % 3]])
                n = int(math.ceil(2 * np.abs(p1 - p0).max())) + 1
                s = np.linspace(0.0, 1.0, n)[:, None]
                pts = np.rint(p0 + s * (p1 - p0)).astype(np.int64)
                for dy in range(thick):
                    for dx in range(thick):
                        ys.append(pts[:, 0] + y0 + dy)
                        xs.append(pts[:, 1] + gx + dx)
        yy, xx = np.concatenate(ys), np.concatenate(xs)
        inside = (yy >= 0) & (yy < h) & (xx >= 0) & (xx < w)
        holes[yy[inside], xx[inside]] = True
        missing = int(holes.sum())
    return (~holes).astype(np.float32)[..., None]


def blur(
    image: np.ndarray,
    *,
    sigma: float | None = None,
    kernel: np.ndarray | torch.Tensor | None = None,
) -> np.ndarray:
    """Blur observation y = A(x) with the deblurring task's operator (:class:`BlurOperator`).

    Give either a Gaussian ``sigma`` or an explicit ``kernel`` (used as given, not renormalised;
    see :class:`oscfast.operators.BlurOperator` for the convolution and border conventions). With
    neither, a Gaussian with sigma = ``DEFAULT_BLUR_SIGMA`` (2 px) is used. The convolution runs in
    float64 and the result is cast to float32; it is not clipped, so y = A(x) holds exactly up to
    the float32 cast.

    Args:
        image: Clean image (H, W) or (H, W, C), float in [0, 1].
        sigma: Gaussian blur standard deviation in pixels (kernel from :func:`gaussian_kernel`).
        kernel: 2-D blur kernel.

    Returns:
        Blurred float32 image, same shape as ``image``.

    Raises:
        ValueError: If both ``sigma`` and ``kernel`` are given, or either is invalid.
        TypeError: If ``image`` is not a float numpy array.

    Example:
        >>> float(blur(np.full((8, 8), 0.25, np.float32), sigma=1.0).max())
        0.25
    """
    image = check_image(image)
    if sigma is not None and kernel is not None:
        raise ValueError("give either sigma or kernel, not both")
    shape_hw = (int(image.shape[0]), int(image.shape[1]))
    if kernel is None:
        if sigma is None:
            kernel = gaussian_kernel(DEFAULT_BLUR_SIGMA)
        else:
            kernel = checked_gaussian_kernel(sigma, shape_hw, "sigma")
    else:
        kernel = checked_kernel(kernel, shape_hw, "kernel")
    op = BlurOperator(kernel)
    chw = image[None] if image.ndim == 2 else np.moveaxis(image, -1, 0)
    x = torch.from_numpy(np.ascontiguousarray(chw, dtype=np.float64))[None]
    with torch.no_grad():
        y = op(x)[0].numpy()
    out = y[0] if image.ndim == 2 else np.moveaxis(y, 0, -1)
    return np.ascontiguousarray(out, dtype=np.float32)
