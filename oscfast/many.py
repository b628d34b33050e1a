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
import threading
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace
from typing import Any

import torch

from oscfast.checks import check_integer
from oscfast.config import StopConfig
from oscfast.engine import BatchRun, EngineOptions, Group, ring_size_for
from oscfast.memory import available_bytes, estimate_run_bytes
from oscfast.prepare import RUN_OPTION_NAMES, CheckedOptions, Prepared, RunOptions, check_run_options, prepare
from oscfast.result import Restoration

__all__ = ["Job", "auto_batch", "restore_many"]

logger = logging.getLogger(__name__)

#: the most restorations :func:`auto_batch` puts in one step
MAX_AUTO_BATCH = 8


#: one image of a :func:`restore_many` call, prepared (:func:`oscfast.prepare.prepare`)
Job = Prepared


def auto_batch(job: Job, device: torch.device, *, limit: int = MAX_AUTO_BATCH, share: float = 0.5,
               sync_every: int = StopConfig.sync_every) -> int:
    """How many restorations like ``job`` fit side by side in ``share`` of the free memory
    (at most ``limit``; 1 on a CPU, where batching does not make a step cheaper per image)."""
    if device.type != "cuda":
        return 1
    one = estimate_run_bytes(job.task.output_shape, job.config, ring_size=ring_size_for(job.plan.watch.rule.lag, sync_every),
                             num_fits=len(job.plan.fits), cuda_graph=True)
    return max(1, min(limit, int(share * available_bytes(device) // max(one, 1))))


def split_options(options: dict[str, Any]) -> tuple[RunOptions, dict[str, Any]]:
    """Split keyword options into the run options (:class:`oscfast.prepare.RunOptions`, which
    every entry point takes) and the task's own options (checked later, per task)."""
    run = RunOptions(**{key: value for key, value in options.items() if key in RUN_OPTION_NAMES})
    return run, {key: value for key, value in options.items() if key not in RUN_OPTION_NAMES}


def restore_many(
    images: Iterable[Any],
    task: str = "denoise",
    *,
    batch: int | None = None,
    references: Sequence[Any] | None = None,
    on_result: Callable[[int, Restoration], None] | None = None,
    cancel: Callable[[], bool] | threading.Event | None = None,
    strategy: str = "auto",
    backend: str = "local",
    ray_address: str | None = None,
    **options: Any,
) -> list[Restoration]:
    """Restore many images, ``batch`` at a time in one batched step.

    Args:
        images: paths, arrays, PIL images or tensors (as :func:`oscfast.restore` takes; a path
            stays a path, so a JPEG file's quantisation tables are read as ``restore`` reads them).
        task: the task name (one for all images).
        batch: restorations per step (None: :func:`auto_batch` from free memory).
        references: clean images, one per image, for ``result.psnr`` (the per-iteration PSNR
            curves are recorded by :func:`oscfast.restore` only), or None.
        on_result: called as each restoration finishes, with its index and result.
        cancel: as :func:`oscfast.restore`: every restoration ends at the next sync (local backend
            only; a ValueError with backend="ray").
        strategy: how the fits share a step (:class:`oscfast.fits.StackedGenerators`).
        backend: ``"local"`` (batched steps in this process) or ``"ray"`` (one Ray task per
            image running :func:`oscfast.restore`, each on its worker's CPU or a GPU; needs
            ``pip install 'oscfast[ray]'``; ``batch`` and ``strategy`` do not apply).
        ray_address: ``None``/``"local"`` (start a local Ray, shut it down after) or a cluster
            address; a Ray already initialised in this process is used as it is.
        options: every run option of :func:`oscfast.restore` (:class:`oscfast.prepare.RunOptions`:
            ``seed``, ``stop``, ``probe``, ``rule``, ``output``, ...; every image gets the same,
            so each result equals ``restore(image, **options)``) and the task's options
            (``factor=``, ``mask=``, ...), the same for all.

    Returns:
        The results in input order.

    Raises:
        ValueError: a bad image or option (naming the image's index).
    """
    if backend not in ("local", "ray"):
        raise ValueError(f"unknown backend {backend!r}; expected 'local' or 'ray'")
    if batch is not None:
        batch = check_integer(batch, "batch", minimum=1)
    images = list(images)
    if references is not None and len(references) != len(images):
        raise ValueError(f"references has {len(references)} images, images has {len(images)}")
    run, task_options = split_options(options)
    checked = check_run_options(run, check_device=backend == "local")
    if backend == "ray":
        if cancel is not None:
            raise ValueError("cancel= works with the local backend only: Ray tasks run their images to the end")
        return _restore_ray(images, task, options, references, ray_address, on_result)
    jobs: list[Job] = []
    for index, image in enumerate(images):
        reference = None if references is None else references[index]
        try:
            jobs.append(prepare(image, task, checked, task_options, reference=reference, name=f"image {index}"))
        except (ValueError, TypeError, FileNotFoundError) as error:
            raise type(error)(f"image {index}: {error}") from None
    results: dict[int, Restoration] = {}
    by_shape: dict[tuple, list[tuple[int, Job]]] = {}
    for index, job in enumerate(jobs):
        key = (job.task.output_shape, type(job.task), job.config, len(job.plan.fits), job.plan.rule, job.plan.probe)
        by_shape.setdefault(key, []).append((index, job))
    engine = replace(jobs[0].engine, strategy=strategy) if jobs else None
    for group_jobs in by_shape.values():
        size = batch or auto_batch(group_jobs[0][1], checked.device, sync_every=checked.stop.sync_every)
        _run_queue(group_jobs, min(size, len(group_jobs)), engine, checked, results, on_result, cancel)
    return [results[index] for index in range(len(jobs))]


def _restore_ray(images: list[Any], task: str, options: dict[str, Any], references: Sequence[Any] | None,
                 address: str | None, on_result: Callable[[int, Restoration], None] | None) -> list[Restoration]:
    """One Ray task per image running :func:`oscfast.restore` with ``options``; the results in
    input order. A task whose worker dies is run again; a bad image raises its
    ``ValueError``/``TypeError`` naming its index, after the other tasks are cancelled.

    Raises:
        ImportError: Ray is not installed.
        RuntimeError: a task failed for good (its retries spent).
    """
    from oscfast import cluster

    refs: dict[Any, int] = {}
    with cluster.ray_session(address, cluster.LOCAL_NUM_CPUS, refs) as ray:
        use_gpu = cluster.wants_cuda(str(options.get("device", "auto")))
        worker_options = dict(options, device="cuda" if use_gpu else "cpu")
        remote = ray.remote(num_gpus=1 if use_gpu else 0, max_retries=cluster.MAX_RETRIES, retry_exceptions=True)(_restore_one)
        refs.update({remote.remote(index, image, None if references is None else references[index], task, worker_options): index
                     for index, image in enumerate(images)})
        results: dict[int, Restoration] = {}
        for index, value, error in cluster.completed(ray, refs):
            if error is not None:  # retries spent
                raise RuntimeError(f"image {index}: {cluster.ray_reason(error)}")
            if isinstance(value, tuple):  # the image's own fault
                _, kind, message = value
                error_type = {"ValueError": ValueError, "TypeError": TypeError}.get(kind, FileNotFoundError)
                raise error_type(f"image {index}: {message}")
            results[index] = value
            if on_result is not None:
                on_result(index, value)
        return [results[index] for index in range(len(images))]


def _restore_one(index: int, image: Any, reference: Any, task: str, options: dict[str, Any]) -> Any:
    """The body of one ``restore_many(..., backend="ray")`` task: the Restoration, or the
    image's own fault (a ValueError/TypeError) as ``(index, type name, message)``, not retried."""
    from oscfast.api import restore

    try:
        return restore(image, task, reference=reference, **{**options, "progress": False})
    except (ValueError, TypeError, FileNotFoundError) as error:
        kind = "FileNotFoundError" if isinstance(error, FileNotFoundError) else (
            "TypeError" if isinstance(error, TypeError) else "ValueError")  # TooLargeError is a ValueError
        return (index, kind, str(error))


def _run_queue(jobs: Sequence[tuple[int, Job]], size: int, options: EngineOptions, checked: CheckedOptions,
               results: dict[int, Restoration], on_result: Callable[[int, Restoration], None] | None,
               cancel: Callable[[], bool] | threading.Event | None) -> None:
    queue = deque(jobs)
    first = [queue.popleft() for _ in range(size)]
    config = first[0][1].config
    run = BatchRun([(job.plan.fits, [job.plan.watch], 0, (index, job)) for index, job in first], config, options=options)

    def finished(slot: int, group: Group) -> None:
        index, job = group.tag
        result = job.finish(run.record(slot))
        result.engine_options = options
        # a resume point (weights and Adam state, ~3x the parameters) per result would add up over
        # many images; Restoration.export rebuilds the fit from iteration 0 without it
        result.resume_point = None
        results[index] = result
        if on_result is not None:
            on_result(index, result)
        if queue:
            following = queue.popleft()
            run.replace_group(slot, following[1].plan.fits, [following[1].plan.watch], 0, following)

    run.run(stop_mode=checked.options.stop, cancel=cancel, on_group_done=finished)
