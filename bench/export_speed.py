"""Per-step cost of the exported OSC stopper against the Python ``OSCStopper``.

At image shape 3x512x512 (the measurement of a 512 px RGB denoising run), L = 400, w = 10,
t_max = 3000 (the defaults for a 3000-iteration cap), it times one iteration of:

- ``onnxruntime``: one ``InferenceSession.run`` of the exported stopper graph (projection in
  float64 + trailing mean + chord fit + state update), CPUExecutionProvider, with
  onnxruntime's default threads and with one thread (torch runs with one thread throughout);
- ``onnxruntime + KneeRule``: the same plus the pure-Python decision
  (:class:`oscfast.stopping.KneeRule` fed the graph's ``p``; it recomputes the curvature itself);
- ``torch.export (.pt2)``: the same graph as a ``torch.export`` program module, eager CPU;
- ``OSCStopper.update``: the Python stopper fed the same operator output, as a float32 numpy
  array and as a float32 torch tensor (projection in float64 + numba kernel + decision).

Each is the median over ``STEPS`` steps after ``WARMUP`` warm-up steps; the steps are taken
with count >= 2L so the fit is live (the graph computes it every step anyway). The contenders
take turns in blocks of ``BLOCK`` steps, so a change in the machine's load hits them alike. The operator
outputs are precomputed float32 arrays (image + P_t n), so only the stopper is timed.

Usage: ``python bench/export_speed.py`` (writes ``bench/results/export-speed-<hostname>.md``).
"""
from __future__ import annotations

import datetime as _dt
import os

# One thread everywhere (numpy's BLAS included: vdot is a BLAS call). On a small shared CPU
# more threads mostly add spin-waiting; onnxruntime's default is shown once for reference.
for _variable in ("OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "OMP_NUM_THREADS"):
    os.environ.setdefault(_variable, "1")
import platform
import socket
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from oscfast import OSCStopper
from oscfast.export import export_stopper, initial_state
from oscfast.stopping import KneeRule, Signals
from oscfast.kernels import warm_up

SHAPE = (3, 512, 512)
HALF_WINDOW = 400
SMOOTHING = 10
T_MAX = 3000
WARMUP = 2 * HALF_WINDOW + 20
STEPS = 200
BLOCK = 20
N_FRAMES = 8  # distinct operator outputs, cycled


def _frames(rng: np.random.Generator) -> tuple[np.ndarray, list[np.ndarray]]:
    noise = rng.normal(0, 1 / 25, (1, *SHAPE)).astype(np.float32)
    image = rng.uniform(0, 1, noise.shape).astype(np.float32)
    return noise, [image + np.float32(0.01 * k) * noise for k in range(N_FRAMES)]


def _onnx_stepper(path: Path, noise: np.ndarray, *, threads: int, with_rule: bool):
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    rule = KneeRule(max_iterations=T_MAX, half_window=HALF_WINDOW, smoothing=SMOOTHING)
    state = dict(zip(("window", "count"), initial_state(HALF_WINDOW, SMOOTHING)))

    def step(frame: np.ndarray) -> None:
        seen = rule.iterations_seen
        p, p_smooth, kappa, state["window"], state["count"] = session.run(
            None, {"measured": frame, "noise": noise, **state}
        )
        if with_rule:
            # the decision: the knee rule fed the graph's P (it keeps its own curvature)
            rule.update(Signals.of(seen, p=p))

    return step


def _program_stepper(path: Path, noise: np.ndarray):
    module = torch.export.load(str(path)).module()
    window, count = (torch.from_numpy(a) for a in initial_state(HALF_WINDOW, SMOOTHING))
    state = {"window": window, "count": count}
    noise_t = torch.from_numpy(noise)

    def step(frame: np.ndarray) -> None:
        with torch.no_grad():
            _, _, _, state["window"], state["count"] = module(
                torch.from_numpy(frame), noise_t, state["window"], state["count"]
            )

    return step


def _python_stepper(noise: np.ndarray, *, as_tensor: bool):
    stopper = OSCStopper(
        torch.from_numpy(noise) if as_tensor else noise,
        max_iterations=T_MAX, half_window=HALF_WINDOW, smoothing=SMOOTHING,
    )
    if as_tensor:
        return lambda frame: stopper.update(torch.from_numpy(frame))
    return stopper.update


def time_interleaved(steppers: dict[str, object], frames: list[np.ndarray]) -> dict[str, float]:
    """Median microseconds per step of each stepper after its warm-up. The contenders take
    turns in blocks of ``BLOCK`` steps, so that a change in the machine's load hits all of
    them alike while each block runs with its own data in cache."""
    for step in steppers.values():
        for i in range(WARMUP):
            step(frames[i % N_FRAMES])
    times: dict[str, list[int]] = {name: [] for name in steppers}
    clock = time.perf_counter_ns
    for first in range(0, STEPS, BLOCK):
        for name, step in steppers.items():
            for i in range(first, first + BLOCK):
                frame = frames[i % N_FRAMES]
                t0 = clock()
                step(frame)
                times[name].append(clock() - t0)
    return {name: float(np.median(values)) / 1e3 for name, values in times.items()}


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def main() -> Path:
    torch.set_num_threads(1)
    warm_up()
    rng = np.random.default_rng(0)
    noise, frames = _frames(rng)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        onnx_path = export_stopper(
            Path(tmp) / "stopper.onnx", t_max=T_MAX, image_shape=SHAPE, half_window=HALF_WINDOW, smoothing=SMOOTHING
        )
        export_seconds = time.perf_counter() - t0
        pt2_path = export_stopper(
            Path(tmp) / "stopper.pt2", t_max=T_MAX, image_shape=SHAPE, half_window=HALF_WINDOW,
            smoothing=SMOOTHING, format="pt2",
        )
        steppers = {
            "onnxruntime, default threads": _onnx_stepper(onnx_path, noise, threads=0, with_rule=False),
            "onnxruntime, 1 thread": _onnx_stepper(onnx_path, noise, threads=1, with_rule=False),
            "onnxruntime + KneeRule, 1 thread": _onnx_stepper(onnx_path, noise, threads=1, with_rule=True),
            "torch.export .pt2 module, 1 thread": _program_stepper(pt2_path, noise),
            "OSCStopper.update(numpy float32)": _python_stepper(noise, as_tensor=False),
            "OSCStopper.update(torch float32 CPU tensor), 1 thread": _python_stepper(noise, as_tensor=True),
        }
        rows = list(time_interleaved(steppers, frames).items())
        onnx_bytes = onnx_path.stat().st_size
    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    host = socket.gethostname()
    lines = [
        "# Exported stopper: per-step cost",
        "",
        f"- machine: {platform.machine()}, {os.cpu_count()} CPUs ({_cpu_name()}), "
        f"host `{host}`, {platform.system()} {platform.release()}",
        f"- date: {_dt.datetime.now(_dt.timezone.utc).isoformat(timespec='seconds')}",
        f"- python {platform.python_version()}, torch {torch.__version__}, onnxruntime {ort.__version__}, "
        f"numpy {np.__version__}",
        f"- load average at the end (1/5/15 min): {load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f}",
        f"- measurement {SHAPE[0]}x{SHAPE[1]}x{SHAPE[2]} float32; L = {HALF_WINDOW}, w = {SMOOTHING}, "
        f"t_max = {T_MAX}; median over {STEPS} steps after {WARMUP} warm-up steps, contenders taking turns in blocks of {BLOCK}",
        f"- ONNX file {onnx_bytes / 1e3:.1f} kB, export took {export_seconds:.1f} s",
        "",
        "| what | median per step (us) |",
        "|---|---|",
        *(f"| {name} | {us:.0f} |" for name, us in rows),
        "",
    ]
    out = Path(__file__).resolve().parent / "results" / f"export-speed-{host}.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines))
    print("\n".join(lines))
    return out


if __name__ == "__main__":
    main()
