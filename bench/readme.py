"""Regenerate the README's measured results from the files under bench/results/.

    python bench/readme.py            # rewrite the generated blocks of README.md in place
    python bench/readme.py --check    # exit 1 if README.md is not what the files say

Each block sits between ``<!-- generated: NAME -->`` and ``<!-- end: NAME -->``; everything
outside the blocks is hand-written. No number in a block is typed: each is read from a result
file written by a bench script, and the block names that file.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, RESULTS  # noqa: E402

README = REPO / "README.md"
PAPER = RESULTS / "paper" / "mini"


def _cpu(info: dict) -> str:
    return info.get("gpu") or (f"{info.get('cpu_model', info.get('processor'))}, {info.get('cpu_count')} cores, "
                               f"{info.get('cpu_capability', '?')}, native bf16: {info.get('native_bf16', '?')}")


def block_demo() -> str:
    files = sorted(path for path in RESULTS.glob("demo-*.json") if path.stem != "demo-replays")
    if not files:
        return "_No demo run recorded yet (`python bench/demo_run.py`)._"
    row = json.loads(files[-1].read_text())
    rule = f", {row['probe']} probe + {row['rule']} rule" if "rule" in row else ""
    return (f"On the development machine ({_cpu(row['machine'])}) it took {row['seconds']:.0f} s "
            f"(`python bench/demo_run.py`, `bench/results/{files[-1].with_suffix('.md').name}`): noisy input "
            f"{row['noisy_psnr']:.2f} dB, restored {row['restored_psnr']:.2f} dB ({row['output']} output of iteration "
            f"{row['stop_iteration']}{rule}), stopped after {row['iterations_run']} of {row['cap']} iterations"
            + (f", load average {row['load_before']:.2f} before the run"
               + ("" if row.get("idle_machine") else " (**not an idle machine**: other work shared the CPU)")
               if "load_before" in row else "")
            + (f"; estimated PSNR {row['estimated_psnr']:.2f} dB." if row.get("estimated_psnr") is not None
               else f"; no PSNR estimate printed ({row['estimated_psnr_reason']})." if row.get("estimated_psnr_reason")
               else "."))


def block_rules() -> str:
    from rules_study import FOLDER, candidates, load, study

    runs = load(FOLDER)
    if not runs:
        return "_No recorded runs yet (`python bench/paper.py run --scale mini`)._"
    grid = candidates()
    lines = [
        "Replays of each rule on the twin runs recorded by `python bench/paper.py run --scale mini` "
        "(`python bench/rules_study.py --report`, full tables in `bench/results/rules.md`). Gap = plain-DIP oracle "
        "(best raw or averaged PSNR of the plain fit of the same run, known pixels put back for masked tasks) minus "
        "the returned PSNR; share = iterations run / published count; fixed = plain DIP at the published count "
        "(the better of its raw and averaged output).",
        "",
        "| family | half | runs | default: mean / worst gap dB | ES-WMV | ES-EMV | inline risk (the old default) | fixed count | default: share of count | default / fixed: s to the image |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for half in ("selection", "report"):
        table = study([r for r in runs if r["experiment"]["half"] == half], grid)
        for family in sorted(table):
            rows = table[family]

            def gaps(label: str, rows: dict = rows) -> str:
                values = [v[1] for v in rows.get(label, [])]
                return f"{np.mean(values):.2f} / {np.max(values):.2f}" if values else "-"

            names = sorted({v[0] for v in rows["default"]})
            lines.append(
                f"| {family} | {half} | {', '.join(names)} | **{gaps('default')}** | {gaps('es-wmv')} | {gaps('es-emv')} | "
                f"{gaps('inline-risk (before)')} | {gaps('fixed count (plain DIP, better output)')} | "
                f"{np.mean([v[2] for v in rows['default']]):.2f} | {np.mean([v[3] for v in rows['default']]):.0f} / "
                f"{np.mean([v[3] for v in rows['fixed count (plain DIP, better output)']]):.0f} |"
            )
    return "\n".join(lines)


def block_default_runs() -> str:
    path = PAPER / "default-runs.md"
    if not path.is_file():
        return "_No run driven by the default yet (`python bench/paper.py default --scale mini --only NAMES`)._"
    table = [line for line in path.read_text().splitlines() if line.startswith("|")]
    return ("Runs that the default itself drove (`oscfast.restore()`, stopping when the rule fired; "
            "`python bench/paper.py default`, `bench/results/paper/mini/default-runs.md`):\n\n" + "\n".join(table))


def block_paper_summary() -> str:
    path = PAPER / "report.md"
    if not path.is_file():
        return "_No paper report yet (`python bench/paper.py report --scale mini`)._"
    text = path.read_text()
    section = text[text.index("## Summary per rule"):] if "## Summary per rule" in text else ""
    table = [line for line in section.splitlines() if line.startswith("|")]
    keep = ("es-wmv", "es-emv", "inline-paper", "inline-risk", "fixed-raw", "fixed-ema")
    rows = [line for line in table[2:] if line.split("|")[1].strip() in keep]
    return ("The paper's rule and the peers as they watched every recorded run live, all runs of both halves "
            "(`bench/results/paper/mini/report.md`, with the paper's tables and a figure per run; the defaults' "
            "rows are above, since most runs were recorded before the choice):\n\n" + "\n".join(table[:2] + rows))


def block_noise_study() -> str:
    """Issue 15's replays: today's risk rule against the level-cut one, per family and half."""
    path = RESULTS / "noise-study.json"
    if not path.exists():
        return "_No noise study yet (`python bench/noise_study.py`)._"
    data = json.loads(path.read_text())
    rows = data["rows"]
    labels = [("today", "today's rule (estimated level)"), ("ours", "with the level cut (default)"),
              ("today, told the truth", "today's, told the true level"), ("today, told 0.8x", "today's, level 0.8x"),
              ("ours, told 0.8x", "cut, level 0.8x"), ("today, told 1.2x", "today's, level 1.2x"),
              ("ours, told 1.2x", "cut, level 1.2x"), ("ES-EMV (ema)", "ES-EMV (averaged)"), ("ES-EMV (raw)", "ES-EMV (raw)"),
              ("ES-WMV (ema)", "ES-WMV (averaged)"), ("ES-WMV (raw)", "ES-WMV (raw)")]
    groups = sorted({(r["family"], r["half"]) for r in rows})
    lines = [
        f"Replays on the recorded twin runs of the noisy families (`python bench/noise_study.py`, "
        f"`bench/results/noise-study.md`; kappa = {data['kappa']} chosen on the selection half). Mean / worst gap "
        "to the plain-DIP oracle in dB; the 0.8x / 1.2x columns give the rule a level estimate off by that factor "
        "(the sensitivity; a level the caller gives is cut only where it is provably too high, kappa = 1).",
        "",
        "| family | half | runs | " + " | ".join(name for _, name in labels) + " |",
        "|---|---|---|" + "---|" * len(labels),
    ]
    for family, half in groups:
        cells = []
        runs = sorted({r["run"] for r in rows if r["family"] == family and r["half"] == half})
        for label, _ in labels:
            gaps = [r["gap_db"] for r in rows if r["family"] == family and r["half"] == half and r["label"] == label]
            cells.append(f"{np.mean(gaps):.2f} / {np.max(gaps):.2f}" if gaps else "-")
        lines.append(f"| {family} | {half} | {', '.join(runs)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def block_throughput() -> str:
    files = sorted(RESULTS.glob("throughput-*.md"))
    if not files:
        return "_No throughput run recorded yet (`python bench/throughput.py`)._"
    parts = []
    for path in files:
        text = path.read_text()
        info = json.loads(path.with_suffix(".json").read_text())["machine"]
        body = text[text.index("naive loop ="):] if "naive loop =" in text else text
        command = re.search(r"command: `([^`]*)`", text)
        parts.append(f"`bench/results/{path.name}` ({_cpu(info)}, load average {info.get('load_average_1m', '?')} "
                     f"with the run; `{command.group(1) if command else ''}`). {body.strip()}")
    return "\n\n".join(parts)


BLOCKS: dict[str, Callable[[], str]] = {
    "demo": block_demo,
    "rules": block_rules,
    "default-runs": block_default_runs,
    "paper-summary": block_paper_summary,
    "throughput": block_throughput,
    "noise-study": block_noise_study,
}


def render(text: str) -> str:
    for name, make in BLOCKS.items():
        pattern = re.compile(rf"(<!-- generated: {re.escape(name)} -->\n).*?(<!-- end: {re.escape(name)} -->)", re.S)
        if not pattern.search(text):
            raise SystemExit(f"README.md has no block {name!r}")
        body = make()
        text = pattern.sub(lambda m, body=body: m.group(1) + body.rstrip("\n") + "\n" + m.group(2), text)
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="only check that README.md is up to date")
    args = parser.parse_args(argv)
    current = README.read_text()
    fresh = render(current)
    if args.check:
        if fresh != current:
            print("README.md is out of date: run python bench/readme.py")
            return 1
        return 0
    README.write_text(fresh)
    print(f"wrote {README}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
