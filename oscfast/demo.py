"""The demo: denoise an image that scikit-image ships, with automatic stopping."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from oscfast import io
from oscfast.api import restore
from oscfast.result import Restoration
from oscfast.degradations import add_gaussian_noise
from oscfast.metrics import psnr

__all__ = ["DemoReport", "demo_image", "run_demo"]

logger = logging.getLogger(__name__)

#: long side of the demo image: small enough for a 2-core CPU to finish in about 2 minutes
DEMO_SIZE = 64
#: iteration cap of the demo (the stop window follows it: L = max(50, cap / 7.5))
DEMO_MAX_ITERATIONS = 1500


@dataclass(frozen=True)
class DemoReport:
    """What the demo measured and wrote."""

    noisy_psnr: float
    restored_psnr: float
    result: Restoration
    files: dict[str, Path]


def demo_image(size: int = DEMO_SIZE) -> np.ndarray:
    """scikit-image's bundled 'astronaut' photo, centre-cropped to a square and resized
    (Pillow Lanczos) to ``size`` px: float32 HxWx3 in [0, 1]."""
    from PIL import Image
    from skimage import data

    photo = data.astronaut()
    side = min(photo.shape[:2])
    top, left = (photo.shape[0] - side) // 2, (photo.shape[1] - side) // 2
    square = Image.fromarray(photo[top : top + side, left : left + side])
    return io.load_image(square.resize((size, size), Image.LANCZOS))


def run_demo(
    out_dir: str | Path = "oscfast-demo",
    *,
    size: int = DEMO_SIZE,
    max_iterations: int = DEMO_MAX_ITERATIONS,
    sigma: float = 25 / 255,
    seed: int = 0,
    device: str = "auto",
    progress: bool = True,
) -> DemoReport:
    """Add Gaussian noise (sigma 25/255, fixed seed) to the demo image, restore it with
    automatic stopping, and write noisy / restored / clean / curve PNGs to ``out_dir``."""
    out = Path(out_dir)
    clean = demo_image(size)
    noisy = add_gaussian_noise(clean, sigma, seed=seed)
    result = restore(
        noisy, task="denoise", reference=clean, max_iterations=max_iterations,
        seed=seed, device=device, progress=progress,
    )
    files = {
        "clean": io.save_image(out / "clean.png", clean),
        "noisy": io.save_image(out / "noisy.png", noisy),
        "restored": result.save(out / "restored.png"),
        "curves": result.plot(out / "curves.png"),
    }
    return DemoReport(psnr(clean, noisy), psnr(clean, result.image), result, files)
