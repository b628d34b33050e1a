"""From a task and options to the fits and the stop rule of one restoration.

The per-task defaults (which probe, which rule) are the ones chosen by the study in
``bench/results/rules.md`` (see the README, "Stopping"). The rule constants come from the
task: its measurement noise level for the risk rule, its default output.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from oscfast.config import DIPConfig, ProbeName, RuleName, StopConfig
from oscfast.engine import FitSpec, Watch
from oscfast.probe import RiskConstants, probed_fraction, risk_constants
from oscfast.stopping import CapRule, EMVRule, KneeRule, OutputKind, PaperRule, PlateauRule, RiskRule, StopRule, WMVRule
from oscfast.tasks import TASKS, CustomOperator, StopDefault, Task

__all__ = ["RunPlan", "StopDefault", "default_stop", "default_stops", "make_rule", "plan_restoration"]

logger = logging.getLogger(__name__)

#: rules that read the probe's P
_NEEDS_PROBE = {"risk", "knee", "paper"}


def default_stop(task: str | Task) -> StopDefault:
    """The probe, rule and output a task gets when the caller names neither (its class's
    :attr:`oscfast.tasks.Task.default_stop`; unregistered task names get the custom task's).
    A task object's own class decides: a noise model's subclass of the denoising task brings
    its own rule (:meth:`oscfast.tasks.Denoise.with_noise`)."""
    if isinstance(task, Task):
        return type(task).default_stop
    cls = TASKS.get(task, CustomOperator)
    return cls.default_stop


def default_stops() -> dict[str, StopDefault]:
    """Every registered task's default stop, by task name."""
    return {name: cls.default_stop for name, cls in TASKS.items()}


@dataclass(frozen=True)
class RunPlan:
    """The fits and the driving rule of one restoration.

    Attributes:
        fits: the DIP fits (one, or two for the twin probe: fit 0 returned, fit 1 probed).
        watch: the driving rule and the fits it reads.
        probe: the probe kind.
        rule: the rule name.
        noise_level: the measurement noise level the risk rule uses (None for other rules).
        risk: the risk constants (None for other rules).
    """

    fits: list[FitSpec]
    watch: Watch
    probe: ProbeName
    rule: RuleName
    noise_level: float | None
    risk: RiskConstants | None


def make_rule(
    name: RuleName,
    *,
    stop: StopConfig,
    max_iterations: int,
    output: OutputKind,
    risk: RiskConstants | None = None,
) -> StopRule:
    """The rule ``name`` with the options of ``stop`` for a run of ``max_iterations``.

    Raises:
        ValueError: unknown rule, or the risk rule without its constants.
    """
    common: dict[str, Any] = {"max_iterations": max_iterations}
    waits: dict[str, Any] = {"wait": stop.wait, "rise_significance": stop.rise_significance, "min_wait": stop.min_wait,
                             "jitter_window": stop.jitter_window}
    if name == "risk":
        if risk is None:
            raise ValueError("rule 'risk' needs the risk constants (a probe and a noise level)")
        return RiskRule(
            risk.weight, risk.offset, smoothing=stop.risk_smoothing, patience_ratio=stop.patience_ratio,
            min_patience=stop.min_patience, error_scale=1.0 / risk.rho if risk.unbiased else None, **waits, **common,
            # a level the caller gives is cut only where the run proves it too high (kappa = 1)
            level_bound=(1.0 if stop.level_bound is not None else None) if stop.noise_level is not None else stop.level_bound,
        )
    if name == "knee":
        return KneeRule(
            half_window=stop.half_window, smoothing=stop.smoothing, patience=stop.patience,
            significance=stop.significance, min_curvature=stop.min_curvature, min_rise=stop.min_rise, output=output,
            **waits, **common,
        )
    if name == "paper":
        return PaperRule(half_window=stop.half_window, output=output, **common)
    if name == "es-wmv":
        return WMVRule(patience=stop.es_patience, **common)
    if name == "es-emv":
        return EMVRule(patience=stop.es_patience, **common)
    if name == "plateau":
        return PlateauRule(level_db=stop.plateau_db, patience=stop.plateau_patience, **common)
    if name == "cap":
        return CapRule(output=output, **common)
    raise ValueError(f"unknown stop rule {name!r}")


def plan_restoration(task: Task, config: DIPConfig, stop: StopConfig, *, seed: int) -> RunPlan:
    """The fits and rule of a restoration of ``task``.

    With ``stop.twin_start = t0 > 0`` the twin's fit B branches off fit A before iteration t0
    (:attr:`oscfast.engine.FitSpec.branch_of`): until then only fit A trains.

    Raises:
        ValueError: a rule that needs the probe without one; ``twin_start`` without the twin
            probe or not below the iteration cap.
    """
    default_probe, default_rule, default_output = default_stop(task)
    rule: RuleName = stop.rule or default_rule
    if stop.probe is not None:
        probe: ProbeName = stop.probe
    elif stop.rule is None:
        probe = default_probe
    elif rule in _NEEDS_PROBE:
        probe = default_probe if default_probe != "none" else "twin"
    else:
        probe = "none"
    if stop.pseudo_noise_std == 0:
        probe = "none"
        if stop.rule is None or rule in _NEEDS_PROBE:
            if stop.rule is not None:
                logger.warning("rule %r reads the pseudo-noise, and pseudo_noise_std=0: plain DIP to the cap", rule)
            rule = "cap"  # plain DIP: no probe, run to the cap
    if rule in _NEEDS_PROBE and probe == "none":
        raise ValueError(f"rule {rule!r} reads the pseudo-noise probe: use probe='twin' or 'inline' and pseudo_noise_std > 0")
    cap = config.max_iterations
    if stop.twin_start and probe != "twin":
        raise ValueError(f"twin_start={stop.twin_start} delays the twin probe's second fit; this run's probe is {probe!r}"
                         + (" (pseudo_noise_std=0)" if stop.pseudo_noise_std == 0 else ""))
    if stop.twin_start >= cap:
        raise ValueError(f"twin_start must be below the iteration cap ({cap}), got {stop.twin_start}")
    output = default_output if rule == default_rule else task.default_output
    if probe == "none":
        fits = [FitSpec(task, seed)]
        rule_object = make_rule(rule, stop=stop, max_iterations=cap, output=output)
        return RunPlan(fits, Watch(rule_object, fit=0), probe, rule, None, None)
    noise = task.pseudo_noise(stop.pseudo_noise_std, seed=seed + 1000)
    constants = None
    noise_level = None
    if rule == "risk":
        noise_level = stop.noise_level if stop.noise_level is not None else task.noise_level()
        constants = risk_constants(
            probe, noise_level=noise_level, probe_std=stop.pseudo_noise_std,
            rho=probed_fraction(noise, stop.pseudo_noise_std),
        )
    rule_object = make_rule(rule, stop=stop, max_iterations=cap, output=output, risk=constants)
    if probe == "inline":
        fits = [FitSpec(task, seed, probe=noise, noisy_target=True)]
        watch = Watch(rule_object, fit=0, probe=0)
    else:
        late = {"branch_of": 0, "branch_at": stop.twin_start} if stop.twin_start else {}
        fits = [FitSpec(task, seed, probe=noise), FitSpec(task, seed, probe=noise, noisy_target=True, **late)]
        watch = Watch(rule_object, fit=0, probe=1, base=0)
    return RunPlan(fits, watch, probe, rule, noise_level, constants)
