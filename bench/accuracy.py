"""How well the OSC stop works: plain DIP and DIP+OSC side by side with stop="never" and a
reference, per benchmark case (method.md section 6 vocabulary).

    python bench/accuracy.py --suite denoise          # issue 2: F16, two Kates, Snail (JPEG), 128 px
    python bench/accuracy.py --suite tasks            # issue 5: one paper case per task, mini scale
    python bench/accuracy.py --suite heldout          # scikit-image photos the rule was never tuned on

Writes bench/results/accuracy-<suite>-<machine>.md/.json and the curves (.npz) of every run.
"""
from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, data_dir, machine, machine_header, machine_tag, write_results  # noqa: E402

from oscfast import degradations as dg
from oscfast import io
from oscfast.api import restore
from oscfast.config import StopConfig
from oscfast.metrics import psnr
from oscfast.stopping import make_stopper

RULES = ("knee", "risk", "paper")


def rule_choices(history: Any, cap: int, weight: float, default_output: str, sync_every: int = 25) -> dict[str, tuple[int | None, int | None, str]]:
    """(chosen iteration, stop iteration, output) of every rule, replayed on one run's curves
    as the engine feeds them (chunks of ``sync_every``)."""
    choices = {}
    for rule in RULES:
        stopper = make_stopper(StopConfig(rule=rule), max_iterations=cap, risk_weight_value=weight)
        for a in range(0, history.p.size, sync_every):
            b = a + sync_every
            stopper.update_p(history.p[a:b], history.loss[a:b], p_ema=history.p_ema[a:b], loss_ema=history.loss_ema[a:b])
        output = getattr(stopper, "best_output", default_output) if stopper.best_iteration is not None else default_output
        choices[rule] = (stopper.best_iteration, stopper.stop_iteration, output)
    return choices


@dataclass
class Case:
    """One benchmark case: how to make (observation, reference, task options)."""

    name: str
    task: str
    make: Callable[[Path | None], tuple[np.ndarray, np.ndarray, dict[str, Any]]]
    preset: str | None = None
    options: dict[str, Any] = field(default_factory=dict)


def resize_long_side(image: np.ndarray, size: int) -> np.ndarray:
    """PIL Lanczos resize so that the long side is ``size`` px."""
    height, width = image.shape[:2]
    scale = size / max(height, width)
    new = (max(1, round(width * scale)), max(1, round(height * scale)))
    pil = Image.fromarray(io.to_uint8(image).squeeze())
    return io.load_image(pil.resize(new, Image.LANCZOS))


def noisy_case(path: str, size: int = 128, sigma: float = 25 / 255, seed: int = 0):
    def make(data: Path | None):
        clean = resize_long_side(io.load_image(data / path), size)
        return dg.add_gaussian_noise(clean, sigma, seed=seed), clean, {}
    return make


def jpeg_case(path: str, size: int = 128, quality: int = 10):
    def make(data: Path | None):
        clean = resize_long_side(io.load_image(data / path), size)
        return dg.jpeg_compress(clean, quality), clean, {}
    return make


def sr_case(path: str, factor: int = 4):
    def make(data: Path | None):
        clean = dg.crop_to_multiple(io.load_image(data / path), 32)
        return dg.downsample(clean, factor), clean, {"factor": factor}
    return make


def inpaint_case(image: str, mask: str, size: int = 128):
    def make(data: Path | None):
        clean = resize_long_side(io.load_image(data / image), size)
        known = resize_long_side(io.load_image(data / mask), size)[:, :, :1]
        known = (known > 0.99).astype(np.float32)  # resizing blurs hole edges: keep them holes
        return clean * known, clean, {"mask": known}
    return make


def pixels_case(path: str, size: int = 128, keep: float = 0.5, seed: int = 0):
    def make(data: Path | None):
        clean = resize_long_side(io.load_image(data / path), size)
        known = dg.random_pixel_mask(clean.shape[:2], keep=keep, seed=seed)
        return clean * known, clean, {"mask": known}
    return make


def deblur_case(path: str, size: int = 128, blur_sigma: float = 1.5, noise: float = 0.01):
    def make(data: Path | None):
        clean = resize_long_side(io.load_image(data / path), size)
        blurred = np.clip(dg.blur(clean, sigma=blur_sigma), 0, 1)
        return dg.add_gaussian_noise(blurred, noise, seed=0), clean, {"blur_sigma": blur_sigma}
    return make


def skimage_case(name: str, size: int = 128, sigma: float = 25 / 255):
    def make(_data: Path | None):
        from skimage import data as skdata

        clean = resize_long_side(io.load_image(getattr(skdata, name)()), size)
        return dg.add_gaussian_noise(clean, sigma, seed=0), clean, {}
    return make


SUITES: dict[str, list[Case]] = {
    "denoise": [
        Case("F16 denoise", "denoise", noisy_case("denoising/F16_GT.png")),
        Case("Kate (inpainting/kate.png) denoise", "denoise", noisy_case("inpainting/kate.png")),
        Case("Kate (restoration/kate.png) denoise", "denoise", noisy_case("restoration/kate.png")),
        Case("Snail JPEG q10", "jpeg", jpeg_case("denoising/snail.jpg")),
    ],
    "tasks": [
        Case("butterfly x4 SR (256 px)", "super_resolution", sr_case("sr/Set5/butterfly.png")),
        Case("head x4 SR (280 px)", "super_resolution", sr_case("sr/Set5/head.png")),
        Case("Kate inpaint text mask", "inpaint", inpaint_case("inpainting/kate.png", "inpainting/kate_mask.png"), preset="kate"),
        Case("Vase inpaint", "inpaint", inpaint_case("inpainting/vase.png", "inpainting/vase_mask.png"), preset="vase"),
        Case("Barbara 50% pixels", "restore_pixels", pixels_case("restoration/barbara.png"), preset="barbara"),
        Case("F16 deblur (sigma 1.5 + 1% noise)", "deblur", deblur_case("denoising/F16_GT.png")),
    ],
    "heldout": [
        Case(f"{name} denoise", "denoise", skimage_case(name))
        for name in ("astronaut", "chelsea", "coffee", "camera", "rocket", "immunohistochemistry")
    ],
}


def run_case(case: Case, args: argparse.Namespace, data: Path | None) -> dict[str, Any]:
    observation, clean, options = case.make(data)
    common = dict(
        task=case.task, reference=clean, stop="never", preset=case.preset, device=args.device,
        seed=args.seed, progress=False, max_iterations=args.max_iterations, **options, **case.options,
    )
    start = time.perf_counter()
    osc = restore(observation, **common)
    osc_seconds = time.perf_counter() - start
    plain = restore(observation, pseudo_noise_std=0, **common)
    h, hp = osc.history, plain.history
    cap = osc.config.max_iterations
    t = osc.stop_iteration
    returned = osc.psnr
    row = {
        "case": case.name,
        "task": case.task,
        "size": f"{clean.shape[1]}x{clean.shape[0]}",
        "cap": cap,
        "half_window": osc.half_window,
        "stop_iteration": t,
        "knee_found": osc.osc_iteration is not None,
        "online_iterations": osc.osc_stop_iteration or cap,
        "output": osc.output,
        "psnr_returned": returned,
        "psnr_raw_at_stop": float(h.psnr_raw[t]),
        "psnr_ema_at_stop": float(h.psnr_ema[t]),
        "osc_max_raw": float(h.psnr_raw.max()),
        "osc_max_raw_iteration": int(h.psnr_raw.argmax()),
        "osc_max_ema": float(h.psnr_ema.max()),
        "accuracy": returned / float(h.psnr_raw.max()),
        "plain_max_raw": float(hp.psnr_raw.max()),
        "plain_max_ema": float(hp.psnr_ema.max()),
        "fixed_dB": float(plain.psnr),
        "gap_dB": float(max(hp.psnr_raw.max(), hp.psnr_ema.max()) - returned),
        "observation_psnr": psnr(clean, observation) if observation.shape == clean.shape else None,
        "ms_per_iteration": 1000 * osc.seconds / osc.iterations_run,
        "osc_seconds": osc_seconds,
    }
    for rule, (chosen, stopped, output) in rule_choices(h, cap, osc.risk_weight, osc.task_object.default_output).items():
        curve = h.psnr_ema if output == "ema" else h.psnr_raw
        index = chosen if chosen is not None else cap - 1
        row[f"{rule}_output"] = output
        row[f"{rule}_iteration"] = chosen
        row[f"{rule}_online_iterations"] = stopped or cap
        row[f"{rule}_accuracy"] = float(curve[index]) / float(h.psnr_raw.max())
        row[f"{rule}_gap_dB"] = float(max(hp.psnr_raw.max(), hp.psnr_ema.max()) - curve[index])
    if args.curves:
        np.savez_compressed(
            args.out_dir / "curves" / f"{args.suite}-{case.name.split()[0].lower()}-{len(args.done)}.npz",
            P=h.p, P_ema=h.p_ema, loss_ema=h.loss_ema, psnr=h.psnr_raw, psnr_ema=h.psnr_ema, loss=h.loss,
            plain_psnr=hp.psnr_raw, plain_psnr_ema=hp.psnr_ema, cap=cap, risk_weight=osc.risk_weight,
        )
    return row


def table(rows: list[dict[str, Any]]) -> str:
    head = (
        "| case | size | cap | L | stop it. | online its | output | PSNR returned | raw / EMA at stop | OSC run max raw (it.) "
        "| accuracy | plain max raw / EMA | fixed_dB (plain at cap) | gap_dB | ms/it |\n|" + "---|" * 15 + "\n"
    )
    lines = [
        f"| {r['case']} | {r['size']} | {r['cap']} | {r['half_window']} | {r['stop_iteration']}{'' if r['knee_found'] else ' (no knee)'} "
        f"| {r['online_iterations']} | {r['output']} | {r['psnr_returned']:.2f} | {r['psnr_raw_at_stop']:.2f} / {r['psnr_ema_at_stop']:.2f} "
        f"| {r['osc_max_raw']:.2f} ({r['osc_max_raw_iteration']}) | {100 * r['accuracy']:.1f}% "
        f"| {r['plain_max_raw']:.2f} / {r['plain_max_ema']:.2f} | {r['fixed_dB']:.2f} | {r['gap_dB']:.2f} | {r['ms_per_iteration']:.1f} |\n"
        for r in rows
    ]
    rules = (
        "\n\nEvery rule replayed on the same OSC run's curves (PSNR of the task's default output at the "
        "rule's iteration, before the known-pixel step; accuracy / gap_dB / iterations run online):\n\n"
        "| case | " + " | ".join(f"{r} it. | {r} acc. | {r} gap dB | {r} its run" for r in RULES) + " |\n|"
        + "---|" * (1 + 4 * len(RULES)) + "\n"
        + "".join(
            f"| {r['case']} | " + " | ".join(
                f"{r[f'{k}_iteration']} | {100 * r[f'{k}_accuracy']:.1f}% | {r[f'{k}_gap_dB']:.2f} | {r[f'{k}_online_iterations']}"
                for k in RULES) + " |\n"
            for r in rows
        )
    )
    return head + "".join(lines) + rules


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--suite", choices=sorted(SUITES), default="denoise")
    parser.add_argument("--cases", nargs="*", default=None, help="only cases whose name starts with one of these")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-iterations", type=int, default=None, help="override the presets' caps")
    parser.add_argument("--out-dir", type=Path, default=RESULTS)
    parser.add_argument("--no-curves", dest="curves", action="store_false")
    args = parser.parse_args(argv)
    data = data_dir()
    cases = SUITES[args.suite]
    if args.cases:
        cases = [c for c in cases if any(c.name.lower().startswith(p.lower()) for p in args.cases)]
    if args.suite != "heldout" and data is None:
        print("../shared/data not found (set OSCFAST_DATA): nothing to benchmark")
        return 1
    (args.out_dir / "curves").mkdir(parents=True, exist_ok=True)
    info = machine()
    rows: list[dict[str, Any]] = []
    args.done = rows
    name = f"accuracy-{args.suite}-{machine_tag(info)}"
    for case in cases:
        row = run_case(case, args, data)
        rows.append(row)
        print(f"{row['case']:40s} stop {row['stop_iteration']:5d} online {row['online_iterations']:5d} "
              f"acc {100 * row['accuracy']:5.1f}% gap {row['gap_dB']:.2f} dB  {row['ms_per_iteration']:.1f} ms/it", flush=True)
        header = (
            f"# OSC accuracy, suite '{args.suite}'\n\n{machine_header(info)}\n"
            f"- command: `python bench/accuracy.py --suite {args.suite}"
            + (f" --max-iterations {args.max_iterations}" if args.max_iterations else "") + "`\n\n"
            "accuracy = PSNR of the returned image / max PSNR of the raw output over the same OSC run "
            "(the paper's metric); gap_dB = best PSNR (raw or EMA) of a plain DIP run with the same seed minus "
            "the returned PSNR (counts the pseudo-noise's damage too); fixed_dB = plain DIP at the preset's cap; "
            "online its = iterations the online rule runs before it stops (= cap when it never fires).\n\n"
        )
        write_results(name, header + table(rows), {"machine": info, "rows": rows}, args.out_dir)
    passed = sum(r["accuracy"] >= 0.95 for r in rows)
    print(f"{passed}/{len(rows)} cases at >= 95% accuracy")
    for rule in RULES:
        print(f"rule {rule}: {sum(r[f'{rule}_accuracy'] >= 0.95 for r in rows)}/{len(rows)} at >= 95%, "
              f"mean gap {np.mean([r[f'{rule}_gap_dB'] for r in rows]):.2f} dB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
