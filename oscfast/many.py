"""Many images per run: independent restorations batched into one step, slots refilled.

:func:`restore_many` builds each image's restoration exactly as :func:`oscfast.restore` does
(same task, configuration, probe and rule for the same seed), groups them by output shape and
runs up to ``batch`` of them side by side in one :class:`oscfast.engine.BatchRun` (each its own
parameters, BatchNorm statistics, Adam state, input, pseudo-noise, rule, average and kept
outputs). When one finishes, its result is handed out (``on_result``) and its slots start the
next image of the queue, so the batch stays full. On a CPU the loop strategy makes every result
bit-identical to a single :func:`oscfast.restore` with the same seed; on a GPU the batched
(vmap) step agrees to float tolerance.
"""
from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch

from oscfast import io
from oscfast.api import MIN_SIDE, Restoration, check_net_fits, resolve_device, to_restoration
from oscfast.config import DIPConfig, StopConfig
from oscfast.engine import BatchRun, EngineOptions, Group
from oscfast.memory import available_bytes, estimate_run_bytes
from oscfast.plan import RunPlan, plan_restoration
from oscfast.presets import PRESETS, get_preset
from oscfast.tasks import Task, build_task

__all__ = ["Job", "auto_batch", "restore_many"]

logger = logging.getLogger(__name__)

#: the most restorations :func:`auto_batch` puts in one step
MAX_AUTO_BATCH = 8


@dataclass
class Job:
    """One image of a :func:`restore_many` call, prepared."""

    index: int
    task_name: str
    task: Task
    config: DIPConfig
    plan: RunPlan


def auto_batch(job: Job, device: torch.device, *, limit: int = MAX_AUTO_BATCH, share: float = 0.5) -> int:
    """How many restorations like ``job`` fit side by side in ``share`` of the free memory
    (at most ``limit``; 1 on a CPU, where batching does not make a step cheaper per image)."""
    if device.type != "cuda":
        return 1
    one = estimate_run_bytes(job.task.output_shape, job.config, ring_size=job.plan.watch.rule.lag + 26, num_fits=len(job.plan.fits))
    return max(1, min(limit, int(share * available_bytes(device) // max(one, 1))))


def restore_many(
    images: Iterable[Any],
    task: str = "denoise",
    *,
    batch: int | None = None,
    seed: int = 0,
    max_iterations: int | None = None,
    preset: str | None = None,
    device: str | torch.device = "auto",
    precision: str = "fp32",
    progress: bool = True,
    config: DIPConfig | None = None,
    stop_config: StopConfig | None = None,
    on_result: Callable[[int, Restoration], None] | None = None,
    strategy: str = "auto",
    backend: str = "local",
    ray_address: str | None = None,
    **task_options: Any,
) -> list[Restoration]:
    """Restore many images, ``batch`` at a time in one batched step.

    Args:
        images: paths, arrays, PIL images or tensors (as :func:`oscfast.restore` takes).
        task: the task name (one for all images).
        batch: restorations per step (None: :func:`auto_batch` from free memory).
        seed: every image gets this seed, so each result equals ``restore(image, seed=seed)``.
        max_iterations, preset, device, precision, progress, config, stop_config: as
            :func:`oscfast.restore`.
        on_result: called as each restoration finishes, with its index and result.
        strategy: how the fits share a step (:class:`oscfast.fits.StackedGenerators`).
        backend: ``"local"`` (batched steps in this process) or ``"ray"`` (one Ray task per
            image running :func:`oscfast.restore`, each on its worker's CPU or a GPU; needs
            ``pip install 'oscfast[ray]'``; ``batch`` and ``strategy`` do not apply).
        ray_address: ``None``/``"local"`` (start a local Ray, shut it down after) or a cluster
            address; a Ray already initialised in this process is used as it is.
        task_options: the task's options (``factor=``, ``mask=``, ...), the same for all.

    Returns:
        The results in input order.

    Raises:
        ValueError: a bad image or option (naming the image's index).
    """
    if backend not in ("local", "ray"):
        raise ValueError(f"unknown backend {backend!r}; expected 'local' or 'ray'")
    if backend == "ray":
        from oscfast.cluster import restore_images_ray

        options = {"seed": seed, "max_iterations": max_iterations, "preset": preset, "device": str(device),
                   "precision": precision, "config": config, "stop_config": stop_config, **task_options}
        return restore_images_ray(list(images), task, options, address=ray_address, on_result=on_result)
    resolved = resolve_device(device)
    if batch is not None and (isinstance(batch, bool) or int(batch) != batch or batch < 1):
        raise ValueError(f"batch must be a positive integer, got {batch}")
    stop = stop_config or StopConfig()
    jobs: list[Job] = []
    for index, image in enumerate(images):
        try:
            jobs.append(_prepare(index, image, task, seed, preset, config, max_iterations, stop, task_options))
        except (ValueError, TypeError, FileNotFoundError) as error:
            raise type(error)(f"image {index}: {error}") from None
    results: dict[int, Restoration] = {}
    by_shape: dict[tuple, list[Job]] = {}
    for job in jobs:
        key = (job.task.output_shape, type(job.task), job.config, len(job.plan.fits), job.plan.rule, job.plan.probe)
        by_shape.setdefault(key, []).append(job)
    options = EngineOptions(device=resolved, precision=precision, progress=progress, sync_every=stop.sync_every,
                            strategy=strategy)
    for group_jobs in by_shape.values():
        size = batch or auto_batch(group_jobs[0], resolved)
        _run_queue(group_jobs, min(size, len(group_jobs)), options, resolved, stop, results, on_result)
    return [results[job.index] for job in jobs]


def _prepare(index: int, image: Any, task: str, seed: int, preset: str | None, config: DIPConfig | None,
             max_iterations: int | None, stop: StopConfig, task_options: dict[str, Any]) -> Job:
    observation = io.load_image(image, name=f"image {index}")
    task_object = build_task(task, observation, seed=seed, **task_options)
    if task not in ("super_resolution", "custom"):
        io.check_min_size(observation, MIN_SIDE, name="image")
    dip = config or get_preset(task if task in PRESETS else "custom", preset, factor=getattr(task_object, "factor", None))
    if max_iterations is not None:
        dip = replace(dip, max_iterations=int(max_iterations))
    _, height, width = task_object.output_shape
    check_net_fits(dip, height, width)
    return Job(index, task, task_object, dip, plan_restoration(task_object, dip, stop, seed=seed))


def _run_queue(jobs: Sequence[Job], size: int, options: EngineOptions, device: torch.device, stop: StopConfig,
               results: dict[int, Restoration], on_result: Callable[[int, Restoration], None] | None) -> None:
    queue = deque(jobs)
    first = [queue.popleft() for _ in range(size)]
    config = first[0].config
    run = BatchRun([(job.plan.fits, [job.plan.watch], 0, job) for job in first], config, options=options)

    def finished(index: int, group: Group) -> None:
        job: Job = group.tag
        record = run.record(index)
        result = to_restoration(record, job.plan, job.task, job.task_name, "auto", None, job.config, stop, device)
        result.engine_options = options
        results[job.index] = result
        if on_result is not None:
            on_result(job.index, result)
        if queue:
            following = queue.popleft()
            run.replace_group(index, following.plan.fits, [following.plan.watch], 0, following)

    run.run(on_group_done=finished)
