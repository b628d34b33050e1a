"""``oscfast evaluate``: check the stop rules on any folder of clean images.

For each clean image (and seed) the observation is made with :mod:`oscfast.degradations`,
then one twin run records plain DIP and DIP on y + n side by side with every rule watching
(:func:`oscfast.evaluation.record`); the report has the same per-image table, per-rule summary
and figures as ``bench/paper.py``. Each image's run is saved as it finishes (JSON + NPZ in
``<report>_runs/``), so an interrupted evaluation resumes where it stopped.
"""
from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from oscfast import degradations as dg
from oscfast import io
from oscfast.api import resolve_device
from oscfast.config import DIPConfig, StopConfig
from oscfast.engine import EngineOptions
from oscfast.evaluation import candidate_rules, record, save_run
from oscfast.files import check_writable, write_text_atomic
from oscfast.metrics import psnr_torch, psnr_y_torch
from oscfast.presets import get_preset
from oscfast.report import load_runs, markdown_report, plot_run
from oscfast.tasks import build_task

__all__ = ["Degradation", "evaluate_folder", "image_files", "make_observation", "run_evaluate"]

logger = logging.getLogger(__name__)

#: suffixes taken as images
SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")


@dataclass(frozen=True)
class Degradation:
    """How to make the observation of a clean image (the ``oscfast evaluate`` options)."""

    task: str = "denoise"
    sigma: float = 25.0  # denoise, 8-bit units
    quality: int = 10  # jpeg
    factor: int = 4  # super_resolution
    mask_kind: str = "text"  # inpaint: "text" or "random"
    keep: float = 0.5  # restore_pixels (and inpaint with a random mask)
    blur_sigma: float = 1.5  # deblur, with 1% noise
    size: int = 128  # long side the clean image is resized to

    def describe(self) -> str:
        """One line for the report."""
        details = {
            "denoise": f"Gaussian noise sigma {self.sigma:g}/255, clipped",
            "jpeg": f"JPEG quality {self.quality}",
            "super_resolution": f"x{self.factor} (PIL Lanczos downsampling)",
            "inpaint": f"{self.mask_kind} mask",
            "restore_pixels": f"{100 * self.keep:g}% of the pixels kept",
            "deblur": f"Gaussian blur sigma {self.blur_sigma:g} px + 1% noise",
        }
        return f"{self.task}: {details[self.task]}, long side {self.size} px"


def image_files(folder: Path) -> list[Path]:
    """The image files of a folder (not recursive), sorted.

    Raises:
        ValueError: the folder does not exist or holds no image.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"'{folder}' is not a folder")
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in SUFFIXES)
    if not files:
        raise ValueError(f"'{folder}' holds no image ({', '.join(SUFFIXES)})")
    return files


def _resize(image: np.ndarray, size: int, multiple: int) -> np.ndarray:
    from PIL import Image

    height, width = image.shape[:2]
    scale = size / max(height, width)
    new_w = max(multiple, round(width * scale / multiple) * multiple)
    new_h = max(multiple, round(height * scale / multiple) * multiple)
    pil = Image.fromarray(io.to_uint8(image).squeeze())
    return io.load_image(pil.resize((new_w, new_h), Image.LANCZOS))


def make_observation(clean_image: np.ndarray, degradation: Degradation, *, seed: int) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """(observation, clean, task options) for one clean image (resized first)."""
    d = degradation
    multiple = d.factor * 8 if d.task == "super_resolution" else 1
    clean = _resize(clean_image, d.size, multiple)
    if d.task == "denoise":
        return dg.add_gaussian_noise(clean, d.sigma / 255, seed=seed), clean, {}
    if d.task == "jpeg":
        return dg.jpeg_compress(clean, d.quality), clean, {}
    if d.task == "super_resolution":
        return dg.downsample(clean, d.factor), clean, {"factor": d.factor}
    if d.task == "deblur":
        blurred = np.clip(dg.blur(clean, sigma=d.blur_sigma), 0, 1)
        return dg.add_gaussian_noise(blurred, 0.01, seed=seed), clean, {"blur_sigma": d.blur_sigma}
    if d.task == "inpaint":
        if d.mask_kind == "random":
            mask = dg.random_pixel_mask(clean.shape[:2], keep=d.keep, seed=seed)
            observation = dg.apply_mask(clean, mask)
        else:
            observation, mask = dg.degrade(clean, "inpaint", seed=seed)
        return observation, clean, {"mask": mask}
    if d.task == "restore_pixels":
        observation, mask = dg.degrade(clean, "restore_pixels", keep=d.keep, seed=seed)
        return observation, clean, {"mask": mask}
    raise ValueError(f"unknown task {d.task!r}")


def evaluate_folder(
    folder: Path,
    report: Path,
    degradation: Degradation,
    *,
    seeds: int = 1,
    config: DIPConfig | None = None,
    preset: str | None = None,
    max_iterations: int | None = None,
    labels: Sequence[str] | None = None,
    device: str | torch.device = "cpu",
    progress: bool = True,
) -> Path:
    """Evaluate every image of ``folder``; write ``report`` (markdown), the runs and figures.

    Unreadable files are skipped with a warning (and listed in the report).

    Raises:
        ValueError: an empty or missing folder, a report path that cannot be written.
    """
    report = check_writable(report, suffixes=(".md",), what="report")
    files = image_files(folder)
    runs_dir = report.with_name(f"{report.stem}_runs")
    figures = report.with_name(f"{report.stem}_figures")
    resolved = resolve_device(device)
    skipped: list[str] = []
    todo = [(path, seed) for path in files for seed in range(seeds)]
    bar = tqdm(todo, disable=not progress, unit="image", desc="evaluate")
    for path, seed in bar:
        stem = f"{path.stem}-s{seed}"
        if (runs_dir / f"{stem}.json").is_file():
            continue
        try:
            clean_image = io.load_image(path, name=str(path))
        except (ValueError, TypeError, OSError) as error:
            logger.warning("skipping %s: %s", path.name, error)
            skipped.append(f"{path.name}: {error}")
            continue
        observation, clean, options = make_observation(clean_image, degradation, seed=seed)
        task = build_task(degradation.task, observation, seed=seed, **options)
        dip = config or get_preset(degradation.task, preset, factor=options.get("factor"))
        if max_iterations is not None:
            dip = replace(dip, max_iterations=int(max_iterations))
        reference = io.image_to_tensor(clean)
        target = reference.to(resolved)
        metrics = {"psnr": lambda x: psnr_torch(target, x)}
        if degradation.task == "super_resolution":
            metrics["psnr_y"] = lambda x: psnr_y_torch(target, x)
        rec = record(task, dip, seed=seed, stop=StopConfig(), metrics=metrics, reference=reference,
                     options=EngineOptions(device=resolved, progress=False), time_single=10)
        save_run(runs_dir, stem, rec, title=path.name, seed=seed, published_iterations=dip.max_iterations,
                 task=degradation.task, degradation=degradation.describe(), size=list(clean.shape))
    runs = load_runs(runs_dir)
    for run in runs:
        plot_run(run, figures / f"{run['stem']}.png")
    header = (
        f"Images: `{folder}` ({len(files)} files, {seeds} seed(s)); {degradation.describe()}. One twin run per "
        "image and seed (plain DIP and DIP on y + n from the same weights, input and reg-noise draws); every rule "
        "watched the run live; figures in "
        f"`{figures.name}/`."
    )
    if skipped:
        header += "\n\nSkipped (unreadable): " + "; ".join(skipped)
    text = markdown_report(runs, title=f"oscfast evaluate: {degradation.task}", header=header, labels=labels)
    write_text_atomic(report, text)
    return report


def run_evaluate(args: argparse.Namespace) -> Path:
    """The ``oscfast evaluate`` command (see ``oscfast evaluate --help``)."""
    degradation = Degradation(
        task=args.task, sigma=args.sigma, quality=args.quality, factor=args.factor, mask_kind=args.mask_kind,
        keep=args.keep, blur_sigma=args.blur_sigma, size=args.size,
    )
    labels = None
    if args.rules:
        known = {c.label for c in candidate_rules(args.task)}
        labels = [label.strip() for label in args.rules.split(",")]
        unknown = sorted(set(labels) - known)
        if unknown:
            raise ValueError(f"unknown rule label(s) {unknown}; known: {sorted(known)}")
    config = None
    if args.width_scale != 1.0:
        base = get_preset(args.task, args.preset, factor=args.factor)
        config = replace(base, net=base.net.scaled(args.width_scale))
    path = evaluate_folder(
        args.folder, args.output, degradation, seeds=args.seeds, config=config, preset=args.preset,
        max_iterations=args.max_iterations, labels=labels, device=args.device, progress=not args.quiet,
    )
    return path
