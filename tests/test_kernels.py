"""Tests for oscfast.kernels: numba chord curvature vs the numpy reference (method.md section 4)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from oscfast.kernels import (
    IncrementalCurvature,
    chord_curvature,
    chord_curvature_reference,
    trailing_mean,
    warm_up,
)

# numba vs numpy reference. Both solve the same least-squares problem in float64; polyfit by an
# SVD on the raw rotated points, the kernel by Cramer's rule on centred normal equations. Measured
# relative disagreement is <= ~1e-11 where |kappa| is large (L up to 400, real P curves), so
# rtol = 1e-9 leaves two orders of margin. The solve's rounding error is absolute (it scales with
# |v'| / range(u')^2, i.e. with the size of kappa over the curve, not with kappa_t itself), so
# centres where kappa crosses zero need an atol: 1e-10 of the curve's max |kappa| (measured
# worst case ~3e-14 of it).
RTOL = 1e-9
ATOL_REL = 1e-10


def _assert_close_to_reference(got: np.ndarray, ref: np.ndarray) -> None:
    np.testing.assert_array_equal(np.isnan(got), np.isnan(ref))
    defined = ~np.isnan(ref)
    if defined.any():
        scale = np.max(np.abs(ref[defined]))
        np.testing.assert_allclose(got[defined], ref[defined], rtol=RTOL, atol=ATOL_REL * scale)


def _random_curve(rng: np.random.Generator, n: int) -> np.ndarray:
    """A P-like curve: slow sigmoid rise, random-walk wander and per-iteration jitter."""
    s = np.arange(n)
    rise = 1.0 / (1.0 + np.exp(-(s - 0.6 * n) / (0.08 * n)))
    return rise + 0.02 * np.cumsum(rng.normal(size=n)) / np.sqrt(n) + 0.01 * rng.normal(size=n)


@pytest.fixture(scope="module", autouse=True)
def _compiled() -> None:
    warm_up()


# --- smoke / shape -----------------------------------------------------------------------------


def test_trailing_mean_matches_definition() -> None:
    p = np.array([1.0, 3.0, 5.0, 7.0, 9.0])
    np.testing.assert_allclose(trailing_mean(p, 3), [1.0, 2.0, 3.0, 5.0, 7.0])
    np.testing.assert_array_equal(trailing_mean(p, 1), p)
    # A window longer than the curve averages everything seen so far.
    np.testing.assert_allclose(trailing_mean(p, 10), np.cumsum(p) / np.arange(1, 6))


@pytest.mark.parametrize("n", [0, 1, 4, 10])
def test_batch_short_curves_are_all_nan(n: int) -> None:
    # Fewer than 2L + 1 = 11 points: no centre is defined.
    out = chord_curvature(np.linspace(0.0, 1.0, n), 5, 2, 100.0)
    assert out.shape == (n,) and out.dtype == np.float64 and np.isnan(out).all()


def test_batch_nan_pattern_and_dtype() -> None:
    out = chord_curvature(np.arange(30, dtype=np.float32) ** 2, 4, 3, 50.0)
    assert out.dtype == np.float64
    assert np.isnan(out[:4]).all() and np.isnan(out[-4:]).all()
    assert np.isfinite(out[4:-4]).all()


# --- numba vs reference ------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize(
    ("half_window", "smoothing", "n", "t_max"),
    [(2, 1, 30, 20.0), (5, 3, 80, 100.0), (17, 10, 200, 1000.0), (60, 25, 300, 3000.0)],
)
def test_batch_matches_reference_random(
    seed: int, half_window: int, smoothing: int, n: int, t_max: float
) -> None:
    p = _random_curve(np.random.default_rng(seed), n)
    _assert_close_to_reference(
        chord_curvature(p, half_window, smoothing, t_max),
        chord_curvature_reference(p, half_window, smoothing, t_max),
    )


def test_batch_matches_reference_large_window() -> None:
    # The default-sized window (L = 400 for 3000 iterations) on a curve just long enough.
    p = _random_curve(np.random.default_rng(7), 1000)
    _assert_close_to_reference(
        chord_curvature(p, 400, 10, 3000.0), chord_curvature_reference(p, 400, 10, 3000.0)
    )


def test_batch_matches_reference_steep_curve() -> None:
    # Steep in (u, v) units (chord angle up to ~85 degrees): the rotation is far from identity.
    s = np.arange(120.0)
    p = 0.5 * np.tanh((s - 60) / 10) + 0.001 * np.random.default_rng(3).normal(size=120)
    _assert_close_to_reference(
        chord_curvature(p, 8, 1, 10.0), chord_curvature_reference(p, 8, 1, 10.0)
    )


# --- analytic curves ---------------------------------------------------------------------------


@pytest.mark.parametrize("smoothing", [1, 4, 10])
def test_straight_line_has_zero_curvature(smoothing: int) -> None:
    # The rotated points of a line lie on the x-axis, so a = 0 up to rounding: |v'| ~ 1e-16 over
    # an x-range of 2L/t_max = 0.08 gives |a| ~ 1e-16 / 0.08^2 times a modest conditioning factor;
    # 1e-9 is far above that and far below any real curvature in these units.
    half_window, t_max = 20, 500.0
    s = np.arange(200.0)
    p = 0.3 + 2e-3 * s
    k = chord_curvature(p, half_window, smoothing, t_max)
    # The trailing mean of a line is the same line shifted, except in the first w - 1 points where
    # fewer values are averaged: only centres whose segment starts at s >= w - 1 see a line.
    first = half_window + smoothing - 1
    np.testing.assert_allclose(k[first : 200 - half_window], 0.0, atol=1e-9)


@pytest.mark.parametrize("smoothing", [1, 6])
def test_parabola_vertex_centre_is_exact(smoothing: int) -> None:
    # P_s = k (s - t0)^2 is v = A (u - u0)^2 with A = k t_max^2. The trailing mean of a parabola is
    # the same parabola shifted right by (w - 1)/2 plus a constant, so put the vertex at
    # t0 + (w - 1)/2 = centre. There the chord is horizontal (theta = 0, no rotation) and the fit is
    # exact: kappa = 2A, to rounding (rtol 1e-9).
    half_window, t_max, k = 25, 400.0, 3e-6
    centre = 100
    s = np.arange(250.0)
    p = k * (s - centre + (smoothing - 1) / 2) ** 2
    kappa = chord_curvature(p, half_window, smoothing, t_max)
    np.testing.assert_allclose(kappa[centre], 2 * k * t_max**2, rtol=1e-9)


@pytest.mark.parametrize(
    ("k", "t_max", "half_window", "smoothing"),
    [(1e-6, 1000.0, 20, 1), (1e-6, 1000.0, 20, 5), (1e-7, 3000.0, 50, 10)],
)
def test_parabola_rotated_frame(k: float, t_max: float, half_window: int, smoothing: int) -> None:
    # P_s = k s^2 is v = A u^2, A = k t_max^2 (after the trailing mean: A (u - (w-1)/(2 t_max))^2 +
    # const). Around centre t the chord of a parabola is parallel to its tangent at t: slope
    # B = 2A u_t, theta = atan(B). With u measured from the centre, the rotated points are
    #   x' = u / cos(theta) + sin(theta) A u^2,   y' = cos(theta) A u^2   (+ constants),
    # so y' = A cos^3(theta) x'^2 (1 - 2 eps + O(eps^2)), eps = A sin(theta) cos^2(theta) x'. The
    # odd eps term leaks into a only through the O(eps) asymmetry of the x' samples, so
    #   kappa_t = 2 A cos^3(theta) (1 + O(eps_max^2)),   eps_max <= A h sin(theta), h = L / t_max.
    # Measured: the relative error stays below 0.75 * eps_max^2; we allow 2 eps_max^2 (+1e-9).
    # At large t_max (theta -> 0) this is the identity-rotation limit kappa = 2 k t_max^2.
    n = 400
    s = np.arange(n, dtype=np.float64)
    kappa = chord_curvature(k * s**2, half_window, smoothing, t_max)
    a_coef = k * t_max**2
    t = np.arange(half_window + smoothing - 1, n - half_window)
    theta = np.arctan(2 * a_coef * (t - (smoothing - 1) / 2) / t_max)
    predicted = 2 * a_coef * np.cos(theta) ** 3
    eps_max = a_coef * (half_window / t_max) * np.sin(theta)
    rel_err = np.abs(kappa[t] / predicted - 1)
    assert np.all(rel_err <= 2 * eps_max**2 + 1e-9)
    # The test has teeth: over these centres cos^3 differs from cos^2 by far more than allowed.
    assert np.max(1 - np.cos(theta)) > 100 * np.max(2 * eps_max**2 + 1e-9)


def test_curvature_sign_and_shift_invariance() -> None:
    s = np.arange(200.0)
    p = 1e-5 * (s - 100) ** 2
    k_up = chord_curvature(p, 10, 1, 300.0)
    k_down = chord_curvature(-p, 10, 1, 300.0)
    k_shift = chord_curvature(p + 0.37, 10, 1, 300.0)
    defined = ~np.isnan(k_up)
    assert np.all(k_up[defined] > 0)  # bends upward: P grows faster
    np.testing.assert_allclose(k_down[defined], -k_up[defined], rtol=1e-9)
    np.testing.assert_allclose(k_shift[defined], k_up[defined], rtol=1e-9)


# --- knee localisation ---------------------------------------------------------------------------


def _knee(
    n: int, s0: int, slope_uv: float, t_max: float, half_window: int, seed: int
) -> np.ndarray:
    """P = 0 before s0, then rising with slope slope_uv in (u, v) units, plus tiny noise."""
    s = np.arange(n, dtype=np.float64)
    m = slope_uv / t_max  # per-iteration slope
    noise = 1e-4 * m * half_window * np.random.default_rng(seed).normal(size=n)
    return np.where(s < s0, 0.0, m * (s - s0)) + noise


@pytest.mark.parametrize(("half_window", "smoothing"), [(50, 1), (200, 10), (400, 10)])
def test_knee_argmax_gentle_rise(half_window: int, smoothing: int) -> None:
    # The trailing mean turns the kink at s0 into a short parabolic blend symmetric about
    # s_eff = s0 + (w - 1)/2 (the smoothed curve equals the hinge at s_eff outside s0..s0+w-1).
    # Without rotation, the fitted a(d) of a hinge at offset d from the centre is even in d and
    # a''(d) = K(d), the least-squares weight of the quadratic coefficient, which is negative for
    # |d| < L/sqrt(3): the maximum is exactly at d = 0. The chord rotation breaks the symmetry only
    # at O(g^2) (measured: argmax offset ~ -g^2 L / 4 for a slope g in (u, v) units), which for
    # g = 0.03 and L <= 400 is < 0.1 sample. So the argmax is within 1 sample of s_eff: half a
    # sample because s_eff is a half-integer when w is even, plus rounding of the noise.
    n, s0, t_max = 3000, 1200, 3000.0
    p = _knee(n, s0, 0.03, t_max, half_window, seed=half_window)
    kappa = chord_curvature(p, half_window, smoothing, t_max)
    s_eff = s0 + (smoothing - 1) / 2
    assert abs(int(np.nanargmax(kappa)) - s_eff) <= 1.0


@pytest.mark.parametrize("slope_uv", [0.3, 1.0])
def test_knee_argmax_steep_rise(slope_uv: float) -> None:
    # Real P curves rise with slope ~0.3..1 in (u, v) units (F16: P 0.07 -> 0.22 over iterations
    # 500..1000 of 3000, g ~ 0.9). The chord rotation then pulls the argmax early, by ~g^2 L / 4
    # measured (0.02 L at g = 0.3, 0.175 L at g = 1), never late. Two bounds:
    # - hard: a segment that does not contain the kink is a straight line (kappa ~ 0), one that
    #   contains it bends upward (kappa > 0), so the argmax lies within L of s_eff;
    # - measured behaviour: s_eff - L/4 <= argmax <= s_eff + 1 for g <= 1.
    n, s0, t_max, half_window, smoothing = 3000, 1200, 3000.0, 200, 10
    p = _knee(n, s0, slope_uv, t_max, half_window, seed=5)
    kappa = chord_curvature(p, half_window, smoothing, t_max)
    s_eff = s0 + (smoothing - 1) / 2
    argmax = int(np.nanargmax(kappa))
    assert abs(argmax - s_eff) <= half_window
    assert s_eff - half_window / 4 <= argmax <= s_eff + 1


# --- incremental ---------------------------------------------------------------------------------


def _assert_same(got: np.ndarray, want: np.ndarray) -> None:
    # Incremental and batch run the same per-point kernel: they agree to the last bit, and 1e-12
    # of the curve's kappa scale leaves room only for a reordering of floating-point sums.
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    defined = ~np.isnan(want)
    if defined.any():
        scale = np.max(np.abs(want[defined]))
        np.testing.assert_allclose(got[defined], want[defined], rtol=1e-12, atol=1e-12 * scale)


@pytest.mark.parametrize(("half_window", "smoothing"), [(2, 1), (7, 4), (30, 10)])
def test_push_matches_batch(half_window: int, smoothing: int) -> None:
    n, t_max = 250, 400.0
    p = _random_curve(np.random.default_rng(11), n)
    batch = chord_curvature(p, half_window, smoothing, t_max)
    ic = IncrementalCurvature(half_window, smoothing, t_max, capacity=n)
    returned = np.array([ic.push(float(x)) for x in p])
    assert ic.n == n
    # push(i) returns the kappa of centre i - L.
    assert np.isnan(returned[: 2 * half_window]).all()
    _assert_same(returned[half_window:], batch[: n - half_window])
    _assert_same(ic.kappa, batch)
    np.testing.assert_array_equal(ic.p, p)
    np.testing.assert_allclose(ic.pbar, trailing_mean(p, smoothing), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("chunks", [[1] * 40 + [210], [25] * 10, [7, 0, 93, 3, 147], [250]])
def test_push_many_in_chunks_matches_batch(chunks: list[int]) -> None:
    half_window, smoothing, t_max = 12, 5, 300.0
    n = sum(chunks)
    p = _random_curve(np.random.default_rng(13), n)
    batch = chord_curvature(p, half_window, smoothing, t_max)
    ic = IncrementalCurvature(half_window, smoothing, t_max, capacity=n)
    returned, start = [], 0
    for size in chunks:
        out = ic.push_many(p[start : start + size])
        assert out.shape == (size,)
        returned.append(out)
        start += size
    got = np.concatenate(returned)
    assert ic.n == n
    _assert_same(got[half_window:], batch[: n - half_window])
    _assert_same(ic.kappa, batch)


def test_mixed_push_and_push_many_long_run() -> None:
    # A long run exercises the running-sum resynchronisation of the trailing mean.
    half_window, smoothing, t_max, n = 40, 10, 3000.0, 3000
    p = _random_curve(np.random.default_rng(17), n)
    ic = IncrementalCurvature(half_window, smoothing, t_max, capacity=n)
    for i in range(0, n, 100):
        ic.push(float(p[i]))
        ic.push_many(p[i + 1 : i + 100])
    _assert_same(ic.kappa, chord_curvature(p, half_window, smoothing, t_max))
    np.testing.assert_allclose(ic.pbar, trailing_mean(p, smoothing), rtol=1e-12, atol=1e-14)


def test_incremental_views_and_properties() -> None:
    ic = IncrementalCurvature(3, 2, 50.0, capacity=20)
    assert (ic.half_window, ic.smoothing, ic.t_max, ic.capacity, ic.n) == (3, 2, 50.0, 20, 0)
    assert ic.kappa.shape == (0,)
    ic.push_many(np.linspace(0.0, 1.0, 9) ** 2)
    assert ic.n == 9 and ic.p.shape == ic.pbar.shape == ic.kappa.shape == (9,)
    # Centres L..n-1-L = 3..5 are known, the rest NaN.
    assert np.isfinite(ic.kappa[3:6]).all()
    assert np.isnan(ic.kappa[:3]).all() and np.isnan(ic.kappa[6:]).all()
    with pytest.raises(ValueError):
        ic.kappa[4] = 0.0  # read-only view of the internal state
    assert "n=9" in repr(ic)


def test_nonfinite_value_leaves_the_trailing_mean() -> None:
    # The window sum is recomputed exactly every w points, so a NaN poisons Pbar only until it has
    # left the window (at most 2w points later).
    w = 4
    ic = IncrementalCurvature(2, w, 10.0, capacity=30)
    ic.push_many(np.ones(5))
    ic.push(float("nan"))
    ic.push_many(np.ones(24))
    assert np.isnan(ic.pbar[5])
    np.testing.assert_array_equal(ic.pbar[5 + 2 * w :], 1.0)


# --- exceptions ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("half_window", "smoothing", "t_max", "match"),
    [
        (1, 1, 10.0, "half_window"),
        (-3, 1, 10.0, "half_window"),
        (2, 0, 10.0, "smoothing"),
        (2, 1, 0.0, "t_max"),
        (2, 1, -5.0, "t_max"),
        (2, 1, float("nan"), "t_max"),
        (2, 1, float("inf"), "t_max"),
    ],
)
def test_invalid_parameters_raise(
    half_window: int, smoothing: int, t_max: float, match: str
) -> None:
    with pytest.raises(ValueError, match=match):
        IncrementalCurvature(half_window, smoothing, t_max, capacity=10)
    with pytest.raises(ValueError, match=match):
        chord_curvature(np.zeros(10), half_window, smoothing, t_max)


def test_non_integer_window_raises_type_error() -> None:
    with pytest.raises(TypeError, match="half_window"):
        chord_curvature(np.zeros(10), 2.5, 1, 10.0)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="smoothing"):
        IncrementalCurvature(2, 1.0, 10.0, capacity=10)  # type: ignore[arg-type]


def test_invalid_capacity_and_shape_raise() -> None:
    with pytest.raises(ValueError, match="capacity"):
        IncrementalCurvature(2, 1, 10.0, capacity=0)
    with pytest.raises(ValueError, match="1-D"):
        chord_curvature(np.zeros((3, 10)), 2, 1, 10.0)
    with pytest.raises(ValueError, match="1-D"):
        IncrementalCurvature(2, 1, 10.0, capacity=10).push_many(np.zeros((2, 2)))


def test_capacity_overflow_raises_and_keeps_state() -> None:
    ic = IncrementalCurvature(2, 1, 10.0, capacity=6)
    ic.push_many(np.arange(4.0))
    with pytest.raises(ValueError, match="capacity 6"):
        ic.push_many(np.arange(3.0))
    assert ic.n == 4  # nothing was written
    ic.push(4.0)
    ic.push(5.0)
    with pytest.raises(ValueError, match="capacity 6"):
        ic.push(6.0)
    assert ic.n == 6
    np.testing.assert_array_equal(ic.p, np.arange(6.0))


# --- import hygiene ------------------------------------------------------------------------------


def test_import_does_not_load_numba() -> None:
    code = "import sys, oscfast.kernels; assert 'numba' not in sys.modules, 'numba imported'"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
