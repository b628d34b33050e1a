"""The command line: real files out, one-line errors in."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from oscfast.cli import main

from conftest import smooth_image


@pytest.fixture
def noisy_png(tmp_path: Path) -> Path:
    image = (smooth_image(40) * 255).astype(np.uint8)
    path = tmp_path / "noisy.png"
    Image.fromarray(image).save(path)
    return path


def test_restore_writes_png_and_plot(noisy_png: Path, tmp_path: Path, capsys) -> None:
    out, plot = tmp_path / "out" / "restored.png", tmp_path / "curves.png"
    code = main(["restore", str(noisy_png), "-o", str(out), "--max-iterations", "3", "--plot", str(plot),
                 "--device", "cpu", "--reference", str(noisy_png)])
    assert code == 0
    with Image.open(out) as image:
        assert image.format == "PNG" and image.size == (40, 40) and image.mode == "RGB"
        pixels = np.asarray(image)
    assert pixels.std() > 0  # a real image, not a blank
    assert plot.stat().st_size > 1000
    printed = capsys.readouterr().out
    assert "iteration" in printed and "PSNR" in printed


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["restore", "/no/such.png", "-o", "x.png"], "no/such.png"),
        (["restore", "{noisy}", "-o", "x.png", "--task", "denoise", "--factor", "4"], "do not apply"),
        (["restore", "{noisy}", "-o", "x.png", "--task", "inpaint"], "mask"),
        (["restore", "{noisy}", "-o", "x.png", "--preset", "nope"], "unknown preset"),
    ],
)
def test_errors_are_one_line(args: list[str], message: str, noisy_png: Path, capsys) -> None:
    args = [a.replace("{noisy}", str(noisy_png)) for a in args]
    assert main(args + ["--max-iterations", "2", "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("oscfast: error:") and message in err and "\n" not in err


def test_unreadable_file_and_bad_option_exit_nonzero_without_traceback(tmp_path: Path) -> None:
    bad = tmp_path / "bad.png"
    bad.write_text("not an image")
    for args in (["restore", str(bad), "-o", str(tmp_path / "o.png")],
                 ["restore", str(bad), "-o", "o.png", "--task", "dehaze"],
                 ["restore", str(bad), "-o", "o.png", "--max-iterations", "-3"]):
        run = subprocess.run([sys.executable, "-m", "oscfast", *args], capture_output=True, text=True, timeout=120)
        assert run.returncode != 0
        assert "Traceback" not in run.stderr and run.stderr.strip()
