"""Option dataclasses for the DIP loop and the stopping rule."""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Literal

from oscfast.models import DENOISE_SPEC, NetSpec

__all__ = ["DIPConfig", "StopConfig", "ResolvedStop"]

StopRule = Literal["knee", "risk", "paper", "osc"]


@dataclass(frozen=True)
class StopConfig:
    """Options of the Orthogonal Stopping Criterion (method.md sections 2-5).

    Attributes:
        rule: ``"knee"`` (alias ``"osc"``: the online knee of the P curve, method.md section 5:
            smoothed P, early-minimum guard, a significant upward bend), ``"risk"`` (online
            minimum of the Monte-Carlo SURE risk loss_t + c P_t, where the pseudo-noise is the
            divergence probe; needs no window, see README "Stopping rules") or ``"paper"``
            (offline argmax of the curvature of the raw P curve over the whole run).
        pseudo_noise_std: standard deviation sigma_n of the pseudo-noise (1/25 for images in
            [0, 1], the paper's default). 0 disables OSC: plain DIP.
        half_window: half-window L of the parabola fit; None -> max(50, round(cap / 7.5))
            (method.md section 7: L is the parameter that matters; 400 for a 3000 cap).
        smoothing: trailing-mean window w applied to P before the fit.
        patience: iterations of curvature without a new maximum before stopping;
            None -> equal to the half-window.
        min_curvature: a knee must have curvature above this (0: the P curve must bend
            upward). Curves that are concave throughout (no knee) run to the cap.
        significance: a knee must have curvature above ``significance`` standard errors of
            the curvature that the jitter of P alone would produce (0 disables). The jitter
            is estimated online from the P values (median absolute first difference).
        risk_smoothing: trailing-mean window of the risk curve (rule "risk").
        patience_ratio: rule "risk" stops once the risk minimum at t is older than
            max(min_patience, patience_ratio * t) iterations (time-scale free).
        min_patience: None -> max(50, round(cap / 15)).
        noise_level: std of the measurement noise for rule "risk" (None: the task's estimate).
        sync_every: how many iterations pass between two reads of P on the host (K).
    """

    rule: StopRule = "risk"
    pseudo_noise_std: float = 1.0 / 25.0
    half_window: int | None = None
    smoothing: int = 10
    patience: int | None = None
    min_curvature: float = 0.0
    significance: float = 3.0
    risk_smoothing: int = 25
    patience_ratio: float = 0.5
    min_patience: int | None = None
    noise_level: float | None = None
    sync_every: int = 25

    def __post_init__(self) -> None:
        if self.rule not in ("knee", "risk", "paper", "osc"):
            raise ValueError(f"unknown stop rule {self.rule!r}; expected 'knee', 'risk' or 'paper'")
        if self.rule == "osc":
            object.__setattr__(self, "rule", "knee")
        if self.risk_smoothing < 1:
            raise ValueError(f"risk_smoothing must be >= 1, got {self.risk_smoothing}")
        if self.patience_ratio < 0:
            raise ValueError(f"patience_ratio must be >= 0, got {self.patience_ratio}")
        if not self.pseudo_noise_std >= 0:
            raise ValueError(f"pseudo_noise_std must be >= 0, got {self.pseudo_noise_std}")
        if self.half_window is not None and self.half_window < 2:
            raise ValueError(f"half_window must be >= 2, got {self.half_window}")
        if self.smoothing < 1:
            raise ValueError(f"smoothing must be >= 1, got {self.smoothing}")
        if self.patience is not None and self.patience < 0:
            raise ValueError(f"patience must be >= 0, got {self.patience}")
        if self.significance < 0:
            raise ValueError(f"significance must be >= 0, got {self.significance}")
        if self.sync_every < 1:
            raise ValueError(f"sync_every must be >= 1, got {self.sync_every}")

    def resolve(self, max_iterations: int) -> ResolvedStop:
        """Fill the defaults that depend on the iteration cap."""
        half_window = self.half_window or max(50, round(max_iterations / 7.5))
        min_patience = self.min_patience if self.min_patience is not None else max(50, round(max_iterations / 15))
        patience = half_window if self.patience is None else self.patience
        paper = self.rule == "paper"
        return ResolvedStop(
            half_window=half_window,
            smoothing=1 if paper else self.smoothing,
            patience=patience,
            t_max=float(max_iterations),
            min_curvature=-float("inf") if paper else self.min_curvature,
            significance=0.0 if paper else self.significance,
            guard_early_minimum=not paper,
            online=not paper,
            rule=self.rule,
            risk_smoothing=self.risk_smoothing,
            patience_ratio=self.patience_ratio,
            min_patience=min_patience,
        )


@dataclass(frozen=True)
class ResolvedStop:
    """A :class:`StopConfig` with every default filled for one run."""

    half_window: int
    smoothing: int
    patience: int
    t_max: float
    min_curvature: float = 0.0
    significance: float = 0.0
    guard_early_minimum: bool = True
    online: bool = True
    rule: str = "knee"
    risk_smoothing: int = 25
    patience_ratio: float = 0.5
    min_patience: int = 50


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
