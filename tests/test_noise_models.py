"""Noise models beyond Gaussian (oscfast.noise_models, issue 16).

Reference: the definitions' exact moments (clipped normal, clipped Poisson, the impulse mixture),
checked against independent numerical integration, and the ES-WMV benchmark's own files. The
``imagecorruptions`` package (ImageNet-C's code) does not import here (it needs
``pkg_resources``, gone from setuptools >= 81, and ``scipy.ndimage.interpolation``), so it is not
used.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import integrate, stats

from oscfast import noise_models as nm

ESWMV = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "eswmv"
BENCH_IMAGES = ("Baboon", "F16", "Lena", "kodim02", "kodim12")
FILE_KIND = {"gaussian": "gaussian", "poisson": "shot", "speckle": "speckle", "impulse": "impulse"}


def ramp(size: int = 256, levels: int = 21, channels: int = 3) -> np.ndarray:
    """Clean image whose values are ``levels`` grey levels 0..1 in vertical bands."""
    values = np.linspace(0.0, 1.0, levels)
    band = values[np.arange(size) * levels // size]
    return np.broadcast_to(band[None, :, None], (size, size, channels)).astype(np.float64).copy()


def photo(name: str, size: int = 128) -> np.ndarray:
    """A scikit-image photo resized to ``size`` px, float in [0, 1], 3 channels."""
    from skimage import data

    crops = {
        "astronaut": lambda a: a,
        "camera": lambda a: np.repeat(a[..., None], 3, axis=2),
        "coffee": lambda a: a[:, 100:500],
        "chelsea": lambda a: a[:, 50:350],
    }
    pixels = crops[name](getattr(data, name)())
    image = Image.fromarray(np.ascontiguousarray(pixels)).resize((size, size), Image.LANCZOS)
    return np.asarray(image).astype(np.float64) / 255.0


# --------------------------------------------------------------------------------------------
# Vocabulary and errors
# --------------------------------------------------------------------------------------------
def test_severity_table_matches_the_benchmark_readme() -> None:
    readme = {
        "gaussian": (0.12, 0.18, 0.26),
        "poisson": (25, 12, 5),
        "speckle": (0.20, 0.35, 0.45),
        "impulse": (0.30, 0.50, 0.70),
    }
    for kind, values in readme.items():
        assert [nm.severity_parameter(kind, s) for s in (2, 3, 4)] == pytest.approx(values)
    assert set(nm.SEVERITY_PARAMETERS) == set(nm.NOISE_KINDS)
    assert all(len(v) == 5 for v in nm.SEVERITY_PARAMETERS.values())


@pytest.mark.parametrize("kind", ["gauss", "shot", "Gaussian", None, 3])
def test_bad_kind_is_a_clear_error(kind: object) -> None:
    with pytest.raises(ValueError, match=r"noise must be one of 'gaussian', 'poisson', 'speckle', 'impulse', got") as info:
        nm.add_noise(np.zeros((4, 4, 3)), kind, 3)  # type: ignore[arg-type]
    assert repr(kind) in str(info.value)


@pytest.mark.parametrize("severity", [0, 6, -1, 2.5, True, "3", None])
def test_bad_severity_is_a_clear_error(severity: object) -> None:
    with pytest.raises(ValueError, match=r"severity must be an integer in 1\.\.5, got") as info:
        nm.add_noise(np.zeros((4, 4, 3)), "gaussian", severity)  # type: ignore[arg-type]
    assert repr(severity) in str(info.value)


def test_bad_images_are_rejected() -> None:
    with pytest.raises(TypeError, match="divide a uint8 image by 255"):
        nm.add_noise(np.zeros((4, 4), np.uint8), "gaussian", 1)
    with pytest.raises(ValueError, match=r"must lie in \[0, 1\]"):
        nm.add_noise(np.full((4, 4), 1.5), "gaussian", 1)
    with pytest.raises(ValueError, match="shape"):
        nm.add_noise(np.zeros(4), "gaussian", 1)
    with pytest.raises(ValueError, match="impulse share must lie in"):
        nm.apply_noise(np.zeros((4, 4)), "impulse", 1.5)
    with pytest.raises(ValueError, match="poisson scale"):
        nm.apply_noise(np.zeros((4, 4)), "poisson", 0.0)


@pytest.mark.parametrize("kind", nm.NOISE_KINDS)
def test_add_noise_contract(kind: str) -> None:
    clean = ramp(32, 5)
    before = clean.copy()
    noisy = nm.add_noise(clean, kind, 5, seed=3)
    np.testing.assert_array_equal(clean, before)  # no mutation
    assert noisy.shape == clean.shape and noisy.dtype == np.float32
    assert noisy.min() >= 0.0 and noisy.max() <= 1.0
    np.testing.assert_array_equal(noisy, nm.add_noise(clean, kind, 5, seed=3))
    assert not np.array_equal(noisy, nm.add_noise(clean, kind, 5, seed=4))
    gray = nm.add_noise(clean[..., 0], kind, 2, seed=0)
    assert gray.shape == (32, 32)


# --------------------------------------------------------------------------------------------
# Distribution: exact moments of the definitions
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("kind", "x", "c"),
    [("gaussian", 0.1, 0.26), ("gaussian", 0.93, 0.38), ("speckle", 0.8, 0.6), ("speckle", 0.3, 0.15)],
)
def test_clipped_normal_moments_match_numerical_integration(kind: str, x: float, c: float) -> None:
    std = c if kind == "gaussian" else c * x
    density = stats.norm(x, std)
    inside_1 = integrate.quad(lambda v: v * density.pdf(v), 0, 1)[0]
    inside_2 = integrate.quad(lambda v: v * v * density.pdf(v), 0, 1)[0]
    above = density.sf(1.0)
    mean = inside_1 + above
    var = inside_2 + above - mean**2
    got_mean, got_var = nm.clipped_moments(kind, x, c)
    assert float(got_mean) == pytest.approx(mean, rel=1e-7)
    assert float(got_var) == pytest.approx(var, rel=1e-6)


@pytest.mark.parametrize(("x", "c"), [(0.05, 3.0), (0.5, 5.0), (0.9, 12.0), (0.7, 60.0), (0.3, 7.5)])
def test_clipped_poisson_moments_match_a_direct_sum(x: float, c: float) -> None:
    k = np.arange(0, 400)
    pmf = stats.poisson(x * c).pmf(k)
    values = np.minimum(k / c, 1.0)
    mean = np.sum(pmf * values)
    var = np.sum(pmf * values**2) - mean**2
    got_mean, got_var = nm.clipped_moments("poisson", x, c)
    assert float(got_mean) == pytest.approx(mean, rel=1e-9)
    assert float(got_var) == pytest.approx(var, rel=1e-8)


def _binned_check(kind: str, severity: int, seed: int) -> None:
    clean = ramp(256, 21)
    c = nm.severity_parameter(kind, severity)
    noisy = nm.add_noise(clean, kind, severity, seed=seed).astype(np.float64)
    diff = noisy - clean
    for level in np.unique(clean):
        d = diff[clean == level]
        n = d.size
        mean, var = nm.clipped_moments(kind, level, c)
        expected_mean, expected_var = float(mean) - level, float(var)
        if expected_var == 0.0:
            np.testing.assert_allclose(d, expected_mean, atol=1e-6)
            continue
        # standard errors of the sample mean and variance (from the sample's 4th moment)
        se_mean = np.sqrt(expected_var / n)
        centred = d - d.mean()
        se_var = np.sqrt(max(np.mean(centred**4) - expected_var**2, 0.0) / n)
        assert abs(d.mean() - expected_mean) < 5 * se_mean + 1e-6, (kind, level)
        assert abs(d.var() - expected_var) < 5 * se_var + 1e-7, (kind, level)


@pytest.mark.parametrize("kind", ["gaussian", "poisson", "speckle"])
@pytest.mark.parametrize("severity", [1, 3, 5])
def test_noise_matches_the_definition_per_intensity_bin(kind: str, severity: int) -> None:
    """Mean and variance of noisy - clean at each clean level (9400 values each): within 5
    standard errors of the exact clipped moments."""
    _binned_check(kind, severity, seed=severity)


@pytest.mark.parametrize("severity", [1, 3, 5])
def test_impulse_share_and_moments(severity: int) -> None:
    _binned_check("impulse", severity, seed=11)
    c = nm.severity_parameter("impulse", severity)
    clean = ramp(256, 21)
    noisy = nm.add_noise(clean, "impulse", severity, seed=12).astype(np.float64)
    interior = (clean > 0) & (clean < 1)
    n = interior.sum()
    se = np.sqrt(c * (1 - c) / n)
    hit = (noisy[interior] == 0.0) | (noisy[interior] == 1.0)
    assert abs(np.mean(hit) - c) < 5 * se
    salt, pepper = np.mean(noisy[interior] == 1.0), np.mean(noisy[interior] == 0.0)
    assert abs(salt - pepper) < 5 * np.sqrt(c / n)
    # untouched values are exactly the clean ones
    kept = interior & (noisy != 0) & (noisy != 1)
    np.testing.assert_allclose(noisy[kept], clean[kept], atol=1e-7)


def test_a_wrong_definition_would_fail_the_check(monkeypatch: pytest.MonkeyPatch) -> None:
    """The binned check has power: unclipped-variance moments (ignoring clipping) fail it."""

    def unclipped(kind: str, clean: np.ndarray | float, parameter: float) -> tuple[np.ndarray, np.ndarray]:
        x = np.asarray(clean, float)
        return x, np.full_like(x, parameter**2)

    monkeypatch.setattr(nm, "clipped_moments", unclipped)
    with pytest.raises(AssertionError):
        _binned_check("gaussian", 3, seed=3)


# --------------------------------------------------------------------------------------------
# Distribution: the benchmark's own files
# --------------------------------------------------------------------------------------------
needs_eswmv = pytest.mark.skipif(not ESWMV.is_dir(), reason="../shared/data/eswmv is not here")


def _load(name: str) -> np.ndarray:
    with Image.open(ESWMV / f"{name}.png") as opened:
        return np.asarray(opened.convert("RGB")).astype(np.float64)


@needs_eswmv
@pytest.mark.parametrize("kind", nm.NOISE_KINDS)
@pytest.mark.parametrize("severity", [2, 4])
def test_add_noise_matches_the_benchmark_files(kind: str, severity: int) -> None:
    """Per clean-intensity bin (8 bins, two images), the mean and std of noisy - clean of the
    benchmark file and of ``floor(255 * add_noise(clean))`` (the files are np.uint8 of the
    float) agree within 5 standard errors of their difference (plus half a grey level)."""
    for image in ("F16", "kodim02"):
        clean = _load(f"{image}_clean")
        theirs = _load(f"{image}_{FILE_KIND[kind]}{severity}") - clean
        ours = np.floor(255 * nm.add_noise(clean / 255, kind, severity, seed=0).astype(np.float64)) - clean
        edges = np.quantile(clean, np.linspace(0, 1, 9))
        index = np.clip(np.searchsorted(edges, clean, side="right") - 1, 0, 7)
        for b in range(8):
            a, o = theirs[index == b], ours[index == b]
            if a.size < 1000:
                continue
            se_mean = np.sqrt(a.var() / a.size + o.var() / o.size)
            assert abs(a.mean() - o.mean()) < 5 * se_mean + 0.5, (image, b, a.mean(), o.mean())
            # std: SE of a sample std ~ std * sqrt(kurtosis - 1) / (2 sqrt(n))
            kurt = max(stats.kurtosis(a, fisher=False), 1.0)
            se_std = a.std() * np.sqrt((kurt - 1) * (1 / a.size + 1 / o.size)) / 2
            assert abs(a.std() - o.std()) < 5 * se_std + 0.5, (image, b, a.std(), o.std())
        if kind == "impulse":
            share = np.mean((theirs + clean == 0) | (theirs + clean == 255))
            assert share == pytest.approx(nm.severity_parameter(kind, severity), abs=0.01)


# --------------------------------------------------------------------------------------------
# Data terms
# --------------------------------------------------------------------------------------------
def _pair(k: int = 2, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    measured = 0.1 + 0.8 * torch.rand(k, 2, 3, 3, generator=g, dtype=torch.float64)
    target = 0.1 + 0.8 * torch.rand(k, 2, 3, 3, generator=g, dtype=torch.float64)
    return measured, target


#: a known-value mask for the "known-mse" term on _pair's (K, 2, 3, 3) tensors
KNOWN = torch.tensor([[1.0, 0.0, 1.0], [1.0, 1.0, 0.0], [0.0, 1.0, 1.0]], dtype=torch.float64).expand(1, 2, 3, 3)


@pytest.mark.parametrize("name", ["mse", "known-mse", "l1", "poisson"])
def test_data_terms_are_per_fit(name: str) -> None:
    term = nm.data_term(name, scale=12.0, known=KNOWN)
    measured, target = _pair(3)
    losses = term(measured, target)
    assert losses.shape == (3,)
    for k in range(3):
        single = term(measured[k : k + 1], target[k : k + 1])
        assert float(single) == pytest.approx(float(losses[k]), rel=1e-12)
    assert torch.all(term(target, target) == 0)
    assert torch.all(losses > 0)


def test_data_term_errors() -> None:
    with pytest.raises(ValueError, match="needs scale="):
        nm.data_term("poisson")
    with pytest.raises(ValueError, match="needs known="):
        nm.data_term("known-mse")
    with pytest.raises(ValueError, match="one of 'mse', 'known-mse', 'l1', 'poisson', got 'l2'"):
        nm.data_term("l2")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"\(K, C, H, W\)"):
        nm.mse_data_term(torch.zeros(1, 1, 2, 2), torch.zeros(1, 1, 2, 3))
    with pytest.raises(ValueError, match="scale must be a positive"):
        nm.poisson_data_term(torch.zeros(1, 1, 2, 2), torch.zeros(1, 1, 2, 2), scale=0.0)
    assert nm.default_data_term("impulse") == "known-mse" and nm.default_data_term("poisson") == "mse"


@pytest.mark.parametrize("name", ["mse", "known-mse", "l1", "poisson"])
def test_data_term_gradcheck(name: str) -> None:
    term = nm.data_term(name, scale=5.0, known=KNOWN)
    measured, target = _pair(2, seed=1)
    # l1 is not differentiable at ties: keep |measured - target| > 0.05 (gradcheck's steps are 1e-6)
    measured = torch.where((measured - target).abs() < 0.05, target + 0.1, measured)
    measured.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda m: term(m, target), (measured,))
    target = target.clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda t: term(measured.detach(), t), (target,))


def test_data_term_gradients_match_closed_forms() -> None:
    measured, target = _pair(2, seed=2)
    n = measured[0].numel()
    c = 12.0
    e = 1.0 / c
    for name, expected in [
        ("mse", 2 * (measured - target) / n),
        ("known-mse", 2 * KNOWN * (measured - target) / n),
        ("l1", torch.sign(measured - target) / n),
        ("poisson", c * (1 - (target + e) / (measured + e)) / n),
    ]:
        m = measured.clone().requires_grad_(True)
        nm.data_term(name, scale=c, known=KNOWN)(m, target).sum().backward()
        torch.testing.assert_close(m.grad, expected, rtol=1e-12, atol=1e-14)


def test_poisson_term_is_unbiased_and_takes_any_target() -> None:
    """Its expected gradient vanishes at the clean image (counts of mean c x0), which the
    Anscombe MSE's does not; a target below -offset (a probe on a black pixel) stays finite."""
    c, x0 = 5.0, 0.3
    k = np.arange(0, 200)
    pmf = stats.poisson(c * x0).pmf(k)
    targets = torch.tensor(k / c, dtype=torch.float64).view(-1, 1, 1, 1)
    m = torch.full_like(targets, x0, requires_grad=True)
    nm.poisson_data_term(m, targets, scale=c).sum().backward()
    expected_gradient = float(np.sum(pmf * m.grad.view(-1).numpy()))
    assert abs(expected_gradient) < 1e-9
    # Anscombe: E[(2 sqrt(c y + 3/8) - 2 sqrt(c x0 + 3/8))] is clearly negative (the bias)
    anscombe_gap = np.sum(pmf * (2 * np.sqrt(k + 3 / 8))) - 2 * np.sqrt(c * x0 + 3 / 8)
    assert anscombe_gap < -0.1
    loss = nm.poisson_data_term(torch.full((1, 1, 2, 2), 0.5), torch.full((1, 1, 2, 2), -0.5), scale=c)
    assert torch.isfinite(loss).all()


# --------------------------------------------------------------------------------------------
# Estimators
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["camera", "coffee", "chelsea"])
@pytest.mark.parametrize("c", [5.0, 12.0, 25.0])
def test_poisson_scale_estimate(name: str, c: float) -> None:
    estimate = nm.estimate_poisson_scale(nm.apply_noise(photo(name), "poisson", c, seed=1))
    assert estimate == pytest.approx(c, rel=0.15)


@pytest.mark.parametrize("name", ["camera", "coffee", "chelsea"])
@pytest.mark.parametrize("c", [0.2, 0.35, 0.6])
def test_speckle_level_estimate(name: str, c: float) -> None:
    estimate = nm.estimate_speckle_level(nm.apply_noise(photo(name), "speckle", c, seed=2))
    assert estimate == pytest.approx(c, rel=0.12)


@pytest.mark.parametrize("name", ["astronaut", "camera", "coffee"])
@pytest.mark.parametrize("c", [0.1, 0.3, 0.7, 0.9])
def test_impulse_share_estimate(name: str, c: float) -> None:
    estimate = nm.estimate_impulse_share(nm.apply_noise(photo(name), "impulse", c, seed=3))
    assert estimate == pytest.approx(c, abs=0.03)


def test_impulse_share_ignores_clean_saturation() -> None:
    """A clean image with a black and a white quarter: its own 0s and 1s are not impulses
    (counting them would read 0.5; the edges of the areas leave ~0.01)."""
    clean = photo("coffee")
    clean[:64, :64] = 0.0
    clean[64:, 64:] = 1.0
    assert nm.estimate_impulse_share(clean) < 0.02
    assert nm.estimate_impulse_share(nm.apply_noise(clean, "impulse", 0.3, seed=0)) == pytest.approx(0.3, abs=0.03)


def test_gaussian_level_uses_the_library_estimator() -> None:
    from oscfast.noise_level import estimate_noise_level

    noisy = nm.apply_noise(photo("chelsea"), "gaussian", 0.08, seed=4)
    assert nm.estimate_gaussian_level(noisy) == estimate_noise_level(noisy.astype(np.float64))
    assert nm.estimate_gaussian_level(noisy) == pytest.approx(0.08, rel=0.1)


def test_law_fit_models_clipping() -> None:
    """Heavy Gaussian noise clips a lot; the law fit still finds its parameter."""
    noisy = nm.apply_noise(photo("camera"), "gaussian", 0.26, seed=5)
    parameter, misfit = nm.fit_noise_law(nm.variance_profile(noisy), "gaussian")
    assert parameter == pytest.approx(0.26, rel=0.08)
    assert misfit < 0.2
    with pytest.raises(ValueError, match="fit_noise_law fits"):
        nm.fit_noise_law(nm.variance_profile(noisy), "impulse")


def test_noise_variance_map() -> None:
    clean = ramp(64, 5)
    v = nm.noise_variance_map(clean, "poisson", 10.0)
    assert v.shape == clean.shape
    middle = clean == 0.5
    assert np.median(v[middle]) == pytest.approx(float(nm.clipped_moments("poisson", 0.5, 10.0)[1]), rel=0.05)
    assert np.median(nm.noise_variance_map(clean, "speckle", 0.2)[middle]) == pytest.approx(0.01, rel=0.05)
    with pytest.raises(ValueError, match="impulse noise has no per-entry variance"):
        nm.noise_variance_map(clean, "impulse", 0.3)


# --------------------------------------------------------------------------------------------
# "auto"
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["astronaut", "camera", "coffee", "chelsea"])
@pytest.mark.parametrize("kind", nm.NOISE_KINDS)
def test_detect_noise_on_synthetic_images(name: str, kind: str) -> None:
    """Severities 2..4, two seeds each: every pick right, the parameter close."""
    clean = photo(name)
    for severity in (2, 3, 4):
        c = nm.severity_parameter(kind, severity)
        for seed in (0, 1):
            guess = nm.detect_noise(nm.add_noise(clean, kind, severity, seed=seed))
            assert guess.kind == kind, (severity, seed, guess)
            assert 0.0 <= guess.confidence <= 1.0
            tolerance = {"gaussian": 0.1, "poisson": 0.2, "speckle": 0.12, "impulse": 0.1}[kind]
            assert guess.parameter == pytest.approx(c, rel=tolerance), (severity, seed, guess)


@pytest.mark.parametrize("severity", [1, 5])
def test_detect_impulse_at_the_extreme_severities(severity: int) -> None:
    guess = nm.detect_noise(nm.add_noise(photo("chelsea"), "impulse", severity, seed=0))
    assert guess.kind == "impulse"
    assert guess.confidence == 1.0


def test_heavily_clipped_noise_is_not_taken_for_impulses() -> None:
    """Dark camera + heavy shot noise: many exact 0s and 1s, but noisy values between them."""
    clean = photo("camera") * 0.6
    noisy = nm.add_noise(clean, "poisson", 5, seed=0)
    assert np.mean(noisy == 0) > 0.1
    guess = nm.detect_noise(noisy)
    assert guess.kind == "poisson"
    assert guess.scores["impulse_share"] > 0.05  # the share alone would have said impulse
    assert set(guess.scores) >= {"clean_noise", "misfit_gaussian", "misfit_poisson", "misfit_speckle"}


def test_detect_noise_errors() -> None:
    with pytest.raises(ValueError, match="at least 9x9"):
        nm.detect_noise(np.zeros((8, 8, 3)))
    with pytest.raises(TypeError):
        nm.detect_noise([[0.5]])  # type: ignore[arg-type]


@needs_eswmv
def test_detect_noise_on_the_benchmark_files() -> None:
    """Severity 3 of every shared image (128 px centre crops, the runs' input): all right."""
    for image in BENCH_IMAGES:
        for kind in nm.NOISE_KINDS:
            noisy = _load(f"{image}_{FILE_KIND[kind]}3")[64:192, 64:192] / 255.0
            assert nm.detect_noise(noisy).kind == kind, (image, kind)


# --------------------------------------------------------------------------------------------
# The model a restoration uses
# --------------------------------------------------------------------------------------------
def test_poisson_term_takes_a_tensor_scale() -> None:
    y = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    x = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(nm.poisson_data_term(x, y, scale=torch.tensor(12.0)), nm.poisson_data_term(x, y, scale=12.0))


def test_choose_noise() -> None:
    noisy = nm.add_noise(ramp(64), "speckle", 3, seed=0)
    assert nm.choose_noise(noisy, "gaussian") == nm.NoiseChoice("gaussian")
    chosen = nm.choose_noise(noisy, "speckle")
    assert chosen.parameter == pytest.approx(nm.estimate_speckle_level(noisy)) and not chosen.detected
    assert nm.choose_noise(noisy, "speckle", parameter=0.3).parameter == 0.3
    with pytest.raises(ValueError, match="noise must be one of .*'auto', got 'shot'"):
        nm.choose_noise(noisy, "shot")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="parameter= does not apply to noise='auto'"):
        nm.choose_noise(noisy, "auto", parameter=0.3)
    with pytest.raises(ValueError, match="impulse share must lie in"):
        nm.choose_noise(noisy, "impulse", parameter=2.0)


def test_probe_shape() -> None:
    clean = ramp(64)
    for kind in ("poisson", "speckle"):
        noisy = nm.add_noise(clean, kind, 3, seed=0)
        s = nm.probe_shape(noisy, kind, nm.severity_parameter(kind, 3))
        assert s.shape == noisy.shape and float(np.mean(s.astype(np.float64) ** 2)) == pytest.approx(1.0, rel=1e-5)
        bright, dark = clean > 0.8, (clean > 0.1) & (clean < 0.3)
        assert s[bright].mean() > s[dark].mean()  # both noises grow with the intensity
    impulse = nm.add_noise(clean, "impulse", 3, seed=0)
    np.testing.assert_array_equal(nm.probe_shape(impulse, "impulse"), nm.impulse_known_mask(impulse))
    np.testing.assert_array_equal(nm.probe_shape(clean, "gaussian"), np.ones(clean.shape, np.float32))
    with pytest.raises(ValueError, match="left nothing to fit"):
        nm.probe_shape(np.where(np.indices(clean.shape).sum(axis=0) % 2 == 0, 0.0, 1.0), "impulse")


def test_impulse_known_mask_keeps_the_untouched_values() -> None:
    """Known: every value salt and pepper left alone, the 0s and 1s of clean saturated areas
    included; unknown: (nearly) every impulse, and nothing else."""
    clean = photo("coffee")
    clean[:64, :64] = 0.0
    clean[64:, 64:] = 1.0
    rng = np.random.default_rng(0)
    hit = rng.random(clean.shape) < 0.5  # the benchmark's severity 3: half the values replaced
    noisy = np.where(hit, rng.integers(0, 2, clean.shape).astype(np.float64), clean)
    known = nm.impulse_known_mask(noisy).astype(bool)
    assert known.shape == noisy.shape
    changed = noisy != clean  # impulses that changed a value (a 0 on a clean 0 changes nothing)
    # a wrong value is kept only where impulses complete a saturated block at its edge
    # (measured: 3 of 18508 here): fewer than 1 in 2000
    assert (known & changed).sum() < changed.sum() / 2000
    inside = (clean > 0) & (clean < 1)
    assert np.all(known[inside & ~hit])  # every untouched mid-tone kept
    saturated = ~inside & ~changed
    # the quarters' own values are kept where a 3x3 block escaped the other extreme's impulses
    # (0.75^9 per block at severity 3; measured 40% of them): the rest is filled like holes
    assert known[saturated].mean() > 0.3
    np.testing.assert_array_equal(nm.impulse_known_mask(noisy[..., 0]), known[..., 0])
    mid = photo("coffee")  # no saturated area: no wrong value kept at all
    noisy = np.where(hit, rng.integers(0, 2, mid.shape).astype(np.float64), mid)
    assert not np.any(nm.impulse_known_mask(noisy).astype(bool) & (noisy != mid))
