"""One preparation path for every entry point: from an input and options to a checked run.

``restore``, ``restore_many``, ``restore_folder``, the Ray backends and ``oscfast evaluate``
all call :func:`prepare` (and :func:`check_run_options` for what does not depend on the
image), so they accept and refuse the same values, read the same file metadata (a JPEG file's
quantisation tables reach the JPEG task from every path) and build the same task,
configuration and stop rule for the same seed. The order is: options that do not depend on
the image, the image, its size, the task, the network's fit to that size, the reference, the
memory estimate (before the probe's image-sized noise is drawn), then the plan.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any, Literal

import torch

from oscfast import io
from oscfast.checks import check_bool, check_integer, check_real
from oscfast.config import DIPConfig, ProbeName, RuleName, StopConfig
from oscfast.engine import EngineOptions, RunRecord
from oscfast.memory import check_memory, estimate_run_bytes
from oscfast.metrics import psnr_torch
from oscfast.plan import RunPlan, plan_restoration
from oscfast.presets import get_preset
from oscfast.result import OutputChoice, Restoration, to_restoration
from oscfast.tasks import Task, build_task, check_task_options, task_class

__all__ = [
    "MAX_ITERATIONS",
    "MAX_NOISE_STD",
    "MAX_SEED",
    "MIN_SIDE",
    "RUN_OPTION_NAMES",
    "Prepared",
    "RunOptions",
    "check_run_options",
    "jpeg_file_options",
    "prepare",
    "resolve_device",
]

#: the smallest image side the default networks handle (5 stride-2 scales)
MIN_SIDE = 32
#: the largest seed: the fits derive their generators' seeds from it (seed + 1000, ...)
MAX_SEED = 2**63 - 1
#: the largest iteration cap (the published ones are at most a few thousand); the stop rules
#: keep a float64 history of this length per signal, allocated up front
MAX_ITERATIONS = 10_000_000
#: the largest pseudo_noise_std / noise_level (images are in [0, 1]; squares must stay finite)
MAX_NOISE_STD = 1e6


@dataclass(frozen=True)
class RunOptions:
    """The options of one restoration that do not depend on its image: everything
    :func:`oscfast.restore` takes besides the image, the task and its options, and the
    embedding hooks. ``restore_many`` and ``restore_folder`` take the same, for all images.

    Attributes:
        stop: ``"osc"`` stops when the rule fires; ``"never"`` runs to the cap and still
            returns the image the rule chose (for evaluation; the choice is the same).
        max_iterations: iteration cap (default: the preset's published count).
        preset: a published configuration of the task (see ``oscfast.presets``).
        net: swap the preset's generator for ``"unet"`` or ``"resnet"`` (same input).
        seed: seeds everything; CPU runs are deterministic for a given seed.
        device: ``"auto"``, ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
        precision: ``"fp32"`` or ``"bf16"`` (autocast of the network).
        progress: show a progress bar.
        probe: ``"twin"``, ``"inline"`` or ``"none"`` (None: the task's default).
        pseudo_noise_std: sigma_n of the pseudo-noise (1/25); 0 runs plain DIP to the cap.
        rule: the stop rule (None: the task's default; see :class:`StopConfig`).
        noise_level: std of the measurement noise for the risk rule (None: estimated).
        output: ``"ema"``, ``"raw"`` or ``"auto"`` (the rule's choice).
        config, stop_config: full configurations, overriding the preset and the defaults.
    """

    stop: Literal["osc", "never"] = "osc"
    max_iterations: int | None = None
    preset: str | None = None
    net: Literal["skip", "unet", "resnet"] | None = None
    seed: int = 0
    device: str | torch.device = "auto"
    precision: Literal["fp32", "bf16"] = "fp32"
    progress: bool = True
    probe: ProbeName | None = None
    pseudo_noise_std: float | None = None
    rule: RuleName | None = None
    noise_level: float | None = None
    output: OutputChoice = "auto"
    config: DIPConfig | None = None
    stop_config: StopConfig | None = None


#: the names of :class:`RunOptions`, which every entry point takes
RUN_OPTION_NAMES: tuple[str, ...] = tuple(f.name for f in fields(RunOptions))


@dataclass(frozen=True)
class CheckedOptions:
    """:class:`RunOptions` after :func:`check_run_options`: the device resolved and the stop
    options folded into one :class:`StopConfig`."""

    options: RunOptions
    device: torch.device
    stop: StopConfig


def check_run_options(options: RunOptions, *, check_device: bool = True) -> CheckedOptions:
    """Check every option that does not depend on the image, with one message style.

    Args:
        options: the options.
        check_device: resolve the device here (False where workers elsewhere resolve it).

    Raises:
        ValueError, TypeError: naming the option and what was expected.
    """
    o = options
    if o.stop not in ("osc", "never"):
        raise ValueError(f"unknown stop {o.stop!r}; expected 'osc' or 'never'")
    if o.output not in ("auto", "ema", "raw"):
        raise ValueError(f"unknown output {o.output!r}; expected 'auto', 'ema' or 'raw'")
    if o.precision not in ("fp32", "bf16"):
        raise ValueError(f"unknown precision {o.precision!r}; expected 'fp32' or 'bf16'")
    if o.net is not None and o.net not in ("skip", "unet", "resnet"):
        raise ValueError(f"unknown net {o.net!r}; expected 'skip', 'unet' or 'resnet'")
    check_bool(o.progress, "progress")
    changes: dict[str, Any] = {"seed": check_integer(o.seed, "seed", minimum=0, maximum=MAX_SEED)}
    if o.max_iterations is not None:
        changes["max_iterations"] = check_integer(o.max_iterations, "max_iterations", minimum=1, maximum=MAX_ITERATIONS)
    if o.config is not None:
        if not isinstance(o.config, DIPConfig):
            raise TypeError(f"config must be a DIPConfig, got {type(o.config).__name__}")
        if o.config.max_iterations > MAX_ITERATIONS:
            raise ValueError(f"config.max_iterations must be at most {MAX_ITERATIONS}, got {o.config.max_iterations!r}")
    if o.stop_config is not None and not isinstance(o.stop_config, StopConfig):
        raise TypeError(f"stop_config must be a StopConfig, got {type(o.stop_config).__name__}")
    for name in ("pseudo_noise_std", "noise_level"):
        value = getattr(o, name)
        if value is not None:
            check_real(value, name, f"a std in [0, {MAX_NOISE_STD:g}] on the [0, 1] image scale",
                       minimum=0, maximum=MAX_NOISE_STD)
    if not isinstance(o.device, (str, torch.device)):
        raise TypeError(f"device must be a string such as 'cpu' or 'cuda:0' or a torch.device, got {type(o.device).__name__} {o.device!r}")
    device = resolve_device(o.device) if check_device else _parse_device(o.device)
    stop = o.stop_config or StopConfig()
    overrides = {k: getattr(o, k) for k in ("probe", "rule", "pseudo_noise_std", "noise_level") if getattr(o, k) is not None}
    if overrides:
        stop = replace(stop, **overrides)
    return CheckedOptions(replace(o, **changes), device, stop)


@dataclass
class Prepared:
    """One restoration, checked and planned, ready for the engine.

    Attributes:
        task: the task object (built from the observation).
        task_name: its registered name (``"custom"`` for an unregistered Task instance).
        config: the DIP configuration (preset, cap and net applied).
        stop: the stop settings.
        plan: the fits and the driving rule.
        reference: the clean image as (1, C, H, W), or None.
        engine: the engine options.
        options: the checked run options.
    """

    task: Task
    task_name: str
    config: DIPConfig
    stop: StopConfig
    plan: RunPlan
    reference: torch.Tensor | None
    engine: EngineOptions
    options: RunOptions

    @property
    def device(self) -> torch.device:
        return self.engine.device

    def metrics(self) -> dict[str, Any]:
        """The per-iteration metrics of the run (PSNR against the reference, when given)."""
        if self.reference is None:
            return {}
        target = self.reference.to(self.device)
        return {"psnr": lambda x: psnr_torch(target, x)}

    def finish(self, record: RunRecord) -> Restoration:
        """The user's :class:`Restoration` from the engine's record of this run."""
        return to_restoration(record, self.plan, self.task, self.task_name, self.options.output, self.reference,
                              self.config, self.stop, self.engine, self.options.seed)

    def fingerprint(self) -> dict[str, str]:
        """What a checkpoint of this run must match to be resumed."""
        from oscfast._version import __version__
        from oscfast.checkpoint import fingerprint_tensor

        prints = {
            "oscfast": __version__, "task": self.task_name, "observation": fingerprint_tensor(self.task.observation),
            "config": repr(self.config), "stop": repr(self.stop), "seed": str(self.options.seed),
            "precision": self.options.precision, "device": self.device.type,
            "reference": "yes" if self.reference is not None else "no",
        }
        noise = self.task.noise_choice
        if noise is not None and noise.kind != "gaussian":  # Gaussian runs keep the fingerprint they had
            prints["noise"] = repr(noise)
        if self.stop.twin_start:  # not in StopConfig's repr: runs without it keep the fingerprint they had
            prints["twin_start"] = str(self.stop.twin_start)
        return prints


def prepare(
    image: Any,
    task: str | Task,
    options: RunOptions | CheckedOptions,
    task_options: Mapping[str, Any] | None = None,
    *,
    reference: Any = None,
    name: str = "image",
) -> Prepared:
    """Check and prepare one restoration.

    Args:
        image: the observation, as :func:`oscfast.restore` takes it. A path stays a path until
            it is read here, so a file's metadata (a JPEG's quantisation tables) is used.
        task: a registered task name or a :class:`Task` instance.
        options: the run options (checked here unless already checked).
        task_options: the task's keyword options (``mask=``, ``factor=``, ...).
        reference: the clean image, for per-iteration PSNR.
        name: how messages name the image (``"image 3"``).

    Raises:
        ValueError, TypeError, FileNotFoundError: naming the problem;
            :class:`oscfast.TooLargeError` when the run cannot fit in memory.
    """
    checked = options if isinstance(options, CheckedOptions) else check_run_options(options)
    run, given = checked.options, {k: v for k, v in (task_options or {}).items() if v is not None}
    if isinstance(task, Task):
        if given:
            raise ValueError("task options (mask=, factor=, ...) go into the Task object, not restore()")
        task_object, task_name = task, task.name
    elif isinstance(task, str):
        task_name = task
        check_task_options(task_name, given)
    else:
        raise TypeError(f"task must be a task name or a Task, got {type(task).__name__}")
    observation = io.load_image(image, name=name)
    if isinstance(task, str):
        cls = task_class(task_name)
        if cls.file_options and not given.keys() & (cls.file_options | {"quality"}):
            given.update(jpeg_file_options(image))
        if cls.checks_observation_size:
            io.check_min_size(observation, MIN_SIDE, name=name)
        task_object = build_task(task_name, observation, seed=run.seed, **given)
    channels, height, width = task_object.output_shape
    if min(height, width) < MIN_SIDE:
        raise ValueError(f"the output would be {height}x{width} px; the smallest side must be at least {MIN_SIDE} px")
    config = _configuration(task_name, task_object, run)
    reference_tensor = None
    if reference is not None:
        reference_array = io.load_image(reference, name="reference")
        if reference_array.shape != (height, width, channels):
            raise ValueError(f"reference has shape {reference_array.shape}, the restored image will be {(height, width, channels)}")
        reference_tensor = io.image_to_tensor(reference_array)
    # before the probe's image-sized noise is drawn: a run that cannot fit is refused first,
    # counting two fits (the twin) whatever the rule
    check_memory(estimate_run_bytes(task_object.output_shape, config, ring_size=checked.stop.sync_every + 1, num_fits=2),
                 checked.device, shape_hw=(height, width))
    plan = plan_restoration(task_object, config, checked.stop, seed=run.seed)
    engine = EngineOptions(device=checked.device, precision=run.precision, seed=run.seed, progress=run.progress,
                           sync_every=checked.stop.sync_every)
    return Prepared(task_object, task_name, config, checked.stop, plan, reference_tensor, engine, run)


def _configuration(task_name: str, task: Task, run: RunOptions) -> DIPConfig:
    """The DIP configuration: ``config``, else the preset; the cap and the net applied."""
    from oscfast.tasks import TASKS

    preset_task = task_name if task_name in TASKS else "custom"  # an unregistered Task instance: the custom presets
    config = run.config or get_preset(preset_task, run.preset, factor=getattr(task, "factor", None))
    if run.max_iterations is not None:
        config = replace(config, max_iterations=int(run.max_iterations))
    if run.net is not None and run.net != config.net.kind:
        from oscfast.models import NetSpec

        config = replace(config, net=NetSpec(kind=run.net, input_channels=config.net.input_channels))
    return config


def jpeg_file_options(image: Any) -> dict[str, Any]:
    """The quantisation tables and chroma subsampling of a JPEG file or PIL JPEG image
    (``{}`` for anything else: an array, a PNG, an unreadable file, which loading reports)."""
    from PIL import Image

    from oscfast.jpeg_files import jpeg_quantization, jpeg_subsampling

    if not isinstance(image, (str, Path, Image.Image)):
        return {}
    try:
        tables = jpeg_quantization(image)
    except (ValueError, OSError):
        return {}
    if tables is None:
        return {}
    return {"quantization": tables, "subsampling": jpeg_subsampling(image)}


def resolve_device(device: str | torch.device) -> torch.device:
    """``"auto"`` -> CUDA when available, else CPU; checks that a named CUDA device exists.

    Raises:
        ValueError: an unknown device, or a CUDA device that is not there.
    """
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    resolved = _parse_device(device)
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {str(resolved)!r} was asked for but no CUDA device is available")
        if resolved.index is not None and resolved.index >= torch.cuda.device_count():
            raise ValueError(f"device {str(resolved)!r} does not exist: {torch.cuda.device_count()} CUDA device(s)")
    return resolved


def _parse_device(device: str | torch.device) -> torch.device:
    """The device named (no availability check): ``"auto"`` stays CPU-typed here."""
    if isinstance(device, torch.device):
        resolved = device
    elif device == "auto":
        return torch.device("cpu")
    else:
        try:
            resolved = torch.device(device)
        except (RuntimeError, TypeError) as error:
            raise ValueError(f"unknown device {device!r}; expected 'auto', 'cpu', 'cuda' or 'cuda:N'") from error
    if resolved.type not in ("cpu", "cuda"):
        raise ValueError(f"unsupported device {str(resolved)!r}; expected 'cpu' or 'cuda'")
    return resolved
