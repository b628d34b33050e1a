"""restore_folder(backend="ray"): one Ray task per image, and a worker killed mid-run."""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from oscfast import io
from oscfast.folder import CRASH_ENV
from oscfast.config import DIPConfig
from oscfast.folder import restore_folder
from oscfast.models import DENOISE_SPEC

from conftest import smooth_image

try:
    import ray
except ImportError as error:  # pragma: no cover - depends on the environment
    pytest.skip(f"ray is not importable ({error}); pip install 'oscfast[ray]'", allow_module_level=True)

TINY = DIPConfig(net=DENOISE_SPEC.scaled(0.125), max_iterations=10)
NAMES = [f"img{i}.png" for i in range(6)]
VICTIM = "img1.png"  # an early one: its retry overlaps the other images


@pytest.mark.slow  # ~50 s on a busy 2-core machine, mostly Ray and its workers starting
def test_ray_restores_each_image_once_even_when_a_worker_dies(tmp_path: Path) -> None:
    in_dir, out, hook = tmp_path / "in", tmp_path / "out", tmp_path / "hook"
    for seed, name in enumerate(NAMES):
        clean = smooth_image(40, seed=seed)
        noisy = np.clip(clean + np.random.default_rng(seed).normal(0, 0.1, clean.shape), 0, 1)
        io.save_image(in_dir / name, noisy.astype(np.float32))
    hook.mkdir()
    (hook / f"{VICTIM}.crash").touch()  # the first task that handles it kills its own worker

    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=80 * 2**20,
             runtime_env={"env_vars": {CRASH_ENV: str(hook), "OMP_NUM_THREADS": "1"}})
    try:
        summary = restore_folder(in_dir, out, "denoise", backend="ray", config=TINY, device="cpu", progress=False)
        assert ray.is_initialized()  # a Ray started by the caller is left running
    finally:
        ray.shutdown()

    assert (hook / f"{VICTIM}.crashed").exists()  # the worker did die once
    calls = (hook / "calls.log").read_text().split()
    assert sorted(calls) == sorted(NAMES + [VICTIM])  # Ray ran the victim again, every other image once
    assert sorted(p.name for p in out.iterdir()) == sorted(NAMES + ["summary.csv", "summary.json"])  # nothing extra
    for name in NAMES:
        assert io.load_image(out / name).shape == (40, 40, 3)
    assert (summary.restored, summary.skipped, summary.failed) == (6, 0, 0)
    with open(out / "summary.csv", newline="") as stream:
        rows = list(csv.DictReader(stream))
    assert [row["file"] for row in rows] == NAMES
    assert all(row["status"] == "restored" and 1 <= int(row["iterations_run"]) <= 10 for row in rows)


@pytest.mark.slow  # ~30-60 s, mostly Ray starting
def test_restore_many_on_ray_equals_local_restores() -> None:
    """restore_many(backend="ray"): one task per image, results in input order, each equal to
    restore() with the same seed and thread count; a bad image names its index."""
    import torch

    from oscfast import restore
    from oscfast.many import restore_many

    images = [np.clip(smooth_image(40, seed=s) + np.random.default_rng(s).normal(0, 0.1, (40, 40, 3)), 0, 1)
              .astype(np.float32) for s in range(3)]
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=80 * 2**20,
             runtime_env={"env_vars": {"OMP_NUM_THREADS": "1"}})
    try:
        remote = restore_many(images, backend="ray", config=TINY, device="cpu", progress=False)
        with pytest.raises(ValueError, match="image 1"):
            restore_many([images[0], np.full((40, 40, 3), np.nan, np.float32)], backend="ray", config=TINY,
                         device="cpu", progress=False)
    finally:
        ray.shutdown()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the workers' count, for bit-identical CPU numerics
    try:
        local = [restore(image, config=TINY, device="cpu", progress=False) for image in images]
    finally:
        torch.set_num_threads(threads)
    for ours, theirs in zip(remote, local):
        np.testing.assert_array_equal(ours.image, theirs.image)
        assert ours.stop_iteration == theirs.stop_iteration
