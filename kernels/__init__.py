"""Compiled numerical kernels (installed as ``oscfast.kernels``); no torch here.

- :func:`chord_curvature`, :class:`IncrementalCurvature`, :func:`warm_up`: numba kernels for the
  chord curvature of the P curve (method.md section 4); numba is imported on first use.
- :func:`chord_frame_curvature`: the closed-form fit shared by the numpy reference and the
  exported graph (numpy arrays or torch tensors).
- :func:`chord_curvature_reference`, :func:`trailing_mean`: the plain numpy reference.
"""

from __future__ import annotations

from oscfast.kernels.chord import chord_frame_curvature
from oscfast.kernels.curvature import IncrementalCurvature, chord_curvature, warm_up
from oscfast.kernels.reference import chord_curvature_reference, trailing_mean

__all__ = [
    "IncrementalCurvature",
    "chord_frame_curvature",
    "chord_curvature",
    "chord_curvature_reference",
    "trailing_mean",
    "warm_up",
]
