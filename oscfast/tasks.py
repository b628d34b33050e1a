"""Inverse problems as objects with a forward operator (method.md section 1).

The engine only calls ``task.forward(x)``, ``task.pseudo_noise(std, seed)``, ``task.loss``
and ``task.finalize``: a new task is a new subclass, never a change to the engine.
"""
from __future__ import annotations

import math
import numbers
import logging
from collections.abc import Callable
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from torch import nn

from oscfast import io, operators
from oscfast.probe import gaussian_pseudo_noise, masked_uniform_pseudo_noise

__all__ = [
    "TASK_OPTIONS",
    "build_task",
    "load_mask",
    "Task",
    "Denoise",
    "JPEG",
    "SuperResolution",
    "Inpaint",
    "RestorePixels",
    "Deblur",
    "CustomOperator",
]

OutputKind = Literal["ema", "raw"]

logger = logging.getLogger(__name__)


class Task(nn.Module):
    """Base class: an observation y and a forward operator A with y ~ A(x).

    Args:
        observation: the measurement, shape (1, C, h, w), float in [0, 1].
        output_size: (H, W) of the image to reconstruct.

    Shape:
        forward: (1, C, H, W) -> measurement shape (1, C, h, w).
    """

    name: ClassVar[str] = "task"
    #: which image the task returns at the chosen iteration by default (method.md section 5)
    default_output: ClassVar[OutputKind] = "raw"

    def __init__(self, observation: torch.Tensor, output_size: tuple[int, int]) -> None:
        super().__init__()
        if observation.ndim != 4 or observation.shape[0] != 1:
            raise ValueError(f"observation must have shape (1, C, h, w), got {tuple(observation.shape)}")
        self.register_buffer("observation", observation.float().contiguous())
        self.output_size = (int(output_size[0]), int(output_size[1]))

    @property
    def channels(self) -> int:
        """Number of image channels."""
        return int(self.observation.shape[1])

    @property
    def output_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of the reconstruction."""
        return (self.channels, *self.output_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102 - the operator A
        raise NotImplementedError

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        """A^T y for linear operators (used by export and evaluation, not by the engine)."""
        raise NotImplementedError(f"task {self.name!r} has no adjoint")

    def pseudo_noise(self, std: float, *, seed: int) -> torch.Tensor:
        """Pseudo-noise in measurement space (method.md section 2): Gaussian by default."""
        return gaussian_pseudo_noise(tuple(self.observation.shape), std, seed=seed)

    def loss(self, measured: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Mean squared error over all measurement entries (as the reference notebooks)."""
        return torch.mean((measured - target) ** 2)

    def finalize(self, image: torch.Tensor) -> torch.Tensor:
        """Post-process the returned image (e.g. put known pixels back). Identity here."""
        return image

    def noise_level(self) -> float:
        """Std of the measurement noise e in y = A x + e (used by the "risk" stop rule).
        0 here: the observation is exact (an ideal LR image, known pixels)."""
        return 0.0


def observation_noise_level(observation: torch.Tensor) -> float:
    """White-noise std of an observation (1, C, H, W): Donoho's estimator
    (:func:`oscfast.noise_level.donoho_noise_level`, chosen by bench/noise_level.py)."""
    from oscfast.noise_level import donoho_noise_level

    return donoho_noise_level(observation.detach().cpu()[0].permute(1, 2, 0).double().numpy())


class Denoise(Task):
    """Gaussian (or other additive) noise: A is the identity."""

    name = "denoise"
    default_output = "ema"

    def __init__(self, observation: torch.Tensor) -> None:
        super().__init__(observation, tuple(observation.shape[-2:]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        return y

    def noise_level(self) -> float:
        return observation_noise_level(self.observation)


class JPEG(Denoise):
    """Blind JPEG-artefact removal: A is the identity, the target is the JPEG image.

    The risk rule needs the size of the JPEG error. It comes from the quantisation tables
    (``tables``, as Pillow reads them from the file; ``subsampling`` in Pillow's code), or from
    the standard tables of ``quality``; with neither, Donoho's white-noise estimate is used,
    which sees a few percent of a JPEG's error, so the risk rule then runs to the cap.

    Args:
        observation: the decoded JPEG, (1, C, H, W).
        tables: quantisation tables (table index -> 64 values, natural order).
        subsampling: chroma subsampling (0: 4:4:4, 1: 4:2:2, 2: 4:2:0; None: 4:2:0).
        quality: the JPEG quality, when the tables are not at hand.
    """

    name = "jpeg"

    def __init__(self, observation: torch.Tensor, *, tables: Any = None, subsampling: int | None = None,
                 quality: int | None = None) -> None:
        super().__init__(observation)
        if quality is not None and (isinstance(quality, bool) or not isinstance(quality, (int, np.integer)) or not 1 <= quality <= 100):
            raise ValueError(f"quality must be an integer in 1..100, got {quality!r}")
        if tables is not None and quality is not None:
            raise ValueError("give either the quantisation tables or quality=, not both")
        self.tables = tables
        self.subsampling = subsampling
        self.quality = quality

    def noise_level(self) -> float:
        from oscfast.noise_level import jpeg_noise_level, jpeg_tables_for_quality

        tables = self.tables if self.tables is not None else (
            jpeg_tables_for_quality(int(self.quality)) if self.quality is not None else None)
        if tables is None:
            logger.warning("JPEG task without quantisation tables or quality=: the error level is unknown and "
                           "the risk rule will run to the cap (give quality= or a JPEG file)")
            return super().noise_level()
        image = self.observation.detach().cpu()[0].permute(1, 2, 0).double().numpy()
        return float(jpeg_noise_level(image, tables, subsampling=self.subsampling))


class SuperResolution(Task):
    """x``factor`` super-resolution; A is the Lanczos-2 half-phase downsampler
    (reference-configs.md section 4)."""

    name = "super_resolution"

    def __init__(self, observation: torch.Tensor, factor: int = 4) -> None:
        factor = _integer_option(factor, "factor", 2)
        height, width = observation.shape[-2:]
        # the output canvas (float32) and the Lanczos kernel (float64, (4 factor)^2 taps)
        _check_allocation(
            4 * observation.shape[1] * height * width * factor**2 + 8 * (4 * factor) ** 2,
            f"super-resolution x{factor} of a {height}x{width} image "
            f"(a {height * factor}x{width * factor} output)",
        )
        super().__init__(observation, (height * factor, width * factor))
        self.factor = factor
        self.downsampler = operators.LanczosDownsampler(factor, observation.shape[1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.downsampler(x)

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        return self.downsampler.adjoint(y)


class Inpaint(Task):
    """Fill holes; A multiplies by the known-pixel mask (1 = known, 0 = hole).

    Args:
        observation: (1, C, H, W) image with holes.
        mask: (1, 1 or C, H, W) in {0, 1}.
        keep_known: return m * y + (1 - m) * x: known pixels are known (method.md section 5).
    """

    name = "inpaint"

    def __init__(self, observation: torch.Tensor, mask: torch.Tensor, *, keep_known: bool = True) -> None:
        super().__init__(observation, tuple(observation.shape[-2:]))
        if mask.ndim != 4 or mask.shape[0] != 1 or mask.shape[-2:] != observation.shape[-2:] or mask.shape[1] not in (1, observation.shape[1]):
            raise ValueError(
                f"mask has shape {tuple(mask.shape)}, observation is {tuple(observation.shape)}"
            )
        if not bool(mask.any()):
            raise ValueError("mask is all zeros: no pixel is known")
        self.masking = operators.MaskOperator(mask.float())
        self.keep_known = keep_known

    @property
    def mask(self) -> torch.Tensor:
        """The known-pixel mask, (1, 1 or C, H, W)."""
        return self.masking.mask

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.masking(x)

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        return self.masking.adjoint(y)

    def pseudo_noise(self, std: float, *, seed: int) -> torch.Tensor:
        return masked_uniform_pseudo_noise(self.mask, std, channels=self.channels, seed=seed)

    def finalize(self, image: torch.Tensor) -> torch.Tensor:
        if not self.keep_known:
            return image
        return self.mask * self.observation + (1 - self.mask) * image


class RestorePixels(Inpaint):
    """Restore an image from a random subset of its pixels (the 'Barbara 50%' experiment)."""

    name = "restore_pixels"


class Deblur(Task):
    """Deconvolution; A convolves with a known blur kernel."""

    name = "deblur"

    def __init__(self, observation: torch.Tensor, kernel: torch.Tensor) -> None:
        super().__init__(observation, tuple(observation.shape[-2:]))
        self.blur = operators.BlurOperator(kernel)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blur(x)

    def noise_level(self) -> float:
        return observation_noise_level(self.observation)

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        return self.blur.adjoint(y)


class CustomOperator(Task):
    """Any differentiable callable x -> A(x), or a deepinv ``Physics``-like object.

    An object with an ``A`` method (deepinv's ``Physics``) is used through ``A`` and, when it
    has one, ``A_adjoint``: calling a deepinv ``Physics`` applies its noise model too, which a
    DIP fit must not see at every step (the noise is in the observation already).

    Args:
        observation: the measurement y, (1, C', h, w).
        operator: the forward operator; applied to (1, C, H, W) images in [0, 1].
        output_shape: (C, H, W) of the image to reconstruct.
        adjoint: optional A^T.

    Raises:
        ValueError: a bad ``output_shape``, or ``operator`` fails on a mid-grey test image
            (its error is chained), maps it to the wrong shape, returns NaN/inf, or lets no
            gradient through.
        TypeError: ``operator``/``adjoint`` not callable, or ``operator`` returns something
            other than a real floating-point tensor.
    """

    name = "custom"

    def __init__(
        self,
        observation: torch.Tensor,
        operator: Callable[[torch.Tensor], torch.Tensor],
        output_shape: tuple[int, int, int],
        adjoint: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> None:
        output_shape = _output_shape_option(output_shape)
        if not callable(operator):
            raise TypeError(f"operator must be a callable x -> A(x), got {type(operator).__name__}")
        if adjoint is not None and not callable(adjoint):
            raise TypeError(f"adjoint must be a callable y -> A^T(y) or None, got {type(adjoint).__name__}")
        _check_allocation(4 * math.prod(output_shape), f"an output of shape {output_shape}")
        super().__init__(observation, (output_shape[1], output_shape[2]))
        self._image_channels = int(output_shape[0])
        forward = getattr(operator, "A", None)
        if callable(forward):  # deepinv-style: A (noise-free), not __call__ (A + noise)
            if adjoint is None and callable(getattr(operator, "A_adjoint", None)):
                adjoint = operator.A_adjoint
            operator = forward
        self.operator = operator
        self._adjoint = adjoint
        # one call on a mid-grey image: the operator must run, return a real tensor of the
        # observation's shape, stay finite and let gradients through (DIP fits through it)
        test_shape = (1, *output_shape)
        with torch.enable_grad():
            x = torch.full(test_shape, 0.5, device=observation.device, requires_grad=True).clone()
            try:
                probe = operator(x)
            except Exception as error:  # noqa: BLE001 - any failure of the user's callable
                raise ValueError(
                    f"operator raised {type(error).__name__} on a {test_shape} test image: {error}"
                ) from error
        if not isinstance(probe, torch.Tensor):
            raise TypeError(
                f"operator must return a torch tensor, got {type(probe).__name__} for a {test_shape} image"
            )
        if not probe.is_floating_point():
            raise TypeError(f"operator must return a real floating-point tensor, got dtype {probe.dtype}")
        if tuple(probe.shape) != tuple(observation.shape):
            raise ValueError(
                f"operator maps a {tuple(output_shape)} image to {tuple(probe.shape)}, "
                f"but the observation has shape {tuple(observation.shape)}"
            )
        if not bool(torch.isfinite(probe.detach()).all()):
            raise ValueError(f"operator returned NaN or infinite values for a mid-grey {test_shape} image")
        if not probe.requires_grad:
            raise ValueError(
                "operator output carries no gradient to its input: DIP fits the image through A, so "
                "A must be differentiable torch code (no .detach(), numpy round trip or integer cast)"
            )

    @property
    def output_shape(self) -> tuple[int, int, int]:
        return (self._image_channels, *self.output_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.operator(x)

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        if self._adjoint is None:
            return super().adjoint(y)
        return self._adjoint(y)


#: which keyword options each named task takes
TASK_OPTIONS: dict[str, frozenset[str]] = {
    "denoise": frozenset(),
    "jpeg": frozenset({"quality", "quantization", "subsampling"}),
    "super_resolution": frozenset({"factor"}),
    "inpaint": frozenset({"mask", "keep_known", "mask_threshold"}),
    "restore_pixels": frozenset({"mask", "keep", "keep_known", "mask_threshold"}),
    "deblur": frozenset({"kernel", "blur_sigma"}),
    "custom": frozenset({"operator", "output_shape", "adjoint"}),
}


def load_mask(mask: Any, shape_hw: tuple[int, int], threshold: float = 0.5) -> torch.Tensor:
    """A known-pixel mask as (1, 1 or C, H, W) float {0, 1}: a path, array, PIL image or
    tensor; non-binary masks are thresholded at ``threshold`` (1 = known, 0 = hole).

    Raises:
        ValueError: missing, unreadable, wrong shape, no known pixel, or a threshold outside
            [0, 1]. TypeError: a mask or threshold of the wrong type. FileNotFoundError: a
            missing mask file.
    """
    if mask is None:
        raise ValueError("this task needs mask= (path or array; 1 = known pixel, 0 = hole)")
    threshold = io.check_real(threshold, "mask_threshold", "a level in [0, 1]")
    if not 0 <= threshold <= 1:
        raise ValueError(f"mask_threshold must lie in [0, 1], got {threshold}")
    if isinstance(mask, np.ndarray) and (mask.dtype == bool or (mask.dtype == np.uint8 and mask.max(initial=0) <= 1)):
        mask = mask.astype(np.float32)  # {0, 1} integers are a mask, not 8-bit grey levels
    array = io.load_image(mask, name="mask")
    if array.shape[:2] != tuple(shape_hw):
        raise ValueError(f"mask has shape {array.shape[:2]}, image is {tuple(shape_hw)}")
    binary = (array >= threshold).astype(np.float32)
    if binary.shape[2] > 1 and np.all(binary == binary[:, :, :1]):
        binary = binary[:, :, :1]
    if not binary.any():
        raise ValueError("mask is all zeros: no pixel is known (1 = known, 0 = hole)")
    return io.image_to_tensor(binary)


def build_task(task: str, observation: np.ndarray, *, seed: int = 0, **options: Any) -> Task:
    """Make a :class:`Task` from a task name, the observation (HxWxC float) and options.

    Raises:
        ValueError: unknown task, an option that the task does not take, or a bad option
            value (:class:`oscfast.TooLargeError`, a ValueError, when the task's buffers
            would not fit in memory).
        TypeError: an option of the wrong type (e.g. a string for a number).
    """
    if task not in TASK_OPTIONS:
        raise ValueError(f"unknown task {task!r}; expected one of {list(TASK_OPTIONS)}")
    given = {key for key, value in options.items() if value is not None}
    unknown = given - TASK_OPTIONS[task]
    if unknown:
        valid = sorted(TASK_OPTIONS[task]) or "none"
        raise ValueError(f"option(s) {sorted(unknown)} do not apply to task {task!r}; valid: {valid}")
    y = io.image_to_tensor(observation)
    threshold = 0.5 if options.get("mask_threshold") is None else options["mask_threshold"]
    threshold = io.check_real(threshold, "mask_threshold", "a level in [0, 1]")
    if not 0 <= threshold <= 1:
        raise ValueError(f"mask_threshold must lie in [0, 1], got {threshold}")
    if task == "denoise":
        return Denoise(y)
    if task == "jpeg":
        return JPEG(y, tables=options.get("quantization"), subsampling=options.get("subsampling"), quality=options.get("quality"))
    if task == "super_resolution":
        factor = options.get("factor")
        return SuperResolution(y, factor=4 if factor is None else factor)
    if task in ("inpaint", "restore_pixels"):
        keep_known = options.get("keep_known")
        if keep_known is not None and not isinstance(keep_known, (bool, np.bool_)):
            raise TypeError(f"keep_known must be True or False, got {type(keep_known).__name__} {keep_known!r}")
        keep_known = True if keep_known is None else bool(keep_known)
        if task == "restore_pixels" and options.get("mask") is None:
            from oscfast.degradations import random_pixel_mask

            keep = 0.5 if options.get("keep") is None else options["keep"]
            keep = io.check_real(keep, "keep", "the fraction of known pixels, in (0, 1]")
            if not 0 < keep <= 1:
                raise ValueError(f"keep must lie in (0, 1], got {keep}")
            mask = io.image_to_tensor(random_pixel_mask(observation.shape[:2], keep=keep, seed=seed))
            y = y * mask  # the pixels the mask drops are not observed
        elif options.get("keep") is not None:
            raise ValueError("give either mask= or keep= for task 'restore_pixels', not both")
        else:
            mask = load_mask(options.get("mask"), observation.shape[:2], threshold)
        cls = Inpaint if task == "inpaint" else RestorePixels
        return cls(y, mask, keep_known=keep_known)
    if task == "deblur":
        from oscfast.degradations import _checked_gaussian_kernel, _checked_kernel

        kernel, sigma = options.get("kernel"), options.get("blur_sigma")
        if (kernel is None) == (sigma is None):
            raise ValueError("task 'deblur' needs exactly one of kernel= (2-D array) or blur_sigma=")
        shape_hw = (int(observation.shape[0]), int(observation.shape[1]))
        if kernel is None:
            kernel64 = _checked_gaussian_kernel(sigma, shape_hw, "blur_sigma")
        else:
            kernel64 = _checked_kernel(kernel, shape_hw, "kernel")
        total = float(kernel64.sum())
        if not (math.isfinite(total) and total > 0):
            raise ValueError(f"kernel must have a positive finite sum (it is normalised to 1), got sum {total:.6g}")
        kernel_t = torch.as_tensor((kernel64 / total).astype(np.float32))
        return Deblur(y, kernel_t)
    operator: Callable[[torch.Tensor], torch.Tensor] | None = options.get("operator")
    if operator is None or not callable(operator):
        raise ValueError("task 'custom' needs operator= (a callable x -> A(x) on 1xCxHxW tensors)")
    output_shape = options.get("output_shape")
    if output_shape is None:
        output_shape = (observation.shape[2], *observation.shape[:2])
    return CustomOperator(y, operator, _output_shape_option(output_shape), adjoint=options.get("adjoint"))


def _integer_option(value: Any, name: str, low: int) -> int:
    """A task option that must be a whole number >= ``low`` (4 and 4.0 both pass)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be an integer >= {low}, got {type(value).__name__} {value!r}")
    if isinstance(value, numbers.Integral):
        number = int(value)
    else:
        real = float(value)
        if not (math.isfinite(real) and real.is_integer()):
            raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
        number = int(real)
    if number < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    return number


def _output_shape_option(output_shape: Any) -> tuple[int, int, int]:
    """``output_shape`` as (C, H, W) positive integers."""
    if isinstance(output_shape, (str, bytes)) or not isinstance(output_shape, (tuple, list, torch.Size, np.ndarray)):
        raise TypeError(f"output_shape must be a tuple (C, H, W) of positive integers, got {output_shape!r}")
    values = list(output_shape.tolist() if isinstance(output_shape, np.ndarray) else output_shape)
    if len(values) != 3:
        raise ValueError(f"output_shape must be a tuple (C, H, W) of 3 positive integers, got {output_shape!r}")
    try:
        return tuple(_integer_option(v, f"output_shape {name}", 1) for v, name in zip(values, "CHW"))  # type: ignore[return-value]
    except TypeError as error:
        raise TypeError(f"output_shape must be a tuple (C, H, W) of positive integers, got {output_shape!r}: {error}") from None
    except ValueError as error:
        raise ValueError(f"output_shape must be a tuple (C, H, W) of positive integers, got {output_shape!r}: {error}") from None


def _check_allocation(nbytes: int, what: str) -> None:
    """Raise :class:`oscfast.TooLargeError` before allocating ``nbytes`` on the host when they
    exceed the free memory."""
    if nbytes <= 1 << 28:
        return
    from oscfast.memory import TooLargeError, available_bytes

    free = available_bytes(torch.device("cpu"))
    if nbytes > 0.9 * free:
        raise TooLargeError(
            f"{what} is too large for memory: it needs about {nbytes / 2**30:.1f} GiB, "
            f"{free / 2**30:.1f} GiB are free"
        )
