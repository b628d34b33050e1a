"""Memory: oscfast's estimate against the measured peak memory of a CPU run.

    python bench/memory_check.py                         # 64, 128, 256 px
    python bench/memory_check.py --sizes 64 128 --iterations 3

For the default denoise restoration (twin probe: 2 fits), per size: the estimate that
``restore()`` makes before the run (``estimate_run_bytes(output_shape, dip,
ring_size=stop.sync_every + 1, num_fits=2)``, reproduced here with the same arguments and
checked against the value restore() itself computes), and the measured peak: each size runs in
a fresh subprocess that imports oscfast and torch, builds the noisy image, reads its baseline
RSS (VmRSS), runs ``oscfast.restore(noisy, task="denoise", max_iterations=N, progress=False,
device="cpu", seed=0)`` and reads ``ru_maxrss``; peak increase = ru_maxrss after - VmRSS before.

A second child per size ("pre-imported") first runs one 64 px restore of 2 iterations (then
malloc_trim), so that its increase is the run's own allocations without the one-off costs of a
first run (the estimate's meta-device forward alone imports sympy, torch._dynamo and torch.onnx
on its first call: about 80 MiB). A third child measures what autograd saves in one fit's
forward and the peak of one forward + backward, beside the estimate's terms.
Writes bench/results/memory-<machine>.md/.json.
"""
from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import resource
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

MIB = 2**20
TOLERANCE = 0.25
_TAG = "MEMORY_CHECK_RESULT "


def _status_kib(field: str) -> int:
    """A ``kB`` field of /proc/self/status (VmRSS, VmHWM) in KiB."""
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def restore_estimate(noisy, max_iterations: int) -> int:
    """The estimate restore(noisy, task="denoise", max_iterations=...) checks before its run:
    same task object, preset, stop settings and call as oscfast/api.py."""
    from oscfast import io
    from oscfast.config import StopConfig
    from oscfast.memory import estimate_run_bytes
    from oscfast.presets import get_preset
    from oscfast.tasks import build_task

    observation = io.load_image(noisy, name="image")
    task_object = build_task("denoise", observation, seed=0)
    dip = get_preset("denoise", None, factor=getattr(task_object, "factor", None))
    if max_iterations is not None:
        dip = replace(dip, max_iterations=int(max_iterations))
    stop_settings = StopConfig()
    return estimate_run_bytes(task_object.output_shape, dip, ring_size=stop_settings.sync_every + 1, num_fits=2)


def estimate_terms(size: int, max_iterations: int) -> dict:
    """The estimate's terms for the call above, in bytes for the 2 fits (from
    oscfast.memory's formula: activations x factor, parameter state, rings, input, trace)."""
    import math

    from oscfast.config import StopConfig
    from oscfast.memory import _ACTIVATION_FACTOR, _FLOAT, _activation_elements
    from oscfast.presets import get_preset

    dip = replace(get_preset("denoise", None), max_iterations=max_iterations)
    multiple = dip.net.stride_multiple
    canvas = math.ceil(size / multiple) * multiple
    activations, parameters = _activation_elements(dip, 3, canvas, canvas)
    image = 3 * size * size
    ring = StopConfig().sync_every + 1
    fits = 2
    return {
        "activation_elements_per_fit": activations, "parameter_elements_per_fit": parameters,
        "activation_factor": _ACTIVATION_FACTOR,
        "activations": int(fits * _ACTIVATION_FACTOR * activations * _FLOAT),
        "parameters_grads_adam": fits * 4 * parameters * _FLOAT,
        # rings for the driving fit only; per fit the step's images, the average, the newest output
        "rings_and_images": (2 * ring + fits * 9) * image * _FLOAT,
        "input": fits * 3 * dip.net.input_channels * canvas * canvas * _FLOAT,
        "trace": fits * 12 * max_iterations * _FLOAT,
    }


def saved_child(size: int) -> dict:
    """Bytes autograd saves for backward in one fit's forward (unique storages), and the RSS
    increase of one forward + backward, for the preset net at ``size`` (fresh process)."""
    import math

    import torch

    from oscfast.models import build_net
    from oscfast.presets import get_preset

    spec = get_preset("denoise", None).net
    canvas = math.ceil(size / spec.stride_multiple) * spec.stride_multiple
    net = build_net(spec, 3)
    z = torch.rand(1, spec.input_channels, canvas, canvas)
    storages: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    net(z).mean().backward()  # first call: one-off costs out of the way
    net.zero_grad()
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")  # reset the peak (VmHWM, ru_maxrss) to the current RSS: the first call's is gone
    before = _status_kib("VmRSS")
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        out = net(z)
    after_forward = _status_kib("VmRSS")
    out.mean().backward()
    peak = _status_kib("VmHWM")
    return {"size": size, "saved_bytes": sum(storages.values()),
            "forward_rss_bytes": (after_forward - before) * 1024, "forward_backward_peak_bytes": (peak - before) * 1024}


def child(size: int, iterations: int, preimport: bool) -> dict:
    """One measurement in this (fresh) process."""
    import torch

    import oscfast
    from oscfast.degradations import add_gaussian_noise
    from oscfast.demo import demo_image

    noisy = add_gaussian_noise(demo_image(size), 25 / 255, seed=0)
    if preimport:
        import oscfast.api  # noqa: F401
        import oscfast.kernels  # noqa: F401

        small = add_gaussian_noise(demo_image(64), 25 / 255, seed=0)
        oscfast.restore(small, task="denoise", max_iterations=2, progress=False, device="cpu", seed=0)
        del small
        gc.collect()
        ctypes.CDLL("libc.so.6").malloc_trim(0)  # hand the warm-up's freed heap back to the OS
    modules_before = set(sys.modules)
    # spy on the estimates the run makes (api: before the run; engine: when it allocates)
    import oscfast.engine.loop
    import oscfast.prepare

    seen: dict[str, list[int]] = {"api": [], "engine": []}
    for label, module in (("api", oscfast.prepare), ("engine", oscfast.engine.loop)):
        original = module.estimate_run_bytes

        def spy(*args, _original=original, _label=label, **kwargs):
            value = _original(*args, **kwargs)
            seen[_label].append(int(value))
            return value

        module.estimate_run_bytes = spy
    rss_before = _status_kib("VmRSS")
    maxrss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    result = oscfast.restore(noisy, task="denoise", max_iterations=iterations, progress=False, device="cpu", seed=0)
    maxrss_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    rss_after = _status_kib("VmRSS")
    new_modules = set(sys.modules) - modules_before
    return {
        "size": size, "iterations": iterations, "preimport": preimport,
        "iterations_run": int(result.iterations_run),
        "rss_before_kib": rss_before, "maxrss_before_kib": maxrss_before,
        "maxrss_after_kib": maxrss_after, "rss_after_kib": rss_after,
        "peak_increase_bytes": (maxrss_after - rss_before) * 1024,
        "peak_above_earlier_max": maxrss_after > maxrss_before,
        "estimate_api_bytes": seen["api"], "estimate_engine_bytes": seen["engine"],
        "new_modules": len(new_modules),
        "numba_imported": "numba" in new_modules, "onnx_imported": any(m.startswith("onnx") for m in new_modules),
        "torch_threads": torch.get_num_threads(),
    }


def measure(size: int, iterations: int, preimport: bool = False, saved: bool = False) -> dict:
    """Run :func:`child` (or :func:`saved_child`) in a fresh interpreter and return its record."""
    command = [sys.executable, __file__, "--child", str(size), "--iterations", str(iterations)]
    if preimport:
        command.append("--preimport")
    if saved:
        command.append("--saved")
    done = subprocess.run(command, capture_output=True, text=True, env=os.environ.copy())
    if done.returncode != 0:
        raise RuntimeError(f"child {size} px failed:\n{done.stderr[-3000:]}")
    lines = [line for line in done.stdout.splitlines() if line.startswith(_TAG)]
    return json.loads(lines[-1][len(_TAG):])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 128, 256])
    parser.add_argument("--iterations", type=int, default=3, help="iterations of each measured run")
    parser.add_argument("--check-iterations", type=int, default=6,
                        help="a second run at the smallest size with this many iterations (0: skip)")
    parser.add_argument("--no-preimport", dest="preimport", action="store_false",
                        help="skip the pre-imported children")
    parser.add_argument("--out-dir", type=Path, default=None)
    parser.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--preimport", dest="child_preimport", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--saved", dest="child_saved", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--no-breakdown", dest="breakdown", action="store_false",
                        help="skip the autograd saved-tensor measurement per size")
    args = parser.parse_args(argv)
    if args.child is not None:
        record = saved_child(args.child) if args.child_saved else child(args.child, args.iterations, args.child_preimport)
        print(_TAG + json.dumps(record), flush=True)
        return 0

    from common import machine, machine_header, machine_tag, write_results

    from oscfast.degradations import add_gaussian_noise
    from oscfast.demo import demo_image

    info = machine()
    rows = []
    for size in args.sizes:
        noisy = add_gaussian_noise(demo_image(size), 25 / 255, seed=0)
        estimate = restore_estimate(noisy, args.iterations)
        estimate_default_cap = restore_estimate(noisy, None)
        record = measure(size, args.iterations)
        if record["estimate_api_bytes"] != [estimate]:
            raise RuntimeError(f"{size} px: reproduced estimate {estimate} != restore()'s {record['estimate_api_bytes']}")
        pre = measure(size, args.iterations, preimport=True) if args.preimport else None
        saved = measure(size, args.iterations, saved=True) if args.breakdown else None
        ratio = record["peak_increase_bytes"] / estimate
        row = {
            "size": size, "iterations": args.iterations, "estimate_bytes": estimate,
            "estimate_default_cap_bytes": estimate_default_cap,
            "engine_estimate_bytes": record["estimate_engine_bytes"][0] if record["estimate_engine_bytes"] else None,
            "measured_bytes": record["peak_increase_bytes"], "ratio": ratio,
            "ratio_engine": (pre or record)["peak_increase_bytes"] / record["estimate_engine_bytes"][0]
            if record["estimate_engine_bytes"] else None,
            "within_tolerance": abs(ratio - 1) <= TOLERANCE,
            "measured_preimported_bytes": pre["peak_increase_bytes"] if pre else None,
            "ratio_preimported": pre["peak_increase_bytes"] / estimate if pre else None,
            "terms": estimate_terms(size, args.iterations), "saved_one_fit": saved,
            "child": record, "child_preimported": pre,
        }
        rows.append(row)
        print(f"{size:4d} px  estimate {estimate / MIB:8.1f} MiB  measured {row['measured_bytes'] / MIB:8.1f} MiB  "
              f"ratio {ratio:5.2f}  {'ok' if row['within_tolerance'] else 'OFF'}"
              + (f"  (pre-imported {row['measured_preimported_bytes'] / MIB:.1f} MiB, ratio {row['ratio_preimported']:.2f})"
                 if pre else ""), flush=True)
    check = None
    if args.check_iterations:
        size = min(args.sizes)
        longer = measure(size, args.check_iterations)
        base = next(r for r in rows if r["size"] == size)
        check = {"size": size, "iterations": args.check_iterations, "measured_bytes": longer["peak_increase_bytes"],
                 "vs_short_bytes": longer["peak_increase_bytes"] - base["measured_bytes"], "child": longer}
        if args.preimport:
            longer_pre = measure(size, args.check_iterations, preimport=True)
            check["measured_preimported_bytes"] = longer_pre["peak_increase_bytes"]
            check["vs_short_preimported_bytes"] = longer_pre["peak_increase_bytes"] - base["measured_preimported_bytes"]
            check["child_preimported"] = longer_pre
        print(f"check: {size} px with {args.check_iterations} iterations: {check['measured_bytes'] / MIB:.1f} MiB "
              f"({check['vs_short_bytes'] / MIB:+.1f} MiB vs {args.iterations})", flush=True)

    table = (
        "| size | estimate (MiB) | measured peak increase (MiB) | measured / estimate | within 25% | "
        "pre-imported increase (MiB) | pre-imported / estimate |\n|---|---|---|---|---|---|---|\n"
        + "".join(
            f"| {r['size']} | {r['estimate_bytes'] / MIB:.1f} | {r['measured_bytes'] / MIB:.1f} | {r['ratio']:.2f} | "
            f"{'yes' if r['within_tolerance'] else 'no'} | "
            + (f"{r['measured_preimported_bytes'] / MIB:.1f} | {r['ratio_preimported']:.2f} |\n"
               if r["measured_preimported_bytes"] is not None else "- | - |\n")
            for r in rows
        )
    )
    terms_table = (
        "| size | activations x {f:g} | params + grads + Adam | rings + images | input | measured: autograd saved "
        "(2 fits) | measured: forward + backward peak of one fit x 2 |\n|---|---|---|---|---|---|---|\n".format(
            f=rows[0]["terms"]["activation_factor"])
        + "".join(
            f"| {r['size']} | {r['terms']['activations'] / MIB:.1f} | {r['terms']['parameters_grads_adam'] / MIB:.1f} | "
            f"{r['terms']['rings_and_images'] / MIB:.1f} | {r['terms']['input'] / MIB:.1f} | "
            + (f"{2 * r['saved_one_fit']['saved_bytes'] / MIB:.1f} | "
               f"{2 * r['saved_one_fit']['forward_backward_peak_bytes'] / MIB:.1f} |\n" if r["saved_one_fit"] else "- | - |\n")
            for r in rows
        )
    )
    markdown = (
        "# Memory: restore()'s estimate against the measured peak (CPU, default denoise, twin probe: 2 fits)\n\n"
        f"{machine_header(info)}\n"
        f"- command: `python bench/memory_check.py {' '.join(sys.argv[1:])}`\n\n"
        "estimate = `estimate_run_bytes(output_shape, dip, ring_size=sync_every + 1, num_fits=2)` exactly as "
        f"restore() calls it (max_iterations={args.iterations}; checked against the value restore() computed in the "
        "child). measured = ru_maxrss after the run - VmRSS before it, each size in a fresh process that had imported "
        "oscfast and torch and built the noisy image (demo_image + add_gaussian_noise 25/255, seed 0). "
        "pre-imported = the same after importing oscfast.api and the kernels and running one 64 px restore of 2 iterations first (then malloc_trim) "
        "(without one-off import and first-call costs). The engine's own estimate (its real ring: the rule's lag + a "
        "sync, for the driving fit only, and the resume points kept on the host) against the pre-imported peak: "
        + ", ".join(f"{r['size']} px {r['ratio_engine']:.2f}" for r in rows if r.get("ratio_engine") is not None)
        + ".\n\n" + table
        + "\nThe estimate's terms (MiB, 2 fits) beside what autograd really keeps: the bytes of the tensors saved "
        "for backward in one fit's forward (unique storages) and the RSS peak of one fit's forward + backward (after "
        "a first call), both doubled for the 2 fits.\n\n" + terms_table
    )
    if check:
        markdown += (
            f"\nCheck of the iteration count: {check['size']} px with {check['iterations']} iterations: "
            f"{check['measured_bytes'] / MIB:.1f} MiB ({check['vs_short_bytes'] / MIB:+.1f} MiB against "
            f"{args.iterations} iterations)"
            + (f"; pre-imported {check['measured_preimported_bytes'] / MIB:.1f} MiB "
               f"({check['vs_short_preimported_bytes'] / MIB:+.1f} MiB)" if "measured_preimported_bytes" in check else "")
            + ".\n"
        )
    name = f"memory-{machine_tag(info)}"
    path = write_results(name, markdown, {"machine": info, "tolerance": TOLERANCE, "rows": rows, "check": check},
                         args.out_dir)
    print(table)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
