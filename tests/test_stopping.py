"""The online OSC rule (method.md sections 3-5)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from oscfast.config import StopConfig
from oscfast.kernels import chord_curvature
from oscfast.stopping import OSCStopper, gaussian_pseudo_noise, masked_uniform_pseudo_noise, projection

from conftest import SHARED


def knee_curve(n: int = 900, knee: int = 400, slope: float = 1e-3, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    s = np.arange(n)
    return np.where(s < knee, 0.0, (s - knee) * slope) + rng.normal(0, 1e-5, n)


def offline_choice(p: np.ndarray, stopper: OSCStopper, last_centre: int) -> int | None:
    """Independent re-statement of the rule with the batch kernel: argmax of the valid
    curvature over centres <= last_centre."""
    settings = stopper.settings
    lag = settings.half_window
    kappa = chord_curvature(p, lag, settings.smoothing, settings.t_max)
    threshold = settings.min_curvature if settings.significance == 0 else max(settings.min_curvature, settings.significance * stopper.curvature_noise())
    pbar = np.array([p[max(0, t - settings.smoothing + 1) : t + 1].mean() for t in range(p.size)])
    best, best_value = None, -np.inf
    for centre in range(lag, last_centre + 1):
        newest = centre + lag
        argmin = int(np.argmin(pbar[: newest + 1]))
        if centre - lag < argmin or not kappa[centre] > threshold:
            continue
        if kappa[centre] > best_value:
            best, best_value = centre, kappa[centre]
    return best


def test_projection_is_one_when_residual_is_the_noise() -> None:
    noise = gaussian_pseudo_noise((1, 3, 32, 32), 0.04, seed=1)
    y = torch.rand(1, 3, 32, 32)
    inv = 1.0 / float(noise.pow(2).sum())
    # P of A(x) - y = n is exactly 1 (method.md section 3)
    assert float(projection(y + noise - y, noise, inv)) == pytest.approx(1.0, abs=1e-6)
    stopper = OSCStopper(noise, max_iterations=10)
    assert stopper.projection((y + noise) - y) == pytest.approx(1.0, abs=1e-6)


def test_projection_near_zero_for_independent_output() -> None:
    # For x independent of n, <x, n>/<n, n> has mean 0 and std ||x|| / (sigma * N)
    # ~ 1 / (sigma sqrt(N)) for x in [0, 1]: with N = 3*64*64, sigma = 0.04 that is < 0.2;
    # a 5-sigma bound on the zero-mean part uses the actual norms.
    noise = gaussian_pseudo_noise((1, 3, 64, 64), 0.04, seed=2)
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(3)) - 0.5
    value = float(projection(x, noise, 1.0 / float(noise.pow(2).sum())))
    # std of <x, n>/<n, n> is sigma ||x|| / ||n||^2 for fixed x; 5 standard deviations
    bound = 5 * 0.04 * float(x.norm()) / float(noise.norm()) ** 2
    assert abs(value) < bound < 0.5


def test_pseudo_noise_statistics_and_seed() -> None:
    noise = gaussian_pseudo_noise((1, 3, 128, 128), 0.04, seed=0)
    assert float(noise.std()) == pytest.approx(0.04, rel=0.02)  # 49k samples: std rel. error ~0.3%
    assert torch.equal(noise, gaussian_pseudo_noise((1, 3, 128, 128), 0.04, seed=0))
    assert not torch.equal(noise, gaussian_pseudo_noise((1, 3, 128, 128), 0.04, seed=1))
    mask = (torch.rand(1, 1, 128, 128, generator=torch.Generator().manual_seed(0)) > 0.3).float()
    masked = masked_uniform_pseudo_noise(mask, 0.04, channels=3, seed=0)
    assert masked.shape == (1, 3, 128, 128)
    assert torch.all(masked[:, :, mask[0, 0] == 0] == 0)  # holes get no pseudo-noise
    known = masked[:, :, mask[0, 0] == 1]
    assert float(known.std()) == pytest.approx(0.04, rel=0.03)
    assert float(known.abs().max()) <= np.sqrt(3) * 0.04 + 1e-7


def test_stops_after_the_knee_with_patience() -> None:
    p = knee_curve()
    stopper = OSCStopper(max_iterations=p.size, half_window=50, patience=60)
    for chunk in np.array_split(p, 37):
        decision = stopper.update_p(chunk)
        if decision.should_stop:
            break
    assert stopper.should_stop
    # the kink sits at 400 + (w - 1)/2 after smoothing; the window is 50 wide
    assert abs(stopper.best_iteration - 404) <= 10
    assert stopper.stop_iteration == stopper.best_iteration + 50 + 60 + 1
    assert stopper.best_iteration == offline_choice(p[: stopper.stop_iteration], stopper, stopper.stop_iteration - 1 - 50)


def test_choice_frozen_after_stop() -> None:
    p = np.r_[knee_curve(600, 200), 0.4 + np.linspace(0, 1, 400) ** 2 * 5]  # later, sharper bend
    stopper = OSCStopper(max_iterations=p.size, half_window=50, patience=60)
    stopper.update_p(p)
    assert stopper.should_stop and abs(stopper.best_iteration - 204) <= 10
    assert stopper.iterations_seen == p.size


def test_concave_curve_has_no_knee() -> None:
    s = np.arange(1000)
    p = 1 - np.exp(-s / 150)  # rises fastest at the start, concave throughout (small-SR case)
    stopper = OSCStopper(max_iterations=1000, half_window=60)
    decision = stopper.update_p(p)
    assert decision.best_iteration is None and not decision.should_stop


def test_early_dip_is_ignored() -> None:
    # a dip at the start then a knee at 500: the dip's upward bend must not be chosen
    s = np.arange(1200)
    p = -0.05 * np.exp(-((s - 25) / 12.0) ** 2) + np.where(s < 500, 1e-4 * s, 0.05 + (s - 500) * 1e-3)
    stopper = OSCStopper(max_iterations=1200, half_window=60)
    stopper.update_p(p)
    assert abs(stopper.best_iteration - 504) <= 15


def test_paper_rule_takes_global_argmax() -> None:
    p = knee_curve()
    stopper = OSCStopper(max_iterations=p.size, half_window=50, rule="paper")
    stopper.update_p(p)
    kappa = chord_curvature(p, 50, 1, float(p.size))
    assert stopper.best_iteration == int(np.nanargmax(kappa))
    assert not stopper.should_stop  # offline: runs to the cap


def test_update_with_tensors_matches_update_p() -> None:
    noise = gaussian_pseudo_noise((1, 1, 8, 8), 0.1, seed=0)
    a = OSCStopper(noise, max_iterations=50, half_window=5)
    b = OSCStopper(max_iterations=50, half_window=5)
    for t in range(50):
        out = noise * (t / 50) ** 2
        da = a.update(out)
        db = b.update_p(a.p[-1])
        assert da.p == pytest.approx(t**2 / 2500, rel=1e-5, abs=1e-9)
        assert da.best_iteration == db.best_iteration
    np.testing.assert_array_equal(a.curvature, b.curvature)


def test_default_window_follows_the_cap() -> None:
    assert StopConfig().resolve(3000).half_window == 400
    assert StopConfig().resolve(3000).patience == 400
    assert StopConfig().resolve(100).half_window == 50


def test_bad_input_errors() -> None:
    stopper = OSCStopper(max_iterations=5, half_window=2)
    with pytest.raises(ValueError, match="more P values"):
        stopper.update_p(np.zeros(6))
    with pytest.raises(ValueError, match="finite"):
        stopper.update_p([np.nan])
    with pytest.raises(ValueError, match="without pseudo_noise"):
        stopper.update(np.zeros(3))
    with pytest.raises(ValueError, match="all zeros"):
        OSCStopper(np.zeros(4), max_iterations=5)
    with pytest.raises(ValueError, match="shape"):
        OSCStopper(np.ones(4), max_iterations=5).update(np.ones(5))
    with pytest.raises(ValueError, match="stop rule"):
        StopConfig(rule="magic")


@pytest.mark.skipif(not (SHARED / "data" / "curves").is_dir(), reason="../shared absent")
def test_recorded_denoising_curves_reach_95_percent() -> None:
    """On the recorded 128-px runs the default rule (L = 400 for 3000 iterations) returns an
    averaged image within 95% of the run's best raw PSNR (method.md section 6 'accuracy')."""
    for name in ("f16_denoise_osc", "kate_denoise_osc"):
        data = np.load(SHARED / "data" / "curves" / f"{name}.npz")
        stopper = OSCStopper(max_iterations=data["P"].size)
        stopper.update_p(data["P"])
        assert stopper.should_stop
        chosen = stopper.best_iteration
        assert data["psnr_ema"][chosen] / data["psnr"].max() >= 0.95, name
