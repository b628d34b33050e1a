"""Tests for oscfast.io: reading every supported source, validation errors, and writing."""
from __future__ import annotations

import importlib.util
import logging
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image

from oscfast import io
from oscfast.io import (
    check_min_size,
    image_to_tensor,
    load_image,
    save_image,
    tensor_to_image,
    to_uint8,
)

IO_LOGGER = "oscfast.io"


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


def _assert_canonical(image: np.ndarray, shape: tuple[int, ...]) -> None:
    assert image.shape == shape
    assert image.dtype == np.float32
    assert image.flags.c_contiguous
    assert image.min() >= 0.0 and image.max() <= 1.0


def _paeth(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    p = a + b - c
    pa, pb, pc = np.abs(p - a), np.abs(p - b), np.abs(p - c)
    return np.where((pa <= pb) & (pa <= pc), a, np.where(pb <= pc, b, c))


def _write_filtered_png16(path: Path, samples: np.ndarray, color_type: int) -> None:
    """A 16-bit PNG whose rows cycle through all five PNG filter types (0..4)."""
    height, width, channels = samples.shape
    raw = samples.astype(">u2").reshape(height, width * channels).view(np.uint8).astype(np.int64)
    bpp = 2 * channels
    previous = np.zeros_like(raw[0])
    lines = []
    for y in range(height):
        row = raw[y]
        left = np.concatenate([np.zeros(bpp, np.int64), row[:-bpp]])
        upper_left = np.concatenate([np.zeros(bpp, np.int64), previous[:-bpp]])
        kind = y % 5
        predictor = [0 * row, left, previous, (left + previous) // 2,
                     _paeth(left, previous, upper_left)][kind]
        lines.append(bytes([kind]) + ((row - predictor) % 256).astype(np.uint8).tobytes())
        previous = row

    def chunk(tag: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(tag + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", width, height, 16, color_type, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"".join(lines))) + chunk(b"IEND", b"")
    )


# ---------------------------------------------------------------------------- files


def test_png_8bit_gray(tmp_path, rng):
    data = rng.integers(0, 256, (12, 10), dtype=np.uint8)
    Image.fromarray(data).save(tmp_path / "g.png")
    image = load_image(tmp_path / "g.png")
    _assert_canonical(image, (12, 10, 1))
    np.testing.assert_array_equal(image[:, :, 0], data.astype(np.float32) / 255)


def test_png_8bit_rgb_from_str_path(tmp_path, rng):
    data = rng.integers(0, 256, (12, 10, 3), dtype=np.uint8)
    Image.fromarray(data).save(tmp_path / "c.png")
    image = load_image(str(tmp_path / "c.png"))
    _assert_canonical(image, (12, 10, 3))
    np.testing.assert_array_equal(image, data.astype(np.float32) / 255)


def test_png_16bit_gray(tmp_path, rng):
    data = rng.integers(0, 65536, (9, 11), dtype=np.uint16)
    pil = Image.fromarray(data)
    assert pil.mode == "I;16"
    pil.save(tmp_path / "g16.png")
    image = load_image(tmp_path / "g16.png")
    _assert_canonical(image, (9, 11, 1))
    np.testing.assert_array_equal(np.rint(image[:, :, 0] * 65535).astype(np.uint16), data)


@pytest.mark.parametrize("planar", ["contig", "separate"])
def test_tiff_16bit_rgb_keeps_16bit_precision(tmp_path, rng, planar):
    data = rng.integers(0, 65536, (8, 13, 3), dtype=np.uint16)
    data[0, 0] = (1, 2, 3)  # differ only in the low byte: lost at 8 bits
    path = tmp_path / "c16.tif"
    if planar == "separate":
        tifffile.imwrite(path, np.moveaxis(data, -1, 0), photometric="rgb", planarconfig=planar)
    else:
        tifffile.imwrite(path, data, photometric="rgb")
    image = load_image(path)
    _assert_canonical(image, (8, 13, 3))
    np.testing.assert_array_equal(np.rint(image * 65535).astype(np.uint16), data)


def test_tiff_float_rgb(tmp_path, rng):
    data = rng.random((6, 5, 3)).astype(np.float32)
    tifffile.imwrite(tmp_path / "f.tif", data, photometric="rgb")
    np.testing.assert_array_equal(load_image(tmp_path / "f.tif"), data)


@pytest.mark.parametrize(("color_type", "channels"), [(2, 3), (6, 4), (4, 2)])
def test_png_16bit_color_keeps_16bit_precision(tmp_path, rng, color_type, channels, caplog):
    data = rng.integers(0, 65536, (11, 7, channels), dtype=np.uint16)
    _write_filtered_png16(tmp_path / "c16.png", data, color_type)
    with caplog.at_level(logging.WARNING, logger=IO_LOGGER):
        image = load_image(tmp_path / "c16.png")
    colour = data if channels == 3 else data[:, :, :-1]
    _assert_canonical(image, colour.shape)
    np.testing.assert_array_equal(np.rint(image * 65535).astype(np.uint16), colour)
    assert ("transparency" in caplog.text) == (channels != 3)


def test_jpeg(tmp_path):
    y, x = np.mgrid[0:32, 0:48]
    data = np.stack([x / 47, y / 31, (x + y) / 78], axis=-1)
    Image.fromarray(to_uint8(data)).save(tmp_path / "c.jpg", quality=95)
    image = load_image(tmp_path / "c.jpg")
    _assert_canonical(image, (32, 48, 3))
    assert np.abs(image - data).mean() < 0.01


def test_bmp_and_one_bit(tmp_path):
    mask = np.zeros((6, 9), dtype=bool)
    mask[2:4, 3:7] = True
    Image.fromarray(mask).save(tmp_path / "m.bmp")
    image = load_image(tmp_path / "m.bmp")
    _assert_canonical(image, (6, 9, 1))
    np.testing.assert_array_equal(image[:, :, 0], mask.astype(np.float32))


def test_rgba_opaque_logs_nothing(tmp_path, rng, caplog):
    data = rng.integers(0, 256, (5, 6, 4), dtype=np.uint8)
    data[:, :, 3] = 255
    Image.fromarray(data, mode="RGBA").save(tmp_path / "a.png")
    with caplog.at_level(logging.WARNING, logger=IO_LOGGER):
        image = load_image(tmp_path / "a.png")
    _assert_canonical(image, (5, 6, 3))
    np.testing.assert_array_equal(image, data[:, :, :3].astype(np.float32) / 255)
    assert caplog.records == []


def test_rgba_transparent_warns_and_keeps_colour(tmp_path, rng, caplog):
    data = rng.integers(0, 256, (5, 6, 4), dtype=np.uint8)
    data[:, :, 3] = 255
    data[1, 2, 3] = 0
    data[3, 4, 3] = 128
    Image.fromarray(data, mode="RGBA").save(tmp_path / "a.png")
    with caplog.at_level(logging.WARNING, logger=IO_LOGGER):
        image = load_image(tmp_path / "a.png", name="photo")
    _assert_canonical(image, (5, 6, 3))
    np.testing.assert_array_equal(image, data[:, :, :3].astype(np.float32) / 255)
    [record] = caplog.records
    assert record.levelno == logging.WARNING
    assert "photo" in record.getMessage() and "2 of 30" in record.getMessage()


def test_palette_png(tmp_path):
    palette = np.array([[255, 0, 0], [0, 128, 255], [10, 20, 30]], dtype=np.uint8)
    indices = np.array([[0, 1, 2], [2, 1, 0]], dtype=np.uint8)
    pil = Image.fromarray(indices, mode="P")
    pil.putpalette(palette.ravel().tolist())
    pil.save(tmp_path / "p.png")
    image = load_image(tmp_path / "p.png")
    _assert_canonical(image, (2, 3, 3))
    np.testing.assert_array_equal(image, palette[indices].astype(np.float32) / 255)


def test_palette_png_with_transparency_warns(tmp_path, caplog):
    pil = Image.fromarray(np.array([[0, 1], [1, 1]], dtype=np.uint8), mode="P")
    pil.putpalette([0, 0, 0, 200, 100, 50])
    pil.save(tmp_path / "p.png", transparency=0)
    with caplog.at_level(logging.WARNING, logger=IO_LOGGER):
        image = load_image(tmp_path / "p.png")
    _assert_canonical(image, (2, 2, 3))
    np.testing.assert_allclose(image[1, 1], np.array([200, 100, 50]) / 255, rtol=1e-6)
    assert "transparency" in caplog.text


# ---------------------------------------------------------------------------- PIL images


def test_pil_modes():
    cmyk = Image.new("CMYK", (4, 3), (0, 0, 0, 0))
    _assert_canonical(load_image(cmyk), (3, 4, 3))
    np.testing.assert_array_equal(load_image(cmyk), 1.0)
    ycbcr = Image.new("YCbCr", (4, 3), (128, 128, 128))
    _assert_canonical(load_image(ycbcr), (3, 4, 3))
    gray_alpha = Image.new("LA", (4, 3), (77, 255))
    np.testing.assert_array_equal(load_image(gray_alpha), np.float32(77) / 255)
    sixteen = Image.fromarray(np.array([[0, 65535]], dtype=np.int32))
    assert sixteen.mode == "I"
    np.testing.assert_array_equal(load_image(sixteen)[0, :, 0], [0.0, 1.0])
    floats = Image.fromarray(np.array([[0.25, 0.5]], dtype=np.float32))
    np.testing.assert_array_equal(load_image(floats)[0, :, 0], [0.25, 0.5])


def test_pil_mode_i_outside_16bit_raises():
    with pytest.raises(ValueError, match="65535"):
        load_image(Image.fromarray(np.array([[-1, 70000]], dtype=np.int32)))


# ---------------------------------------------------------------------------- numpy


def test_numpy_uint8_gray_2d(rng):
    data = rng.integers(0, 256, (4, 5), dtype=np.uint8)
    image = load_image(data)
    _assert_canonical(image, (4, 5, 1))
    np.testing.assert_array_equal(image[:, :, 0], data / np.float32(255))


def test_numpy_uint16(rng):
    data = rng.integers(0, 65536, (4, 5, 3), dtype=np.uint16)
    image = load_image(data)
    _assert_canonical(image, (4, 5, 3))
    np.testing.assert_array_equal(np.rint(image * 65535), data)


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_numpy_float(rng, dtype):
    data = rng.random((4, 5, 3)).astype(dtype)
    image = load_image(data)
    _assert_canonical(image, (4, 5, 3))
    np.testing.assert_array_equal(image, data.astype(np.float32))


def test_numpy_float_is_a_copy(rng):
    data = rng.random((4, 5, 1)).astype(np.float32)
    image = load_image(data)
    image[...] = 0
    assert data.max() > 0


def test_numpy_float_tolerance_is_clipped():
    data = np.array([[-5e-7, 0.5, 1 + 5e-7]])
    np.testing.assert_array_equal(load_image(data)[0, :, 0], [0.0, 0.5, 1.0])


def test_numpy_bool():
    data = np.array([[True, False], [False, True]])
    image = load_image(data)
    _assert_canonical(image, (2, 2, 1))
    np.testing.assert_array_equal(image[:, :, 0], data.astype(np.float32))


def test_numpy_gray_alpha_two_channels(caplog):
    data = np.zeros((3, 3, 2), dtype=np.uint8)
    data[..., 0] = 40
    data[..., 1] = 255
    with caplog.at_level(logging.WARNING, logger=IO_LOGGER):
        image = load_image(data)
    _assert_canonical(image, (3, 3, 1))
    assert caplog.records == []


# ---------------------------------------------------------------------------- torch


def test_torch_chw_float(rng):
    data = rng.random((3, 4, 5)).astype(np.float32)
    tensor = torch.from_numpy(data).requires_grad_()
    image = load_image(tensor)
    _assert_canonical(image, (4, 5, 3))
    np.testing.assert_array_equal(image, data.transpose(1, 2, 0))


def test_torch_batch_of_one_uint8(rng):
    data = rng.integers(0, 256, (1, 1, 4, 5), dtype=np.uint8)
    image = load_image(torch.from_numpy(data))
    _assert_canonical(image, (4, 5, 1))
    np.testing.assert_array_equal(image[:, :, 0], data[0, 0] / np.float32(255))


def test_torch_hw_and_other_float_dtypes(rng):
    data = rng.random((4, 5)).astype(np.float32)
    for dtype in (torch.float16, torch.bfloat16, torch.float64):
        tensor = torch.from_numpy(data).to(dtype)
        image = load_image(tensor)
        _assert_canonical(image, (4, 5, 1))
        np.testing.assert_array_equal(image[:, :, 0], tensor.float().numpy())


# ---------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("source", "error", "pattern"),
    [
        (np.zeros((0, 5, 3), np.float32), ValueError, "empty"),
        (np.zeros((4, 0), np.uint8), ValueError, "empty"),
        (torch.zeros(3, 0, 4), ValueError, "empty"),
        (np.array([[0.5, np.nan], [np.nan, 0.1]]), ValueError, "2 NaN"),
        (np.array([[0.5, np.inf], [-np.inf, 0.1]]), ValueError, "2 infinite"),
        (torch.tensor([[0.5, float("nan")]]), ValueError, "NaN"),
        (np.array([[-0.2, 1.3]]), ValueError, r"\[0, 1\].*min -0.2 max 1.3"),
        (np.array([[0.0, 200.0]]), ValueError, "divide by 255"),
        (torch.tensor([[[0.0, 2.0]]]), ValueError, r"\[0, 1\]"),
        (np.zeros(5, np.uint8), ValueError, "expected .*HxW"),
        (np.zeros((1, 4, 4, 3), np.uint8), ValueError, "expected .*HxW"),
        (torch.zeros(1, 1, 1, 4, 4), ValueError, "expected .*1xCxHxW"),
        (np.zeros((6, 6, 5), np.uint8), ValueError, ">4 channels"),
        (torch.zeros(5, 4, 6), ValueError, ">4 channels"),
        (np.zeros((3, 16, 16), np.uint8), ValueError, "HxWxC.*moveaxis"),
        (torch.zeros(16, 16, 3), ValueError, r"CxHxW.*permute"),
        (torch.zeros(2, 3, 8, 8), ValueError, "batch of 2"),
        (np.zeros((4, 4), np.int64), TypeError, "int64.*uint8"),
        (np.zeros((4, 4), np.complex64), TypeError, "complex64"),
        (torch.zeros(4, 4, dtype=torch.int32), TypeError, "int32"),
        ([[0.0, 1.0]], TypeError, "list"),
    ],
)
def test_bad_input_raises(source, error, pattern):
    with pytest.raises(error, match=pattern):
        load_image(source)


def test_error_uses_name():
    with pytest.raises(ValueError, match="^mask contains 1 NaN"):
        load_image(np.array([[np.nan]]), name="mask")


def test_missing_file(tmp_path):
    path = tmp_path / "nope.png"
    with pytest.raises(FileNotFoundError, match="nope.png"):
        load_image(path)


def test_non_image_file(tmp_path):
    path = tmp_path / "notes.png"
    path.write_text("not an image")
    with pytest.raises(ValueError, match="cannot read image .*notes.png"):
        load_image(path)


def test_truncated_file(tmp_path, rng):
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(tmp_path / "t.png")
    data = (tmp_path / "t.png").read_bytes()
    (tmp_path / "t.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="cannot read image"):
        load_image(tmp_path / "t.png")


def test_directory(tmp_path):
    with pytest.raises(ValueError, match="directory"):
        load_image(tmp_path)


def test_check_min_size():
    check_min_size(np.zeros((32, 40, 3)), 32)
    with pytest.raises(ValueError, match="image is 20x40 px.*at least 32 px"):
        check_min_size(np.zeros((20, 40, 3)), 32)
    with pytest.raises(ValueError, match="^mask is 40x20"):
        check_min_size(np.zeros((40, 20)), 32, name="mask")


# ---------------------------------------------------------------------------- writing


def test_to_uint8_rounds_and_clips():
    out = to_uint8(np.array([-0.1, 0.0, 0.5 / 255, 1.5 / 255, 0.5, 1.0, 1.2]))
    np.testing.assert_array_equal(out, [0, 0, 0, 2, 128, 255, 255])
    assert out.dtype == np.uint8
    with pytest.raises(ValueError, match="NaN"):
        to_uint8(np.array([np.nan]))


@pytest.mark.parametrize("suffix", [".png", ".tif", ".bmp"])
@pytest.mark.parametrize("channels", [1, 3])
def test_round_trip_8bit(tmp_path, rng, suffix, channels):
    image = rng.integers(0, 256, (7, 9, channels)).astype(np.float32) / np.float32(255)
    path = save_image(tmp_path / f"x{suffix}", image)
    assert path == tmp_path / f"x{suffix}"
    np.testing.assert_array_equal(load_image(path), image)


@pytest.mark.parametrize("suffix", [".png", ".tif", ".tiff"])
@pytest.mark.parametrize("channels", [1, 3])
def test_round_trip_16bit(tmp_path, rng, suffix, channels):
    image = rng.integers(0, 65536, (7, 9, channels)).astype(np.float32) / np.float32(65535)
    path = save_image(tmp_path / f"x{suffix}", image, bit_depth=16)
    np.testing.assert_array_equal(load_image(path), image)


def test_save_quantises_to_nearest_level(tmp_path, rng):
    image = rng.random((6, 5, 3))
    loaded = load_image(save_image(tmp_path / "x.png", image, bit_depth=16))
    np.testing.assert_array_equal(loaded, (np.rint(image * 65535) / 65535).astype(np.float32))
    assert np.abs(loaded - image).max() <= 0.5 / 65535 + 1e-7


def test_save_2d_and_creates_parents_and_jpeg(tmp_path):
    gray = np.linspace(0, 1, 48, dtype=np.float32).reshape(6, 8)
    path = save_image(tmp_path / "a" / "b" / "g.png", gray)
    with Image.open(path) as pil:
        assert pil.mode == "L"
    rgb = np.broadcast_to(gray[:, :, None], (6, 8, 3))
    jpeg = load_image(save_image(str(tmp_path / "c.jpeg"), rgb))
    assert np.abs(jpeg - rgb).max() < 0.03


def test_save_16bit_png_is_16bit_on_disk(tmp_path):
    path = save_image(tmp_path / "c.png", np.full((2, 2, 3), 0.5), bit_depth=16)
    assert path.read_bytes()[24] == 16  # IHDR bit depth
    with tifffile.TiffFile(save_image(tmp_path / "c.tif", np.zeros((2, 2, 3)), bit_depth=16)) as t:
        assert t.pages[0].dtype == np.uint16


@pytest.mark.parametrize(
    ("name", "image", "kwargs", "pattern"),
    [
        ("x.gif", np.zeros((4, 4, 3)), {}, "unknown suffix '.gif'"),
        ("x", np.zeros((4, 4, 3)), {}, "unknown suffix"),
        ("x.jpg", np.zeros((4, 4, 3)), {"bit_depth": 16}, "8 bits"),
        ("x.png", np.zeros((4, 4, 3)), {"bit_depth": 12}, "8 or 16"),
        ("x.png", np.zeros((4, 4, 5)), {}, "HxWx3"),
        ("x.png", np.zeros((4, 4, 4)), {}, "HxWx3"),
        ("x.png", np.zeros((1, 4, 4, 3)), {}, "HxWx3"),
        ("x.png", np.full((4, 4), 2.0), {}, r"\[0, 1\]"),
        ("x.png", np.full((4, 4), np.nan), {}, "NaN"),
    ],
)
def test_save_rejects(tmp_path, name, image, kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        save_image(tmp_path / name, image, **kwargs)
    assert not (tmp_path / name).exists()


# ---------------------------------------------------------------------------- tensors


def test_image_tensor_round_trip(rng):
    image = rng.random((5, 7, 3)).astype(np.float32)
    tensor = image_to_tensor(image)
    assert tensor.shape == (1, 3, 5, 7) and tensor.dtype == torch.float32
    assert tensor.is_contiguous()
    np.testing.assert_array_equal(tensor[0, 1].numpy(), image[:, :, 1])
    tensor.zero_()
    assert image.max() > 0  # no shared memory
    back = tensor_to_image(image_to_tensor(image))
    assert back.flags.c_contiguous and back.dtype == np.float32
    np.testing.assert_array_equal(back, image)
    np.testing.assert_array_equal(tensor_to_image(image_to_tensor(image)[0]), image)


def test_image_to_tensor_gray_2d():
    assert image_to_tensor(np.zeros((4, 6), np.float64)).shape == (1, 1, 4, 6)


def test_tensor_conversion_errors():
    with pytest.raises(TypeError, match="float"):
        image_to_tensor(np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(ValueError, match="batch of 2"):
        tensor_to_image(torch.zeros(2, 3, 4, 4))
    with pytest.raises(ValueError, match="CxHxW"):
        tensor_to_image(torch.zeros(4, 4))


def test_module_import_does_not_load_torch():
    # Load io.py on its own (the package __init__ may import torch for other reasons).
    spec = importlib.util.find_spec("oscfast.io")
    assert spec is not None and spec.origin is not None
    code = (
        "import importlib.util, sys\n"
        f"spec = importlib.util.spec_from_file_location('oscfast_io_alone', {spec.origin!r})\n"
        "module = importlib.util.module_from_spec(spec)\n"
        "spec.loader.exec_module(module)\n"
        "import numpy as np\n"
        "module.load_image(np.zeros((4, 4, 3), np.uint8))\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
        "assert 'tifffile' not in sys.modules, 'tifffile was imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_public_names():
    assert set(io.__all__) >= {
        "load_image", "save_image", "to_uint8", "check_min_size", "image_to_tensor",
        "tensor_to_image",
    }
