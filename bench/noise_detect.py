"""Noise-model detection and parameter estimates on the ES-WMV benchmark's files (issue 16).

For each of the 5 shared images (``../shared/data/eswmv/``: Baboon, F16, Lena, kodim02, kodim12)
x 4 noise kinds x severities 2, 3, 4, the 128 px centre crop of the stored noisy file (the runs'
input) goes through ``oscfast.noise_models.detect_noise`` ("auto") and, told the true kind,
through ``estimate_noise_parameter``. Reported: the confusion table of the picks, and the
estimated parameters against the README's values (which are the ImageNet-C parameters the files
were made with; impulse shares as measured on the files). The Gaussian rows also show the
variance-law fit (``parameter_gaussian`` of the detection), which models clipping, beside
Donoho's estimator, which does not.

    python bench/noise_detect.py     # writes bench/results/noise-detect.md and .json
"""
from __future__ import annotations

import argparse
import logging
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import data_dir, machine, machine_header, write_results

from oscfast import noise_models as nm

logger = logging.getLogger("bench.noise_detect")

IMAGES = ("Baboon", "F16", "Lena", "kodim02", "kodim12")
#: file name of each kind in the benchmark
FILE_KIND = {"gaussian": "gaussian", "poisson": "shot", "speckle": "speckle", "impulse": "impulse"}
SEVERITY_LEVELS = (2, 3, 4)
CROP = 128


def centre_crop(image: np.ndarray, size: int = CROP) -> np.ndarray:
    """The ``size`` x ``size`` centre crop."""
    top, left = (image.shape[0] - size) // 2, (image.shape[1] - size) // 2
    return image[top : top + size, left : left + size]


def load(folder: Path, name: str) -> np.ndarray:
    """A benchmark PNG as float64 in [0, 1], centre-cropped to 128 px."""
    with Image.open(folder / f"{name}.png") as opened:
        pixels = np.asarray(opened.convert("RGB"))
    return centre_crop(pixels).astype(np.float64) / 255.0


def measure(folder: Path) -> list[dict[str, Any]]:
    """One row per noisy file: truth, pick, confidence, parameters, and the true noise std."""
    rows = []
    for image in IMAGES:
        clean = load(folder, f"{image}_clean")
        for kind in nm.NOISE_KINDS:
            for severity in SEVERITY_LEVELS:
                noisy = load(folder, f"{image}_{FILE_KIND[kind]}{severity}")
                start = time.perf_counter()
                guess = nm.detect_noise(noisy)
                seconds = time.perf_counter() - start
                row = {
                    "image": image,
                    "kind": kind,
                    "severity": severity,
                    "true_parameter": nm.severity_parameter(kind, severity),
                    "picked": guess.kind,
                    "confidence": guess.confidence,
                    "picked_parameter": guess.parameter,
                    "estimated_parameter": nm.estimate_noise_parameter(noisy, kind),
                    "error_std_255": float(np.std(noisy - clean) * 255),
                    "detect_seconds": seconds,
                    "scores": guess.scores,
                }
                if kind == "gaussian":
                    law = guess.scores.get("parameter_gaussian")
                    if law is None:  # picked impulse: fit the law anyway
                        law = nm.fit_noise_law(nm.variance_profile(noisy), "gaussian")[0]
                    row["law_parameter"] = law
                rows.append(row)
                logger.info("%s %s%d: %s (%.2f)", image, kind, severity, guess.kind, guess.confidence)
    return rows


def confusion_markdown(rows: list[dict[str, Any]]) -> str:
    """True kind (rows) x picked kind (columns)."""
    counts = Counter((row["kind"], row["picked"]) for row in rows)
    kinds = nm.NOISE_KINDS
    lines = ["| true \\ picked | " + " | ".join(kinds) + " | correct |", "|---" * (len(kinds) + 2) + "|"]
    for kind in kinds:
        total = sum(counts[(kind, other)] for other in kinds)
        cells = [str(counts[(kind, other)]) for other in kinds]
        lines.append(f"| {kind} | " + " | ".join(cells) + f" | {counts[(kind, kind)]}/{total} |")
    return "\n".join(lines)


def _relative(estimate: float, truth: float) -> float:
    return estimate / truth - 1.0


def parameter_markdown(rows: list[dict[str, Any]]) -> str:
    """Per kind and severity: the truth, the estimates (told the kind) and their errors."""
    lines = [
        (
            "| kind | severity | true c | estimated c (told the kind), 5 images | mean error | worst error |"
            " auto: picked c (when right) |"
        ),
        "|---|---|---|---|---|---|---|",
    ]
    for kind in nm.NOISE_KINDS:
        for severity in SEVERITY_LEVELS:
            group = [r for r in rows if r["kind"] == kind and r["severity"] == severity]
            truth = group[0]["true_parameter"]
            estimates = [r["estimated_parameter"] for r in group]
            errors = [_relative(e, truth) for e in estimates]
            picked = [f"{r['picked_parameter']:.3g}" for r in group if r["picked"] == kind]
            lines.append(
                f"| {kind} | {severity} | {truth:g} | {', '.join(f'{e:.3g}' for e in estimates)} | "
                f"{np.mean(errors):+.0%} | {max(errors, key=abs):+.0%} | {', '.join(picked) or '-'} |"
            )
    return "\n".join(lines)


def gaussian_markdown(rows: list[dict[str, Any]]) -> str:
    """Gaussian level: Donoho's estimator vs the clipped-law fit vs the true std after clipping."""
    lines = [
        (
            "| severity | true c | Donoho (mean, worst error) | law fit (mean, worst error) |"
            " std of noisy - clean after clipping /255 |"
        ),
        "|---|---|---|---|---|",
    ]
    for severity in SEVERITY_LEVELS:
        group = [r for r in rows if r["kind"] == "gaussian" and r["severity"] == severity]
        truth = group[0]["true_parameter"]
        donoho = [_relative(r["estimated_parameter"], truth) for r in group]
        law = [_relative(r["law_parameter"], truth) for r in group]
        stds = ", ".join(f"{r['error_std_255']:.1f}" for r in group)
        lines.append(
            f"| {severity} | {truth:g} | {np.mean(donoho):+.0%}, {max(donoho, key=abs):+.0%} | "
            f"{np.mean(law):+.0%}, {max(law, key=abs):+.0%} | {stds} |"
        )
    return "\n".join(lines)


def misses_markdown(rows: list[dict[str, Any]]) -> str:
    """The wrong picks, with their evidence."""
    wrong = [r for r in rows if r["picked"] != r["kind"]]
    if not wrong:
        return "None."
    lines = ["| image | true | picked | confidence | scores |", "|---|---|---|---|---|"]
    for r in wrong:
        scores = ", ".join(f"{k} {v:.3g}" for k, v in r["scores"].items())
        lines.append(f"| {r['image']} | {r['kind']}{r['severity']} | {r['picked']} | {r['confidence']:.2f} | {scores} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None, help="results folder (default bench/results)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    root = data_dir()
    folder = root / "eswmv" if root is not None else None
    if folder is None or not folder.is_dir():
        logger.error("the benchmark files are not here (../shared/data/eswmv); nothing measured")
        return 1
    info = machine()
    rows = measure(folder)
    correct = sum(r["picked"] == r["kind"] for r in rows)
    confidence_right = [r["confidence"] for r in rows if r["picked"] == r["kind"]]
    confidence_wrong = [r["confidence"] for r in rows if r["picked"] != r["kind"]]
    intro = (
        "`python bench/noise_detect.py` (oscfast.noise_models.detect_noise, "
        f"estimate_noise_parameter). {len(IMAGES)} images x 4 kinds x severities {SEVERITY_LEVELS}: "
        f"the {CROP} px centre crops of the stored 256 px noisy files (8-bit, the runs' input). "
        "True parameters: the README's (ImageNet-C's for gaussian, shot, speckle; the measured "
        "shares for impulse)."
    )
    wrong_note = f", {np.median(confidence_wrong):.2f} when wrong." if confidence_wrong else "."
    picks = (
        f"## Picks (\"auto\")\n\n{correct}/{len(rows)} right. Median confidence "
        f"{np.median(confidence_right):.2f} when right{wrong_note}\n\n{confusion_markdown(rows)}"
    )
    parameters = (
        "## Parameters, told the true kind\n\nRelative error = estimate / truth - 1 (c is the "
        "noise std for gaussian; photons of a white pixel for poisson, so +10% there means 10% "
        "less noise variance read; the relative std for speckle; the share for impulse). The "
        "last column is the parameter \"auto\" returned with its pick (for gaussian: the "
        "clipped-law fit, not Donoho).\n\n" + parameter_markdown(rows)
    )
    timing = np.mean([r["detect_seconds"] for r in rows]) * 1000
    sections = [
        "# Noise-model detection on the ES-WMV benchmark files",
        intro,
        picks,
        "## Wrong picks\n\n" + misses_markdown(rows),
        parameters,
        "## Gaussian level: Donoho vs the clipped-law fit\n\n" + gaussian_markdown(rows),
        f"## Machine\n\n{machine_header(info)}\n\nMean detection time per 128 px image: {timing:.0f} ms.",
    ]
    text = "\n\n".join(sections) + "\n"
    path = write_results("noise-detect", text, {"machine": info, "rows": rows}, args.out)
    logger.info("wrote %s", path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
