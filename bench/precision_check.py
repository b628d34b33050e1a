"""Does a faster numeric path keep the DIP trajectory? PSNR of the fp32 eager loop against
the engine variants (fp32, bf16) at iterations 250/500/1000, same seed, same image.

    python bench/precision_check.py --device cuda --size 256
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import data_dir, machine, machine_header, machine_tag, write_results  # noqa: E402

from oscfast import io
from oscfast.config import DIPConfig, StopConfig
from oscfast.degradations import add_gaussian_noise
from oscfast.demo import demo_image
from oscfast.engine import EngineOptions, run_dip
from oscfast.tasks import Denoise

CHECKPOINTS = (250, 500, 1000)


def benchmark_image(size: int) -> tuple[np.ndarray, str]:
    data = data_dir()
    if data is not None:
        from PIL import Image

        image = Image.open(data / "denoising" / "F16_GT.png").convert("RGB").resize((size, size), Image.LANCZOS)
        return io.load_image(image), "F16"
    return demo_image(size), "astronaut"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--iterations", type=int, default=1000)
    parser.add_argument("--out-dir", type=Path, default=None)
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    clean, name = benchmark_image(args.size)
    noisy = add_gaussian_noise(clean, 25 / 255, seed=0)
    config = DIPConfig(max_iterations=args.iterations)
    stop = StopConfig()
    variants = {
        "fp32 eager": EngineOptions(device=device, cuda_graph=False, channels_last=False, progress=False),
        "fp32 engine": EngineOptions(device=device, progress=False),
        "bf16 engine": EngineOptions(device=device, precision="bf16", progress=False),
    }
    curves = {}
    for label, options in variants.items():
        record = run_dip(Denoise(io.image_to_tensor(noisy)), config, stop, stop_mode="never",
                         reference=io.image_to_tensor(clean), options=options)
        curves[label] = (record.psnr_raw, record.psnr_ema)
        print(label, [f"{record.psnr_raw[c - 1]:.2f}" for c in CHECKPOINTS if c <= args.iterations], flush=True)
    base_raw, base_ema = curves["fp32 eager"]
    rows = []
    for label, (raw, ema) in curves.items():
        for c in CHECKPOINTS:
            if c <= args.iterations:
                rows.append({"variant": label, "iteration": c, "psnr_raw": float(raw[c - 1]), "psnr_ema": float(ema[c - 1]),
                             "delta_raw": float(raw[c - 1] - base_raw[c - 1]), "delta_ema": float(ema[c - 1] - base_ema[c - 1])})
    info = machine()
    text = (
        f"# Trajectory check: {name} {args.size} px, sigma 25/255, seed 0\n\n{machine_header(info)}\n"
        f"- command: `python bench/precision_check.py --device {args.device} --size {args.size}`\n\n"
        "| variant | iteration | PSNR raw | PSNR EMA | delta raw vs fp32 eager | delta EMA |\n|---|---|---|---|---|---|\n"
        + "".join(f"| {r['variant']} | {r['iteration']} | {r['psnr_raw']:.2f} | {r['psnr_ema']:.2f} | {r['delta_raw']:+.2f} | {r['delta_ema']:+.2f} |\n" for r in rows)
    )
    path = write_results(f"precision-{machine_tag(info)}-{args.size}", text, {"machine": info, "rows": rows}, args.out_dir)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
