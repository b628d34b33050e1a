"""restore_many: batched restorations equal single ones, slots are refilled."""
from __future__ import annotations

import numpy as np
import pytest

from oscfast import restore
from oscfast.config import DIPConfig, StopConfig
from oscfast.many import restore_many
from oscfast.models import DENOISE_SPEC

from conftest import smooth_image

CONFIG = DIPConfig(net=DENOISE_SPEC.scaled(0.125), max_iterations=100)
STOP = StopConfig(sync_every=5, min_patience=10, patience_ratio=0.2, risk_smoothing=5)


def noisy(seed: int, size: int = 48, sigma: float = 0.2) -> np.ndarray:
    clean = smooth_image(size, seed=seed)
    return np.clip(clean + np.random.default_rng(seed).normal(0, sigma, clean.shape), 0, 1).astype(np.float32)


def test_batched_results_equal_single_restores_and_slots_refill() -> None:
    """Three images in a batch of two: the third starts in the slots of whichever finishes
    first, and every result is bit-identical to restore() with the same seed."""
    images = [noisy(s) for s in range(3)]
    singles = [restore(image, config=CONFIG, stop_config=STOP, device="cpu", progress=False) for image in images]
    runs = [single.iterations_run for single in singles]
    # images 0 and 1 start together; image 2 takes the slots of the first to finish
    first = 0 if runs[0] <= runs[1] else 1
    finish = {0: runs[0], 1: runs[1], 2: runs[first] + runs[2]}
    assert len(set(finish.values())) == 3, f"the test needs distinct finishing iterations, got {finish}"
    order: list[int] = []
    many = restore_many(images, batch=2, config=CONFIG, stop_config=STOP, device="cpu", progress=False,
                        on_result=lambda index, _result: order.append(index))
    assert order == sorted(finish, key=finish.get)
    for single, result in zip(singles, many):
        np.testing.assert_array_equal(result.image, single.image)
        assert (result.stop_iteration, result.iterations_run, result.stop_reason) == (
            single.stop_iteration, single.iterations_run, single.stop_reason)
        np.testing.assert_array_equal(result.history.loss, single.history.loss)
    assert all(r.stop_reason == "risk" and r.iterations_run < 100 for r in many)  # each freed its slots early


def test_groups_by_shape_and_names_the_bad_image() -> None:
    images = [noisy(0), noisy(1, size=64), noisy(2)]
    results = restore_many(images, batch=2, config=CONFIG.with_options(max_iterations=5), stop_config=STOP,
                           device="cpu", progress=False)
    assert [r.image.shape for r in results] == [(48, 48, 3), (64, 64, 3), (48, 48, 3)]
    with pytest.raises(ValueError, match="image 1"):
        restore_many([noisy(0), np.full((48, 48, 3), np.nan, np.float32)], config=CONFIG, device="cpu", progress=False)
    with pytest.raises(ValueError, match="batch"):
        restore_many([noisy(0)], batch=0, device="cpu")
