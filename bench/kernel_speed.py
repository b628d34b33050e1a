"""Per-point cost of the chord-curvature kernels (method.md section 4).

After :func:`oscfast.kernels.warm_up`, for L in (100, 200, 400), w = 10, on a 3000-point P-like
curve, measures

- ``push``: median time of one ``IncrementalCurvature.push`` call (Python call included);
- ``push_many(25)``: median time of one ``push_many`` call on a chunk of 25 values, divided by 25;
- batch: ``chord_curvature`` on the whole curve (median of repeats), total and per point.

Medians are taken over the steady state only (points that produce a kappa, n >= 2L + 1), which is
where the O(L) fit runs; the cheap warm-up points before it would flatter the numbers.
The target is <= 20 microseconds per new point at L = 400.

Usage: ``python bench/kernel_speed.py`` (writes ``bench/results/kernel-speed-<hostname>.md``).
"""

from __future__ import annotations

import datetime as _dt
import os
import platform
import socket
import time
from pathlib import Path

import numpy as np

from oscfast.kernels import IncrementalCurvature, chord_curvature, warm_up

N_POINTS = 3000
SMOOTHING = 10
T_MAX = 3000.0
HALF_WINDOWS = (100, 200, 400)
CHUNK = 25
REPEATS = 5  # full passes over the curve per measurement; medians pool all of them
TARGET_US = 20.0


def _curve(n: int) -> np.ndarray:
    rng = np.random.default_rng(0)
    s = np.arange(n)
    return 1.0 / (1.0 + np.exp(-(s - 900) / 250)) + 0.008 * rng.normal(size=n)


def _time_push(p: np.ndarray, half_window: int) -> float:
    """Median microseconds of one push in the steady state."""
    times: list[int] = []
    clock = time.perf_counter_ns
    for _ in range(REPEATS):
        ic = IncrementalCurvature(half_window, SMOOTHING, T_MAX, capacity=p.shape[0])
        values = p.tolist()
        for i, x in enumerate(values):
            t0 = clock()
            ic.push(x)
            t1 = clock()
            if i >= 2 * half_window:
                times.append(t1 - t0)
    return float(np.median(times)) / 1e3


def _time_push_many(p: np.ndarray, half_window: int) -> float:
    """Median microseconds per point of push_many on chunks of CHUNK values, steady state."""
    times: list[int] = []
    clock = time.perf_counter_ns
    for _ in range(REPEATS):
        ic = IncrementalCurvature(half_window, SMOOTHING, T_MAX, capacity=p.shape[0])
        for start in range(0, p.shape[0], CHUNK):
            chunk = p[start : start + CHUNK]
            t0 = clock()
            ic.push_many(chunk)
            t1 = clock()
            if start >= 2 * half_window and chunk.shape[0] == CHUNK:
                times.append(t1 - t0)
    return float(np.median(times)) / 1e3 / CHUNK


def _time_batch(p: np.ndarray, half_window: int) -> float:
    """Median milliseconds of chord_curvature over the whole curve."""
    times = []
    for _ in range(REPEATS):
        t0 = time.perf_counter_ns()
        chord_curvature(p, half_window, SMOOTHING, T_MAX)
        times.append(time.perf_counter_ns() - t0)
    return float(np.median(times)) / 1e6


def main() -> str:
    t0 = time.perf_counter()
    warm_up()
    warm_s = time.perf_counter() - t0
    p = _curve(N_POINTS)

    host = socket.gethostname()
    lines = [
        "# Chord-curvature kernel speed",
        "",
        f"- machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"host `{host}`, {platform.system()} {platform.release()}",
        f"- date: {_dt.datetime.now().astimezone().isoformat(timespec='seconds')}",
        f"- python {platform.python_version()}, numpy {np.__version__}, numba "
        f"{__import__('numba').__version__}",
        f"- curve: {N_POINTS} points, w = {SMOOTHING}, t_max = {T_MAX:g}; medians over the steady "
        f"state (n >= 2L+1), {REPEATS} passes; warm_up() took {warm_s:.2f} s",
        f"- target: <= {TARGET_US:g} us per new point at L = 400",
        "",
        "| L | push (us/point) | push_many x25 (us/point) | batch (ms/curve) | batch (us/point) |",
        "|---|---|---|---|---|",
    ]
    for half_window in HALF_WINDOWS:
        push_us = _time_push(p, half_window)
        many_us = _time_push_many(p, half_window)
        batch_ms = _time_batch(p, half_window)
        lines.append(
            f"| {half_window} | {push_us:.2f} | {many_us:.2f} | {batch_ms:.2f} | "
            f"{batch_ms * 1e3 / N_POINTS:.2f} |"
        )
    table = "\n".join(lines) + "\n"
    print(table)

    out_dir = Path(__file__).resolve().parent / "results"
    out_dir.mkdir(parents=True, exist_ok=True)
    out = out_dir / f"kernel-speed-{host}.md"
    out.write_text(table)
    print(f"written to {out}")
    return table


if __name__ == "__main__":
    main()
