"""Throughput: the time of one step, side by side in one process (same net, size and seed), and
optionally images per hour against the batch size.

    python bench/throughput.py --device cpu                          # CPU: 64, 128, 256 px (~2-3 min on 2 idle cores)
    python bench/throughput.py --device cuda --sizes 256 512         # GPU

Per step, interleaved (each round steps every variant once, in turn, so that a change of the
machine's load hits all of them alike): an upstream-style loop written like the DIP denoising
notebook (separate ReflectionPad2d + conv, BatchNorm, LeakyReLU, bilinear upsampling,
torch.optim.Adam, host-side loss, PSNR and EMA every iteration) against oscfast's step as
``restore`` builds it: plain DIP (``pseudo_noise_std=0``, one fit) and the default twin (two
fits, with the strategy ``"auto"`` picks and with ``"threads"``), bf16 where native, compiled on
request. Images per hour (``--images-per-hour``): restore_many with K = 1, 2, 4, 8 restorations per
step. Writes bench/results/throughput-<machine>.md/.json, the file the README block reads, only
when the 1-minute load average before the run was at most ``--max-load`` (0.5): a run on a busy
machine is written, flagged, under bench/results/loaded/ instead.
"""
from __future__ import annotations

import argparse
import os

#: the other processes' load, read before this process imports torch (whose import is work of its own)
LOAD_AT_START = os.getloadavg()[0]

import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, machine, machine_header, machine_tag, write_results
from oscfast.kernels import IncrementalCurvature, warm_up
from oscfast.models import DENOISE_SPEC, build_net

from oscfast.config import DIPConfig, StopConfig
from oscfast.degradations import add_gaussian_noise
from oscfast.demo import demo_image
from oscfast.engine import BatchRun, make_input
from oscfast.hardware import native_bf16
from oscfast.io import image_to_tensor
from oscfast.many import restore_many
from oscfast.prepare import RunOptions, prepare
from oscfast.probe import projection


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


class UpstreamLoop:
    """One iteration of the DIP denoising notebook's loop per call: eager NCHW, reg-noise on the
    input, MSE, backward, the output copied to the host for the loss, PSNR and EMA (numpy),
    torch.optim.Adam (the notebook's structure, with its net: :func:`reference_style_net`)."""

    def __init__(self, size: int, device: torch.device, seed: int = 0) -> None:
        self.clean = demo_image(size)
        noisy = add_gaussian_noise(self.clean, 25 / 255, seed=seed)
        torch.manual_seed(seed)
        self.device = device
        self.net = reference_style_net(3).to(device)
        self.z = make_input(DIPConfig(), size, size, seed=seed + 1).to(device)
        self.target = image_to_tensor(noisy).to(device)
        self.optimizer = torch.optim.Adam(self.net.parameters(), lr=0.01)
        self.ema: np.ndarray | None = None
        self.history: list[tuple[float, float, float]] = []

    def step(self) -> None:
        # fp32 as the engine's "fp32" runs it: no TF32 convolutions (torch's cuDNN default allows them)
        with torch.backends.cudnn.flags(enabled=True, benchmark=False, deterministic=False, allow_tf32=False):
            self.optimizer.zero_grad()
            out = self.net(self.z + torch.randn_like(self.z) * (1 / 30))
            loss = torch.mean((out - self.target) ** 2)
            loss.backward()
            out_np = out.detach().cpu().numpy()[0].transpose(1, 2, 0)
            self.ema = out_np if self.ema is None else 0.99 * self.ema + 0.01 * out_np
            self.history.append((loss.item(), -10 * np.log10(np.mean((out_np - self.clean) ** 2)),
                                 -10 * np.log10(np.mean((self.ema - self.clean) ** 2))))
            self.optimizer.step()
            if self.device.type == "cuda":
                torch.cuda.synchronize()


def engine_step(size: int, device: torch.device, *, twin: bool, precision: str = "fp32", strategy: str | None = None,
                compile: bool = False, seed: int = 0) -> Callable[[], None]:
    """oscfast's step as ``restore(noisy, "denoise", stop="never")`` builds it: the twin probe
    (two fits, the default) or plain DIP (``pseudo_noise_std=0``, one fit); one call is one
    step, synchronised with the device (the host's own syncs every ``sync_every`` steps only
    read the trace, and are left out)."""
    noisy = add_gaussian_noise(demo_image(size), 25 / 255, seed=seed)
    options = RunOptions(stop="never", max_iterations=10_000, progress=False, device=device, precision=precision,
                         pseudo_noise_std=None if twin else 0.0, seed=seed)
    job = prepare(noisy, "denoise", options, {})
    engine = replace(job.engine, compile=compile, cuda_graph=False, check_memory=False,
                     **({"strategy": strategy} if strategy else {}))
    state = BatchRun([(job.plan.fits, [job.plan.watch], 0, None)], job.config, options=engine).state

    def step() -> None:
        state.step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    return step


def interleaved(steps: dict[str, Callable[[], None]], rounds: int, warmup: int = 2) -> dict[str, list[float]]:
    """Seconds per step of each variant, stepped in turn: ``warmup`` untimed rounds, then
    ``rounds`` timed ones."""
    for _ in range(warmup):
        for step in steps.values():
            step()
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(rounds):
        for name, step in steps.items():
            start = time.perf_counter()
            step()
            times[name].append(time.perf_counter() - start)
    return times


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
    parser.add_argument("--rounds", type=int, default=None, help="timed steps per variant (interleaved rounds)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's, the cores)")
    parser.add_argument("--max-load", type=float, default=0.5,
                        help="the highest 1-minute load average (other processes, before the run) of a run written "
                             "where the README block reads it")
    parser.add_argument("--compile", action="store_true", help="also time the engine under torch.compile (slow to start)")
    parser.add_argument("--emulated-bf16", action="store_true",
                        help="time bf16 also where the device has no native bf16 (slow: emulated)")
    parser.add_argument("--images-per-hour", action="store_true", help="also time restore_many with K = --batches")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--batch-size", type=int, default=None, help="image size of the images-per-hour runs")
    parser.add_argument("--batch-iterations", type=int, default=None)
    parser.add_argument("--out-dir", type=Path, default=None)
    args = parser.parse_args(argv)
    load_before = LOAD_AT_START
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    gpu = device.type == "cuda"
    sizes = args.sizes or ([256, 512] if gpu else [64, 128, 256])
    info = machine()
    info["load_average_1m_before"] = round(load_before, 2)
    loaded = load_before > args.max_load
    if loaded:
        print(f"WARNING: 1-minute load average {load_before:.2f} > {args.max_load} before the run: the times are "
              "not those of an idle machine; the result is written flagged, under bench/results/loaded/", flush=True)
    has_bf16 = native_bf16(device)
    peak32 = matmul_peak(device, torch.float32, 8192 if gpu else 2048)
    peak16 = matmul_peak(device, torch.bfloat16, 8192 if gpu else 1024) if gpu or has_bf16 or args.emulated_bf16 else float("nan")
    rows = []
    for size in sizes:
        rounds = args.rounds or (100 if gpu else {64: 30, 128: 20}.get(size, 10))
        flops = iteration_flops(size, device)
        variants: dict[str, Callable[[], None]] = {
            "upstream-style loop": UpstreamLoop(size, device).step,
            "engine fp32, plain (1 fit)": engine_step(size, device, twin=False),
            "engine fp32, twin (2 fits, auto)": engine_step(size, device, twin=True),
        }
        if not gpu:
            variants["engine fp32, twin (2 fits, threads)"] = engine_step(size, device, twin=True, strategy="threads")
        if has_bf16 or args.emulated_bf16:
            variants["engine bf16, plain (1 fit)"] = engine_step(size, device, twin=False, precision="bf16")
        if args.compile:
            variants["engine fp32 compiled, plain (1 fit)"] = engine_step(size, device, twin=False, compile=True)
        times = interleaved(variants, rounds)
        medians = {name: statistics.median(values) for name, values in times.items()}
        plain = medians["engine fp32, plain (1 fit)"]
        book = bookkeeping_seconds(size, device)
        for name, seconds in medians.items():
            bf16 = "bf16" in name
            work = flops * (2 if "twin" in name else 1)
            rows.append({
                "size": size, "variant": name, "ms_per_step": 1000 * seconds,
                "ms_spread": [1000 * min(times[name]), 1000 * max(times[name])],
                "vs_upstream": medians["upstream-style loop"] / seconds,
                "vs_plain": seconds / plain, "gflops": work / seconds / 1e9,
                "share_of_peak": work / seconds / (peak16 if bf16 else peak32),
                "bookkeeping_share": book / seconds, "native": (not bf16) or has_bf16, "rounds": rounds,
            })
            print(f"{size:5d} {name:38s} {1000 * seconds:9.2f} ms/step  x{rows[-1]['vs_upstream']:.2f} vs upstream  "
                  f"{rows[-1]['vs_plain']:.2f}x plain", flush=True)
    throughput = []
    if args.images_per_hour:
        batch_size = args.batch_size or (256 if gpu else 64)
        batch_iterations = args.batch_iterations or (200 if gpu else 50)
        for strategy in (["vmap"] if gpu else ["loop", "threads", "vmap"]):
            for batch in args.batches:
                images = max(batch, 2) * (2 if gpu else 1)
                per_hour = images_per_hour(batch_size, batch, images, batch_iterations, device, strategy)
                throughput.append({"strategy": strategy, "batch": batch, "images": images, "images_per_hour": per_hour})
                print(f"batch {batch} ({strategy}): {per_hour:.0f} images/hour", flush=True)
        sequential = {row["strategy"]: row["images_per_hour"] for row in throughput if row["batch"] == 1}
        for row in throughput:
            row["vs_sequential"] = row["images_per_hour"] / sequential.get("loop", sequential.get(row["strategy"]))
    load_after = os.getloadavg()[0]
    info["load_average_1m_after"] = round(load_after, 2)
    capability = f"CPU {info['cpu_model']}, torch capability {info['cpu_capability']}, native bf16: {info['native_bf16']}"
    flag = (f"**FLAGGED: the 1-minute load average was {load_before:.2f} before the run (> {args.max_load}): other "
            "processes shared the CPU, so these are not idle-machine times.**\n\n" if loaded else "")
    header = (
        "# Throughput: the time of one step (denoising net 32->3, 128/128/4, 5 scales)\n\n"
        + flag
        + f"{machine_header(info)}\n- {capability if not gpu else info.get('gpu')}\n"
        f"- matmul peak fp32 {peak32 / 1e12:.3f} TFLOP/s, bf16 {peak16 / 1e12:.3f} TFLOP/s\n"
        f"- command: `python bench/throughput.py {' '.join(sys.argv[1:] if argv is None else argv)}`\n\n"
        "naive loop = the upstream-style loop: the DIP denoising notebook's structure (separate ReflectionPad2d + conv, "
        "BatchNorm, LeakyReLU, bilinear upsampling, torch.optim.Adam, host-side loss, PSNR and EMA every iteration). "
        "engine = oscfast's step as `restore(noisy, 'denoise', stop='never')` builds it: plain DIP "
        "(`pseudo_noise_std=0`, one fit) and the default twin (two fits; 'auto' is the loop strategy on a CPU, "
        "'threads' runs the two fits in parallel, one CPU thread each). All variants stepped in turn, one step each per "
        f"round, in one process, {torch.get_num_threads()} torch threads; the median step, with the fastest and slowest "
        f"in brackets. Load average (1 min) {load_before:.2f} before the run, {load_after:.2f} after it (this run's "
        "own work included).\n\n"
        "| size | variant | ms/step | vs upstream-style loop | vs plain step | GFLOP/s | share of matmul peak | "
        "bookkeeping share |\n|---|---|---|---|---|---|---|---|\n"
        + "".join(
            f"| {r['size']} | {r['variant']}{'' if r['native'] else ' (emulated)'} | {r['ms_per_step']:.1f} "
            f"[{r['ms_spread'][0]:.0f}-{r['ms_spread'][1]:.0f}] | {r['vs_upstream']:.2f}x | {r['vs_plain']:.2f}x | "
            f"{r['gflops']:.0f} | {100 * r['share_of_peak']:.1f}% | {100 * r['bookkeeping_share']:.3f}% |\n"
            for r in rows
        )
    )
    if throughput:
        header += (
            f"\nImages per hour, {batch_size} px, plain DIP to {batch_iterations} iterations per image, restore_many "
            "with K restorations per step (loop: fits one after the other in the step; threads: in parallel threads; "
            "vmap: batched kernels):\n\n"
            "| strategy | K | images | images/hour | vs sequential (K = 1, loop) |\n|---|---|---|---|---|\n"
            + "".join(f"| {r['strategy']} | {r['batch']} | {r['images']} | {r['images_per_hour']:.0f} | "
                      f"{r['vs_sequential']:.2f}x |\n" for r in throughput)
        )
    out_dir = args.out_dir or (RESULTS / "loaded" if loaded else None)
    name = f"throughput-{machine_tag(info)}"
    path = write_results(name, header, {"machine": info, "flagged": loaded, "peak_fp32": peak32, "peak_bf16": peak16,
                                        "rows": rows, "throughput": throughput}, out_dir)
    print(f"wrote {path}" + (" (FLAGGED: loaded machine)" if loaded else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
