"""Export the stopper's per-step math and fitted generators as graphs (ONNX or ``torch.export``).

- :mod:`oscfast.export.stopper`: the knee and risk rules' per-step math (:class:`StopperStep`,
  :class:`RiskStep`); the decision stays with the rule objects of :mod:`oscfast.stopping`.
- :mod:`oscfast.export.generator`: the generator of a finished restoration
  (:func:`export_result`, what ``Restoration.export`` calls).

TorchScript is deprecated in current torch; nothing here builds on it (see docs/export.md).
"""
from __future__ import annotations

from oscfast.export.generator import FittedGenerator, export_result
from oscfast.export.graph import ExportFormat
from oscfast.export.stopper import (
    RISK_INPUTS,
    RISK_OUTPUTS,
    STOPPER_INPUTS,
    STOPPER_OUTPUTS,
    TWIN_RISK_INPUTS,
    RiskStep,
    StopperStep,
    default_half_window,
    export_risk_step,
    export_stopper,
    initial_state,
)

__all__ = [
    "ExportFormat",
    "FittedGenerator",
    "RISK_INPUTS",
    "RISK_OUTPUTS",
    "RiskStep",
    "STOPPER_INPUTS",
    "STOPPER_OUTPUTS",
    "StopperStep",
    "TWIN_RISK_INPUTS",
    "default_half_window",
    "export_result",
    "export_risk_step",
    "export_stopper",
    "initial_state",
]
