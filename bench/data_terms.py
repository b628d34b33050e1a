"""Data terms of the noise models against the ones they replaced (issue 16), on recorded runs.

    python bench/data_terms.py

Reads the twin recordings of the ES-WMV benchmark's files (`bench/paper.py run`): the runs with
the present data terms in ``bench/results/paper/mini/``, and earlier runs kept in subfolders:
salt and pepper with L1 on every value (``l1/``; now MSE on the values salt and pepper left
alone, known values put back) and shot noise with the Poisson likelihood (``nll/``; now MSE,
which the risk rule reads). Fit A of a twin recording is plain DIP (it never sees the probe), so
per case the table compares plain DIP with each data term, raw and averaged output: its best
PSNR over the run (the oracle) and where it came, and its PSNR at the cap; and the default rule
of the model, replayed on each recording (``bench/rules_study.py``: these are replays), with its
gap to that recording's oracle. Writes ``bench/results/data-terms.md``.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, machine, machine_header, write_results  # noqa: E402
from rules_study import default_candidate, replay, run_noise  # noqa: E402

FOLDER = RESULTS / "paper" / "mini"
#: (noise kind, data term) -> folder of its recordings
FOLDERS = {
    ("impulse", "MSE on the known values"): FOLDER, ("impulse", "L1 on every value"): FOLDER / "l1",
    ("poisson", "MSE"): FOLDER, ("poisson", "Poisson likelihood"): FOLDER / "nll",
}
PLAIN = 0


def recorded_runs(folder: Path, kind: str) -> dict[str, dict[str, Any]]:
    """Experiment name -> recording, for the runs of noise ``kind`` in ``folder``."""
    runs = {}
    for path in sorted(folder.glob(f"eswmv-*-{kind}*-s0.json")):
        if "as-gaussian" in path.stem:
            continue
        payload = json.loads(path.read_text())
        payload["traces"] = dict(np.load(path.with_suffix(".npz")))
        payload["stem"] = path.stem
        runs[payload["experiment"]["name"]] = payload
    return runs


def curve_summary(run: dict[str, Any]) -> dict[str, float]:
    """Fit A's best PSNR, its iteration and the PSNR at the cap, per output."""
    out: dict[str, float] = {}
    for output, key in (("raw", "psnr"), ("ema", "psnr_ema")):
        curve = run["traces"][key][PLAIN]
        out[f"best_{output}"] = float(curve.max())
        out[f"peak_{output}"] = int(curve.argmax())
        out[f"cap_{output}"] = float(curve[-1])
    out["seconds_per_iteration_single"] = float(run.get("seconds_per_iteration_single", float("nan")))
    default = replay(run, default_candidate(run["experiment"]["task"], run_noise(run)))
    out.update(default_iteration=default.iteration, default_output=default.output, default_psnr=default.psnr,
               default_gap=default.gap_db, default_run=default.iterations_run)
    return out


def markdown(rows: list[dict[str, Any]], info: dict[str, Any]) -> str:
    lines = [
        "# Data terms of the noise models against the ones they replaced (recorded curves and replays)",
        "",
        "Written by `python bench/data_terms.py` from the twin recordings of `bench/paper.py run` "
        "(fit A of a twin run is plain DIP: it never sees the probe). 128 px centre crops of the ES-WMV "
        "benchmark's files, cap 1500, seed 0, the denoising skip net of the F16 preset. PSNR on RGB, "
        "with each data term's own final step (known values put back for the known-value MSE; none otherwise). "
        "Oracle = best PSNR of plain DIP over the run (raw / averaged output); at the cap = plain DIP run to the cap; "
        "default = the model's default rule today (twin + knee for impulse, twin + risk for shot noise) **replayed** "
        "on that recording (`bench/rules_study.py`), its gap to the same recording's oracle and the iterations it ran.",
        "",
        machine_header(info),
        "",
        "| case | half | data term | oracle raw dB (iteration) | oracle averaged dB (iteration) | at the cap raw / averaged dB | default (replay): returned dB (iteration, output) | its gap dB | iterations run |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row['case']} | {row['half']} | {row['term']} | {row['best_raw']:.2f} ({row['peak_raw']}) | "
            f"{row['best_ema']:.2f} ({row['peak_ema']}) | {row['cap_raw']:.2f} / {row['cap_ema']:.2f} | "
            f"{row['default_psnr']:.2f} ({row['default_iteration']}, {row['default_output']}) | {row['default_gap']:.2f} | "
            f"{row['default_run']} |"
        )
    cases = sorted({row["case"] for row in rows})
    both = [c for c in cases if len({r["term"] for r in rows if r["case"] == c}) == 2]
    lines += ["", f"Cases recorded with both data terms: {', '.join(both) if both else 'none yet'}."]
    for case in both:
        new, old = (r for r in rows if r["case"] == case)  # present term first (FOLDERS order)
        best_new, best_old = max(new["best_raw"], new["best_ema"]), max(old["best_raw"], old["best_ema"])
        lines.append(f"- {case}: the oracle with {new['term']} is {best_new - best_old:+.2f} dB against {old['term']} "
                     f"({best_new:.2f} vs {best_old:.2f}); the default returned {new['default_psnr']:.2f} vs "
                     f"{old['default_psnr']:.2f} dB ({new['default_psnr'] - old['default_psnr']:+.2f}).")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    rows = []
    order = list(FOLDERS)
    for (kind, term), folder in FOLDERS.items():
        for name, run in recorded_runs(folder, kind).items():
            rows.append({"case": name, "half": run["experiment"]["half"], "term": term, "order": order.index((kind, term)),
                         "recorded": run["machine"].get("date"), **curve_summary(run)})
    if not rows:
        print("no recording of the compared noise kinds under", FOLDER)
        return 1
    rows.sort(key=lambda r: (r["case"], r["order"]))
    info = machine()
    out = write_results("data-terms", markdown(rows, info), {"machine": info, "rows": rows})
    print(out.read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
