"""Stop rules behind one protocol, and :class:`OSCStopper` for users' own loops.

Every rule is a small stateful object in the manner of torchmetrics' ``Metric``: it declares
the signals it reads (:attr:`StopRule.needs`) and its state, takes the signals of new
iterations with :meth:`~StopRule.update`, and keeps a :class:`Decision` (which iteration,
which output, stop now or not). The engine, :func:`oscfast.restore`, the plots and the
exported stopper's caller use nothing else. The rules:

- ``risk``: online minimum of a SURE estimate of the error, the pseudo-noise being the
  divergence probe (method.md section 8; inline form section 5);
- ``knee``: online argmax of the chord curvature of the smoothed P curve (sections 4-5);
- ``paper``: the paper's offline argmax of the curvature (reproduction only);
- ``es-wmv`` / ``es-emv``: the peer rules of reference-configs.md section 7 on the output's
  windowed / exponential moving variance (no pseudo-noise needed);
- ``plateau``: for exact observations, stop when the averaged output stops changing;
- ``cap``: run to the iteration cap and return the last iterate (plain DIP).

Signals (names a rule can ask for), one value per iteration: ``loss`` and ``loss_ema`` (of the
returned fit's raw and averaged output against its target), ``p`` and ``p_ema`` (the probe's P:
inline P_t, or P_twin = P_B - P_A), ``wmv``, ``emv`` (ES variances), ``change`` (mean squared
change of the averaged output over the last ``change_lag`` iterations).
"""
from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar, Literal, Protocol, runtime_checkable

import numpy as np
import torch

from oscfast.level import error_interval, level_bound_values
from oscfast.probe import gaussian_pseudo_noise, masked_uniform_pseudo_noise, projection

__all__ = [
    "CapRule",
    "Decision",
    "EMVRule",
    "KneeRule",
    "OSCStopper",
    "OutputKind",
    "PaperRule",
    "PlateauRule",
    "RULES",
    "RiskRule",
    "RuleBase",
    "Signals",
    "StopDecision",
    "StopRule",
    "WMVRule",
    "Wait",
    "curvature_standard_error",
    "gaussian_pseudo_noise",
    "masked_uniform_pseudo_noise",
    "projection",
    "mean_standard_error",
]

logger = logging.getLogger(__name__)

OutputKind = Literal["raw", "ema"]
#: when a rule stops after its choice: after a fixed share of the run (``"fixed"``, the waits
#: before issue 18) or once the evidence that the choice is final is in (``"evidence"``)
Wait = Literal["fixed", "evidence"]
WAITS: tuple[str, ...] = ("fixed", "evidence")

#: the names accepted by ``restore(..., rule=...)``
RULES: tuple[str, ...] = ("risk", "knee", "paper", "es-wmv", "es-emv", "plateau", "cap")


@dataclass(frozen=True)
class Signals:
    """Per-iteration signals of consecutive iterations ``start, start + 1, ...``.

    Attributes:
        start: iteration of the first value.
        values: signal name -> 1-D float64 array; all of one length.
    """

    start: int
    values: Mapping[str, np.ndarray]

    @classmethod
    def of(cls, start: int = 0, **arrays: Any) -> Signals:
        """Build from keyword arrays (scalars become length-1 arrays)."""
        return cls(start, {name: np.atleast_1d(np.asarray(value, dtype=np.float64)) for name, value in arrays.items()})

    @property
    def length(self) -> int:
        """Number of iterations covered."""
        return next(iter(self.values.values())).size if self.values else 0

    def __getitem__(self, name: str) -> np.ndarray:
        return self.values[name]


@dataclass(frozen=True)
class Decision:
    """What a rule has decided so far.

    Attributes:
        iteration: the chosen iteration (None while nothing is chosen).
        output: which image of that iteration: the raw output or its exponential average.
        should_stop: the rule has fired (stays True; the choice is then frozen).
        stop_iteration: how many iterations had been seen when it fired.
        new_best: the choice changed during the last update.
        score: the newest value of the rule's main score (for progress displays).
    """

    iteration: int | None = None
    output: OutputKind = "raw"
    should_stop: bool = False
    stop_iteration: int | None = None
    new_best: bool = False
    score: float = math.nan


#: the name of :class:`Decision` before the rules shared one protocol (kept for callers)
StopDecision = Decision


@runtime_checkable
class StopRule(Protocol):
    """The protocol every stop rule implements (see the module docstring)."""

    name: str
    needs: frozenset[str]
    #: the most iterations between the newest iteration seen and a newly chosen one; the
    #: engine keeps that many recent outputs so the chosen image can still be returned
    lag: int
    max_iterations: int

    def update(self, signals: Signals) -> Decision:
        """Take the signals of the next iterations; return the decision."""
        ...

    @property
    def decision(self) -> Decision:
        """The current decision."""
        ...

    @property
    def iterations_seen(self) -> int:
        """How many iterations have been fed."""
        ...

    def scores(self) -> dict[str, np.ndarray]:
        """The curves the rule decides on, by label (for plots), one value per iteration."""
        ...

    def reset(self) -> None:
        """Forget everything fed so far."""
        ...

    def state_dict(self) -> dict[str, Any]:
        """The rule's state (for checkpoints)."""
        ...

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore a :meth:`state_dict`."""
        ...


class RuleBase:
    """Shared bookkeeping: input checks, the fed history, the frozen decision, the state.

    Subclasses set ``name`` and ``needs``, call ``super().__init__``, declare extra state
    with :meth:`add_state` and implement :meth:`_advance` (process iterations
    ``first .. end - 1`` of the history and update the choice through :meth:`_choose` and
    :meth:`_fire`).
    """

    name: ClassVar[str] = "rule"
    needs: frozenset[str] = frozenset()
    lag: int = 0

    def __init__(self, *, max_iterations: int, output: OutputKind = "raw") -> None:
        if int(max_iterations) != max_iterations or max_iterations < 1:
            raise ValueError(f"max_iterations must be a positive integer, got {max_iterations}")
        if output not in ("raw", "ema"):
            raise ValueError(f"unknown output {output!r}; expected 'raw' or 'ema'")
        self.max_iterations = int(max_iterations)
        self.default_output: OutputKind = output
        self._defaults: dict[str, Any] = {}
        self.add_state("_n", 0)
        self.add_state("_history", {name: np.full(self.max_iterations, np.nan) for name in sorted(self.needs)})
        self.add_state("_decision", Decision(output=output))

    # -- declared state -------------------------------------------------------------------
    def add_state(self, name: str, default: Any) -> None:
        """Declare a piece of state with its initial value (reset copies it)."""
        self._defaults[name] = default
        setattr(self, name, _copy(default))

    def reset(self) -> None:
        for name, default in self._defaults.items():
            setattr(self, name, _copy(default))

    def state_dict(self) -> dict[str, Any]:
        return {name: _copy(getattr(self, name)) for name in self._defaults}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        missing = set(self._defaults) - set(state)
        if missing:
            raise ValueError(f"state of rule {self.name!r} lacks {sorted(missing)}")
        for name in self._defaults:
            setattr(self, name, _copy(state[name]))

    # -- the protocol ---------------------------------------------------------------------
    @property
    def decision(self) -> Decision:
        return self._decision

    @property
    def iterations_seen(self) -> int:
        return self._n

    def history(self, name: str) -> np.ndarray:
        """The values of signal ``name`` fed so far (a copy)."""
        return self._history[name][: self._n].copy()

    def update(self, signals: Signals) -> Decision:
        length = signals.length
        missing = self.needs - set(signals.values)
        if missing:
            raise ValueError(f"rule {self.name!r} needs the signals {sorted(missing)}")
        if length == 0:
            raise ValueError("update needs the signals of at least one iteration")
        if signals.start != self._n:
            raise ValueError(f"signals start at iteration {signals.start}, the rule has seen {self._n}")
        if self._n + length > self.max_iterations:
            raise ValueError(f"more iterations ({self._n + length}) than max_iterations ({self.max_iterations})")
        for name in self.needs:
            values = np.asarray(signals[name], dtype=np.float64)
            if values.shape != (length,):
                raise ValueError(f"signal {name!r} has shape {values.shape}, expected ({length},)")
            finite = values[~np.isnan(values)] if name in ("wmv", "emv", "change") else values
            if not np.all(np.isfinite(finite)):
                raise ValueError(f"signal {name!r} is not finite (the loss diverged?)")
            self._history[name][self._n : self._n + length] = values
        first, self._n = self._n, self._n + length
        self._decision = replace(self._decision, new_best=False)
        self._advance(first, self._n)
        return self._decision

    def scores(self) -> dict[str, np.ndarray]:
        return {}

    # -- helpers for subclasses -------------------------------------------------------------
    def _advance(self, first: int, end: int) -> None:
        raise NotImplementedError

    def _choose(self, iteration: int, output: OutputKind | None = None, score: float = math.nan) -> None:
        if self._decision.should_stop:
            return
        self._decision = replace(
            self._decision, iteration=int(iteration), output=output or self.default_output, new_best=True, score=score
        )

    def _fire(self, seen: int) -> None:
        if not self._decision.should_stop:
            self._decision = replace(self._decision, should_stop=True, stop_iteration=int(seen))

    def _set_score(self, score: float) -> None:
        self._decision = replace(self._decision, score=float(score))

    def __repr__(self) -> str:
        d = self._decision
        return f"{type(self).__name__}(seen={self._n}, iteration={d.iteration}, output={d.output!r}, stopped={d.should_stop})"


def _copy(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.copy()
    if isinstance(value, dict):
        return {key: _copy(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_copy(item) for item in value]
    return value


def trailing_mean(values: np.ndarray, window: int) -> np.ndarray:
    """Trailing mean over ``window`` (NaN until the window is full): the kernels' reference
    :func:`oscfast.kernels.trailing_mean` with ``partial=False``."""
    from oscfast.kernels.reference import trailing_mean as reference

    return reference(values, window, partial=False)


def mean_standard_error(values: np.ndarray, block: int) -> float:
    """Standard error of the mean of ``block`` consecutive values of a noisy signal, by batch means.

    Removes the local trend (a least-squares parabola over ``values``: a minimum or a knee is
    trend, not noise), cuts the residuals into blocks of ``block`` values from the newest end
    and returns sqrt(sum(block means^2) / (blocks - 3)) (3: the parabola's parameters). Unlike
    a scale of first differences this counts the correlation of DIP's jitter within a block
    (the reg-noise moves consecutive iterates together); correlation longer than a block is
    still missed. Two trailing means of ``block`` values far enough apart differ by noise
    alone with a standard deviation of about ``sqrt(2)`` times this (docs/twin-probe.md,
    "Waits").

    Args:
        values: the trailing window of the raw signal, oldest first (NaNs are dropped).
        block: the length of the means compared (the rule's smoothing window), >= 1.

    Returns:
        The standard error (>= 0), or NaN with fewer than 6 blocks.

    Example:
        >>> import numpy as np
        >>> noise = np.random.default_rng(0).normal(0.0, 1.0, 4000)
        >>> t = np.arange(4000.0)
        >>> round(mean_standard_error(1e-5 * (t - 900) ** 2 + noise, 25) * 5, 1)  # 1 / sqrt(25)
        1.0
    """
    values = np.asarray(values, dtype=np.float64)
    values = values[~np.isnan(values)]
    blocks = values.size // block
    if blocks < 6:
        return math.nan
    x = np.linspace(-1.0, 1.0, values.size)
    design = np.stack([np.ones_like(x), x, x * x], axis=1)
    coefficients, *_ = np.linalg.lstsq(design, values, rcond=None)
    residuals = (values - design @ coefficients)[values.size - blocks * block :]
    means = residuals.reshape(blocks, block).mean(axis=1)
    return math.sqrt(float(np.sum(means * means)) / (blocks - 3))


def _check_wait(wait: str, significance: float, min_wait: int, jitter_window: int, smoothing: int) -> None:
    if wait not in WAITS:
        raise ValueError(f"unknown wait {wait!r}; expected one of {list(WAITS)}")
    if not significance >= 0 or min_wait < 0:
        raise ValueError(f"need rise_significance >= 0 and min_wait >= 0; got {significance}, {min_wait}")
    if jitter_window < 6:
        raise ValueError(f"jitter_window must be >= 6, got {jitter_window}")
    if wait == "evidence" and jitter_window < 6 * smoothing:
        logger.warning("jitter_window %d holds fewer than 6 smoothing windows (%d): the evidence wait cannot "
                       "estimate its error and the fixed wait decides", jitter_window, 6 * smoothing)


# ------------------------------------------------------------------------------------------
# risk: online minimum of a SURE estimate (method.md sections 5 and 8)
# ------------------------------------------------------------------------------------------
class RiskRule(RuleBase):
    """Online minimum of risk_t = loss_t + weight * P_t + offset (rule ``"risk"``).

    With the twin probe this is a SURE estimate of the returned fit's own error (method.md
    section 8): it falls while the net fits the image and rises once it fits the noise. The
    raw and the averaged output are scored each with its own loss and P, and the lower risk
    wins. The rule keeps the running minimum of the trailing mean (``smoothing`` iterations)
    of each risk and attributes it to the window's centre; that minimum is its choice t*.

    **The level from the run** (docs/twin-probe.md, "The level"). For the twin's constants
    (``weight = 2 rho s^2``, ``offset = -rho s^2``, ``error_scale = 1 / rho``) the risk is
    ``loss - rho s^2 (1 - 2 P)`` and estimates ``rho`` times an error, never negative; a level
    that makes a smoothed risk negative is too high. With ``level_bound`` (kappa) the rule uses
    ``s_eff^2 = min(s^2, kappa * B(t))``, ``B(t)`` the running minimum over the outputs and
    iterations seen of ``Lbar / (rho (1 - 2 Pbar))`` (:func:`oscfast.level.sure_level_bound`):
    a level that is too high (Donoho's estimate on textured images, a JPEG table's) is cut to
    what the run allows, and ``s = inf`` (the level unknown) leaves the run's bound alone. As
    ``B`` only falls, each new iteration is compared with the current choice re-scored at the
    current level (the engine keeps recent outputs only, so a choice never moves back).

    When it stops (the choice is the same either way, the wait only decides how long it is
    watched):

    - ``wait="fixed"``: once the minimum is older than max(min_patience, patience_ratio * t*);
    - ``wait="evidence"``: at the fixed wait at the latest, and earlier once every scored
      output's smoothed risk has risen above its own running minimum by
      ``rise_significance`` standard errors, at least ``min_wait`` iterations after t*. The
      standard error of the rise is ``sqrt(2)`` times :func:`mean_standard_error` of that
      output's risk over the last ``jitter_window`` iterations (docs/twin-probe.md, "Waits").
      An output whose risk still falls keeps the run going, so a lagging average can still
      take the choice over.

    Args:
        weight, offset: see :class:`oscfast.probe.RiskConstants` (``inf`` / ``-inf``: the
            twin's constants for an unknown level; needs ``level_bound``).
        max_iterations: the iteration cap.
        smoothing: trailing-mean window of the risk (and of the level bound).
        patience_ratio, min_patience: the fixed wait (None: max(50, cap / 15)).
        outputs: which outputs to score.
        error_scale: multiply the risk by this to get a mean squared error estimate
            (1 / rho), or None when the risk is not an unbiased estimate.
        wait: ``"fixed"`` or ``"evidence"``.
        rise_significance, min_wait, jitter_window: the evidence wait.
        level_bound: kappa, the share of the run's level bound ``B`` (in ``s^2``) the level
            may reach (1: the bound itself; None: the given level as it is, the rule before
            issue 15). 0.85 is chosen on the selection half (bench/results/noise-study.md:
            F16 at 15, 25 and 50 /255, Kate at 15 /255 and the two JPEG runs; a smaller kappa
            cuts a tight bound, at high noise, below the truth). Only for the twin's constants (an unbiased risk, ``offset < 0``).
    """

    name = "risk"

    def __init__(
        self,
        weight: float,
        offset: float = 0.0,
        *,
        max_iterations: int,
        smoothing: int = 25,
        patience_ratio: float = 0.5,
        min_patience: int | None = None,
        outputs: Sequence[OutputKind] = ("raw", "ema"),
        error_scale: float | None = None,
        wait: Wait = "fixed",
        rise_significance: float = 3.0,
        min_wait: int = 25,
        jitter_window: int = 400,
        level_bound: float | None = 0.85,
    ) -> None:
        if not weight >= 0:
            raise ValueError(f"weight must be >= 0, got {weight}")
        if smoothing < 1 or patience_ratio < 0:
            raise ValueError(f"need smoothing >= 1 and patience_ratio >= 0, got {smoothing}, {patience_ratio}")
        if not outputs or any(o not in ("raw", "ema") for o in outputs):
            raise ValueError(f"outputs must be a non-empty subset of ('raw', 'ema'), got {outputs}")
        if level_bound is not None and not level_bound > 0:
            raise ValueError(f"level_bound must be > 0 or None, got {level_bound}")
        _check_wait(wait, rise_significance, min_wait, jitter_window, smoothing)
        self.outputs: tuple[OutputKind, ...] = tuple(outputs)
        self.needs = frozenset({"loss", "p"} | ({"loss_ema", "p_ema"} if "ema" in self.outputs else set()))
        super().__init__(max_iterations=max_iterations, output=self.outputs[0])
        self.weight, self.offset = float(weight), float(offset)
        self.smoothing = int(smoothing)
        self.lag = self.smoothing // 2
        self.patience_ratio = float(patience_ratio)
        self.min_patience = int(min_patience) if min_patience is not None else max(50, round(self.max_iterations / 15))
        self.error_scale = error_scale
        self.wait: Wait = wait
        self.rise_significance = float(rise_significance)
        self.min_wait, self.jitter_window = int(min_wait), int(jitter_window)
        # the twin's SURE form: weight = 2 rho s^2, offset = -rho s^2, error_scale = 1 / rho
        self.rho = 1.0 / error_scale if error_scale else 1.0
        twin_form = error_scale is not None and self.offset < 0 and math.isclose(self.weight, -2.0 * self.offset, rel_tol=1e-9)
        #: s^2 as given (inf: unknown); None when the constants are not the twin's SURE
        self.given_variance: float | None = -self.offset / self.rho if twin_form else None
        self.level_bound = float(level_bound) if level_bound is not None and twin_form else None
        if not (math.isfinite(self.weight) and math.isfinite(self.offset)) and self.level_bound is None:
            raise ValueError("an unknown level (infinite weight) needs the twin's constants and level_bound")
        self.add_state("_best_terms", (math.inf, 0.0, "raw"))  # (Lbar, Pbar, output) of the choice
        self.add_state("_bound", math.inf)  # running minimum of Lbar / (rho (1 - 2 Pbar))
        self.add_state("_variance", np.full(self.max_iterations, np.nan))  # s_eff^2 per iteration
        self.add_state("_smoothed", {f"{kind}_{output}": np.full(self.max_iterations, np.nan)
                                     for output in self.outputs for kind in ("loss", "p")})
        # per output: the rise it needed (NaN: not evaluated at that iteration)
        self.add_state("_threshold", {output: np.full(self.max_iterations, np.nan) for output in self.outputs})

    # -- the level ------------------------------------------------------------------------
    def _coefficients(self, variance: float | None = None) -> tuple[float, float]:
        """(weight, offset) of the risk at the current (or a given) effective variance."""
        if self.given_variance is None:
            return self.weight, self.offset
        variance = self.variance if variance is None else variance
        return 2.0 * self.rho * variance, -self.rho * variance

    @property
    def variance(self) -> float:
        """The level^2 the risk uses now: the given one, cut to ``level_bound`` x the run's bound."""
        if self.given_variance is None:
            return math.nan
        if self.level_bound is None:
            return self.given_variance
        return min(self.given_variance, self.level_bound * self._bound)

    @property
    def level(self) -> float | None:
        """The level (std) the risk uses now (None when the constants are not the twin's)."""
        return None if self.given_variance is None else math.sqrt(self.variance)

    @property
    def level_source(self) -> str | None:
        """``"given"`` when the given level is used, ``"run bound"`` when the run cut it."""
        if self.given_variance is None:
            return None
        return "given" if self.variance >= self.given_variance else "run bound"

    def run_level_bound(self) -> float:
        """The run's own upper bound of the level so far (inf before the first window)."""
        return math.sqrt(self._bound)

    def level_history(self) -> np.ndarray:
        """The level (std) the risk used at each iteration fed (NaN before the first window)."""
        return np.sqrt(self._variance[: self._n])

    # -- curves ---------------------------------------------------------------------------
    def risk(self, output: OutputKind = "raw") -> np.ndarray:
        """The (unsmoothed) risk of ``output`` per iteration fed so far, at the current level."""
        suffix = "" if output == "raw" else "_ema"
        weight, offset = self._coefficients()
        n = self._n
        return self._history["loss" + suffix][:n] + weight * self._history["p" + suffix][:n] + offset

    def smoothed_risk(self, output: OutputKind = "raw") -> np.ndarray:
        """The trailing mean of the risk of ``output`` at the current level (NaN until the
        window is full)."""
        weight, offset = self._coefficients()
        n = self._n
        return self._smoothed[f"loss_{output}"][:n] + weight * self._smoothed[f"p_{output}"][:n] + offset

    def rise_threshold(self, output: OutputKind = "raw") -> np.ndarray:
        """Per iteration fed, the rise above its minimum that the smoothed risk of ``output``
        needed to count as significant (evidence wait; NaN where it was not evaluated)."""
        return self._threshold[output][: self._n].copy()

    def _advance(self, first: int, end: int) -> None:
        window = self.smoothing
        start = max(first, window - 1)
        if start >= end:
            return
        origin = max(0, start - window + 1)
        for output in self.outputs:
            suffix = "" if output == "raw" else "_ema"
            for kind in ("loss", "p"):
                self._smoothed[f"{kind}_{output}"][start:end] = trailing_mean(self._history[kind + suffix][origin:end], window)[start - origin :]
        for newest in range(start, end):
            if self.level_bound is not None and not self._decision.should_stop:  # the level is frozen when it fires
                for output in self.outputs:
                    bound = level_bound_values(self._smoothed[f"loss_{output}"][newest], self._smoothed[f"p_{output}"][newest], self.rho)
                    self._bound = min(self._bound, float(bound))
            variance = self.variance
            self._variance[newest] = variance
            weight, offset = self._coefficients(variance)
            if not (math.isfinite(weight) and math.isfinite(offset)):
                continue  # no finite level yet (an unknown level before any bound)
            loss_c, p_c, _ = self._best_terms
            best = loss_c + weight * p_c + offset  # the choice, re-scored at the current level
            for output in self.outputs:
                loss, p = self._smoothed[f"loss_{output}"][newest], self._smoothed[f"p_{output}"][newest]
                value = loss + weight * p + offset
                if value < best and not self._decision.should_stop:
                    best = float(value)
                    self._best_terms = (float(loss), float(p), output)
                    self._choose(newest - (window - 1) // 2, output, value)
            first_output = self.outputs[0]
            self._set_score(self._smoothed[f"loss_{first_output}"][newest] + weight * self._smoothed[f"p_{first_output}"][newest] + offset)
            chosen = self._decision.iteration
            if chosen is None or self._decision.should_stop:
                continue
            if newest - chosen >= max(self.min_patience, self.patience_ratio * chosen):
                self._fire(newest + 1)  # the fixed wait, also the evidence wait's longest
            elif self.wait == "evidence" and newest - chosen >= self.min_wait and self._risen(newest, weight, offset):
                self._fire(newest + 1)

    def _risen(self, newest: int, weight: float, offset: float) -> bool:
        """Every output's smoothed risk at ``newest`` is significantly above its minimum (both
        at the current level)."""
        lo = max(0, newest - self.jitter_window + 1)
        for output in self.outputs:
            smoothed = self._smoothed[f"loss_{output}"][: newest + 1] + weight * self._smoothed[f"p_{output}"][: newest + 1] + offset
            rise = smoothed[newest] - np.nanmin(smoothed)
            if not rise > 0:
                return False
            suffix = "" if output == "raw" else "_ema"
            recent = self._history["loss" + suffix][lo : newest + 1] + weight * self._history["p" + suffix][lo : newest + 1]
            threshold = self.rise_significance * math.sqrt(2.0) * mean_standard_error(recent, self.smoothing)
            self._threshold[output][newest] = threshold
            if not rise >= threshold:  # NaN (too few values) does not stop either
                return False
        return True

    # -- the estimate -----------------------------------------------------------------------
    def chosen_terms(self) -> tuple[float, float, OutputKind] | None:
        """(smoothed loss, smoothed P, output) of the chosen iteration, None before a choice."""
        if self._decision.iteration is None:
            return None
        return self._best_terms

    def estimated_error(self) -> float | None:
        """Estimated mean squared error of the chosen output over the probed entries (its
        smoothed risk at the current level times ``error_scale``); None when the risk is not
        an unbiased estimate, the level is 0 (the risk is then the loss: exact observations),
        or the risk is not positive (an error <= 0 is no estimate)."""
        terms = self.chosen_terms()
        if self.error_scale is None or terms is None:
            return None
        if self.given_variance is not None and not self.variance > 0:
            return None
        weight, offset = self._coefficients()
        value = (terms[0] + weight * terms[1] + offset) * self.error_scale
        return value if value > 0 else None

    def estimated_error_interval(self, low: float, high: float) -> tuple[float, float] | None:
        """The error of the chosen output for every level in ``[low, high]`` times the level
        in use (the risk is linear in ``s^2``: :func:`oscfast.level.error_interval`); None
        without a twin-form level or a choice."""
        terms = self.chosen_terms()
        level = self.level
        if terms is None or level is None or self.error_scale is None:
            return None
        return error_interval(terms[0], terms[1], low * level, high * level, self.rho)

    def scores(self) -> dict[str, np.ndarray]:
        curves = {f"risk ({output})": self.risk(output) for output in self.outputs}
        shift = (self.smoothing - 1) // 2  # a mean is the choice's value at its window's centre
        for output in self.outputs:
            centred = np.full(self._n, np.nan)
            kept = max(0, self._n - shift)
            centred[:kept] = self.smoothed_risk(output)[shift : shift + kept]
            curves[f"risk, {self.smoothing}-mean, centred ({output})"] = centred
        if self.wait == "evidence":
            for output in self.outputs:
                curves[f"rise needed ({output})"] = self.rise_threshold(output)
        return curves


# ------------------------------------------------------------------------------------------
# knee: curvature of the P curve (method.md sections 4-5)
# ------------------------------------------------------------------------------------------
def curvature_standard_error(jitter: float, half_window: int, t_max: float, chord_slope: float = 0.0) -> float:
    """Standard error of the chord curvature that white jitter of P alone would give.

    ``jitter`` is the std of P's iteration-to-iteration noise. For a least-squares parabola
    over 2L + 1 points spaced h = 1 / t_max, SE(a) = sigma / (h^2 L^2 sqrt((2L + 1) 4 / 45))
    and kappa = 2a. In the chord frame (method.md section 4, step 3) the points are spaced
    h / cos(theta) along the chord and the noise across it is sigma cos(theta), theta the
    chord's angle: the standard error shrinks by cos(theta)^3 (0.4 for a chord slope of 0.9).
    """
    cos = 1.0 / math.sqrt(1.0 + chord_slope * chord_slope)
    spacing = 1.0 / t_max
    return 2.0 * jitter * cos**3 / (spacing**2 * half_window**2 * math.sqrt((2 * half_window + 1) * 4.0 / 45.0))


class KneeRule(RuleBase):
    """Online knee of the P curve (rule ``"knee"``; ``online=False`` is the paper's rule).

    Per new P value the numba kernel yields the curvature of the centre ``L`` iterations back.
    A centre is a candidate when its window starts after the smoothed P curve's early minimum
    (``guard``) and its curvature exceeds ``significance`` standard errors of what the jitter
    of P alone would produce (:func:`curvature_standard_error`, with the chord angle of that
    centre and the jitter of P up to the newest value it needs; so the choice does not depend
    on how P is fed). t* is the running argmax of the candidates; the rule stops once
    ``patience`` centres have passed without a new maximum and the fit has absorbed at least
    ``min_rise`` more of the probe since t* (the smoothed P rose by that much: a knee that
    no absorption follows is not the onset of overfitting). A t* never so confirmed is
    dropped at the cap, which then returns its last image. That is ``wait="fixed"``, the
    wait before issue 18: t* + L + patience at the earliest.

    ``wait="evidence"`` stops at the fixed wait at the latest, and earlier as soon as the
    knee is confirmed by a significant rise: the smoothed P at the newest iteration exceeds
    its value at t* by ``rise_significance`` standard errors (``sqrt(2)`` times
    :func:`mean_standard_error` of P over the last ``jitter_window`` iterations, in blocks
    of ``smoothing``) and by ``min_rise``, once ``min_wait`` centres have passed without a
    new maximum (a short patience in place of ``patience``). A centre's curvature is known
    ``L`` iterations after it (the chord window's look-ahead), so the stop comes at
    t* + L + min_wait at the earliest.

    Args:
        max_iterations: the iteration cap (scales the iteration axis).
        half_window: L (None: max(50, round(cap / 7.5)), method.md section 7).
        smoothing: w, the trailing mean of P before the fit.
        patience: centres without a new maximum before stopping (None: L).
        significance: candidate threshold in standard errors (0: off).
        min_curvature: candidates must also exceed this.
        guard: ignore windows that start before the early minimum of the smoothed P.
        online: stop online (False: never stop, offline argmax).
        output: the output the rule returns.
        signal: the P curve to read: ``"p"`` (of the raw output) or ``"p_ema"`` (of the average).
        min_rise: the rise of the smoothed P after t* that confirms it (0: off; with the
            evidence wait a floor under the significance test).
        wait: ``"fixed"`` (patience and ``min_rise``) or ``"evidence"``.
        rise_significance, min_wait, jitter_window: the evidence wait.
    """

    name = "knee"

    def __init__(
        self,
        *,
        max_iterations: int,
        half_window: int | None = None,
        smoothing: int = 10,
        patience: int | None = None,
        significance: float = 3.0,
        min_curvature: float = 0.0,
        guard: bool = True,
        online: bool = True,
        output: OutputKind = "raw",
        signal: Literal["p", "p_ema"] = "p",
        min_rise: float = 0.05,
        wait: Wait = "fixed",
        rise_significance: float = 3.0,
        min_wait: int = 25,
        jitter_window: int = 400,
    ) -> None:
        from oscfast.kernels import IncrementalCurvature

        if signal not in ("p", "p_ema"):
            raise ValueError(f"signal must be 'p' or 'p_ema', got {signal!r}")
        self.signal = signal
        self.needs = frozenset({signal})
        super().__init__(max_iterations=max_iterations, output=output)
        self.half_window = int(half_window) if half_window is not None else max(50, round(self.max_iterations / 7.5))
        if self.half_window < 2 or smoothing < 1 or significance < 0:
            raise ValueError(f"need half_window >= 2, smoothing >= 1, significance >= 0; got {self.half_window}, {smoothing}, {significance}")
        self.smoothing = int(smoothing)
        self.patience = self.half_window if patience is None else int(patience)
        if self.patience < 0:
            raise ValueError(f"patience must be >= 0, got {self.patience}")
        self.significance = float(significance)
        if not min_rise >= 0:
            raise ValueError(f"min_rise must be >= 0, got {min_rise}")
        self.min_rise = float(min_rise)
        _check_wait(wait, rise_significance, min_wait, jitter_window, self.smoothing)
        self.wait: Wait = wait
        self.rise_significance = float(rise_significance)
        self.min_wait, self.jitter_window = int(min_wait), int(jitter_window)
        self.min_curvature = float(min_curvature)
        self.guard, self.online = guard, online
        self.lag = self.half_window
        self.t_max = float(self.max_iterations)
        self._curve_factory = lambda: IncrementalCurvature(self.half_window, self.smoothing, self.t_max, self.max_iterations)
        self.add_state("_curve", None)
        self._curve = self._curve_factory()
        self.add_state("_min_pbar", math.inf)
        self.add_state("_argmin_pbar", 0)
        self.add_state("_best_curvature", -math.inf)
        self.add_state("_threshold", np.full(self.max_iterations, np.nan))
        self.add_state("_rise_threshold", np.full(self.max_iterations, np.nan))

    def reset(self) -> None:
        super().reset()
        self._curve = self._curve_factory()

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state["_curve"] = self.history(self.signal)
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        super().load_state_dict(state)
        self._curve = self._curve_factory()
        if len(state["_curve"]):
            self._curve.push_many(np.asarray(state["_curve"]))

    @property
    def curvature(self) -> np.ndarray:
        """Curvature per iteration fed, NaN where not (yet) defined."""
        kappa = np.full(self._n, np.nan)
        known = max(0, self._n - self.half_window)
        kappa[:known] = self._curve.kappa[:known]
        return kappa

    @property
    def best_curvature(self) -> float:
        """Curvature at t*."""
        return self._best_curvature

    def threshold_at(self, newest: int) -> float:
        """The candidate threshold for the centre ``newest - L`` (NaN before it exists)."""
        return float(self._threshold[newest]) if newest < self._n else math.nan

    def _threshold_for(self, newest: int, pbar: np.ndarray, absdiff: np.ndarray) -> float:
        if self.significance == 0:
            return self.min_curvature
        if newest < 2:
            return math.inf
        # jitter of P from the median |P_t - P_t-1| up to `newest` only (robust to the knee)
        jitter = float(np.median(absdiff[:newest])) / (0.6745 * math.sqrt(2.0))
        lag = self.half_window
        slope = (pbar[newest] - pbar[newest - 2 * lag]) / (2 * lag / self.t_max)
        se = curvature_standard_error(jitter, lag, self.t_max, slope)
        return max(self.min_curvature, self.significance * se)

    def _advance(self, first: int, end: int) -> None:
        p = self._history[self.signal]
        kappas = self._curve.push_many(p[first:end])
        pbar = self._curve.pbar
        absdiff = np.abs(np.diff(p[:end]))
        lag = self.half_window
        for offset, newest in enumerate(range(first, end)):
            if pbar[newest] < self._min_pbar:
                self._min_pbar, self._argmin_pbar = float(pbar[newest]), newest
            centre = newest - lag
            if centre < lag:
                continue
            threshold = self._threshold_for(newest, pbar, absdiff)
            self._threshold[newest] = threshold
            kappa = float(kappas[offset])
            self._set_score(kappa)
            guarded = self.guard and centre - lag < self._argmin_pbar
            if not self._decision.should_stop and not guarded and kappa > self._best_curvature and kappa > threshold:
                self._best_curvature = kappa
                self._choose(centre, score=kappa)
            chosen = self._decision.iteration
            if not self.online or chosen is None or self._decision.should_stop:
                continue
            confirmed = pbar[newest] - pbar[chosen] >= self.min_rise
            ready = confirmed and centre - chosen >= self.patience  # the fixed wait, also the evidence's longest
            if not ready and self.wait == "evidence" and centre - chosen >= self.min_wait:
                ready = self._risen(pbar, chosen, newest)
                confirmed = confirmed or ready
            if ready:
                self._fire(newest + 1)
            elif not confirmed and newest == self.max_iterations - 1:
                self._choose(newest)  # an unconfirmed knee at the cap: the last image

    def rise_threshold(self) -> np.ndarray:
        """Per iteration fed, the rise of the smoothed P since t* that the evidence wait
        needed (NaN where it was not evaluated)."""
        return self._rise_threshold[: self._n].copy()

    def _risen(self, pbar: np.ndarray, chosen: int, newest: int) -> bool:
        """The smoothed P at ``newest`` is significantly (and by ``min_rise``) above its
        value at the chosen knee."""
        rise = pbar[newest] - pbar[chosen]
        if not rise > 0:
            return False
        recent = self._history[self.signal][max(0, newest - self.jitter_window + 1) : newest + 1]
        threshold = self.rise_significance * math.sqrt(2.0) * mean_standard_error(recent, self.smoothing)
        if math.isnan(threshold):  # too few values to judge
            return False
        threshold = max(self.min_rise, threshold)
        self._rise_threshold[newest] = threshold
        return bool(rise >= threshold)

    def scores(self) -> dict[str, np.ndarray]:
        return {"curvature of smoothed P": self.curvature}


class PaperRule(KneeRule):
    """The paper's rule: offline argmax of the curvature of the raw P curve over the whole
    run (no smoothing, no guard, no threshold, never stops early). Reproduction only."""

    name = "paper"

    def __init__(self, *, max_iterations: int, half_window: int | None = None, output: OutputKind = "raw") -> None:
        super().__init__(
            max_iterations=max_iterations, half_window=half_window, smoothing=1, significance=0.0,
            min_curvature=-math.inf, guard=False, online=False, output=output, min_rise=0.0,
        )


# ------------------------------------------------------------------------------------------
# peers: ES-WMV and ES-EMV (reference-configs.md section 7)
# ------------------------------------------------------------------------------------------
class _MinimumWithPatience(RuleBase):
    """Running strict minimum of one signal; stop after ``patience`` iterations without a
    new minimum (the ES notebooks' rule)."""

    signal: ClassVar[str] = ""

    def __init__(self, *, max_iterations: int, patience: int, start: int, output: OutputKind = "raw") -> None:
        self.needs = frozenset({self.signal})
        super().__init__(max_iterations=max_iterations, output=output)
        if patience < 0:
            raise ValueError(f"patience must be >= 0, got {patience}")
        self.patience, self.start = int(patience), int(start)
        self.add_state("_best", math.inf)
        self.add_state("_wait", 0)

    def _advance(self, first: int, end: int) -> None:
        values = self._history[self.signal]
        for t in range(max(first, self.start), end):
            value = values[t]
            if np.isnan(value):
                continue
            self._set_score(value)
            if self._decision.should_stop:
                continue
            if value < self._best:
                self._best, self._wait = float(value), 0
                self._choose(t, score=value)
            else:
                self._wait += 1
                if self._wait >= self.patience:
                    self._fire(t + 1)

    def scores(self) -> dict[str, np.ndarray]:
        return {self.signal: self.history(self.signal)}


class WMVRule(_MinimumWithPatience):
    """ES-WMV: argmin of the windowed moving variance of the outputs (the engine keeps the
    window, W = 100 by default), patience 1000; returns the raw iterate at the minimum."""

    name = "es-wmv"
    signal = "wmv"

    def __init__(self, *, max_iterations: int, patience: int = 1000) -> None:
        super().__init__(max_iterations=max_iterations, patience=patience, start=0)


class EMVRule(_MinimumWithPatience):
    """ES-EMV: argmin of the exponential moving variance (alpha 0.1) for t > 100, patience
    1000; returns the raw iterate at the minimum (the notebook plots its 0.1-average)."""

    name = "es-emv"
    signal = "emv"

    def __init__(self, *, max_iterations: int, patience: int = 1000, warmup: int = 100) -> None:
        super().__init__(max_iterations=max_iterations, patience=patience, start=warmup + 1)


# ------------------------------------------------------------------------------------------
# plateau (exact observations) and cap (plain DIP)
# ------------------------------------------------------------------------------------------
class PlateauRule(RuleBase):
    """Stop when the averaged output has stopped changing (rule ``"plateau"``).

    For exact observations (no measurement noise) there is nothing to overfit, so the question
    is when more iterations stop improving the image. The engine measures the mean squared
    change of the averaged output over the last ``change_lag`` iterations; converted to dB
    (10 log10(1 / change)) it rises as the fit converges. The rule stops once that level has
    stayed above ``level_db`` for ``patience`` iterations, and returns the averaged output
    of the newest iteration.

    Args:
        max_iterations: the iteration cap (the rule also ends there).
        level_db: the change level, in dB, counted as converged.
        patience: iterations the level must hold.
        output: the output returned.
    """

    name = "plateau"
    needs = frozenset({"change"})

    def __init__(self, *, max_iterations: int, level_db: float = 50.0, patience: int = 200, output: OutputKind = "ema") -> None:
        super().__init__(max_iterations=max_iterations, output=output)
        self.level_db, self.patience = float(level_db), int(patience)
        self.add_state("_held", 0)

    def change_db(self) -> np.ndarray:
        """The change signal in dB (NaN before it is defined)."""
        change = self.history("change")
        with np.errstate(divide="ignore", invalid="ignore"):
            return -10.0 * np.log10(change)

    def _advance(self, first: int, end: int) -> None:
        change = self._history["change"]
        for t in range(first, end):
            if self._decision.should_stop:
                return
            self._choose(t)
            if np.isnan(change[t]):
                continue
            level = -10.0 * math.log10(max(float(change[t]), 1e-30))
            self._set_score(level)
            self._held = self._held + 1 if level >= self.level_db else 0
            if self._held >= self.patience:
                self._fire(t + 1)

    def scores(self) -> dict[str, np.ndarray]:
        return {"change of averaged output (dB)": self.change_db()}


class CapRule(RuleBase):
    """Run to the iteration cap and return the newest iterate (plain DIP; the published
    fixed count when the cap is the preset's)."""

    name = "cap"
    needs = frozenset({"loss"})

    def _advance(self, first: int, end: int) -> None:
        self._choose(end - 1, score=float(self._history["loss"][end - 1]))

    def scores(self) -> dict[str, np.ndarray]:
        return {"loss": self.history("loss")}


# ------------------------------------------------------------------------------------------
# a stopper for users' own loops
# ------------------------------------------------------------------------------------------
class OSCStopper:
    """The Orthogonal Stopping Criterion for any DIP-style loop: the pseudo-noise and a rule.

    ``perturb(y)`` gives the target y + n; :meth:`update` takes each iteration's operator
    output A(x_t) (and its loss for the risk rule), computes P_t and advances the rule. For
    the twin probe, pass the output of the fit you return as ``base`` and that of the fit
    trained on y + n as ``measured``: P_twin = <A(x_B) - A(x_A), n> / <n, n>.

    Args:
        pseudo_noise: the fixed pseudo-noise n (torch or numpy, measurement shape). Needed by
            :meth:`update` and :meth:`perturb`; not by :meth:`update_p`.
        max_iterations: the loop's iteration cap.
        rule: a :class:`StopRule` (default: :class:`KneeRule` for this cap), or a rule name
            ("knee" or "paper"; other rules need constants: build them and pass the object).
        half_window, smoothing, patience: options of the default knee rule.

    Example:
        >>> import numpy as np
        >>> stopper = OSCStopper(max_iterations=600, half_window=50)
        >>> curve = np.r_[np.zeros(300), np.linspace(0, 0.5, 300)]  # knee at 300
        >>> decision = stopper.update_p(curve)
        >>> abs(decision.iteration - 300) < 25
        True
    """

    def __init__(
        self,
        pseudo_noise: torch.Tensor | np.ndarray | None = None,
        *,
        max_iterations: int,
        rule: StopRule | Literal["knee", "paper"] = "knee",
        half_window: int | None = None,
        smoothing: int | None = None,
        patience: int | None = None,
    ) -> None:
        if isinstance(rule, str):
            options: dict[str, Any] = {"half_window": half_window}
            if rule == "knee":
                options.update({k: v for k, v in dict(smoothing=smoothing, patience=patience).items() if v is not None})
                rule = KneeRule(max_iterations=max_iterations, **options)
            elif rule == "paper":
                rule = PaperRule(max_iterations=max_iterations, **options)
            else:
                raise ValueError(f"rule {rule!r} needs constants: build the rule object and pass it (rule=RiskRule(...))")
        elif not isinstance(rule, StopRule):
            raise TypeError(f"rule must be a StopRule or a rule name, got {type(rule).__name__}")
        self.rule: StopRule = rule
        self._noise = None if pseudo_noise is None else torch.as_tensor(np.asarray(pseudo_noise) if not isinstance(pseudo_noise, torch.Tensor) else pseudo_noise)
        self._energy: float | None = None
        if self._noise is not None:
            self._energy = float(self._noise.double().pow(2).sum())
            if not self._energy > 0:
                raise ValueError("pseudo_noise is all zeros: nothing to project on")

    # -- inputs ---------------------------------------------------------------------------
    def perturb(self, observation: torch.Tensor | np.ndarray) -> torch.Tensor | np.ndarray:
        """Return y + n, the target of the probed fit (not clipped: method.md section 2)."""
        noise = self._require_noise()
        if isinstance(observation, torch.Tensor):
            return observation + noise.to(device=observation.device, dtype=observation.dtype)
        observation = np.asarray(observation)
        return observation + noise.numpy().astype(observation.dtype)

    def projection(self, measured: torch.Tensor | np.ndarray) -> float:
        """P = <A(x), n> / <n, n> for one operator output (method.md section 3)."""
        noise = self._require_noise()
        values = torch.as_tensor(np.asarray(measured)) if not isinstance(measured, torch.Tensor) else measured
        if tuple(values.shape) != tuple(noise.shape):
            raise ValueError(f"operator output has shape {tuple(values.shape)}, pseudo-noise {tuple(noise.shape)}")
        assert self._energy is not None
        return float(torch.sum(values.detach().cpu().double() * noise.double())) / self._energy

    def update(
        self,
        measured: torch.Tensor | np.ndarray,
        *,
        base: torch.Tensor | np.ndarray | None = None,
        loss: float | None = None,
        **signals: float,
    ) -> Decision:
        """Advance the rule by one iteration from its operator output(s).

        Args:
            measured: A(x_t) of the fit that carries the pseudo-noise.
            base: twin probe only: A(x_t) of the fit trained on y alone.
            loss: the iteration's loss (rules that read it, e.g. risk).
            signals: further signals the rule reads (``loss_ema``, ``p_ema``, ...).
        """
        p = self.projection(measured) - (self.projection(base) if base is not None else 0.0)
        values = {"p": p, **signals}
        if loss is not None:
            values["loss"] = loss
        return self.update_p(**{name: [value] for name, value in values.items()})

    def update_p(self, p: np.ndarray | Sequence[float] | float, **signals: Any) -> Decision:
        """Advance the rule by already computed P values (and other signals of the same
        iterations, e.g. ``loss=`` for the risk rule)."""
        chunk = Signals.of(self.rule.iterations_seen, p=p, **signals)
        return self.rule.update(Signals(chunk.start, {k: v for k, v in chunk.values.items() if k in self.rule.needs}))

    # -- results --------------------------------------------------------------------------
    @property
    def decision(self) -> Decision:
        """The rule's current decision."""
        return self.rule.decision

    @property
    def best_iteration(self) -> int | None:
        """The chosen iteration t* (None while nothing is chosen)."""
        return self.rule.decision.iteration

    @property
    def should_stop(self) -> bool:
        """The rule has fired."""
        return self.rule.decision.should_stop

    @property
    def stop_iteration(self) -> int | None:
        """How many iterations had run when the rule fired."""
        return self.rule.decision.stop_iteration

    def _require_noise(self) -> torch.Tensor:
        if self._noise is None:
            raise ValueError("this stopper was made without pseudo_noise; pass it or use update_p")
        return self._noise
