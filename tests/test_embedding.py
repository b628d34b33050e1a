"""Safe to embed: cancel, callback, Ctrl-C, checkpoint and resume, no side effects, threads,
memory that does not grow over repeated calls."""
from __future__ import annotations

import gc
import resource
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from oscfast import restore
from oscfast.api import Progress
from oscfast.config import DIPConfig, StopConfig
from oscfast.models import DENOISE_SPEC
from oscfast.tasks import Denoise

from conftest import smooth_image

CONFIG = DIPConfig(net=DENOISE_SPEC.scaled(0.125), max_iterations=60)
STOP = StopConfig(sync_every=5, min_patience=200, risk_smoothing=5)  # the risk rule cannot fire in 60 iterations


def noisy(size: int = 48, seed: int = 0) -> np.ndarray:
    clean = smooth_image(size, seed=seed)
    return np.clip(clean + np.random.default_rng(seed).normal(0, 0.1, clean.shape), 0, 1).astype(np.float32)


def fast(**changes) -> dict:
    return {"config": CONFIG, "stop_config": STOP, "progress": False, "device": "cpu", **changes}


def test_callback_sees_every_sync_and_cancel_ends_the_run() -> None:
    seen: list[Progress] = []
    event = threading.Event()

    def callback(progress: Progress) -> None:
        seen.append(progress)
        if progress.iteration >= 20:
            event.set()

    result = restore(noisy(), **fast(callback=callback, cancel=event))
    assert [p.iteration for p in seen] == [5, 10, 15, 20]
    assert all(p.rule == "risk" and p.p is not None and np.isfinite(p.loss) for p in seen)
    assert result.stop_reason == "interrupted" and result.iterations_run == 20
    assert result.stop_iteration == seen[-1].choice  # the choice at the cancel is what comes back
    assert result.image.shape == (48, 48, 3)


def test_a_callable_cancel_and_ctrl_c_end_the_run_with_the_best_so_far() -> None:
    calls = []
    result = restore(noisy(), **fast(cancel=lambda: calls.append(1) or len(calls) >= 3))
    assert result.stop_reason == "interrupted" and result.iterations_run == 15

    def interrupt(progress: Progress) -> None:
        if progress.iteration == 25:
            raise KeyboardInterrupt

    result = restore(noisy(), **fast(callback=interrupt))
    assert result.stop_reason == "interrupted" and result.iterations_run == 25
    assert np.isfinite(result.image).all()


def test_interrupted_and_resumed_run_is_bit_identical(tmp_path: Path) -> None:
    whole = restore(noisy(), **fast())
    path = tmp_path / "run.ckpt"
    stopped = restore(noisy(), **fast(checkpoint=path, checkpoint_every=0, cancel=lambda: path.exists() and whole is not None
                                      and torch.load(path, weights_only=False)["state"]["groups"][0]["done"] >= 30))
    assert stopped.stop_reason == "interrupted" and stopped.iterations_run == 30
    resumed = restore(noisy(), **fast(resume=path))
    assert resumed.iterations_run == whole.iterations_run == 60
    np.testing.assert_array_equal(resumed.image, whole.image)
    assert resumed.stop_iteration == whole.stop_iteration
    np.testing.assert_array_equal(resumed.history.loss, whole.history.loss)
    np.testing.assert_array_equal(resumed.history.p, whole.history.p)


def test_a_checkpoint_of_another_run_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "run.ckpt"
    restore(noisy(), **fast(checkpoint=path, checkpoint_every=0, cancel=lambda: path.exists()))
    with pytest.raises(ValueError, match="seed"):
        restore(noisy(), **fast(resume=path, seed=1))
    with pytest.raises(ValueError, match="observation"):
        restore(noisy(seed=1), **fast(resume=path))
    garbage = tmp_path / "garbage.ckpt"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="cannot be read"):
        restore(noisy(), **fast(resume=garbage))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        restore(noisy(), **fast(resume=tmp_path / "missing.ckpt"))


def _flags() -> dict:
    return {
        "cudnn_benchmark": torch.backends.cudnn.benchmark,
        "cudnn_deterministic": torch.backends.cudnn.deterministic,
        "cudnn_enabled": torch.backends.cudnn.enabled,
        "tf32": torch.backends.cuda.matmul.allow_tf32,
        "deterministic": torch.are_deterministic_algorithms_enabled(),
        "grad": torch.is_grad_enabled(),
        "dtype": torch.get_default_dtype(),
        "threads": torch.get_num_threads(),
        "rng": torch.random.get_rng_state(),
    }


def test_no_side_effects_on_global_state_or_the_callers_objects() -> None:
    image = noisy()
    original = image.copy()
    task = Denoise(torch.from_numpy(image).permute(2, 0, 1)[None].clone())
    observation = task.observation.clone()
    before = _flags()
    restore(image, **fast(max_iterations=5))
    restore(image, task=task, **fast(max_iterations=5, config=CONFIG))
    after = _flags()
    rng_before, rng_after = before.pop("rng"), after.pop("rng")
    assert before == after and torch.equal(rng_before, rng_after)
    np.testing.assert_array_equal(image, original)
    assert torch.equal(task.observation, observation) and task.observation.device.type == "cpu"


def test_two_threads_give_the_sequential_images() -> None:
    images = [noisy(seed=0), noisy(seed=1)]
    sequential = [restore(image, **fast(max_iterations=15)).image for image in images]
    results: dict[int, np.ndarray] = {}

    def work(index: int) -> None:
        results[index] = restore(images[index], **fast(max_iterations=15)).image

    threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for index in range(2):
        np.testing.assert_array_equal(results[index], sequential[index])


def test_thirty_calls_do_not_grow_memory() -> None:
    """RSS after 30 more calls stays within 64 MiB of what it was after 5 (allocator noise;
    a leak of one 48x48 run's buffers per call would add well over that)."""
    image = noisy()

    def rss_mib() -> float:
        gc.collect()
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # pragma: no cover

    for _ in range(5):
        restore(image, **fast(max_iterations=3))
    start = rss_mib()
    for _ in range(30):
        restore(image, **fast(max_iterations=3))
    assert rss_mib() - start < 64
