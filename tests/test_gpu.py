"""The engine on CUDA: what bench/gpu_check.sh runs first (``pytest -m gpu``); skipped without a GPU.

Each test is small (a narrow net, 48-64 px, a few hundred iterations): together well under a
minute on an H100/H200. They check what a CPU cannot: capture and replay of the step in a CUDA
graph on the device the run asked for, the reg-noise stream of a graph, bf16 convolutions under
vmap, the export of a graph-captured twin run, restore_many's batched (vmap) step, and that the
timings count the device's work.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from oscfast.config import DIPConfig, StopConfig
from oscfast.engine import EngineOptions, FitSpec, Watch, run_fits
from oscfast.io import image_to_tensor
from oscfast.metrics import psnr_torch
from oscfast.models import DENOISE_SPEC
from oscfast.probe import gaussian_pseudo_noise
from oscfast.stopping import CapRule, RiskRule
from oscfast.tasks import Denoise

from conftest import smooth_image

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

CONFIG = DIPConfig(net=DENOISE_SPEC.scaled(0.125), max_iterations=300)


def noisy_pair(size: int = 64, sigma: float = 0.15, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    clean = smooth_image(size, seed=seed)
    noisy = np.clip(clean + np.random.default_rng(seed).normal(0, sigma, clean.shape), 0, 1).astype(np.float32)
    return noisy, clean


def twin(size: int = 64) -> list[FitSpec]:
    noisy, _ = noisy_pair(size)
    task = Denoise(image_to_tensor(noisy))
    noise = gaussian_pseudo_noise((1, 3, size, size), 0.04, seed=3)
    return [FitSpec(task, seed=0, probe=noise), FitSpec(task, seed=0, probe=noise, noisy_target=True)]


def options(device: str = "cuda", **changes) -> EngineOptions:
    return EngineOptions(**{"device": torch.device(device), "progress": False, "sync_every": 10, **changes})


def test_restore_on_cuda_stops_and_times_the_device() -> None:
    import oscfast

    noisy, clean = noisy_pair()
    result = oscfast.restore(noisy, "denoise", reference=clean, config=CONFIG, device="cuda", progress=False)
    assert result.device.startswith("cuda") and result.psnr is not None and result.psnr > 20
    # synchronised clock: a 64 px step is far above the ~10 us of a launch
    assert result.seconds_per_iteration > 1e-4


def test_graph_and_eager_agree_in_statistics_with_reg_noise() -> None:
    """Same seeds, reg-noise on: the graph replays draw fresh noise each time (the loss never
    repeats) and the graph and eager trajectories agree in their statistics."""
    noisy, clean = noisy_pair()
    reference = image_to_tensor(clean).cuda()
    spec = [FitSpec(Denoise(image_to_tensor(noisy)), seed=0)]
    traces = {}
    for graph in (True, False):
        record = run_fits(spec, CONFIG, [Watch(CapRule(max_iterations=300))], metrics={"psnr": lambda x: psnr_torch(reference, x)},
                          options=options(cuda_graph=graph))
        traces[graph] = record.traces
    loss = traces[True]["loss"][0]
    assert len(np.unique(np.round(loss, 9))) > 290
    graph, eager = traces[True]["psnr"][0], traces[False]["psnr"][0]
    np.testing.assert_allclose(graph[:10], eager[:10], atol=0.05)
    assert abs(graph[-100:].mean() - eager[-100:].mean()) < 0.3
    assert abs(traces[True]["loss"][0][-100:].mean() / traces[False]["loss"][0][-100:].mean() - 1) < 0.1


def test_twin_run_with_the_risk_rule_on_a_graph() -> None:
    rule = RiskRule(2 * 0.15**2, -(0.15**2), max_iterations=300, min_patience=30, patience_ratio=0.25)
    record = run_fits(twin(), CONFIG, [Watch(rule, fit=0, probe=1, base=0)], options=options())
    assert record.decision.should_stop and record.decision.iteration is not None
    assert record.raw_image.shape == (1, 3, 64, 64) and torch.isfinite(record.raw_image).all()
    assert record.resume_point is not None and record.resume_point.iteration <= record.decision.iteration


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
def test_second_device_captures_and_replays_there() -> None:
    """device="cuda:1" while cuda:0 is current: streams and graph on cuda:1, results there."""
    torch.cuda.set_device(0)
    before = torch.cuda.memory_allocated(0)
    record = run_fits(twin(), CONFIG.with_options(max_iterations=60), [Watch(CapRule(max_iterations=60))], options=options("cuda:1"))
    assert torch.isfinite(record.last_images).all() and record.iterations_run == 60
    eager = run_fits(twin(), CONFIG.with_options(max_iterations=60), [Watch(CapRule(max_iterations=60))],
                     options=options("cuda:1", cuda_graph=False))
    assert abs(float(record.traces["loss"][0][-10:].mean() / eager.traces["loss"][0][-10:].mean()) - 1) < 0.2
    assert torch.cuda.memory_allocated(0) - before < 2**20  # nothing of the run on cuda:0


def test_bf16_twin_under_vmap_runs_convolutions_in_bf16() -> None:
    from torch.utils._python_dispatch import TorchDispatchMode

    dtypes: set[torch.dtype] = set()

    class Convolutions(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func.__name__.startswith("convolution"):
                dtypes.add(args[1].dtype)
            return func(*args, **(kwargs or {}))

    with Convolutions():
        record = run_fits(twin(), CONFIG.with_options(max_iterations=3), [Watch(CapRule(max_iterations=3))],
                          options=options(precision="bf16", strategy="vmap", cuda_graph=False, check_memory=False))
    assert dtypes == {torch.bfloat16} and torch.isfinite(record.last_images).all()
    graphed = run_fits(twin(), CONFIG, [Watch(CapRule(max_iterations=300))], options=options(precision="bf16", strategy="vmap"))
    assert graphed.traces["loss"][0][-20:].mean() < graphed.traces["loss"][0][:20].mean()


def test_export_of_a_graph_captured_twin_run_reproduces_its_raw_image(tmp_path) -> None:
    import oscfast
    from oscfast.export import export_result

    noisy, _ = noisy_pair()
    result = oscfast.restore(noisy, "denoise", config=CONFIG, stop_config=StopConfig(probe="twin"), device="cuda",
                             progress=False)
    assert result.resume_point is not None
    path = export_result(result, tmp_path / "g.pt2", format="pt2")  # refuses above 1e-3
    with torch.no_grad():
        image = torch.export.load(str(path)).module()()
    assert float(np.abs(image[0].permute(1, 2, 0).numpy() - result.raw_image).max()) < 1e-3


def test_restore_many_batched_on_cuda_agrees_with_single_restores() -> None:
    import oscfast
    from oscfast.many import restore_many

    images = [noisy_pair(seed=s)[0] for s in range(3)]
    many = restore_many(images, batch=2, config=CONFIG, device="cuda", progress=False)
    for image, result in zip(images, many):
        single = oscfast.restore(image, config=CONFIG, device="cuda", progress=False)
        assert abs(result.stop_iteration - single.stop_iteration) <= 30
        assert float(np.abs(result.image - single.image).mean()) < 0.02
