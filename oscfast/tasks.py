"""Inverse problems as objects with a forward operator (method.md section 1).

The engine only calls ``task.forward(x)``, ``task.pseudo_noise(std, seed)``, ``task.loss``
and ``task.finalize``: a new task is a new subclass, never a change to the engine.
"""
from __future__ import annotations

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


def estimate_noise_level(observation: torch.Tensor) -> float:
    """Gaussian noise std of an image: Donoho's robust estimator, the median absolute value
    of the finest diagonal Haar wavelet coefficients / 0.6745, averaged over channels."""
    image = observation.detach().cpu().double()[0]
    height, width = (image.shape[1] // 2) * 2, (image.shape[2] // 2) * 2
    x = image[:, :height, :width]
    diagonal = (x[:, 0::2, 0::2] - x[:, 0::2, 1::2] - x[:, 1::2, 0::2] + x[:, 1::2, 1::2]) / 2
    return float(diagonal.abs().flatten(1).median(dim=1).values.mean() / 0.6745)


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
        return estimate_noise_level(self.observation)


class JPEG(Denoise):
    """Blind JPEG-artefact removal: A is the identity, the target is the JPEG image."""

    name = "jpeg"


class SuperResolution(Task):
    """x``factor`` super-resolution; A is the Lanczos-2 half-phase downsampler
    (reference-configs.md section 4)."""

    name = "super_resolution"

    def __init__(self, observation: torch.Tensor, factor: int = 4) -> None:
        if int(factor) != factor or factor < 2:
            raise ValueError(f"factor must be an integer >= 2, got {factor}")
        factor = int(factor)
        height, width = observation.shape[-2:]
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
        return estimate_noise_level(self.observation)

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        return self.blur.adjoint(y)


class CustomOperator(Task):
    """Any differentiable callable x -> A(x) (a deepinv ``Physics`` object works too).

    Args:
        observation: the measurement y, (1, C', h, w).
        operator: the forward operator; applied to (1, C, H, W) images in [0, 1].
        output_shape: (C, H, W) of the image to reconstruct.
        adjoint: optional A^T.
    """

    name = "custom"

    def __init__(
        self,
        observation: torch.Tensor,
        operator: Callable[[torch.Tensor], torch.Tensor],
        output_shape: tuple[int, int, int],
        adjoint: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> None:
        super().__init__(observation, (output_shape[1], output_shape[2]))
        self._image_channels = int(output_shape[0])
        self.operator = operator
        self._adjoint = adjoint
        probe = operator(torch.zeros((1, *output_shape), device=observation.device))
        if tuple(probe.shape) != tuple(observation.shape):
            raise ValueError(
                f"operator maps a {tuple(output_shape)} image to {tuple(probe.shape)}, "
                f"but the observation has shape {tuple(observation.shape)}"
            )

    @property
    def output_shape(self) -> tuple[int, int, int]:
        return (self._image_channels, *self.output_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.operator(x)

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        if self._adjoint is None:
            adjoint = getattr(self.operator, "A_adjoint", None)
            if adjoint is None:
                return super().adjoint(y)
            return adjoint(y)
        return self._adjoint(y)


#: which keyword options each named task takes
TASK_OPTIONS: dict[str, frozenset[str]] = {
    "denoise": frozenset(),
    "jpeg": frozenset(),
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
        ValueError: missing, unreadable, wrong shape, or no known pixel.
    """
    if mask is None:
        raise ValueError("this task needs mask= (path or array; 1 = known pixel, 0 = hole)")
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
        ValueError: unknown task, an option that the task does not take, or a bad option.
    """
    if task not in TASK_OPTIONS:
        raise ValueError(f"unknown task {task!r}; expected one of {list(TASK_OPTIONS)}")
    given = {key for key, value in options.items() if value is not None}
    unknown = given - TASK_OPTIONS[task]
    if unknown:
        valid = sorted(TASK_OPTIONS[task]) or "none"
        raise ValueError(f"option(s) {sorted(unknown)} do not apply to task {task!r}; valid: {valid}")
    y = io.image_to_tensor(observation)
    threshold = 0.5 if options.get("mask_threshold") is None else float(options["mask_threshold"])
    if not 0 <= threshold <= 1:
        raise ValueError(f"mask_threshold must lie in [0, 1], got {threshold}")
    if task == "denoise":
        return Denoise(y)
    if task == "jpeg":
        return JPEG(y)
    if task == "super_resolution":
        return SuperResolution(y, factor=options.get("factor") or 4)
    if task in ("inpaint", "restore_pixels"):
        keep_known = options.get("keep_known")
        keep_known = True if keep_known is None else bool(keep_known)
        if task == "restore_pixels" and options.get("mask") is None:
            from oscfast.degradations import random_pixel_mask

            keep = 0.5 if options.get("keep") is None else float(options["keep"])
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
        kernel, sigma = options.get("kernel"), options.get("blur_sigma")
        if (kernel is None) == (sigma is None):
            raise ValueError("task 'deblur' needs exactly one of kernel= (2-D array) or blur_sigma=")
        if kernel is None:
            if not sigma > 0:
                raise ValueError(f"blur_sigma must be > 0, got {sigma}")
            kernel = operators.gaussian_kernel(float(sigma))
        kernel_t = torch.as_tensor(np.asarray(kernel, dtype=np.float32))
        if kernel_t.ndim != 2 or not torch.isfinite(kernel_t).all() or float(kernel_t.sum()) <= 0:
            raise ValueError(f"kernel must be a finite 2-D array with a positive sum, got shape {tuple(kernel_t.shape)}")
        return Deblur(y, kernel_t / kernel_t.sum())
    operator: Callable[[torch.Tensor], torch.Tensor] | None = options.get("operator")
    if operator is None or not callable(operator):
        raise ValueError("task 'custom' needs operator= (a callable x -> A(x) on 1xCxHxW tensors)")
    output_shape = options.get("output_shape")
    if output_shape is None:
        output_shape = (observation.shape[2], *observation.shape[:2])
    return CustomOperator(y, operator, tuple(int(v) for v in output_shape), adjoint=options.get("adjoint"))
