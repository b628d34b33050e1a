"""The Orthogonal Stopping Criterion: pseudo-noise, projection and the online stop rule.

Pure functions for the math (method.md sections 2-3) and one small stateful object,
:class:`OSCStopper`, that the engine and users both drive (section 5).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch

from oscfast.config import ResolvedStop, StopConfig, StopRule

__all__ = [
    "KneeDecision",
    "OSCStopper",
    "curvature_standard_error",
    "RiskStopper",
    "make_stopper",
    "risk_weight",
    "StopDecision",
    "gaussian_pseudo_noise",
    "masked_uniform_pseudo_noise",
    "projection",
]


def gaussian_pseudo_noise(
    shape: tuple[int, ...], std: float, *, seed: int = 0, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """i.i.d. N(0, std^2) pseudo-noise (method.md section 2), drawn on the CPU so that the
    same seed gives the same n on every device."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=generator, dtype=torch.float64).mul_(std).to(dtype)


def masked_uniform_pseudo_noise(
    mask: torch.Tensor, std: float, *, channels: int, seed: int = 0
) -> torch.Tensor:
    """Uniform pseudo-noise on known pixels only (method.md section 2, masked tasks).

    n = m * u with u ~ U(-a, a), a = sqrt(3) * std (same standard deviation as the
    Gaussian case); holes get none because the loss never sees them.

    Shape:
        mask: (1, 1 or C, H, W) in {0, 1}; returns (1, channels, H, W).
    """
    generator = torch.Generator().manual_seed(seed)
    _, _, height, width = mask.shape
    a = math.sqrt(3.0) * std
    u = torch.rand((1, channels, height, width), generator=generator, dtype=torch.float64)
    return ((2.0 * u - 1.0) * a * mask.to(torch.float64).cpu()).to(torch.float32)


def projection(measured: torch.Tensor, noise: torch.Tensor, inv_noise_energy: float | torch.Tensor) -> torch.Tensor:
    """P = <A(x), n> / <n, n> (method.md section 3) as a 0-d tensor, without a host sync."""
    return torch.sum(measured * noise) * inv_noise_energy


def curvature_standard_error(median_step: float, settings: ResolvedStop) -> float:
    """Standard error of the curvature that white jitter of P alone would give.

    The jitter sigma is estimated robustly as median |P_t - P_{t-1}| / (0.6745 sqrt 2); for a
    least-squares parabola over 2L + 1 points spaced h = 1 / t_max,
    SE(a) = sigma / (h^2 L^2 sqrt((2L + 1) 4 / 45)) and kappa = 2a. Smoothing leaves this about
    unchanged (fewer, less noisy effective points).
    """
    sigma = median_step / (0.6745 * math.sqrt(2.0))
    half = settings.half_window
    spacing = 1.0 / settings.t_max
    return 2.0 * sigma / (spacing**2 * half**2 * math.sqrt((2 * half + 1) * 4.0 / 45.0))


class KneeDecision:
    """The knee rule's bookkeeping on scalars (method.md section 5), shared by
    :class:`OSCStopper` and the exported stopper's caller (:class:`oscfast.export.StopRule`).

    Per iteration it takes the smoothed P and the curvature of iteration ``newest - L``; it
    keeps the running argmin of the smoothed P (windows that start before it are ignored,
    method.md section 7), the running argmax t* of the curvatures above ``threshold``, and
    says stop once ``patience`` centres have passed without a new maximum (then it freezes).
    """

    def __init__(self, settings: ResolvedStop) -> None:
        self.settings = settings
        self._min_pbar = math.inf
        self._argmin_pbar = 0
        self.best_iteration: int | None = None
        self.best_curvature = -math.inf
        self.should_stop = False
        self.stop_iteration: int | None = None

    def observe(self, newest: int, pbar: float, curvature: float, threshold: float) -> bool:
        """Advance by iteration ``newest``; returns whether t* changed."""
        settings = self.settings
        lag = settings.half_window
        if pbar < self._min_pbar:
            self._min_pbar = float(pbar)
            self._argmin_pbar = newest
        centre = newest - lag
        if self.should_stop or centre < lag:
            return False
        new_best = False
        guarded = settings.guard_early_minimum and centre - lag < self._argmin_pbar
        if not guarded and curvature > self.best_curvature and curvature > threshold:
            self.best_curvature = float(curvature)
            self.best_iteration = centre
            new_best = True
        if settings.online and self.best_iteration is not None and centre - self.best_iteration >= settings.patience:
            self.should_stop = True
            self.stop_iteration = newest + 1
        return new_best

    def threshold(self, median_step: float | None) -> float:
        """The candidate threshold max(min_curvature, significance * SE)."""
        settings = self.settings
        if settings.significance == 0:
            return settings.min_curvature
        if median_step is None:
            return math.inf
        return max(settings.min_curvature, settings.significance * curvature_standard_error(median_step, settings))


@dataclass(frozen=True)
class StopDecision:
    """What the stopper knows after an update.

    Attributes:
        iteration: index of the newest P value (0-based).
        p: the newest P value.
        curvature: newest available curvature (NaN during the first 2L iterations).
        curvature_iteration: the iteration that curvature belongs to (iteration - L).
        best_iteration: current choice t* (None while no knee has been seen).
        best_curvature: curvature at t*.
        should_stop: the online rule says stop (stays True once set).
        new_best: t* changed during this update.
    """

    iteration: int
    p: float
    curvature: float
    curvature_iteration: int
    best_iteration: int | None
    best_curvature: float
    should_stop: bool
    new_best: bool
    risk: float = math.nan


class OSCStopper:
    """Online OSC stop rule (method.md section 5), usable in any DIP-style loop.

    Feed it the operator output of each iteration (:meth:`update`) or P values that were
    computed elsewhere (:meth:`update_p`, what the engine does with values read from the
    device). It keeps the running argmax of the chord curvature of the smoothed P curve,
    ignoring windows that start before the curve's early minimum and bends that are not
    upward, and says stop once that maximum has not been exceeded for ``patience``
    iterations. After it has said stop its choice is frozen; further updates only extend
    the recorded curves.

    Args:
        pseudo_noise: the fixed pseudo-noise n (torch or numpy, measurement shape). Needed by
            :meth:`update` and :meth:`perturb`; not by :meth:`update_p`.
        max_iterations: the loop's iteration cap (scales the iteration axis, sets the default
            window and the capacity of the curve buffers).
        half_window, smoothing, patience, rule, min_curvature: override ``config`` fields.
        config: a full :class:`StopConfig`.

    Example:
        >>> import numpy as np
        >>> stopper = OSCStopper(max_iterations=600, half_window=50)
        >>> curve = np.r_[np.zeros(300), np.linspace(0, 0.5, 300)]  # knee at 300
        >>> decision = stopper.update_p(curve)
        >>> abs(decision.best_iteration - 300) < 25
        True
    """

    def __init__(
        self,
        pseudo_noise: torch.Tensor | np.ndarray | None = None,
        *,
        max_iterations: int,
        half_window: int | None = None,
        smoothing: int | None = None,
        patience: int | None = None,
        rule: StopRule | None = None,
        min_curvature: float | None = None,
        config: StopConfig | None = None,
    ) -> None:
        from oscfast.kernels import IncrementalCurvature

        config = config or StopConfig(rule="knee")
        if config.rule == "risk":
            config = replace(config, rule="knee")  # this class is the knee rule
        overrides = {
            key: value
            for key, value in dict(
                half_window=half_window,
                smoothing=smoothing,
                patience=patience,
                rule=rule,
                min_curvature=min_curvature,
            ).items()
            if value is not None
        }
        if overrides:
            config = StopConfig(**{**config.__dict__, **overrides})
        if max_iterations < 1:
            raise ValueError(f"max_iterations must be >= 1, got {max_iterations}")
        self.config = config
        self.settings: ResolvedStop = config.resolve(max_iterations)
        self.max_iterations = max_iterations
        self._curve = IncrementalCurvature(
            self.settings.half_window, self.settings.smoothing, self.settings.t_max, max_iterations
        )
        self._noise = pseudo_noise
        self._noise_energy: float | None = None
        self._noise_cache: dict[tuple[Any, Any], torch.Tensor] = {}
        if pseudo_noise is not None:
            energy = float(_as_float64(pseudo_noise).pow(2).sum()) if isinstance(pseudo_noise, torch.Tensor) else float(np.sum(np.asarray(pseudo_noise, dtype=np.float64) ** 2))
            if not energy > 0:
                raise ValueError("pseudo_noise is all zeros: nothing to project on")
            self._noise_energy = energy
        self._decision = KneeDecision(self.settings)

    @property
    def best_iteration(self) -> int | None:
        """The current choice t* (None while no knee has been seen)."""
        return self._decision.best_iteration

    @property
    def best_curvature(self) -> float:
        """Curvature at t*."""
        return self._decision.best_curvature

    @property
    def should_stop(self) -> bool:
        """The online rule has fired (stays True)."""
        return self._decision.should_stop

    @property
    def stop_iteration(self) -> int | None:
        """How many iterations had run when the rule fired."""
        return self._decision.stop_iteration

    # -- inputs ---------------------------------------------------------------------------
    def perturb(self, observation: torch.Tensor | np.ndarray) -> torch.Tensor | np.ndarray:
        """Return y + n, the target of an OSC run (not clipped: method.md section 2)."""
        noise = self._require_noise()
        if isinstance(observation, torch.Tensor):
            return observation + self._noise_like(observation)
        return np.asarray(observation) + np.asarray(_to_numpy(noise), dtype=np.asarray(observation).dtype)

    def projection(self, measured: torch.Tensor | np.ndarray) -> float:
        """P = <A(x), n>/<n, n> for one operator output (method.md section 3)."""
        noise = self._require_noise()
        assert self._noise_energy is not None
        if isinstance(measured, torch.Tensor):
            noise_t = self._noise_like(measured)
            if measured.shape != noise_t.shape:
                raise ValueError(f"operator output has shape {tuple(measured.shape)}, pseudo-noise {tuple(noise_t.shape)}")
            return float(torch.sum(measured.detach().double() * noise_t.double())) / self._noise_energy
        measured_np = np.asarray(measured, dtype=np.float64)
        noise_np = np.asarray(_to_numpy(noise), dtype=np.float64)
        if measured_np.shape != noise_np.shape:
            raise ValueError(f"operator output has shape {measured_np.shape}, pseudo-noise {noise_np.shape}")
        return float(np.vdot(measured_np, noise_np)) / self._noise_energy

    def update(self, measured: torch.Tensor | np.ndarray) -> StopDecision:
        """Project one operator output A(x_t) on n and advance the rule by one iteration."""
        return self.update_p(np.array([self.projection(measured)]))

    def update_p(
        self,
        values: np.ndarray | list[float] | float,
        loss: np.ndarray | None = None,
        *,
        p_ema: np.ndarray | None = None,
        loss_ema: np.ndarray | None = None,
    ) -> StopDecision:
        """Advance the rule by one or several already computed P values (``loss``,
        ``p_ema`` and ``loss_ema`` are accepted for a common interface with
        :class:`RiskStopper` and ignored)."""
        values = np.atleast_1d(np.asarray(values, dtype=np.float64))
        if values.size == 0:
            raise ValueError("update_p needs at least one value")
        if not np.all(np.isfinite(values)):
            raise ValueError("P values must be finite (the loss diverged?)")
        first = self._curve.n
        if first + values.size > self.max_iterations:
            raise ValueError(
                f"more P values ({first + values.size}) than max_iterations ({self.max_iterations})"
            )
        kappas = self._curve.push_many(values)
        pbar = self._curve.pbar
        lag = self.settings.half_window
        threshold = self._decision.threshold(self._median_step())
        new_best = False
        for offset, kappa in enumerate(kappas):
            new_best |= self._decision.observe(first + offset, float(pbar[first + offset]), float(kappa), threshold)
        newest = self._curve.n - 1
        centre = newest - lag
        curvature = float(self._curve.kappa[centre]) if centre >= lag else math.nan
        return StopDecision(
            iteration=newest,
            p=float(values[-1]),
            curvature=curvature,
            curvature_iteration=centre,
            best_iteration=self.best_iteration,
            best_curvature=self.best_curvature,
            should_stop=self.should_stop,
            new_best=new_best,
        )

    def curvature_noise(self) -> float:
        """Standard error of the curvature from the jitter of P so far
        (:func:`curvature_standard_error`); inf before 3 values."""
        median_step = self._median_step()
        return math.inf if median_step is None else curvature_standard_error(median_step, self.settings)

    def _median_step(self) -> float | None:
        if self._curve.n < 3:
            return None
        return float(np.median(np.abs(np.diff(self._curve.p))))

    # -- results --------------------------------------------------------------------------
    @property
    def iterations_seen(self) -> int:
        """How many P values have been fed."""
        return self._curve.n

    @property
    def p(self) -> np.ndarray:
        """Recorded P values (a copy)."""
        return np.array(self._curve.p)

    @property
    def curvature(self) -> np.ndarray:
        """Curvature per iteration, NaN where not (yet) defined (a copy)."""
        kappa = np.full(self._curve.n, np.nan)
        known = max(0, self._curve.n - self.settings.half_window)
        kappa[:known] = self._curve.kappa[:known]
        return kappa

    # -- helpers --------------------------------------------------------------------------
    def _require_noise(self) -> torch.Tensor | np.ndarray:
        if self._noise is None:
            raise ValueError("this stopper was made without pseudo_noise; pass it or use update_p")
        return self._noise

    def _noise_like(self, reference: torch.Tensor) -> torch.Tensor:
        key = (reference.device, reference.dtype)
        if key not in self._noise_cache:
            noise = self._noise
            tensor = noise if isinstance(noise, torch.Tensor) else torch.from_numpy(np.asarray(noise))
            self._noise_cache[key] = tensor.to(device=reference.device, dtype=reference.dtype)
        return self._noise_cache[key]


def _as_float64(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.detach().to("cpu", torch.float64)


def _to_numpy(array: torch.Tensor | np.ndarray) -> np.ndarray:
    if isinstance(array, torch.Tensor):
        return array.detach().cpu().numpy()
    return np.asarray(array)


def risk_weight(noise_level: float, pseudo_noise: torch.Tensor, pseudo_noise_std: float) -> float:
    """The weight c of P in the risk R_t = loss_t + c P_t (rule "risk").

    With target y + n = A x0 + e + n and white noise e (std sigma_e) and n (std sigma_n), the
    fitted output's correlation with the total noise is s^2 times its divergence, and
    P_t estimates the divergence per probed entry (Monte-Carlo SURE with n as the probe). So
    mean |A x_t - A x0|^2 ~ loss_t - rho s^2 + 2 rho s^2 P_t with s^2 = sigma_e^2 + sigma_n^2
    and rho = |n|^2 / (sigma_n^2 N) the fraction of probed entries (1 unless masked):
    c = 2 rho s^2.
    """
    energy = float(pseudo_noise.double().pow(2).sum())
    rho = energy / (pseudo_noise_std**2 * pseudo_noise.numel())
    return 2.0 * rho * (noise_level**2 + pseudo_noise_std**2)


class RiskStopper:
    """Online minimum of the estimated risk R_t = loss_t + c P_t (rule "risk").

    When the P and loss of the exponential average of outputs are fed too, its risk is
    scored the same way and the better of the two images is chosen (``best_output``).

    R_t estimates, up to a constant, the mean squared error of A(x_t) against the clean
    measurement (see :func:`risk_weight`); it falls while the net fits the image and rises
    once it fits noise. The rule keeps the running minimum of the trailing mean of R (window
    ``risk_smoothing``), attributes it to the window's centre, and stops once that minimum
    is older than max(min_patience, patience_ratio * t*) iterations: the wait scales with
    the run's own time scale, so no window has to be tuned to the iteration cap.

    Args:
        weight: c of :func:`risk_weight`.
        max_iterations: the iteration cap.
        config: a :class:`StopConfig` (risk_smoothing, patience_ratio, min_patience).
    """

    def __init__(self, *, weight: float, max_iterations: int, config: StopConfig | None = None) -> None:
        if not weight >= 0:
            raise ValueError(f"weight must be >= 0, got {weight}")
        if max_iterations < 1:
            raise ValueError(f"max_iterations must be >= 1, got {max_iterations}")
        self.config = config or StopConfig(rule="risk")
        self.settings: ResolvedStop = self.config.resolve(max_iterations)
        self.weight = weight
        self.max_iterations = max_iterations
        self._p = np.zeros(max_iterations)
        self._loss = np.zeros(max_iterations)
        self._p_ema = np.full(max_iterations, np.nan)
        self._loss_ema = np.full(max_iterations, np.nan)
        self._n = 0
        self.best_output = "raw"
        self._best_risk = math.inf
        self.best_iteration: int | None = None
        self.should_stop = False
        self.stop_iteration: int | None = None

    def update_p(
        self,
        values: np.ndarray | list[float] | float,
        loss: np.ndarray | None = None,
        *,
        p_ema: np.ndarray | None = None,
        loss_ema: np.ndarray | None = None,
    ) -> StopDecision:
        """Advance the rule by new P values and the losses of the same iterations (and,
        optionally, the P values and losses of the averaged output)."""
        values = np.atleast_1d(np.asarray(values, dtype=np.float64))
        if loss is None:
            raise ValueError("rule 'risk' needs the loss of each iteration")
        series = [values, np.atleast_1d(np.asarray(loss, dtype=np.float64))]
        with_ema = p_ema is not None and loss_ema is not None
        if with_ema:
            series += [np.atleast_1d(np.asarray(p_ema, dtype=np.float64)), np.atleast_1d(np.asarray(loss_ema, dtype=np.float64))]
        if values.size == 0 or any(item.shape != values.shape for item in series):
            raise ValueError(f"need as many losses as P values, got shapes {[item.shape for item in series]}")
        if not all(np.all(np.isfinite(item)) for item in series):
            raise ValueError("P and loss values must be finite (the loss diverged?)")
        first = self._n
        if first + values.size > self.max_iterations:
            raise ValueError(f"more P values ({first + values.size}) than max_iterations ({self.max_iterations})")
        end = first + values.size
        self._p[first:end], self._loss[first:end] = series[0], series[1]
        if with_ema:
            self._p_ema[first:end], self._loss_ema[first:end] = series[2], series[3]
        self._n = end
        window = self.settings.risk_smoothing
        smoothed_curves = {"raw": self._smoothed(self.risk, window)}
        if with_ema:
            smoothed_curves["ema"] = self._smoothed(self.risk_ema, window)
        new_best = False
        smoothed = math.nan
        for newest in range(max(first, window - 1), self._n):
            smoothed = smoothed_curves["raw"][newest]
            if self.should_stop:
                continue
            for output, curve in smoothed_curves.items():
                if curve[newest] < self._best_risk:
                    self._best_risk = float(curve[newest])
                    self.best_iteration = newest - (window - 1) // 2
                    self.best_output = output
                    new_best = True
            if self.best_iteration is None:
                continue
            patience = max(self.settings.min_patience, self.settings.patience_ratio * self.best_iteration)
            if newest - self.best_iteration >= patience:
                self.should_stop = True
                self.stop_iteration = newest + 1
        return StopDecision(
            iteration=self._n - 1,
            p=float(values[-1]),
            curvature=math.nan,
            curvature_iteration=self._n - 1,
            best_iteration=self.best_iteration,
            best_curvature=math.nan,
            should_stop=self.should_stop,
            new_best=new_best,
            risk=smoothed,
        )

    @property
    def iterations_seen(self) -> int:
        """How many values have been fed."""
        return self._n

    @property
    def p(self) -> np.ndarray:
        """Recorded P values (a copy)."""
        return self._p[: self._n].copy()

    @property
    def risk(self) -> np.ndarray:
        """The (unsmoothed) risk estimate of the raw output per iteration, up to a constant."""
        return self._loss[: self._n] + self.weight * self._p[: self._n]

    @property
    def risk_ema(self) -> np.ndarray:
        """The same for the averaged output (NaN where it was not fed)."""
        return self._loss_ema[: self._n] + self.weight * self._p_ema[: self._n]

    @staticmethod
    def _smoothed(values: np.ndarray, window: int) -> np.ndarray:
        """Trailing mean over ``window`` (NaN before the window is full)."""
        cumulative = np.concatenate([[0.0], np.cumsum(values)])
        out = np.full(values.size, np.nan)
        out[window - 1 :] = (cumulative[window:] - cumulative[:-window]) / window
        return out

    @property
    def curvature(self) -> np.ndarray:
        """The knee rule's curvature is not computed by this rule: all NaN."""
        return np.full(self._n, np.nan)


def make_stopper(
    config: StopConfig, *, max_iterations: int, risk_weight_value: float | None = None
) -> OSCStopper | RiskStopper:
    """The stopper that ``config.rule`` names."""
    if config.rule == "risk":
        if risk_weight_value is None:
            raise ValueError("rule 'risk' needs the risk weight (see risk_weight)")
        return RiskStopper(weight=risk_weight_value, max_iterations=max_iterations, config=config)
    return OSCStopper(max_iterations=max_iterations, config=config)
