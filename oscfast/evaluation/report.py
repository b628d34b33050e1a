"""Reports of recorded evaluation runs: per-run tables, a per-rule summary, figures.

Shared by ``bench/paper.py report`` (the paper's five tables) and ``oscfast evaluate`` (any
folder of clean images). A *run* is the dict :func:`oscfast.evaluation.to_payload` makes (and
the JSON + NPZ pair on disk): the twin run's per-iteration traces, each watched rule's
decision, the cap, costs, and what the image was. Every number is computed from the traces
with :func:`oscfast.evaluation.outcome`, so the tables cannot disagree with the curves.
"""
from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from oscfast.evaluation.recording import PLAIN, PROBED, RuleOutcome, oracle, outcome

__all__ = ["load_runs", "rule_outcomes", "run_rows", "summary_rows", "markdown_report", "plot_run"]

#: the rules reported next to the default, by watch label
PEERS = ("es-wmv", "es-emv")


def load_runs(folder: Path) -> list[dict[str, Any]]:
    """Every ``*.json`` (+ ``.npz`` traces) under ``folder``, sorted by name."""
    runs = []
    for path in sorted(Path(folder).glob("*.json")):
        payload = json.loads(path.read_text())
        traces = path.with_suffix(".npz")
        if not traces.is_file():
            continue
        payload["traces"] = {name: np.asarray(values, dtype=np.float64) for name, values in np.load(traces).items()}
        payload["stem"] = path.stem
        runs.append(payload)
    return runs


def rule_outcomes(run: Mapping[str, Any], metric: str = "psnr") -> dict[str, RuleOutcome]:
    """Each watched rule's outcome on a run (live decisions), plus ``fixed-raw``/``fixed-ema``."""
    traces = run["traces"]
    rows: dict[str, RuleOutcome] = {}
    for label, decision, fit, probe in zip(run["labels"], run["decisions"], run["fits"], run["probes"]):
        rows[label] = outcome(
            traces, label=label, iteration=decision["iteration"], output=decision["output"], fit=fit,
            stop_iteration=decision["stop_iteration"] if decision["should_stop"] else None,
            fits_needed=2 if probe == "twin" else 1, metric=metric,
        )
    for output in ("raw", "ema"):
        rows[f"fixed-{output}"] = outcome(traces, label=f"fixed-{output}", iteration=run["cap"] - 1, output=output,
                                          fit=PLAIN, stop_iteration=None, fits_needed=1, metric=metric)
    return rows


def _seconds(run: Mapping[str, Any], result: RuleOutcome) -> float:
    per_iteration = run["seconds_per_iteration_twin"] if result.fits_needed == 2 else run.get("seconds_per_iteration_single")
    return float("nan") if per_iteration is None else result.iterations_run * per_iteration


def run_rows(runs: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One row per run in the paper's layout, with our extra columns."""
    rows = []
    for run in runs:
        traces = run["traces"]
        metric_names = ["psnr"] + (["psnr_y"] if "psnr_y" in traces else [])
        title = run.get("title") or run.get("experiment", {}).get("title") or run["stem"]
        row: dict[str, Any] = {"stem": run["stem"], "title": title, "seed": run.get("seed", 0),
                               "cap": run["cap"], "published": run.get("published_iterations", run["cap"])}
        for metric in metric_names:
            outcomes = rule_outcomes(run, metric)
            suffix = "" if metric == "psnr" else "_y"
            default = outcomes["default"]
            plain_raw, plain_ema = traces[metric][PLAIN], traces[f"{metric}_ema"][PLAIN]
            probed_raw, probed_ema = traces[metric][PROBED], traces[f"{metric}_ema"][PROBED]
            row.update({
                f"dip_max{suffix}": oracle(traces, metric),
                f"dip_max_raw{suffix}": float(np.nanmax(plain_raw)),
                f"dip_count_raw{suffix}": float(plain_raw[run["cap"] - 1]),
                f"dip_count_ema{suffix}": float(plain_ema[run["cap"] - 1]),
                f"osc_max{suffix}": float(max(np.nanmax(probed_raw), np.nanmax(probed_ema))),
                f"default_psnr{suffix}": default.psnr,
                f"default_gap{suffix}": default.gap_db,
            })
            for label in ("inline-risk", "inline-paper", *PEERS):
                if label in outcomes:
                    row[f"{label}_psnr{suffix}"] = outcomes[label].psnr
                    row[f"{label}_gap{suffix}"] = outcomes[label].gap_db
        outcomes = rule_outcomes(run)
        default = outcomes["default"]
        row.update({
            "default_iteration": default.iteration, "default_output": default.output,
            "default_iterations_run": default.iterations_run, "default_seconds": _seconds(run, default),
            "default_accuracy_raw": default.accuracy_raw, "default_accuracy_ema": default.accuracy_ema,
            "returned_psnr": run.get("returned_psnr"),
            "fixed_seconds": run["cap"] * (run.get("seconds_per_iteration_single") or float("nan")),
        })
        for label in (*PEERS, "inline-risk"):
            if label in outcomes:
                row[f"{label}_iterations_run"] = outcomes[label].iterations_run
                row[f"{label}_seconds"] = _seconds(run, outcomes[label])
        rows.append(row)
    return rows


def summary_rows(runs: Sequence[Mapping[str, Any]], labels: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Per rule over the runs: within 95% (like-for-like accuracy of the output it returns),
    mean and worst gap, median iterations run as a share of the published count."""
    per_rule: dict[str, list[tuple[RuleOutcome, Mapping[str, Any]]]] = {}
    for run in runs:
        for label, result in rule_outcomes(run).items():
            per_rule.setdefault(label, []).append((result, run))
    rows = []
    for label, results in per_rule.items():
        if labels is not None and label not in labels and not label.startswith("fixed"):
            continue
        accuracies = [r.accuracy_ema if r.output == "ema" else r.accuracy_raw for r, _ in results]
        gaps = [r.gap_db for r, _ in results]
        shares = [r.iterations_run / run.get("published_iterations", run["cap"]) for r, run in results]
        rows.append({
            "rule": label, "runs": len(results), "within_95": sum(a >= 0.95 for a in accuracies),
            "mean_gap": float(np.mean(gaps)), "worst_gap": float(np.max(gaps)),
            "median_share": float(np.median(shares)),
            "mean_seconds": float(np.nanmean([_seconds(run, r) for r, run in results])),
        })
    return sorted(rows, key=lambda row: row["mean_gap"])


def _fmt(value: Any, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def markdown_report(runs: Sequence[Mapping[str, Any]], *, title: str, header: str = "",
                    groups: Mapping[str, Sequence[str]] | None = None, labels: Sequence[str] | None = None) -> str:
    """The report: per group (e.g. the paper's tables) a table of runs, then the summary."""
    rows = {row["stem"]: row for row in run_rows(runs)}
    groups = groups or {"Runs": [run["stem"] for run in runs]}
    lines = [f"# {title}", "", header, ""]
    y = any("dip_max_y" in row for row in rows.values())
    for name, stems in groups.items():
        stems = [s for s in stems if s in rows]
        if not stems:
            continue
        lines += [f"## {name}", ""]
        columns = [
            ("run", lambda r: r["title"] + (f" (seed {r['seed']})" if r["seed"] else "")),
            ("DIP (PSNR): plain max, raw or avg", lambda r: _fmt(r["dip_max"])),
            ("DIP (Iteration): plain at the count, raw / avg", lambda r: f"{_fmt(r['dip_count_raw'])} / {_fmt(r['dip_count_ema'])}"),
            ("OSC run max (y+n)", lambda r: _fmt(r["osc_max"])),
            ("default: PSNR (it., output)", lambda r: f"{_fmt(r['default_psnr'])} ({r['default_iteration']}, {r['default_output']})"),
            ("default: gap dB", lambda r: _fmt(r["default_gap"])),
            ("default: accuracy raw/raw, avg/avg", lambda r: f"{100 * r['default_accuracy_raw']:.1f}% / {100 * r['default_accuracy_ema']:.1f}%"),
            ("default: its run / s", lambda r: f"{r['default_iterations_run']} / {_fmt(r['default_seconds'], 0)}"),
            ("paper rule (inline): PSNR / gap", lambda r: f"{_fmt(r.get('inline-paper_psnr'))} / {_fmt(r.get('inline-paper_gap'))}"),
            ("inline risk (before): PSNR / gap", lambda r: f"{_fmt(r.get('inline-risk_psnr'))} / {_fmt(r.get('inline-risk_gap'))}"),
            ("ES-WMV: PSNR / gap / its", lambda r: f"{_fmt(r.get('es-wmv_psnr'))} / {_fmt(r.get('es-wmv_gap'))} / {r.get('es-wmv_iterations_run', '-')}"),
            ("ES-EMV: PSNR / gap / its", lambda r: f"{_fmt(r.get('es-emv_psnr'))} / {_fmt(r.get('es-emv_gap'))} / {r.get('es-emv_iterations_run', '-')}"),
            ("fixed count: its / s", lambda r: f"{r['cap']} / {_fmt(r['fixed_seconds'], 0)}"),
        ]
        if y and any("dip_max_y" in rows[s] for s in stems):
            columns.insert(2, ("Y-PSNR: plain max / default / gap", lambda r: (
                f"{_fmt(r.get('dip_max_y'))} / {_fmt(r.get('default_psnr_y'))} / {_fmt(r.get('default_gap_y'))}" if "dip_max_y" in r else "-")))
        lines.append("| " + " | ".join(c for c, _ in columns) + " |")
        lines.append("|" + "---|" * len(columns))
        for stem in stems:
            lines.append("| " + " | ".join(f(rows[stem]) for _, f in columns) + " |")
        lines.append("")
    summary = summary_rows(runs, labels)
    lines += [
        "## Summary per rule", "",
        "within 95% = like-for-like accuracy (raw/raw or avg/avg of the output it returns) >= 95%; gap = plain-DIP "
        "oracle - returned PSNR (final step applied to both); share = iterations run / published count; seconds = "
        "iterations run x the seconds per iteration of the fits the rule needs (measured in the same process).", "",
        "| rule | runs | within 95% | mean gap dB | worst gap dB | median share of count | mean s |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in summary:
        lines.append(f"| {row['rule']} | {row['runs']} | {row['within_95']}/{row['runs']} | {row['mean_gap']:.2f} | "
                     f"{row['worst_gap']:.2f} | {row['median_share']:.2f} | {_fmt(row['mean_seconds'], 0)} |")
    return "\n".join(lines) + "\n"


def plot_run(run: Mapping[str, Any], path: Path, *, labels: Sequence[str] = ("default", "inline-paper", "es-wmv", "es-emv")) -> Path:
    """A figure like the paper's Figure 1: normalised P (inline and twin), the PSNR of both runs,
    each rule's choice and stop marked."""
    from oscfast.plotting import pyplot, save_figure

    plt = pyplot()
    traces = run["traces"]
    outcomes = rule_outcomes(run)
    figure, (top, bottom) = plt.subplots(2, 1, figsize=(7, 5), sharex=True)
    for name, series in (("P inline (fit on y + n)", traces["p"][PROBED]), ("P twin (B - A)", traces["p"][PROBED] - traces["p"][PLAIN])):
        low, high = np.nanmin(series), np.nanmax(series)
        top.plot((series - low) / (high - low if high > low else 1.0), label=name, linewidth=1)
    top.set_title(f"{run.get('title', run['stem'])}: P, min-max normalised", fontsize=9)
    bottom.plot(traces["psnr_ema"][PLAIN], label="plain DIP (avg)", linewidth=1)
    bottom.plot(traces["psnr"][PLAIN], label="plain DIP (raw)", linewidth=0.6, alpha=0.6)
    bottom.plot(traces["psnr_ema"][PROBED], label="DIP on y + n (avg)", linewidth=1)
    bottom.set_ylabel("PSNR (dB)")
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for colour, label in zip(colours[3:] + colours, labels):
        if label not in outcomes:
            continue
        result = outcomes[label]
        for axis in (top, bottom):
            axis.axvline(result.iteration, color=colour, linewidth=1, label=f"{label}: {result.iteration}" if axis is bottom else None)
            if result.iterations_run < run["cap"]:
                axis.axvline(result.iterations_run, color=colour, linewidth=0.8, linestyle=":")
    for axis in (top, bottom):
        axis.legend(fontsize=6, loc="best")
    bottom.set_xlabel("iteration (solid: choice, dotted: stop)")
    return save_figure(figure, path, dpi=100)
