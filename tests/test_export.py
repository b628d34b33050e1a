"""Tests for oscfast.export: the exported stopper step and the exported fitted generator.

Parity targets: the numba kernel (``chord_curvature``), the Python :class:`OSCStopper` (its
P, curvature and decisions; a :class:`KneeRule` fed the graph's P decides as it does) and the result of :func:`oscfast.restore`. The graphs run in
onnxruntime (CPUExecutionProvider) and as ``torch.export`` programs.
"""
from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

import oscfast
from oscfast import OSCStopper, StopConfig
from oscfast.config import DIPConfig
from oscfast.export import (
    STOPPER_INPUTS,
    STOPPER_OUTPUTS,
    StopperStep,
    export_result,
    export_stopper,
    initial_state,
)
from oscfast.kernels import chord_curvature, chord_curvature_reference
from oscfast.models import DENOISE_SPEC
from oscfast.stopping import KneeRule, PaperRule, RiskRule, Signals, trailing_mean

from conftest import smooth_image

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"

# One graph for every stopper test: L and w small enough for short curves, t_max that of the
# recorded curves. L = 30 on the F16 curve gives a late knee (stop at 1160 of 3000).
L, W, T_MAX = 30, 5, 3000
SHAPE = (3, 8, 8)
# Measured: graph vs numba <= ~5e-11 absolute with |kappa| up to ~1e3 (float64 throughout; the
# sums run in another order). The issue asks for 1e-5.
ATOL = 1e-5


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors: one thread is fastest and immune to OpenMP spin-waiting on a busy CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def stopper_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_stopper(
        tmp_path_factory.mktemp("stopper") / "stopper.onnx",
        t_max=T_MAX, image_shape=SHAPE, half_window=L, smoothing=W,
    )


@pytest.fixture(scope="module")
def session(stopper_onnx: Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(str(stopper_onnx), options, providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def f16_curve() -> np.ndarray:
    path = SHARED / "data" / "curves" / "f16_denoise_osc.npz"
    if not path.is_file():
        pytest.skip("../shared/data/curves is not present")
    return np.load(path)["P"]


def _random_curve(seed: int, n: int = 400) -> np.ndarray:
    """A P-like curve: early dip, flat-ish start, a knee at a random place, jitter."""
    rng = np.random.default_rng(seed)
    s = np.arange(n)
    knee = rng.integers(n // 3, 2 * n // 3)
    curve = -0.05 * np.exp(-s / 15) + 2e-5 * s + 4e-6 * np.maximum(s - knee, 0) ** 2
    return curve + rng.normal(0, 0.003, n) + np.cumsum(rng.normal(0, 5e-4, n))


def _measurements(curve: np.ndarray, seed: int) -> tuple[np.ndarray, list[np.ndarray]]:
    """Pseudo-noise n and float32 operator outputs A(x_t) = image + P_t n, the image orthogonal
    to n, so that <A(x_t), n>/<n, n> is curve[t] up to float32 rounding."""
    rng = np.random.default_rng(seed)
    noise = rng.normal(0, 1 / 25, (1, *SHAPE))
    image = rng.uniform(0, 1, noise.shape)
    image -= np.vdot(image, noise) / np.vdot(noise, noise) * noise
    return noise.astype(np.float32), [(image + value * noise).astype(np.float32) for value in curve]


class _OrtStopper:
    def __init__(self, session: ort.InferenceSession) -> None:
        self.session = session
        self.window, self.count = initial_state(L, W)

    def __call__(self, measured: np.ndarray, noise: np.ndarray) -> tuple[float, float, float]:
        p, p_smooth, kappa, self.window, self.count = self.session.run(
            None, {"measured": measured, "noise": noise, "window": self.window, "count": self.count}
        )
        return float(p), float(p_smooth), float(kappa)


class _ProgramStopper:
    def __init__(self, module: torch.nn.Module) -> None:
        self.module = module
        window, count = initial_state(L, W)
        self.window, self.count = torch.from_numpy(window), torch.from_numpy(count)

    def __call__(self, measured: np.ndarray, noise: np.ndarray) -> tuple[float, float, float]:
        with torch.no_grad():
            p, p_smooth, kappa, self.window, self.count = self.module(
                torch.from_numpy(measured), torch.from_numpy(noise), self.window, self.count
            )
        return float(p), float(p_smooth), float(kappa)


def _drive(step, curve: np.ndarray, seed: int) -> dict[str, object]:
    """Feed a curve through a graph and, side by side, through OSCStopper.update."""
    noise, outputs = _measurements(curve, seed)
    reference = OSCStopper(noise, max_iterations=T_MAX, half_window=L, smoothing=W)
    rule = KneeRule(max_iterations=T_MAX, half_window=L, smoothing=W)
    p, kappa, expected_p, decisions = [], [], [], []
    for t, measured in enumerate(outputs):
        p_t, p_smooth, kappa_t = step(measured, noise)
        ours = rule.update(Signals.of(t, p=p_t))
        theirs = reference.update(measured)
        decisions.append(((ours.iteration, ours.should_stop), (theirs.iteration, theirs.should_stop)))
        p.append(p_t)
        kappa.append(kappa_t)
        m64, n64 = measured.astype(np.float64), noise.astype(np.float64)
        expected_p.append(float(np.vdot(m64, n64) / np.vdot(n64, n64)))
    # the graph's kappa at step t belongs to iteration t - L
    kappa_at = np.full(len(curve), np.nan)
    kappa_at[: len(curve) - L] = np.asarray(kappa)[L:]
    return dict(
        p=np.asarray(p), expected_p=np.asarray(expected_p), kappa=kappa_at, raw_kappa=np.asarray(kappa),
        reference=reference, rule=rule, decisions=decisions,
    )


def _assert_parity(run: dict[str, object]) -> None:
    p, kappa, reference, rule = run["p"], run["kappa"], run["reference"], run["rule"]
    np.testing.assert_allclose(p, run["expected_p"], rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(p, reference.rule.history("p"), rtol=1e-12, atol=1e-15)
    numba = chord_curvature(p, L, W, T_MAX)
    np.testing.assert_array_equal(np.isnan(kappa), np.isnan(numba))
    np.testing.assert_allclose(kappa, numba, rtol=0, atol=ATOL, equal_nan=True)
    np.testing.assert_allclose(kappa, reference.rule.curvature, rtol=0, atol=ATOL, equal_nan=True)
    assert np.isnan(run["raw_kappa"][: 2 * L]).all() and not np.isnan(run["raw_kappa"][2 * L :]).any()
    for ours, theirs in run["decisions"]:
        assert ours == theirs
    assert (rule.decision.iteration, rule.decision.stop_iteration) == (reference.best_iteration, reference.stop_iteration)


# -- the stopper graph ------------------------------------------------------------------------
def test_stopper_graph_signature(session: ort.InferenceSession) -> None:
    inputs = {i.name: (i.type, i.shape) for i in session.get_inputs()}
    assert list(inputs) == list(STOPPER_INPUTS)
    assert inputs["measured"] == ("tensor(float)", [1, *SHAPE])
    assert inputs["window"] == ("tensor(double)", [2 * L + W - 1])
    assert inputs["count"] == ("tensor(int64)", [])
    assert [o.name for o in session.get_outputs()] == list(STOPPER_OUTPUTS)
    meta = session.get_modelmeta().custom_metadata_map
    assert (int(meta["oscfast.half_window"]), int(meta["oscfast.smoothing"])) == (L, W)
    assert float(meta["oscfast.t_max"]) == T_MAX


def test_stopper_graph_has_only_double_math(stopper_onnx: Path) -> None:
    """After the projection everything runs in float64 (no float32 constant sneaks in)."""
    model = onnx.load(str(stopper_onnx))
    floats = [init.name for init in model.graph.initializer if init.data_type == onnx.TensorProto.FLOAT]
    assert floats == []


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_onnx_stopper_matches_numba_and_oscstopper_on_random_curves(
    session: ort.InferenceSession, seed: int
) -> None:
    run = _drive(_OrtStopper(session), _random_curve(seed), seed)
    _assert_parity(run)


def test_onnx_stopper_matches_on_recorded_f16_curve(session: ort.InferenceSession, f16_curve: np.ndarray) -> None:
    run = _drive(_OrtStopper(session), f16_curve, seed=7)
    _assert_parity(run)
    decision = run["rule"].decision
    assert decision.should_stop and decision.stop_iteration < len(f16_curve)  # a real decision
    # it stops at the first iteration where the patience has passed and P has risen min_rise since t*
    rule, chosen = run["rule"], decision.iteration
    pbar = trailing_mean(run["p"], W)
    ready = [t for t in range(chosen + L + rule.patience, len(pbar)) if pbar[t] - pbar[chosen] >= rule.min_rise]
    assert decision.stop_iteration == ready[0] + 1
    # the numba kernel against the numpy reference closes the loop to method.md section 4
    reference = chord_curvature_reference(run["p"][:400], L, W, T_MAX)[: 400 - L]
    np.testing.assert_allclose(run["kappa"][: 400 - L], reference, rtol=0, atol=ATOL, equal_nan=True)


def test_pt2_stopper_loads_and_matches(tmp_path: Path, f16_curve: np.ndarray) -> None:
    path = export_stopper(
        tmp_path / "stopper.pt2", t_max=T_MAX, image_shape=SHAPE, half_window=L, smoothing=W, format="pt2"
    )
    program = torch.export.load(str(path))
    run = _drive(_ProgramStopper(program.module()), f16_curve[:1300], seed=7)
    _assert_parity(run)
    assert run["rule"].decision.stop_iteration is not None


def test_eager_step_matches_exported(session: ort.InferenceSession) -> None:
    curve = _random_curve(5, n=120)
    step = StopperStep(L, W, T_MAX)
    eager = _drive(_ProgramStopper(step), curve, seed=5)
    exported = _drive(_OrtStopper(session), curve, seed=5)
    np.testing.assert_allclose(eager["raw_kappa"], exported["raw_kappa"], rtol=1e-9, atol=1e-9, equal_nan=True)


def test_step_accepts_any_shape_and_projects() -> None:
    step = StopperStep(2, 1, 10.0)
    window, count = (torch.from_numpy(a) for a in initial_state(2, 1))
    measured, noise = torch.randn(5, 7, dtype=torch.float64), torch.randn(5, 7, dtype=torch.float64)
    p, p_smooth, kappa, window, count = step(measured, noise, window, count)
    assert float(p) == pytest.approx(float((measured * noise).sum() / (noise * noise).sum()), rel=1e-14)
    assert float(p_smooth) == float(p) and math.isnan(float(kappa)) and int(count) == 1


def test_graph_fed_paper_rule_takes_the_argmax_of_the_graph_curvature() -> None:
    step = StopperStep(L, 1, T_MAX)
    curve = _random_curve(3)
    noise, outputs = _measurements(curve, 3)
    rule = PaperRule(max_iterations=T_MAX, half_window=L)
    driver = _ProgramStopper.__new__(_ProgramStopper)
    driver.module = step
    window, count = initial_state(L, 1)
    driver.window, driver.count = torch.from_numpy(window), torch.from_numpy(count)
    kappas = []
    for t, measured in enumerate(outputs):
        p_t, _, kappa_t = driver(measured, noise)
        kappas.append(kappa_t)
        decision = rule.update(Signals.of(t, p=p_t))
    assert not decision.should_stop
    assert decision.iteration == int(np.nanargmax(kappas)) - L


def test_the_graph_and_the_numpy_reference_share_one_chord_fit() -> None:
    from oscfast.export import stopper
    from oscfast.kernels import chord, reference

    assert stopper.chord_frame_curvature is chord.chord_frame_curvature is reference.chord_frame_curvature
    # and that fit is the book's: np.polyfit of the rotated segment
    rng = np.random.default_rng(4)
    pbar = np.cumsum(rng.normal(0, 0.01, 41))
    u = np.arange(41) / 500.0
    du, dv = u - u[0], pbar - pbar[0]
    theta = math.atan2(dv[-1], du[-1])
    rotated_x = math.cos(theta) * du + math.sin(theta) * dv
    rotated_y = -math.sin(theta) * du + math.cos(theta) * dv
    book = 2 * np.polyfit(rotated_x, rotated_y, 2)[0]
    assert float(chord.chord_frame_curvature(pbar, u)) == pytest.approx(book, rel=1e-9)
    assert float(chord.chord_frame_curvature(torch.from_numpy(pbar), torch.from_numpy(u))) == pytest.approx(book, rel=1e-9)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(format="tflite"), "format"),
        (dict(image_shape=(8, 8)), "image_shape"),
        (dict(image_shape=(3, 0, 8)), "image_shape"),
        (dict(image_shape=(3, 8.5, 8)), "image_shape"),
        (dict(t_max=0), "t_max"),
        (dict(half_window=1), "half_window"),
        (dict(smoothing=0), "smoothing"),
    ],
)
def test_export_stopper_rejects_bad_arguments(tmp_path: Path, kwargs: dict, match: str) -> None:
    arguments = dict(t_max=100, image_shape=SHAPE, half_window=5, smoothing=2) | kwargs
    with pytest.raises(ValueError, match=match):
        export_stopper(tmp_path / "x.onnx", **arguments)
    assert not (tmp_path / "x.onnx").exists()


# -- the fitted generator ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def restoration() -> oscfast.Restoration:
    rng = np.random.default_rng(0)
    clean = smooth_image(48)
    noisy = np.clip(clean + rng.normal(0, 0.1, clean.shape), 0, 1).astype(np.float32)
    return oscfast.restore(
        noisy, "denoise",
        config=DIPConfig(net=DENOISE_SPEC.scaled(0.125), max_iterations=120),
        stop_config=StopConfig(half_window=10, patience=10),
        device="cpu", progress=False, output="raw",
    )


def test_exported_generator_reproduces_raw_image(restoration: oscfast.Restoration, tmp_path: Path) -> None:
    path = restoration.export(tmp_path / "generator.onnx")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert session.get_inputs() == []
    (image,) = session.run(None, {})
    height, width, channels = restoration.raw_image.shape
    assert image.shape == (1, channels, height, width)
    np.testing.assert_allclose(image[0].transpose(1, 2, 0), restoration.raw_image, rtol=0, atol=1e-4)
    meta = session.get_modelmeta().custom_metadata_map
    assert int(meta["oscfast.iteration"]) == restoration.stop_iteration


def test_exported_generator_pt2(restoration: oscfast.Restoration, tmp_path: Path) -> None:
    path = export_result(restoration, tmp_path / "generator.pt2", format="pt2")
    with torch.no_grad():
        image = torch.export.load(str(path)).module()()
    np.testing.assert_allclose(image[0].permute(1, 2, 0).numpy(), restoration.raw_image, rtol=0, atol=1e-4)


def test_export_result_rejects_bad_input(restoration: oscfast.Restoration, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="format"):
        export_result(restoration, tmp_path / "g.onnx", format="torchscript")
    from dataclasses import replace

    with pytest.raises(ValueError, match="task_object"):
        export_result(replace(restoration, task_object=None), tmp_path / "g.onnx")


# -- the example ------------------------------------------------------------------------------
def test_own_loop_example_stops_itself() -> None:
    spec = importlib.util.spec_from_file_location("own_loop_onnx", ROOT / "examples" / "own_loop_onnx.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    cap = 800
    result = module.main(["--size", "32", "--iterations", str(cap), "--quiet"])
    # the knee was found and the loop ended there, not at the cap
    assert result["stop_iteration"] is not None and result["iterations_run"] == result["stop_iteration"] < cap
    assert result["stop_iteration"] == result["best_iteration"] + result["half_window"] + result["patience"] + 1
    # the chosen image is a real denoising, close to the best the run ever had
    assert result["psnr_chosen"] > result["psnr_noisy"] + 5
    assert result["psnr_chosen"] > result["psnr_max"] - 1.5
    # the graph-driven decision is the one the Python stopper takes on the same P values
    reference = OSCStopper(max_iterations=cap, half_window=result["half_window"], smoothing=10)
    reference.update_p(result["p"])
    assert (reference.best_iteration, reference.stop_iteration) == (result["best_iteration"], result["stop_iteration"])
    numba = chord_curvature(result["p"], result["half_window"], 10, cap)
    graph = np.full_like(numba, np.nan)
    graph[: len(numba) - result["half_window"]] = result["curvature"][result["half_window"] :]
    np.testing.assert_allclose(graph, numba, rtol=0, atol=ATOL, equal_nan=True)


@pytest.mark.parametrize("fmt", ["onnx", "pt2"])
@pytest.mark.parametrize("probe", ["inline", "twin"])
def test_risk_step_export_drives_the_risk_rule_like_the_numpy_math(tmp_path, fmt: str, probe: str) -> None:
    """The exported risk step gives P (P_twin for the twin) and the loss to float64 precision,
    and a RiskRule fed from it makes the same decisions as one fed from numpy."""
    from oscfast.export import export_risk_step

    shape = (2, 12, 10)
    twin = probe == "twin"
    path = export_risk_step(tmp_path / f"risk.{fmt}", image_shape=shape, probe=probe, format=fmt)
    names = ["measured", "target", "noise"] + (["probe_measured"] if twin else [])
    if fmt == "onnx":
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        assert [i.name for i in session.get_inputs()] == names
        run = lambda *arrays: session.run(None, dict(zip(names, arrays)))  # noqa: E731
    else:
        module = torch.export.load(str(path)).module()
        run = lambda *arrays: [v.numpy() for v in module(*(torch.from_numpy(a) for a in arrays))]  # noqa: E731
    rng = np.random.default_rng(0)
    noise = rng.normal(0, 0.04, (1, *shape)).astype(np.float32)
    clean = rng.uniform(0, 1, (1, *shape)).astype(np.float32)
    target = clean if twin else clean + noise
    make = lambda: RiskRule(0.01, max_iterations=300, min_patience=20, outputs=("raw",))  # noqa: E731
    graph_rule, numpy_rule = make(), make()
    for t in range(300):
        # an output that approaches the clean image, then absorbs the noise
        fit = min(1.0, t / 100)
        absorbed = max(0.0, (t - 120) / 180)
        measured = (fit * clean + (0 if twin else absorbed) * noise).astype(np.float32)
        probed = (fit * clean + absorbed * noise).astype(np.float32)
        arrays = (measured, target, noise, probed) if twin else (measured, target, noise)
        p, loss = (float(v) for v in run(*arrays))
        m64, n64 = measured.astype(np.float64), noise.astype(np.float64)
        difference = probed.astype(np.float64) - m64 if twin else m64
        expected_p = float(np.sum(difference * n64) / np.sum(n64 * n64))
        expected_loss = float(np.mean((m64 - target.astype(np.float64)) ** 2))
        assert p == pytest.approx(expected_p, rel=1e-12, abs=1e-15)
        assert loss == pytest.approx(expected_loss, rel=1e-12, abs=1e-15)
        graph_rule.update(Signals.of(t, p=p, loss=loss))
        numpy_rule.update(Signals.of(t, p=expected_p, loss=expected_loss))
    fields = lambda d: (d.iteration, d.output, d.should_stop, d.stop_iteration)  # noqa: E731
    assert fields(graph_rule.decision) == fields(numpy_rule.decision) and graph_rule.decision.iteration is not None
