"""Command-line interface: ``oscfast restore``, ``restore-dir``, ``demo``, ``evaluate``, ``export``.

Every option is checked before any work starts (output suffix and folder, input files, the
device), so a long run is never lost to a typo; errors are one line on stderr, exit status 2.
"""
from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

__all__ = ["main", "build_parser"]

RULE_CHOICES = ("risk", "knee", "paper", "es-wmv", "es-emv", "plateau", "cap")
NOISE_HELP = ("denoise: the noise model (its data term, probe and stop rule; poisson = shot noise); "
              "auto picks it from the image (default: gaussian)")
PROBE_CHOICES = ("twin", "inline", "none")

RESTORE_EXAMPLES = """examples:
  oscfast restore noisy.png -o clean.png
  oscfast restore lr.png -o sr.png --task super_resolution --factor 4 --save-history run.npz
  oscfast restore holes.png -o filled.png --task inpaint --mask mask.png --invert-mask
"""

RESTORE_DIR_EXAMPLES = """examples:
  oscfast restore-dir noisy/ -o restored/
  oscfast restore-dir lr/ -o sr/ --task super_resolution --factor 4 --batch 4
  oscfast restore-dir noisy/ -o restored/ --ray local          # one Ray task per image
  oscfast restore-dir /shared/in -o /shared/out --ray ray://head:10001

Images whose output already exists are skipped, so the same command resumes an interrupted run.
The output folder gets summary.csv and summary.json (one row per image). Exit status: 0 when
every image was restored or skipped as existing, 1 when some failed (listed on stderr), 2 for
a usage error.
"""


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {value}")
    return value


def _shape(text: str) -> tuple[int, int, int]:
    parts = text.lower().split("x")
    if len(parts) != 3 or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise argparse.ArgumentTypeError(f"expected CxHxW like 3x512x512, got {text!r}")
    return tuple(int(p) for p in parts)  # type: ignore[return-value]


def _presets_help() -> str:
    from oscfast.presets import PRESETS, default_preset

    return "; ".join(
        f"{task}: {', '.join(sorted(names))} (default {default_preset(task)})" for task, names in PRESETS.items() if task != "custom"
    )


def _task_choices() -> tuple[str, ...]:
    """The registered tasks a command line can name (those whose options are not code)."""
    from oscfast.tasks import TASKS

    return tuple(name for name, cls in TASKS.items() if not cls.code_only_options)


def build_parser() -> argparse.ArgumentParser:
    """The argparse parser of the ``oscfast`` command."""
    TASK_CHOICES = _task_choices()  # noqa: N806 - a constant of this parser
    from oscfast.noise_models import NOISE_CHOICES  # noqa: N806
    parser = argparse.ArgumentParser(
        prog="oscfast", description="Deep Image Prior restoration that stops by itself."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    class Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
        """Shows a default unless the help text already says it, or there is none."""

        def _get_help_string(self, action: argparse.Action) -> str | None:
            text = action.help or ""
            if "default" in text or action.default in (None, False, argparse.SUPPRESS):
                return text
            return super()._get_help_string(action)

    defaults = Formatter

    rest = commands.add_parser(
        "restore", help="restore one image", formatter_class=Formatter,
        description=f"Restore one image. Presets: {_presets_help()}.", epilog=RESTORE_EXAMPLES,
    )
    rest.add_argument("input", type=Path, help="damaged image (PNG/JPEG/TIFF/BMP)")
    rest.add_argument("-o", "--output", type=Path, required=True, help="restored image (.png/.jpg/.tif/.bmp)")
    rest.add_argument("--task", default="denoise", choices=TASK_CHOICES)
    rest.add_argument("--preset", default=None, help="published configuration of the task (see above)")
    rest.add_argument("--net", choices=("skip", "unet", "resnet"), default=None, help="generator network (default: the preset's)")
    rest.add_argument("--factor", type=_positive_int, default=None, help="super-resolution factor (default 4)")
    rest.add_argument("--mask", type=Path, default=None, help="inpaint/restore_pixels: mask image, white = known pixel")
    rest.add_argument("--invert-mask", action="store_true", help="the mask is white = hole (as most inpainting tools)")
    rest.add_argument("--keep", type=float, default=None, help="restore_pixels without a mask: kept fraction (0.5)")
    rest.add_argument("--keep-known", action=argparse.BooleanOptionalAction, default=True,
                      help="masked tasks: put the known pixels back into the result")
    rest.add_argument("--kernel", type=Path, default=None, help="deblur: blur kernel (.npy or image)")
    rest.add_argument("--blur-sigma", type=float, default=None, help="deblur: Gaussian blur sigma in px")
    rest.add_argument("--quality", type=_positive_int, default=None,
                      help="jpeg: the JPEG quality when the input is not the JPEG file itself (a .jpg's own tables are read)")
    rest.add_argument("--noise", choices=NOISE_CHOICES, default=None, help=NOISE_HELP)
    rest.add_argument("--probe", choices=PROBE_CHOICES, default=None, help="where the pseudo-noise goes (default: per task)")
    rest.add_argument("--rule", choices=RULE_CHOICES, default=None, help="stop rule (default: per task)")
    rest.add_argument("--noise-level", type=_non_negative_float, default=None,
                      help="std of the measurement noise in [0, 1] units for the risk rule (default: estimated)")
    rest.add_argument("--pseudo-noise-std", type=_non_negative_float, default=None,
                      help="std of the pseudo-noise (1/25; 0: plain DIP to the cap)")
    rest.add_argument("--output-kind", choices=("auto", "raw", "ema"), default="auto",
                      help="return the raw output or its exponential average (auto: the rule's choice)")
    rest.add_argument("--reference", type=Path, default=None, help="clean image: report PSNR per iteration")
    rest.add_argument("--plot", type=Path, default=None, help="write the curves (rule score, P, PSNR, loss) as PNG")
    rest.add_argument("--save-history", type=Path, default=None, help="write the per-iteration curves (.npz or .json)")
    rest.add_argument("--max-iterations", type=_positive_int, default=None, help="iteration cap (default: the preset's)")
    rest.add_argument("--stop", choices=("osc", "never"), default="osc", help="never: run to the cap, return the rule's choice")
    rest.add_argument("--seed", type=int, default=0)
    rest.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    rest.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    rest.add_argument("--quiet", action="store_true", help="no progress bar and no warnings, only errors")

    folder = commands.add_parser(
        "restore-dir", help="restore every image of a folder (resumable)", formatter_class=Formatter,
        description=f"Restore every image (.png .jpg .jpeg .tif .tiff .bmp) of a folder into another folder. "
                    f"Presets: {_presets_help()}.", epilog=RESTORE_DIR_EXAMPLES,
    )
    folder.add_argument("input", type=Path, help="folder of damaged images (not recursive)")
    folder.add_argument("-o", "--output", type=Path, required=True, help="folder of the restored images and the summary")
    folder.add_argument("--task", default="denoise", choices=TASK_CHOICES)
    folder.add_argument("--preset", default=None, help="published configuration of the task (see above)")
    folder.add_argument("--factor", type=_positive_int, default=None, help="super-resolution factor (default 4)")
    folder.add_argument("--keep", type=float, default=None, help="restore_pixels: kept fraction (0.5)")
    folder.add_argument("--blur-sigma", type=float, default=None, help="deblur: Gaussian blur sigma in px")
    folder.add_argument("--noise", choices=NOISE_CHOICES, default=None, help=NOISE_HELP + " (auto: per image)")
    folder.add_argument("--suffix", default=".png", help="suffix (format) of the outputs: .png, .tif, .jpg, .bmp")
    folder.add_argument("--batch", type=_positive_int, default=None,
                        help="restorations per batched step (default: from free GPU memory, 1 on a CPU)")
    folder.add_argument("--ray", metavar="ADDRESS|local", default=None,
                        help="one Ray task per image: 'local' starts a local Ray, or a cluster address "
                             "(needs pip install 'oscfast[ray]'; a cluster needs the folders on a shared file system)")
    folder.add_argument("--max-iterations", type=_positive_int, default=None, help="iteration cap (default: the preset's)")
    folder.add_argument("--seed", type=int, default=0)
    folder.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    folder.add_argument("--quiet", action="store_true", help="no progress bar and no warnings, only errors")

    evaluate = commands.add_parser(
        "evaluate", help="degrade clean images, restore them, compare every rule with plain DIP",
        formatter_class=defaults,
    )
    evaluate.add_argument("folder", type=Path, help="folder of clean images")
    evaluate.add_argument("-o", "--output", type=Path, required=True, help="report (.md); curves and figures go beside it")
    evaluate.add_argument("--task", default="denoise", choices=TASK_CHOICES)
    evaluate.add_argument("--sigma", type=float, default=25.0, help="denoise: noise std in 8-bit units")
    evaluate.add_argument("--quality", type=_positive_int, default=10, help="jpeg: quality")
    evaluate.add_argument("--factor", type=_positive_int, default=4, help="super_resolution: factor")
    evaluate.add_argument("--mask-kind", choices=("text", "random"), default="text", help="inpaint: generated mask")
    evaluate.add_argument("--keep", type=float, default=0.5, help="restore_pixels: kept fraction")
    evaluate.add_argument("--blur-sigma", type=float, default=1.5, help="deblur: blur sigma (plus 1%% noise)")
    evaluate.add_argument("--size", type=_positive_int, default=128, help="resize to this long side (px)")
    evaluate.add_argument("--rules", default=None, help="comma-separated candidate labels to report (default: all)")
    evaluate.add_argument("--seeds", type=_positive_int, default=1)
    evaluate.add_argument("--max-iterations", type=_positive_int, default=None)
    evaluate.add_argument("--preset", default=None)
    evaluate.add_argument("--width-scale", type=float, default=1.0, help="scale the generator's channels (faster, smaller nets)")
    evaluate.add_argument("--device", default="auto")
    evaluate.add_argument("--quiet", action="store_true")

    export = commands.add_parser("export", help="export the stopper's per-step math (ONNX or .pt2)", formatter_class=defaults)
    export.add_argument("what", choices=("stopper",))
    export.add_argument("--rule", choices=("knee", "risk"), default="knee",
                        help="knee: P, smoothed P and curvature; risk: P and loss (decide with RiskRule)")
    export.add_argument("--probe", choices=("inline", "twin"), default="inline",
                        help="risk: twin takes both fits' outputs")
    export.add_argument("-o", "--output", type=Path, required=True, help="osc.onnx or osc.pt2")
    export.add_argument("--window", type=_positive_int, default=None, help="half-window L (default: from --max-iterations)")
    export.add_argument("--smoothing", type=_positive_int, default=10)
    export.add_argument("--max-iterations", type=_positive_int, default=3000, help="the loop's cap (scales the axis)")
    export.add_argument("--image-shape", type=_shape, default=(3, 512, 512), help="CxHxW of the operator output")

    demo = commands.add_parser("demo", help="denoise a bundled image and write PNGs", formatter_class=defaults)
    demo.add_argument("--out-dir", type=Path, default=Path("oscfast-demo"))
    demo.add_argument("--device", default="auto")
    demo.add_argument("--quiet", action="store_true")
    return parser


def _load_kernel(path: Path):  # noqa: ANN202 - numpy array
    import numpy as np

    from oscfast import io

    if path.suffix == ".npy":
        return np.load(path)
    return io.load_image(path, name="kernel")[:, :, 0]


def _check_restore_args(args: argparse.Namespace) -> None:
    """Everything that can be checked before the run, so that no run is lost afterwards."""
    from oscfast import io
    from oscfast.prepare import resolve_device

    if not args.input.is_file():
        raise ValueError(f"input '{args.input}' does not exist or is not a file")
    io.check_save_path(args.output)
    inputs = [args.input, args.mask, args.kernel, args.reference]
    for path in (args.output, args.plot):
        if path is not None and any(p is not None and p.exists() and path.resolve() == p.resolve() for p in inputs):
            raise ValueError(f"'{path}' is also an input: refusing to overwrite it")
    if args.plot is not None and args.plot.suffix.lower() != ".png":
        raise ValueError(f"--plot writes a PNG, got '{args.plot}'")
    if args.save_history is not None and args.save_history.suffix.lower() not in (".npz", ".json"):
        raise ValueError(f"--save-history writes .npz or .json, got '{args.save_history}'")
    for flag, path in (("--mask", args.mask), ("--kernel", args.kernel), ("--reference", args.reference)):
        if path is not None and not path.is_file():
            raise ValueError(f"{flag} '{path}' does not exist or is not a file")
    if args.invert_mask and args.mask is None:
        raise ValueError("--invert-mask needs --mask")
    resolve_device(args.device)


def _restore(args: argparse.Namespace) -> int:
    from oscfast import io
    from oscfast.api import restore

    _check_restore_args(args)
    mask = args.mask
    if mask is not None and args.invert_mask:
        mask = 1.0 - io.load_image(mask, name="mask")
    from oscfast.tasks import task_class

    masked = "keep_known" in task_class(args.task).options
    result = restore(
        args.input,
        task=args.task,
        preset=args.preset,
        net=args.net,
        factor=args.factor,
        mask=mask,
        keep=args.keep,
        keep_known=args.keep_known if masked else None,
        kernel=_load_kernel(args.kernel) if args.kernel else None,
        blur_sigma=args.blur_sigma,
        reference=args.reference,
        max_iterations=args.max_iterations,
        stop=args.stop,
        seed=args.seed,
        device=args.device,
        precision=args.precision,
        progress=not args.quiet,
        probe=args.probe,
        rule=args.rule,
        noise_level=args.noise_level,
        pseudo_noise_std=args.pseudo_noise_std,
        output=args.output_kind,
        quality=args.quality,
        noise=args.noise,
    )
    result.save(args.output)
    if args.plot:
        result.plot(args.plot)
    if args.save_history:
        _save_history(result, args.save_history)
    if not args.quiet:
        line = (
            f"wrote {args.output}: iteration {result.stop_iteration} returned ({result.output} output), "
            f"{result.iterations_run} run, rule {result.rule} ({result.probe} probe), "
            f"stop: {result.stop_reason}, {result.seconds:.1f} s"
        )
        if result.psnr is not None:
            line += f", PSNR {result.psnr:.2f} dB"
        if result.estimated_psnr is not None:
            low, high = result.estimated_psnr_interval or (result.estimated_psnr, result.estimated_psnr)
            line += f", estimated PSNR {result.estimated_psnr:.2f} dB ({low:.2f} to {high:.2f})"
        if args.noise is not None:
            line += f", noise model {result.noise_model}"
            if result.noise_confidence is not None:
                line += f" (auto, confidence {result.noise_confidence:.2f})"
        print(line)
    return 0


def _restore_dir(args: argparse.Namespace) -> int:
    from oscfast.folder import restore_folder

    if args.ray is not None:
        from oscfast.cluster import import_ray

        try:
            import_ray()
        except ImportError as error:
            raise ValueError(str(error)) from None
    summary = restore_folder(
        args.input,
        args.output,
        args.task,
        batch=args.batch,
        suffix=args.suffix,
        backend="local" if args.ray is None else "ray",
        ray_address=args.ray,
        progress=not args.quiet,
        preset=args.preset,
        factor=args.factor,
        keep=args.keep,
        blur_sigma=args.blur_sigma,
        noise=args.noise,
        max_iterations=args.max_iterations,
        seed=args.seed,
        device=args.device,
    )
    for row in summary.failed_rows:
        print(f"oscfast: {row.file}: {row.status}", file=sys.stderr)
    if not args.quiet:
        print(
            f"{summary.restored} restored, {summary.skipped} skipped (output exists), {summary.failed} failed "
            f"of {len(summary.rows)} images; summary: {summary.out_dir / 'summary.csv'}"
        )
    return 0 if summary.ok else 1


def _save_history(result, path: Path) -> None:  # noqa: ANN001 - a Restoration
    import json

    import numpy as np

    from oscfast.files import atomic_write, write_text_atomic

    curves = result.history.as_dict()
    for name, values in result.history.fits.items():
        for fit, row in enumerate(values):
            curves[f"fit{fit}:{name}"] = row
    if path.suffix.lower() == ".npz":
        atomic_write(path, lambda stream: np.savez_compressed(stream, **curves))
    else:
        payload = {key: [None if not np.isfinite(v) else float(v) for v in values] for key, values in curves.items()}
        write_text_atomic(path, json.dumps(payload))


def _export(args: argparse.Namespace) -> int:
    from oscfast.export import export_risk_step, export_stopper

    fmt = "pt2" if args.output.suffix == ".pt2" else "onnx"
    if args.rule == "risk":
        print(f"wrote {export_risk_step(args.output, image_shape=args.image_shape, probe=args.probe, format=fmt)}")
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
    if result.estimated_psnr is not None:
        low, high = result.estimated_psnr_interval or (result.estimated_psnr, result.estimated_psnr)
        print(f"the rule's own estimate of that PSNR: {result.estimated_psnr:.2f} dB ({low:.2f} to {high:.2f})")
    elif result.estimated_psnr_reason:
        print(f"no PSNR estimate: {result.estimated_psnr_reason}")
    fired = f"rule '{result.rule}' fired" if result.stop_reason != "cap" else f"rule '{result.rule}' did not fire: cap reached"
    print(
        f"stop iteration {result.stop_iteration}, iterations run {result.iterations_run} "
        f"of {result.config.max_iterations} ({fired}; {result.probe} probe), {result.seconds:.1f} s on {result.device}"
    )
    for name, path in report.files.items():
        print(f"{name:>9}: {path}")
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from oscfast.evaluation.harness import run_evaluate

    path = run_evaluate(args)
    if not args.quiet:
        print(f"wrote {path}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit status. Errors are one line on stderr, no traceback."""
    parser = build_parser()
    args = parser.parse_args(argv)
    quiet = getattr(args, "quiet", False)
    logging.basicConfig(level=logging.ERROR if quiet else logging.WARNING, format="%(levelname)s: %(message)s")
    if quiet:
        import warnings

        warnings.simplefilter("ignore")
    try:
        if args.command == "restore":
            return _restore(args)
        if args.command == "restore-dir":
            return _restore_dir(args)
        if args.command == "export":
            return _export(args)
        if args.command == "evaluate":
            return _evaluate(args)
        return _demo(args)
    except (ValueError, TypeError, FileNotFoundError, OSError) as error:
        print(f"oscfast: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("oscfast: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
