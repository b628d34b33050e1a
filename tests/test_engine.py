"""The DIP engine on the CPU: every piece of the loop except the CUDA graph capture."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from oscfast.config import DIPConfig, StopConfig
from oscfast.engine import EngineOptions, canvas_geometry, run_dip
from oscfast.io import image_to_tensor
from oscfast.kernels import chord_curvature
from oscfast.memory import TooLargeError, estimate_run_bytes
from oscfast.stopping import OSCStopper, RiskStopper
from oscfast.tasks import Denoise

from conftest import smooth_image


def noisy_pair(size: int = 64, sigma: float = 0.1, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    clean = smooth_image(size, seed=seed)
    rng = np.random.default_rng(seed)
    noisy = np.clip(clean + rng.normal(0, sigma, clean.shape), 0, 1).astype(np.float32)
    return image_to_tensor(noisy), image_to_tensor(clean)


def cpu(seed: int = 0) -> EngineOptions:
    return EngineOptions(device=torch.device("cpu"), seed=seed, progress=False)


def test_canvas_geometry_centres_the_image() -> None:
    geometry = canvas_geometry(70, 64, 32)
    assert (geometry.height, geometry.width, geometry.top, geometry.left) == (96, 64, 13, 0)


def test_history_matches_independent_recomputation(tiny_config: DIPConfig, tiny_stop: StopConfig) -> None:
    noisy, clean = noisy_pair()
    config = tiny_config.with_options(max_iterations=60)
    record = run_dip(Denoise(noisy), config, tiny_stop, stop_mode="never", reference=clean, options=cpu())
    assert record.iterations_run == 60
    assert record.p.shape == record.loss.shape == record.psnr_raw.shape == (60,)
    # the loss decreases (the net fits the target) and the PSNR history is self-consistent
    assert record.loss[-10:].mean() < record.loss[:10].mean()
    last = record.last_image
    expected = -10 * np.log10(float(torch.mean((last - clean) ** 2)))
    assert record.psnr_raw[-1] == pytest.approx(expected, abs=1e-3)
    # curvature from the stopper equals the batch kernel over the same P curve
    kappa = chord_curvature(record.p, 10, tiny_stop.smoothing, 60.0)
    known = ~np.isnan(record.curvature)
    np.testing.assert_allclose(record.curvature[known], kappa[known], rtol=1e-9, atol=1e-12)


def test_cpu_runs_are_deterministic(tiny_config: DIPConfig, tiny_stop: StopConfig) -> None:
    noisy, _ = noisy_pair()
    config = tiny_config.with_options(max_iterations=30)
    a = run_dip(Denoise(noisy), config, tiny_stop, stop_mode="never", options=cpu(3))
    b = run_dip(Denoise(noisy), config, tiny_stop, stop_mode="never", options=cpu(3))
    c = run_dip(Denoise(noisy), config, tiny_stop, stop_mode="never", options=cpu(4))
    assert torch.equal(a.last_image, b.last_image)
    np.testing.assert_array_equal(a.p, b.p)
    assert not torch.equal(a.last_image, c.last_image)


def test_online_choice_equals_batch_argmax_and_image_is_exact(tiny_config: DIPConfig) -> None:
    """With stop='osc' the chosen iteration is the batch kernel's argmax over the same prefix,
    and the returned raw image is bit-identical to that iteration's output."""
    noisy, _ = noisy_pair(sigma=0.15)
    stop = StopConfig(rule="knee", half_window=15, patience=15, sync_every=5, significance=0.0)
    config = tiny_config.with_options(max_iterations=400)
    record = run_dip(Denoise(noisy), config, stop, stop_mode="osc", options=cpu())
    assert record.chosen_iteration is not None
    assert record.stop_reason == "knee" and record.iterations_run < 400
    # the batch kernel over the prefix the online rule saw
    stopper = OSCStopper(max_iterations=400, config=stop)
    stopper.update_p(record.p)
    lag = stopper.settings.half_window
    kappa = chord_curvature(record.p, lag, stop.smoothing, 400.0)
    pbar = np.convolve(record.p, np.ones(stop.smoothing) / stop.smoothing)[: record.p.size]
    pbar[: stop.smoothing - 1] = np.cumsum(record.p[: stop.smoothing - 1]) / np.arange(1, stop.smoothing)
    valid = [
        c for c in range(lag, record.iterations_run - lag)
        if c - lag >= int(np.argmin(pbar[: c + lag + 1])) and kappa[c] > 0
    ]
    assert record.chosen_iteration == max(valid, key=lambda c: kappa[c])
    # re-run deterministically up to that iteration: the output there is what was returned
    snapshot = run_dip(Denoise(noisy), config, stop, options=cpu(), snapshot_iteration=record.chosen_iteration)
    assert torch.equal(snapshot.raw_image, record.raw_image)
    # and the snapshot's generator reproduces it from its input
    net = snapshot.generator_snapshot
    with torch.no_grad():
        out = net.net(net.net_input)[:, :, net.top : net.top + net.height, net.left : net.left + net.width]
    torch.testing.assert_close(out, record.raw_image, rtol=0, atol=1e-6)


def test_online_risk_rule_matches_replay_and_returns_exact_image(tiny_config: DIPConfig) -> None:
    """Rule "risk": the engine's choice equals a replay of the rule on the recorded curves,
    the run stops before the cap, and the returned image (raw or average, whichever had the
    lower estimated risk) is bit-identical to that iteration's."""
    noisy, clean = noisy_pair(sigma=0.15)
    stop = StopConfig(rule="risk", sync_every=5, min_patience=30)
    config = tiny_config.with_options(max_iterations=600)
    record = run_dip(Denoise(noisy), config, stop, stop_mode="osc", reference=clean, options=cpu())
    assert record.chosen_iteration is not None and record.stop_reason == "knee"
    assert record.iterations_run < 600
    replay = RiskStopper(weight=record.risk_weight, max_iterations=600, config=stop)
    for a in range(0, record.iterations_run, 5):
        replay.update_p(record.p[a : a + 5], record.loss[a : a + 5], p_ema=record.p_ema[a : a + 5], loss_ema=record.loss_ema[a : a + 5])
    assert (replay.best_iteration, replay.best_output) == (record.chosen_iteration, record.best_output)
    assert replay.stop_iteration == record.osc_stop_iteration
    assert 0 <= record.iterations_run - record.osc_stop_iteration < stop.sync_every  # ends at a sync
    # the choice is the minimum of the trailing 25-mean of the chosen output's risk over the
    # iterations seen when the rule fired (windows ending before the stop)
    risk = record.risk if record.best_output == "raw" else record.risk_ema
    smoothed = np.convolve(risk, np.ones(25) / 25, mode="valid")[: record.osc_stop_iteration - 24]
    assert int(np.argmin(smoothed)) + 12 == record.chosen_iteration
    snapshot = run_dip(Denoise(noisy), config, stop, options=cpu(), snapshot_iteration=record.chosen_iteration)
    assert torch.equal(snapshot.raw_image, record.raw_image)
    assert torch.equal(snapshot.ema_image, record.ema_image)
    # the estimate tracks the truth: PSNR at the choice is close to the run's best
    curve = record.psnr_ema if record.best_output == "ema" else record.psnr_raw
    assert curve[record.chosen_iteration] >= 0.95 * record.psnr_raw.max()


def test_plain_dip_runs_to_the_cap_and_returns_last(tiny_config: DIPConfig) -> None:
    noisy, _ = noisy_pair()
    config = tiny_config.with_options(max_iterations=20)
    record = run_dip(Denoise(noisy), config, StopConfig(pseudo_noise_std=0.0), options=cpu())
    assert record.iterations_run == 20 and record.chosen_iteration is None
    assert torch.equal(record.raw_image, record.last_image)
    assert record.p.size == 0


def test_non_multiple_size_comes_back_whole(tiny_config: DIPConfig, tiny_stop: StopConfig) -> None:
    clean = smooth_image(80)[:70, :45]
    record = run_dip(Denoise(image_to_tensor(clean)), tiny_config.with_options(max_iterations=5), tiny_stop, options=cpu())
    assert record.last_image.shape == (1, 3, 70, 45)


def test_bf16_precision_runs_close_to_fp32(tiny_config: DIPConfig, tiny_stop: StopConfig) -> None:
    noisy, clean = noisy_pair()
    config = tiny_config.with_options(max_iterations=40)
    fp32 = run_dip(Denoise(noisy), config, tiny_stop, stop_mode="never", reference=clean, options=cpu())
    bf16 = run_dip(Denoise(noisy), config, tiny_stop, stop_mode="never", reference=clean,
                   options=EngineOptions(device=torch.device("cpu"), precision="bf16", progress=False))
    # bf16 changes the numbers but not the trajectory (bench/speed.py checks 0.2 dB at size)
    assert not np.array_equal(fp32.psnr_raw, bf16.psnr_raw)
    # early iterations move fast, so the two differ by dB here; both must still restore
    # (bench/speed.py checks the 0.2 dB trajectory bound at benchmark size)
    noisy_psnr = -10 * np.log10(float(torch.mean((noisy - clean) ** 2)))
    assert bf16.psnr_raw[-1] > noisy_psnr + 1 and fp32.psnr_raw[-1] > noisy_psnr + 1


def test_memory_estimate_grows_with_size_and_refuses_huge(tiny_config: DIPConfig) -> None:
    small = estimate_run_bytes((3, 64, 64), tiny_config, ring_size=10)
    large = estimate_run_bytes((3, 256, 256), tiny_config, ring_size=10)
    assert 10 < large / small < 20  # ~16x the pixels
    noisy = torch.zeros(1, 3, 64, 64)
    huge = Denoise(noisy)
    huge.output_size = (60000, 60000)  # a 3.6-gigapixel canvas
    with pytest.raises(TooLargeError, match="too large for memory"):
        run_dip(huge, tiny_config, StopConfig(), options=cpu())


def test_cuda_graph_needs_cuda() -> None:
    with pytest.raises(ValueError, match="CUDA"):
        _ = EngineOptions(device=torch.device("cpu"), cuda_graph=True).use_cuda_graph


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_graph_matches_eager_on_gpu(tiny_config: DIPConfig, tiny_stop: StopConfig) -> None:
    noisy, clean = noisy_pair()
    # no reg-noise: the captured graph draws its random numbers from another Philox offset
    # than the eager loop, and a different noise sequence is a different trajectory
    config = tiny_config.with_options(max_iterations=100, reg_noise_std=0.0)
    device = torch.device("cuda")
    graph = run_dip(Denoise(noisy), config, tiny_stop, stop_mode="never", reference=clean,
                    options=EngineOptions(device=device, cuda_graph=True, progress=False))
    eager = run_dip(Denoise(noisy), config, tiny_stop, stop_mode="never", reference=clean,
                    options=EngineOptions(device=device, cuda_graph=False, progress=False))
    # same seed and same ops: the trajectories agree up to GPU non-determinism
    assert abs(graph.psnr_raw[-1] - eager.psnr_raw[-1]) < 0.5
    np.testing.assert_allclose(graph.psnr_raw[:5], eager.psnr_raw[:5], atol=0.05)
    assert graph.p.shape == eager.p.shape == (100,)
    assert np.all(np.isfinite(graph.p))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_online_choice_returns_snapshot(tiny_config: DIPConfig) -> None:
    noisy, _ = noisy_pair(sigma=0.15)
    stop = StopConfig(rule="knee", half_window=15, patience=15, sync_every=5, significance=0.0)
    record = run_dip(Denoise(noisy), tiny_config.with_options(max_iterations=400), stop,
                     options=EngineOptions(device=torch.device("cuda"), progress=False))
    assert record.chosen_iteration is not None
    assert record.raw_image.shape == (1, 3, 64, 64) and torch.isfinite(record.raw_image).all()
