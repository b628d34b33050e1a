"""Command-line interface: ``oscfast restore``, ``oscfast demo``."""
from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

__all__ = ["main", "build_parser"]

TASK_CHOICES = ("denoise", "jpeg", "super_resolution", "inpaint", "restore_pixels", "deblur")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _shape(text: str) -> tuple[int, int, int]:
    parts = text.lower().split("x")
    if len(parts) != 3 or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise argparse.ArgumentTypeError(f"expected CxHxW like 3x512x512, got {text!r}")
    return tuple(int(p) for p in parts)  # type: ignore[return-value]


def build_parser() -> argparse.ArgumentParser:
    """The argparse parser of the ``oscfast`` command."""
    parser = argparse.ArgumentParser(
        prog="oscfast", description="Deep Image Prior restoration that stops by itself (OSC)."
    )
    commands = parser.add_subparsers(dest="command", required=True)

    rest = commands.add_parser("restore", help="restore one image")
    rest.add_argument("input", type=Path, help="damaged image (PNG/JPEG/TIFF)")
    rest.add_argument("-o", "--output", type=Path, required=True, help="where to write the restored image")
    rest.add_argument("--task", default="denoise", choices=TASK_CHOICES)
    rest.add_argument("--preset", default=None, help="published configuration of the task")
    rest.add_argument("--net", choices=("skip", "unet", "resnet"), default=None, help="generator network")
    rest.add_argument("--factor", type=_positive_int, default=None, help="super-resolution factor")
    rest.add_argument("--mask", type=Path, default=None, help="mask image (white = known pixel)")
    rest.add_argument("--keep", type=float, default=None, help="restore_pixels: kept fraction when no mask is given")
    rest.add_argument("--kernel", type=Path, default=None, help="deblur: blur kernel (.npy or image)")
    rest.add_argument("--blur-sigma", type=float, default=None, help="deblur: Gaussian blur sigma in px")
    rest.add_argument("--reference", type=Path, default=None, help="clean image: report PSNR per iteration")
    rest.add_argument("--plot", type=Path, default=None, help="write the curves (P, curvature, PSNR) here")
    rest.add_argument("--max-iterations", type=_positive_int, default=None)
    rest.add_argument("--stop", choices=("osc", "never"), default="osc")
    rest.add_argument("--seed", type=int, default=0)
    rest.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    rest.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    rest.add_argument("--quiet", action="store_true", help="no progress bar, only errors")

    export = commands.add_parser("export", help="export the stopper's per-step math (ONNX or .pt2)")
    export.add_argument("what", choices=("stopper",))
    export.add_argument("--rule", choices=("knee", "risk"), default="knee",
                        help="knee: P, smoothed P and curvature; risk: P and loss (decide with RiskStopper)")
    export.add_argument("-o", "--output", type=Path, required=True, help="osc.onnx or osc.pt2")
    export.add_argument("--window", type=_positive_int, default=None, help="half-window L (default: from --max-iterations)")
    export.add_argument("--smoothing", type=_positive_int, default=10)
    export.add_argument("--max-iterations", type=_positive_int, default=3000, help="the loop's cap (scales the axis)")
    export.add_argument("--image-shape", type=_shape, default=(3, 512, 512), help="CxHxW of the operator output")

    demo = commands.add_parser("demo", help="denoise a bundled image and write PNGs")
    demo.add_argument("--out-dir", type=Path, default=Path("oscfast-demo"))
    demo.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    demo.add_argument("--quiet", action="store_true")
    return parser


def _load_kernel(path: Path):  # noqa: ANN202 - numpy array
    import numpy as np

    from oscfast import io

    if path.suffix == ".npy":
        return np.load(path)
    return io.load_image(path, name="kernel")[:, :, 0]


def _restore(args: argparse.Namespace) -> int:
    from oscfast.api import restore

    result = restore(
        args.input,
        task=args.task,
        preset=args.preset,
        net=args.net,
        factor=args.factor,
        mask=args.mask,
        keep=args.keep,
        kernel=_load_kernel(args.kernel) if args.kernel else None,
        blur_sigma=args.blur_sigma,
        reference=args.reference,
        max_iterations=args.max_iterations,
        stop=args.stop,
        seed=args.seed,
        device=args.device,
        precision=args.precision,
        progress=not args.quiet,
    )
    result.save(args.output)
    if args.plot:
        result.plot(args.plot)
    if not args.quiet:
        line = (
            f"wrote {args.output}: iteration {result.stop_iteration} returned ({result.output} output), "
            f"{result.iterations_run} run, stop: {result.stop_reason}, {result.seconds:.1f} s"
        )
        if result.psnr is not None:
            line += f", PSNR {result.psnr:.2f} dB"
        print(line)
    return 0


def _export(args: argparse.Namespace) -> int:
    from oscfast.export import export_risk_step, export_stopper

    fmt = "pt2" if args.output.suffix == ".pt2" else "onnx"
    if args.rule == "risk":
        print(f"wrote {export_risk_step(args.output, image_shape=args.image_shape, format=fmt)}")
        return 0
    path = export_stopper(args.output, t_max=float(args.max_iterations), image_shape=args.image_shape,
                          half_window=args.window, smoothing=args.smoothing, format=fmt)
    print(f"wrote {path}")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from oscfast.demo import run_demo

    report = run_demo(args.out_dir, device=args.device, progress=not args.quiet)
    result = report.result
    print(f"noisy input     PSNR {report.noisy_psnr:6.2f} dB")
    print(f"restored output PSNR {report.restored_psnr:6.2f} dB  ({result.output} output)")
    print(
        f"stop iteration {result.stop_iteration}, iterations run {result.iterations_run} "
        f"of {result.config.max_iterations} ({result.stop_reason}), {result.seconds:.1f} s on {result.device}"
    )
    for name, path in report.files.items():
        print(f"{name:>9}: {path}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit status. Errors are one line on stderr, no traceback."""
    parser = build_parser()
    args = parser.parse_args(argv)
    quiet = getattr(args, "quiet", False)
    logging.basicConfig(level=logging.ERROR if quiet else logging.WARNING, format="%(levelname)s: %(message)s")
    try:
        if args.command == "restore":
            return _restore(args)
        if args.command == "export":
            return _export(args)
        return _demo(args)
    except (ValueError, TypeError, FileNotFoundError, OSError) as error:
        print(f"oscfast: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("oscfast: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
