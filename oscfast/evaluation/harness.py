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
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from oscfast import io
from oscfast.prepare import RunOptions, prepare, resolve_device
from oscfast.config import DIPConfig, StopConfig
from oscfast.engine import EngineOptions
from oscfast.evaluation.recording import candidate_rules, record, save_run
from oscfast.checks import check_writable_file
from oscfast.files import write_text_atomic
from oscfast.metrics import psnr_torch, psnr_y_torch
from oscfast.presets import get_preset
from oscfast.evaluation.report import load_runs, markdown_report, plot_run
from oscfast.tasks import task_class

__all__ = ["Degradation", "evaluate_folder", "image_files", "make_observation", "run_evaluate"]

logger = logging.getLogger(__name__)

#: suffixes taken as images
SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")


@dataclass(frozen=True)
class Degradation:
    """How to make the observation of a clean image: the task, the options of its
    :func:`oscfast.degrade` (e.g. ``{"sigma": 25 / 255}`` for denoise, ``{"sigma": 1.5,
    "noise": 0.01}`` for deblur) and the long side the clean image is resized to."""

    task: str = "denoise"
    options: Mapping[str, Any] = field(default_factory=dict)
    size: int = 128

    def describe(self) -> str:
        """One line for the report."""
        details = ", ".join(f"{key} {_short(value)}" for key, value in sorted(self.options.items())) or "defaults"
        return f"{self.task}: {details}, long side {self.size} px"


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, np.ndarray):
        return f"array {value.shape}"
    return str(value)


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
    """(observation, clean, task options) for one clean image (resized first; for a task with
    a scale factor, to a multiple of 8 x factor)."""
    cls = task_class(degradation.task)
    multiple = int(degradation.options.get("factor", 4)) * 8 if "factor" in cls.degrade_options else 1
    clean = _resize(clean_image, degradation.size, multiple)
    observation, options = cls.observe(clean, seed=seed, **degradation.options)
    return observation, clean, options


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
    report = check_writable_file(report, suffixes=(".md",), what="report")
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
        # the one preparation path: the same checks (sizes, memory), task and configuration as restore()
        job = prepare(observation, degradation.task,
                      RunOptions(config=config, preset=preset, max_iterations=max_iterations, seed=seed, device=resolved,
                                 progress=False), options, reference=clean)
        task, dip = job.task, job.config
        reference = job.reference
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


def _degrade_options(args: argparse.Namespace) -> dict[str, Any]:
    """The command line's degradation flags as the options of the task's :func:`oscfast.degrade`."""
    takes = task_class(args.task).degrade_options
    flags = {
        "sigma": args.blur_sigma if "kernel" in takes else args.sigma / 255,  # blur width, or noise in 8-bit units
        "noise": 0.01,
        "quality": args.quality,
        "factor": args.factor,
        "keep": args.keep if args.mask_kind == "random" or "channels" in takes else None,
    }
    options = {name: value for name, value in flags.items() if name in takes and value is not None}
    if "clip" in takes:
        options["clip"] = True
    return options


def run_evaluate(args: argparse.Namespace) -> Path:
    """The ``oscfast evaluate`` command (see ``oscfast evaluate --help``)."""
    degradation = Degradation(task=args.task, options=_degrade_options(args), size=args.size)
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
