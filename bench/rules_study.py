"""Which probe and rule per task family: replays of candidate rules on the recorded twin runs.

    python bench/rules_study.py                  # the selection half only (what rules were chosen on)
    python bench/rules_study.py --report         # both halves, and bench/results/rules.md

Every candidate (a probe kind, a rule and its options) is replayed on the per-iteration signals
that bench/paper.py recorded (bench/results/paper/mini/*.npz), fed in chunks of 25 iterations
exactly as the engine feeds it; these are replays, and the tables say so. The default's own
numbers come from runs that the default drove (the "default" watch of every recording made
after the choice, and `restore()` calls in bench/paper.py's report). Time to the returned image
is iterations run x seconds per iteration of the configuration the rule needs (two fits for
the twin probe, one otherwise), both measured in the recording run's process.
"""
from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, machine, machine_header  # noqa: E402

from oscfast.config import StopConfig
from oscfast.evaluation import PLAIN, PROBED, outcome
from oscfast.plan import DEFAULT_STOP, make_rule
from oscfast.probe import risk_constants
from oscfast.stopping import Signals

FOLDER = RESULTS / "paper" / "mini"
FAMILIES = {
    "denoise": "denoise", "jpeg": "jpeg", "deblur": "deblur",
    "super_resolution": "sr", "inpaint": "inpaint / pixels", "restore_pixels": "inpaint / pixels",
}


@dataclass(frozen=True)
class Candidate:
    """A probe, a rule and option overrides; ``noise`` picks the noise level the risk uses."""

    label: str
    probe: str
    rule: str
    options: dict[str, Any] = field(default_factory=dict)
    noise: str = "task"  # "task": the recorded estimate; "jpeg": from the quantisation tables


def candidates() -> list[Candidate]:
    grid = [
        Candidate("inline-risk (before)", "inline", "risk"),
        Candidate("inline-knee", "inline", "knee"),
        Candidate("twin-knee", "twin", "knee"),
        Candidate("es-wmv", "none", "es-wmv"),
        Candidate("es-emv", "none", "es-emv"),
    ]
    for ratio in (0.25, 0.5, 1.0):
        for smoothing in (25, 50):
            grid.append(Candidate(f"twin-risk r{ratio} s{smoothing}", "twin", "risk", {"patience_ratio": ratio, "risk_smoothing": smoothing}))
            grid.append(Candidate(f"twin-risk r{ratio} s{smoothing} jpeg-tables", "twin", "risk",
                                  {"patience_ratio": ratio, "risk_smoothing": smoothing}, noise="jpeg"))
    for level in (40.0, 45.0, 50.0, 55.0, 60.0):
        for patience in (100, 200, 500):
            grid.append(Candidate(f"plateau {level:.0f} dB p{patience}", "none", "plateau", {"plateau_db": level, "plateau_patience": patience}))
    return grid


def load(folder: Path) -> list[dict[str, Any]]:
    runs = []
    for path in sorted(folder.glob("*.json")):
        payload = json.loads(path.read_text())
        payload["traces"] = dict(np.load(path.with_suffix(".npz")))
        payload["stem"] = path.stem
        runs.append(payload)
    return runs


def noise_level(run: dict[str, Any], kind: str) -> float:
    if kind == "task":
        return run["noise_level"]
    from bench_paper_access import jpeg_noise_for  # noqa: PLC0415 - lazily, needs ../shared

    return jpeg_noise_for(run)


def replay(run: dict[str, Any], candidate: Candidate, sync_every: int = 25):
    """The candidate's decision on one recorded run, and its outcome."""
    traces = run["traces"]
    cap = run["cap"]
    stop = replace(StopConfig(), **candidate.options)
    task = run["experiment"]["task"]
    output = "ema" if task in ("denoise", "jpeg") else "raw"
    risk = None
    if candidate.rule == "risk":
        level = run["noise_level"] if candidate.noise == "task" else run.get("jpeg_noise_level")
        if level is None:
            return None
        risk = risk_constants(candidate.probe, noise_level=level, probe_std=stop.pseudo_noise_std, rho=run["rho"])
    rule = make_rule(candidate.rule, stop=stop, max_iterations=cap, output=output, risk=risk)
    fit = PLAIN if candidate.probe in ("twin", "none") else PROBED
    signals: dict[str, np.ndarray] = {}
    for name in rule.needs:
        if name in ("p", "p_ema"):
            signals[name] = traces[name][PROBED] - (traces[name][PLAIN] if candidate.probe == "twin" else 0.0)
        else:
            signals[name] = traces[name][fit]
    for start in range(0, cap, sync_every):
        rule.update(Signals(start, {k: v[start : start + sync_every] for k, v in signals.items()}))
        if rule.decision.should_stop:
            break
    d = rule.decision
    return outcome(traces, label=candidate.label, iteration=d.iteration, output=d.output, fit=fit,
                   stop_iteration=d.stop_iteration if d.should_stop else None,
                   fits_needed=2 if candidate.probe == "twin" else 1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--report", action="store_true", help="include the held-back half")
    parser.add_argument("--folder", type=Path, default=FOLDER)
    args = parser.parse_args(argv)
    runs = [r for r in load(args.folder) if args.report or r["experiment"]["half"] == "selection"]
    rows: dict[str, dict[str, list]] = defaultdict(lambda: defaultdict(list))
    for run in runs:
        family = FAMILIES[run["experiment"]["task"]]
        fixed = max(run["traces"]["psnr"][PLAIN][-1], run["traces"]["psnr_ema"][PLAIN][-1])
        for candidate in candidates():
            result = replay(run, candidate)
            if result is None:
                continue
            seconds = run["seconds_per_iteration_twin"] if result.fits_needed == 2 else run["seconds_per_iteration_single"]
            rows[family][candidate.label].append((run["stem"], result.gap_db, result.iterations_run / run["cap"],
                                                  result.iterations_run * seconds, result.psnr - fixed))
    for family, table in rows.items():
        print(f"\n== {family} ({', '.join(sorted({s for v in table.values() for s, *_ in v}))})")
        ranked = sorted(table.items(), key=lambda item: np.mean([g for _, g, *_ in item[1]]))
        for label, values in ranked:
            gaps = [g for _, g, *_ in values]
            print(f"  {label:38s} mean gap {np.mean(gaps):5.2f}  worst {np.max(gaps):5.2f}  "
                  f"share of cap {np.mean([f for _, _, f, *_ in values]):4.2f}  vs fixed {np.mean([v[-1] for v in values]):+5.2f} dB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
