"""Does bf16 change the answer? fp32 against bf16 restorations with the default stop rule.

For 3 images (the demo image and two other crops of the same photo, each with its own noise
seed; sigma 25/255) it runs ``oscfast.restore(task="denoise", precision=p)`` for p in fp32 and
bf16, same seed, and reports per image the PSNR of each result, the difference in dB, the
iteration each returned (and the relative difference), and the seconds of each run. The verdict
"bf16 costs nothing here" needs |dPSNR| <= 0.1 dB and returned iterations within 5% on every
image. The header says whether the device computes bf16 natively (without it, bf16 is emulated
and its seconds say nothing about a machine that has it).

    python bench/precision_check.py --device cuda                # 256 px
    python bench/precision_check.py --device cpu --size 64 --max-iterations 6   # smoke

Writes bench/results/precision-<machine>.md/.json (or into --out-dir).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, machine_header, machine_tag, write_results  # noqa: E402

import oscfast
from oscfast.degradations import add_gaussian_noise
from oscfast.demo import demo_image
from oscfast.hardware import native_bf16

SIGMA = 25 / 255
PRECISIONS = ("fp32", "bf16")
MAX_DPSNR_DB = 0.1
MAX_REL_ITERATION = 0.05


def images(size: int) -> list[tuple[str, np.ndarray, int]]:
    """(name, clean image, noise seed): the demo image and two crops of the photo at twice the
    size (the top-left quarter, and the bottom-right quarter mirrored left-right)."""
    large = demo_image(2 * size)
    return [
        ("astronaut", demo_image(size), 0),
        ("astronaut 2x, top-left", np.ascontiguousarray(large[:size, :size]), 1),
        ("astronaut 2x, bottom-right, mirrored", np.ascontiguousarray(large[size:, size:][:, ::-1]), 2),
    ]


def relative(a: int, b: int) -> float:
    """|a - b| relative to the larger of the two."""
    return abs(a - b) / max(a, b, 1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--size", type=int, default=None, help="image size (default 256 on cuda, 128 on cpu)")
    parser.add_argument("--max-iterations", type=int, default=None, help="iteration cap (default: the preset's)")
    parser.add_argument("--out-dir", type=Path, default=None)
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    gpu = device.type == "cuda"
    size = args.size or (256 if gpu else 128)
    info = machine()
    has_bf16 = native_bf16(device)
    options = {} if args.max_iterations is None else {"max_iterations": args.max_iterations}

    rows = []
    for name, clean, noise_seed in images(size):
        noisy = add_gaussian_noise(clean, SIGMA, seed=noise_seed)
        runs = {}
        for precision in PRECISIONS:
            start = time.perf_counter()
            result = oscfast.restore(noisy, task="denoise", reference=clean, precision=precision, device=args.device,
                                     seed=0, progress=False, **options)
            wall = time.perf_counter() - start
            runs[precision] = {
                "psnr": float(result.psnr), "stop_iteration": int(result.stop_iteration),
                "iterations_run": int(result.iterations_run), "stop_reason": result.stop_reason,
                "rule": result.rule, "probe": result.probe, "output": result.output,
                "seconds": float(result.seconds), "wall_seconds": wall,
            }
            print(f"{name:38s} {precision}: {result.psnr:6.2f} dB, returned iteration {result.stop_iteration}, "
                  f"ran {result.iterations_run} ({result.stop_reason}), {result.seconds:.1f} s", flush=True)
        fp32, bf16 = runs["fp32"], runs["bf16"]
        row = {
            "image": name, "noise_seed": noise_seed, "fp32": fp32, "bf16": bf16,
            "dpsnr_db": bf16["psnr"] - fp32["psnr"],
            "rel_stop_iteration": relative(fp32["stop_iteration"], bf16["stop_iteration"]),
            "rel_iterations_run": relative(fp32["iterations_run"], bf16["iterations_run"]),
        }
        row["same"] = abs(row["dpsnr_db"]) <= MAX_DPSNR_DB and row["rel_stop_iteration"] <= MAX_REL_ITERATION
        rows.append(row)

    same = all(row["same"] for row in rows)
    verdict = (
        "bf16 costs nothing here" if same
        else f"bf16 differs: |dPSNR| > {MAX_DPSNR_DB} dB or returned iterations more than "
             f"{100 * MAX_REL_ITERATION:.0f}% apart on at least one image"
    )
    if not has_bf16:
        verdict += " (bf16 emulated on this device: its seconds are not those of native bf16)"
    print(verdict)

    capability = (
        f"GPU {info.get('gpu')}, native bf16: {has_bf16}" if gpu
        else f"CPU {info['cpu_model']}, torch capability {info['cpu_capability']}, native bf16: {has_bf16}"
    )
    cap = args.max_iterations if args.max_iterations is not None else "the preset's"
    text = (
        f"# Precision check: fp32 against bf16, denoising {size} px, sigma 25/255, seed 0, default stop rule\n\n"
        f"{machine_header(info)}\n- {capability}\n- iteration cap: {cap}\n"
        f"- command: `python bench/precision_check.py {' '.join(sys.argv[1:] if argv is None else argv)}`\n\n"
        "Returned iteration = the iteration whose output restore returned (``stop_iteration``); ran = iterations "
        "run (with the reason the run ended). Seconds = the loop's wall time (``Restoration.seconds``); the first "
        "run of the process includes its warm-up.\n\n"
        "| image | PSNR fp32 | PSNR bf16 | dPSNR (dB) | returned it. fp32 | returned it. bf16 | rel. diff | "
        "ran fp32 | ran bf16 | s fp32 | s bf16 |\n|---|---|---|---|---|---|---|---|---|---|---|\n"
        + "".join(
            f"| {r['image']} | {r['fp32']['psnr']:.2f} | {r['bf16']['psnr']:.2f} | {r['dpsnr_db']:+.2f} | "
            f"{r['fp32']['stop_iteration']} | {r['bf16']['stop_iteration']} | {100 * r['rel_stop_iteration']:.1f}% | "
            f"{r['fp32']['iterations_run']} ({r['fp32']['stop_reason']}) | "
            f"{r['bf16']['iterations_run']} ({r['bf16']['stop_reason']}) | "
            f"{r['fp32']['seconds']:.1f} | {r['bf16']['seconds']:.1f} |\n"
            for r in rows
        )
        + f"\nRule {rows[0]['fp32']['rule']}, probe {rows[0]['fp32']['probe']}, output {rows[0]['fp32']['output']}.\n\n"
        f"**Verdict: {verdict}** (criterion: |dPSNR| <= {MAX_DPSNR_DB} dB and returned iterations within "
        f"{100 * MAX_REL_ITERATION:.0f}% on all {len(rows)} images).\n"
    )
    payload = {"machine": info, "device": str(device), "native_bf16": has_bf16, "size": size,
               "max_iterations": args.max_iterations, "rows": rows, "same": same, "verdict": verdict}
    path = write_results(f"precision-{machine_tag(info)}", text, payload, args.out_dir)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
