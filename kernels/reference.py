"""Plain numpy reference for the chord curvature (method.md section 4).

Written to be obviously correct: the tests compare the numba kernels against it, and both
against a by-the-book ``np.polyfit`` on each rotated segment.
"""

from __future__ import annotations

import numpy as np

from oscfast.kernels.chord import chord_frame_curvature

__all__ = ["chord_curvature_reference", "trailing_mean"]


def trailing_mean(p: np.ndarray, window: int, *, partial: bool = True) -> np.ndarray:
    """Trailing mean Pbar_t = mean(P[max(0, t-w+1) .. t]) (method.md section 4, step 1).

    Args:
        p: 1-D curve.
        window: w >= 1.
        partial: for t < w-1 average the points available so far (the knee's smoothing); False
            gives NaN there instead (the risk rule compares only full windows).

    Returns:
        float64 array of the same length.

    Example:
        >>> trailing_mean(np.array([1.0, 3.0, 5.0, 7.0]), 2).tolist()
        [1.0, 2.0, 4.0, 6.0]
        >>> trailing_mean(np.array([1.0, 3.0, 5.0, 7.0]), 2, partial=False).tolist()
        [nan, 2.0, 4.0, 6.0]
    """
    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    p = np.asarray(p, dtype=np.float64)
    cumulative = np.concatenate([[0.0], np.cumsum(p)])
    ends = np.arange(1, p.size + 1)
    starts = np.maximum(0, ends - window)
    out = (cumulative[ends] - cumulative[starts]) / (ends - starts)
    if not partial:
        out[: min(window - 1, p.size)] = np.nan
    return out


def chord_curvature_reference(
    p: np.ndarray, half_window: int, smoothing: int, t_max: float
) -> np.ndarray:
    """Chord curvature kappa_t of a whole curve in plain numpy: the trailing mean, then the
    closed-form chord-frame fit (:func:`oscfast.kernels.chord.chord_frame_curvature`, the
    same lines the exported graph runs) on every segment at once.

    Args:
        p: raw P values.
        half_window: L >= 2.
        smoothing: w >= 1.
        t_max: iteration cap (> 0) scaling the u axis.

    Returns:
        float64 array of length N, kappa_t for L <= t <= N-1-L and NaN elsewhere.
    """
    if half_window < 2 or smoothing < 1 or not t_max > 0:
        raise ValueError(
            f"need half_window >= 2, smoothing >= 1, t_max > 0; "
            f"got {half_window}, {smoothing}, {t_max}"
        )
    v = trailing_mean(p, smoothing)
    n = v.shape[0]
    kappa = np.full(n, np.nan)
    segment = 2 * half_window + 1
    if n < segment:
        return kappa
    windows = np.lib.stride_tricks.sliding_window_view(v, segment)
    u = np.arange(segment, dtype=np.float64) / t_max
    kappa[half_window : n - half_window] = chord_frame_curvature(windows, u)
    return kappa
