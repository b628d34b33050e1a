"""The stopper's per-step math as graphs, for loops that are not in Python.

- :class:`StopperStep` (knee rule): P_t (method.md section 3), the trailing mean and the
  chord-frame curvature over a fixed window (section 4) as tensor ops in float64, stateless: the
  caller carries a window of recent P values and a counter.
- :class:`RiskStep` (risk rule): P and the loss of one iteration, for the inline probe (one fit)
  or the twin probe (both fits' outputs: P_twin = <A(x_B) - A(x_A), n> / <n, n>, section 8).

The decision (threshold, argmax or minimum, patience) is bookkeeping on scalars with a history;
it stays in the caller: in Python, feed the graph's ``p`` (and ``loss``) to the same rule objects
the engine uses (:class:`oscfast.stopping.KneeRule`, :class:`oscfast.stopping.RiskRule`), which
follow the :class:`oscfast.stopping.StopRule` protocol; elsewhere re-implement that bookkeeping
(docs/export.md spells it out). TorchScript is deprecated in current torch; nothing here uses it.
"""
from __future__ import annotations

import math
import operator
from pathlib import Path

import numpy as np
import torch
from torch import nn

from oscfast.export.graph import ExportFormat, check_format, check_image_shape, write_graph
from oscfast.kernels.chord import chord_frame_curvature

__all__ = [
    "RISK_INPUTS",
    "RISK_OUTPUTS",
    "STOPPER_INPUTS",
    "STOPPER_OUTPUTS",
    "TWIN_RISK_INPUTS",
    "RiskStep",
    "StopperStep",
    "default_half_window",
    "export_risk_step",
    "export_stopper",
    "initial_state",
]

#: names of the graphs' inputs and outputs, in order
STOPPER_INPUTS = ("measured", "noise", "window", "count")
STOPPER_OUTPUTS = ("p", "p_smooth", "curvature", "next_window", "next_count")
RISK_INPUTS = ("measured", "target", "noise")
TWIN_RISK_INPUTS = ("measured", "target", "noise", "probe_measured")
RISK_OUTPUTS = ("p", "loss")


def default_half_window(t_max: float) -> int:
    """The knee rule's default L for a cap (method.md section 7): max(50, round(cap / 7.5))."""
    return max(50, round(max(1.0, t_max) / 7.5))


class StopperStep(nn.Module):
    """One knee-rule step as a stateless module: P_t, the smoothed P and the chord curvature.

    The state is a window of the last ``2L + w - 1`` raw P values (oldest first; zeros before
    the first iteration) and the step counter (index of the iteration being fed). Appending
    P_t gives ``2L + w`` raw values, enough for the trailing means (method.md section 4,
    step 1) of the ``2L + 1`` points of the newest complete segment. Each step yields the
    curvature of the segment centred ``L`` iterations back, as
    :class:`~oscfast.kernels.IncrementalCurvature` does, or NaN while fewer than ``2L + 1``
    values have been fed (count < 2L). The fit is :func:`oscfast.kernels.chord_frame_curvature`,
    the same lines as the numpy reference.

    All arithmetic after the projection is float64 (onnxruntime's CPU provider runs every op
    used here in double). Every non-integer constant is a float64 buffer: the exporter stores
    Python float scalars rounded to float32, which costs ~1e-8 relative in kappa.

    Args:
        half_window: L >= 2.
        smoothing: w >= 1, the trailing-mean length.
        t_max: iteration cap (> 0) scaling the u axis.

    Shape:
        - measured: the operator output A(x_t), any shape, float32 (or float64).
        - noise: the pseudo-noise n, same shape as ``measured``.
        - window: :math:`(2L + w - 1,)` float64.
        - count: :math:`()` int64, number of P values fed before this one.
        - Outputs: ``p`` (), ``p_smooth`` () (Pbar_t), ``curvature`` () (kappa of iteration
          count - L, NaN while count < 2L), ``next_window`` :math:`(2L + w - 1,)`,
          ``next_count`` () = count + 1.

    Example:
        >>> step = StopperStep(2, 1, 10.0)
        >>> window, count = (torch.from_numpy(a) for a in initial_state(2, 1))
        >>> noise = torch.ones(1, 1, 2, 2, dtype=torch.float64)
        >>> for s in range(5):
        ...     p, p_smooth, kappa, window, count = step(0.005 * (s - 2) ** 2 * noise, noise, window, count)
        >>> round(float(kappa), 9), int(count)
        (1.0, 5)
    """

    def __init__(self, half_window: int, smoothing: int, t_max: float) -> None:
        super().__init__()
        half_window, smoothing, t_max = _check_stopper_params(half_window, smoothing, t_max)
        self.half_window = half_window
        self.smoothing = smoothing
        self.t_max = t_max
        segment = 2 * half_window + 1
        span = 2 * half_window + smoothing  # raw values needed for `segment` trailing means
        self.state_length = span - 1
        # position k of the appended window holds iteration count - (span - 1) + k
        self.register_buffer("offsets", torch.arange(span, dtype=torch.int64) - (span - 1), persistent=False)
        gather = np.arange(segment)[:, None] + np.arange(smoothing)[None, :]
        self.register_buffer("smooth_index", torch.from_numpy(gather), persistent=False)
        # u_s - u_{t-L} = k / t_max (method.md section 4, step 2); u[-1] is the chord's du
        u = np.arange(segment, dtype=np.float64) / t_max
        self.register_buffer("u", torch.from_numpy(u), persistent=False)

    def forward(
        self, measured: torch.Tensor, noise: torch.Tensor, window: torch.Tensor, count: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Advance by one iteration; see the class docstring for shapes."""
        half_window, smoothing = self.half_window, self.smoothing
        # method.md section 3: P_t = <A(x_t), n> / <n, n>, accumulated in float64
        measured64 = measured.to(torch.float64)
        noise64 = noise.to(torch.float64)
        p = torch.sum(measured64 * noise64) / torch.sum(noise64 * noise64)

        values = torch.cat([window, p.reshape(1)])
        iteration = count + self.offsets
        values = torch.where(iteration >= 0, values, torch.zeros_like(values))
        # section 4, step 1: trailing mean over the values that exist (fewer than w at the start)
        sums = values[self.smooth_index].sum(dim=1)
        counts = torch.clamp(iteration[smoothing - 1 :] + 1, min=1, max=smoothing).to(torch.float64)
        pbar = sums / counts

        kappa = chord_frame_curvature(pbar, self.u)
        ready = count >= 2 * half_window
        kappa = torch.where(ready, kappa, torch.full_like(kappa, math.nan))
        return p, pbar[-1], kappa, values[1:], count + 1

    def extra_repr(self) -> str:
        return f"half_window={self.half_window}, smoothing={self.smoothing}, t_max={self.t_max}"


def initial_state(half_window: int, smoothing: int) -> tuple[np.ndarray, np.ndarray]:
    """The stopper graph's state before the first iteration: ``(window, count)``.

    Returns:
        A float64 zero window of length ``2L + w - 1`` and an int64 zero-d count.

    Example:
        >>> window, count = initial_state(20, 5)
        >>> window.shape, window.dtype, count.dtype
        ((44,), dtype('float64'), dtype('int64'))
    """
    half_window, smoothing, _ = _check_stopper_params(half_window, smoothing, 1.0)
    return np.zeros(2 * half_window + smoothing - 1, dtype=np.float64), np.array(0, dtype=np.int64)


def _check_stopper_params(half_window: int, smoothing: int, t_max: float) -> tuple[int, int, float]:
    for name, value in (("half_window", half_window), ("smoothing", smoothing)):
        try:
            operator.index(value)
        except TypeError:
            raise TypeError(f"{name} must be an int, got {value!r}") from None
    if half_window < 2:
        raise ValueError(f"half_window (L) must be >= 2, got {half_window}")
    if smoothing < 1:
        raise ValueError(f"smoothing (w) must be >= 1, got {smoothing}")
    try:
        t_max_f = float(t_max)
    except (TypeError, ValueError):
        raise TypeError(f"t_max must be a number, got {t_max!r}") from None
    if not (t_max_f > 0 and math.isfinite(t_max_f)):
        raise ValueError(f"t_max must be a finite number > 0, got {t_max!r}")
    return int(half_window), int(smoothing), t_max_f


def export_stopper(
    path: str | Path,
    *,
    t_max: float,
    image_shape: tuple[int, int, int],
    half_window: int | None = None,
    smoothing: int = 10,
    format: ExportFormat = "onnx",
) -> Path:
    """Write the knee rule's per-step math (:class:`StopperStep`) as ONNX or a ``.pt2`` program.

    The graph's inputs are ``measured`` and ``noise`` (float32, shape ``(1, *image_shape)``),
    ``window`` (float64, length ``2L + w - 1``) and ``count`` (int64 scalar); its outputs
    ``p``, ``p_smooth``, ``curvature``, ``next_window``, ``next_count``. Feed the state
    outputs back in; drive the decision with :class:`oscfast.stopping.KneeRule` fed ``p``.
    The parameters are recorded as metadata (ONNX ``metadata_props`` / ``.pt2`` extra file
    ``oscfast.json``): keys ``oscfast.half_window``, ``oscfast.smoothing``, ``oscfast.t_max``,
    ``oscfast.image_shape``.

    Args:
        path: file to write (parent folders are created).
        t_max: the loop's iteration cap (scales the iteration axis, method.md section 4).
        image_shape: (C, H, W) of the operator output A(x) (the measurement, e.g. the
            low-resolution size for super-resolution).
        half_window: L; None -> :func:`default_half_window`.
        smoothing: w, the trailing-mean length.
        format: ``"onnx"`` (``torch.onnx.export(..., dynamo=True)``) or ``"pt2"``
            (``torch.export.save``; load with ``torch.export.load(path).module()``).

    Returns:
        The path written.

    Raises:
        ValueError: unknown format, bad image shape or bad parameters.

    Example:
        >>> export_stopper("stopper.onnx", t_max=3000, image_shape=(3, 512, 512))  # doctest: +SKIP
    """
    fmt = check_format(format)
    shape = check_image_shape(image_shape)
    try:
        t_max = float(t_max)
    except (TypeError, ValueError):
        raise ValueError(f"t_max must be a number (the iteration cap), got {t_max!r}") from None
    if not (t_max > 0 and math.isfinite(t_max)):
        raise ValueError(f"t_max must be a finite number > 0 (the iteration cap), got {t_max!r}")
    if half_window is None:
        half_window = default_half_window(t_max)
    step = StopperStep(half_window, smoothing, t_max).eval()
    window, count = initial_state(step.half_window, step.smoothing)
    args = (
        torch.zeros((1, *shape), dtype=torch.float32),
        torch.ones((1, *shape), dtype=torch.float32),
        torch.from_numpy(window),
        torch.from_numpy(count),
    )
    metadata = {
        "oscfast.graph": "stopper_step",
        "oscfast.half_window": str(step.half_window),
        "oscfast.smoothing": str(step.smoothing),
        "oscfast.t_max": repr(step.t_max),
        "oscfast.image_shape": ",".join(str(v) for v in shape),
        "oscfast.state_length": str(step.state_length),
    }
    return write_graph(step, args, path, fmt, metadata, input_names=STOPPER_INPUTS, output_names=STOPPER_OUTPUTS)


class RiskStep(nn.Module):
    """The per-step signals of the risk rule, in float64.

    Inline probe (one fit on y + n): ``forward(measured, target, noise)`` with ``target`` =
    y + n gives P = <A(x), n> / <n, n> and loss = mean((A(x) - target)^2).

    Twin probe (``twin=True``): ``forward(measured, target, noise, probe_measured)``, where
    ``measured`` = A(x_A) of the returned fit (trained on ``target`` = y) and
    ``probe_measured`` = A(x_B) of the fit trained on y + n, gives
    P_twin = <A(x_B) - A(x_A), n> / <n, n> and fit A's loss (method.md section 8).

    Feed ``p`` and ``loss`` (and the same for the averaged output, if kept) to
    :class:`oscfast.stopping.RiskRule`.
    """

    def __init__(self, *, twin: bool = False) -> None:
        super().__init__()
        self.twin = twin

    def forward(
        self, measured: torch.Tensor, target: torch.Tensor, noise: torch.Tensor, probe_measured: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        m, n = measured.to(torch.float64), noise.to(torch.float64)
        loss = torch.mean((m - target.to(torch.float64)) ** 2)
        if self.twin:
            if probe_measured is None:
                raise ValueError("the twin step needs probe_measured = A(x_B)")
            m = probe_measured.to(torch.float64) - m
        p = torch.sum(m * n) / torch.sum(n * n)
        return p, loss


def export_risk_step(
    path: str | Path, *, image_shape: tuple[int, int, int], probe: str = "inline", format: ExportFormat = "onnx"
) -> Path:
    """Write :class:`RiskStep` as ONNX or ``.pt2``: inputs ``measured``, ``target``, ``noise``
    (and ``probe_measured`` for ``probe="twin"``); outputs ``p`` and ``loss``. Drive the
    decision with :class:`oscfast.stopping.RiskRule`.

    Raises:
        ValueError: unknown format, probe or image shape.
    """
    fmt = check_format(format)
    shape = check_image_shape(image_shape)
    if probe not in ("inline", "twin"):
        raise ValueError(f"unknown probe {probe!r}; expected 'inline' or 'twin'")
    twin = probe == "twin"
    values = (0.0, 0.5, 1.0, 0.25) if twin else (0.0, 0.5, 1.0)
    args = tuple(torch.full((1, *shape), value, dtype=torch.float32) for value in values)
    metadata = {"oscfast.graph": "risk_step", "oscfast.probe": probe, "oscfast.image_shape": ",".join(str(v) for v in shape)}
    names = TWIN_RISK_INPUTS if twin else RISK_INPUTS
    return write_graph(RiskStep(twin=twin), args, path, fmt, metadata, input_names=names, output_names=RISK_OUTPUTS)
