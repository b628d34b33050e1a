"""Throughput: per-iteration speed of every variant and images per hour against the batch size,
side by side in one process (same net, size and seed).

    python bench/throughput.py --device cpu --sizes 64 128          # CPU
    python bench/throughput.py --device cuda --sizes 256 512         # GPU

Variants: a naive eager loop written like the DIP notebooks; the oscfast engine in fp32, bf16
(measured everywhere, flagged where the device has no native bf16) and with torch.compile
(compile time reported apart). Images per hour: restore_many with K = 1, 2, 4, 8 restorations
per step against K sequential single runs (plain DIP to a fixed count, so every image costs the
same). Writes bench/results/throughput-<machine>.md/.json; the CPU's capability is in the header.
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
from oscfast.engine import EngineOptions, FitSpec, Watch, make_input, run_fits
from oscfast.hardware import native_bf16
from oscfast.io import image_to_tensor
from oscfast.kernels import IncrementalCurvature, warm_up
from oscfast.many import restore_many
from oscfast.metrics import psnr_torch
from oscfast.models import DENOISE_SPEC, build_net
from oscfast.probe import gaussian_pseudo_noise, projection
from oscfast.stopping import CapRule, RiskRule
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
    # fp32 as the engine's "fp32" runs it: no TF32 convolutions (torch's cuDNN default allows them)
    with torch.backends.cudnn.flags(enabled=True, benchmark=False, deterministic=False, allow_tf32=False):
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


def engine_loop(size: int, iterations: int, device: torch.device, precision: str, sync_every: int, *,
                compile: bool = False, twin: bool = False, seed: int = 0) -> tuple[list[float], float]:
    """The oscfast engine with the default signals on (P, loss and PSNR of the raw and the
    averaged output, on the device): seconds per iteration measured between host syncs, after
    the first two syncs (capture, warm-up, compilation); and the seconds until the first sync."""
    clean = demo_image(size)
    noisy = add_gaussian_noise(clean, 25 / 255, seed=seed)
    task = Denoise(image_to_tensor(noisy))
    noise = gaussian_pseudo_noise((1, 3, size, size), 1 / 25, seed=seed + 1000)
    fits = [FitSpec(task, seed, probe=noise)] + ([FitSpec(task, seed, probe=noise, noisy_target=True)] if twin else [])
    config = DIPConfig(max_iterations=iterations)
    rule = RiskRule(2 * (25 / 255) ** 2, max_iterations=iterations, min_patience=10**9)
    watch = Watch(rule, fit=0, probe=1, base=0) if twin else Watch(CapRule(max_iterations=iterations))
    target = image_to_tensor(clean).to(device)
    stamps: list[tuple[int, float]] = []
    options = EngineOptions(device=device, precision=precision, progress=False, sync_every=sync_every, compile=compile)
    start = time.perf_counter()
    run_fits(fits, config, [watch], stop_mode="never", metrics={"psnr": lambda x: psnr_torch(target, x)},
             extra_signals=("p", "p_ema", "loss_ema"), options=options,
             on_sync=lambda info: stamps.append((info.iteration, time.perf_counter())))
    first = stamps[0][1] - start
    per_iteration = []
    for (d0, t0), (d1, t1) in zip(stamps[1:], stamps[2:]):
        per_iteration.extend([(t1 - t0) / (d1 - d0)] * (d1 - d0))
    return per_iteration, first


def images_per_hour(size: int, batch: int, images: int, iterations: int, device: torch.device, strategy: str) -> float:
    """restore_many of ``images`` noisy images, ``batch`` per step, plain DIP to ``iterations``."""
    clean = demo_image(size)
    noisy = [add_gaussian_noise(clean, 25 / 255, seed=s) for s in range(images)]
    config = DIPConfig(max_iterations=iterations)
    start = time.perf_counter()
    restore_many(noisy, batch=batch, config=config, stop_config=StopConfig(pseudo_noise_std=0.0), device=device,
                 progress=False, strategy=strategy)
    return images / (time.perf_counter() - start) * 3600


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
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--batch-size", type=int, default=None, help="image size of the images-per-hour runs")
    parser.add_argument("--batch-iterations", type=int, default=None)
    parser.add_argument("--no-compile", dest="compile", action="store_false")
    parser.add_argument("--emulated-bf16", action="store_true",
                        help="time bf16 also where the device has no native bf16 (slow: emulated)")
    parser.add_argument("--out-dir", type=Path, default=None)
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    gpu = device.type == "cuda"
    sizes = args.sizes or ([256, 512] if gpu else [64, 128])
    info = machine()
    has_bf16 = native_bf16(device)
    peak32 = matmul_peak(device, torch.float32, 8192 if gpu else 2048)
    peak16 = matmul_peak(device, torch.bfloat16, 8192 if gpu else 1024) if gpu or has_bf16 or args.emulated_bf16 else float("nan")
    rows = []
    for size in sizes:
        iterations = args.iterations or (300 if gpu else 40)
        flops = iteration_flops(size, device)
        total = iterations + 2 * args.sync_every
        variants = {
            "naive loop": lambda: (naive_loop(size, iterations, device), float("nan")),
            "engine fp32": lambda: engine_loop(size, total, device, "fp32", args.sync_every),
            "engine fp32, twin (2 fits)": lambda: engine_loop(size, total, device, "fp32", args.sync_every, twin=True),
        }
        if has_bf16 or args.emulated_bf16:
            variants["engine bf16"] = lambda: engine_loop(size, total, device, "bf16", args.sync_every)
        if args.compile:
            variants["engine fp32 compiled"] = lambda: engine_loop(size, total, device, "fp32", args.sync_every, compile=True)
        medians, firsts = {}, {}
        for name, run in variants.items():
            times, first = run()
            skip = max(2, len(times) // 10) if name == "naive loop" else 0
            medians[name], firsts[name] = statistics.median(times[skip:]), first
        book = bookkeeping_seconds(size, device)
        for name, seconds in medians.items():
            bf16 = "bf16" in name
            work = flops * (2 if "twin" in name else 1)
            rows.append({
                "size": size, "variant": name, "ms_per_iteration": 1000 * seconds,
                "speedup_vs_naive": medians["naive loop"] / seconds, "gflops": work / seconds / 1e9,
                "share_of_peak": work / seconds / (peak16 if bf16 else peak32),
                "bookkeeping_share": book / seconds, "first_sync_s": firsts[name],
                "native": (not bf16) or has_bf16,
            })
            print(f"{size:5d} {name:28s} {1000 * seconds:9.2f} ms/it  x{rows[-1]['speedup_vs_naive']:.2f}", flush=True)
    batch_size = args.batch_size or (256 if gpu else 64)
    batch_iterations = args.batch_iterations or (200 if gpu else 50)
    throughput = []
    for strategy in (["vmap"] if gpu else ["loop", "vmap"]):
        for batch in args.batches:
            images = max(batch, 2) * (2 if gpu else 1)
            per_hour = images_per_hour(batch_size, batch, images, batch_iterations, device, strategy)
            throughput.append({"strategy": strategy, "batch": batch, "images": images, "images_per_hour": per_hour})
            print(f"batch {batch} ({strategy}): {per_hour:.0f} images/hour", flush=True)
    sequential = {row["strategy"]: row["images_per_hour"] for row in throughput if row["batch"] == 1}
    for row in throughput:
        row["vs_sequential"] = row["images_per_hour"] / sequential.get("loop", sequential.get(row["strategy"]))
    capability = f"CPU {info['cpu_model']}, torch capability {info['cpu_capability']}, native bf16: {info['native_bf16']}"
    header = (
        "# Throughput: per-iteration speed and images per hour (denoising net 32->3, 128/128/4, 5 scales)\n\n"
        f"{machine_header(info)}\n- {capability if not gpu else info.get('gpu')}\n"
        f"- matmul peak fp32 {peak32 / 1e12:.3f} TFLOP/s, bf16 {peak16 / 1e12:.3f} TFLOP/s\n"
        f"- command: `python bench/throughput.py {' '.join(sys.argv[1:])}`\n\n"
        "naive loop = eager NCHW loop like the DIP notebooks (separate ReflectionPad2d, host-side PSNR/EMA/loss every "
        "iteration); engine = oscfast's step with P, loss and PSNR of both outputs on the device, host sync every "
        f"{args.sync_every} iterations" + (", CUDA graph" if gpu else "") + ". 'first sync' includes warm-up, capture "
        "and compilation. bf16 rows marked 'emulated' ran without native bf16 arithmetic"
        + ("" if has_bf16 or args.emulated_bf16 else "; this device has no native bf16, so bf16 was not timed (--emulated-bf16 times it anyway)")
        + ".\n\n"
        "| size | variant | ms/it | vs naive | GFLOP/s | share of matmul peak | bookkeeping share | first sync (s) |\n"
        "|---|---|---|---|---|---|---|---|\n"
        + "".join(
            f"| {r['size']} | {r['variant']}{'' if r['native'] else ' (emulated)'} | {r['ms_per_iteration']:.2f} | "
            f"{r['speedup_vs_naive']:.2f}x | {r['gflops']:.0f} | {100 * r['share_of_peak']:.1f}% | "
            f"{100 * r['bookkeeping_share']:.3f}% | {r['first_sync_s']:.1f} |\n"
            for r in rows
        )
        + f"\nImages per hour, {batch_size} px, plain DIP to {batch_iterations} iterations per image, restore_many with "
        "K restorations per step (loop: fits one after the other in the step; vmap: batched kernels):\n\n"
        "| strategy | K | images | images/hour | vs sequential (K = 1, loop) |\n|---|---|---|---|---|\n"
        + "".join(f"| {r['strategy']} | {r['batch']} | {r['images']} | {r['images_per_hour']:.0f} | {r['vs_sequential']:.2f}x |\n"
                  for r in throughput)
    )
    name = f"throughput-{machine_tag(info)}"
    path = write_results(name, header, {"machine": info, "peak_fp32": peak32, "peak_bf16": peak16, "rows": rows,
                                        "throughput": throughput}, args.out_dir)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
