"""The DIP loop for K fits at once, with every signal computed on the device (method.md 1-8).

One training step does everything on the device for each of K fits (stacked parameters,
:mod:`oscfast.fits`): perturb z, forward, loss against the fit's target, backward, Adam, the
exponential average, the signals the stop rules read (loss, P of the raw and averaged output,
ES variances, the change of the averaged output, metrics against a reference), and the ring of
recent outputs, each written at the fit's iteration index of preallocated buffers. On CUDA the
step is captured once in a CUDA graph and replayed; on the CPU the same function runs eagerly.
The host reads the new values every ``sync_every`` iterations and feeds the stop rules.

A *fit* is one DIP optimisation (:class:`FitSpec`: its task, seed, whether its target carries
the pseudo-noise). A *watch* attaches a stop rule to fits (:class:`Watch`): whose image it
returns, which fit carries the probe and which is subtracted from it (the twin). One watch
drives the run (its image is returned, its stop ends the run); the others only record their
decisions (evaluation). The engine knows neither the task nor the rule behind the protocols.

The engine is three layers: :mod:`~oscfast.engine.specs` (value types: options, fits, watches,
records), :mod:`~oscfast.engine.device` (the K fits' device state, the step, the CUDA graph) and
:mod:`~oscfast.engine.loop` (the host loop: groups, syncs, rules, refills, checkpoints).
"""
from __future__ import annotations

from oscfast.engine.device import DeviceClock, cuda_graph_unavailable_reason, device_clock
from oscfast.engine.loop import BatchRun, Group, run_fits
from oscfast.engine.specs import (
    ENGINE_SIGNALS,
    CanvasGeometry,
    EngineOptions,
    FitSpec,
    GeneratorSnapshot,
    ResumePoint,
    RunRecord,
    SyncInfo,
    Watch,
    canvas_geometry,
    make_input,
    resume_points_for,
    ring_size_for,
)

__all__ = [
    "ENGINE_SIGNALS",
    "BatchRun",
    "CanvasGeometry",
    "DeviceClock",
    "EngineOptions",
    "FitSpec",
    "GeneratorSnapshot",
    "Group",
    "ResumePoint",
    "RunRecord",
    "SyncInfo",
    "Watch",
    "canvas_geometry",
    "cuda_graph_unavailable_reason",
    "device_clock",
    "make_input",
    "resume_points_for",
    "ring_size_for",
    "run_fits",
]
