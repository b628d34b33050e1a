"""Export the OSC stopper step and fitted generators as graphs (ONNX or ``torch.export``).

Two things leave Python here:

- :class:`StopperStep`, the per-iteration math of the stopper as a ``torch.nn.Module``:
  P_t (method.md section 3), the trailing mean and the chord-frame parabola fit over a fixed
  window (section 4), as plain tensor ops in float64. :func:`export_stopper` writes it as ONNX
  (``torch.onnx.export(..., dynamo=True)``, the ``torch.export``-based exporter) or as a
  ``torch.export`` program (``.pt2``). The graph is stateless: the caller carries the state.
- the generator of a finished restoration, rebuilt at the chosen iteration and written by
  :func:`export_result` so that running it reproduces the returned raw image.

Where the stop rule lives: the graph computes ``(P_t, Pbar_t, kappa)`` and the next state;
the decision (early-minimum guard, curvature threshold from the jitter of P, running argmax,
patience; section 5) is branchy bookkeeping on scalars with a history and stays in the caller,
in :class:`StopRule`, which replays :meth:`oscfast.stopping.OSCStopper.update_p` (fed one value
per call) decision for decision.

TorchScript is deprecated in current torch; nothing here builds on it (see docs/export.md).
"""
from __future__ import annotations

import bisect
import copy
import logging
import math
import operator
import warnings
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from oscfast.config import ResolvedStop, StopConfig
from oscfast.stopping import KneeDecision, StopDecision, curvature_standard_error

if TYPE_CHECKING:  # pragma: no cover
    from oscfast.api import Restoration
    from oscfast.engine import GeneratorSnapshot

__all__ = [
    "RISK_INPUTS",
    "RISK_OUTPUTS",
    "RiskStep",
    "STOPPER_INPUTS",
    "STOPPER_OUTPUTS",
    "ExportFormat",
    "FittedGenerator",
    "StopRule",
    "StopperStep",
    "export_result",
    "export_stopper",
    "initial_state",
]

ExportFormat = Literal["onnx", "pt2"]
_FORMATS: tuple[str, ...] = ("onnx", "pt2")

#: names of the stopper graph's inputs and outputs, in order
RISK_INPUTS = ("measured", "target", "noise")
RISK_OUTPUTS = ("p", "loss")
STOPPER_INPUTS = ("measured", "noise", "window", "count")
STOPPER_OUTPUTS = ("p", "p_smooth", "curvature", "next_window", "next_count")


# --------------------------------------------------------------------------------------------
# the per-step math
# --------------------------------------------------------------------------------------------
class StopperStep(nn.Module):
    """One OSC step as a stateless module: P_t, the smoothed P and the chord curvature.

    The state is a window of the last ``2L + w - 1`` raw P values (oldest first; zeros before
    the first iteration) and the step counter (index of the iteration being fed). Appending
    P_t gives ``2L + w`` raw values, enough for the trailing means (method.md section 4,
    step 1) of the ``2L + 1`` points of the newest complete segment. Each step yields the
    curvature of the segment centred ``L`` iterations back, as
    :class:`~oscfast.kernels.IncrementalCurvature` does, or NaN while fewer than ``2L + 1``
    values have been fed (count < 2L).

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

        kappa = _chord_frame_curvature(pbar, self.u)
        ready = count >= 2 * half_window
        kappa = torch.where(ready, kappa, torch.full_like(kappa, math.nan))
        return p, pbar[-1], kappa, values[1:], count + 1

    def extra_repr(self) -> str:
        return f"half_window={self.half_window}, smoothing={self.smoothing}, t_max={self.t_max}"


def _chord_frame_curvature(pbar: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """kappa = 2a of the parabola fitted in the chord frame (method.md section 4, steps 3-5).

    The same arithmetic as the numba kernel: rotate so the chord is the x-axis (cos and sin
    of the chord angle straight from its components, ONNX has no atan2), centre the rotated
    points (a is shift invariant; centring conditions the normal equations), and solve the
    3x3 normal equations for a by Cramer's rule.
    """
    dv_k = pbar - pbar[0]
    du = u[-1]
    dv = dv_k[-1]
    chord = torch.sqrt(du * du + dv * dv)
    cos, sin = du / chord, dv / chord
    x = cos * u + sin * dv_k
    y = cos * dv_k - sin * u
    x = x - x.mean()
    y = y - y.mean()
    x2 = x * x
    s0 = float(u.shape[0])
    s1, s2, s3, s4 = x.sum(), x2.sum(), (x2 * x).sum(), (x2 * x2).sum()
    t0, t1, t2 = y.sum(), (x * y).sum(), (x2 * y).sum()
    # [[s4 s3 s2] [s3 s2 s1] [s2 s1 s0]] (a b c)^T = (t2 t1 t0)^T
    m00 = s2 * s0 - s1 * s1
    m01 = s3 * s0 - s1 * s2
    m02 = s3 * s1 - s2 * s2
    det = s4 * m00 - s3 * m01 + s2 * m02
    det_a = t2 * m00 - s3 * (t1 * s0 - s1 * t0) + s2 * (t1 * s1 - s2 * t0)
    return 2.0 * det_a / det


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


# --------------------------------------------------------------------------------------------
# the decision, in the caller
# --------------------------------------------------------------------------------------------
class StopRule:
    """The online knee decision (method.md section 5), driven by an exported stopper's outputs.

    Pure Python, no numba, no torch: feed it each step's ``(p, p_smooth, curvature)`` from
    the graph. It keeps the running argmin of Pbar (the early-minimum guard: a segment that
    starts before it is ignored), takes as candidates only curvatures above the threshold
    ``max(min_curvature, significance * jitter SE)`` (the jitter of P is estimated from the
    raw P values so far, as :meth:`OSCStopper.curvature_noise` does), keeps their running
    argmax t* and says stop once ``patience`` centres have passed without a new maximum;
    after that its choice is frozen. This replays :meth:`oscfast.stopping.OSCStopper.update_p`
    fed one value per call (as a hand-written loop does), so the same curve gives the same
    ``best_iteration`` and ``stop_iteration``. (The engine feeds ``sync_every`` values per
    call, which refreshes the jitter estimate less often: its choice can differ slightly.)

    Args:
        max_iterations: the loop's iteration cap (must be the graph's ``t_max``).
        config: a :class:`StopConfig` (rule ``"knee"`` or ``"paper"``).
        half_window, patience, min_curvature: override ``config`` fields, as in
            :class:`OSCStopper`.

    Example:
        >>> rule = StopRule(max_iterations=300, half_window=20)
        >>> rule.update(p=0.0, p_smooth=0.0, curvature=math.nan).should_stop
        False
    """

    def __init__(
        self,
        *,
        max_iterations: int,
        config: StopConfig | None = None,
        half_window: int | None = None,
        patience: int | None = None,
        min_curvature: float | None = None,
    ) -> None:
        config = config or StopConfig(rule="knee")
        overrides = {
            key: value
            for key, value in dict(half_window=half_window, patience=patience, min_curvature=min_curvature).items()
            if value is not None
        }
        if overrides:
            config = replace(config, **overrides)
        if config.rule == "risk":
            config = replace(config, rule="knee")  # the graph computes the knee rule's curvature
        if max_iterations < 1:
            raise ValueError(f"max_iterations must be >= 1, got {max_iterations}")
        self.config = config
        self.settings: ResolvedStop = config.resolve(max_iterations)
        self.iterations_seen = 0
        self._decision = KneeDecision(self.settings)
        self._last_p = math.nan
        self._steps: list[float] = []  # |P_t - P_{t-1}|, kept sorted for the median

    best_iteration = property(lambda self: self._decision.best_iteration, doc="t* (None while no knee).")
    best_curvature = property(lambda self: self._decision.best_curvature, doc="Curvature at t*.")
    should_stop = property(lambda self: self._decision.should_stop, doc="The rule has fired.")
    stop_iteration = property(lambda self: self._decision.stop_iteration, doc="Iterations run when it fired.")

    @property
    def half_window(self) -> int:
        """L, the lag of the curvature (must match the exported graph)."""
        return self.settings.half_window

    def curvature_noise(self) -> float:
        """Standard error of kappa from the jitter of P alone (as OSCStopper computes it)."""
        median = self._median_step()
        return math.inf if median is None else curvature_standard_error(median, self.settings)

    def _median_step(self) -> float | None:
        if self.iterations_seen < 3:
            return None
        steps, middle = self._steps, len(self._steps) // 2
        return steps[middle] if len(steps) % 2 else (steps[middle - 1] + steps[middle]) / 2

    def update(self, p: float, p_smooth: float, curvature: float) -> StopDecision:
        """Advance by one iteration with the graph's outputs of that iteration.

        Args:
            p: P_t.
            p_smooth: Pbar_t, the trailing mean at this iteration.
            curvature: kappa of iteration ``t - L`` (NaN while not defined).

        Raises:
            ValueError: ``p`` is not finite (the loss diverged?).
        """
        p, p_smooth, curvature = float(p), float(p_smooth), float(curvature)
        if not math.isfinite(p):
            raise ValueError(f"P must be finite (the loss diverged?), got {p}")
        newest = self.iterations_seen
        if newest > 0:
            bisect.insort(self._steps, abs(p - self._last_p))
        self._last_p = p
        self.iterations_seen += 1
        threshold = self._decision.threshold(self._median_step())
        new_best = self._decision.observe(newest, p_smooth, curvature, threshold)
        centre = newest - self.settings.half_window
        return StopDecision(
            iteration=newest,
            p=p,
            curvature=curvature if centre >= self.settings.half_window else math.nan,
            curvature_iteration=centre,
            best_iteration=self.best_iteration,
            best_curvature=self.best_curvature,
            should_stop=self.should_stop,
            new_best=new_best,
        )

    def __repr__(self) -> str:
        return (
            f"StopRule(half_window={self.half_window}, patience={self.settings.patience}, "
            f"iterations_seen={self.iterations_seen}, best_iteration={self.best_iteration}, "
            f"should_stop={self.should_stop})"
        )


# --------------------------------------------------------------------------------------------
# export of the stopper
# --------------------------------------------------------------------------------------------
def export_stopper(
    path: str | Path,
    *,
    t_max: float,
    image_shape: tuple[int, int, int],
    half_window: int | None = None,
    smoothing: int = 10,
    format: ExportFormat = "onnx",
) -> Path:
    """Write the per-step stopper math (:class:`StopperStep`) as ONNX or a ``.pt2`` program.

    The graph's inputs are ``measured`` and ``noise`` (float32, shape ``(1, *image_shape)``),
    ``window`` (float64, length ``2L + w - 1``) and ``count`` (int64 scalar); its outputs
    ``p``, ``p_smooth``, ``curvature``, ``next_window``, ``next_count``. Feed the state
    outputs back in; drive the decision with :class:`StopRule`. The parameters are recorded
    as metadata (ONNX ``metadata_props`` / ``.pt2`` extra file ``oscfast.json``): keys
    ``oscfast.half_window``, ``oscfast.smoothing``, ``oscfast.t_max``, ``oscfast.image_shape``.

    Args:
        path: file to write (parent folders are created).
        t_max: the loop's iteration cap (scales the iteration axis, method.md section 4).
        image_shape: (C, H, W) of the operator output A(x) (the measurement, e.g. the
            low-resolution size for super-resolution).
        half_window: L; None -> the default for ``t_max`` (:meth:`StopConfig.resolve`).
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
    fmt = _check_format(format)
    shape = _check_image_shape(image_shape)
    try:
        t_max = float(t_max)
    except (TypeError, ValueError):
        raise ValueError(f"t_max must be a number (the iteration cap), got {t_max!r}") from None
    if not (t_max > 0 and math.isfinite(t_max)):
        raise ValueError(f"t_max must be a finite number > 0 (the iteration cap), got {t_max!r}")
    if half_window is None:
        half_window = StopConfig().resolve(max(1, round(t_max))).half_window
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
    return _write(step, args, path, fmt, metadata, input_names=STOPPER_INPUTS, output_names=STOPPER_OUTPUTS)


class RiskStep(nn.Module):
    """The per-step quantities of the "risk" rule: P_t = <A(x_t), n>/<n, n> and the loss
    mean((A(x_t) - (y + n))^2), both in float64. The decision (running minimum of the
    smoothed risk loss + c P, patience) stays in the caller:
    :class:`oscfast.stopping.RiskStopper` fed ``update_p(p, loss)``.
    """

    def forward(self, measured: torch.Tensor, target: torch.Tensor, noise: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        m, n = measured.to(torch.float64), noise.to(torch.float64)
        p = torch.sum(m * n) / torch.sum(n * n)
        loss = torch.mean((m - target.to(torch.float64)) ** 2)
        return p, loss


def export_risk_step(path: str | Path, *, image_shape: tuple[int, int, int], format: ExportFormat = "onnx") -> Path:
    """Write :class:`RiskStep` (inputs ``measured``, ``target`` = y + n, ``noise``; outputs
    ``p``, ``loss``) as ONNX or ``.pt2``; drive the decision with ``RiskStopper``.

    Raises:
        ValueError: unknown format or bad image shape.
    """
    fmt = _check_format(format)
    shape = _check_image_shape(image_shape)
    args = tuple(torch.full((1, *shape), value, dtype=torch.float32) for value in (0.0, 0.5, 1.0))
    metadata = {"oscfast.graph": "risk_step", "oscfast.image_shape": ",".join(str(v) for v in shape)}
    return _write(RiskStep(), args, path, fmt, metadata, input_names=RISK_INPUTS, output_names=RISK_OUTPUTS)


# --------------------------------------------------------------------------------------------
# export of a fitted generator
# --------------------------------------------------------------------------------------------
class _BatchStatisticsNorm(nn.Module):
    """BatchNorm2d that always normalises with the statistics of its input batch.

    DIP keeps its BatchNorm layers in training mode (the single image is the batch), so the
    image at iteration t was computed with batch statistics, never with running ones.
    """

    def __init__(self, norm: nn.BatchNorm2d) -> None:
        super().__init__()
        self.weight = norm.weight
        self.bias = norm.bias
        self.eps = norm.eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.batch_norm(x, None, None, self.weight, self.bias, training=True, eps=self.eps)


def _use_batch_statistics(module: nn.Module) -> None:
    for name, child in module.named_children():
        if isinstance(child, nn.modules.batchnorm._BatchNorm):
            setattr(module, name, _BatchStatisticsNorm(child))
        else:
            _use_batch_statistics(child)


class FittedGenerator(nn.Module):
    """A DIP generator frozen at one iteration, with its input baked in; no arguments.

    ``forward()`` returns ``net(z_t)`` cropped to the image: the raw output of that
    iteration. BatchNorm layers use batch statistics as in training (DIP never uses running
    statistics). The perturbed input z_t = z + reg_noise_std * eps_t of that iteration is a
    buffer (an ONNX initializer once exported), so the exported graph takes no input.

    Args:
        snapshot: :class:`~oscfast.engine.GeneratorSnapshot` from
            ``run_dip(..., snapshot_iteration=t)``.

    Shape:
        - Output: :math:`(1, C, H, W)`.
    """

    def __init__(self, snapshot: GeneratorSnapshot) -> None:
        super().__init__()
        net = copy.deepcopy(snapshot.net).cpu().float().to(memory_format=torch.contiguous_format)
        _use_batch_statistics(net)
        self.net = net.eval().requires_grad_(False)
        self.register_buffer("net_input", snapshot.net_input.detach().cpu().float().contiguous())
        self.iteration = snapshot.iteration
        self.top, self.left = snapshot.top, snapshot.left
        self.height, self.width = snapshot.height, snapshot.width

    def forward(self) -> torch.Tensor:
        out = self.net(self.net_input)
        return out[:, :, self.top : self.top + self.height, self.left : self.left + self.width]


def export_result(result: Restoration, path: str | Path, *, format: ExportFormat = "onnx") -> Path:
    """Export the generator of a finished restoration, fitted up to ``result.stop_iteration``.

    Running the exported graph (no inputs) gives the raw output of that iteration,
    ``result.raw_image`` (as (1, C, H, W) instead of HxWxC), also when the result returned
    the exponential average (``output="ema"``), which no single network state produces, and
    before the task's finishing (clipping, known pixels put back). The network is not stored in the
    result, so it is rebuilt by re-running the engine to that iteration with the same task,
    configuration and seed (``run_dip(..., snapshot_iteration=result.stop_iteration)``): this
    costs ``stop_iteration + 1`` more iterations. CPU runs are deterministic for a seed and
    reproduce the result exactly; on CUDA (non-deterministic kernels) and with bf16 autocast
    (the export runs in float32) the reproduction is only approximate, and a warning says by
    how much.

    The graph's BatchNorm layers compute batch statistics, as DIP does in training mode; the
    fixed network input of that iteration is baked in as an initializer.

    Args:
        result: what :func:`oscfast.restore` returned.
        path: file to write (parent folders are created).
        format: ``"onnx"`` or ``"pt2"`` (``torch.export.load(path).module()()``).

    Returns:
        The path written.

    Raises:
        ValueError: unknown format, or a result that does not carry its task and engine
            options (not made by :func:`oscfast.restore`).

    Example:
        >>> result = restore("noisy.png", task="denoise")  # doctest: +SKIP
        >>> export_result(result, "generator.onnx")  # doctest: +SKIP
    """
    from oscfast.engine import run_dip

    fmt = _check_format(format)
    if result.task_object is None or result.engine_options is None:
        raise ValueError(
            "this Restoration has no task_object/engine_options (not made by oscfast.restore); "
            "export_result needs them to rebuild the generator"
        )
    record = run_dip(
        result.task_object,
        result.config,
        result.stop_config,
        options=result.engine_options,
        snapshot_iteration=int(result.stop_iteration),
    )
    snapshot = record.generator_snapshot
    assert snapshot is not None
    generator = FittedGenerator(snapshot)
    with torch.no_grad():
        rebuilt = generator()
    expected = torch.from_numpy(np.ascontiguousarray(result.raw_image)).permute(2, 0, 1)[None]
    if rebuilt.shape != expected.shape:
        raise ValueError(
            f"the rebuilt generator outputs {tuple(rebuilt.shape)}, the result's raw image is "
            f"{tuple(expected.shape)}: was the result changed after restore()?"
        )
    drift = float((rebuilt - expected).abs().max())
    if drift > 1e-4:
        warnings.warn(
            f"the rebuilt generator differs from result.raw_image by up to {drift:.2e} "
            f"(device {result.device}, precision {result.engine_options.precision}): "
            "reproduction by re-running is only approximate there",
            RuntimeWarning,
            stacklevel=2,
        )
    metadata = {
        "oscfast.graph": "fitted_generator",
        "oscfast.iteration": str(snapshot.iteration),
        "oscfast.task": str(result.task),
        "oscfast.seed": str(result.engine_options.seed),
        "oscfast.image_shape": ",".join(str(v) for v in expected.shape[1:]),
        "oscfast.max_abs_diff_to_result": f"{drift:.3e}",
    }
    return _write(generator, (), path, fmt, metadata, input_names=(), output_names=("image",))


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------
def _check_format(format: str) -> str:
    if format not in _FORMATS:
        raise ValueError(f"unknown export format {format!r}; expected one of {list(_FORMATS)}")
    return format


def _check_image_shape(image_shape: tuple[int, ...]) -> tuple[int, int, int]:
    try:
        shape = tuple(operator.index(v) for v in image_shape)
    except TypeError:
        raise ValueError(f"image_shape must be (C, H, W) integers, got {image_shape!r}") from None
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"image_shape must be (C, H, W) with positive sizes, got {image_shape!r}")
    return shape  # type: ignore[return-value]


def _write(
    module: nn.Module,
    args: tuple[torch.Tensor, ...],
    path: str | Path,
    fmt: str,
    metadata: dict[str, str],
    *,
    input_names: tuple[str, ...],
    output_names: tuple[str, ...],
) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    module = module.eval()
    if fmt == "pt2":
        import json

        program = torch.export.export(module, args, strict=False)
        torch.export.save(program, path, extra_files={"oscfast.json": json.dumps(metadata)})
        return path
    # the exporter's own chatter (deprecations inside torch, "torchvision is not installed")
    # is not the user's business
    registry_log = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = registry_log.level
    registry_log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            program = torch.onnx.export(
                module,
                args,
                dynamo=True,
                input_names=list(input_names),
                output_names=list(output_names),
                external_data=False,
                verbose=False,
            )
    finally:
        registry_log.setLevel(level)
    assert program is not None
    program.model.metadata_props.update(metadata)
    program.save(path, external_data=False)
    return path
