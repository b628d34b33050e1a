"""Stop rules at a small scale (64 px photo, narrow net) on the CPU: one DIP+OSC run with
stop="never", every rule replayed on prefixes of its curves as if the cap had been 400, 800 or
1500 (the knee rule's window follows the cap, the risk rule has none).

    python bench/small_scale.py
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from accuracy import RULES  # noqa: E402
from common import machine, machine_header, machine_tag, write_results  # noqa: E402

from oscfast.api import restore
from oscfast.config import DIPConfig, StopConfig
from oscfast.degradations import add_gaussian_noise
from oscfast.demo import demo_image
from oscfast.models import DENOISE_SPEC
from oscfast.stopping import make_stopper


def main() -> int:
    clean = demo_image(64)
    noisy = add_gaussian_noise(clean, 25 / 255, seed=0)
    cap = 1500
    result = restore(noisy, reference=clean, stop="never", progress=False, device="cpu",
                     config=DIPConfig(net=DENOISE_SPEC.scaled(0.25), max_iterations=cap))
    h = result.history
    rows = []
    for prefix in (400, 800, 1500):
        best = h.psnr_raw[:prefix].max()
        for rule in RULES:
            stopper = make_stopper(StopConfig(rule=rule), max_iterations=prefix, risk_weight_value=result.risk_weight)
            for a in range(0, prefix, 25):
                b = min(a + 25, prefix)
                stopper.update_p(h.p[a:b], h.loss[a:b], p_ema=h.p_ema[a:b], loss_ema=h.loss_ema[a:b])
            chosen = stopper.best_iteration
            output = getattr(stopper, "best_output", "ema") if chosen is not None else "ema"
            index = chosen if chosen is not None else prefix - 1
            value = (h.psnr_ema if output == "ema" else h.psnr_raw)[index]
            rows.append({"cap": prefix, "rule": rule, "chosen": chosen, "output": output, "psnr": float(value),
                         "accuracy": float(value / best), "stopped_at": stopper.stop_iteration})
            print(rows[-1], flush=True)
    info = machine()
    text = (
        "# Stop rules at small scale: astronaut 64 px, sigma 25/255, skip net at 1/4 width, seed 0\n\n"
        f"{machine_header(info)}\n- command: `python bench/small_scale.py`\n"
        f"- run: raw PSNR max {h.psnr_raw.max():.2f} dB at {int(h.psnr_raw.argmax())}, EMA max {h.psnr_ema.max():.2f} dB "
        f"at {int(h.psnr_ema.argmax())}\n\n"
        "| cap | rule | chosen it. | output | PSNR | accuracy (vs max raw over the cap) | stopped at |\n|---|---|---|---|---|---|---|\n"
        + "".join(f"| {r['cap']} | {r['rule']} | {r['chosen']} | {r['output']} | {r['psnr']:.2f} | {100 * r['accuracy']:.1f}% | {r['stopped_at']} |\n" for r in rows)
    )
    write_results(f"small-scale-{machine_tag(info)}", text, {"machine": info, "rows": rows})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
