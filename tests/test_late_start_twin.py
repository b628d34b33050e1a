"""The late-start twin (issue 18, "a cheaper probe"): fit B branches off fit A at iteration t0.

Before t0 only fit A trains and fit B's output is fit A's (P_twin = 0); before iteration t0
runs, fit B takes a copy of fit A's whole state and trains on y + n from there. Fit A never
depends on fit B, so it is bit for bit the fit of every other twin run of its seed.
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from oscfast import restore
from oscfast.config import DIPConfig, StopConfig
from oscfast.engine import BatchRun, EngineOptions, FitSpec, Watch, run_fits
from oscfast.fits import StackedGenerators
from oscfast.io import image_to_tensor
from oscfast.metrics import psnr_torch
from oscfast.models import DENOISE_SPEC
from oscfast.prepare import RunOptions, prepare
from oscfast.probe import gaussian_pseudo_noise
from oscfast.stopping import CapRule
from oscfast.tasks import Denoise

from conftest import smooth_image

SIZE = 48
CAP = 40
CONFIG = DIPConfig(net=DENOISE_SPEC.scaled(0.125), max_iterations=CAP)
#: the risk rule cannot fire within the cap: every run goes to CAP
STOP = StopConfig(sync_every=5, min_patience=200, risk_smoothing=5)
SIGNALS = ("p", "p_ema", "loss_ema")


def images(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    clean = smooth_image(SIZE, seed=seed)
    noisy = np.clip(clean + np.random.default_rng(seed).normal(0, 0.15, clean.shape), 0, 1).astype(np.float32)
    return noisy, clean


def twin(t0: int) -> list[FitSpec]:
    noisy, _ = images()
    task = Denoise(image_to_tensor(noisy))
    noise = gaussian_pseudo_noise((1, 3, SIZE, SIZE), 0.04, seed=3)
    late = {"branch_of": 0, "branch_at": t0} if t0 else {}
    return [FitSpec(task, seed=0, probe=noise), FitSpec(task, seed=0, probe=noise, noisy_target=True, **late)]


def cpu(**changes) -> EngineOptions:
    return EngineOptions(**{"device": torch.device("cpu"), "progress": False, "sync_every": 5, **changes})


def cap_watch() -> Watch:
    return Watch(CapRule(max_iterations=CAP, output="raw"), fit=0, probe=1, base=0)


def metrics() -> dict:
    clean = image_to_tensor(images()[1])
    return {"psnr": lambda x: psnr_torch(clean, x)}


def fast(**changes) -> dict:
    return {"config": CONFIG, "stop_config": STOP, "progress": False, "device": "cpu", **changes}


@pytest.fixture(scope="module")
def plain_twin() -> object:
    """Today's twin (both fits from iteration 0), recorded once for the comparisons."""
    return run_fits(twin(0), CONFIG, [cap_watch()], metrics=metrics(), options=cpu(), extra_signals=SIGNALS)


# -- the option ---------------------------------------------------------------------------------
def test_twin_start_zero_is_todays_twin_bit_for_bit(monkeypatch: pytest.MonkeyPatch) -> None:
    """t0 = 0 (the default) plans today's two fits and never reaches the late-start code of the
    step (the engine's tests hold that step to plain DIP and torch's Adam); the fingerprint of
    its checkpoints is today's."""
    noisy, clean = images()

    def unreachable(*_args, **_kwargs):
        raise AssertionError("a run without a late start reached the late-start code")

    for name in ("_train_active", "branch", "mirror_slot"):
        monkeypatch.setattr(f"oscfast.engine.device._DeviceState.{name}", unreachable)
    default = restore(noisy, reference=clean, **fast())
    zero = restore(noisy, reference=clean, **fast(stop_config=replace(STOP, twin_start=0)))
    assert STOP.twin_start == 0 and zero.stop_config.twin_start == 0
    np.testing.assert_array_equal(zero.image, default.image)
    for name, values in default.history.fits.items():
        np.testing.assert_array_equal(zero.history.fits[name], values, err_msg=name)
    assert default.fit_iterations == zero.fit_iterations == (CAP, CAP)
    # the plan is today's and so is the checkpoint fingerprint (old checkpoints still resume)
    job = prepare(noisy, "denoise", RunOptions(config=CONFIG, stop_config=replace(STOP, twin_start=0), device="cpu"))
    assert all(fit.branch_of is None and fit.branch_at == 0 for fit in job.plan.fits)
    assert "twin_start" not in job.fingerprint() and "twin_start" not in job.fingerprint()["stop"]


@pytest.mark.parametrize(("value", "error", "words"), [
    (-1, ValueError, "twin_start must be >= 0, got -1"),
    (2.5, TypeError, "twin_start must be an integer, got 2.5"),  # StopConfig's integers are ints, as its others
    ("10", TypeError, "twin_start must be an integer, got '10'"),
    (True, TypeError, "twin_start must be an integer, got True"),
    (None, TypeError, "twin_start must be an integer, got None"),
])
def test_bad_twin_starts_are_refused_with_the_value(value: object, error: type, words: str) -> None:
    with pytest.raises(error, match=words):
        StopConfig(twin_start=value)


def test_twin_start_needs_the_twin_and_a_point_before_the_cap() -> None:
    noisy, _ = images()
    with pytest.raises(ValueError, match=rf"twin_start must be below the iteration cap \({CAP}\), got {CAP}"):
        restore(noisy, **fast(stop_config=replace(STOP, twin_start=CAP)))
    with pytest.raises(ValueError, match="twin_start=10 delays the twin probe's second fit; this run's probe is 'inline'"):
        restore(noisy, **fast(stop_config=replace(STOP, twin_start=10), probe="inline"))
    with pytest.raises(ValueError, match=r"probe is 'none' \(pseudo_noise_std=0\)"):
        restore(noisy, **fast(stop_config=replace(STOP, twin_start=10), pseudo_noise_std=0))
    assert "twin_start" not in repr(StopConfig(twin_start=20))
    job = prepare(noisy, "denoise", RunOptions(config=CONFIG, stop_config=replace(STOP, twin_start=20), device="cpu"))
    assert (job.plan.fits[1].branch_of, job.plan.fits[1].branch_at) == (0, 20) and job.plan.fits[0].branch_of is None
    assert job.fingerprint()["twin_start"] == "20"


def test_bad_branches_are_refused_by_the_engine() -> None:
    a, b = twin(0)
    with pytest.raises(ValueError, match="branch_at=5 needs the fit it branches off"):
        FitSpec(a.task, branch_at=5)
    with pytest.raises(ValueError, match="branch_at must be an integer >= 0"):
        FitSpec(a.task, branch_of=0, branch_at=-2)
    for fits, words in (
        ([a, replace(b, branch_of=1, branch_at=5)], "not another fit of its group"),
        ([replace(a, branch_of=1, branch_at=3), replace(b, branch_of=0, branch_at=5)], "branches off another fit itself"),
        ([a, replace(b, branch_of=0, branch_at=CAP)], f"at or after the cap of {CAP}"),
    ):
        with pytest.raises(ValueError, match=words):
            BatchRun([(fits, [cap_watch()], 0, None)], CONFIG, options=cpu())


# -- the engine ---------------------------------------------------------------------------------
def test_fit_b_is_a_copy_of_fit_a_at_t0_and_fit_a_never_changes(plain_twin, monkeypatch: pytest.MonkeyPatch) -> None:
    """t0 = 13, inside a sync block: right after the branch fit B's weights, Adam state, input
    and reg-noise stream are fit A's; its output is fit A's up to t0 (P_twin exactly 0 there)
    and its own after; fit A's traces are the plain twin's, bit for bit."""
    t0 = 13
    clones: list[dict[str, bool]] = []
    branch = __import__("oscfast.engine.device", fromlist=["_DeviceState"])._DeviceState.branch

    def checked_branch(state, k: int) -> None:
        parent = state.mirror[k]
        branch(state, k)
        adam = state.optimizer
        clones.append({
            "iteration": state.host_t[k] == state.host_t[parent] == t0,
            "weights": all(torch.equal(p[k], p[parent]) for p in state.generators.stacked.values()),
            "adam": all(torch.equal(m[k], m[parent]) for m in adam.exp_avg + adam.exp_avg_sq)
            and bool(adam.steps[k] == adam.steps[parent] == t0),
            "rng": torch.equal(state.rngs[k].get_state(), state.rngs[parent].get_state()),
            "input": torch.equal(state.z[k], state.z[parent]) and torch.equal(state.ema[k], state.ema[parent]),
        })

    monkeypatch.setattr("oscfast.engine.device._DeviceState.branch", checked_branch)
    late = run_fits(twin(t0), CONFIG, [cap_watch()], metrics=metrics(), options=cpu(), extra_signals=SIGNALS)
    assert clones == [dict.fromkeys(("iteration", "weights", "adam", "rng", "input"), True)]
    traces = late.traces
    for name, values in plain_twin.traces.items():
        np.testing.assert_array_equal(traces[name][0], values[0], err_msg=f"fit A's {name}")
    p_twin = traces["p"][1] - traces["p"][0]
    assert np.all(p_twin[: t0 + 1] == 0) and np.all(traces["p_ema"][1][: t0 + 1] == traces["p_ema"][0][: t0 + 1])
    np.testing.assert_array_equal(traces["psnr"][1][: t0 + 1], traces["psnr"][0][: t0 + 1])  # the output itself
    assert np.all(p_twin[t0 + 1 :] != 0)
    assert not np.array_equal(traces["loss"][1][:t0], traces["loss"][0][:t0])  # B's loss: A's output against y + n
    assert late.fit_iterations == (CAP, CAP - t0) and plain_twin.fit_iterations == (CAP, CAP)


def test_fit_b_after_t0_is_fit_a_continued_on_y_plus_n(plain_twin) -> None:
    """An independent clone: fit A alone for t0 iterations, its state handed to a single fit
    on y + n (the export's resume point), stepped to the cap, gives fit B's last image."""
    t0 = 15
    late = run_fits(twin(t0), CONFIG, [cap_watch()], options=cpu())
    alone = BatchRun([(twin(0)[:1], [Watch(CapRule(max_iterations=CAP, output="raw"))], 0, None)], CONFIG, options=cpu())
    for _ in range(t0):
        alone.state.step()
    point = alone.state.resume_point(0)
    continued = run_fits(twin(0)[1:], CONFIG, [Watch(CapRule(max_iterations=CAP, output="raw"))], options=cpu(),
                         snapshot_iteration=CAP - 1, resume_from=point)
    assert torch.equal(continued.raw_image, late.last_images[1])
    assert not torch.equal(late.last_images[1], plain_twin.last_images[1])  # B differs from the twin started at 0


def test_a_late_fit_b_costs_only_its_own_iterations(monkeypatch: pytest.MonkeyPatch) -> None:
    """The work is counted, not timed: the loop strategy runs fit B's forward (and backward)
    CAP - t0 times, the batched (vmap) strategy runs a batch of one before t0."""
    t0 = 20
    forwards = [0, 0]
    slot_forward = StackedGenerators.slot_forward

    def counting(self, slot: int, z: torch.Tensor) -> torch.Tensor:
        forwards[slot] += 1
        return slot_forward(self, slot, z)

    monkeypatch.setattr(StackedGenerators, "slot_forward", counting)
    loop = run_fits(twin(t0), CONFIG, [cap_watch()], options=cpu(strategy="loop"), extra_signals=SIGNALS)
    assert forwards == [CAP, CAP - t0] and loop.fit_iterations == (CAP, CAP - t0)
    monkeypatch.undo()

    batches: list[int] = []
    forward = StackedGenerators.forward

    def counting_batch(self, z: torch.Tensor, slots=None) -> torch.Tensor:
        batches.append(z.shape[0])
        return forward(self, z, slots)

    monkeypatch.setattr(StackedGenerators, "forward", counting_batch)
    vmapped = run_fits(twin(t0), CONFIG, [cap_watch()], options=cpu(strategy="vmap"), extra_signals=SIGNALS)
    assert batches == [1] * t0 + [2] * (CAP - t0) and vmapped.fit_iterations == (CAP, CAP - t0)
    p_twin = vmapped.traces["p"][1] - vmapped.traces["p"][0]
    assert np.all(p_twin[: t0 + 1] == 0) and np.all(p_twin[t0 + 1 :] != 0)


def test_with_the_threads_strategy_fit_a_keeps_its_one_thread_before_t0() -> None:
    """The "threads" strategy computes each fit on one worker thread; fit A alone before t0
    does too (not on the caller's threads), so its numbers are the plain twin's."""
    t0, cap = 6, 15
    config = CONFIG.with_options(max_iterations=cap)
    watch = lambda: Watch(CapRule(max_iterations=cap, output="raw"), fit=0, probe=1, base=0)  # noqa: E731
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        whole = run_fits(twin(0), config, [watch()], options=cpu(strategy="threads"), extra_signals=("p",))
        late = run_fits(twin(t0), config, [watch()], options=cpu(strategy="threads"), extra_signals=("p",))
    finally:
        torch.set_num_threads(before)
    for name in ("loss", "p"):
        np.testing.assert_array_equal(late.traces[name][0], whole.traces[name][0], err_msg=name)
    assert torch.equal(late.last_images[0], whole.last_images[0]) and late.fit_iterations == (cap, cap - t0)


def test_the_graph_path_captures_again_when_fit_b_joins(monkeypatch: pytest.MonkeyPatch) -> None:
    """The CUDA-graph logic on the CPU: a capture replays one fixed step, so the step of fit A
    alone is captured first and the step of both fits again at t0 (device-side counters, as
    under a graph); the run equals the eager one bit for bit."""
    import oscfast.engine.loop as loop

    t0 = 12
    eager = run_fits(twin(t0), CONFIG, [cap_watch()], metrics=metrics(), options=cpu(), extra_signals=SIGNALS)
    captured: list[tuple] = []

    class FakeGraph:
        def __init__(self, state) -> None:
            self.replay = state.step

    def capture(state):
        assert state.host_t is None  # a graph indexes the rings with the device counter
        captured.append((tuple(state.mirror), int(state.t[0])))
        return FakeGraph(state), state.step

    monkeypatch.setattr(EngineOptions, "use_cuda_graph", property(lambda self: True))
    monkeypatch.setattr(loop, "_graph_or_eager", capture)
    graphed = run_fits(twin(t0), CONFIG, [cap_watch()], metrics=metrics(), options=cpu(), extra_signals=SIGNALS)
    assert captured == [((None, 0), 0), ((None, None), t0)]
    for name, values in eager.traces.items():
        np.testing.assert_array_equal(graphed.traces[name], values, err_msg=name)
    assert torch.equal(graphed.last_images, eager.last_images) and graphed.fit_iterations == eager.fit_iterations


# -- through restore: resume, refills ------------------------------------------------------------
@pytest.mark.parametrize("stop_at", [20, 30])
def test_a_run_interrupted_before_or_after_t0_resumes_bit_for_bit(tmp_path: Path, stop_at: int) -> None:
    """t0 = 20 is a sync: a checkpoint at 20 holds fit B before its branch (it branches when
    the resumed run goes on), one at 30 holds it trained; both end as the whole run does."""
    noisy, _ = images()
    late = fast(stop_config=replace(STOP, twin_start=20))
    whole = restore(noisy, **late)
    path = tmp_path / "run.ckpt"
    stopped = restore(noisy, **late, checkpoint=path, checkpoint_every=0,
                      cancel=lambda: torch.load(path, weights_only=False)["state"]["groups"][0]["done"] >= stop_at)
    assert stopped.stop_reason == "interrupted" and stopped.iterations_run == stop_at
    resumed = restore(noisy, **late, resume=path)
    np.testing.assert_array_equal(resumed.image, whole.image)
    for name, values in whole.history.fits.items():
        np.testing.assert_array_equal(resumed.history.fits[name], values, err_msg=name)
    assert resumed.fit_iterations == whole.fit_iterations == (CAP, CAP - 20)
    if stop_at == 20:  # another t0 is another run: refused, naming the difference
        with pytest.raises(ValueError, match="its twin_start is '20', this run's is None"):
            restore(noisy, **fast(), resume=path)


def test_restore_many_refills_a_late_twin_as_restore_runs_it() -> None:
    """Two images through one slot pair: the second is loaded into the slots of the first
    (fit B mirrors again until its t0) and equals its own restore, bit for bit."""
    from oscfast import restore_many

    first, second = images(0)[0], images(1)[0]
    options = fast(stop_config=replace(STOP, twin_start=25))
    results = restore_many([first, second], batch=1, **options)
    single = restore(second, **options)
    np.testing.assert_array_equal(results[1].image, single.image)
    np.testing.assert_array_equal(results[1].history.p, single.history.p)
    assert results[1].fit_iterations == single.fit_iterations == (CAP, CAP - 25)
    assert np.all(single.history.p[:26] == 0)
