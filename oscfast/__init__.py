"""oscfast: Deep Image Prior restoration that stops by itself (Orthogonal Stopping Criterion).

Example:
    >>> from oscfast import restore
    >>> result = restore("noisy.png", task="denoise")  # doctest: +SKIP
    >>> result.save("restored.png")  # doctest: +SKIP

Heavy modules load on first use, so ``import oscfast`` stays fast.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from oscfast._version import __version__

_EXPORTS = {
    "restore": "oscfast.api",
    "restore_many": "oscfast.many",
    "Progress": "oscfast.result",
    "Restoration": "oscfast.result",
    "History": "oscfast.result",
    "TASKS": "oscfast.tasks",
    "DIPConfig": "oscfast.config",
    "StopConfig": "oscfast.config",
    "OSCStopper": "oscfast.stopping",
    "StopDecision": "oscfast.stopping",
    "Decision": "oscfast.stopping",
    "Signals": "oscfast.stopping",
    "StopRule": "oscfast.stopping",
    "RiskRule": "oscfast.stopping",
    "KneeRule": "oscfast.stopping",
    "PaperRule": "oscfast.stopping",
    "WMVRule": "oscfast.stopping",
    "EMVRule": "oscfast.stopping",
    "PlateauRule": "oscfast.stopping",
    "CapRule": "oscfast.stopping",
    "Task": "oscfast.tasks",
    "Denoise": "oscfast.tasks",
    "JPEG": "oscfast.tasks",
    "SuperResolution": "oscfast.tasks",
    "Inpaint": "oscfast.tasks",
    "RestorePixels": "oscfast.tasks",
    "Deblur": "oscfast.tasks",
    "CustomOperator": "oscfast.tasks",
    "degrade": "oscfast.tasks",
    "load_image": "oscfast.io",
    "save_image": "oscfast.io",
    "psnr": "oscfast.metrics",
    "TooLargeError": "oscfast.memory",
}

__all__ = sorted(_EXPORTS) + ["__version__"]

if TYPE_CHECKING:  # pragma: no cover
    from oscfast.api import restore
    from oscfast.result import History, Progress, Restoration
    from oscfast.many import restore_many
    from oscfast.config import DIPConfig, StopConfig
    from oscfast.io import load_image, save_image
    from oscfast.memory import TooLargeError
    from oscfast.metrics import psnr
    from oscfast.stopping import (
        CapRule,
        Decision,
        EMVRule,
        KneeRule,
        OSCStopper,
        PaperRule,
        PlateauRule,
        RiskRule,
        Signals,
        StopDecision,
        StopRule,
        WMVRule,
    )
    from oscfast.tasks import JPEG, TASKS, CustomOperator, Deblur, Denoise, Inpaint, RestorePixels, SuperResolution, Task, degrade


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'oscfast' has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__
