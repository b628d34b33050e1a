"""Shared fixtures: tiny images and configurations that keep the suite fast on 2 cores."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from oscfast.config import DIPConfig, StopConfig
from oscfast.models import DENOISE_SPEC

SHARED = Path(__file__).resolve().parents[1].parent / "shared"


def smooth_image(size: int = 64, channels: int = 3, seed: int = 0) -> np.ndarray:
    """A smooth synthetic image in [0, 1] with edges (HxWxC float32)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    layers = []
    for c in range(channels):
        phase = rng.uniform(0, 2 * np.pi, 2)
        layer = 0.5 + 0.3 * np.sin(4 * xx + phase[0]) * np.cos(3 * yy + phase[1])
        layer += 0.15 * ((xx - 0.5) ** 2 + (yy - 0.4) ** 2 < 0.06)
        layers.append(layer)
    return np.clip(np.stack(layers, axis=-1), 0, 1).astype(np.float32)


@pytest.fixture
def tiny_config() -> DIPConfig:
    """A narrow net and a short run: seconds on a CPU."""
    return DIPConfig(net=DENOISE_SPEC.scaled(0.125), max_iterations=160)


@pytest.fixture
def tiny_stop() -> StopConfig:
    return StopConfig(rule="knee", half_window=10, patience=10, sync_every=5)


@pytest.fixture
def shared_data() -> Path:
    data = SHARED / "data"
    if not data.is_dir():
        pytest.skip("../shared/data is not present")
    return data
