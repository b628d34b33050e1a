"""The measurement-noise level as a stop rule sees it: bounds from the run itself, the risk's
sensitivity to a wrong level, and the error interval a level interval implies (pure functions).

docs/twin-probe.md, "The level" derives everything here. In short, for the twin probe's SURE
risk (method.md section 8) ``risk(t; s^2) = loss(t) - rho s^2 (1 - 2 P(t))``:

- the risk estimates ``rho`` times a mean squared error, which is never negative, so a level
  with ``risk(t; s^2) < 0`` at some iteration is too high: ``s^2 <= loss(t) / (rho (1 - 2 P(t)))``
  for every ``t`` with ``P(t) < 1/2``. Its running minimum (:func:`sure_level_bound`) is an upper
  bound of the level that needs nothing but the rule's own signals; its excess over the truth
  is ``MSE(t) / (1 - 2 P(t))`` at the minimising iteration (about +10% in level on the recorded
  F16 run at 25/255, where Donoho's estimate is +5%);
- with fit B's loss too, ``(loss_B - loss_A) / s_n^2`` measures ``D = tr((I - J)^T (I - J)) / N``
  and ``loss_A / D`` is a second upper bound (:func:`twin_level_ratio`; the engine does not
  pass fit B's loss to a rule, so it is a diagnostic of recorded runs);
- a level wrong by ``delta`` in ``s^2`` adds ``-rho delta (1 - 2 P(t))`` to the risk, which
  moves its minimum by ``-2 delta P'(t*) / R''(t*)`` iterations (:func:`predicted_choice_shift`);
- the risk is linear in ``s^2``, so a level interval maps to an error interval
  (:func:`error_interval`) and a PSNR interval (:func:`psnr_interval`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = [
    "LevelEstimate",
    "PSNREstimate",
    "error_interval",
    "estimate_psnr",
    "level_bound_values",
    "level_interval",
    "predicted_choice_shift",
    "psnr_interval",
    "sure_level_bound",
    "sure_risk",
    "trailing_mean",
    "twin_level_ratio",
]


@dataclass(frozen=True)
class LevelEstimate:
    """A noise level with the interval it is known within.

    Attributes:
        value: the level the rule uses (std of the measurement noise, images in [0, 1]).
        low, high: the interval the true (effective) level lies in, as far as measured.
        source: where the value came from (``"given"``, ``"observation"``, ``"run bound"``).
    """

    value: float
    low: float
    high: float
    source: str

    def __post_init__(self) -> None:
        if not (0 <= self.low <= self.value <= self.high):
            raise ValueError(f"need 0 <= low <= value <= high, got {self.low}, {self.value}, {self.high}")


def trailing_mean(values: np.ndarray, window: int) -> np.ndarray:
    """Trailing mean over ``window`` values, NaN until the window is full (the kernels'
    reference :func:`oscfast.kernels.reference.trailing_mean` with ``partial=False``, the
    risk rule's smoothing).

    Example:
        >>> trailing_mean(np.arange(5.0), 2).tolist()
        [nan, 0.5, 1.5, 2.5, 3.5]
    """
    from oscfast.kernels.reference import trailing_mean as reference

    return reference(values, window, partial=False)


def sure_risk(loss: np.ndarray | float, p: np.ndarray | float, level: float, rho: float = 1.0) -> np.ndarray:
    """The twin probe's SURE risk ``loss - rho s^2 (1 - 2 P)`` (method.md section 8) for level ``s``.

    Args:
        loss: the returned fit's loss (mean over all entries), per iteration.
        p: P_twin of the same output, per iteration.
        level: the measurement noise std ``s``.
        rho: the probed fraction (1 unless masked).

    Returns:
        ``rho`` times the estimated mean squared error over the probed entries.
    """
    return np.asarray(loss, dtype=np.float64) - rho * level**2 * (1.0 - 2.0 * np.asarray(p, dtype=np.float64))


def level_bound_values(loss_bar: np.ndarray, p_bar: np.ndarray, rho: float = 1.0) -> np.ndarray:
    """Per iteration, the largest ``s^2`` with a non-negative risk: ``loss / (rho (1 - 2 P))``
    where ``P < 1/2`` (inf elsewhere and where the inputs are NaN)."""
    loss_bar = np.asarray(loss_bar, dtype=np.float64)
    factor = rho * (1.0 - 2.0 * np.asarray(p_bar, dtype=np.float64))
    with np.errstate(divide="ignore", invalid="ignore"):
        values = np.where(factor > 0, loss_bar / factor, np.inf)
    return np.where(np.isnan(values), np.inf, values)


def sure_level_bound(loss: np.ndarray, p: np.ndarray, *, smoothing: int = 25, rho: float = 1.0) -> np.ndarray:
    """Running upper bound of the noise level from the risk's own signals (no level needed).

    The SURE risk estimates ``rho`` times a mean squared error, so ``E risk >= 0`` at every
    iteration; with the trailing means ``Lbar`` and ``Pbar`` of the loss and P this gives
    ``s^2 <= Lbar(t) / (rho (1 - 2 Pbar(t)))`` wherever ``Pbar < 1/2``, and the running minimum
    over the iterations seen is the bound at each iteration. In expectation (linear smoother
    ``J``, clean residual ``b``) ``Lbar / (1 - 2 P) = s^2 + MSE(t) / (1 - 2 P(t))``: the bound's
    excess is the error of the best output divided by ``1 - 2 P`` there.

    Args:
        loss, p: one output's loss and P_twin, per iteration from 0.
        smoothing: the trailing-mean window (the risk rule's).
        rho: the probed fraction.

    Returns:
        The bound on the level (a std), per iteration (inf before the first window).

    Example:
        >>> t = np.arange(400.0)
        >>> loss = 0.01 * (1 - t / 800) + 0.02 * np.exp(-t / 30)   # s = 0.1, D = 1 - P
        >>> p = t / 800
        >>> bool(sure_level_bound(loss, p)[-1] >= 0.1)
        True
    """
    values = level_bound_values(trailing_mean(loss, smoothing), trailing_mean(p, smoothing), rho)
    return np.sqrt(np.minimum.accumulate(values))


def twin_level_ratio(loss_a: np.ndarray, loss_b: np.ndarray, probe_std: float, *, window: int = 50) -> np.ndarray:
    """``sqrt(mean loss_A / (mean(loss_B - loss_A) / s_n^2))`` over a trailing window: the
    twin's own level bound (docs/twin-probe.md, "The level").

    For a linear smoother ``J``, fit A on ``y = x0 + e`` and fit B on ``y + n``:
    ``E loss_A = b + s^2 D`` and ``E(loss_B - loss_A) = s_n^2 D`` with
    ``D = tr((I - J)^T (I - J)) / N`` and ``b = |(I - J) x0|^2 / N``; the cross term
    ``2 <(I - J) y, (I - J) n> / N`` has mean zero. The ratio is ``s^2 + b / D >= s^2``.

    Args:
        loss_a, loss_b: the losses of fit A (on y) and fit B (on y + n), per iteration.
        probe_std: ``s_n``.
        window: the trailing window of both means.

    Returns:
        The level bound per iteration (NaN until the window is full or where ``D <= 0``).
    """
    difference = trailing_mean(np.asarray(loss_b, dtype=np.float64) - np.asarray(loss_a, dtype=np.float64), window)
    spread = difference / probe_std**2
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(spread > 0, trailing_mean(loss_a, window) / spread, np.nan)
    return np.sqrt(ratio)


def predicted_choice_shift(risk_curvature: float, p_slope: float, level: float, wrong_level: float, rho: float = 1.0) -> float:
    """How far the risk's minimum moves when the level is wrong (docs/twin-probe.md).

    ``R(t; s^2 + delta) = R(t; s^2) - rho delta (1 - 2 P(t))``; near the minimum
    ``R ~ R* + R'' (t - t*)^2 / 2`` and ``P ~ P* + P' (t - t*)``, so the new minimum is at
    ``t* - 2 rho delta P' / R''``: a level too high stops earlier, one too low later, by an
    amount that grows as the risk's minimum flattens.

    Args:
        risk_curvature: ``R''(t*)`` with the right level (per iteration squared), > 0.
        p_slope: ``P'(t*)`` (per iteration).
        level, wrong_level: the right and the used level (stds).
        rho: the probed fraction.

    Returns:
        The predicted shift of the chosen iteration (negative: earlier).
    """
    if not risk_curvature > 0:
        raise ValueError(f"risk_curvature must be > 0 at a minimum, got {risk_curvature}")
    delta = wrong_level**2 - level**2
    return -2.0 * rho * delta * p_slope / risk_curvature


def error_interval(loss: float, p: float, level_low: float, level_high: float, rho: float = 1.0) -> tuple[float, float]:
    """The mean squared error (over probed entries) the risk implies for every level in
    ``[level_low, level_high]``: the risk is linear in ``s^2``, so the ends come from the ends.

    Returns:
        ``(lowest, highest)`` error; the lowest may be <= 0 (then no PSNR bound follows).
    """
    if not 0 <= level_low <= level_high:
        raise ValueError(f"need 0 <= level_low <= level_high, got {level_low}, {level_high}")
    high = float(sure_risk(loss, p, level_low, rho)) / rho
    low = float(sure_risk(loss, p, level_high, rho)) / rho
    return (low, high) if p <= 0.5 else (high, low)


def psnr_interval(error_low: float, error_high: float, *, peak: float = 1.0) -> tuple[float, float] | None:
    """PSNR bounds (dB) from an error interval; None when the lower error is not positive
    (an error <= 0 is never turned into a PSNR)."""
    if not (error_low > 0 and error_high >= error_low) or not math.isfinite(error_high):
        return None
    return (10.0 * math.log10(peak**2 / error_high), 10.0 * math.log10(peak**2 / error_low))


@dataclass(frozen=True)
class PSNREstimate:
    """A rule's own estimate of the returned image's PSNR, or why there is none.

    Attributes:
        value: the estimate (dB; the middle of ``interval``), None when not shown.
        interval: the PSNRs (dB) the risk gives for every level in the level's interval, None
            when the interval is unbounded (its lower error is not positive).
        reason: why ``value`` is None (None when shown).
    """

    value: float | None
    interval: tuple[float, float] | None
    reason: str | None


def estimate_psnr(
    loss: float,
    p: float,
    level: LevelEstimate,
    *,
    rho: float = 1.0,
    max_width_db: float = 2.0,
    max_db: float = 60.0,
) -> PSNREstimate:
    """The PSNR the twin's SURE risk implies at the chosen iteration, with the interval that
    the level's interval implies, shown only when that interval is narrow.

    The risk is linear in ``s^2`` (:func:`error_interval`); its PSNR interval is the
    estimate's honest uncertainty: near the best iteration the error is a small difference
    of large terms, so a few percent of error in the level is a dB (docs/twin-probe.md, "The
    estimate"). The value is the middle of the interval (in dB), and it is None (with a
    reason) when the risk at the level used is not positive, the interval is unbounded or
    wider than ``max_width_db``, or the value exceeds ``max_db``.

    Args:
        loss, p: the smoothed loss and P_twin of the chosen output at the chosen iteration.
        level: the level used and the interval the true one lies in.
        rho: the probed fraction.
        max_width_db: the widest interval shown.
        max_db: the largest PSNR ever shown.

    Example:
        >>> known = LevelEstimate(0.1, 0.099, 0.101, "given")
        >>> estimate_psnr(0.0100, 0.05, known).value is not None
        True
        >>> vague = LevelEstimate(0.1, 0.08, 0.105, "observation")
        >>> estimate_psnr(0.0100, 0.05, vague).reason.startswith("the level")
        True
    """
    if not float(sure_risk(loss, p, level.value, rho)) > 0:
        return PSNREstimate(None, None, "the risk at the chosen iteration is not positive (the level is too high for "
                                        "this observation: its error is not white noise of that level)")
    low, high = error_interval(loss, p, level.low, level.high, rho)
    interval = psnr_interval(low, high)
    if interval is None:
        return PSNREstimate(None, None, f"the level is known only within {level.low:.4f}..{level.high:.4f} "
                                        f"({level.source}); at the upper end the risk is not positive")
    if interval[1] - interval[0] > max_width_db:
        return PSNREstimate(None, interval, f"the level is known only within {level.low:.4f}..{level.high:.4f} "
                                            f"({level.source}): the estimate spans {interval[0]:.1f}..{interval[1]:.1f} dB")
    value = 0.5 * (interval[0] + interval[1])
    if value > max_db:
        return PSNREstimate(None, interval, f"the estimate ({value:.1f} dB) is above {max_db:.0f} dB: the risk is near zero, not an error")
    return PSNREstimate(value, interval, None)


def level_interval(
    level: float, *, given: bool, tolerance: float = 0.02, estimated_range: tuple[float, float] = (0.8, 1.05)
) -> LevelEstimate:
    """Where the true level lies, for the level a rule used.

    Args:
        level: the level used.
        given: the caller gave it (and the run did not cut it): ``level x (1 -+ tolerance)``;
            else it was estimated (Donoho's, or the run's own bound, both upper bounds):
            ``level x estimated_range``.
        tolerance, estimated_range: :class:`oscfast.config.StopConfig`'s ``level_tolerance``
            and ``estimated_level_range``.
    """
    if given:
        return LevelEstimate(level, level * (1 - tolerance), level * (1 + tolerance), "given")
    low, high = estimated_range
    return LevelEstimate(level, level * low, level * high, "estimated")
