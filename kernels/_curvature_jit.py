"""numba kernels behind :mod:`oscfast.kernels.curvature` (method.md section 4).

This module imports numba at import time; it is imported lazily by ``curvature.py`` so that
``import oscfast.kernels`` stays free of numba. Compiled code is cached on disk
(``cache=True``); numba's own ``NUMBA_CACHE_DIR`` environment variable chooses where.

State layout shared by the batch and the incremental paths:

- ``buf``: float64 array of shape (3, capacity); row 0 holds raw P, row 1 the trailing mean Pbar,
  row 2 kappa (NaN until known).
- ``acc``: float64 array of length 1, the running sum of the last ``w`` raw values.
- ``n``: number of points already stored (the new value goes to index ``n``).
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit


@njit(cache=True)
def _fit_kappa(pbar, centre, half_window, t_max):  # pragma: no cover - compiled
    """kappa at ``centre`` from the smoothed curve (method.md section 4, steps 2-5)."""
    lo = centre - half_window
    m = 2 * half_window + 1
    v0 = pbar[lo]
    # The chord runs from s = lo to s = lo + 2L: u_s - u0 = k / t_max exactly, no subtraction.
    du = (2.0 * half_window) / t_max
    dv = pbar[lo + m - 1] - v0
    theta = math.atan2(dv, du)
    cs = math.cos(theta)
    sn = math.sin(theta)

    # Pass 1: means of the rotated coordinates. a is invariant to shifts of x' and y', and
    # centring keeps the normal equations well conditioned.
    sx = 0.0
    sy = 0.0
    for k in range(m):
        du_k = k / t_max
        dv_k = pbar[lo + k] - v0
        sx += cs * du_k + sn * dv_k
        sy += -sn * du_k + cs * dv_k
    xm = sx / m
    ym = sy / m

    # Pass 2: moments of the centred points.
    s1 = 0.0
    s2 = 0.0
    s3 = 0.0
    s4 = 0.0
    t0 = 0.0
    t1 = 0.0
    t2 = 0.0
    for k in range(m):
        du_k = k / t_max
        dv_k = pbar[lo + k] - v0
        x = cs * du_k + sn * dv_k - xm
        y = -sn * du_k + cs * dv_k - ym
        x2 = x * x
        s1 += x
        s2 += x2
        s3 += x2 * x
        s4 += x2 * x2
        t0 += y
        t1 += x * y
        t2 += x2 * y
    s0 = float(m)

    # Normal equations [[s4 s3 s2] [s3 s2 s1] [s2 s1 s0]] (a b c)^T = (t2 t1 t0)^T, Cramer's rule
    # for a. s1 and t0 are zero up to rounding after centring; keeping them costs nothing.
    m00 = s2 * s0 - s1 * s1
    m01 = s3 * s0 - s1 * s2
    m02 = s3 * s1 - s2 * s2
    det = s4 * m00 - s3 * m01 + s2 * m02
    det_a = t2 * m00 - s3 * (t1 * s0 - s1 * t0) + s2 * (t1 * s1 - s2 * t0)
    return 2.0 * det_a / det


@njit(cache=True)
def _push_one(buf, acc, n, value, half_window, smoothing, t_max):  # pragma: no cover - compiled
    """Store raw value at index ``n``; return kappa of centre ``n - L`` (NaN if not defined)."""
    p = buf[0]
    pbar = buf[1]
    kappa = buf[2]
    p[n] = value
    if smoothing == 1:
        pbar[n] = value
    else:
        if (n + 1) % smoothing == 0:
            # Recompute the window sum exactly every w points (O(1) amortised): rounding in the
            # running sum cannot drift over long runs, and a non-finite value stops poisoning
            # Pbar once it has left the window.
            s = 0.0
            for j in range(n + 1 - smoothing, n + 1):
                s += p[j]
            acc[0] = s
        else:
            acc[0] += value
            if n >= smoothing:
                acc[0] -= p[n - smoothing]
        count = smoothing if n + 1 >= smoothing else n + 1
        pbar[n] = acc[0] / count

    centre = n - half_window
    if centre < half_window:
        return np.nan
    k = _fit_kappa(pbar, centre, half_window, t_max)
    kappa[centre] = k
    return k


@njit(cache=True)
def _push_many(buf, acc, n, values, half_window, smoothing, t_max, out):  # pragma: no cover
    """Push ``values`` one by one starting at index ``n``; kappas go to ``out``."""
    for i in range(values.shape[0]):
        out[i] = _push_one(buf, acc, n + i, values[i], half_window, smoothing, t_max)
