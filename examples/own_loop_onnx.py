"""A hand-written Deep Image Prior loop that stops itself with the exported OSC stopper.

No oscfast engine here: a tiny encoder-decoder, Adam and a noisy synthetic image, written
out in full. The stopping criterion is the exported ONNX graph, run by onnxruntime (P_t and the
curvature), plus the knee rule's decision, :class:`oscfast.stopping.KneeRule` fed P_t (running
argmax of the curvature, early-minimum guard, patience; the same object the engine drives).
oscfast is used for two things only: writing the ONNX file (skipped with ``--stopper``) and the
decision.

Run it:

    python examples/own_loop_onnx.py --size 64 --iterations 1500

It prints the iteration the rule chose, where it stopped, and the PSNR there against the
best PSNR of the run (which a real user could not know: the clean image is synthetic).
"""
from __future__ import annotations

import argparse
import tempfile
import time
from collections import deque
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from torch import nn

from oscfast.export import export_stopper
from oscfast.stopping import KneeRule, Signals


def synthetic_image(size: int, *, seed: int = 0) -> np.ndarray:
    """A smooth 3-channel image with a few sharp edges, CHW float32 in [0, 1]."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    channels = []
    for _ in range(3):
        phase = rng.uniform(0, 2 * np.pi, 2)
        layer = 0.5 + 0.3 * np.sin(4 * xx + phase[0]) * np.cos(3 * yy + phase[1])
        layer = layer + 0.2 * ((xx - 0.5) ** 2 + (yy - 0.45) ** 2 < 0.06) - 0.15 * (np.abs(xx - 0.25) < 0.06)
        channels.append(layer)
    return np.clip(np.stack(channels), 0, 1).astype(np.float32)


def tiny_net(in_channels: int, width: int, out_channels: int = 3) -> nn.Module:
    """Two stride-2 scales down, two bilinear scales up, BatchNorm + LeakyReLU, sigmoid."""

    def block(cin: int, cout: int, stride: int = 1) -> list[nn.Module]:
        return [
            nn.Conv2d(cin, cout, 3, stride=stride, padding=1, padding_mode="reflect"),
            nn.BatchNorm2d(cout),
            nn.LeakyReLU(0.2),
        ]

    up = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False)
    return nn.Sequential(
        *block(in_channels, width, 2), *block(width, width),
        *block(width, width, 2), *block(width, width),
        up, *block(width, width),
        up, *block(width, width),
        nn.Conv2d(width, out_channels, 1), nn.Sigmoid(),
    )


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    return float(10 * np.log10(1.0 / np.mean((a.astype(np.float64) - b) ** 2)))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=64, help="image side in pixels (multiple of 4)")
    parser.add_argument("--iterations", type=int, default=1500, help="iteration cap T_max")
    parser.add_argument("--sigma", type=float, default=25 / 255, help="std of the measurement noise")
    parser.add_argument("--width", type=int, default=32, help="channels of the network")
    parser.add_argument("--half-window", type=int, default=None, help="L (default: oscfast's for the cap)")
    parser.add_argument("--smoothing", type=int, default=10, help="trailing-mean length w")
    parser.add_argument("--patience", type=int, default=None, help="default: L")
    parser.add_argument("--stopper", type=Path, default=None, help="existing stopper .onnx (must match)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch and onnxruntime threads")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    if args.size < 8 or args.size % 4:
        parser.error(f"--size must be a multiple of 4 and >= 8, got {args.size}")
    return args


def main(argv: list[str] | None = None) -> dict[str, object]:
    """Run the loop; return what it decided (also printed unless ``--quiet``)."""
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(args.seed)
    size, cap = args.size, args.iterations

    clean = synthetic_image(size, seed=args.seed)
    noisy = (clean + rng.normal(0, args.sigma, clean.shape)).clip(0, 1).astype(np.float32)
    # OSC: fit y + n with a known pseudo-noise n (method.md section 2); never clip y + n
    noise = rng.normal(0, 1 / 25, (1, *clean.shape)).astype(np.float32)
    target = torch.from_numpy(noisy[None] + noise)

    # -- the stopper: an ONNX graph (the per-step math) plus the rule's decision -------------
    rule = KneeRule(max_iterations=cap, half_window=args.half_window, patience=args.patience, smoothing=args.smoothing)
    half_window = rule.half_window
    with tempfile.TemporaryDirectory() as tmp:
        path = args.stopper or export_stopper(
            Path(tmp) / "stopper.onnx", t_max=cap, image_shape=clean.shape,
            half_window=half_window, smoothing=args.smoothing,
        )
        options = ort.SessionOptions()
        options.intra_op_num_threads = args.threads
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    meta = session.get_modelmeta().custom_metadata_map
    if int(meta["oscfast.half_window"]) != half_window or float(meta["oscfast.t_max"]) != cap:
        raise SystemExit(f"{path} was exported for L={meta['oscfast.half_window']}, t_max={meta['oscfast.t_max']}")
    window = np.zeros(session.get_inputs()[2].shape, dtype=np.float64)  # 2L + w - 1 raw P values
    count = np.array(0, dtype=np.int64)

    # -- plain DIP ----------------------------------------------------------------------------
    net = tiny_net(8, args.width).train()
    z = torch.rand(1, 8, size, size) * 0.1
    optimizer = torch.optim.Adam(net.parameters(), lr=0.01)
    # the output of iteration t - L must still be at hand when its curvature becomes the best
    recent: deque[np.ndarray] = deque(maxlen=half_window + 1)
    best_image = None
    p_curve, kappa_curve, psnr_curve = [], [], []
    start = time.perf_counter()
    for t in range(cap):
        optimizer.zero_grad(set_to_none=True)
        out = net(z + torch.randn_like(z) / 30)
        loss = torch.mean((out - target) ** 2)
        loss.backward()
        optimizer.step()
        x = out.detach().numpy()
        # the whole stopper step: P_t, Pbar_t and the curvature of iteration t - L
        p, p_smooth, kappa, window, count = session.run(
            None, {"measured": x, "noise": noise, "window": window, "count": count}
        )
        recent.append(x[0])
        decision = rule.update(Signals.of(t, p=p))  # the rule keeps its own (identical) curvature
        if decision.new_best:
            best_image = recent[0]
        p_curve.append(float(p))
        kappa_curve.append(float(kappa))
        psnr_curve.append(psnr(x[0], clean))
        if decision.should_stop:
            break
    seconds = time.perf_counter() - start

    iterations_run = len(p_curve)
    image = best_image if best_image is not None else recent[-1]  # no knee: the last output
    result: dict[str, object] = {
        "best_iteration": rule.decision.iteration,
        "stop_iteration": rule.decision.stop_iteration,
        "iterations_run": iterations_run,
        "cap": cap,
        "half_window": half_window,
        "patience": rule.patience,
        "psnr_noisy": psnr(noisy, clean),
        "psnr_chosen": psnr(image, clean),
        "psnr_max": max(psnr_curve),
        "psnr_max_iteration": int(np.argmax(psnr_curve)),
        "p": np.array(p_curve),
        "curvature": np.array(kappa_curve),
        "seconds": seconds,
    }
    if not args.quiet:
        reason = "knee" if rule.decision.should_stop else "cap"
        print(
            f"{size}x{size}, L={half_window}, w={args.smoothing}: stopped at {iterations_run}/{cap} ({reason}), "
            f"chose iteration {result['best_iteration']}\n"
            f"PSNR noisy {result['psnr_noisy']:.2f} dB, chosen {result['psnr_chosen']:.2f} dB, "
            f"best of the run {result['psnr_max']:.2f} dB at iteration {result['psnr_max_iteration']} "
            f"({seconds:.1f} s, {1e3 * seconds / iterations_run:.1f} ms/iteration)"
        )
    return result


if __name__ == "__main__":
    main()
