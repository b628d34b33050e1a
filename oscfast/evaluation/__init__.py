"""Honest evaluation of stop rules, in three parts:

- :mod:`~oscfast.evaluation.recording`: one twin run records plain DIP and DIP on y + n side
  by side with every candidate rule watching live (:func:`record`), and scores each rule on it
  (:func:`outcome`: the gap to the plain-DIP oracle, like-for-like accuracies);
- :mod:`~oscfast.evaluation.report`: the tables, the per-rule summary and the figures of a
  folder of recorded runs;
- :mod:`~oscfast.evaluation.harness`: ``oscfast evaluate CLEAN_DIR``: degrade your own clean
  images, record them and write the report.
"""
from __future__ import annotations

from oscfast.evaluation.recording import (
    PLAIN,
    PROBED,
    Candidate,
    EvalRecord,
    RuleOutcome,
    candidate_rules,
    oracle,
    outcome,
    outcomes,
    record,
    save_run,
    to_payload,
)

__all__ = [
    "PLAIN",
    "PROBED",
    "Candidate",
    "EvalRecord",
    "RuleOutcome",
    "candidate_rules",
    "oracle",
    "outcome",
    "outcomes",
    "record",
    "save_run",
    "to_payload",
]
