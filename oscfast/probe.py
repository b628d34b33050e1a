"""The pseudo-noise probe: its draws, its projection and the risk constants (pure functions).

method.md section 2 (pseudo-noise), section 3 (P_t) and section 8 (the twin probe and its SURE
risk). Stateful rules that use these live in :mod:`oscfast.stopping`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch

__all__ = [
    "Probe",
    "ProbeKind",
    "RiskConstants",
    "gaussian_pseudo_noise",
    "masked_uniform_pseudo_noise",
    "probed_fraction",
    "projection",
    "risk_constants",
]

#: where the pseudo-noise goes: into the returned fit ("inline", the paper), into a twin fit
#: that runs beside it ("twin", method.md section 8), or nowhere ("none": plain DIP)
ProbeKind = Literal["inline", "twin", "none"]


def gaussian_pseudo_noise(
    shape: tuple[int, ...], std: float, *, seed: int = 0, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """i.i.d. N(0, std^2) pseudo-noise (method.md section 2), drawn on the CPU so that the
    same seed gives the same n on every device."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=generator, dtype=torch.float64).mul_(std).to(dtype)


def masked_uniform_pseudo_noise(mask: torch.Tensor, std: float, *, channels: int, seed: int = 0) -> torch.Tensor:
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


def probed_fraction(noise: torch.Tensor, std: float) -> float:
    """rho = |n|^2 / (std^2 N): the share of measurement entries the probe touches (1 unless
    the task is masked, where holes get no pseudo-noise)."""
    return float(noise.double().pow(2).sum()) / (std**2 * noise.numel())


@dataclass(frozen=True)
class RiskConstants:
    """risk_t = loss_t + weight * P_t + offset estimates ``rho`` times the mean squared error
    of A(x_t) against the clean measurement A(x0) over the probed entries.

    Attributes:
        weight: the factor of P (``inf`` for the twin with an unknown level: the rule takes the
            level from the run, :class:`oscfast.stopping.RiskRule`'s ``level_bound``).
        offset: the constant (only matters for :attr:`unbiased` estimates of the error;
            ``-inf`` with ``weight=inf``).
        rho: the probed fraction (:func:`probed_fraction`).
        unbiased: whether ``risk / rho`` is an unbiased estimate of the error (twin probe with
            white measurement noise of known level), so that it can be reported.
    """

    weight: float
    offset: float
    rho: float
    unbiased: bool


def risk_constants(kind: ProbeKind, *, noise_level: float, probe_std: float, rho: float) -> RiskConstants:
    """The SURE constants of the risk rule for a probe kind (method.md section 8).

    - twin: risk_A = loss_A - rho sigma_e^2 + 2 rho sigma_e^2 P_twin (fit A's own error;
      no pseudo-noise in A; P_twin is the Monte-Carlo divergence per probed entry). An
      unknown level (``noise_level=inf``) gives ``weight=inf, offset=-inf``: the rule then
      takes the level from the run (:class:`oscfast.stopping.RiskRule`, ``level_bound``).
    - inline: the fit carries n too, so its target noise has variance
      s^2 = sigma_e^2 + sigma_n^2: risk = loss + 2 rho s^2 P (up to a constant; P carries a
      chance correlation of the image with n, so it is not reported as an estimate). An
      unknown level counts as 0 there (the inline rule has no bound of its own).

    Raises:
        ValueError: for the "none" probe (no P to weigh) or a negative or NaN level.
    """
    if not (noise_level >= 0 and probe_std >= 0):
        raise ValueError(f"noise levels must be >= 0, got {noise_level} and {probe_std}")
    if kind == "twin":
        if math.isinf(noise_level):
            return RiskConstants(weight=math.inf, offset=-math.inf, rho=rho, unbiased=True)
        variance = noise_level**2
        return RiskConstants(weight=2 * rho * variance, offset=-rho * variance, rho=rho, unbiased=True)
    if kind == "inline":
        variance = (noise_level**2 if math.isfinite(noise_level) else 0.0) + probe_std**2
        return RiskConstants(weight=2 * rho * variance, offset=0.0, rho=rho, unbiased=False)
    raise ValueError("the risk rule needs a probe ('inline' or 'twin')")


@dataclass(frozen=True)
class Probe:
    """How a restoration is probed: the kind and the pseudo-noise's standard deviation."""

    kind: ProbeKind = "twin"
    std: float = 1.0 / 25.0

    def __post_init__(self) -> None:
        if self.kind not in ("inline", "twin", "none"):
            raise ValueError(f"unknown probe {self.kind!r}; expected 'twin', 'inline' or 'none'")
        if not self.std >= 0:
            raise ValueError(f"pseudo_noise_std must be >= 0, got {self.std}")
        if self.kind != "none" and self.std == 0:
            object.__setattr__(self, "kind", "none")
