"""Option dataclasses for the DIP loop and the stopping rule."""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Literal

from oscfast.models import DENOISE_SPEC, NetSpec

__all__ = ["DIPConfig", "PROBE_NAMES", "ProbeName", "RULE_NAMES", "RuleName", "StopConfig", "WAIT_NAMES", "WaitName"]

RuleName = Literal["risk", "knee", "paper", "es-wmv", "es-emv", "plateau", "cap"]
ProbeName = Literal["twin", "inline", "none"]
WaitName = Literal["fixed", "evidence"]
RULE_NAMES: tuple[str, ...] = ("risk", "knee", "paper", "es-wmv", "es-emv", "plateau", "cap")
PROBE_NAMES: tuple[str, ...] = ("twin", "inline", "none")
WAIT_NAMES: tuple[str, ...] = ("fixed", "evidence")


@dataclass(frozen=True)
class StopConfig:
    """How a restoration decides when to stop (method.md sections 2-8).

    Attributes:
        rule: ``"risk"`` (online minimum of a SURE estimate of the error), ``"knee"`` (knee of
            the P curve), ``"paper"`` (the paper's offline argmax, reproduction), ``"es-wmv"``
            / ``"es-emv"`` (the peer rules, no pseudo-noise), ``"plateau"`` (the averaged
            output stopped changing) or ``"cap"`` (run to the cap). None: the task's default
            (:attr:`oscfast.tasks.Task.default_stop`, chosen by the study in bench/results/rules.md).
        probe: where the pseudo-noise goes: ``"twin"`` (a second fit on y + n beside the
            returned fit on y: the returned image never sees n), ``"inline"`` (into the returned
            fit, the paper) or ``"none"``. None: the task's default.
        pseudo_noise_std: sigma_n (1/25 for images in [0, 1], the paper's); 0 means no probe.
        noise_level: std of the measurement noise for the risk rule (None: the task's estimate).
        half_window, smoothing, patience, significance, min_curvature, min_rise: knee rule
            (L: None -> max(50, cap / 7.5); patience None -> L; min_rise: the rise of P after
            the knee that confirms it).
        risk_smoothing, patience_ratio, min_patience: risk rule (min_patience None ->
            max(50, cap / 15)).
        wait: when the risk and knee rules stop after their choice (the choice is the same):
            ``"fixed"`` (the risk rule at t* + max(min_patience, patience_ratio t*), the knee
            at t* + L + patience once P rose by min_rise) or ``"evidence"`` (once the smoothed
            risk, or P after the knee, has risen significantly: docs/twin-probe.md, "Waits").
        rise_significance: the evidence wait's threshold, in standard errors of the smoothed
            signal (estimated from its own jitter over ``jitter_window`` iterations).
        min_wait: the evidence wait stops no earlier than this many iterations after t*.
        jitter_window: trailing iterations the evidence wait estimates the jitter over (it
            needs 6 smoothing windows; with fewer the fixed wait decides).
        es_patience: ES-WMV / ES-EMV patience (1000 in their notebooks).
        plateau_db, plateau_patience: plateau rule.
        sync_every: iterations between two reads of the device buffers by the host.
        level_bound: kappa of the risk rule's level cut from the run (the level used is
            min(level^2, kappa * B), B the run's own upper bound on s^2; docs/twin-probe.md, "The
            level"); None: no cut. A ``noise_level`` the caller gives is cut only where the run
            proves it too high (kappa = 1).
        level_tolerance: the relative uncertainty of a given ``noise_level`` (its interval is
            ``noise_level x (1 -+ level_tolerance)``; 0.02: clipping to [0, 1] lowers the
            effective level of 25/255 noise by ~2% on F16), for ``estimated_psnr``.
        estimated_level_range: where the true level lies relative to an estimated one (Donoho's
            or the run's own bound, both upper bounds: docs/twin-probe.md, "The level"), for
            ``estimated_psnr``'s interval.
        max_estimate_width_db: ``estimated_psnr`` is shown only when its interval is at most
            this wide (its value is the interval's middle, so within half of it of the truth
            whenever the level lies in its interval).
        twin_start: the iteration t0 at which the twin's fit B starts (issue 18, "a cheaper
            probe"; twin probe only). Before t0 only fit A trains; at t0 fit B takes a copy of
            fit A's whole state (weights, Adam state, reg-noise stream, averages) and trains on
            y + n from there. This saves t0 iterations of fit B, and P_twin is 0 before t0: the
            divergence fitted before t0 is not measured. 0 (the default): both fits from the
            start. It must be below the iteration cap. Kept out of the repr, so that the
            checkpoints of runs without it keep their fingerprint (the fingerprint names it
            when it is set).
    """

    rule: RuleName | None = None
    probe: ProbeName | None = None
    pseudo_noise_std: float = 1.0 / 25.0
    noise_level: float | None = None
    half_window: int | None = None
    smoothing: int = 10
    patience: int | None = None
    significance: float = 3.0
    min_curvature: float = 0.0
    min_rise: float = 0.05
    risk_smoothing: int = 25
    patience_ratio: float = 0.5
    min_patience: int | None = None
    wait: WaitName = "evidence"
    rise_significance: float = 3.0
    min_wait: int = 25
    jitter_window: int = 400
    es_patience: int = 1000
    plateau_db: float = 50.0
    plateau_patience: int = 200
    sync_every: int = 25
    level_tolerance: float = 0.02
    level_bound: float | None = 0.85
    estimated_level_range: tuple[float, float] = (0.8, 1.05)
    max_estimate_width_db: float = 2.0
    twin_start: int = field(default=0, repr=False)

    def __post_init__(self) -> None:
        if self.level_bound is not None and (isinstance(self.level_bound, bool) or not isinstance(self.level_bound, (int, float))
                                             or not (math.isfinite(self.level_bound) and self.level_bound > 0)):
            raise ValueError(f"level_bound must be a number > 0 or None, got {self.level_bound!r}")
        for name in ("pseudo_noise_std", "noise_level", "significance", "min_curvature", "min_rise", "patience_ratio", "plateau_db",
                     "rise_significance"):
            value = getattr(self, name)
            if value is None and name == "noise_level":
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise TypeError(f"{name} must be a number, got {value!r}")
            if not math.isfinite(value) and not (name == "min_curvature" and value == -math.inf):
                raise ValueError(f"{name} must be finite, got {value!r}")
        for name in ("half_window", "smoothing", "patience", "risk_smoothing", "min_patience", "es_patience",
                     "plateau_patience", "sync_every", "min_wait", "jitter_window", "twin_start"):
            value = getattr(self, name)
            optional = name in ("half_window", "patience", "min_patience")  # None: derived from the cap
            if (value is not None or not optional) and (isinstance(value, bool) or not isinstance(value, int)):
                raise TypeError(f"{name} must be an integer, got {value!r}")
        if self.rule == "osc":  # the old name of the knee rule
            object.__setattr__(self, "rule", "knee")
        if self.rule is not None and self.rule not in RULE_NAMES:
            raise ValueError(f"unknown stop rule {self.rule!r}; expected one of {list(RULE_NAMES)}")
        if self.wait not in WAIT_NAMES:
            raise ValueError(f"unknown wait {self.wait!r}; expected one of {list(WAIT_NAMES)}")
        if self.probe is not None and self.probe not in PROBE_NAMES:
            raise ValueError(f"unknown probe {self.probe!r}; expected one of {list(PROBE_NAMES)}")
        if not self.pseudo_noise_std >= 0:
            raise ValueError(f"pseudo_noise_std must be >= 0, got {self.pseudo_noise_std}")
        if self.noise_level is not None and not self.noise_level >= 0:
            raise ValueError(f"noise_level must be >= 0, got {self.noise_level}")
        checks = [
            ("risk_smoothing", self.risk_smoothing, 1), ("smoothing", self.smoothing, 1),
            ("sync_every", self.sync_every, 1), ("es_patience", self.es_patience, 0),
            ("plateau_patience", self.plateau_patience, 1), ("min_wait", self.min_wait, 0),
            ("jitter_window", self.jitter_window, 6), ("twin_start", self.twin_start, 0),
        ]
        for name, value, low in checks:
            if value < low:
                raise ValueError(f"{name} must be >= {low}, got {value}")
        if self.half_window is not None and self.half_window < 2:
            raise ValueError(f"half_window must be >= 2, got {self.half_window}")
        if self.patience is not None and self.patience < 0:
            raise ValueError(f"patience must be >= 0, got {self.patience}")
        if self.patience_ratio < 0 or self.significance < 0 or self.min_rise < 0 or self.rise_significance < 0:
            raise ValueError("patience_ratio, significance, min_rise and rise_significance must be >= 0")
        if not 0 <= self.level_tolerance < 1:
            raise ValueError(f"level_tolerance must lie in [0, 1), got {self.level_tolerance!r}")
        low, high = (tuple(self.estimated_level_range) + (math.nan, math.nan))[:2]
        if len(tuple(self.estimated_level_range)) != 2 or not 0 < low <= 1 <= high:
            raise ValueError(f"estimated_level_range must be (low, high) with 0 < low <= 1 <= high, got {self.estimated_level_range!r}")
        if not self.max_estimate_width_db > 0:
            raise ValueError(f"max_estimate_width_db must be > 0, got {self.max_estimate_width_db!r}")


@dataclass(frozen=True)
class DIPConfig:
    """One Deep Image Prior configuration (reference-configs.md, sections 1-6).

    Attributes:
        net: generator network description.
        input_kind: ``"noise"`` (z ~ U(0, input_scale)) or ``"meshgrid"`` (2 channels).
        input_scale: scale of the uniform input noise (0.1 in every notebook).
        learning_rate: Adam learning rate.
        reg_noise_std: std of the fresh Gaussian perturbation added to z each iteration.
        max_iterations: hard iteration cap (the published count for the preset).
        ema_decay: weight of the exponential average of outputs.
    """

    net: NetSpec = field(default_factory=lambda: DENOISE_SPEC)
    input_kind: Literal["noise", "meshgrid"] = "noise"
    input_scale: float = 0.1
    learning_rate: float = 0.01
    reg_noise_std: float = 1.0 / 30.0
    max_iterations: int = 3000
    ema_decay: float = 0.99

    def __post_init__(self) -> None:
        if self.input_kind not in ("noise", "meshgrid"):
            raise ValueError(f"unknown input_kind {self.input_kind!r}; expected 'noise' or 'meshgrid'")
        if self.input_kind == "meshgrid" and self.net.input_channels != 2:
            raise ValueError("a meshgrid input has 2 channels; set net.input_channels=2")
        if self.max_iterations < 1:
            raise ValueError(f"max_iterations must be >= 1, got {self.max_iterations}")
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate}")
        if self.reg_noise_std < 0:
            raise ValueError(f"reg_noise_std must be >= 0, got {self.reg_noise_std}")
        if not 0 <= self.ema_decay < 1:
            raise ValueError(f"ema_decay must lie in [0, 1), got {self.ema_decay}")

    def with_options(self, **changes: object) -> DIPConfig:
        """Return a copy with some fields replaced."""
        return replace(self, **changes)
