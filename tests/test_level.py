"""The level a risk rule uses, its bound from the run itself, and the estimate it may show
(oscfast.level; docs/twin-probe.md, "The level" and "The estimate")."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from conftest import smooth_image
from oscfast.models import DENOISE_SPEC
from PIL import Image

from oscfast import restore
from oscfast.config import DIPConfig, StopConfig
from oscfast.level import (
    LevelEstimate,
    error_interval,
    estimate_psnr,
    level_interval,
    predicted_choice_shift,
    sure_level_bound,
    sure_risk,
    twin_level_ratio,
)
from oscfast.probe import risk_constants
from oscfast.stopping import RiskRule, Signals

RECORDED = Path(__file__).resolve().parents[1] / "bench" / "results" / "paper" / "mini"


# -- a linear smoother family with exact traces ------------------------------------------------
def smoother_family(level: float = 0.1, steps: int = 600, size: int = 8192) -> dict[str, np.ndarray]:
    """Gaussian filters of shrinking width applied to y = x0 + e (periodic, 1-D): J_t is
    diagonal in Fourier, so the expected loss, P_twin (= tr J / N) and the error are exact.

    Returns the curves per "iteration" t: expected loss of J_t y, P, the error |J_t y - x0|^2 / N
    in expectation, the clean residual, and D = tr((I - J)^2) / N."""
    rng = np.random.default_rng(0)
    frequency = np.fft.fftfreq(size)
    spectrum = (rng.normal(size=size) + 1j * rng.normal(size=size)) / (1 + np.abs(frequency) / 0.004) ** 1.5
    signal = np.real(np.fft.ifft(spectrum))
    transform = np.fft.fft(0.2 * signal / signal.std())
    widths = 40 * 0.99 ** np.arange(steps)
    gain = np.exp(-2 * np.pi**2 * widths[:, None] ** 2 * frequency[None, :] ** 2)
    clean = np.sum(np.abs((1 - gain) * transform) ** 2, axis=1) / size**2
    spread = np.mean((1 - gain) ** 2, axis=1)
    return {"loss": clean + level**2 * spread, "p": np.mean(gain, axis=1),
            "mse": clean + level**2 * np.mean(gain**2, axis=1), "clean": clean, "spread": spread}


def _vertex(curve: np.ndarray) -> tuple[float, float]:
    """The minimum of a sampled curve by a parabola through its 7 nearest samples: (t, R'')."""
    k = int(np.argmin(curve))
    a, b, _ = np.polyfit(np.arange(-3, 4), curve[k - 3 : k + 4], 2)
    return k - b / (2 * a), 2 * a


def _feed(rule: RiskRule, chunk: int = 25, **signals: np.ndarray) -> RiskRule:
    n = next(iter(signals.values())).size
    for start in range(0, n, chunk):
        rule.update(Signals(start, {k: v[start : start + chunk] for k, v in signals.items()}))
        if rule.decision.should_stop:
            break
    return rule


def test_the_risk_is_the_error_on_a_linear_smoother() -> None:
    """E loss - s^2 (1 - 2 P) = E |J y - x0|^2 / N exactly (method.md section 8), and the curve
    has an interior minimum (the family is a fair stand-in for DIP's course)."""
    curves = smoother_family()
    np.testing.assert_allclose(sure_risk(curves["loss"], curves["p"], 0.1), curves["mse"], rtol=0, atol=1e-15)
    best = int(np.argmin(curves["mse"]))
    assert 100 < best < 400


@pytest.mark.parametrize("error", [-0.05, 0.05])
def test_a_wrong_level_moves_the_choice_as_derived(error: float) -> None:
    """A level whose square is off by ``error`` moves the risk's minimum by
    -2 delta P'(t*) / R''(t*) iterations (oscfast.level.predicted_choice_shift): too high
    stops earlier, too low later. The linearisation holds to 15% at +-5% in s^2."""
    curves = smoother_family()
    truth, curvature = _vertex(curves["mse"])
    slope = float(np.gradient(curves["p"])[round(truth)])
    wrong = 0.1 * math.sqrt(1 + error)
    moved, _ = _vertex(sure_risk(curves["loss"], curves["p"], wrong))
    predicted = predicted_choice_shift(curvature, slope, 0.1, wrong)
    assert np.sign(predicted) == -np.sign(error) and abs(predicted) > 3  # measurable, right direction
    assert moved - truth == pytest.approx(predicted, rel=0.15)


def test_the_risk_rule_moves_with_the_level_and_its_bound_stops_a_level_too_high() -> None:
    """The rule (no smoothing) chooses the argmin of the risk at the level it is given; with
    ``level_bound`` a level 30% too high is cut to the run's bound, which moves the choice far
    less; a level too low is not cut (the bound is an upper one)."""
    curves = smoother_family()

    def choice(level: float, bound: float | None) -> RiskRule:
        constants = risk_constants("twin", noise_level=level, probe_std=0.04, rho=1.0)
        rule = RiskRule(constants.weight, constants.offset, max_iterations=curves["loss"].size, smoothing=1,
                        outputs=("raw",), error_scale=1.0, level_bound=bound)
        return _feed(rule, loss=curves["loss"], p=curves["p"])

    best = int(np.argmin(curves["mse"]))
    for level in (0.09, 0.1, 0.11):
        assert choice(level, None).decision.iteration == int(np.argmin(sure_risk(curves["loss"], curves["p"], level)))
    uncut, cut = choice(0.13, None), choice(0.13, 1.0)
    assert cut.level_source == "run bound" and 0.1 <= cut.level < 0.13
    assert abs(cut.decision.iteration - best) < 0.5 * abs(uncut.decision.iteration - best)
    low = choice(0.09, 1.0)
    assert low.level_source == "given" and low.level == pytest.approx(0.09)


def test_the_run_bound_exceeds_the_level_by_the_error_over_1_minus_2p() -> None:
    """min_t loss / (1 - 2 P) = s^2 + min_t MSE / (1 - 2 P) (an identity in expectation), so
    the bound is above the level; the twin ratio loss_A / D is above it too, and tighter."""
    curves = smoother_family()
    bound = sure_level_bound(curves["loss"], curves["p"], smoothing=1)
    p = curves["p"]
    excess = np.min(np.where(p < 0.5, curves["mse"] / (1 - 2 * p), np.inf))
    assert bound[-1] ** 2 == pytest.approx(0.01 + excess, rel=1e-12)
    assert np.all(bound[np.isfinite(bound)] >= 0.1) and np.all(np.diff(bound) <= 0)
    # fit B on y + n: E(loss_B - loss_A) = s_n^2 D, so loss_A / D = s^2 + clean / D
    loss_b = curves["loss"] + 0.04**2 * curves["spread"]
    ratio = twin_level_ratio(curves["loss"], loss_b, 0.04, window=1)
    np.testing.assert_allclose(ratio**2, 0.01 + curves["clean"] / curves["spread"], rtol=1e-9)
    assert np.nanmin(ratio) < bound[-1]


def test_an_unknown_level_takes_the_run_bound() -> None:
    curves = smoother_family()
    constants = risk_constants("twin", noise_level=math.inf, probe_std=0.04, rho=1.0)
    rule = _feed(RiskRule(constants.weight, constants.offset, max_iterations=curves["loss"].size, smoothing=1,
                          outputs=("raw",), error_scale=1.0, level_bound=0.9),
                 loss=curves["loss"], p=curves["p"])
    assert rule.level_source == "run bound"
    assert rule.level == pytest.approx(math.sqrt(0.9) * rule.run_level_bound())
    assert np.isnan(rule.level_history()[0]) or rule.level_history()[0] >= rule.level
    with pytest.raises(ValueError, match="unknown level"):
        RiskRule(constants.weight, constants.offset, max_iterations=10, error_scale=1.0, level_bound=None)


# -- the estimate ---------------------------------------------------------------------------------
def test_the_estimate_is_right_with_a_known_level_and_withheld_with_a_vague_one() -> None:
    curves = smoother_family()
    best = int(np.argmin(curves["mse"]))
    truth = -10 * math.log10(curves["mse"][best])
    known = estimate_psnr(curves["loss"][best], curves["p"][best], LevelEstimate(0.1, 0.099, 0.101, "given"))
    assert known.value is not None and abs(known.value - truth) < 0.5
    assert known.interval[0] <= truth <= known.interval[1]
    vague = estimate_psnr(curves["loss"][best], curves["p"][best], level_interval(0.1, given=False))
    assert vague.value is None and "known only within" in vague.reason


def test_a_risk_at_or_below_zero_is_never_a_psnr_and_none_is_above_60_db() -> None:
    loss, p = 0.0081, 0.05  # the risk at s = 0.1 is 0.0081 - 0.0090 < 0
    assert estimate_psnr(loss, p, LevelEstimate(0.1, 0.1, 0.1, "given")).reason.startswith("the risk")
    nearly = 0.01 * 0.9 * (1 + 1e-7)  # a risk of ~1e-9: 90 dB
    tiny = estimate_psnr(nearly, p, LevelEstimate(0.1, 0.1, 0.1, "given"))
    assert tiny.value is None and "above 60 dB" in tiny.reason
    low, high = error_interval(loss, p, 0.09, 0.11)
    assert low < 0 < high


def _recorded(stem: str) -> dict:
    path = RECORDED / f"{stem}.json"
    if not path.is_file():
        pytest.skip(f"{stem} is not recorded")
    run = json.loads(path.read_text())
    run["traces"] = dict(np.load(path.with_suffix(".npz")))
    return run


@pytest.mark.parametrize(("stem", "level"), [("kate-jpeg-s0", 0.0617), ("snail-s0", 0.1224)])
def test_the_jpeg_risk_is_never_negative(stem: str, level: float) -> None:
    """With the level a JPEG file's tables give (the values bench/noise_study.py computes) the
    risk went negative on both recorded JPEG runs; the run's bound cuts the level so that no
    smoothed risk is negative and the error estimate is positive or None."""
    run = _recorded(stem)
    traces = run["traces"]
    constants = risk_constants("twin", noise_level=level, probe_std=0.04, rho=run["rho"])
    rule = RiskRule(constants.weight, constants.offset, max_iterations=run["cap"], error_scale=1.0 / constants.rho)
    _feed(rule, loss=traces["loss"][0], loss_ema=traces["loss_ema"][0], p=traces["p"][1] - traces["p"][0],
          p_ema=traces["p_ema"][1] - traces["p_ema"][0])
    assert rule.level_source == "run bound" and rule.level < level
    for output in ("raw", "ema"):
        assert np.nanmin(rule.smoothed_risk(output)) >= 0
    old = RiskRule(constants.weight, constants.offset, max_iterations=run["cap"], error_scale=1.0 / constants.rho,
                   level_bound=None)
    _feed(old, loss=traces["loss"][0], loss_ema=traces["loss_ema"][0], p=traces["p"][1] - traces["p"][0],
          p_ema=traces["p_ema"][1] - traces["p_ema"][0])
    assert np.nanmin(old.smoothed_risk("ema")) < 0  # the test can tell: today's rule went negative
    error = rule.estimated_error()
    assert error is None or error > 0


# -- live runs: what a restoration shows ------------------------------------------------------------
@pytest.fixture
def short() -> dict:
    return {"config": DIPConfig(net=DENOISE_SPEC.scaled(0.125), max_iterations=120), "seed": 0, "device": "cpu",
            "progress": False, "stop_config": StopConfig(sync_every=10)}


def test_a_jpeg_restoration_never_shows_a_negative_risk_or_an_estimate(tmp_path: Path, short: dict) -> None:
    path = tmp_path / "photo.jpg"
    Image.fromarray((smooth_image(64) * 255).round().astype(np.uint8)).save(path, quality=10)
    result = restore(path, "jpeg", **short)
    assert result.rule == "risk" and result.estimated_psnr is None and "JPEG" in result.estimated_psnr_reason
    smoothed = [v for label, v in result.history.scores.items() if "-mean" in label]
    assert smoothed and all(np.nanmin(v) >= 0 for v in smoothed)


def test_a_deblur_restoration_does_not_show_the_blurred_images_error_as_its_own(short: dict) -> None:
    """The risk of a blur is the error of the blurred image; before issue 15 it was printed
    as the image's PSNR (41.5 dB for a 21.6 dB image). A restoration now withholds it."""
    from oscfast import degrade

    clean = smooth_image(64)
    observed = degrade(clean, "deblur", sigma=1.5, noise=0.03, seed=0)
    result = restore(observed, "deblur", blur_sigma=1.5, reference=clean, **short)
    assert result.rule == "risk" and result.estimated_psnr is None
    assert "measurement space" in result.estimated_psnr_reason


def test_the_measurement_space_risk_misses_what_a_blur_removes() -> None:
    """Why the deblur estimate is withheld: on a linear deconvolution (Tikhonov, 1-D) SURE in
    measurement space estimates |A x - A x0|^2 right, but the image's error is many times
    larger; a PSNR made from it would be several dB too high."""
    rng = np.random.default_rng(1)
    size, level = 4096, 0.02
    frequency = np.fft.fftfreq(size)
    blur = np.exp(-2 * np.pi**2 * 3.0**2 * frequency**2)
    spectrum = (rng.normal(size=size) + 1j * rng.normal(size=size)) / (1 + np.abs(frequency) / 0.01)
    x0 = np.real(np.fft.ifft(spectrum))
    x0 = 0.2 * x0 / x0.std()
    observed = np.real(np.fft.ifft(blur * np.fft.fft(x0))) + rng.normal(0, level, size)
    inverse = blur / (blur**2 + 1e-3)  # x = H y, A x = (A H) y: A H is the measurement-space smoother
    estimate = np.real(np.fft.ifft(inverse * np.fft.fft(observed)))
    measured = np.real(np.fft.ifft(blur * np.fft.fft(estimate)))
    divergence = float(np.mean(blur * inverse))
    risk = float(np.mean((measured - observed) ** 2)) - level**2 * (1 - 2 * divergence)
    blurred_error = float(np.mean((measured - np.real(np.fft.ifft(blur * np.fft.fft(x0)))) ** 2))
    image_error = float(np.mean((estimate - x0) ** 2))
    assert risk == pytest.approx(blurred_error, rel=0.3)
    assert 10 * math.log10(image_error / risk) > 3  # the measurement-space "PSNR" is > 3 dB too high


def test_a_denoising_estimate_is_none_or_within_a_db(short: dict) -> None:
    clean = smooth_image(64)
    noisy = np.clip(clean + np.random.default_rng(0).normal(0, 0.1, clean.shape), 0, 1).astype(np.float32)
    effective = float(np.sqrt(np.mean((noisy - clean) ** 2)))
    for level in (None, effective):
        result = restore(noisy, "denoise", reference=clean, noise_level=level, **short)
        assert (result.estimated_psnr is None) == (result.estimated_psnr_reason is not None)
        if result.estimated_psnr is not None:
            assert abs(result.estimated_psnr - result.psnr) <= 1.0
            low, high = result.estimated_psnr_interval
            assert high - low <= StopConfig().max_estimate_width_db
