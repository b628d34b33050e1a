"""The stop rules against computations written independently of them: the risk rule's choice is
the argmin of the trailing-mean risk, and no rule changes its choice once it has stopped."""
from __future__ import annotations

import numpy as np
import pytest

from oscfast.stopping import KneeRule, RiskRule, Signals


def _feed(rule, chunk: int, **signals: np.ndarray) -> None:
    n = next(iter(signals.values())).size
    for first in range(0, n, chunk):
        rule.update(Signals(first, {k: v[first : first + chunk] for k, v in signals.items()}))


def _noisy_risk_signals(cap: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A loss that falls then flattens, and a P that rises: their risk has one broad minimum
    under noise, the shape DIP gives."""
    rng = np.random.default_rng(seed)
    s = np.arange(cap, dtype=float)
    loss = 0.02 * np.exp(-s / 150) + 0.01 + rng.normal(0, 2e-4, cap)
    p = 0.3 * (1 - np.exp(-s / 400)) + rng.normal(0, 2e-3, cap)
    return loss, p


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("wait", ["fixed", "evidence"])
def test_risk_choice_is_the_argmin_of_the_trailing_mean_risk(seed: int, wait: str) -> None:
    cap, weight, offset, smoothing = 1500, 0.02, -0.004, 9
    loss, p = _noisy_risk_signals(cap, seed)
    # never stops before the cap: the choice is the minimum over the whole run
    rule = RiskRule(weight, offset, max_iterations=cap, smoothing=smoothing, outputs=("raw",), min_patience=cap,
                    patience_ratio=10.0, wait=wait)
    _feed(rule, 25, loss=loss, p=p)
    risk = loss + weight * p + offset
    window_means = np.convolve(risk, np.ones(smoothing) / smoothing, mode="valid")  # mean of risk[t-8 .. t], t >= 8
    end = int(np.argmin(window_means)) + smoothing - 1  # the window's last iteration
    expected = end - (smoothing - 1) // 2  # the rule reports the window's centre
    assert rule.decision.iteration == expected
    assert rule.decision.output == "raw"


def test_risk_choice_is_frozen_once_the_rule_stopped() -> None:
    cap = 1200
    loss, p = _noisy_risk_signals(cap, 0)
    risk_weight = 0.02
    rule = RiskRule(risk_weight, max_iterations=cap, smoothing=9, outputs=("raw",), min_patience=60, patience_ratio=0.2)
    _feed(rule, 25, loss=loss[:600], p=p[:600])
    first = rule.decision
    assert first.should_stop, "the rule must have stopped on the first part"
    # a later, much lower minimum arrives after the stop: the choice and the stop stay
    later_loss = loss[600:] - 0.01
    _feed_from(rule, 600, 25, loss=later_loss, p=p[600:])
    assert rule.decision.iteration == first.iteration
    assert rule.decision.stop_iteration == first.stop_iteration


def _feed_from(rule, start: int, chunk: int, **signals: np.ndarray) -> None:
    n = next(iter(signals.values())).size
    for first in range(0, n, chunk):
        rule.update(Signals(start + first, {k: v[first : first + chunk] for k, v in signals.items()}))


def test_knee_choice_is_frozen_once_the_rule_stopped() -> None:
    s = np.arange(600, dtype=float)
    knee = np.where(s < 200, 1e-4 * s, 0.02 + (s - 200) * 1e-3)
    later = 0.4 + np.linspace(0, 1, 400) ** 2 * 5  # a later, sharper bend
    p = np.r_[knee, later]
    rule = KneeRule(max_iterations=p.size, half_window=50, patience=60)
    _feed(rule, 25, p=p)
    decision = rule.decision
    assert decision.should_stop and abs(decision.iteration - 204) <= 10
    assert decision.stop_iteration < 600  # it stopped before the later bend began
