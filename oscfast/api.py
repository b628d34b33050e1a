"""The public entry point: ``restore(image, task)`` and its result."""
from __future__ import annotations

import logging
import math
import numbers
import threading
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from oscfast import io
from oscfast.config import DIPConfig, ProbeName, RuleName, StopConfig
from oscfast.checkpoint import Checkpoint, fingerprint_tensor
from oscfast.engine import EngineOptions, RunRecord, SyncInfo, run_fits
from oscfast.memory import check_memory, estimate_run_bytes
from oscfast.metrics import psnr_torch
from oscfast.plan import RunPlan, plan_restoration
from oscfast.presets import PRESETS, get_preset
from oscfast.tasks import TASK_OPTIONS, Task, build_task

__all__ = ["restore", "Restoration", "History", "Progress", "TASKS", "build_task"]

logger = logging.getLogger(__name__)

#: names accepted by ``restore(..., task=...)``
TASKS = tuple(PRESETS)
#: the smallest image side the default networks handle (5 stride-2 scales)
MIN_SIDE = 32

OutputChoice = Literal["auto", "ema", "raw"]


@dataclass
class History:
    """Per-iteration curves of a run (index = iteration).

    Attributes:
        loss, loss_ema: loss of the returned fit's raw and averaged output.
        p, p_ema: the probe's P as the rule reads it (inline: P_t of the returned fit; twin:
            P_twin = P_B - P_A, method.md section 8); None without a probe.
        psnr_raw, psnr_ema: PSNR of the returned fit's raw and averaged output after the
            task's final step (known pixels put back), only with ``reference=``.
        scores: the rule's own curves by label (e.g. its risk or curvature).
        fits: every recorded signal of every fit, name -> (fits, iterations); for the twin,
            row 0 is the returned fit (plain DIP) and row 1 the fit on y + n.
    """

    loss: np.ndarray
    loss_ema: np.ndarray | None = None
    p: np.ndarray | None = None
    p_ema: np.ndarray | None = None
    psnr_raw: np.ndarray | None = None
    psnr_ema: np.ndarray | None = None
    scores: dict[str, np.ndarray] = field(default_factory=dict)
    fits: dict[str, np.ndarray] = field(default_factory=dict, repr=False)

    def as_dict(self) -> dict[str, np.ndarray]:
        """The curves that exist, by name (scores prefixed ``score:``)."""
        curves = {k: v for k, v in self.__dict__.items() if isinstance(v, np.ndarray)}
        curves.update({f"score:{label}": values for label, values in self.scores.items()})
        return curves


@dataclass
class Restoration:
    """The result of :func:`restore`.

    Attributes:
        image: restored image, float32 HxWxC in [0, 1] (C = 1 for grayscale).
        stop_iteration: the iteration whose output was returned.
        iterations_run: how many iterations ran.
        history: per-iteration curves.
        task: the task name.
        rule: the stop rule that decided.
        probe: ``"twin"``, ``"inline"`` or ``"none"``.
        stop_reason: the rule's name when it fired, ``"cap"`` when the run reached its cap,
            ``"interrupted"`` when it was cancelled or interrupted (Ctrl-C) first.
        output: which image was returned: ``"ema"`` (exponential average) or ``"raw"``.
        rule_iteration: the iteration the rule chose (None if it chose nothing).
        rule_stop_iteration: iterations seen when the rule fired (None if it never did).
        raw_image, ema_image: both images at ``stop_iteration`` (before ``finalize``).
        last_image: the raw output of the returned fit at the last iteration run.
        psnr: PSNR of ``image`` against ``reference`` when one was given.
        estimated_psnr: the rule's own estimate of the PSNR of ``image`` where the risk is an
            unbiased estimate of the error (twin probe, white noise of known or estimated level:
            denoising; measurement space for a blur); None elsewhere.
        noise_level: the measurement noise level the risk rule used (None for other rules).
        seconds: wall time of the loop.
        device: where it ran.
        config, stop_config: the configurations used.
    """

    image: np.ndarray
    stop_iteration: int
    iterations_run: int
    history: History
    task: str
    rule: str
    probe: str
    stop_reason: str
    output: str
    rule_iteration: int | None
    rule_stop_iteration: int | None
    raw_image: np.ndarray
    ema_image: np.ndarray
    last_image: np.ndarray
    psnr: float | None
    estimated_psnr: float | None
    noise_level: float | None
    seconds: float
    device: str
    config: DIPConfig
    stop_config: StopConfig
    task_object: Task | None = field(default=None, repr=False)
    engine_options: EngineOptions | None = field(default=None, repr=False)
    seed: int = 0

    def save(self, path: str | Path, *, bit_depth: int = 8) -> Path:
        """Write the restored image (PNG/JPEG/TIFF by suffix)."""
        return io.save_image(path, self.image, bit_depth=bit_depth)

    def plot(self, path: str | Path) -> Path:
        """Plot the rule's score, P, the loss and (with a reference) the PSNRs, with the
        returned iteration and the rule's stop marked."""
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


def resolve_device(device: str | torch.device) -> torch.device:
    """``"auto"`` -> CUDA when available, else CPU; checks that a named CUDA device exists."""
    if isinstance(device, torch.device):
        resolved = device
    elif device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        try:
            resolved = torch.device(device)
        except RuntimeError as error:
            raise ValueError(f"unknown device {device!r}; expected 'auto', 'cpu', 'cuda' or 'cuda:N'") from error
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {str(resolved)!r} was asked for but no CUDA device is available")
        if resolved.index is not None and resolved.index >= torch.cuda.device_count():
            raise ValueError(f"device {str(resolved)!r} does not exist: {torch.cuda.device_count()} CUDA device(s)")
    elif resolved.type != "cpu":
        raise ValueError(f"unsupported device {str(resolved)!r}; expected 'cpu' or 'cuda'")
    return resolved


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
    probe: ProbeName | None = None,
    pseudo_noise_std: float | None = None,
    rule: RuleName | None = None,
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
    quality: int | None = None,
    callback: Callable[[Progress], None] | None = None,
    cancel: Callable[[], bool] | threading.Event | None = None,
    checkpoint: str | Path | None = None,
    checkpoint_every: float = 60.0,
    resume: str | Path | None = None,
) -> Restoration:
    """Restore one damaged image with Deep Image Prior and stop automatically.

    Args:
        image: the observation: a path (PNG/JPEG/TIFF, 8 or 16 bit), a PIL image, a numpy
            array (HxW or HxWxC; uint8, uint16 or float in [0, 1]) or a torch tensor
            (CHW or 1xCxHxW). RGBA: the alpha channel is dropped.
        task: ``"denoise"``, ``"jpeg"``, ``"super_resolution"``, ``"inpaint"``,
            ``"restore_pixels"``, ``"deblur"``, ``"custom"`` or a :class:`Task` instance.
        reference: clean image (same kinds as ``image``) for per-iteration PSNR.
        stop: ``"osc"`` stops when the rule fires; ``"never"`` runs to the cap and still
            returns the image the rule chose (for evaluation; the choice is the same).
        max_iterations: iteration cap (default: the preset's published count).
        preset: a published configuration of the task (see ``oscfast.presets``).
        net: swap the preset's generator for the reference repository's ``"unet"`` or
            ``"resnet"`` (same input); ``"skip"`` or None keeps the preset's.
        seed: seeds everything; CPU runs are deterministic for a given seed.
        device: ``"auto"``, ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
        precision: ``"fp32"`` or ``"bf16"`` (autocast of the network).
        progress: show a progress bar.
        probe: ``"twin"`` (the pseudo-noise goes into a second fit; the returned image never
            sees it), ``"inline"`` (the paper: into the returned fit) or ``"none"``; None: the
            task's default (README, "Stopping").
        pseudo_noise_std: sigma_n of the pseudo-noise (1/25); 0 runs plain DIP to the cap.
        rule: the stop rule (see :class:`~oscfast.config.StopConfig`); None: the task's default.
        noise_level: std of the measurement noise for rule "risk" (default: estimated for
            denoise/jpeg/deblur, 0 for exact observations).
        output: ``"ema"``, ``"raw"`` or ``"auto"`` (the rule's choice: the risk rule scores both
            images; other rules return the task's default, EMA for denoise/jpeg).
        config, stop_config: full configurations, overriding the preset.
        mask, mask_threshold, keep, keep_known, factor, kernel, blur_sigma, operator,
            output_shape, adjoint: task options (see the README's task table).
        quality: task "jpeg": the JPEG quality, when the image is not the JPEG file itself (a
            JPEG file's own quantisation tables are read from it); it sets the error level of the
            risk rule. Without either the rule runs to the cap.
        callback: called at each sync (every ``sync_every`` iterations) with a
            :class:`Progress` (what the progress bar shows), for an application's own display.
        cancel: a callable returning True, or a ``threading.Event``: once it says so, the run
            ends at the next sync and returns the rule's choice so far
            (``stop_reason="interrupted"``). Ctrl-C (KeyboardInterrupt) does the same.
        checkpoint: write the run's whole state to this file (atomically) every
            ``checkpoint_every`` seconds, and at the end.
        resume: continue the run saved in this checkpoint (refused if it was made with another
            configuration, image or seed); on a CPU the result is bit-identical to an
            uninterrupted run.

    Returns:
        A :class:`Restoration`.

    Raises:
        ValueError, TypeError: bad input, naming the problem (FileNotFoundError for a missing
            file; :class:`oscfast.TooLargeError`, a ValueError, for a run that cannot fit).

    Example:
        >>> result = restore("noisy.png", task="denoise")  # doctest: +SKIP
        >>> result.save("restored.png")  # doctest: +SKIP
    """
    if stop not in ("osc", "never"):
        raise ValueError(f"unknown stop {stop!r}; expected 'osc' or 'never'")
    if output not in ("auto", "ema", "raw"):
        raise ValueError(f"unknown output {output!r}; expected 'auto', 'ema' or 'raw'")
    if max_iterations is not None:
        _check_whole_number(max_iterations, "max_iterations", "a positive integer")
        if not 1 <= max_iterations <= MAX_ITERATIONS:
            raise ValueError(f"max_iterations must be an integer in [1, {MAX_ITERATIONS}], got {max_iterations!r}")
    if config is not None and isinstance(config, DIPConfig) and config.max_iterations > MAX_ITERATIONS:
        raise ValueError(f"config.max_iterations must be at most {MAX_ITERATIONS}, got {config.max_iterations!r}")
    _check_whole_number(seed, "seed", f"an integer in [0, {MAX_SEED}]")
    if not 0 <= seed <= MAX_SEED:
        raise ValueError(f"seed must be an integer in [0, {MAX_SEED}], got {seed!r}")
    seed = int(seed)
    for label, value in (("pseudo_noise_std", pseudo_noise_std), ("noise_level", noise_level)):
        if value is None:
            continue
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
            raise TypeError(f"{label} must be a number >= 0, got {type(value).__name__} {value!r}")
        if not (math.isfinite(value) and 0 <= value <= MAX_NOISE_STD):
            raise ValueError(
                f"{label} must be a number in [0, {MAX_NOISE_STD:g}] (a std on the [0, 1] image scale), got {value!r}"
            )
    if not isinstance(device, (str, torch.device)):
        raise TypeError(f"device must be a string such as 'cpu' or 'cuda:0' or a torch.device, got {type(device).__name__} {device!r}")
    if config is not None and not isinstance(config, DIPConfig):
        raise TypeError(f"config must be a DIPConfig, got {type(config).__name__}")
    if stop_config is not None and not isinstance(stop_config, StopConfig):
        raise TypeError(f"stop_config must be a StopConfig, got {type(stop_config).__name__}")
    resolved_device = resolve_device(device)
    observation = io.load_image(image, name="image")
    task_options = dict(
        mask=mask, mask_threshold=mask_threshold, keep=keep, keep_known=keep_known, factor=factor,
        kernel=kernel, blur_sigma=blur_sigma, operator=operator, output_shape=output_shape, adjoint=adjoint,
        quality=quality,
    )
    if task == "jpeg" and quality is None:
        task_options.update(_jpeg_tables(image))
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
    check_net_fits(dip, out_h, out_w)
    stop_settings = stop_config or StopConfig()
    changes = {
        key: value
        for key, value in dict(probe=probe, rule=rule, pseudo_noise_std=pseudo_noise_std, noise_level=noise_level).items()
        if value is not None
    }
    if changes:
        stop_settings = replace(stop_settings, **changes)

    reference_tensor = None
    if reference is not None:
        reference_array = io.load_image(reference, name="reference")
        channels, out_h, out_w = task_object.output_shape
        if reference_array.shape != (out_h, out_w, channels):
            raise ValueError(
                f"reference has shape {reference_array.shape}, the restored image will be {(out_h, out_w, channels)}"
            )
        reference_tensor = io.image_to_tensor(reference_array)

    # before the probe and its noise are drawn (image-sized arrays): a run that cannot fit is
    # refused first, counting two fits (the twin) whatever the rule
    check_memory(estimate_run_bytes(task_object.output_shape, dip, ring_size=stop_settings.sync_every + 1, num_fits=2),
                 resolved_device, shape_hw=tuple(task_object.output_shape[1:]))
    plan = plan_restoration(task_object, dip, stop_settings, seed=seed)
    options = EngineOptions(device=resolved_device, precision=precision, seed=seed, progress=progress,
                            sync_every=stop_settings.sync_every)
    metrics = {}
    if reference_tensor is not None:
        target = reference_tensor.to(resolved_device)
        metrics["psnr"] = lambda x: psnr_torch(target, x)
    saver = None
    if checkpoint is not None or resume is not None:
        fingerprint = {
            "oscfast": oscfast_version(), "task": task_name, "observation": fingerprint_tensor(task_object.observation),
            "config": repr(dip), "stop": repr(stop_settings), "seed": str(seed), "precision": precision,
            "device": resolved_device.type, "reference": "yes" if reference_tensor is not None else "no",
        }
        saver = Checkpoint(Path(checkpoint) if checkpoint is not None else None, every=checkpoint_every,
                           resume=Path(resume) if resume is not None else None, fingerprint=fingerprint)
    on_sync = None
    if callback is not None:
        on_sync = lambda info: callback(_progress(info, plan))  # noqa: E731
    record = run_fits(plan.fits, dip, [plan.watch], stop_mode=stop, metrics=metrics, options=options,
                      on_sync=on_sync, cancel=cancel, checkpoint=saver)
    result = to_restoration(record, plan, task_object, task_name, output, reference_tensor, dip, stop_settings, resolved_device)
    result.engine_options = options
    result.seed = seed
    return result


#: the largest seed: the fits derive their generators' seeds from it (seed + 1000, ...)
MAX_SEED = 2**63 - 1
#: the largest iteration cap (the published ones are at most a few thousand); the stop rules
#: keep a float64 history of this length per signal, allocated up front
MAX_ITERATIONS = 10_000_000
#: the largest pseudo_noise_std / noise_level (images are in [0, 1]; squares must stay finite)
MAX_NOISE_STD = 1e6


def _check_whole_number(value: Any, name: str, expected: str) -> None:
    """TypeError unless ``value`` is a number; ValueError unless it is whole (3 or 3.0)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be {expected}, got {type(value).__name__} {value!r}")
    if not isinstance(value, numbers.Integral) and not (math.isfinite(value) and float(value).is_integer()):
        raise ValueError(f"{name} must be {expected}, got {value!r}")


def _jpeg_tables(image: Any) -> dict[str, Any]:
    """The quantisation tables and chroma subsampling of a JPEG file or PIL JPEG image."""
    from PIL import Image

    from oscfast.noise_level import jpeg_quantization, jpeg_subsampling

    if not isinstance(image, (str, Path, Image.Image)):
        return {}
    try:
        tables = jpeg_quantization(image)
    except (ValueError, OSError):
        return {}  # not readable as a JPEG: load_image reports what is wrong
    if tables is None:
        return {}
    return {"quantization": tables, "subsampling": jpeg_subsampling(image)}


def check_net_fits(config: DIPConfig, height: int, width: int) -> None:
    """Raise a clear error when the generator cannot run at this size (its deepest scale
    would be smaller than its padding or a single pixel), before anything is allocated."""
    spec = config.net
    if spec.kind != "skip":
        return
    multiple = spec.stride_multiple
    side = min(math.ceil(height / multiple) * multiple, math.ceil(width / multiple) * multiple)
    deepest = side // 2 ** spec.num_scales
    kernels = spec.filter_size_down if isinstance(spec.filter_size_down, tuple) else (spec.filter_size_down,)
    pad = (max(kernels) - 1) // 2
    if deepest < 2 or (spec.pad == "reflection" and deepest <= pad):
        smallest = multiple * max(2, pad + 1)
        raise ValueError(
            f"a {height}x{width} image is too small for this generator ({spec.num_scales} scales, "
            f"{max(kernels)}x{max(kernels)} filters): the smallest side must be at least {smallest} px"
        )


def to_restoration(
    record: RunRecord,
    plan: RunPlan,
    task: Task,
    task_name: str,
    output: OutputChoice,
    reference: torch.Tensor | None,
    config: DIPConfig,
    stop_config: StopConfig,
    device: torch.device,
) -> Restoration:
    """Turn an engine record of a :class:`RunPlan` into the user's :class:`Restoration`."""
    decision = record.decision
    kind = decision.output if output == "auto" else output
    chosen = record.raw_image if kind == "raw" else record.ema_image
    cpu_task = task if all(t.device.type == "cpu" for t in task.buffers()) else None
    with torch.no_grad():
        final = (cpu_task or _cpu_copy(task)).finalize(chosen).clamp_(0, 1)
    image = io.tensor_to_image(final)
    score = None
    if reference is not None:
        from oscfast.metrics import psnr

        score = psnr(io.tensor_to_image(reference), image)
    stop_iteration = decision.iteration if decision.iteration is not None else record.iterations_run - 1
    watch = plan.watch
    traces = record.traces
    fit = watch.fit

    def probe_series(name: str) -> np.ndarray | None:
        if watch.probe is None or name not in traces:
            return None
        series = traces[name][watch.probe]
        return series - traces[name][watch.base] if watch.base is not None else series

    rule = record.rules[record.driver]
    estimated = None
    error = getattr(rule, "estimated_error", lambda: None)()
    if error is not None and decision.output == kind:
        estimated = -10.0 * math.log10(max(error, 1e-12))
    fired = decision.should_stop and decision.stop_iteration is not None
    reason = "interrupted" if record.interrupted else (plan.rule if fired else "cap")
    return Restoration(
        image=image,
        stop_iteration=stop_iteration,
        iterations_run=record.iterations_run,
        history=History(
            loss=traces["loss"][fit],
            loss_ema=traces["loss_ema"][fit] if "loss_ema" in traces else None,
            p=probe_series("p"),
            p_ema=probe_series("p_ema"),
            psnr_raw=traces["psnr"][fit] if "psnr" in traces else None,
            psnr_ema=traces["psnr_ema"][fit] if "psnr_ema" in traces else None,
            scores=rule.scores(),
            fits=traces,
        ),
        task=task_name,
        rule=plan.rule,
        probe=plan.probe,
        stop_reason=reason,
        output=kind,
        rule_iteration=decision.iteration,
        rule_stop_iteration=decision.stop_iteration,
        raw_image=io.tensor_to_image(record.raw_image),
        ema_image=io.tensor_to_image(record.ema_image),
        last_image=io.tensor_to_image(record.last_images[fit]),
        psnr=score,
        estimated_psnr=estimated,
        noise_level=plan.noise_level,
        seconds=record.seconds,
        device=str(device),
        config=config,
        stop_config=stop_config,
        task_object=task,
    )


@dataclass(frozen=True)
class Progress:
    """What a restoration shows at each sync (the progress bar's values).

    Attributes:
        iteration: iterations run so far.
        loss: the returned fit's newest loss.
        p: the probe's newest P (P_twin for the twin probe), None without a probe.
        choice: the iteration the rule would return now (None while it has no choice).
        rule: the rule's name.
        stopping: the rule has fired (the run ends at this sync).
    """

    iteration: int
    loss: float
    p: float | None
    choice: int | None
    rule: str
    stopping: bool


def _progress(info: SyncInfo, plan: RunPlan) -> Progress:
    watch = plan.watch
    p = None
    if watch.probe is not None and "p" in info.latest:
        p = float(info.latest["p"][watch.probe] - (info.latest["p"][watch.base] if watch.base is not None else 0.0))
    decision = info.decisions[0]
    return Progress(
        iteration=info.iteration, loss=float(info.latest["loss"][watch.fit]), p=p, choice=decision.iteration,
        rule=plan.rule, stopping=decision.should_stop,
    )


def oscfast_version() -> str:
    """The installed oscfast version."""
    from oscfast import __version__

    return __version__


def _cpu_copy(task: Task) -> Task:
    import copy

    return copy.deepcopy(task).to("cpu")
