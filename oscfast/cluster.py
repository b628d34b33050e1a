"""Ray sessions for the two Ray backends (``restore_many(..., backend="ray")`` and
``restore_folder(..., backend="ray")``, which own their task bodies).

Needs the optional extra: ``pip install 'oscfast[ray]'``; Ray is imported only when a Ray
backend runs. This module knows nothing of images: it starts or joins Ray for a block, yields
the tasks as they finish, cancels what is left on the way out and words a failed task's reason.
"""
from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any


__all__ = ["LOCAL_NUM_CPUS", "MAX_RETRIES", "RAY_INSTALL_HINT", "completed", "import_ray", "ray_reason", "ray_session", "wants_cuda"]

logger = logging.getLogger(__name__)

#: CPUs of the local Ray that ``address="local"`` starts
LOCAL_NUM_CPUS = 2
#: how often Ray runs a task again after its worker died or it raised an unexpected error
MAX_RETRIES = 3
RAY_INSTALL_HINT = "the Ray backend needs Ray: pip install 'oscfast[ray]'"
def import_ray() -> Any:
    """``import ray``, or an ImportError that says how to install it."""
    try:
        import ray
    except ImportError as error:
        raise ImportError(f"{RAY_INSTALL_HINT} ({error})") from None
    return ray


@contextlib.contextmanager
def ray_session(address: str | None, num_cpus: int, refs: dict[Any, Any]) -> Iterator[Any]:
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


def completed(ray: Any, refs: dict[Any, Any]) -> Iterator[tuple[Any, Any, BaseException | None]]:
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


def wants_cuda(device: str) -> bool:
    """Whether the driver asks for a GPU: ``cuda``/``cuda:N``, or ``auto`` with one here."""
    if device == "auto":
        import torch

        return torch.cuda.is_available()
    return device.startswith("cuda")


def ray_reason(error: BaseException) -> str:
    """One line for a task that failed for good (its retries spent)."""
    cause = getattr(error, "cause", None)
    if isinstance(cause, BaseException):
        return f"{type(cause).__name__}: {cause}"
    first = str(error).strip().splitlines()
    return f"{type(error).__name__}: {first[0] if first else 'no message'} (after {MAX_RETRIES} retries)"


