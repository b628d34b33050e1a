"""Time the README's demo (`oscfast demo`) end to end and record what it printed.

    python bench/demo_run.py
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, machine_header, machine_tag, write_results  # noqa: E402

from oscfast.demo import run_demo


def main() -> int:
    start = time.perf_counter()
    before = os.getloadavg()[0]  # other processes' load when the run starts
    report = run_demo(Path("/tmp") / "oscfast-demo-bench", progress=False)
    seconds = time.perf_counter() - start
    r = report.result
    row = {"seconds": seconds, "noisy_psnr": report.noisy_psnr, "restored_psnr": report.restored_psnr,
           "stop_iteration": r.stop_iteration, "iterations_run": r.iterations_run, "cap": r.config.max_iterations,
           "output": r.output, "device": r.device, "probe": r.probe, "rule": r.rule,
           "estimated_psnr": r.estimated_psnr, "estimated_psnr_reason": r.estimated_psnr_reason}
    info = machine()
    # the 1-minute load average just before the run: other work on the machine (<= 0.5: idle)
    row["load_before"] = round(before, 2)
    row["idle_machine"] = bool(before <= 0.5)
    text = (f"# Demo run\n\n{machine_header(info)}\n- command: `python bench/demo_run.py` (same as `oscfast demo`)\n\n"
            + "".join(f"- {k}: {v:.2f}\n" if isinstance(v, float) else f"- {k}: {v}\n" for k, v in row.items()))
    write_results(f"demo-{machine_tag(info)}", text, {"machine": info, **row})
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
