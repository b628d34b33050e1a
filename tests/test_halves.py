"""bench/halves.md is the one record of which case is in which half: the recorder agrees with it."""
from __future__ import annotations

import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "bench"
sys.path.insert(0, str(BENCH))

from common import halves, parse_halves  # noqa: E402


def test_every_recorded_experiment_has_the_half_the_file_gives() -> None:
    import paper  # noqa: PLC0415 - bench/paper.py

    record = halves()
    missing = [e.name for e in paper.EXPERIMENTS if e.name not in record]
    assert not missing, f"experiments missing from bench/halves.md: {missing}"
    differ = {e.name: (e.half, record[e.name]) for e in paper.EXPERIMENTS if e.half != record[e.name]}
    assert not differ, f"bench/paper.py and bench/halves.md disagree: {differ}"


def test_cases_that_shaped_a_rule_are_selection_cases() -> None:
    record = halves()
    for name in ("f16", "snail", "vase", "kate-jpeg", "kate-pixels", "library"):
        assert record[name] == "selection", name


def test_the_parser_reads_rows_and_set14_lists() -> None:
    text = "| a, b-x4 | report | why |\n| Set14 x4 and x8: zebra | selection | - |\n| c | neither | - |\n"
    assert parse_halves(text) == {"a": "report", "b-x4": "report", "zebra-x4-set14": "selection",
                                  "zebra-x8-set14": "selection"}
