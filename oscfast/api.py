"""The public entry point: ``restore(image, task)`` and its result."""
from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from oscfast import io
from oscfast.config import DIPConfig, StopConfig
from oscfast.engine import EngineOptions, RunRecord, run_dip
from oscfast.presets import PRESETS, get_preset
from oscfast.tasks import (
    JPEG,
    CustomOperator,
    Deblur,
    Denoise,
    Inpaint,
    RestorePixels,
    SuperResolution,
    Task,
)

__all__ = ["restore", "Restoration", "History", "TASKS", "build_task"]

logger = logging.getLogger(__name__)

#: names accepted by ``restore(..., task=...)``
TASKS = tuple(PRESETS)
#: the smallest image side the default networks handle (5 stride-2 scales)
MIN_SIDE = 32
#: which keyword options each named task takes
_TASK_OPTIONS: dict[str, set[str]] = {
    "denoise": set(),
    "jpeg": set(),
    "super_resolution": {"factor"},
    "inpaint": {"mask", "keep_known", "mask_threshold"},
    "restore_pixels": {"mask", "keep", "keep_known", "mask_threshold"},
    "deblur": {"kernel", "blur_sigma"},
    "custom": {"operator", "output_shape", "adjoint"},
}

OutputChoice = Literal["auto", "ema", "raw"]


@dataclass
class History:
    """Per-iteration curves of a run (index = iteration).

    Attributes:
        p: P_t, the pseudo-noise component (method.md section 3); empty for plain DIP.
        curvature: chord curvature of the smoothed P curve, NaN where undefined.
        loss: the training loss.
        psnr_raw, psnr_ema: PSNR of the raw and of the averaged output (only with reference=).
    """

    p: np.ndarray
    curvature: np.ndarray
    loss: np.ndarray
    psnr_raw: np.ndarray | None = None
    psnr_ema: np.ndarray | None = None
    risk: np.ndarray | None = None
    risk_ema: np.ndarray | None = None
    p_ema: np.ndarray | None = None
    loss_ema: np.ndarray | None = None

    def as_dict(self) -> dict[str, np.ndarray]:
        """The curves that exist, by name."""
        return {k: v for k, v in self.__dict__.items() if v is not None}


@dataclass
class Restoration:
    """The result of :func:`restore`.

    Attributes:
        image: restored image, float32 HxWxC in [0, 1] (C = 1 for grayscale).
        stop_iteration: the iteration whose output was returned.
        iterations_run: how many iterations ran.
        history: per-iteration curves.
        task: the task name.
        osc_iteration: the iteration the OSC rule chose (None if it found no knee).
        osc_stop_iteration: the iteration at which the online rule stopped or would have
            stopped (None if it never fired).
        stop_reason: ``"knee"`` (the online rule fired) or ``"cap"``.
        output: which image was returned: ``"ema"`` (exponential average) or ``"raw"``.
        raw_image, ema_image: both images at ``stop_iteration`` (before ``finalize``).
        last_image: the raw output of the last iteration run.
        psnr: PSNR of ``image`` against ``reference`` when one was given.
        seconds: wall time of the loop.
        device: where it ran.
        config, stop_config: the configurations used.
    """

    image: np.ndarray
    stop_iteration: int
    iterations_run: int
    history: History
    task: str
    osc_iteration: int | None
    osc_stop_iteration: int | None
    stop_reason: str
    output: str
    raw_image: np.ndarray
    ema_image: np.ndarray
    last_image: np.ndarray
    psnr: float | None
    seconds: float
    device: str
    config: DIPConfig
    stop_config: StopConfig
    half_window: int | None = None
    risk_weight: float | None = None
    task_object: Task | None = field(default=None, repr=False)
    engine_options: EngineOptions | None = field(default=None, repr=False)

    def save(self, path: str | Path, *, bit_depth: int = 8) -> Path:
        """Write the restored image (PNG/JPEG/TIFF by suffix)."""
        return io.save_image(path, self.image, bit_depth=bit_depth)

    def plot(self, path: str | Path) -> Path:
        """Plot P_t, its curvature and (with a reference) the PSNRs, with the stop marked."""
        from oscfast.plotting import plot_history

        return plot_history(self, path)

    def export(self, path: str | Path, **options: Any) -> Path:
        """Export the fitted generator with its fixed input (ONNX by default) so that running
        it reproduces the raw image of ``stop_iteration``; see :mod:`oscfast.export`."""
        from oscfast.export import export_result

        return export_result(self, path, **options)

    @property
    def seconds_per_iteration(self) -> float:
        """Mean wall time per iteration."""
        return self.seconds / max(1, self.iterations_run)


def _resolve_device(device: str | torch.device) -> torch.device:
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError as error:
        raise ValueError(f"unknown device {device!r}; expected 'auto', 'cpu' or 'cuda'") from error
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was asked for but no CUDA device is available")
    return resolved


def _load_mask(mask: Any, shape_hw: tuple[int, int], threshold: float) -> torch.Tensor:
    """Mask as (1, 1 or C, H, W) float {0, 1}; non-binary masks are thresholded at ``threshold``."""
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
    """Make a :class:`~oscfast.tasks.Task` from a task name, the observation and options.

    Raises:
        ValueError: unknown task, an option that the task does not take, or a bad option.
    """
    if task not in _TASK_OPTIONS:
        raise ValueError(f"unknown task {task!r}; expected one of {list(_TASK_OPTIONS)}")
    given = {key for key, value in options.items() if value is not None}
    unknown = given - _TASK_OPTIONS[task]
    if unknown:
        valid = sorted(_TASK_OPTIONS[task]) or "none"
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
            mask_array = random_pixel_mask(observation.shape[:2], keep=keep, seed=seed)
            mask = io.image_to_tensor(mask_array)
            y = y * mask  # the pixels the mask drops are not observed
        elif options.get("keep") is not None:
            raise ValueError("give either mask= or keep= for task 'restore_pixels', not both")
        else:
            mask = _load_mask(options.get("mask"), observation.shape[:2], threshold)
        cls = Inpaint if task == "inpaint" else RestorePixels
        return cls(y, mask, keep_known=keep_known)
    if task == "deblur":
        from oscfast.operators import gaussian_kernel

        kernel, sigma = options.get("kernel"), options.get("blur_sigma")
        if (kernel is None) == (sigma is None):
            raise ValueError("task 'deblur' needs exactly one of kernel= (2-D array) or blur_sigma=")
        if kernel is None:
            if not sigma > 0:
                raise ValueError(f"blur_sigma must be > 0, got {sigma}")
            kernel = gaussian_kernel(float(sigma))
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


def restore(
    image: Any,
    task: str | Task = "denoise",
    *,
    reference: Any = None,
    stop: Literal["osc", "never"] = "osc",
    max_iterations: int | None = None,
    preset: str | None = None,
    net: Literal["skip", "unet", "resnet"] | None = None,
    seed: int = 0,
    device: str | torch.device = "auto",
    precision: Literal["fp32", "bf16"] = "fp32",
    progress: bool = True,
    pseudo_noise_std: float | None = None,
    rule: Literal["knee", "risk", "paper"] | None = None,
    noise_level: float | None = None,
    output: OutputChoice = "auto",
    config: DIPConfig | None = None,
    stop_config: StopConfig | None = None,
    mask: Any = None,
    mask_threshold: float | None = None,
    keep: float | None = None,
    keep_known: bool | None = None,
    factor: int | None = None,
    kernel: Any = None,
    blur_sigma: float | None = None,
    operator: Callable[[torch.Tensor], torch.Tensor] | None = None,
    output_shape: tuple[int, int, int] | None = None,
    adjoint: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> Restoration:
    """Restore one damaged image with Deep Image Prior and stop automatically (OSC).

    Args:
        image: the observation: a path (PNG/JPEG/TIFF, 8 or 16 bit), a PIL image, a numpy
            array (HxW or HxWxC; uint8, uint16 or float in [0, 1]) or a torch tensor
            (CHW or 1xCxHxW). RGBA: the alpha channel is dropped.
        task: ``"denoise"``, ``"jpeg"``, ``"super_resolution"``, ``"inpaint"``,
            ``"restore_pixels"``, ``"deblur"``, ``"custom"`` or a :class:`Task` instance.
        reference: clean image (same kinds as ``image``) for per-iteration PSNR.
        stop: ``"osc"`` stops when the rule fires; ``"never"`` runs to the cap and still
            returns the image the rule chose (for evaluation).
        max_iterations: iteration cap (default: the preset's published count).
        preset: a published configuration of the task (see ``oscfast.presets``).
        net: swap the preset's generator for the reference repository's ``"unet"`` or
            ``"resnet"`` (same input); ``"skip"`` or None keeps the preset's.
        seed: seeds everything; CPU runs are deterministic for a given seed.
        device: ``"auto"``, ``"cpu"`` or ``"cuda"``.
        precision: ``"fp32"`` or ``"bf16"`` (autocast of the network).
        progress: show a progress bar.
        pseudo_noise_std: sigma_n of the pseudo-noise (1/25); 0 runs plain DIP to the cap.
        rule: the stop rule (see :class:`~oscfast.config.StopConfig`); default from stop_config.
        noise_level: std of the measurement noise for rule "risk" (default: estimated for
            denoise/jpeg/deblur, 0 for exact observations).
        output: ``"ema"``, ``"raw"`` or ``"auto"`` (rule "risk": the image with the lower
            estimated risk; otherwise EMA for denoise/jpeg, raw for the other tasks).
        config, stop_config: full configurations, overriding the preset.
        mask, mask_threshold, keep, keep_known, factor, kernel, blur_sigma, operator,
            output_shape, adjoint: task options (see the README's task table).

    Returns:
        A :class:`Restoration`.

    Raises:
        ValueError, TypeError: bad input, naming the problem.

    Example:
        >>> result = restore("noisy.png", task="denoise")  # doctest: +SKIP
        >>> result.save("restored.png")  # doctest: +SKIP
    """
    if stop not in ("osc", "never"):
        raise ValueError(f"unknown stop {stop!r}; expected 'osc' or 'never'")
    if output not in ("auto", "ema", "raw"):
        raise ValueError(f"unknown output {output!r}; expected 'auto', 'ema' or 'raw'")
    if max_iterations is not None and (int(max_iterations) != max_iterations or max_iterations < 1):
        raise ValueError(f"max_iterations must be a positive integer, got {max_iterations}")
    resolved_device = _resolve_device(device)
    observation = io.load_image(image, name="image")
    task_options = dict(
        mask=mask, mask_threshold=mask_threshold, keep=keep, keep_known=keep_known, factor=factor,
        kernel=kernel, blur_sigma=blur_sigma, operator=operator, output_shape=output_shape, adjoint=adjoint,
    )
    if isinstance(task, Task):
        if any(value is not None for value in task_options.values()):
            raise ValueError("task options (mask=, factor=, ...) go into the Task object, not restore()")
        task_object, task_name = task, task.name
    elif isinstance(task, str):
        task_object = build_task(task, observation, seed=seed, **task_options)
        task_name = task
    else:
        raise TypeError(f"task must be a task name or a Task, got {type(task).__name__}")
    if task_name not in ("super_resolution", "custom"):  # these check their (larger) output only
        io.check_min_size(observation, MIN_SIDE, name="image")
    _, out_h, out_w = task_object.output_shape
    if min(out_h, out_w) < MIN_SIDE:
        raise ValueError(f"the output would be {out_h}x{out_w} px; the smallest side must be at least {MIN_SIDE} px")

    preset_name = task_name if task_name in PRESETS else "custom"
    dip = config or get_preset(preset_name, preset, factor=getattr(task_object, "factor", None))
    if max_iterations is not None:
        dip = replace(dip, max_iterations=int(max_iterations))
    if net is not None and net != dip.net.kind:
        if net not in ("skip", "unet", "resnet"):
            raise ValueError(f"unknown net {net!r}; expected 'skip', 'unet' or 'resnet'")
        from oscfast.models import NetSpec

        dip = replace(dip, net=NetSpec(kind=net, input_channels=dip.net.input_channels))
    stop_settings = stop_config or StopConfig()
    if pseudo_noise_std is not None:
        stop_settings = replace(stop_settings, pseudo_noise_std=float(pseudo_noise_std))
    if rule is not None:
        stop_settings = replace(stop_settings, rule=rule)
    if noise_level is not None:
        if not noise_level >= 0:
            raise ValueError(f"noise_level must be >= 0, got {noise_level}")
        stop_settings = replace(stop_settings, noise_level=float(noise_level))

    reference_tensor = None
    if reference is not None:
        reference_array = io.load_image(reference, name="reference")
        channels, out_h, out_w = task_object.output_shape
        if reference_array.shape != (out_h, out_w, channels):
            raise ValueError(
                f"reference has shape {reference_array.shape}, the restored image will be {(out_h, out_w, channels)}"
            )
        reference_tensor = io.image_to_tensor(reference_array)

    options = EngineOptions(device=resolved_device, precision=precision, seed=seed, progress=progress)
    record = run_dip(task_object, dip, stop_settings, stop_mode=stop, reference=reference_tensor, options=options)
    result = _to_restoration(record, task_object, task_name, output, reference_tensor, dip, stop_settings, resolved_device)
    result.engine_options = options
    return result


def _to_restoration(
    record: RunRecord,
    task: Task,
    task_name: str,
    output: OutputChoice,
    reference: torch.Tensor | None,
    config: DIPConfig,
    stop_config: StopConfig,
    device: torch.device,
) -> Restoration:
    if output == "auto":
        kind = record.best_output or task.default_output
    else:
        kind = output
    chosen = record.raw_image if kind == "raw" else record.ema_image
    with torch.no_grad():
        final = task.to("cpu").finalize(chosen).clamp_(0, 1)
    image = io.tensor_to_image(final)
    score = None
    if reference is not None:
        from oscfast.metrics import psnr

        score = psnr(io.tensor_to_image(reference), image)
    stop_iteration = record.chosen_iteration if record.chosen_iteration is not None else record.iterations_run - 1
    return Restoration(
        image=image,
        stop_iteration=stop_iteration,
        iterations_run=record.iterations_run,
        history=History(
            p=record.p, curvature=record.curvature, loss=record.loss,
            psnr_raw=record.psnr_raw, psnr_ema=record.psnr_ema, risk=record.risk,
            risk_ema=record.risk_ema, p_ema=record.p_ema, loss_ema=record.loss_ema,
        ),
        task=task_name,
        osc_iteration=record.chosen_iteration,
        osc_stop_iteration=record.osc_stop_iteration,
        stop_reason=record.stop_reason,
        output=kind,
        raw_image=io.tensor_to_image(record.raw_image),
        ema_image=io.tensor_to_image(record.ema_image),
        last_image=io.tensor_to_image(record.last_image),
        psnr=score,
        seconds=record.seconds,
        device=str(device),
        config=config,
        stop_config=stop_config,
        half_window=record.half_window,
        risk_weight=record.risk_weight,
        task_object=task,
    )
