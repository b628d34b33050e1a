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
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, halves, machine, machine_header  # noqa: E402

from oscfast.config import StopConfig
from oscfast.evaluation.recording import Candidate
from oscfast.probe import risk_constants
from oscfast.stopping import Signals, StopRule

#: fit indices of a recorded twin run (oscfast.evaluation.PLAIN / PROBED): fit A on y, fit B on y + n
PLAIN, PROBED = 0, 1

FOLDER = RESULTS / "paper" / "mini"
HALVES = halves()
FAMILIES = {
    "denoise": "denoise", "jpeg": "jpeg", "deblur": "deblur",
    "super_resolution": "sr", "inpaint": "inpaint / pixels", "restore_pixels": "inpaint / pixels",
}


def candidates() -> list[Candidate]:
    grid = [
        Candidate("inline-risk (before)", "inline", "risk"),
        Candidate("inline-knee", "inline", "knee"),
        Candidate("es-wmv", "none", "es-wmv"),
        Candidate("es-emv", "none", "es-emv"),
    ]
    for signal in ("p", "p_ema"):
        for output in ("raw", "ema"):
            for divisor in (7.5, 15.0):
                for rise in (0.0, 0.05):
                    grid.append(Candidate(f"twin-knee {signal} {output} L=cap/{divisor:g} rise{rise:g}", "twin", "knee",
                                          {"signal": signal, "output": output, "divisor": divisor, "min_rise": rise}))
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
        # the half as bench/halves.md says now (a run's own copy may predate a move to selection)
        payload["experiment"]["half"] = HALVES.get(payload["experiment"]["name"], payload["experiment"]["half"])
        runs.append(payload)
    return runs


def run_noise(run: dict[str, Any]) -> str | None:
    """The noise model a recording was restored with (``noise=`` of its task options), or None."""
    return (run["experiment"].get("options") or {}).get("noise")


def task_default(task: str, noise: str | None = None) -> Any:
    """The task's default (probe, rule, output) (``oscfast.plan.default_stop``); for a denoising
    run with another noise model, that model's default (each model is its own task class)."""
    if noise is not None and noise != "gaussian":
        from oscfast.tasks import NOISE_MODEL_TASKS  # noqa: PLC0415

        return NOISE_MODEL_TASKS[noise].default_stop
    # imported here: oscfast.plan imports the engine, which the pure replays below do not need
    try:
        from oscfast.plan import default_stop  # noqa: PLC0415
    except ImportError:  # the engine mid-edit: the defaults live on the task classes too
        from oscfast.tasks import TASKS  # noqa: PLC0415

        return TASKS[task].default_stop
    return default_stop(task)


def recorded_signals(run: dict[str, Any], needs: frozenset[str], probe: str, fit: int) -> dict[str, np.ndarray]:
    """The per-iteration signals a rule ``needs``, from a recorded run: P is P_twin
    (P of fit B - P of fit A) for the twin probe, the inline P of fit B otherwise; the other
    signals are those of ``fit``."""
    traces = run["traces"]
    signals: dict[str, np.ndarray] = {}
    for name in needs:
        if name in ("p", "p_ema"):
            signals[name] = traces[name][PROBED] - (traces[name][PLAIN] if probe == "twin" else 0.0)
        else:
            signals[name] = traces[name][fit]
    return signals


def feed_recorded(rule: StopRule, signals: dict[str, np.ndarray], cap: int, sync_every: int = 25) -> StopRule:
    """Feed recorded signals in blocks of ``sync_every`` iterations, as the engine does, until
    the rule fires or the cap; returns the rule."""
    for start in range(0, cap, sync_every):
        rule.update(Signals(start, {k: v[start : start + sync_every].astype(np.float64) for k, v in signals.items()}))
        if rule.decision.should_stop:
            break
    return rule


def noise_level(run: dict[str, Any], kind: str) -> float:
    if kind == "task":
        return run["noise_level"]
    from bench_paper_access import jpeg_noise_for  # noqa: PLC0415 - lazily, needs ../shared

    return jpeg_noise_for(run)


def replay(run: dict[str, Any], candidate: Candidate, sync_every: int = 25):
    """The candidate's decision on one recorded run, and its outcome."""
    from oscfast.evaluation import outcome  # noqa: PLC0415 - imports the engine
    from oscfast.plan import make_rule  # noqa: PLC0415

    traces = run["traces"]
    cap = run["cap"]
    stop = replace(StopConfig(), **{k: v for k, v in candidate.options.items() if k in StopConfig.__dataclass_fields__})
    task = run["experiment"]["task"]
    output = "ema" if task in ("denoise", "jpeg") else "raw"
    risk = None
    if candidate.rule == "risk":
        level = run["noise_level"] if candidate.noise == "task" else run.get("jpeg_noise_level")
        if level is None:
            return None
        risk = risk_constants(candidate.probe, noise_level=level, probe_std=stop.pseudo_noise_std, rho=run["rho"])
    if candidate.options.get("via_make_rule"):
        rule = make_rule(candidate.rule, stop=stop, max_iterations=cap, output=candidate.options["output"], risk=risk)
    elif candidate.rule == "knee":
        from oscfast.stopping import KneeRule

        options = candidate.options
        rule = KneeRule(max_iterations=cap, half_window=max(50, round(cap / options.get("divisor", 7.5))),
                        significance=options.get("significance", 3.0), output=options.get("output", output),
                        signal=options.get("signal", "p"), min_rise=options.get("min_rise", 0.0))
    else:
        rule = make_rule(candidate.rule, stop=stop, max_iterations=cap, output=output, risk=risk)
    fit = PLAIN if candidate.probe in ("twin", "none") else PROBED
    feed_recorded(rule, recorded_signals(run, rule.needs, candidate.probe, fit), cap, sync_every)
    d = rule.decision
    return outcome(traces, label=candidate.label, iteration=d.iteration, output=d.output, fit=fit,
                   stop_iteration=d.stop_iteration if d.should_stop else None,
                   fits_needed=2 if candidate.probe == "twin" else 1, metric=metric_of(run))


def metric_of(run: dict[str, Any]) -> str:
    """The metric a run is scored on: Y-PSNR with the paper's shave for super-resolution (as the
    paper reports it, recorded as ``psnr_y``), RGB PSNR (final step applied) otherwise."""
    return "psnr_y" if "psnr_y" in run["traces"] else "psnr"


def default_candidate(task: str, noise: str | None = None) -> Candidate:
    """The task's current default (oscfast.plan.default_stop; a noise model's own for ``noise``),
    replayed through make_rule."""
    default = task_default(task, noise)
    return Candidate(f"default: {default.probe}-{default.rule} ({default.output})", default.probe, default.rule,
                     {"output": default.output, "via_make_rule": True})


def fixed_outcome(run: dict[str, Any]) -> tuple[float, float]:
    """Gap of plain DIP at the published count (the better of its raw and averaged output)."""
    from oscfast.evaluation import outcome  # noqa: PLC0415 - imports the engine

    traces = run["traces"]
    values = [outcome(traces, label="fixed", iteration=run["cap"] - 1, output=o, fit=PLAIN, stop_iteration=None,
                      fits_needed=1, metric=metric_of(run)) for o in ("raw", "ema")]
    chosen = max(values, key=lambda r: r.psnr)
    return chosen.gap_db, chosen.psnr


def study(runs: list[dict[str, Any]], grid: list[Candidate]) -> dict[str, dict[str, list[tuple]]]:
    """family -> candidate label -> [(run, gap dB, share of cap, seconds, dB vs fixed)]."""
    rows: dict[str, dict[str, list]] = defaultdict(lambda: defaultdict(list))
    for run in runs:
        task = run["experiment"]["task"]
        family = FAMILIES[task]
        noise = run_noise(run)
        if noise and noise != "gaussian":  # another data term: its own family (issue 16)
            family = f"{family} ({noise})"
        _, fixed = fixed_outcome(run)
        for candidate in [default_candidate(task, noise), *grid]:
            result = replay(run, candidate)
            if result is None:
                continue
            label = "default" if candidate.options.get("via_make_rule") else candidate.label
            seconds = run["seconds_per_iteration_twin"] if result.fits_needed == 2 else run["seconds_per_iteration_single"]
            rows[family][label].append((run["stem"], result.gap_db, result.iterations_run / run["cap"],
                                        result.iterations_run * seconds, result.psnr - fixed))
        gap, _ = fixed_outcome(run)
        rows[family]["fixed count (plain DIP, better output)"].append((run["stem"], gap, 1.0, run["cap"] * run["seconds_per_iteration_single"], 0.0))
    return rows


def _line(label: str, values: list[tuple]) -> str:
    gaps = [v[1] for v in values]
    return (f"| {label} | {len(values)} | {np.mean(gaps):.2f} | {np.max(gaps):.2f} | {np.mean([v[2] for v in values]):.2f} | "
            f"{np.mean([v[3] for v in values]):.0f} | {np.mean([v[4] for v in values]):+.2f} |")


def markdown(selection: dict, report: dict, runs: list[dict[str, Any]], top: int) -> str:
    info = machine()
    halves = defaultdict(list)
    for run in runs:
        halves[run["experiment"]["half"]].append(run["stem"])
    lines = [
        "# Which probe and rule per task family (replays)",
        "",
        "Written by `python bench/rules_study.py --report` from the twin runs that `bench/paper.py run --scale mini` "
        "recorded (`bench/results/paper/mini/`). **These are replays**: every candidate rule is fed the recorded "
        "signals in blocks of 25 iterations, exactly as the engine feeds it, so a replay decides what a live run "
        "of that rule would (the fits do not depend on the rule). The default's numbers from runs it drove itself "
        "are in `bench/results/paper/mini/default-runs.md` (`python bench/paper.py default`).",
        "",
        f"- selection half (rules and parameters chosen on these only): {', '.join(sorted(halves['selection']))}",
        f"- report half (held back, looked at after the choice): {', '.join(sorted(halves['report']))}",
        "- gap = plain-DIP oracle (best raw or averaged PSNR of the plain fit, final step applied) - PSNR of the "
        "returned image; share = iterations run / published count; s to the image = iterations run x seconds per "
        "iteration of the fits the rule needs (two for the twin, measured in the recording process, CPU shared with "
        "another recording); vs fixed = returned PSNR - plain DIP at the published count (its better output).",
        "- current defaults (`oscfast.plan.default_stop`): "
        + "; ".join(f"{task}: {d.probe} probe, {d.rule} rule, {d.output} output"
                    for task, d in ((task, task_default(task)) for task in dict.fromkeys(FAMILIES))),
        "",
        machine_header(info),
        "",
    ]
    header = ("| candidate | runs | mean gap dB | worst gap dB | share of cap | s to the image | vs fixed dB |\n"
              "|---|---|---|---|---|---|---|")
    for family in sorted(set(selection) | set(report)):
        lines += [f"## {family}", ""]
        table = selection.get(family)
        if table:
            lines += [f"Selection half ({', '.join(sorted({v[0] for vs in table.values() for v in vs}))}), best {top} candidates and the reference rows:", "", header]
            ranked = sorted(table.items(), key=lambda item: (np.mean([v[1] for v in item[1]]), np.max([v[1] for v in item[1]])))
            shown = [label for label, _ in ranked[:top]]
            for label in ("default", "es-wmv", "es-emv", "inline-risk (before)", "fixed count (plain DIP, better output)"):
                if label in table and label not in shown:
                    shown.append(label)
            lines += [_line(label, table[label]) for label in shown] + [""]
        else:
            lines += ["No selection run of this family: its default follows the closest family (see plan.py).", ""]
        table = report.get(family)
        if table:
            lines += [f"Report half ({', '.join(sorted({v[0] for vs in table.values() for v in vs}))}), the default and the references:", "", header]
            for label in ("default", "es-wmv", "es-emv", "inline-risk (before)", "fixed count (plain DIP, better output)"):
                if label in table:
                    lines.append(_line(label, table[label]))
            lines += ["", "Per run (report half, default): " + ", ".join(f"{stem} {gap:.2f} dB at {share:.2f} of the count"
                                                                     for stem, gap, share, *_ in table["default"]), ""]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--report", action="store_true", help="also the held-back half, and write bench/results/rules.md")
    parser.add_argument("--folder", type=Path, default=FOLDER)
    parser.add_argument("--top", type=int, default=8, help="candidates shown per family in rules.md")
    args = parser.parse_args(argv)
    runs = load(args.folder)
    grid = candidates()
    selection = study([r for r in runs if r["experiment"]["half"] == "selection"], grid)
    for family, table in selection.items():
        print(f"\n== {family} ({', '.join(sorted({s for v in table.values() for s, *_ in v}))})")
        ranked = sorted(table.items(), key=lambda item: np.mean([g for _, g, *_ in item[1]]))
        for label, values in ranked:
            gaps = [g for _, g, *_ in values]
            print(f"  {label:38s} mean gap {np.mean(gaps):5.2f}  worst {np.max(gaps):5.2f}  "
                  f"share of cap {np.mean([f for _, _, f, *_ in values]):4.2f}  vs fixed {np.mean([v[-1] for v in values]):+5.2f} dB")
    if args.report:
        report = study([r for r in runs if r["experiment"]["half"] == "report"], grid)
        path = RESULTS / "rules.md"
        path.write_text(markdown(selection, report, runs, args.top))
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
