"""The K-fit DIP engine on the CPU: every piece of the loop except the CUDA graph capture."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from oscfast.config import DIPConfig, StopConfig
from oscfast.engine import EngineOptions, FitSpec, SyncInfo, Watch, canvas_geometry, run_fits
from oscfast.fits import StackedAdam, StackedGenerators, initial_net
from oscfast.io import image_to_tensor
from oscfast.kernels import chord_curvature
from oscfast.memory import TooLargeError, estimate_run_bytes
from oscfast.metrics import psnr_torch
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
    geometry = canvas_geometry(70, 64, 32)
    assert (geometry.height, geometry.width, geometry.top, geometry.left) == (96, 64, 13, 0)


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
        grads[strategy] = [p.grad.clone() for p in fits.parameters()]
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
    assert estimate_run_bytes((3, 64, 64), tiny_config, ring_size=10, num_fits=2) == 2 * small
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
