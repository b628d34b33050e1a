"""Restore a folder on Ray: one Ray task per image (``restore_folder(..., backend="ray")``).

Needs the optional extra: ``pip install 'oscfast[ray]'``. Ray is imported only when this
backend runs.

Each task restores one image with :func:`oscfast.restore`, writes its output atomically into the
output folder (a temporary file renamed over the target, see :func:`oscfast.io.save_image`) and
returns its summary row. Outputs are named after their inputs, so when a worker dies and Ray
runs the task again (``max_retries``), the new attempt writes the same file again: nothing is
half-written, lost or duplicated. An image that cannot be read or restored (a ``ValueError``,
``TypeError`` or ``FileNotFoundError``, the image's own fault) is returned as a failed row at
once; any other error is retried by Ray and, once the retries are spent, reported as failed.

On a cluster, every node must see the input and output folders at the same paths (a shared
file system) and have oscfast installed.
"""
from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from oscfast.folder import FAILED, FolderRow, _fail, _Item, fill_row

__all__ = ["LOCAL_NUM_CPUS", "MAX_RETRIES", "RAY_INSTALL_HINT", "import_ray", "restore_file", "restore_images_ray", "run_ray"]

logger = logging.getLogger(__name__)

#: CPUs of the local Ray that ``address="local"`` starts
LOCAL_NUM_CPUS = 2
#: how often Ray runs a task again after its worker died or it raised an unexpected error
MAX_RETRIES = 3
RAY_INSTALL_HINT = "the Ray backend needs Ray: pip install 'oscfast[ray]'"
#: test hook: a folder; a task whose input NAME has a file NAME.crash there kills its own worker
#: (os._exit) the first time it handles that image, and every task appends its input's name to
#: calls.log there
CRASH_ENV = "OSCFAST_TEST_CRASH_DIR"


def import_ray() -> Any:
    """``import ray``, or an ImportError that says how to install it."""
    try:
        import ray
    except ImportError as error:
        raise ImportError(f"{RAY_INSTALL_HINT} ({error})") from None
    return ray


def restore_file(source: str, target: str, task: str, options: dict[str, Any]) -> dict[str, Any]:
    """Restore the image file ``source`` into ``target`` (atomically) and return its summary
    row as a dict (the body of the Ray task; usable without Ray too)."""
    _test_hook(source)
    from oscfast import io
    from oscfast.api import restore

    row = FolderRow(Path(source).name, Path(target).name, "")
    try:  # the image's own faults are reported at once, not retried
        image = io.load_image(source)
    except (ValueError, TypeError, OSError) as error:
        row.status = f"{FAILED}: unreadable: {' '.join(str(error).split())}"
        return asdict(row)
    try:
        result = restore(image, task, progress=False, **options)
    except (ValueError, TypeError) as error:
        row.status = f"{FAILED}: {' '.join(str(error).split())}"
        return asdict(row)
    result.save(target)  # an OSError here is raised, so that Ray tries again
    return asdict(fill_row(row, result))


def run_ray(items: Sequence[_Item], task: str, options: dict[str, Any], *, bar: Any, address: str | None = None,
            num_cpus: int = LOCAL_NUM_CPUS) -> None:
    """Restore ``items`` as Ray tasks, filling in their rows as the tasks finish.

    ``address``: None or ``"local"`` starts a local Ray with ``num_cpus`` CPUs and shuts it down
    at the end; another address connects to that cluster (and disconnects at the end). A Ray
    already initialised in this process is used as it is and left running.
    """
    refs: dict[Any, _Item] = {}
    with _ray_session(address, num_cpus, refs) as ray:
        use_gpu = _wants_cuda(options.get("device", "auto"))
        worker_options = dict(options, device="cuda" if use_gpu else "cpu")
        remote = ray.remote(num_gpus=1 if use_gpu else 0, max_retries=MAX_RETRIES, retry_exceptions=True)(restore_file)
        refs.update({remote.remote(str(item.source), str(item.target), task, worker_options): item for item in items})
        for item, row, error in _completed(ray, refs):
            if error is not None:  # retries spent: reported in the summary
                _fail(item, _ray_reason(error), bar)
            else:
                _take_row(item, row, bar)


@contextlib.contextmanager
def _ray_session(address: str | None, num_cpus: int, refs: dict[Any, Any]) -> Iterator[Any]:
    """Ray, initialised for the block: None or ``"local"`` starts a local Ray with ``num_cpus``
    CPUs, another address connects to that cluster; either is shut down at the end. A Ray
    already initialised in this process is used as it is and left running. On the way out
    (an error or an interrupt) the tasks still in ``refs`` are cancelled."""
    ray = import_ray()
    started = False
    if not ray.is_initialized():
        if address in (None, "local"):
            ray.init(num_cpus=num_cpus, include_dashboard=False)
        else:
            ray.init(address=address)
        started = True
    try:
        yield ray
    finally:
        for ref in refs:
            try:
                ray.cancel(ref, force=True)
            except Exception:  # noqa: BLE001 - best effort
                pass
        if started:
            ray.shutdown()


def _completed(ray: Any, refs: dict[Any, Any]) -> Iterator[tuple[Any, Any, BaseException | None]]:
    """(key, value, None) or (key, None, error) for each task of ``refs`` as it finishes; a
    finished task leaves ``refs`` (what is left there is cancelled on the way out)."""
    pending = list(refs)
    while pending:
        done, pending = ray.wait(pending, num_returns=1)
        for ref in done:
            key = refs.pop(ref)
            try:
                value, error = ray.get(ref), None
            except Exception as failure:  # noqa: BLE001 - the caller decides
                value, error = None, failure
            yield key, value, error


def _restore_one(index: int, image: Any, task: str, options: dict[str, Any]) -> Any:
    """The body of one ``restore_many(..., backend="ray")`` task: the Restoration, or the
    image's own fault (a ValueError/TypeError) as ``(index, type name, message)``, not retried."""
    from oscfast.api import restore

    try:
        return restore(image, task, progress=False, **options)
    except (ValueError, TypeError, FileNotFoundError) as error:
        return (index, type(error).__name__, str(error))


def restore_images_ray(images: Sequence[Any], task: str, options: dict[str, Any], *, address: str | None = None,
                       num_cpus: int = LOCAL_NUM_CPUS, on_result: Any = None) -> list[Any]:
    """One Ray task per image running :func:`oscfast.restore` with ``options``; the results in
    input order. ``address`` as in :func:`run_ray`. A task whose worker dies is run again (up to
    :data:`MAX_RETRIES` times); a bad image raises its ``ValueError``/``TypeError`` naming its
    index, after the other tasks are cancelled.

    Raises:
        ImportError: Ray is not installed.
        RuntimeError: a task failed for good (its retries spent).
    """
    refs: dict[Any, int] = {}
    with _ray_session(address, num_cpus, refs) as ray:
        use_gpu = _wants_cuda(str(options.get("device", "auto")))
        worker_options = dict(options, device="cuda" if use_gpu else "cpu")
        remote = ray.remote(num_gpus=1 if use_gpu else 0, max_retries=MAX_RETRIES, retry_exceptions=True)(_restore_one)
        refs.update({remote.remote(index, image, task, worker_options): index for index, image in enumerate(images)})
        results: dict[int, Any] = {}
        for index, value, error in _completed(ray, refs):
            if error is not None:  # retries spent
                raise RuntimeError(f"image {index}: {_ray_reason(error)}")
            if isinstance(value, tuple):  # the image's own fault
                _, kind, message = value
                error_type = {"ValueError": ValueError, "TypeError": TypeError}.get(kind, FileNotFoundError)
                raise error_type(f"image {index}: {message}")
            results[index] = value
            if on_result is not None:
                on_result(index, value)
        return [results[index] for index in range(len(images))]


def _wants_cuda(device: str) -> bool:
    """Whether the driver asks for a GPU: ``cuda``/``cuda:N``, or ``auto`` with one here."""
    if device == "auto":
        import torch

        return torch.cuda.is_available()
    return device.startswith("cuda")


def _take_row(item: _Item, row: dict[str, Any], bar: Any) -> None:
    if str(row["status"]).startswith(FAILED):
        _fail(item, str(row["status"]).removeprefix(f"{FAILED}: "), bar)
        return
    for key, value in row.items():
        setattr(item.row, key, value)
    bar.update(1)


def _ray_reason(error: BaseException) -> str:
    """One line for a task that failed for good (its retries spent)."""
    cause = getattr(error, "cause", None)
    if isinstance(cause, BaseException):
        return f"{type(cause).__name__}: {cause}"
    first = str(error).strip().splitlines()
    return f"{type(error).__name__}: {first[0] if first else 'no message'} (after {MAX_RETRIES} retries)"


def _test_hook(source: str) -> None:
    folder = os.environ.get(CRASH_ENV)
    if not folder:
        return
    name = Path(source).name
    with open(Path(folder) / "calls.log", "a", encoding="utf-8") as log:
        log.write(f"{name}\n")
    if (Path(folder) / f"{name}.crash").exists():
        try:
            os.close(os.open(Path(folder) / f"{name}.crashed", os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            return  # crashed once already
        os._exit(1)
