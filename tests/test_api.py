"""restore(): input kinds, output size, options and the errors a person gets."""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import oscfast
from oscfast import restore
from oscfast.config import DIPConfig, StopConfig
from oscfast.memory import available_bytes, estimate_run_bytes
from oscfast.presets import get_preset

from conftest import smooth_image

API_SNAPSHOT = Path(__file__).with_name("api_surface.json")


@pytest.fixture
def fast(tiny_config: DIPConfig, tiny_stop: StopConfig) -> dict:
    return dict(config=tiny_config.with_options(max_iterations=8), stop_config=tiny_stop, progress=False, device="cpu")


def test_public_names_do_not_disappear() -> None:
    expected = set(json.loads(API_SNAPSHOT.read_text()))
    assert expected <= set(oscfast.__all__)
    for name in expected:
        assert getattr(oscfast, name) is not None


@pytest.mark.parametrize(
    "make",
    [
        lambda img: img,  # numpy float HxWxC
        lambda img: (img * 255).round().astype(np.uint8),
        lambda img: (img * 65535).round().astype(np.uint16),
        lambda img: Image.fromarray((img * 255).round().astype(np.uint8)),
        lambda img: torch.from_numpy(img).permute(2, 0, 1).contiguous(),
        lambda img: torch.from_numpy(img).permute(2, 0, 1)[None].contiguous(),
    ],
    ids=["float", "uint8", "uint16", "pil", "chw", "1chw"],
)
def test_input_kinds_give_same_size_output(make, fast: dict) -> None:
    image = smooth_image(48)
    result = restore(make(image), **fast)
    assert result.image.shape == (48, 48, 3) and result.image.dtype == np.float32
    assert 0 <= result.image.min() and result.image.max() <= 1
    assert result.iterations_run == 8


def test_grayscale_path_and_odd_size(tmp_path: Path, fast: dict) -> None:
    gray = (smooth_image(64)[:50, :37, 0] * 255).astype(np.uint8)
    path = tmp_path / "gray.png"
    Image.fromarray(gray).save(path)
    result = restore(path, **fast)
    assert result.image.shape == (50, 37, 1)  # not cropped to a multiple of 32
    out = result.save(tmp_path / "out.png")
    assert Image.open(out).size == (37, 50)


def test_result_fields_with_reference(fast: dict) -> None:
    clean = smooth_image(48)
    noisy = np.clip(clean + np.random.default_rng(0).normal(0, 0.1, clean.shape), 0, 1).astype(np.float32)
    result = restore(noisy, reference=clean, stop="never", **fast)
    assert result.history.psnr_raw.shape == (8,) and result.history.psnr_ema.shape == (8,)
    assert result.psnr == pytest.approx(oscfast.psnr(clean, result.image))
    assert result.output == "ema" and result.stop_reason == "cap"
    assert result.stop_iteration == 7  # no knee in 8 iterations: the last one is returned
    np.testing.assert_array_equal(result.image, np.clip(result.ema_image, 0, 1))


def test_plot_writes_png(tmp_path: Path, fast: dict) -> None:
    result = restore(smooth_image(48), reference=smooth_image(48), **fast)
    path = result.plot(tmp_path / "curves.png")
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size[0] > 100


def test_pseudo_noise_zero_is_plain_dip(fast: dict) -> None:
    result = restore(smooth_image(48), pseudo_noise_std=0, **fast)
    assert result.history.p is None and result.probe == "none" and result.rule == "cap"
    assert result.stop_iteration == 7 and result.stop_reason == "cap"
    np.testing.assert_array_equal(result.image, np.clip(result.ema_image, 0, 1))


@pytest.mark.parametrize(
    ("image", "kwargs", "error", "match"),
    [
        (np.zeros((0, 10, 3), np.float32), {}, ValueError, "empty"),
        (np.full((40, 40, 3), np.nan, np.float32), {}, ValueError, "NaN"),
        (np.full((40, 40, 3), np.inf, np.float32), {}, ValueError, "inf"),
        (np.full((40, 40, 3), 1.5, np.float32), {}, ValueError, r"\[0, 1\]"),
        (np.zeros((2, 40, 40, 3), np.float32), {}, ValueError, "HxW"),
        (np.zeros((40, 40, 5), np.float32), {}, ValueError, "channels"),
        (np.zeros((20, 40, 3), np.float32), {}, ValueError, "at least 32"),
        (np.zeros((40, 40, 3), np.int64), {}, TypeError, "int64"),
        (np.zeros((40, 40, 3), np.float32), {"task": "dehaze"}, ValueError, "unknown task"),
        (np.zeros((40, 40, 3), np.float32), {"factor": 4}, ValueError, "do not apply"),
        (np.zeros((40, 40, 3), np.float32), {"stop": "soon"}, ValueError, "unknown stop"),
        (np.zeros((40, 40, 3), np.float32), {"device": "tpu"}, ValueError, "device"),
        (np.zeros((40, 40, 3), np.float32), {"max_iterations": 0}, ValueError, "max_iterations"),
        (np.zeros((40, 40, 3), np.float32), {"preset": "nope"}, ValueError, "unknown preset"),
        (np.zeros((40, 40, 3), np.float32), {"reference": np.zeros((41, 40, 3), np.float32)}, ValueError, "reference has shape"),
        (np.zeros((40, 40, 3), np.float32), {"output": "best"}, ValueError, "unknown output"),
        ("/no/such/file.png", {}, FileNotFoundError, "no/such"),
    ],
)
def test_bad_input_is_named(image, kwargs, error, match) -> None:
    with pytest.raises(error, match=match):
        restore(image, **{"progress": False, "device": "cpu", "max_iterations": 2, **kwargs})


def test_unknown_keyword_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="colour"):
        restore(np.zeros((40, 40, 3), np.float32), colour="red")  # type: ignore[call-arg]


def test_too_large_for_memory_is_refused_before_allocating() -> None:
    # 8000 x 8000 gray: one 128-channel activation at full size is already 32 GiB
    big = np.full((8000, 8000), 128, np.uint8)
    with pytest.raises(oscfast.TooLargeError, match="too large for memory") as error:
        restore(big, progress=False, device="cpu", max_iterations=2)
    # the message names a size that fits: the estimate for it is within the free memory
    height, width = map(int, re.search(r"fits is about (\d+)x(\d+) px", str(error.value)).groups())
    assert 32 <= height == width < 8000
    needed = estimate_run_bytes((1, height, width), get_preset("denoise", None), ring_size=26, num_fits=2)
    assert needed <= 0.9 * available_bytes(torch.device("cpu"))


@pytest.mark.parametrize("net", ["unet", "resnet"])
def test_alternative_generators(net: str) -> None:
    result = restore(smooth_image(48)[:40], net=net, max_iterations=2, progress=False, device="cpu")
    assert result.config.net.kind == net and result.image.shape == (40, 48, 3)
    with pytest.raises(ValueError, match="unknown net"):
        restore(smooth_image(48), net="vit", max_iterations=2, progress=False, device="cpu")  # type: ignore[arg-type]
