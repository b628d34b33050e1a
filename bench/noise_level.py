"""Noise-level estimators against the truth (oscfast.noise_level).

(a) White Gaussian noise, sigma in {5, 10, 15, 25, 50}/255, clipped to [0, 1], on scikit-image's
    astronaut, chelsea, coffee, camera and rocket and the photos under ../shared/data (if present),
    resized to 128 px on the long side and at full size: estimated vs true std of (noisy - clean)
    for Donoho's estimator and patch PCA.
(b) JPEG at qualities 5..90 (Pillow, 4:2:0 as Pillow's default; gray images as gray JPEG, and a
    4:4:4 check at 10 and 90): jpeg_noise_level vs the true RMS error of the decoded image.
    Sources that were JPEG-compressed before (the .jpg file, and PNGs whose DCT coefficients
    still sit on a JPEG quantisation lattice) are reported apart: re-compressing them measures
    the distance to the earlier JPEG, not a compression error of a clean scene.

    python bench/noise_level.py                  # writes bench/results/noise-level-<machine>.md/.json
    python bench/noise_level.py --skimage-only   # the five scikit-image photos only (quick look)
"""
from __future__ import annotations

import argparse
import hashlib
import io
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import data_dir, machine, machine_header, machine_tag, write_results  # noqa: E402

from oscfast import noise_level as nl  # noqa: E402

SIGMAS = (5, 10, 15, 25, 50)
QUALITIES = (5, 10, 20, 30, 50, 75, 90)
QUALITIES_444 = (10, 90)
SKIMAGE = ("astronaut", "chelsea", "coffee", "camera", "rocket")


def load_images(shared: bool = True) -> dict[str, np.ndarray]:
    """uint8 images by name: scikit-image's five and (``shared``) the shared photos (masks left
    out, no duplicates)."""
    from skimage import data

    images: dict[str, np.ndarray] = {name: getattr(data, name)() for name in SKIMAGE}
    root = data_dir() if shared else None
    if root is not None:
        for path in sorted(p for p in root.rglob("*") if p.suffix.lower() in (".png", ".jpg", ".jpeg")):
            if "mask" in path.name:
                continue
            with Image.open(path) as opened:
                image = np.asarray(opened.convert("L" if opened.mode in ("L", "1", "P") and _is_gray(opened) else "RGB"))
            images[str(path.relative_to(root))] = image
    unique, seen = {}, set()
    for name, image in images.items():
        if image.ndim == 3 and np.array_equal(image[..., 0], image[..., 1]) and np.array_equal(image[..., 0], image[..., 2]):
            image = image[..., 0]
        digest = hashlib.md5(image.tobytes()).hexdigest()
        if digest not in seen:
            seen.add(digest)
            unique[name] = image
    return unique


def _is_gray(opened: Image.Image) -> bool:
    return opened.mode in ("L", "1") or (opened.mode == "P" and opened.convert("RGB").getextrema()[0] == opened.convert("RGB").getextrema()[1])


def resized(image: np.ndarray, long_side: int) -> np.ndarray:
    """Lanczos resize to ``long_side`` px on the long side (8-bit)."""
    height, width = image.shape[:2]
    scale = long_side / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return np.asarray(Image.fromarray(image).resize(size, Image.LANCZOS))


def previously_jpeg(name: str, image: np.ndarray) -> bool:
    """True for a .jpg source, or when the clean image's non-zero luma DCT coefficients sit on the
    lattice of an IJG table (some quality) far above chance (0.25)."""
    if name.lower().endswith((".jpg", ".jpeg")):
        return True
    x = image.astype(np.float64)
    luma = x @ nl._RGB_TO_YCC[0] if x.ndim == 3 else x
    coefficients = nl._block_dct(luma - 128.0)
    best = max(nl._lattice_fit(coefficients, nl.jpeg_tables_for_quality(q)[0].astype(float)) for q in range(5, 100, 5))
    return best > 0.3


def white_noise_rows(images: dict[str, np.ndarray]) -> list[dict[str, Any]]:
    """Donoho and PCA on clipped Gaussian noise, 128 px and full size."""
    rows = []
    rng = np.random.default_rng(0)
    for name, image in images.items():
        for size in ("128", "full"):
            clean = (resized(image, 128) if size == "128" else image).astype(np.float64) / 255.0
            for sigma in SIGMAS:
                noisy = np.clip(clean + rng.normal(0.0, sigma / 255.0, clean.shape), 0.0, 1.0)
                truth = float(np.std(noisy - clean))
                row = {"image": name, "size": size, "shape": list(clean.shape), "sigma": sigma, "true": truth}
                for method in ("donoho", "pca"):
                    start = time.perf_counter()
                    row[method] = nl.estimate_noise_level(noisy, method=method)
                    row[f"{method}_s"] = time.perf_counter() - start
                rows.append(row)
        print(f"white noise: {name}", flush=True)
    return rows


def jpeg_rows(images: dict[str, np.ndarray], earlier_jpeg: set[str]) -> list[dict[str, Any]]:
    """jpeg_noise_level vs the true RMS error over qualities (and a 4:4:4 check)."""
    rows = []
    for name, image in images.items():
        settings = [(q, 2) for q in QUALITIES] + ([(q, 0) for q in QUALITIES_444] if image.ndim == 3 else [])
        for quality, subsampling in settings:
            buffer = io.BytesIO()
            options = {"subsampling": subsampling} if image.ndim == 3 else {}
            Image.fromarray(image).save(buffer, "JPEG", quality=quality, **options)
            raw = buffer.getvalue()
            with Image.open(io.BytesIO(raw)) as opened:
                decoded = np.asarray(opened) / 255.0
            truth = float(np.sqrt(np.mean((decoded - image / 255.0) ** 2)))
            start = time.perf_counter()
            budget = nl.jpeg_error_budget(decoded, nl.jpeg_quantization(raw), subsampling=nl.jpeg_subsampling(raw))
            seconds = time.perf_counter() - start
            row = {
                "image": name, "gray": image.ndim == 2, "quality": quality,
                "sampling": "gray" if image.ndim == 2 else ("4:2:0" if subsampling == 2 else "4:4:4"),
                "earlier_jpeg": name in earlier_jpeg, "true": truth, "estimate": budget.rms,
                "luma": budget.luma, "chroma": budget.chroma, "subsampling": budget.subsampling,
                "rounding": budget.rounding, "lattice_fit": budget.lattice_fit, "seconds": seconds,
            }
            if quality == 10 and subsampling == 2:  # What the white-noise estimators make of it.
                row["donoho"] = nl.donoho_noise_level(decoded)
                row["pca"] = nl.pca_noise_level(decoded)
            rows.append(row)
        print(f"jpeg: {name}", flush=True)
    return rows


def relative(rows: list[dict[str, Any]], key: str) -> np.ndarray:
    return np.array([row[key] / row["true"] - 1.0 for row in rows])


def summary(errors: np.ndarray) -> str:
    """'mean |err| (mean signed) max |err| within-15%' cell text."""
    if errors.size == 0:
        return "-"
    return (f"{100 * np.mean(np.abs(errors)):.1f}% ({100 * np.mean(errors):+.1f}%), "
            f"max {100 * np.max(np.abs(errors)):.0f}%, {100 * np.mean(np.abs(errors) <= 0.15):.0f}% in ±15%")


def white_noise_table(rows: list[dict[str, Any]]) -> str:
    lines = ["| size | sigma (/255) | Donoho: mean abs rel. error (mean signed), max, share within ±15% | PCA: same |",
             "|---|---|---|---|"]
    for size in ("128", "full"):
        for sigma in SIGMAS + ("all",):
            chosen = [r for r in rows if r["size"] == size and (sigma == "all" or r["sigma"] == sigma)]
            lines.append(f"| {size} | {sigma} | {summary(relative(chosen, 'donoho'))} | {summary(relative(chosen, 'pca'))} |")
    seconds = {m: {s: np.mean([r[f"{m}_s"] for r in rows if r["size"] == s]) for s in ("128", "full")} for m in ("donoho", "pca")}
    lines.append("")
    lines.append("Mean time per image: " + ", ".join(
        f"{m} {1000 * seconds[m]['128']:.1f} ms (128 px) / {1000 * seconds[m]['full']:.1f} ms (full)" for m in seconds))
    return "\n".join(lines)


def white_noise_by_image(rows: list[dict[str, Any]], size: str) -> str:
    lines = [f"| image ({size}) | " + " | ".join(f"σ={s}: Donoho / PCA" for s in SIGMAS) + " |",
             "|---|" + "---|" * len(SIGMAS)]
    for name in dict.fromkeys(r["image"] for r in rows):
        cells = []
        for sigma in SIGMAS:
            (row,) = [r for r in rows if r["image"] == name and r["size"] == size and r["sigma"] == sigma]
            cells.append(f"{100 * (row['donoho'] / row['true'] - 1):+.0f}% / {100 * (row['pca'] / row['true'] - 1):+.0f}%")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def jpeg_table(rows: list[dict[str, Any]]) -> str:
    lines = ["| sampling | quality | photos: mean abs rel. error (mean signed), max, share within ±15% | "
             "photos: true RMS (/255), median | earlier-JPEG sources: same error summary |",
             "|---|---|---|---|---|"]
    for sampling in ("4:2:0", "4:4:4", "gray"):
        for quality in QUALITIES + ("all",):
            chosen = [r for r in rows if r["sampling"] == sampling and (quality == "all" or r["quality"] == quality)]
            if not chosen:
                continue
            fresh = [r for r in chosen if not r["earlier_jpeg"]]
            earlier = [r for r in chosen if r["earlier_jpeg"]]
            median = 255 * np.median([r["true"] for r in fresh]) if fresh else float("nan")
            lines.append(f"| {sampling} | {quality} | {summary(relative(fresh, 'estimate'))} | {median:.1f} | "
                         f"{summary(relative(earlier, 'estimate'))} |")
    return "\n".join(lines)


def jpeg_by_image(rows: list[dict[str, Any]]) -> str:
    lines = ["| image | " + " | ".join(f"q{q}" for q in QUALITIES) + " | PCA / Donoho at q10 |",
             "|---|" + "---|" * (len(QUALITIES) + 1)]
    for name in dict.fromkeys(r["image"] for r in rows):
        chosen = {r["quality"]: r for r in rows if r["image"] == name and r["sampling"] in ("4:2:0", "gray")}
        mark = " (earlier JPEG)" if chosen[QUALITIES[0]]["earlier_jpeg"] else ""
        cells = [f"{255 * chosen[q]['estimate']:.1f}/{255 * chosen[q]['true']:.1f}" for q in QUALITIES]
        q10 = chosen[10]
        cells.append(f"{255 * q10['pca']:.1f} / {255 * q10['donoho']:.1f}")
        lines.append(f"| {name}{mark} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skimage-only", action="store_true", help="leave out the shared photos")
    args = parser.parse_args()
    started = time.perf_counter()
    images = load_images(shared=not args.skimage_only)
    earlier = {name for name, image in images.items() if previously_jpeg(name, image)}
    noise = white_noise_rows(images)
    jpeg = jpeg_rows(images, earlier)
    info = machine()
    donoho = relative(noise, "donoho")
    pca = relative(noise, "pca")
    text = (
        "# Noise-level estimators vs truth\n\n"
        f"{machine_header(info)}\n- command: `python bench/noise_level.py` ({time.perf_counter() - started:.0f} s)\n"
        f"- images ({len(images)}): " + ", ".join(images) + "\n"
        f"- earlier-JPEG sources (reported apart): {', '.join(sorted(earlier)) or 'none'}\n\n"
        "## (a) White Gaussian noise, clipped to [0, 1]\n\n"
        "Truth: std of (noisy - clean) over all pixels and channels. Relative error = estimate / truth - 1. "
        "The 'clean' images carry their own noise and JPEG artefacts, which every estimator also sees.\n\n"
        f"All rows: Donoho {summary(donoho)}; PCA {summary(pca)}.\n\n"
        + white_noise_table(noise) + "\n\n" + white_noise_by_image(noise, "128") + "\n\n"
        + white_noise_by_image(noise, "full") + "\n\n"
        "## (b) JPEG: jpeg_noise_level vs true RMS error\n\n"
        "Truth: RMS of (decoded - clean) over all pixels and channels, [0, 1] scale. Pillow encodes; the "
        "estimate gets the decoded image, the file's tables and its subsampling code.\n\n"
        + jpeg_table(jpeg) + "\n\n"
        "Per image, 4:2:0 (gray for gray images), estimate / truth in 8-bit units:\n\n" + jpeg_by_image(jpeg) + "\n"
    )
    seconds = [r["seconds"] for r in jpeg]
    text += (f"\njpeg_error_budget time per image: mean {1000 * np.mean(seconds):.0f} ms, "
             f"max {1000 * np.max(seconds):.0f} ms (largest image {max(i.shape[:2] for i in images.values())}).\n")
    suffix = "-skimage" if args.skimage_only else ""
    path = write_results(f"noise-level{suffix}-{machine_tag(info)}", text,
                         {"machine": info, "white_noise": noise, "jpeg": jpeg, "earlier_jpeg": sorted(earlier)})
    print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
