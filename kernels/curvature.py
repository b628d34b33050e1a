"""Chord curvature of the P curve, compiled with numba (method.md section 4).

Two entry points share one per-point kernel, so they agree to the last bit:

- :func:`chord_curvature` for a whole curve (offline rule, method.md section 5);
- :class:`IncrementalCurvature` for the online rule: each new P value yields exactly one new kappa
  (of the centre ``L`` points back) in O(L) work.

numba is imported on first use, not when this module is imported. Compiled kernels are cached on
disk (``@njit(cache=True)``); set numba's ``NUMBA_CACHE_DIR`` environment variable before the first
call to choose the cache location (by default numba writes next to the source, in
``__pycache__``). Call :func:`warm_up` once at start-up to pay the compile / cache-load time
before the first real value arrives.
"""

from __future__ import annotations

import math
import operator
from functools import lru_cache
from types import ModuleType

import numpy as np

__all__ = ["IncrementalCurvature", "chord_curvature", "warm_up"]


@lru_cache(maxsize=1)
def _jit() -> ModuleType:
    """The compiled kernels; imports numba on first call."""
    from oscfast.kernels import _curvature_jit

    return _curvature_jit


def _check_params(half_window: int, smoothing: int, t_max: float) -> tuple[int, int, float]:
    """Validate (L, w, t_max) once at the API boundary and return them as (int, int, float)."""
    try:
        half_window_i = operator.index(half_window)
    except TypeError:
        raise TypeError(f"half_window must be an int, got {half_window!r}") from None
    try:
        smoothing_i = operator.index(smoothing)
    except TypeError:
        raise TypeError(f"smoothing must be an int, got {smoothing!r}") from None
    if half_window_i < 2:
        raise ValueError(f"half_window (L) must be an int >= 2, got {half_window_i}")
    if smoothing_i < 1:
        raise ValueError(f"smoothing (w) must be an int >= 1, got {smoothing_i}")
    try:
        t_max_f = float(t_max)
    except (TypeError, ValueError):
        raise TypeError(f"t_max must be a positive float, got {t_max!r}") from None
    if not (t_max_f > 0.0 and math.isfinite(t_max_f)):
        raise ValueError(f"t_max must be a finite float > 0, got {t_max!r}")
    return half_window_i, smoothing_i, t_max_f


def _as_curve(values: np.ndarray, name: str) -> np.ndarray:
    arr = np.ascontiguousarray(values, dtype=np.float64)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
    return arr


def chord_curvature(p: np.ndarray, half_window: int, smoothing: int, t_max: float) -> np.ndarray:
    """Chord curvature kappa_t of a whole P curve (method.md section 4).

    Args:
        p: raw P values, one per iteration.
        half_window: L >= 2; the segment around centre t is t-L .. t+L.
        smoothing: w >= 1, length of the trailing mean applied to P first.
        t_max: iteration cap (> 0); the u axis is iteration / t_max.

    Returns:
        float64 array of length N with kappa_t for L <= t <= N-1-L and NaN elsewhere.

    Raises:
        ValueError: if L < 2, w < 1, t_max <= 0 or ``p`` is not 1-D.

    Shape:
        p: (N,) -> (N,)

    Example:
        >>> import numpy as np
        >>> s = np.arange(41.0)
        >>> k = chord_curvature(0.5 * ((s - 20) / 100) ** 2, 20, 1, 100.0)
        >>> round(float(k[20]), 9)
        1.0
    """
    half_window, smoothing, t_max = _check_params(half_window, smoothing, t_max)
    values = _as_curve(p, "p")
    n = values.shape[0]
    buf = np.empty((3, n), dtype=np.float64)
    buf[2].fill(np.nan)
    acc = np.zeros(1, dtype=np.float64)
    out = np.empty(n, dtype=np.float64)
    _jit()._push_many(buf, acc, 0, values, half_window, smoothing, t_max, out)
    return buf[2].copy()


class IncrementalCurvature:
    """Online chord curvature: one new P value in, one new kappa out (method.md sections 4-5).

    After ``n`` values the newest kappa belongs to centre ``n - 1 - L``; it needs P up to
    ``n - 1``, so the online criterion lags the iteration count by L.

    Args:
        half_window: L >= 2.
        smoothing: w >= 1 (trailing mean of P).
        t_max: iteration cap (> 0) scaling the u axis.
        capacity: the most points this object will ever hold (storage is preallocated).

    Raises:
        ValueError: on invalid parameters, or when a push would exceed ``capacity``.

    Example:
        >>> ic = IncrementalCurvature(2, 1, 10.0, capacity=8)
        >>> [round(ic.push(0.005 * (s - 2) ** 2), 9) for s in range(5)]
        [nan, nan, nan, nan, 1.0]
        >>> ic.n, round(float(ic.kappa[2]), 9)
        (5, 1.0)
    """

    def __init__(self, half_window: int, smoothing: int, t_max: float, capacity: int) -> None:
        self._half_window, self._smoothing, self._t_max = _check_params(
            half_window, smoothing, t_max
        )
        try:
            capacity = operator.index(capacity)
        except TypeError:
            raise TypeError(f"capacity must be an int, got {capacity!r}") from None
        if capacity < 1:
            raise ValueError(f"capacity must be an int >= 1, got {capacity}")
        self._capacity = capacity
        self._buf = np.empty((3, capacity), dtype=np.float64)
        self._buf[2].fill(np.nan)
        self._acc = np.zeros(1, dtype=np.float64)
        self._n = 0
        self._push_one = _jit()._push_one
        self._push_many = _jit()._push_many

    def push(self, p: float) -> float:
        """Append one raw P value; return kappa of centre ``n - 1 - L`` (NaN while n < 2L + 1)."""
        n = self._n
        if n >= self._capacity:
            raise ValueError(
                f"IncrementalCurvature is full: capacity {self._capacity} points, cannot push more"
            )
        k = self._push_one(
            self._buf, self._acc, n, float(p), self._half_window, self._smoothing, self._t_max
        )
        self._n = n + 1
        return k

    def push_many(self, values: np.ndarray) -> np.ndarray:
        """Append several raw P values; return the kappa produced by each (NaN where undefined).

        Shape:
            values: (k,) -> (k,)
        """
        vals = _as_curve(values, "values")
        n = self._n
        if n + vals.shape[0] > self._capacity:
            raise ValueError(
                f"IncrementalCurvature capacity {self._capacity} exceeded: holds {n} points, "
                f"got {vals.shape[0]} more"
            )
        out = np.empty(vals.shape[0], dtype=np.float64)
        self._push_many(
            self._buf, self._acc, n, vals, self._half_window, self._smoothing, self._t_max, out
        )
        self._n = n + vals.shape[0]
        return out

    def _view(self, row: int) -> np.ndarray:
        v = self._buf[row, : self._n]
        v.flags.writeable = False
        return v

    @property
    def n(self) -> int:
        """Number of points pushed so far."""
        return self._n

    @property
    def capacity(self) -> int:
        """The most points this object can hold."""
        return self._capacity

    @property
    def p(self) -> np.ndarray:
        """Read-only view of the raw P values, length ``n``."""
        return self._view(0)

    @property
    def pbar(self) -> np.ndarray:
        """Read-only view of the trailing mean of P, length ``n``."""
        return self._view(1)

    @property
    def kappa(self) -> np.ndarray:
        """Read-only view of kappa, length ``n``; defined for L <= t <= n-1-L, NaN elsewhere."""
        return self._view(2)

    @property
    def half_window(self) -> int:
        """L, the half-window of the chord segment."""
        return self._half_window

    @property
    def smoothing(self) -> int:
        """w, the trailing-mean length."""
        return self._smoothing

    @property
    def t_max(self) -> float:
        """Iteration cap scaling the u axis."""
        return self._t_max

    def __repr__(self) -> str:
        return (
            f"IncrementalCurvature(half_window={self._half_window}, smoothing={self._smoothing}, "
            f"t_max={self._t_max}, capacity={self._capacity}, n={self._n})"
        )


def warm_up() -> None:
    """Compile (or load from the cache) every kernel on tiny inputs.

    Call once at start-up so the first real :meth:`IncrementalCurvature.push` does not pay the
    JIT time (seconds on a cold cache).
    """
    curve = np.linspace(0.0, 1.0, 7) ** 2
    chord_curvature(curve, 2, 2, 10.0)
    ic = IncrementalCurvature(2, 2, 10.0, capacity=curve.shape[0])
    ic.push(float(curve[0]))
    ic.push_many(curve[1:])
