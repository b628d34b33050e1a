"""The closed-form chord-frame parabola fit (method.md section 4, steps 3-5), one function for
numpy arrays and torch tensors alike.

:func:`chord_frame_curvature` uses only arithmetic, ``sum``/``mean`` and ``** 0.5`` on its
arguments, so the plain numpy reference (:mod:`oscfast.kernels.reference`) and the exported
stopper graph (:mod:`oscfast.export.stopper`, torch, traced to ONNX) run the very same lines.
The numba kernel (:mod:`oscfast.kernels._curvature_jit`) is the compiled, incremental form of
the same arithmetic; the tests hold all three to 1e-11 against a by-the-book ``np.polyfit``.
This module imports neither numba nor torch.
"""

from __future__ import annotations

from typing import TypeVar

__all__ = ["chord_frame_curvature"]

Array = TypeVar("Array")


def chord_frame_curvature(pbar: Array, u: Array) -> Array:
    """kappa = 2a of the parabola fitted to a segment in its chord frame.

    The arithmetic of the numba kernel, vectorised. Rotate the segment so that its chord is the x-axis (cos and sin of the chord angle from
    its components: ONNX has no atan2), centre the rotated points (a is shift invariant;
    centring conditions the normal equations), and solve the 3x3 normal equations for a by
    Cramer's rule.

    Args:
        pbar: the smoothed P values of the segment t-L .. t+L, along the last axis.
        u: their iteration offsets from the segment start divided by t_max (k / t_max).

    Returns:
        The curvature (0-d array or tensor; batched over leading axes of ``pbar``).

    Example:
        >>> import numpy as np
        >>> k = np.arange(41.0)
        >>> round(float(chord_frame_curvature(0.5 * ((k - 20) / 100) ** 2, k / 100)), 9)
        1.0
    """
    dv_k = pbar - pbar[..., :1]
    du = u[-1]
    dv = dv_k[..., -1:]
    chord = (du * du + dv * dv) ** 0.5
    cos, sin = du / chord, dv / chord
    x = cos * u + sin * dv_k
    y = cos * dv_k - sin * u
    s0 = float(u.shape[-1])
    x = x - x.sum(-1)[..., None] / s0
    y = y - y.sum(-1)[..., None] / s0
    x2 = x * x
    s1, s2, s3, s4 = x.sum(-1), x2.sum(-1), (x2 * x).sum(-1), (x2 * x2).sum(-1)
    t0, t1, t2 = y.sum(-1), (x * y).sum(-1), (x2 * y).sum(-1)
    # [[s4 s3 s2] [s3 s2 s1] [s2 s1 s0]] (a b c)^T = (t2 t1 t0)^T
    m00 = s2 * s0 - s1 * s1
    m01 = s3 * s0 - s1 * s2
    m02 = s3 * s1 - s2 * s2
    det = s4 * m00 - s3 * m01 + s2 * m02
    det_a = t2 * m00 - s3 * (t1 * s0 - s1 * t0) + s2 * (t1 * s1 - s2 * t0)
    return 2.0 * det_a / det
