"""Speed of the DIP loop: a naive eager loop written like the original DIP code against the
oscfast engine (fp32 and bf16), side by side in one process, same net, size and seed.

    python bench/speed.py --device cpu --sizes 128 256
    python bench/speed.py --device cuda --sizes 256 512 1024

Writes bench/results/speed-<machine>.md/.json.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, machine_header, machine_tag, write_results  # noqa: E402

from oscfast.config import DIPConfig, StopConfig
from oscfast.degradations import add_gaussian_noise
from oscfast.demo import demo_image
from oscfast.engine import EngineOptions, make_input, run_dip
from oscfast.io import image_to_tensor
from oscfast.kernels import IncrementalCurvature, warm_up
from oscfast.models import DENOISE_SPEC, build_net
from oscfast.stopping import projection
from oscfast.tasks import Denoise


def reference_style_net(output_channels: int) -> nn.Module:
    """The denoising net as the original code builds it: separate ReflectionPad2d modules
    before zero-padding-free convs (same parameters and math as ours)."""
    net = build_net(DENOISE_SPEC, output_channels)

    def convert(module: nn.Module) -> None:
        for name, child in module.named_children():
            if isinstance(child, nn.Conv2d) and child.padding_mode == "reflect":
                pad = child.padding[0]
                conv = nn.Conv2d(child.in_channels, child.out_channels, child.kernel_size, child.stride, 0, bias=child.bias is not None)
                conv.load_state_dict(child.state_dict())
                setattr(module, name, nn.Sequential(nn.ReflectionPad2d(pad), conv))
            else:
                convert(child)

    convert(net)
    return net


def naive_loop(size: int, iterations: int, device: torch.device, seed: int = 0) -> list[float]:
    """Eager NCHW loop with per-iteration host-side PSNR, loss logging and EMA (as in the
    DIP notebooks). Returns seconds per iteration."""
    clean = demo_image(size)
    noisy = add_gaussian_noise(clean, 25 / 255, seed=seed)
    torch.manual_seed(seed)
    net = reference_style_net(3).to(device)
    z = make_input(DIPConfig(), size, size, seed=seed + 1).to(device)
    target = image_to_tensor(noisy).to(device)
    optimizer = torch.optim.Adam(net.parameters(), lr=0.01)
    ema = None
    times = []
    losses, psnrs, psnrs_ema = [], [], []
    for _ in range(iterations):
        start = time.perf_counter()
        optimizer.zero_grad()
        net_input = z + torch.randn_like(z) * (1 / 30)
        out = net(net_input)
        loss = torch.mean((out - target) ** 2)
        loss.backward()
        out_np = out.detach().cpu().numpy()[0].transpose(1, 2, 0)
        ema = out_np if ema is None else 0.99 * ema + 0.01 * out_np
        losses.append(loss.item())
        psnrs.append(-10 * np.log10(np.mean((out_np - clean) ** 2)))
        psnrs_ema.append(-10 * np.log10(np.mean((ema - clean) ** 2)))
        optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return times


def engine_loop(size: int, iterations: int, device: torch.device, precision: str, sync_every: int, seed: int = 0) -> list[float]:
    """The oscfast engine with OSC and per-iteration PSNR on; seconds per iteration measured
    between host syncs (after the first one, which includes capture/warm-up)."""
    clean = demo_image(size)
    noisy = add_gaussian_noise(clean, 25 / 255, seed=seed)
    stamps: list[tuple[int, float]] = []
    task = Denoise(image_to_tensor(noisy))
    config = DIPConfig(max_iterations=iterations)
    stop = StopConfig(half_window=min(50, iterations // 4), sync_every=sync_every)
    options = EngineOptions(device=device, precision=precision, seed=seed, progress=False)
    run_dip(task, config, stop, stop_mode="never", reference=image_to_tensor(clean), options=options,
            on_sync=lambda done, _s: stamps.append((done, time.perf_counter())))
    per_iteration = []
    for (d0, t0), (d1, t1) in zip(stamps[1:], stamps[2:]):
        per_iteration.extend([(t1 - t0) / (d1 - d0)] * (d1 - d0))
    return per_iteration


def iteration_flops(size: int, device: torch.device) -> float:
    """FLOPs of one forward + backward of the denoising net (torch.utils.flop_counter)."""
    from torch.utils.flop_counter import FlopCounterMode

    net = build_net(DENOISE_SPEC, 3).to(device)
    z = torch.rand(1, 32, size, size, device=device)
    with FlopCounterMode(display=False) as counter:
        net(z).mean().backward()
    return float(counter.get_total_flops())


def matmul_peak(device: torch.device, dtype: torch.dtype, n: int) -> float:
    """Measured FLOP/s of a large square matmul (the machine's practical peak)."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(2):
        a @ b
    if device.type == "cuda":
        torch.cuda.synchronize()
    reps = 10 if device.type == "cuda" else 3
    start = time.perf_counter()
    for _ in range(reps):
        a @ b
    if device.type == "cuda":
        torch.cuda.synchronize()
    return 2 * n**3 * reps / (time.perf_counter() - start)


def bookkeeping_seconds(size: int, device: torch.device, half_window: int = 400, reps: int = 200) -> float:
    """Per-iteration cost of the OSC bookkeeping: the projection on the device plus one
    incremental curvature update on the host."""
    measured = torch.rand(1, 3, size, size, device=device)
    noise = torch.randn_like(measured)
    inv = torch.tensor(1.0 / float(noise.pow(2).sum()), device=device)
    buffer = torch.zeros(reps, device=device)
    for _ in range(5):
        projection(measured, noise, inv)
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for i in range(reps):
        buffer[i] = projection(measured, noise, inv)
    if device.type == "cuda":
        torch.cuda.synchronize()
    project = (time.perf_counter() - start) / reps
    warm_up()
    curve = IncrementalCurvature(half_window, 10, 3000.0, 3000)
    values = np.cumsum(np.random.default_rng(0).normal(size=3000)) * 1e-3
    curve.push_many(values[: 2 * half_window + 1])
    start = time.perf_counter()
    curve.push_many(values[2 * half_window + 1 :])
    push = (time.perf_counter() - start) / (3000 - 2 * half_window - 1)
    return project + push


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--sizes", type=int, nargs="+", default=None)
    parser.add_argument("--iterations", type=int, default=None, help="timed iterations per variant")
    parser.add_argument("--sync-every", type=int, default=25)
    parser.add_argument("--out-dir", type=Path, default=None)
    parser.add_argument("--published-iterations", type=int, default=3000)
    parser.add_argument("--osc-iterations", type=int, default=None,
                        help="iterations an online OSC run needed (from bench/accuracy.py) for time-to-result")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    gpu = device.type == "cuda"
    sizes = args.sizes or ([256, 512, 1024] if gpu else [128, 256])
    info = machine()
    capability = torch.backends.cpu.get_cpu_capability()
    info["cpu_capability"] = capability
    # without AVX-512/AMX the CPU has no native bf16 arithmetic: bf16 is emulated and slow
    bf16 = gpu or "AVX512" in capability or "AMX" in capability
    peak32 = matmul_peak(device, torch.float32, 8192 if gpu else 2048)
    peak16 = matmul_peak(device, torch.bfloat16, 8192 if gpu else 2048) if bf16 else float("nan")
    rows = []
    for size in sizes:
        iterations = args.iterations or (300 if gpu else (40 if size <= 128 else 16))
        flops = iteration_flops(size, device)
        variants = {
            "naive": lambda: naive_loop(size, iterations, device),
            "oscfast fp32": lambda: engine_loop(size, iterations + 3 * args.sync_every, device, "fp32", args.sync_every),
        }
        if bf16:
            variants["oscfast bf16"] = lambda: engine_loop(size, iterations + 3 * args.sync_every, device, "bf16", args.sync_every)
        medians = {}
        for name, run in variants.items():
            times = run()
            skip = max(2, len(times) // 10) if name == "naive" else 0
            medians[name] = statistics.median(times[skip:])
        book = bookkeeping_seconds(size, device)
        for name, seconds in medians.items():
            row = {
                "size": size,
                "variant": name,
                "ms_per_iteration": 1000 * seconds,
                "speedup_vs_naive": medians["naive"] / seconds,
                "gflops": flops / seconds / 1e9,
                "share_of_peak": flops / seconds / (peak16 if "bf16" in name else peak32),
                "bookkeeping_share": book / seconds,
                "flop_floor_ms": 1000 * flops / (peak16 if "bf16" in name else peak32),
                "published_run_s": seconds * args.published_iterations,
            }
            if args.osc_iterations:
                row["osc_run_s"] = seconds * args.osc_iterations
            rows.append(row)
            print(f"{size:5d} {name:14s} {1000 * seconds:9.2f} ms/it  x{row['speedup_vs_naive']:.2f}  "
                  f"{row['gflops']:.0f} GFLOP/s  bookkeeping {100 * row['bookkeeping_share']:.3f}%", flush=True)
    header = (
        "# DIP iteration speed (denoising net 32->3, 128/128/4, 5 scales)\n\n"
        f"{machine_header(info)}\n- matmul peak fp32: {peak32 / 1e12:.3f} TFLOP/s, bf16: "
        + (f"{peak16 / 1e12:.3f} TFLOP/s\n" if bf16 else f"not measured: CPU capability {capability} has no native bf16\n")
        + f"- command: `python bench/speed.py --device {args.device} --sizes {' '.join(map(str, sizes))}`\n\n"
        "naive = eager NCHW loop like the DIP notebooks (separate ReflectionPad2d, host-side PSNR/EMA/loss each "
        "iteration); oscfast = engine with OSC on, per-iteration PSNR on the device, host sync every "
        f"{args.sync_every} iterations" + (", CUDA graph" if gpu else "") + ".\n\n"
        "| size | variant | ms/it | speed-up vs naive | GFLOP/s | share of matmul peak | FLOP floor ms | OSC bookkeeping share | 3000 its (s) |\n"
        "|---|---|---|---|---|---|---|---|---|\n"
    )
    body = "".join(
        f"| {r['size']} | {r['variant']} | {r['ms_per_iteration']:.2f} | {r['speedup_vs_naive']:.2f}x | {r['gflops']:.0f} | "
        f"{100 * r['share_of_peak']:.1f}% | {r['flop_floor_ms']:.2f} | {100 * r['bookkeeping_share']:.3f}% | {r['published_run_s']:.0f} |\n"
        for r in rows
    )
    name = f"speed-{machine_tag(info)}"
    path = write_results(name, header + body, {"machine": info, "peak_fp32": peak32, "peak_bf16": peak16, "rows": rows}, args.out_dir)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
