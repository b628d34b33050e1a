"""Noise models wired into degrade, restore and the CLI (issue 16).

Each model of oscfast.noise_models reaches a restoration through the denoising task: its data
term is the loss the engine minimises, its probe is the twin's pseudo-noise, its rule is the
default, and the result records which model ran (and how sure "auto" was).
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from oscfast import degrade, restore
from oscfast import noise_models as nm
from oscfast.cli import build_parser, main
from oscfast.config import DIPConfig
from oscfast.io import image_to_tensor
from oscfast.prepare import RunOptions, prepare
from oscfast.probe import gaussian_pseudo_noise
from oscfast.tasks import NOISE_MODEL_TASKS, Denoise, ImpulseDenoise, PoissonDenoise, build_task

from conftest import smooth_image

#: the probe's std and seed offset as the plan draws it (StopConfig defaults, plan.py)
PROBE_STD = 1 / 25
PROBE_SEED = 1000


def _photo(size: int = 128) -> np.ndarray:
    """scikit-image's camera man, ``size`` px, 3 channels: a photo with a wide intensity range."""
    from skimage import data

    image = Image.fromarray(data.camera()).resize((size, size), Image.LANCZOS)
    return np.repeat(np.asarray(image, dtype=np.float64)[..., None] / 255.0, 3, axis=2)


def _observation(kind: str, severity: int = 3, size: int = 64) -> np.ndarray:
    return degrade(smooth_image(size), "denoise", noise=kind, severity=severity, seed=3)


# --------------------------------------------------------------------------------------------
# degrade
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", nm.NOISE_KINDS)
def test_degrade_goes_through_the_registry_and_matches_add_noise(kind: str) -> None:
    clean = smooth_image(32)
    made = degrade(clean, "denoise", noise=kind, severity=2, seed=7)
    np.testing.assert_array_equal(made, nm.add_noise(clean, kind, 2, seed=7))
    assert made.dtype == np.float32 and made.shape == clean.shape


def test_degrade_gaussian_without_severity_is_todays_sigma_noise() -> None:
    clean = smooth_image(32)
    today = degrade(clean, "denoise", sigma=0.1, seed=2)
    np.testing.assert_array_equal(degrade(clean, "denoise", noise="gaussian", sigma=0.1, seed=2), today)
    np.testing.assert_array_equal(degrade(clean, "denoise", noise="poisson", seed=2),
                                  nm.add_noise(clean, "poisson", 3, seed=2))  # default severity 3


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"noise": "salt"}, "noise must be one of 'gaussian', 'poisson', 'speckle', 'impulse'"),
        ({"noise": "poisson", "severity": 6}, r"severity must be an integer in 1..5, got 6"),
        ({"noise": "speckle", "severity": 2.5}, r"severity must be an integer in 1..5"),
        ({"noise": "poisson", "sigma": 0.1}, "sigma apply only to Gaussian noise"),
        ({"severity": 3, "clip": False}, "clip apply only to Gaussian noise"),
    ],
)
def test_degrade_refuses_bad_noise_and_severity(options: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        degrade(smooth_image(32), "denoise", **options)


# --------------------------------------------------------------------------------------------
# restore: data term, probe, rule
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", nm.NOISE_KINDS)
def test_restore_fits_with_the_models_data_term(kind: str, tiny_config: DIPConfig) -> None:
    """The loss trace is the model's data term of the returned fit's output against y."""
    y = _observation(kind)
    result = restore(y, task="denoise", noise=kind, config=tiny_config, max_iterations=6, progress=False,
                     device="cpu", stop="never")
    assert result.noise_model == kind and result.noise_confidence is None
    assert type(result.task_object) is NOISE_MODEL_TASKS[kind]
    assert result.rule == nm.STOP_RULES[kind] and result.probe == "twin"
    measured, target = image_to_tensor(result.last_image), image_to_tensor(y)
    known = image_to_tensor(nm.impulse_known_mask(y)) if kind == "impulse" else None
    if known is not None:  # last_image has the known values put back: the fit's own are the rest
        measured = known * measured
    term = nm.data_term(nm.DATA_TERMS[kind], scale=result.noise_parameter, known=known)
    expected = float(term(measured, target)[0])
    assert result.history.loss[-1] == pytest.approx(expected, rel=1e-4)
    if kind == "impulse":  # not plain MSE: the check can tell the terms apart
        assert abs(float(nm.mse_data_term(measured, target)[0]) - expected) > 0.01 * expected


@pytest.mark.parametrize("kind", ["poisson", "speckle"])
def test_shaped_probe_and_risk_level(kind: str, tiny_config: DIPConfig) -> None:
    """Shot and speckle: the twin's probe is N(0, std^2 v / mean v) and the risk reads
    s = sqrt(mean v) (docs/noise-models.md)."""
    y = _observation(kind)
    job = prepare(y, "denoise", RunOptions(config=tiny_config, device="cpu", progress=False), {"noise": kind})
    c = job.task.noise_choice.parameter
    assert c == pytest.approx(nm.estimate_noise_parameter(y, kind))
    v = nm.noise_variance_map(y.astype(np.float64), kind, c)
    shape = image_to_tensor(np.sqrt(v / v.mean()).astype(np.float32))
    expected = gaussian_pseudo_noise(tuple(shape.shape), PROBE_STD, seed=PROBE_SEED) * shape
    probe = job.plan.fits[1].probe
    torch.testing.assert_close(probe, expected)
    assert float(probe.pow(2).mean().sqrt()) == pytest.approx(PROBE_STD, rel=0.05)
    assert not torch.allclose(probe, gaussian_pseudo_noise(tuple(shape.shape), PROBE_STD, seed=PROBE_SEED))
    assert job.plan.noise_level == pytest.approx(math.sqrt(v.mean()))


def test_impulse_probe_skips_values_at_0_and_1_and_uses_the_knee(tiny_config: DIPConfig) -> None:
    y = _observation("impulse")
    job = prepare(y, "denoise", RunOptions(config=tiny_config, device="cpu", progress=False), {"noise": "impulse"})
    probe = job.plan.fits[1].probe[0].permute(1, 2, 0).numpy()
    extreme = (y == 0) | (y == 1)
    assert extreme.mean() > 0.3  # severity 3 replaces half the values
    assert np.all(probe[extreme] == 0) and np.all(probe[~extreme] != 0)
    assert float(probe[~extreme].std()) == pytest.approx(PROBE_STD, rel=0.05)
    assert job.plan.rule == "knee" and job.plan.noise_level is None


def test_impulse_values_are_missing_data(tiny_config: DIPConfig) -> None:
    """The impulses never reach the loss and the known values come back exactly: the same run
    on an observation whose impulses are other values gives the same fit and image."""
    y = _observation("impulse")
    known = nm.impulse_known_mask(y).astype(bool)
    other = np.where(known, y, 1.0 - y).astype(np.float32)  # every impulse flipped 0 <-> 1
    assert np.array_equal(nm.impulse_known_mask(other).astype(bool), known)
    runs = [restore(obs, task="denoise", noise="impulse", config=tiny_config, max_iterations=5, progress=False,
                    device="cpu", stop="never") for obs in (y, other)]
    np.testing.assert_array_equal(runs[0].history.loss, runs[1].history.loss)
    np.testing.assert_array_equal(runs[0].image, runs[1].image)
    np.testing.assert_array_equal(runs[0].image[known], y[known])  # known values put back
    assert not np.array_equal(runs[0].image[~known], y[~known])  # the impulses are not


def test_default_stays_gaussian(tiny_config: DIPConfig) -> None:
    """No noise=: the plain Denoise with today's probe; the same run as noise="gaussian"."""
    y = degrade(smooth_image(64), "denoise", seed=1)
    options = RunOptions(config=tiny_config, device="cpu", progress=False)
    job = prepare(y, "denoise", options)
    assert type(job.task) is Denoise and job.plan.rule == "risk"
    torch.testing.assert_close(job.plan.fits[1].probe, gaussian_pseudo_noise((1, 3, 64, 64), PROBE_STD, seed=PROBE_SEED),
                               rtol=0, atol=0)
    assert "noise" not in job.fingerprint()
    runs = [restore(y, config=tiny_config, max_iterations=5, progress=False, device="cpu", **extra)
            for extra in ({}, {"noise": "gaussian"})]
    np.testing.assert_array_equal(runs[0].image, runs[1].image)
    np.testing.assert_array_equal(runs[0].history.loss, runs[1].history.loss)
    assert runs[0].noise_model == "gaussian" and runs[0].noise_parameter is None


@pytest.mark.parametrize("kind", [kind for kind in nm.NOISE_KINDS if nm.STOP_RULES[kind] == "risk"])
def test_a_model_stopped_by_the_risk_fits_the_squared_residual(kind: str) -> None:
    """SURE reads |x_A - y|^2: the loss of every model whose default is the risk rule must be
    the MSE (a Poisson likelihood as the loss made the risk never rise: a run to the cap)."""
    y = image_to_tensor(_observation(kind))
    task = Denoise.with_noise(y, kind)
    x = torch.full_like(y, 0.4)
    assert task.loss(x, y).shape == ()
    assert float(task.loss(x, y)) == pytest.approx(float(torch.mean((x - y) ** 2)), rel=1e-6)
    if kind == "poisson":  # the likelihood differs, so the check can fail
        assert isinstance(task, PoissonDenoise)
        likelihood = float(nm.poisson_data_term(x, y, scale=task.noise_choice.parameter)[0])
        assert abs(likelihood - float(task.loss(x, y))) > 0.5 * float(task.loss(x, y))


# --------------------------------------------------------------------------------------------
# "auto"
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", nm.NOISE_KINDS)
def test_auto_picks_the_model_of_synthetic_noise(kind: str) -> None:
    y = nm.add_noise(_photo(), kind, 3, seed=5)
    task = build_task("denoise", y, noise="auto")
    assert type(task) is NOISE_MODEL_TASKS[kind]
    assert task.noise_choice.kind == kind and task.noise_choice.detected
    assert 0.0 <= task.noise_choice.confidence <= 1.0


def test_restore_auto_records_the_pick(tiny_config: DIPConfig) -> None:
    y = _observation("impulse")
    result = restore(y, task="denoise", noise="auto", config=tiny_config, max_iterations=4, progress=False, device="cpu")
    assert isinstance(result.task_object, ImpulseDenoise)
    assert result.noise_model == "impulse" and result.rule == "knee"
    assert result.noise_parameter == pytest.approx(0.5, abs=0.05) and result.noise_confidence > 0.5


# --------------------------------------------------------------------------------------------
# errors
# --------------------------------------------------------------------------------------------
def test_restore_refuses_a_bad_noise(tiny_config: DIPConfig) -> None:
    y = degrade(smooth_image(64), "denoise", seed=1)
    with pytest.raises(ValueError, match="noise must be one of 'gaussian', 'poisson', 'speckle', 'impulse', 'auto', got 'shot'"):
        restore(y, task="denoise", noise="shot", config=tiny_config, progress=False, device="cpu")
    with pytest.raises(ValueError, match=r"\['noise'\] do not apply to task 'jpeg'"):
        restore(y, task="jpeg", noise="poisson", config=tiny_config, progress=False, device="cpu")
    with pytest.raises(ValueError, match="parameter= does not apply to noise='gaussian'"):
        Denoise.with_noise(image_to_tensor(y), "gaussian", parameter=0.1)


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------
def test_cli_restore_takes_noise(tmp_path: Path, capsys) -> None:
    noisy = tmp_path / "noisy.png"
    Image.fromarray((_observation("impulse", size=40) * 255).round().astype(np.uint8)).save(noisy)
    out = tmp_path / "out.png"
    assert main(["restore", str(noisy), "-o", str(out), "--noise", "auto", "--max-iterations", "3", "--device", "cpu"]) == 0
    assert out.is_file()
    assert "noise model impulse (auto, confidence" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["restore", str(noisy), "-o", str(out), "--noise", "salt"])
    assert "invalid choice: 'salt'" in capsys.readouterr().err


def test_cli_restore_dir_takes_noise(tmp_path: Path) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    Image.fromarray((_observation("poisson", size=40) * 255).round().astype(np.uint8)).save(folder / "a.png")
    parser = build_parser()
    assert parser.parse_args(["restore-dir", str(folder), "-o", "x", "--noise", "poisson"]).noise == "poisson"
    code = main(["restore-dir", str(folder), "-o", str(tmp_path / "out"), "--noise", "poisson", "--max-iterations", "2",
                 "--device", "cpu", "--quiet"])
    assert code == 0 and (tmp_path / "out" / "a.png").is_file()
