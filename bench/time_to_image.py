"""Time to the image: replays of the stop rules' waits (issue 18) on the recorded twin runs.

    python bench/time_to_image.py            # bench/results/time-to-image-replays.md and .json

Every recorded run in bench/results/paper/mini/*.npz (new ones are picked up when rerun) is
replayed with its task's default probe and rule (``oscfast.plan.default_stop``), once with the
wait before issue 18 (``wait="fixed"``: the risk rule stops at t* + max(cap / 15, 0.5 t*), the
knee at t* + 2L once P rose by 0.05) and once per setting of the evidence wait
(``wait="evidence"``, oscfast/stopping.py). **These are replays**: the recorded per-iteration
signals are fed in blocks of 25 iterations as the engine feeds them; the fits do not depend on
the rule, so a replay decides what a live run would.

Per case and wait: the chosen iteration t*, iterations run, their ratio, the estimated wall
time to the image (iterations run x the recorded seconds per twin iteration), plain DIP's time
to its own oracle iteration (oracle iteration + 1 x the recorded seconds per single-fit
iteration), their ratio, and the gap to the plain-DIP oracle (best raw or averaged PSNR of fit
A). The evidence wait's parameters are chosen on the selection half (bench/halves.md) only;
the report half confirms.
"""
from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, machine, machine_header  # noqa: E402
from common import halves as halves_of_cases  # noqa: E402
from rules_study import FOLDER, PLAIN, feed_recorded, load, recorded_signals, run_noise, task_default  # noqa: E402

from oscfast.config import StopConfig
from oscfast.probe import risk_constants
from oscfast.stopping import KneeRule, RiskRule, StopRule

logger = logging.getLogger(__name__)

OUTPUT = RESULTS / "time-to-image-replays"
#: the issue's targets: iterations run / chosen (median, worst), mean gap change (dB)
TARGET_MEDIAN, TARGET_WORST, TARGET_GAP = 1.3, 1.6, 0.05


@dataclass(frozen=True)
class Setting:
    """One wait: its label and the StopConfig fields it sets."""

    label: str
    wait: str
    rise_significance: float = 3.0
    min_wait: int = 75
    jitter_window: int = 400
    knee_floor: float | None = None  # min_rise under the knee's significance test (None: StopConfig's)

    def stop(self) -> StopConfig:
        """The StopConfig of this setting."""
        fields = {"rise_significance": self.rise_significance, "min_wait": self.min_wait,
                  "jitter_window": self.jitter_window, "wait": self.wait}
        if self.knee_floor is not None:
            fields["min_rise"] = self.knee_floor
        return replace(StopConfig(), **fields)


FIXED = Setting("fixed (before)", "fixed")


def settings() -> list[Setting]:
    """The evidence waits compared (the grid the choice is made on)."""
    grid = []
    for z in (3.0, 4.0, 6.0, 8.0):
        for min_wait in (25, 50, 100, 150):
            for window in (200, 400):
                for floor in (0.0, 0.05):
                    grid.append(Setting(f"evidence z{z:g} wait{min_wait} window{window} floor{floor:g}", "evidence",
                                        z, min_wait, window, floor))
    return grid


@dataclass(frozen=True)
class Case:
    """One replay of one wait on one run."""

    run: str
    task: str
    half: str
    rule: str
    output: str
    wait: str
    chosen: int
    chosen_output: str
    stopped: bool
    iterations_run: int
    run_over_chosen: float
    seconds_to_image: float
    oracle_iteration: int
    plain_oracle_seconds: float
    time_ratio: float
    psnr: float
    gap_db: float


def build_rule(rule: str, stop: StopConfig, *, cap: int, output: str, run: dict[str, Any]) -> StopRule:
    """The rule as ``oscfast.plan.make_rule`` builds it, with the wait fields of ``stop``."""
    waits = {"wait": stop.wait, "rise_significance": stop.rise_significance, "min_wait": stop.min_wait,
             "jitter_window": stop.jitter_window}
    if rule == "risk":
        risk = risk_constants("twin", noise_level=run["noise_level"], probe_std=stop.pseudo_noise_std, rho=run["rho"])
        return RiskRule(risk.weight, risk.offset, max_iterations=cap, smoothing=stop.risk_smoothing,
                        patience_ratio=stop.patience_ratio, min_patience=stop.min_patience,
                        error_scale=1.0 / risk.rho, **waits)
    if rule == "knee":
        return KneeRule(max_iterations=cap, half_window=stop.half_window, smoothing=stop.smoothing,
                        patience=stop.patience, significance=stop.significance, min_curvature=stop.min_curvature,
                        min_rise=stop.min_rise, output=output, **waits)
    raise ValueError(f"no wait to compare for rule {rule!r}")


def replay_case(run: dict[str, Any], setting: Setting, half: str, rule_name: str | None = None) -> Case:
    """Replay ``setting``'s wait on ``run`` with the task's default rule (or ``rule_name``)."""
    task = run["experiment"]["task"]
    default = task_default(task, run_noise(run))
    rule_name = rule_name or default.rule
    cap = run["cap"]
    rule = build_rule(rule_name, setting.stop(), cap=cap, output=default.output, run=run)
    feed_recorded(rule, recorded_signals(run, rule.needs, "twin", PLAIN), cap)
    decision = rule.decision
    chosen = cap - 1 if decision.iteration is None else int(decision.iteration)
    iterations_run = int(decision.stop_iteration) if decision.should_stop else cap
    traces = run["traces"]
    psnr = float(traces["psnr_ema" if decision.output == "ema" else "psnr"][PLAIN][chosen])
    raw, ema = traces["psnr"][PLAIN], traces["psnr_ema"][PLAIN]
    oracle_iteration = int(np.nanargmax(ema) if np.nanmax(ema) >= np.nanmax(raw) else np.nanargmax(raw))
    oracle = float(max(np.nanmax(raw), np.nanmax(ema)))
    seconds = iterations_run * run["seconds_per_iteration_twin"]
    plain_seconds = (oracle_iteration + 1) * run["seconds_per_iteration_single"]
    return Case(run["stem"], task, half, rule_name, default.output, setting.label, chosen, decision.output,
                bool(decision.should_stop), iterations_run, iterations_run / max(chosen + 1, 1), seconds,
                oracle_iteration, plain_seconds, seconds / plain_seconds, psnr, oracle - psnr)


def summary(cases: list[Case], before: list[Case]) -> dict[str, float]:
    """Median and worst run / chosen, mean gap and its change against ``before`` (same runs),
    median time ratio, and how many choices moved."""
    ratios = [c.run_over_chosen for c in cases]
    return {
        "runs": len(cases),
        "median_run_over_chosen": statistics.median(ratios),
        "worst_run_over_chosen": max(ratios),
        "mean_gap_db": float(np.mean([c.gap_db for c in cases])),
        "gap_change_db": float(np.mean([c.gap_db for c in cases]) - np.mean([c.gap_db for c in before])),
        "median_time_ratio": statistics.median(c.time_ratio for c in cases),
        "choices_moved": sum((c.chosen, c.chosen_output) != (b.chosen, b.chosen_output) for c, b in zip(cases, before)),
    }


def meets(stats: dict[str, float]) -> bool:
    """The issue's targets on iterations run / chosen and the gap."""
    return (stats["median_run_over_chosen"] <= TARGET_MEDIAN and stats["worst_run_over_chosen"] <= TARGET_WORST
            and abs(stats["gap_change_db"]) <= TARGET_GAP)


def choose(selection: dict[str, list[Case]], fixed: list[Case], guard: dict[str, list[Case]], guard_fixed: list[Case]) -> str:
    """The evidence setting chosen on the selection half: fewest moved choices (the defaults',
    then the knee's on every run), the gap kept, the smallest worst and median run / chosen
    (to 0.05); among those the most conservative (largest z, then longest minimum wait,
    longest jitter window, the floor)."""
    def key(label: str) -> tuple:
        stats = summary(selection[label], fixed)
        setting = next(s for s in settings() if s.label == label)
        return (stats["choices_moved"], summary(guard[label], guard_fixed)["choices_moved"],
                abs(stats["gap_change_db"]) > TARGET_GAP, round(stats["worst_run_over_chosen"] / 0.05),
                round(stats["median_run_over_chosen"] / 0.05), -setting.rise_significance, -setting.min_wait,
                -setting.jitter_window, -(setting.knee_floor or 0.0))
    return min(selection, key=key)


def table(cases: list[Case]) -> list[str]:
    lines = ["| run | half | task | rule | wait | chosen it. (output) | iterations run | run / chosen | s to the image | "
             "plain oracle it. | plain s to oracle | time ratio | gap dB |", "|" + "---|" * 13]
    for c in cases:
        lines.append(f"| {c.run} | {c.half} | {c.task} | {c.rule} | {c.wait} | {c.chosen} ({c.chosen_output}) | "
                     f"{c.iterations_run}{'' if c.stopped else ' (cap)'} | {c.run_over_chosen:.2f} | {c.seconds_to_image:.0f} | "
                     f"{c.oracle_iteration} | {c.plain_oracle_seconds:.0f} | {c.time_ratio:.2f} | {c.gap_db:.3f} |")
    return lines


def stats_line(label: str, stats: dict[str, float]) -> str:
    return (f"| {label} | {stats['runs']} | {stats['median_run_over_chosen']:.2f} | {stats['worst_run_over_chosen']:.2f} | "
            f"{stats['mean_gap_db']:.3f} | {stats['gap_change_db']:+.3f} | {stats['median_time_ratio']:.2f} | "
            f"{stats['choices_moved']} | {'yes' if meets(stats) else 'no'} |")


STATS_HEADER = ["| wait | runs | median run / chosen | worst run / chosen | mean gap dB | gap change dB | "
                "median time ratio | choices moved | targets met |", "|---|---|---|---|---|---|---|---|---|"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--folder", type=Path, default=FOLDER)
    parser.add_argument("--output", type=Path, default=OUTPUT, help="path without suffix (.md and .json written)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    halves = halves_of_cases()
    runs = load(args.folder)
    for run in runs:
        run["half"] = halves.get(run["experiment"]["name"], run["experiment"]["half"])
    by_half = {half: [r for r in runs if r["half"] == half] for half in ("selection", "report")}
    grid = settings()
    results: dict[str, dict[str, list[Case]]] = {}
    for half, members in by_half.items():
        results[half] = {setting.label: [replay_case(r, setting, half) for r in members] for setting in [FIXED, *grid]}
    fixed = results["selection"][FIXED.label]
    selection_runs = by_half["selection"]
    guards = {s.label: [replay_case(r, s, "selection", "knee") for r in selection_runs] for s in [FIXED, *grid]}
    chosen = choose({label: cases for label, cases in results["selection"].items() if label != FIXED.label}, fixed,
                    guards, guards[FIXED.label])
    logger.info("chosen on the selection half: %s", chosen)
    info = machine()
    lines = [
        "# Time to the image: replays of the old and new waits",
        "",
        "Written by `python bench/time_to_image.py` (issue 18). **These are replays**, not new runs: each recorded "
        "twin run in `bench/results/paper/mini/` is fed, in blocks of 25 iterations as the engine feeds it, to its "
        "task's default rule (`oscfast.plan.default_stop`) with the wait before issue 18 (`wait=\"fixed\"`) and with "
        "the evidence waits (`wait=\"evidence\"`). Seconds are the recorded per-iteration seconds of the recording "
        "process (twin step for the rule, single fit for plain DIP), measured while the CPU was shared with another "
        "recording: ratios are indicative, absolute seconds are not idle-machine numbers.",
        "",
        "- run / chosen = iterations run / (chosen iteration + 1); time ratio = s to the image / plain DIP's s to its "
        "own oracle iteration (single-fit seconds per iteration x (oracle iteration + 1)); gap = plain-DIP oracle (best "
        "raw or averaged PSNR of fit A) - PSNR of the returned image (no final projection step in either).",
        f"- targets (issue 18): run / chosen <= {TARGET_MEDIAN} median and <= {TARGET_WORST} worst; mean gap moves by "
        f"<= {TARGET_GAP} dB against the fixed waits.",
        "- halves from `bench/halves.md`: selection " + ", ".join(r["stem"] for r in by_half["selection"])
        + "; report " + (", ".join(r["stem"] for r in by_half["report"]) or "(none recorded yet)") + ".",
        f"- evidence setting chosen on the selection half: **{chosen}** (fewest moved choices, the defaults' then "
        "the knee's on every run; the gap kept; the smallest worst, then median run / chosen, to 0.05; then the most "
        "conservative).",
        "",
        machine_header(info),
        "",
    ]
    for half in ("selection", "report"):
        cases = results[half]
        if not cases[FIXED.label]:
            lines += [f"## {half.capitalize()} half", "", "No recorded run yet.", ""]
            continue
        before = cases[FIXED.label]
        lines += [f"## {half.capitalize()} half", "", *STATS_HEADER, stats_line(FIXED.label, summary(before, before)),
                  stats_line(chosen, summary(cases[chosen], before)), "", *table(before + cases[chosen]), ""]
    lines += ["## Every evidence setting (selection half)", "",
              "Choices moved in the guard: the knee rule on every selection run (below).", "",
              STATS_HEADER[0] + " guard choices moved |", STATS_HEADER[1] + "---|"]
    lines += [stats_line(s.label, summary(results["selection"][s.label], fixed))
              + f" {summary(guards[s.label], guards[FIXED.label])['choices_moved']} |" for s in grid]
    lines += ["", "## Guard: the knee rule with either wait on every run (not the default everywhere)", "",
              "The knee's rise test is what rejects a false knee (a bump in a flat P_twin); the evidence wait must "
              "not confirm one that the fixed wait rejected.", ""]
    guard = [replay_case(r, s, r["half"], "knee") for r in runs for s in (FIXED, next(g for g in grid if g.label == chosen))]
    lines += table(guard) + [""]
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.with_suffix(".md").write_text("\n".join(lines) + "\n")
    payload = {
        "chosen": chosen,
        "machine": info,
        "halves": {half: [r["stem"] for r in members] for half, members in by_half.items()},
        "cases": {half: {label: [asdict(c) for c in cases] for label, cases in per.items()} for half, per in results.items()},
        "guard": [asdict(c) for c in guard],
    }
    args.output.with_suffix(".json").write_text(json.dumps(payload, indent=1))
    logger.info("wrote %s(.md, .json)", args.output)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
