"""The demo's run recorded to its cap, and the risk rule's variants replayed on it.

    python bench/demo_replays.py

Runs the README's demo (64 px astronaut, sigma 25/255, seed 0, twin probe) with
``stop="never"`` so that both fits' curves exist to the cap, then replays on those curves
(**replays**: the fits do not depend on the rule) the risk rule with the fixed and the evidence
wait, with and without the level cut, and told the true level. Writes
``bench/results/demo-replays.md`` and ``.json``.
"""
from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, machine_header, write_results  # noqa: E402
from rules_study import feed_recorded  # noqa: E402

from oscfast import restore
from oscfast.config import StopConfig
from oscfast.degradations import add_gaussian_noise
from oscfast.demo import DEMO_MAX_ITERATIONS, demo_image
from oscfast.plan import make_rule
from oscfast.prepare import RunOptions, prepare
from oscfast.probe import risk_constants

PLAIN, PROBED = 0, 1


def main() -> int:
    clean = demo_image()
    noisy = add_gaussian_noise(clean, 25 / 255, seed=0)
    result = restore(noisy, task="denoise", reference=clean, stop="never", seed=0, device="cpu", progress=False)
    traces = result.history.fits
    cap = DEMO_MAX_ITERATIONS
    job = prepare(noisy, "denoise", RunOptions(seed=0, device="cpu", progress=False))
    estimated = job.plan.noise_level
    true_level = float(np.sqrt(np.mean((noisy - clean) ** 2)))
    oracle = max(float(np.nanmax(traces["psnr"][PLAIN])), float(np.nanmax(traces["psnr_ema"][PLAIN])))
    rows = []
    for label, level, settings in (
        ("evidence wait, level cut (the default)", estimated, StopConfig()),
        ("fixed wait, level cut", estimated, StopConfig(wait="fixed")),
        ("evidence wait, no cut", estimated, StopConfig(level_bound=None)),
        ("fixed wait, no cut (before issues 15 and 18)", estimated, StopConfig(wait="fixed", level_bound=None)),
        ("evidence wait, told the true level", true_level, replace(StopConfig(), noise_level=true_level)),
        ("fixed wait, told the true level", true_level, replace(StopConfig(wait="fixed"), noise_level=true_level)),
    ):
        constants = risk_constants("twin", noise_level=level, probe_std=settings.pseudo_noise_std, rho=job.plan.risk.rho)
        rule = make_rule("risk", stop=settings, max_iterations=cap, output="ema", risk=constants)
        signals = {name: (traces[name][PROBED] - traces[name][PLAIN]) if name in ("p", "p_ema") else traces[name][PLAIN]
                   for name in rule.needs}
        feed_recorded(rule, signals, cap, settings.sync_every)
        decision = rule.decision
        iteration = decision.iteration if decision.iteration is not None else cap - 1
        curve = traces["psnr_ema" if decision.output == "ema" else "psnr"][PLAIN]
        stopped = decision.stop_iteration if decision.should_stop else cap
        rows.append({"rule": label, "level": level, "iteration": int(iteration), "output": decision.output,
                     "iterations_run": int(stopped), "psnr": float(curve[iteration]), "gap_db": oracle - float(curve[iteration])})
    # the default rule as the engine ran it live on these fits (stop="never" keeps its decision)
    rows.insert(0, {"rule": "the default, live in the engine (not a replay)", "level": float(result.noise_level or estimated),
                    "iteration": int(result.stop_iteration), "output": result.output,
                    "iterations_run": int(result.rule_stop_iteration or cap), "psnr": float(result.psnr),
                    "gap_db": oracle - float(result.psnr)})
    info = machine()
    best_ema = int(np.nanargmax(traces["psnr_ema"][PLAIN]))
    lines = [
        "# The demo's curves and the risk rule's variants (replays)", "",
        machine_header(info), "- command: `python bench/demo_replays.py`", "",
        f"The demo (64 px astronaut, sigma 25/255 clipped, seed 0) run to its cap of {cap} with the twin probe; "
        f"plain-DIP oracle {oracle:.2f} dB (the averaged output peaks at iteration {best_ema}). Level: Donoho's "
        f"estimate {estimated:.4f} ({255 * estimated:.1f}/255), true (clipped) {true_level:.4f} ({255 * true_level:.1f}/255). "
        "**Replays** on those curves.", "",
        "| rule | level | returned it. (output) | iterations run | PSNR | gap dB |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['rule']} | {r['level']:.4f} | {r['iteration']} ({r['output']}) | {r['iterations_run']} | "
                     f"{r['psnr']:.2f} | {r['gap_db']:.2f} |")
    write_results("demo-replays", "\n".join(lines) + "\n",
                  {"machine": info, "oracle": oracle, "estimated_level": estimated, "true_level": true_level, "rows": rows})
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
