"""The K-fit DIP engine on the CPU: every piece of the loop except the CUDA graph capture."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from oscfast.config import DIPConfig, StopConfig
from oscfast.engine import EngineOptions, FitSpec, SyncInfo, Watch, canvas_geometry, run_fits
from oscfast.fits import StackedAdam, StackedGenerators, initial_net, resolve_strategy
from oscfast.io import image_to_tensor
from oscfast.kernels import chord_curvature
from oscfast.memory import TooLargeError, estimate_run_bytes
from oscfast.metrics import psnr_torch
from oscfast.models import DENOISE_SPEC, INPAINT_LIBRARY_SPEC
from oscfast.plan import make_rule
from oscfast.probe import gaussian_pseudo_noise
from oscfast.stopping import CapRule, KneeRule, RiskRule, Signals
from oscfast.tasks import Denoise

from conftest import smooth_image


def noisy_pair(size: int = 64, sigma: float = 0.1, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    clean = smooth_image(size, seed=seed)
    rng = np.random.default_rng(seed)
    noisy = np.clip(clean + rng.normal(0, sigma, clean.shape), 0, 1).astype(np.float32)
    return image_to_tensor(noisy), image_to_tensor(clean)


def cpu(**changes) -> EngineOptions:
    return EngineOptions(**{"device": torch.device("cpu"), "progress": False, "sync_every": 5, **changes})


def cap_watch(cap: int, fit: int = 0) -> Watch:
    return Watch(CapRule(max_iterations=cap, output="raw"), fit=fit)


def psnr_metric(clean: torch.Tensor) -> dict:
    return {"psnr": lambda x: psnr_torch(clean, x)}


def test_canvas_geometry_centres_the_image() -> None:
    geometry = canvas_geometry(70, 64, DENOISE_SPEC)  # stride multiple 32
    assert (geometry.height, geometry.width, geometry.top, geometry.left) == (96, 64, 13, 0)
    # a 32 px side gets a 64 px canvas: the deepest of 5 scales keeps 2 pixels
    small = canvas_geometry(32, 40, DENOISE_SPEC)
    assert (small.height, small.width, small.top, small.left) == (64, 64, 16, 12)
    # 6 scales of 5x5 reflection-padded filters need 3 pixels at the deepest scale
    assert INPAINT_LIBRARY_SPEC.canvas_side(128) == 192 and INPAINT_LIBRARY_SPEC.canvas_side(200) == 256


def test_loop_fits_are_bitwise_plain_dip_with_torch_adam(tiny_config: DIPConfig) -> None:
    """Slot k of a batched step moves exactly as an ordinary module with torch.optim.Adam."""
    spec = tiny_config.net
    y = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    z = torch.rand(3, 1, spec.input_channels, 64, 64, generator=torch.Generator().manual_seed(1))
    z[1] = z[0]
    fits = StackedGenerators(spec, 3, [0, 0, 7], strategy="loop")
    adam = StackedAdam(list(fits.parameters()), num_slots=3, lr=0.01)
    reference = initial_net(spec, 3, 7)
    torch_adam = torch.optim.Adam(reference.parameters(), lr=0.01)
    for _ in range(6):
        adam.zero_grad()
        out = fits(z)
        torch.stack([((out[k] - y) ** 2).mean() for k in range(3)]).sum().backward()
        adam.step()
        torch_adam.zero_grad()
        expected = reference(z[2])
        ((expected - y) ** 2).mean().backward()
        torch_adam.step()
        assert torch.equal(out[2], expected)
        assert torch.equal(out[0], out[1])  # same seed, same input: the same fit
    assert not torch.equal(out[0], out[2])


def test_vmap_step_equals_loop_step_in_float64(tiny_config: DIPConfig) -> None:
    """The batched (vmap) forward and backward compute the loop's numbers: in float64 they
    agree to 1e-9 (in float32 BatchNorm's backward at 2x2 px amplifies rounding ~1e4-fold, so
    float32 trajectories part after a few Adam steps)."""
    spec = tiny_config.net
    y = torch.rand(1, 3, 64, 64, dtype=torch.float64)
    z = torch.rand(2, 1, spec.input_channels, 64, 64, dtype=torch.float64)
    grads, outputs = {}, {}
    for strategy in ("loop", "vmap"):
        fits = StackedGenerators(spec, 3, [0, 4], strategy=strategy).double()
        out = fits(z)
        torch.stack([((out[k] - y) ** 2).mean() for k in range(2)]).sum().backward()
        outputs[strategy] = out.detach()
        # a parameter no loss reaches (a bias right before a BatchNorm) may have no gradient at all
        grads[strategy] = [torch.zeros_like(p) if p.grad is None else p.grad.clone() for p in fits.parameters()]
    torch.testing.assert_close(outputs["vmap"], outputs["loop"], rtol=0, atol=1e-12)
    for loop, vmapped in zip(grads["loop"], grads["vmap"]):
        if loop.abs().max() > 1e-6:  # biases right before a BatchNorm have no gradient at all
            assert float((loop - vmapped).norm() / loop.norm()) < 1e-9


def test_batched_fits_equal_single_runs(tiny_config: DIPConfig) -> None:
    """K fits of different seeds in one run = K separate runs, signal for signal, bitwise."""
    noisy, clean = noisy_pair()
    task = Denoise(noisy)
    config = tiny_config.with_options(max_iterations=30)
    noise = gaussian_pseudo_noise((1, 3, 64, 64), 0.04, seed=9)
    specs = [FitSpec(task, seed=3, probe=noise), FitSpec(task, seed=5, probe=noise, noisy_target=True)]
    batched = run_fits(specs, config, [cap_watch(30)], metrics=psnr_metric(clean), options=cpu(), extra_signals=("p", "loss_ema"))
    for k, spec in enumerate(specs):
        single = run_fits([spec], config, [cap_watch(30)], metrics=psnr_metric(clean), options=cpu(), extra_signals=("p", "loss_ema"))
        for name in ("loss", "p", "loss_ema", "psnr", "psnr_ema"):
            np.testing.assert_array_equal(batched.traces[name][k], single.traces[name][0])
        assert torch.equal(batched.last_images[k], single.last_images[0])


def test_twin_with_zero_probe_has_equal_fits_and_zero_p(tiny_config: DIPConfig) -> None:
    noisy, _ = noisy_pair()
    task = Denoise(noisy)
    zero = torch.zeros(1, 3, 64, 64)
    specs = [FitSpec(task, seed=1, probe=zero), FitSpec(task, seed=1, probe=zero, noisy_target=True)]
    run = run_fits(specs, tiny_config.with_options(max_iterations=20), [cap_watch(20)], options=cpu(), extra_signals=("p",))
    assert torch.equal(run.last_images[0], run.last_images[1])
    np.testing.assert_array_equal(run.traces["loss"][0], run.traces["loss"][1])
    assert np.all(run.traces["p"][1] - run.traces["p"][0] == 0)


def test_history_matches_independent_recomputation(tiny_config: DIPConfig) -> None:
    noisy, clean = noisy_pair()
    config = tiny_config.with_options(max_iterations=40)
    noise = gaussian_pseudo_noise((1, 3, 64, 64), 0.04, seed=1)
    spec = FitSpec(Denoise(noisy), seed=0, probe=noise, noisy_target=True)
    run = run_fits([spec], config, [cap_watch(40)], metrics=psnr_metric(clean), options=cpu(), extra_signals=("p",))
    assert run.iterations_run == 40 and run.traces["p"].shape == (1, 40)
    assert run.traces["loss"][0, -10:].mean() < run.traces["loss"][0, :10].mean()
    last = run.last_images[0]
    assert run.traces["psnr"][0, -1] == pytest.approx(-10 * np.log10(float(torch.mean((last - clean) ** 2))), abs=1e-3)
    expected_p = float(torch.sum(last.double() * noise.double()) / torch.sum(noise.double() ** 2))
    assert run.traces["p"][0, -1] == pytest.approx(expected_p, abs=1e-6)
    expected_loss = float(torch.mean((last - (noisy + noise)) ** 2))
    assert run.traces["loss"][0, -1] == pytest.approx(expected_loss, rel=1e-5)


def test_variance_signals_match_the_es_notebooks(tiny_config: DIPConfig) -> None:
    """ES-WMV's windowed variance, ES-EMV's exponential variance and the plateau change,
    computed incrementally on the device, equal their definitions (reference-configs.md
    section 7) recomputed from every output of the run."""
    noisy, _ = noisy_pair(size=48)
    config = tiny_config.with_options(max_iterations=24)
    outputs: list[np.ndarray] = []
    averages: list[np.ndarray] = []

    def keep(info: SyncInfo) -> None:
        images = info.images()
        outputs.append(images["raw"][0].double().numpy())
        averages.append(images["ema"][0].double().numpy())

    options = cpu(sync_every=1, wmv_window=5, emv_alpha=0.1, change_lag=4)
    run = run_fits([FitSpec(Denoise(noisy), seed=2)], config, [cap_watch(24)], options=options, on_sync=keep,
                   extra_signals=("wmv", "emv", "change"))
    x = np.stack(outputs)
    wmv = np.full(24, np.nan)
    for t in range(4, 24):
        window = x[t - 4 : t + 1]
        wmv[t] = np.mean(((window - window.mean(axis=0)) ** 2).mean(axis=0))
    np.testing.assert_allclose(run.traces["wmv"][0], wmv, rtol=1e-4, atol=1e-10)
    mean, emv, expected_emv = x[0], 0.0, [0.0]
    for t in range(1, 24):
        delta = x[t] - mean
        mean = np.clip(mean + 0.1 * delta, 0, 1)
        emv = 0.9 * (emv + 0.1 * np.sum(delta**2))
        expected_emv.append(emv)
    np.testing.assert_allclose(run.traces["emv"][0], expected_emv, rtol=1e-4)
    ema = np.stack(averages)
    change = np.full(24, np.nan)
    change[4:] = ((ema[4:] - ema[:-4]) ** 2).reshape(20, -1).mean(axis=1)
    np.testing.assert_allclose(run.traces["change"][0], change, rtol=1e-4, atol=1e-12)


def test_cpu_runs_are_deterministic(tiny_config: DIPConfig) -> None:
    noisy, _ = noisy_pair()
    config = tiny_config.with_options(max_iterations=20)
    runs = [run_fits([FitSpec(Denoise(noisy), seed=s)], config, [cap_watch(20)], options=cpu()) for s in (3, 3, 4)]
    assert torch.equal(runs[0].last_images, runs[1].last_images)
    assert not torch.equal(runs[0].last_images, runs[2].last_images)


def test_online_knee_choice_equals_batch_argmax_and_image_is_exact(tiny_config: DIPConfig) -> None:
    """The engine's knee choice is the batch kernel's argmax over the prefix it saw, and the
    returned raw image is bit-identical to that iteration's output."""
    noisy, _ = noisy_pair(sigma=0.15)
    config = tiny_config.with_options(max_iterations=400)
    noise = gaussian_pseudo_noise((1, 3, 64, 64), 0.04, seed=3)
    spec = FitSpec(Denoise(noisy), seed=0, probe=noise, noisy_target=True)
    rule = KneeRule(max_iterations=400, half_window=15, patience=15, significance=0.0, min_rise=0.0)
    run = run_fits([spec], config, [Watch(rule, fit=0, probe=0)], options=cpu())
    decision = run.decision
    assert decision.should_stop and decision.iteration is not None and run.iterations_run < 400
    p = run.traces["p"][0]
    lag, width = 15, rule.smoothing
    kappa = chord_curvature(p, lag, width, 400.0)
    pbar = np.array([p[max(0, t - width + 1) : t + 1].mean() for t in range(p.size)])
    valid = [c for c in range(lag, decision.stop_iteration - lag) if c - lag >= int(np.argmin(pbar[: c + lag + 1])) and kappa[c] > 0]
    assert decision.iteration == max(valid, key=lambda c: kappa[c])
    snapshot = run_fits([spec], config, [Watch(KneeRule(max_iterations=400, half_window=15), probe=0)], options=cpu(),
                        snapshot_iteration=decision.iteration)
    assert torch.equal(snapshot.raw_image, run.raw_image)
    generator = snapshot.generator_snapshot
    with torch.no_grad():
        out = generator.net(generator.net_input)[:, :, : generator.height, : generator.width]
    torch.testing.assert_close(out, run.raw_image, rtol=0, atol=1e-6)


def test_online_twin_risk_matches_replay_and_returns_exact_image(tiny_config: DIPConfig) -> None:
    """The twin risk rule in the engine chooses what a replay on the recorded signals chooses,
    stops before the cap, and returns fit A's image of that iteration bit for bit."""
    noisy, clean = noisy_pair(sigma=0.15)
    task = Denoise(noisy)
    config = tiny_config.with_options(max_iterations=500)
    noise = gaussian_pseudo_noise((1, 3, 64, 64), 0.04, seed=3)
    specs = [FitSpec(task, seed=0, probe=noise), FitSpec(task, seed=0, probe=noise, noisy_target=True)]
    make = lambda: RiskRule(2 * 0.15**2, -(0.15**2), max_iterations=500, min_patience=30, patience_ratio=0.25)  # noqa: E731
    run = run_fits(specs, config, [Watch(make(), fit=0, probe=1, base=0)], metrics=psnr_metric(clean), options=cpu())
    decision = run.decision
    assert decision.should_stop and run.iterations_run < 500
    assert 0 <= run.iterations_run - decision.stop_iteration < 5  # ends at the sync after it fired
    replay = make()
    t = run.traces
    signals = {"loss": t["loss"][0], "loss_ema": t["loss_ema"][0], "p": t["p"][1] - t["p"][0], "p_ema": t["p_ema"][1] - t["p_ema"][0]}
    for start in range(0, run.iterations_run, 7):  # another chunking: same decision
        replay.update(Signals(start, {k: v[start : start + 7] for k, v in signals.items()}))
    assert (replay.decision.iteration, replay.decision.output) == (decision.iteration, decision.output)
    assert replay.decision.stop_iteration == decision.stop_iteration
    snapshot = run_fits([specs[0]], config, [cap_watch(500)], options=cpu(), snapshot_iteration=decision.iteration)
    assert torch.equal(snapshot.raw_image, run.raw_image) and torch.equal(snapshot.ema_image, run.ema_image)
    curve = t["psnr_ema" if decision.output == "ema" else "psnr"][0]
    assert curve[decision.iteration] >= np.nanmax(t["psnr"][0]) - 1.0


def test_stop_never_makes_the_same_choice_as_stop_osc(tiny_config: DIPConfig) -> None:
    noisy, _ = noisy_pair(size=48, sigma=0.15)
    config = tiny_config.with_options(max_iterations=200)
    noise = gaussian_pseudo_noise((1, 3, 48, 48), 0.04, seed=3)
    specs = [FitSpec(Denoise(noisy), seed=0, probe=noise), FitSpec(Denoise(noisy), seed=0, probe=noise, noisy_target=True)]
    runs = {
        mode: run_fits(specs, config, [Watch(RiskRule(0.045, -0.0225, max_iterations=200, min_patience=20), fit=0, probe=1, base=0)],
                       stop_mode=mode, options=cpu())
        for mode in ("osc", "never")
    }
    fields = lambda d: (d.iteration, d.output, d.should_stop, d.stop_iteration)  # noqa: E731
    assert fields(runs["osc"].decision) == fields(runs["never"].decision)
    assert runs["osc"].iterations_run < runs["never"].iterations_run == 200
    assert torch.equal(runs["osc"].raw_image, runs["never"].raw_image)
    assert torch.equal(runs["osc"].ema_image, runs["never"].ema_image)


def test_non_multiple_size_comes_back_whole(tiny_config: DIPConfig) -> None:
    clean = smooth_image(80)[:70, :45]
    run = run_fits([FitSpec(Denoise(image_to_tensor(clean)))], tiny_config.with_options(max_iterations=5), [cap_watch(5)], options=cpu())
    assert run.last_images.shape == (1, 1, 3, 70, 45)


def test_bf16_precision_runs_close_to_fp32(tiny_config: DIPConfig) -> None:
    noisy, clean = noisy_pair()
    config = tiny_config.with_options(max_iterations=40)
    spec = FitSpec(Denoise(noisy))
    fp32 = run_fits([spec], config, [cap_watch(40)], metrics=psnr_metric(clean), options=cpu())
    bf16 = run_fits([spec], config, [cap_watch(40)], metrics=psnr_metric(clean), options=cpu(precision="bf16"))
    assert not np.array_equal(fp32.traces["psnr"], bf16.traces["psnr"])
    noisy_psnr = -10 * np.log10(float(torch.mean((noisy - clean) ** 2)))
    assert bf16.traces["psnr"][0, -1] > noisy_psnr + 1 and fp32.traces["psnr"][0, -1] > noisy_psnr + 1


def test_memory_estimate_grows_with_size_fits_and_refuses_huge(tiny_config: DIPConfig) -> None:
    small = estimate_run_bytes((3, 64, 64), tiny_config, ring_size=10)
    large = estimate_run_bytes((3, 256, 256), tiny_config, ring_size=10)
    assert 10 < large / small < 20  # ~16x the pixels
    assert estimate_run_bytes((3, 64, 64), tiny_config, ring_size=10, num_fits=2, ring_fits=2) == 2 * small
    # the twin keeps rings for its driving fit only
    assert estimate_run_bytes((3, 64, 64), tiny_config, ring_size=10, num_fits=2) < 2 * small
    huge = Denoise(torch.zeros(1, 3, 64, 64))
    huge.output_size = (60000, 60000)  # a 3.6-gigapixel canvas
    with pytest.raises(TooLargeError, match="too large for memory"):
        run_fits([FitSpec(huge)], tiny_config, [cap_watch(tiny_config.max_iterations)], options=cpu())


def test_engine_input_errors(tiny_config: DIPConfig) -> None:
    noisy, _ = noisy_pair()
    spec = FitSpec(Denoise(noisy))
    with pytest.raises(ValueError, match="needs the pseudo-noise"):
        run_fits([spec], tiny_config, [Watch(KneeRule(max_iterations=160), probe=None)], options=cpu())
    with pytest.raises(ValueError, match="names fit 3"):
        run_fits([spec], tiny_config, [Watch(CapRule(max_iterations=160), fit=3)], options=cpu())
    with pytest.raises(ValueError, match="cap is 160"):
        run_fits([spec], tiny_config, [Watch(CapRule(max_iterations=10))], options=cpu())
    with pytest.raises(ValueError, match="noisy target"):
        FitSpec(Denoise(noisy), noisy_target=True)
    with pytest.raises(ValueError, match="unknown signals"):
        run_fits([spec], tiny_config, [cap_watch(160)], extra_signals=("magic",), options=cpu())


def test_the_callers_task_is_not_moved_or_changed(tiny_config: DIPConfig) -> None:
    noisy, _ = noisy_pair()
    task = Denoise(noisy)
    before = task.observation.clone()
    run_fits([FitSpec(task)], tiny_config.with_options(max_iterations=3), [cap_watch(3)], options=cpu())
    assert torch.equal(task.observation, before) and task.observation.device.type == "cpu"


def test_cuda_graph_needs_cuda() -> None:
    with pytest.raises(ValueError, match="CUDA"):
        _ = EngineOptions(device=torch.device("cpu"), cuda_graph=True).use_cuda_graph


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_graph_replays_draw_fresh_reg_noise_and_match_eager(tiny_config: DIPConfig) -> None:
    """With reg-noise on: graph and eager runs draw from the same generator states, so the
    trajectories agree (GPU kernels are not bitwise deterministic: a tolerance), and the noise
    differs from one replay to the next (the loss would repeat otherwise)."""
    noisy, clean = noisy_pair()
    config = tiny_config.with_options(max_iterations=200)
    spec = FitSpec(Denoise(noisy), seed=0)
    device = torch.device("cuda")
    outputs = {}
    for graph in (True, False):
        options = EngineOptions(device=device, cuda_graph=graph, progress=False, sync_every=5)
        outputs[graph] = run_fits([spec], config, [cap_watch(200)], metrics=psnr_metric(clean.to(device)), options=options)
    graph, eager = outputs[True].traces["psnr"][0], outputs[False].traces["psnr"][0]
    np.testing.assert_allclose(graph[:20], eager[:20], atol=0.05)
    assert abs(graph[-50:].mean() - eager[-50:].mean()) < 0.3
    loss = outputs[True].traces["loss"][0]
    assert len(np.unique(np.round(loss, 9))) > 190


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_default_rule_drives_a_twin_run(tiny_config: DIPConfig) -> None:
    noisy, _ = noisy_pair(sigma=0.15)
    task = Denoise(noisy)
    noise = gaussian_pseudo_noise((1, 3, 64, 64), 0.04, seed=3)
    specs = [FitSpec(task, seed=0, probe=noise), FitSpec(task, seed=0, probe=noise, noisy_target=True)]
    rule = make_rule("risk", stop=StopConfig(min_patience=30), max_iterations=600, output="ema",
                     risk=__import__("oscfast.probe", fromlist=["risk_constants"]).risk_constants("twin", noise_level=0.15, probe_std=0.04, rho=1.0))
    run = run_fits(specs, tiny_config.with_options(max_iterations=600), [Watch(rule, fit=0, probe=1, base=0)],
                   options=EngineOptions(device=torch.device("cuda"), progress=False))
    assert run.decision.iteration is not None and run.decision.should_stop
    assert run.raw_image.shape == (1, 3, 64, 64) and torch.isfinite(run.raw_image).all()


def test_compile_failure_falls_back_to_eager(tiny_config: DIPConfig, monkeypatch: pytest.MonkeyPatch,
                                             caplog: pytest.LogCaptureFixture) -> None:
    """With compile=True and a compiler that fails, the run goes on eagerly, says why once in
    the log, and gives the eager run's images exactly."""

    def broken_compile(function, **_options):
        def call(*_args, **_kwargs):
            raise RuntimeError("no C++ compiler on this machine")
        return call

    monkeypatch.setattr(torch, "compile", broken_compile)
    noisy, _ = noisy_pair(size=48)
    config = tiny_config.with_options(max_iterations=6)
    spec = [FitSpec(Denoise(noisy), seed=2)]
    eager = run_fits(spec, config, [cap_watch(6)], options=cpu())
    with caplog.at_level("WARNING", logger="oscfast.fits"):
        fallback = run_fits(spec, config, [cap_watch(6)], options=cpu(compile=True))
    assert torch.equal(eager.last_images, fallback.last_images)
    warnings = [r.getMessage() for r in caplog.records if "torch.compile failed" in r.getMessage()]
    assert len(warnings) == 1 and "no C++ compiler" in warnings[0]


def test_cuda_graph_needs_graph_safe_generators(monkeypatch: pytest.MonkeyPatch) -> None:
    """On a torch without CUDAGraph.register_generator_state the engine names the reason and
    runs eagerly instead of capturing a graph that would replay one reg-noise draw."""
    from oscfast.engine import cuda_graph_unavailable_reason

    if torch.cuda.is_available():
        assert cuda_graph_unavailable_reason() is None  # a CUDA build of the torch we require has it
    monkeypatch.setattr(torch.cuda.CUDAGraph, "register_generator_state", lambda self, generator: None, raising=False)
    assert cuda_graph_unavailable_reason() is None
    monkeypatch.delattr(torch.cuda.CUDAGraph, "register_generator_state")
    reason = cuda_graph_unavailable_reason()
    assert reason is not None and "register_generator_state" in reason and "eagerly" in reason


# -- the GPU path's logic, on the CPU (issue 19) ----------------------------------------------
def twin_specs(size: int = 48, probe_scale: float = 1.0) -> list[FitSpec]:
    noisy, _ = noisy_pair(size=size, sigma=0.15)
    task = Denoise(noisy)
    noise = gaussian_pseudo_noise((1, 3, size, size), 0.04, seed=3) * probe_scale
    return [FitSpec(task, seed=0, probe=noise), FitSpec(task, seed=0, probe=noise, noisy_target=True)]


def twin_watch(cap: int) -> Watch:
    return Watch(RiskRule(2 * 0.15**2, -(0.15**2), max_iterations=cap, min_patience=20, patience_ratio=0.25),
                 fit=0, probe=1, base=0)


def test_rings_are_kept_for_the_driving_fit_only(tiny_config: DIPConfig) -> None:
    from oscfast.engine import BatchRun

    config = tiny_config.with_options(max_iterations=10)
    run = BatchRun([(twin_specs(), [twin_watch(10)], 0, None)], config, options=cpu(), extra_signals=("wmv",))
    assert run.state.ring_slots == [0] and run.state.ring_raw.shape[:2] == (run.ring_size, 1)
    run.run()
    record = run.record(0)
    assert record.last_images.shape == (2, 1, 3, 48, 48)  # every fit's newest output all the same
    with pytest.raises(ValueError, match="keeps no ring"):
        run.state.images_at(1, 3)


def test_warmup_undo_puts_back_tensors_and_rng_and_saves_only_ring_rows(tiny_config: DIPConfig) -> None:
    """What a CUDA graph's warm-up changes is put back exactly, the reg-noise generators' states
    included (so a run resumed from a checkpoint keeps its stream), from copies that hold only the
    ring rows the warm-up writes, and that the memory estimate counts."""
    from oscfast.engine import BatchRun
    from oscfast.engine.device import _WarmupUndo

    config = tiny_config.with_options(max_iterations=40)
    options = cpu(wmv_window=6, change_lag=5)
    run = BatchRun([(twin_specs(), [twin_watch(40)], 0, None)], config, options=options, extra_signals=("wmv", "emv", "change"))
    for _ in range(7):
        run.state.step()
    before = {name: tensor.clone() for name, tensor in run.state.named_mutable_tensors()}
    rng_before = [rng.get_state() for rng in run.state.rngs]
    undo = _WarmupUndo(run.state, 4)
    for _ in range(4):
        run.state.step()
    assert not torch.equal(run.state.ring_raw, before["ring_raw"])
    undo.restore()
    for name, tensor in run.state.named_mutable_tensors():
        torch.testing.assert_close(tensor, before[name], rtol=0, atol=0, equal_nan=True, msg=name)
    assert all(torch.equal(rng.get_state(), saved) for rng, saved in zip(run.state.rngs, rng_before))
    assert run.state.host_t == [7, 7]
    rings = [copy_ for tensor, _, copy_ in undo.saved if tensor is run.state.ring_raw]
    assert rings[0].shape[0] == 4 < run.ring_size  # the 4 rows the steps write, not the ring
    kwargs = dict(ring_size=run.ring_size, num_fits=2, window=6, change_lag=5)
    counted = estimate_run_bytes((3, 48, 48), config, cuda_graph=True, **kwargs) - estimate_run_bytes((3, 48, 48), config, **kwargs)
    assert undo.nbytes <= counted


def test_resume_with_a_warmup_keeps_the_reg_noise_stream(tiny_config: DIPConfig) -> None:
    """A run resumed from its state at iteration 10, with a capture-style warm-up undone before
    it goes on, ends bitwise where the uninterrupted run ends (re-seeding the generators, as the
    capture did before, would replay the stream's start)."""
    from oscfast.engine import BatchRun
    from oscfast.engine.device import _WarmupUndo

    config = tiny_config.with_options(max_iterations=30)
    assert config.reg_noise_std > 0
    whole = BatchRun([(twin_specs(), [cap_watch(30)], 0, None)], config, options=cpu())
    for _ in range(30):
        whole.state.step()
    first = BatchRun([(twin_specs(), [cap_watch(30)], 0, None)], config, options=cpu())
    for _ in range(10):
        first.state.step()
    saved = first.state.state_dict()
    resumed = BatchRun([(twin_specs(), [cap_watch(30)], 0, None)], config, options=cpu())
    resumed.state.load_state_dict(saved)
    undo = _WarmupUndo(resumed.state, 4)
    for _ in range(4):
        resumed.state.step()
    undo.restore()
    assert all(torch.equal(r.get_state(), s) for r, s in zip(resumed.state.rngs, saved["rngs"]))
    reseeded = torch.Generator().manual_seed(resumed.state.rngs[0].initial_seed()).get_state()
    assert not torch.equal(resumed.state.rngs[0].get_state(), reseeded)
    for _ in range(20):
        resumed.state.step()
    assert torch.equal(resumed.state.last_raw, whole.state.last_raw)


def test_format_1_checkpoint_state_loads(tiny_config: DIPConfig) -> None:
    """A checkpoint of the layout before (a list, rings for every fit) still resumes."""
    from oscfast.engine import BatchRun

    config = tiny_config.with_options(max_iterations=12)
    run = BatchRun([(twin_specs(), [cap_watch(12)], 0, None)], config, options=cpu())
    for _ in range(6):
        run.state.step()
    named = dict(run.state.named_mutable_tensors())
    old = []
    for name, tensor in named.items():
        if name in ("ring_raw", "ring_ema"):
            tensor = torch.stack([tensor[:, 0], torch.rand_like(tensor[:, 0])], dim=1)  # fit 1's ring: not kept
        if name == "ring_raw":
            tensor[5, 1] = named["last_raw"][1]  # fit 1's newest output, at t - 1
        if name != "last_raw":
            old.append(tensor.clone())
    fresh = BatchRun([(twin_specs(), [cap_watch(12)], 0, None)], config, options=cpu())
    fresh.state.load_state_dict({"tensors": old, "rngs": [r.get_state() for r in run.state.rngs], "host_t": [6, 6]})
    for name, tensor in fresh.state.named_mutable_tensors():
        torch.testing.assert_close(tensor, named[name], rtol=0, atol=0, equal_nan=True, msg=name)


def test_export_from_a_twin_runs_resume_point_is_exact(tiny_config: DIPConfig) -> None:
    """The twin run keeps the driving fit's state at its syncs; continuing that fit alone from
    the point before the chosen iteration gives the returned raw image bitwise (CPU), from a
    point after iteration 0 (a few steps, not the whole run again)."""
    config = tiny_config.with_options(max_iterations=300)
    specs = twin_specs()
    run = run_fits(specs, config, [twin_watch(300)], options=cpu(sync_every=10))
    decision = run.decision
    assert decision.iteration is not None and run.resume_point is not None
    point = run.resume_point
    assert 0 < point.iteration <= decision.iteration < point.iteration + 10 + run.rules[0].lag + 1
    rebuilt = run_fits([specs[0]], config, [cap_watch(300)], options=cpu(), snapshot_iteration=decision.iteration,
                       resume_from=point)
    assert torch.equal(rebuilt.raw_image, run.raw_image)
    snapshot = rebuilt.generator_snapshot
    top, left = snapshot.top, snapshot.left
    with torch.no_grad():
        out = snapshot.net(snapshot.net_input)[:, :, top : top + snapshot.height, left : left + snapshot.width]
    torch.testing.assert_close(out, run.raw_image, rtol=0, atol=1e-6)


def test_restoration_export_of_a_twin_run_reproduces_the_raw_image(tmp_path, tiny_config: DIPConfig) -> None:
    import oscfast
    from oscfast.export import export_result

    noisy, _ = noisy_pair(size=48, sigma=0.15)
    result = oscfast.restore(noisy[0].permute(1, 2, 0).numpy(), "denoise", config=tiny_config.with_options(max_iterations=120),
                             stop_config=StopConfig(probe="twin", sync_every=10), device="cpu", progress=False)
    assert result.probe == "twin" and result.resume_point is not None
    path = export_result(result, tmp_path / "g.pt2", format="pt2")
    with torch.no_grad():
        image = torch.export.load(str(path)).module()()
    np.testing.assert_allclose(image[0].permute(1, 2, 0).numpy(), result.raw_image, rtol=0, atol=1e-6)


def test_refill_with_another_probe_energy_scales_p(tiny_config: DIPConfig) -> None:
    """1/<n, n> is a device tensor the step reads (not a float a graph would bake in): a refill
    with a probe twice as large updates it in place, and P after the refill is its definition."""
    from oscfast.engine import BatchRun

    config = tiny_config.with_options(max_iterations=10)
    run = BatchRun([(twin_specs(), [cap_watch(10)], 0, None)], config, options=cpu(), extra_signals=("p",))
    energy = run.state.inv_energy
    pointer = energy.data_ptr()
    run.run()
    larger = twin_specs(probe_scale=2.0)
    run.groups[0].finished = True
    run.replace_group(0, larger, [cap_watch(10)])
    assert energy.data_ptr() == run.state.inv_energy.data_ptr() == pointer
    assert float(energy[1]) == pytest.approx(1 / float(larger[1].probe.double().pow(2).sum()), rel=1e-6)
    run.run()
    record = run.record(0)
    noise = larger[1].probe.double()
    expected = float((record.last_images[1].double() * noise).sum() / noise.pow(2).sum())
    assert record.traces["p"][1, -1] == pytest.approx(expected, rel=1e-5)


def test_psnr_y_makes_no_tensor_from_host_data(monkeypatch: pytest.MonkeyPatch) -> None:
    """PSNR-Y runs inside the captured step: no torch.tensor / host copy in it."""
    from torch.utils._python_dispatch import TorchDispatchMode

    from oscfast.metrics import psnr_y_torch

    seen: list[str] = []

    class Ops(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            seen.append(str(func))
            return func(*args, **(kwargs or {}))

    reference, image = torch.rand(1, 3, 20, 20), torch.rand(1, 3, 20, 20)
    for name in ("tensor", "as_tensor", "from_numpy"):
        monkeypatch.setattr(torch, name, lambda *a, _n=name, **k: pytest.fail(f"torch.{_n} inside psnr_y_torch"))
    with Ops():
        value = psnr_y_torch(reference, image)
    monkeypatch.undo()
    assert not [op for op in seen if "lift_fresh" in op or "_to_copy" in op or "copy_" in op]
    from skimage.metrics import peak_signal_noise_ratio

    def y(x: torch.Tensor) -> np.ndarray:
        x = x[0].double().numpy()
        return ((16 + 219 * (0.299 * x[0] + 0.587 * x[1] + 0.114 * x[2])) / 255)[4:-5, 4:-5]

    assert float(value) == pytest.approx(peak_signal_noise_ratio(y(reference), y(image), data_range=1), abs=1e-4)


def test_group_times_read_the_clock_after_a_device_sync(tiny_config: DIPConfig) -> None:
    """Every clock read of the loop comes after a device sync (on CUDA the host only queues
    kernels), and the group's seconds are the synced block times."""
    from oscfast.engine import BatchRun, DeviceClock

    events: list[str] = []
    ticks = iter(range(1000))

    def read() -> float:
        assert events and events[-1] == "sync", "the clock was read without a device sync before it"
        events.append("read")
        return float(next(ticks))

    run = BatchRun([([FitSpec(Denoise(noisy_pair(size=48)[0]))], [cap_watch(10)], 0, None)],
                   tiny_config.with_options(max_iterations=10), options=cpu(sync_every=5))
    run.clock = DeviceClock(sync=lambda: events.append("sync"), read=read)
    run.run()
    reads = events.count("read")
    assert reads == 6 and events.count("sync") == reads  # start, 2 blocks x (start, end), end
    assert run.groups[0].seconds == 2.0 and run.seconds == 5.0


def test_device_clock_syncs_cuda_only(monkeypatch: pytest.MonkeyPatch) -> None:
    from oscfast.engine import device_clock

    calls: list[object] = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: calls.append(device))
    device_clock(torch.device("cpu")).now()
    assert calls == []
    device_clock(torch.device("cuda", 1)).now()
    assert calls == [torch.device("cuda", 1)]


def test_fp32_runs_turn_tf32_off_inside_the_run_only() -> None:
    from oscfast.engine.device import _backend_flags

    before = torch.backends.cudnn.allow_tf32
    with _backend_flags(EngineOptions(device=torch.device("cuda"))):
        assert torch.backends.cudnn.allow_tf32 is False and torch.backends.cudnn.benchmark is True
    assert torch.backends.cudnn.allow_tf32 == before
    with _backend_flags(EngineOptions(device=torch.device("cuda"), allow_tf32=True)):
        assert torch.backends.cudnn.allow_tf32 is True
    assert torch.backends.cudnn.allow_tf32 == before


@pytest.mark.parametrize("strategy", ["loop", "vmap"])
def test_bf16_runs_its_convolutions_in_bf16(tiny_config: DIPConfig, strategy: str) -> None:
    """Autocast does not reach inside vmap: the vmap forward casts itself. Every convolution
    of a bf16 twin run (forward and backward) takes bf16 inputs, whatever the strategy."""
    from torch.utils._python_dispatch import TorchDispatchMode

    dtypes: list[torch.dtype] = []

    class Convolutions(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func.__name__.startswith("convolution"):
                dtypes.append(args[1].dtype)
            return func(*args, **(kwargs or {}))

    config = tiny_config.with_options(max_iterations=2)
    with Convolutions():
        run = run_fits(twin_specs(size=48), config, [cap_watch(2)],
                       options=cpu(precision="bf16", strategy=strategy, check_memory=False))  # the estimate's meta net: fp32
    assert torch.isfinite(run.last_images).all()
    assert dtypes and set(dtypes) == {torch.bfloat16}, set(dtypes)


def test_resolve_strategy_names_the_cuda_choice() -> None:
    from oscfast.fits import CUDA_STRATEGY, resolve_strategy

    assert resolve_strategy("auto", torch.device("cpu"), 2) == "loop"
    assert resolve_strategy("auto", torch.device("cuda"), 2) == CUDA_STRATEGY
    assert resolve_strategy("auto", torch.device("cuda"), 1) == "loop"
    assert resolve_strategy("vmap", torch.device("cpu"), 1) == "vmap"
    with pytest.raises(ValueError, match="unknown strategy"):
        resolve_strategy("fast", torch.device("cpu"), 1)


def test_a_capture_that_fails_falls_back_to_eager_with_the_reason(tiny_config: DIPConfig, caplog: pytest.LogCaptureFixture,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    import oscfast.engine.device
    from oscfast.engine import BatchRun
    from oscfast.engine.device import _graph_or_eager

    monkeypatch.setattr(oscfast.engine.device, "cuda_graph_unavailable_reason", lambda: None)

    run = BatchRun([([FitSpec(Denoise(noisy_pair(size=48)[0]))], [cap_watch(10)], 0, None)],
                   tiny_config.with_options(max_iterations=10), options=cpu())

    def capture(_state):
        raise RuntimeError("CUDA error: operation not permitted when stream is capturing")

    with caplog.at_level("WARNING", logger="oscfast.engine"):
        graph, step = _graph_or_eager(run.state, capture)
    assert graph is None and step == run.state.step
    assert any("operation not permitted" in r.getMessage() and "eagerly" in r.getMessage() for r in caplog.records)


def test_a_closure_or_physics_operator_moves_with_its_task() -> None:
    """A custom operator's tensors hidden in a closure or in the module behind a bound method
    (a deepinv Physics' A) move with the task; the caller's objects stay where they were; a
    tensor that cannot be moved (a global) is named in a ValueError."""
    from oscfast.engine.device import _on_device
    from oscfast.tasks import CustomOperator

    weight = torch.full((1, 3, 1, 1), 0.5)

    def closure(x: torch.Tensor) -> torch.Tensor:
        return x * weight

    class Physics(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.register_buffer("scale", torch.full((1, 3, 1, 1), 2.0))

        def A(self, x: torch.Tensor) -> torch.Tensor:  # noqa: N802 - deepinv's name
            return x * self.scale

    meta = torch.device("meta")
    observation = torch.rand(1, 3, 16, 16)
    moved = _on_device(CustomOperator(observation, closure, (3, 16, 16)), meta)
    cell = moved.operator.__closure__[0].cell_contents
    assert cell.device == meta and weight.device.type == "cpu" and closure.__closure__[0].cell_contents is weight
    physics = Physics()
    moved = _on_device(CustomOperator(observation, physics, (3, 16, 16)), meta)
    assert moved.operator.__self__.scale.device == meta and physics.scale.device.type == "cpu"
    globals()["_GLOBAL_WEIGHT"] = torch.full((1, 3, 16, 16), 0.5)
    try:
        task = CustomOperator(observation, _uses_a_global, (3, 16, 16))
        with pytest.raises(ValueError, match="cannot move"):
            _on_device(task, meta)
    finally:
        del globals()["_GLOBAL_WEIGHT"]


def _uses_a_global(x: torch.Tensor) -> torch.Tensor:
    return x * _GLOBAL_WEIGHT  # noqa: F821 - set by the test


def test_threads_strategy_runs_each_fit_as_a_one_thread_loop(tiny_config: DIPConfig) -> None:
    """strategy="threads" steps the fits in parallel worker threads, one intra-op thread each:
    every trace and image equals the loop strategy's on one thread, bit for bit, and the
    caller's thread count is left as it was."""
    noisy, _ = noisy_pair()
    task = Denoise(noisy)
    noise = gaussian_pseudo_noise((1, 3, 64, 64), 0.04, seed=9)
    specs = [FitSpec(task, seed=3, probe=noise), FitSpec(task, seed=3, probe=noise, noisy_target=True)]
    config = tiny_config.with_options(max_iterations=15)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        loop = run_fits(specs, config, [cap_watch(15)], options=cpu(strategy="loop"), extra_signals=("p", "loss_ema"))
        torch.set_num_threads(2)  # two workers, whatever the machine's cores
        threads = run_fits(specs, config, [cap_watch(15)], options=cpu(strategy="threads"), extra_signals=("p", "loss_ema"))
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
    assert torch.equal(threads.last_images, loop.last_images) and torch.equal(threads.raw_image, loop.raw_image)
    for name in ("loss", "p"):  # per fit, in each fit's own thread; the averages are summed on the main thread
        np.testing.assert_array_equal(threads.traces[name], loop.traces[name])
    np.testing.assert_allclose(threads.traces["loss_ema"], loop.traces["loss_ema"], rtol=1e-6)
    with pytest.raises(ValueError, match="threads"):
        resolve_strategy("threads", torch.device("cuda"), 2)


def test_resume_points_kept_are_bounded_however_long_the_run() -> None:
    """Only the point the current choice needs and those the ring can still be chosen from are
    kept: a 3000-iteration run keeps as many as a 100-iteration one (the memory estimate's count)."""
    from types import SimpleNamespace

    from oscfast.engine.loop import _needed_points
    from oscfast.engine.specs import resume_points_for

    sync_every, ring_size = 5, 18
    kept: list = []
    for done in range(0, 3001, sync_every):
        kept.append(SimpleNamespace(iteration=done))
        # the rule chooses among the iterations of its ring: 46 is chosen at the sync of 60
        kept = _needed_points(kept, done - ring_size, chosen=46 if done >= 60 else None)
        assert len(kept) <= resume_points_for(ring_size, sync_every)
    iterations = [point.iteration for point in kept]
    assert 45 in iterations  # the choice's own point: export replays from it
    assert [i for i in iterations if i > 3000 - ring_size] == [2985, 2990, 2995, 3000]
    assert iterations == sorted(iterations)
