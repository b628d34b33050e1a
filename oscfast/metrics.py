"""Image quality metrics.

:func:`psnr` is the reference implementation on numpy arrays (it calls scikit-image, as the DIP
notebooks did). :func:`psnr_torch` computes the same number on tensors without leaving the device,
for logging inside the optimisation loop.
"""
from __future__ import annotations

import numpy as np
import torch
from skimage.metrics import peak_signal_noise_ratio

__all__ = ["luma", "psnr", "psnr_torch", "psnr_y_torch"]


def psnr(reference: np.ndarray, image: np.ndarray, *, data_range: float = 1.0) -> float:
    """Peak signal-to-noise ratio of ``image`` against ``reference``, in dB.

    ``10 * log10(data_range**2 / MSE)`` with the MSE taken over all pixels and channels (RGB PSNR,
    no border shave), computed by ``skimage.metrics.peak_signal_noise_ratio``.

    Args:
        reference: Ground truth, e.g. an ``(H, W, C)`` float array in ``[0, 1]``.
        image: Estimate, same shape and scale as ``reference``.
        data_range: Difference between the largest and smallest possible value (1 for float
            images in ``[0, 1]``, 255 for ``uint8`` data).

    Returns:
        The PSNR in dB; ``inf`` when the images are identical.

    Raises:
        ValueError: The shapes differ, or ``data_range`` is not positive.

    Example:
        >>> import numpy as np
        >>> ref = np.zeros((4, 4, 3))
        >>> round(psnr(ref, ref + 0.1), 6)
        20.0
    """
    reference = np.asarray(reference)
    image = np.asarray(image)
    if reference.shape != image.shape:
        raise ValueError(
            f"reference has shape {reference.shape}, image has shape {image.shape}; they must match"
        )
    if not data_range > 0:
        raise ValueError(f"data_range must be positive, got {data_range}")
    # Identical images have MSE 0; skimage returns inf then, with a divide-by-zero warning.
    with np.errstate(divide="ignore"):
        return float(peak_signal_noise_ratio(reference, image, data_range=data_range))


def psnr_torch(reference: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
    """PSNR in dB for data range 1, computed on the tensors' device without a host sync.

    Same definition as :func:`psnr` (``10 * log10(1 / MSE)``, MSE over every element). The result
    stays a 0-d tensor on the device, so calling this every iteration of a GPU loop does not stall
    it; call ``.item()`` only when the value is needed on the host. Inputs are detached: the result
    carries no gradient. Half-precision inputs are accumulated in float32.

    Args:
        reference: Ground truth, values in ``[0, 1]``.
        image: Estimate, same shape and device as ``reference``.

    Returns:
        0-d float tensor on the inputs' device; ``inf`` when the tensors are equal.

    Shape:
        - reference: any, e.g. :math:`(1, C, H, W)`
        - image: same as ``reference``
        - output: :math:`()`

    Raises:
        ValueError: The shapes or devices differ.

    Example:
        >>> import torch
        >>> ref = torch.zeros(1, 3, 4, 4)
        >>> round(psnr_torch(ref, ref + 0.1).item(), 4)
        20.0
    """
    if reference.shape != image.shape:
        raise ValueError(
            f"reference has shape {tuple(reference.shape)}, image has shape "
            f"{tuple(image.shape)}; they must match"
        )
    if reference.device != image.device:
        raise ValueError(f"reference is on {reference.device}, image on {image.device}")
    dtype = torch.promote_types(torch.promote_types(reference.dtype, image.dtype), torch.float32)
    diff = image.detach().to(dtype) - reference.detach().to(dtype)
    mse = torch.mean(diff * diff)
    # log10(0) = -inf, so equal inputs give +inf without a data-dependent branch.
    return -10.0 * torch.log10(mse)


def luma(image: torch.Tensor) -> torch.Tensor:
    """ITU-R BT.601 luma as MATLAB's rgb2ycbcr gives it, for RGB in [0, 1]:
    Y = (16 + 219 (0.299 R + 0.587 G + 0.114 B)) / 255 (reference-configs.md section 4).

    Shape:
        image: (..., 3, H, W) -> (..., 1, H, W); a 1-channel image is returned unchanged.
    """
    if image.shape[-3] == 1:
        return image
    # Python scalars, not a weight tensor: a tensor made here would be a host-to-device copy,
    # which a CUDA graph capture of the step (where PSNR-Y is recorded) cannot hold
    red, green, blue = image[..., 0:1, :, :], image[..., 1:2, :, :], image[..., 2:3, :, :]
    weighted = red * 0.299 + green * 0.587 + blue * 0.114
    return (weighted * 219.0 + 16.0) / 255.0


def psnr_y_torch(reference: torch.Tensor, image: torch.Tensor, *, shave: tuple[int, int] = (4, 5)) -> torch.Tensor:
    """PSNR on the luma channel with the border shave of the DIP paper's super-resolution
    evaluation script: ``shave[0]`` pixels off the top and left, ``shave[1]`` off the bottom
    and right (reference-configs.md section 4). 0-d tensor on the inputs' device.

    Raises:
        ValueError: the shapes differ or the shave leaves nothing.
    """
    if reference.shape != image.shape:
        raise ValueError(f"reference has shape {tuple(reference.shape)}, image has shape {tuple(image.shape)}; they must match")
    first, last = shave
    height, width = image.shape[-2:]
    if height - first - last < 1 or width - first - last < 1:
        raise ValueError(f"a shave of {shave} leaves nothing of a {height}x{width} image")
    crop = (..., slice(first, height - last), slice(first, width - last))
    return psnr_torch(luma(reference)[crop], luma(image)[crop])
