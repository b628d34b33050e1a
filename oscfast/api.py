"""The public entry point: ``restore(image, task)``.

Preparation (checks, loading, the task, the configuration, the plan) is
:func:`oscfast.prepare.prepare`, shared with every other entry point; the result types are in
:mod:`oscfast.result`.
"""
from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import torch

from oscfast.checkpoint import Checkpoint
from oscfast.config import DIPConfig, ProbeName, RuleName, StopConfig
from oscfast.engine import run_fits
from oscfast.prepare import RunOptions, prepare
from oscfast.result import History, OutputChoice, Progress, Restoration, progress_of
from oscfast.tasks import TASKS, Task

__all__ = ["restore", "Restoration", "History", "Progress", "TASKS"]


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
    callback: Callable[[Progress], None] | None = None,
    cancel: Callable[[], bool] | threading.Event | None = None,
    checkpoint: str | Path | None = None,
    checkpoint_every: float = 60.0,
    resume: str | Path | None = None,
    **task_options: Any,
) -> Restoration:
    """Restore one damaged image with Deep Image Prior and stop automatically.

    Args:
        image: the observation: a path (PNG/JPEG/TIFF, 8 or 16 bit), a PIL image, a numpy
            array (HxW or HxWxC; uint8, uint16 or float in [0, 1]) or a torch tensor
            (CHW or 1xCxHxW). RGBA: the alpha channel is dropped.
        task: a registered task name (``oscfast.TASKS``: ``"denoise"``, ``"jpeg"``,
            ``"super_resolution"``, ``"inpaint"``, ``"restore_pixels"``, ``"deblur"``,
            ``"custom"``) or a :class:`Task` instance.
        reference: clean image (same kinds as ``image``) for per-iteration PSNR.
        stop, max_iterations, preset, net, seed, device, precision, progress, probe,
            pseudo_noise_std, rule, noise_level, output, config, stop_config: the run options,
            documented on :class:`oscfast.prepare.RunOptions` (None: the task's default).
        callback: called at each sync with a :class:`Progress`, for an application's display.
        cancel: a callable returning True, or a ``threading.Event``: once it says so, the run
            ends at the next sync and returns the rule's choice so far
            (``stop_reason="interrupted"``). Ctrl-C does the same.
        checkpoint: write the run's whole state to this file (atomically) every
            ``checkpoint_every`` seconds, and at the end.
        resume: continue the run saved in this checkpoint (refused if it was made with another
            configuration, image or seed); on a CPU the result is bit-identical.
        task_options: the task's options (the README's task table): ``mask``,
            ``mask_threshold``, ``keep``, ``keep_known``, ``factor``, ``kernel``, ``blur_sigma``,
            ``operator``, ``output_shape``, ``adjoint``, ``quality`` (JPEG: when the image is not
            the JPEG file itself, whose own quantisation tables are read).

    Returns:
        A :class:`Restoration`.

    Raises:
        ValueError, TypeError: bad input, naming the problem (FileNotFoundError for a missing
            file; :class:`oscfast.TooLargeError`, a ValueError, for a run that cannot fit).

    Example:
        >>> result = restore("noisy.png", task="denoise")  # doctest: +SKIP
        >>> result.save("restored.png")  # doctest: +SKIP
    """
    options = RunOptions(
        stop=stop, max_iterations=max_iterations, preset=preset, net=net, seed=seed, device=device, precision=precision,
        progress=progress, probe=probe, pseudo_noise_std=pseudo_noise_std, rule=rule, noise_level=noise_level,
        output=output, config=config, stop_config=stop_config,
    )
    job = prepare(image, task, options, task_options, reference=reference)
    saver = None
    if checkpoint is not None or resume is not None:
        saver = Checkpoint(Path(checkpoint) if checkpoint is not None else None, every=checkpoint_every,
                           resume=Path(resume) if resume is not None else None, fingerprint=job.fingerprint())
    on_sync = None if callback is None else (lambda info: callback(progress_of(info, job.plan)))
    record = run_fits(job.plan.fits, job.config, [job.plan.watch], stop_mode=job.options.stop, metrics=job.metrics(),
                      options=job.engine, on_sync=on_sync, cancel=cancel, checkpoint=saver)
    return job.finish(record)
