"""Noise beyond Gaussian: shot (Poisson), speckle and impulse noise for DIP denoising.

One vocabulary for the four noise kinds of the ES-WMV benchmark (issue 16), and per kind what DIP
needs: the observation model, its exact moments, a data term, an estimate of its parameter from
the observation alone, and an automatic pick of the kind.

Observation models (``x`` the clean image in ``[0, 1]``, every value clipped to ``[0, 1]``;
ImageNet-C, Hendrycks & Dietterich 2019, for the first three; the parameter ``c`` per severity is
:data:`SEVERITY_PARAMETERS`):

=========== ================================ ===========================================
kind        model                            severity 1 / 2 / 3 / 4 / 5
=========== ================================ ===========================================
gaussian    ``x + N(0, c^2)``                c = 0.08 / 0.12 / 0.18 / 0.26 / 0.38
poisson     ``Poisson(c x) / c`` (shot)      c = 60 / 25 / 12 / 5 / 3
speckle     ``x + x N(0, c^2)``              c = 0.15 / 0.20 / 0.35 / 0.45 / 0.60
impulse     a share c of the values set to   c = 0.10 / 0.30 / 0.50 / 0.70 / 0.90
            0 or 1 (half each), per pixel
            and channel (salt and pepper)
=========== ================================ ===========================================

Impulse noise follows the benchmark's files, not ImageNet-C (whose shares are 0.03 .. 0.27):
severities 2 / 3 / 4 are the shares measured on them (``shared/data/eswmv/README.md``); 1 and 5
continue the benchmark's step of 0.20 (0.10 lies between ImageNet-C's severities 3 and 4; 0.90
leaves one value in ten, the hardest case DIP papers report for salt and pepper). The benchmark
files are ``floor(255 * noisy)`` (``np.uint8`` of the float, measured: the mean of noisy - clean
is -0.5 / 255 on mid-tones); :func:`add_noise` does not quantise.

Data terms (per fit: a ``(K, C, H, W)`` batch of fits gives ``(K,)`` losses):

- ``"mse"``: the mean squared error of today's Gaussian model; the data term of ``"gaussian"``,
  ``"poisson"`` and ``"speckle"`` (the benchmark's setting and the peers' oracle; the risk rule
  reads the squared residual, so a model stopped by the risk must fit with it).
- ``"known-mse"``: the mean squared error on the values salt and pepper left alone, for
  ``"impulse"`` (:func:`impulse_known_mask`): salt and pepper replaces values by exactly 0 or 1
  and leaves the others exact, so it is missing data, and DIP restores it as it restores random
  missing pixels (the known values are put back). Measured against L1 on the benchmark's F16
  file (``bench/results/data-terms.md``).
- ``"l1"``: the mean absolute error (the DIP literature's choice for impulse noise: the minimiser
  of a sum of absolute errors is a median, which ignores a minority of outliers); kept for
  comparison. L1 still fits the impulses in the end, and its minimiser is pulled by them where
  they are not a small minority (half of the values at severity 3).
- ``"poisson"``: the Poisson negative log-likelihood (:func:`poisson_data_term`, proper where the
  Anscombe transform is not), kept for comparison: the risk rule cannot read it.

The twin probe per model (``docs/noise-models.md`` says the same at more length). The twin
(method.md section 8, ``docs/twin-probe.md``) fits A on ``y`` and B on ``y + n``; with a smooth
data term and ``n`` small, ``<x_B - x_A, n>`` is ``a^2 sum_i v_i J_ii`` for a probe
``n_i = a sqrt(v_i) b_i`` (``b`` i.i.d., zero mean, unit variance), and Stein's lemma for
independent Gaussian noise of variance ``v_i`` per entry gives the heteroscedastic SURE of fit A
in pixel units,

    ``risk_A = |x_A - y|^2 / M - mean(v) + 2 <x_B - x_A, n> / (a^2 M)``,

which with ``<n, n> ~ a^2 M mean(v)`` is the present ``loss - s^2 + 2 s^2 P_twin`` with
``s^2 = mean(v)``. So:

- gaussian (MSE): ``v = s^2`` everywhere: the present probe (i.i.d. ``N(0, 1/25^2)``) and risk
  rule, ``s`` from :func:`estimate_gaussian_level`.
- poisson (MSE): ``v_i = x_i / c``. The probe is shaped like the noise,
  ``n_i ~ N(0, a^2 v_i)`` with ``v`` from a smoothed observation (:func:`noise_variance_map`),
  ``a`` such that its RMS is 1/25: then it is the same small fraction of the local noise
  everywhere. The risk rule above applies with ``mean(v)`` in place of ``s^2``; it is
  approximate where counts are small (``c x < ~3``: the noise is far from Gaussian) and where
  clipping at 1 bites. The risk reads the squared residual ``|x_A - y|^2``, so the loss is the
  MSE (the benchmark's setting): with the Poisson likelihood as the loss the risk read a loss
  ~``c / (2 y)`` times too large and never rose (the benchmark's F16 file at severity 3 ran to
  the cap, 6.3 dB below its peak). The likelihood stays a data term for comparison.
- speckle (MSE): ``v_i = c^2 x_i^2``: the same shaped probe and the same risk, ``c`` from
  :func:`estimate_speckle_level`. A uniform probe and a uniform ``s^2`` (today's default) weigh
  dark and bright pixels alike although the noise does not.
- impulse (known values): salt and pepper is cast as missing data. The values at exactly 0 or 1
  are dropped (:func:`impulse_known_mask` keeps those of clean saturated areas), the others are
  the clean values, fitted with MSE and put back in the result, as for random pixel
  restoration. The observation on the known values is exact: there is no noise to overfit and
  no level to estimate, so the SURE risk has nothing to read; ``P_twin`` (masked uniform probe of
  std 1/25 on the known values, as for inpainting) is read by the knee rule, the default of the
  exact tasks. With L1 on all values (the literature's choice, kept as a data term for
  comparison) the SURE argument fails twice over: the noise has no density (point masses at 0
  and 1; Stein's lemma needs Gaussian noise), and the L1 fit is not a smooth map of its target.

Restorations use these through the denoising task: ``restore(y, task="denoise", noise=...)``
builds the model's subclass of :class:`oscfast.tasks.Denoise` (:func:`choose_noise` names or
detects the model and estimates ``c``; :func:`probe_shape` shapes the twin's probe;
:data:`STOP_RULES` gives its default rule).

Estimators read the variance-versus-mean law of the observation (:func:`variance_profile`): the
residual of a 3x3 second-difference filter (Immerkaer 1996; it removes constants and linear
ramps and has unit gain on white noise) against a 7x7 local mean (a wider mean keeps its own noise
small and uncorrelated with the residual), in intensity bins, on the smoother half of the pixels
of each bin. Each kind predicts a law once clipping is taken into account
(:func:`clipped_moments`): constant (gaussian), linear (poisson), quadratic (speckle).

Example:
    >>> clean = np.full((32, 32, 3), 0.5)
    >>> noisy = add_noise(clean, "speckle", 3, seed=1)
    >>> noisy.shape, noisy.dtype, float(noisy.min()) >= 0.0
    ((32, 32, 3), dtype('float32'), True)
"""
from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Literal, get_args

import numpy as np
import torch
from scipy import ndimage, optimize, special, stats

__all__ = [
    "DATA_TERMS",
    "NOISE_CHOICES",
    "NOISE_KINDS",
    "SEVERITIES",
    "SEVERITY_PARAMETERS",
    "STOP_RULES",
    "DataTermName",
    "NoiseChoice",
    "NoiseChoiceName",
    "NoiseGuess",
    "NoiseKind",
    "VarianceProfile",
    "add_noise",
    "apply_noise",
    "check_noise_choice",
    "check_noise_kind",
    "check_severity",
    "choose_noise",
    "clipped_moments",
    "data_term",
    "default_data_term",
    "detect_noise",
    "estimate_gaussian_level",
    "estimate_impulse_share",
    "estimate_noise_parameter",
    "estimate_poisson_scale",
    "estimate_speckle_level",
    "fit_noise_law",
    "impulse_known_mask",
    "known_mse_data_term",
    "l1_data_term",
    "mse_data_term",
    "noise_variance_map",
    "poisson_data_term",
    "probe_shape",
    "severity_parameter",
    "variance_profile",
]

logger = logging.getLogger(__name__)

NoiseKind = Literal["gaussian", "poisson", "speckle", "impulse"]
#: The noise kinds, in a fixed order ("poisson" is shot noise).
NOISE_KINDS: tuple[NoiseKind, ...] = get_args(NoiseKind)
#: Severities, as in ImageNet-C.
SEVERITIES: tuple[int, ...] = (1, 2, 3, 4, 5)
#: The parameter ``c`` of each kind at severities 1..5 (see the module docstring): the noise std
#: (gaussian), the photon count of a white pixel (poisson), the relative std (speckle), the share
#: of values replaced (impulse).
SEVERITY_PARAMETERS: Mapping[NoiseKind, tuple[float, ...]] = {
    "gaussian": (0.08, 0.12, 0.18, 0.26, 0.38),
    "poisson": (60.0, 25.0, 12.0, 5.0, 3.0),
    "speckle": (0.15, 0.20, 0.35, 0.45, 0.60),
    "impulse": (0.10, 0.30, 0.50, 0.70, 0.90),
}

DataTermName = Literal["mse", "known-mse", "l1", "poisson"]
#: Data term of each noise kind.
DATA_TERMS: Mapping[NoiseKind, DataTermName] = {
    "gaussian": "mse",
    "poisson": "mse",
    "speckle": "mse",
    "impulse": "known-mse",
}

#: Laws of :func:`fit_noise_law`: the continuous kinds.
_LAWS: tuple[NoiseKind, ...] = ("gaussian", "poisson", "speckle")
#: Search range of each law's parameter (log-uniform).
_PARAMETER_RANGE: Mapping[NoiseKind, tuple[float, float]] = {
    "gaussian": (1e-3, 1.0),
    "poisson": (0.3, 3000.0),
    "speckle": (1e-3, 3.0),
}


# --------------------------------------------------------------------------------------------
# Vocabulary and checks
# --------------------------------------------------------------------------------------------
def check_noise_kind(kind: object) -> NoiseKind:
    """Return ``kind`` if it names a noise model.

    Raises:
        ValueError: If it does not, naming the value and the allowed ones.
    """
    return _one_of(kind, NOISE_KINDS)  # type: ignore[return-value]


def _one_of(value: object, allowed: tuple[str, ...]) -> str:
    """``value`` if it is one of the ``allowed`` names of ``noise=``; a ValueError naming them otherwise."""
    if not isinstance(value, str) or value not in allowed:
        raise ValueError(f"noise must be one of {', '.join(map(repr, allowed))}, got {value!r}")
    return value


def check_severity(severity: object) -> int:
    """Return ``severity`` as an int if it is one of 1..5.

    Raises:
        ValueError: If it is not, naming the value and the allowed ones.
    """
    if (
        isinstance(severity, (bool, np.bool_))
        or not isinstance(severity, (int, np.integer))
        or int(severity) not in SEVERITIES
    ):
        raise ValueError(
            f"severity must be an integer in {SEVERITIES[0]}..{SEVERITIES[-1]}, got {severity!r}"
        )
    return int(severity)


def severity_parameter(kind: NoiseKind, severity: int) -> float:
    """The parameter ``c`` of noise ``kind`` at ``severity`` (:data:`SEVERITY_PARAMETERS`).

    Raises:
        ValueError: For an unknown kind or a severity outside 1..5.

    Example:
        >>> severity_parameter("poisson", 3)
        12.0
    """
    kind = check_noise_kind(kind)
    return SEVERITY_PARAMETERS[kind][check_severity(severity) - 1]


def _check_parameter(kind: NoiseKind, parameter: object) -> float:
    try:
        value = float(parameter)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ValueError(f"{kind} noise parameter must be a number, got {parameter!r}") from None
    if kind == "impulse":
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"impulse share must lie in [0, 1], got {parameter!r}")
    elif kind == "poisson":
        if not (math.isfinite(value) and value > 0):
            raise ValueError(f"poisson scale (photons of a white pixel) must be > 0, got {parameter!r}")
    elif not (math.isfinite(value) and value >= 0):
        raise ValueError(f"{kind} noise std must be a finite number >= 0, got {parameter!r}")
    return value


def _check_image(image: object, name: str = "image") -> np.ndarray:
    """``image`` as float64 ``(H, W, C)`` after checking type, shape and range."""
    if not isinstance(image, np.ndarray):
        raise TypeError(f"{name} must be a numpy array, got {type(image).__name__}")
    if image.ndim not in (2, 3):
        raise ValueError(f"{name} must have shape (H, W) or (H, W, C), got {image.shape}")
    if image.size == 0:
        raise ValueError(f"{name} is empty: shape {image.shape}")
    if not np.issubdtype(image.dtype, np.floating):
        hint = " (divide a uint8 image by 255)" if image.dtype == np.uint8 else ""
        raise TypeError(f"{name} must be a float array with values in [0, 1], got {image.dtype}{hint}")
    x = image.astype(np.float64)
    if x.ndim == 2:
        x = x[..., None]
    lo, hi = float(x.min()), float(x.max())
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise ValueError(f"{name} contains NaN or infinite values")
    if lo < 0.0 or hi > 1.0:
        raise ValueError(f"{name} values must lie in [0, 1], got range [{lo:.6g}, {hi:.6g}]")
    return x


# --------------------------------------------------------------------------------------------
# Observations
# --------------------------------------------------------------------------------------------
def apply_noise(image: np.ndarray, kind: NoiseKind, parameter: float, *, seed: int = 0) -> np.ndarray:
    """Noise ``kind`` with parameter ``c`` applied to a clean image, clipped to ``[0, 1]``.

    The models are the module docstring's table. Draws come from
    ``numpy.random.default_rng(seed)``; the input is not modified.

    Args:
        image: Clean image, ``(H, W)`` or ``(H, W, C)``, float in ``[0, 1]``.
        kind: ``"gaussian"``, ``"poisson"``, ``"speckle"`` or ``"impulse"``.
        parameter: ``c``: noise std, photon count of a white pixel, relative std, or the share
            of values replaced.
        seed: Seed of the noise generator.

    Returns:
        The noisy image, float32, the shape of ``image``.

    Raises:
        ValueError: For an unknown kind, a parameter out of range or an invalid image.
        TypeError: If ``image`` is not a float numpy array.

    Example:
        >>> y = apply_noise(np.full((4, 4), 0.5), "impulse", 1.0, seed=0)
        >>> sorted(set(y.ravel().tolist())) in ([0.0, 1.0], [0.0], [1.0])
        True
    """
    kind = check_noise_kind(kind)
    c = _check_parameter(kind, parameter)
    shape = image.shape if isinstance(image, np.ndarray) else None
    x = _check_image(image).reshape(shape)  # type: ignore[arg-type]
    rng = np.random.default_rng(seed)
    if kind == "gaussian":
        noisy = x + rng.normal(0.0, c, x.shape) if c > 0 else x.copy()
    elif kind == "poisson":
        noisy = rng.poisson(x * c) / c
    elif kind == "speckle":
        noisy = x + x * rng.normal(0.0, c, x.shape) if c > 0 else x.copy()
    else:
        hit = rng.random(x.shape) < c
        salt = rng.random(x.shape) < 0.5
        noisy = np.where(hit, salt.astype(np.float64), x)
    return np.clip(noisy, 0.0, 1.0).astype(np.float32)


def add_noise(image: np.ndarray, kind: NoiseKind, severity: int = 3, *, seed: int = 0) -> np.ndarray:
    """Noise ``kind`` at ImageNet-C ``severity`` (1..5) applied to a clean image.

    See :data:`SEVERITY_PARAMETERS` and :func:`apply_noise`.

    Args:
        image: Clean image, ``(H, W)`` or ``(H, W, C)``, float in ``[0, 1]``.
        kind: ``"gaussian"``, ``"poisson"`` (shot), ``"speckle"`` or ``"impulse"``.
        severity: 1 (mildest) .. 5.
        seed: Seed of the noise generator.

    Returns:
        The noisy image, float32 in ``[0, 1]``, the shape of ``image``.

    Raises:
        ValueError: For an unknown kind or severity (the message names the allowed ones) or an
            invalid image.
        TypeError: If ``image`` is not a float numpy array.

    Example:
        >>> y = add_noise(np.full((8, 8, 3), 0.5), "poisson", 4, seed=0)
        >>> bool(np.all(np.isin(np.round(y * 5, 6), [0, 1, 2, 3, 4, 5])))
        True
    """
    return apply_noise(image, kind, severity_parameter(kind, severity), seed=seed)


def clipped_moments(
    kind: NoiseKind, clean: np.ndarray | float, parameter: float
) -> tuple[np.ndarray, np.ndarray]:
    """Exact mean and variance of the noisy value given the clean value ``x`` (after clipping).

    The reference the tests and the estimators use: the clipped normal (gaussian: std ``c``;
    speckle: std ``c x``) in closed form, the clipped Poisson by summing its probabilities, the
    impulse mixture ``(1 - c) delta_x + c/2 delta_0 + c/2 delta_1``.

    Args:
        kind: The noise kind.
        clean: Clean value(s) in ``[0, 1]``.
        parameter: The kind's parameter ``c``.

    Returns:
        ``(mean, variance)`` arrays of the shape of ``clean``.

    Example:
        >>> m, v = clipped_moments("gaussian", 0.5, 0.01)
        >>> round(float(m), 6), round(float(v), 8)
        (0.5, 0.0001)
    """
    kind = check_noise_kind(kind)
    c = _check_parameter(kind, parameter)
    x = np.clip(np.asarray(clean, dtype=np.float64), 0.0, 1.0)
    if kind == "impulse":
        mean = (1 - c) * x + c / 2
        second = (1 - c) * x**2 + c / 2
        return mean, np.maximum(second - mean**2, 0.0)
    if kind == "poisson":
        return _clipped_poisson_moments(x, c)
    std = np.full_like(x, c) if kind == "gaussian" else c * x
    return _clipped_normal_moments(x, std)


def _clipped_normal_moments(mu: np.ndarray, std: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and variance of ``clip(N(mu, std^2), 0, 1)``."""
    safe = np.where(std > 0, std, 1.0)
    a, b = (0.0 - mu) / safe, (1.0 - mu) / safe
    pa, pb = special.ndtr(a), special.ndtr(b)
    fa, fb = stats.norm.pdf(a), stats.norm.pdf(b)
    inside = pb - pa
    # E[Z; a<Z<b] = fa - fb, E[Z^2; a<Z<b] = inside + a fa - b fb (Z standard normal)
    first = mu * inside + safe * (fa - fb)
    second = mu**2 * inside + 2 * mu * safe * (fa - fb) + safe**2 * (inside + a * fa - b * fb)
    mean = first + (1.0 - pb)
    var = second + (1.0 - pb) - mean**2
    exact = std <= 0
    return np.where(exact, mu, mean), np.where(exact, 0.0, np.maximum(var, 0.0))


def _clipped_poisson_moments(x: np.ndarray, c: float) -> tuple[np.ndarray, np.ndarray]:
    """Mean and variance of ``min(Poisson(c x) / c, 1)``: counts below ``c`` summed exactly."""
    top = math.ceil(c)  # k >= c is clipped to 1
    k = np.arange(top, dtype=np.float64)
    lam = (x * c)[..., None]
    with np.errstate(divide="ignore"):
        log_pmf = special.xlogy(k, lam) - lam - special.gammaln(k + 1)
    pmf = np.exp(log_pmf)
    values = k / c
    tail = np.clip(1.0 - pmf.sum(axis=-1), 0.0, 1.0)
    mean = (pmf * values).sum(axis=-1) + tail
    second = (pmf * values**2).sum(axis=-1) + tail
    return mean, np.maximum(second - mean**2, 0.0)


# --------------------------------------------------------------------------------------------
# Data terms
# --------------------------------------------------------------------------------------------
def _per_fit_mean(values: torch.Tensor) -> torch.Tensor:
    return values.flatten(1).mean(dim=1)


def _check_pair(measured: torch.Tensor, target: torch.Tensor) -> None:
    if measured.ndim != 4 or measured.shape != target.shape:
        raise ValueError(
            "measured and target must both have shape (K, C, H, W), got "
            f"{tuple(measured.shape)} and {tuple(target.shape)}"
        )


def mse_data_term(measured: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared error per fit (method.md section 1): the Gaussian negative log-likelihood.

    Args:
        measured: ``A(x)`` of each fit.
        target: Each fit's target (``y`` or ``y + n``).

    Returns:
        ``(K,)`` losses.

    Shape:
        measured, target: ``(K, C, H, W)``.

    Example:
        >>> mse_data_term(torch.zeros(2, 1, 2, 2), torch.ones(2, 1, 2, 2)).tolist()
        [1.0, 1.0]
    """
    _check_pair(measured, target)
    return _per_fit_mean((measured - target) ** 2)


def known_mse_data_term(measured: torch.Tensor, target: torch.Tensor, known: torch.Tensor) -> torch.Tensor:
    """Mean squared error on the known values per fit, the data term for impulse noise.

    ``mean(m (measured - target)^2)`` over all values, ``m`` the known-value mask
    (:func:`impulse_known_mask`): the values salt and pepper replaced weigh nothing, whatever
    ``target`` holds there. The mean is over all values, as the masked tasks' loss is, so the
    scale matches :func:`mse_data_term` on a mask of ones.

    Args:
        measured: ``A(x)`` of each fit.
        target: Each fit's target.
        known: The mask, broadcastable to ``measured``, in {0, 1}.

    Returns:
        ``(K,)`` losses.

    Shape:
        measured, target: ``(K, C, H, W)``; known: ``(1, C, H, W)`` or ``(1, 1, H, W)``.

    Example:
        >>> m = torch.tensor([[[[1.0, 0.0]]]])
        >>> known_mse_data_term(torch.zeros(1, 1, 1, 2), torch.tensor([[[[0.5, 1.0]]]]), m).tolist()
        [0.125]
    """
    _check_pair(measured, target)
    return _per_fit_mean(known * (measured - target) ** 2)


def l1_data_term(measured: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean absolute error per fit, the data term for impulse noise.

    The Laplace negative log-likelihood up to scale; its minimiser over a set of values is their
    median, which a minority of values at 0 or 1 does not move. The gradient is
    ``sign(measured - target) / N`` (0 at ties, torch's convention).

    Args:
        measured: ``A(x)`` of each fit.
        target: Each fit's target.

    Returns:
        ``(K,)`` losses.

    Shape:
        measured, target: ``(K, C, H, W)``.

    Example:
        >>> l1_data_term(torch.zeros(1, 1, 2, 2), torch.full((1, 1, 2, 2), -0.5)).tolist()
        [0.5]
    """
    _check_pair(measured, target)
    return _per_fit_mean((measured - target).abs())


def poisson_data_term(
    measured: torch.Tensor,
    target: torch.Tensor,
    *,
    scale: float | torch.Tensor,
    offset: float | None = None,
) -> torch.Tensor:
    """Poisson negative log-likelihood per fit, with the photon scale ``c`` (shot noise).

    With counts ``c y ~ Poisson(c x)`` and a background of ``e = offset`` (in image units, one
    count ``1 / c`` by default) on both sides, the loss per entry is

        ``c [(x + e) - (y + e) log(x + e) - ((y + e) - (y + e) log(y + e))]``,

    the negative log-likelihood minus its value at ``x = y`` (so 0 at a perfect fit, about
    ``c (x - y)^2 / (2 (y + e))`` near it: a squared error weighted by the inverse noise
    variance). Its gradient is ``c (1 - (y + e) / (x + e)) / N``.

    Why this and not the Anscombe transform (MSE on ``2 sqrt(c v + 3/8)``): the likelihood is
    proper, the expected gradient vanishes exactly at the clean image, whereas fitting the
    transformed values pulls the image to ``E[2 sqrt(c y + 3/8)]``, which lies about ``1 / (4 c)``
    below the clean value (0.05 at severity 4, ``c = 5``: a PSNR ceiling near 26 dB). The term is
    linear in its target, so the twin's fit B sees ``y + n`` exactly (any sign). Multiplying by
    ``c`` scales the loss but not Adam's steps, so a misjudged ``c`` changes the fit only
    through ``e``; ``c`` matters for the probe's and the risk's variance ``x / c``. The background
    ``e`` keeps the log finite and the gradient bounded (by ``c (y + e) / e``) on black pixels,
    without biasing the minimiser.

    Args:
        measured: ``A(x)`` of each fit, values ``>= 0`` (the DIP nets end in a sigmoid; values
            below 0 are clamped to 0, where the gradient stops).
        target: Each fit's target (``y`` or ``y + n``).
        scale: ``c``, photons of a white pixel (:func:`estimate_poisson_scale`); a 0-d tensor
            is used as it is, unchecked and without a host sync (a task keeps ``c`` in a buffer,
            which a captured CUDA graph reads at each replay).
        offset: The background ``e`` (default ``1 / c``).

    Returns:
        ``(K,)`` losses.

    Raises:
        ValueError: If shapes differ or ``scale`` / ``offset`` is not positive.

    Shape:
        measured, target: ``(K, C, H, W)``.

    Example:
        >>> y = torch.full((1, 1, 2, 2), 0.5)
        >>> poisson_data_term(y, y, scale=12.0).tolist()
        [0.0]
    """
    _check_pair(measured, target)
    c: float | torch.Tensor
    if isinstance(scale, torch.Tensor):
        c = scale
    else:
        c = float(scale)
        if not (math.isfinite(c) and c > 0):
            raise ValueError(f"scale must be a positive number, got {scale!r}")
    e = 1.0 / c if offset is None else float(offset)
    if not isinstance(e, torch.Tensor) and not (math.isfinite(e) and e > 0):
        raise ValueError(f"offset must be a positive number, got {offset!r}")
    shifted = measured.clamp_min(0.0) + e
    t = target + e
    saturated = t - torch.xlogy(t.clamp_min(0.0), t.clamp_min(0.0))  # constant: 0 loss at x = y
    values = shifted - t * torch.log(shifted) - saturated
    return c * _per_fit_mean(values)


def default_data_term(kind: NoiseKind) -> DataTermName:
    """The data term of noise ``kind`` (:data:`DATA_TERMS`)."""
    return DATA_TERMS[check_noise_kind(kind)]


def data_term(
    name: DataTermName, *, scale: float | None = None, known: torch.Tensor | None = None
) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The data term ``name`` as a function ``(measured, target) -> (K,)`` losses.

    Args:
        name: ``"mse"``, ``"known-mse"``, ``"l1"`` or ``"poisson"``.
        scale: The Poisson scale ``c`` (required for ``"poisson"``, unused otherwise).
        known: The known-value mask (required for ``"known-mse"``, unused otherwise).

    Raises:
        ValueError: For an unknown name, ``"poisson"`` without ``scale`` or ``"known-mse"``
            without ``known``.

    Example:
        >>> term = data_term("poisson", scale=12.0)
        >>> term(torch.full((3, 1, 4, 4), 0.4), torch.full((3, 1, 4, 4), 0.4)).shape
        torch.Size([3])
    """
    if name == "mse":
        return mse_data_term
    if name == "known-mse":
        if known is None:
            raise ValueError("the 'known-mse' data term needs known= (the known-value mask, impulse_known_mask)")
        mask = known
        return lambda measured, target: known_mse_data_term(measured, target, mask)
    if name == "l1":
        return l1_data_term
    if name == "poisson":
        if scale is None:
            raise ValueError("the 'poisson' data term needs scale= (photons of a white pixel)")
        c = float(scale)
        return lambda measured, target: poisson_data_term(measured, target, scale=c)
    raise ValueError(f"data term must be one of 'mse', 'known-mse', 'l1', 'poisson', got {name!r}")


# --------------------------------------------------------------------------------------------
# Variance-versus-mean law
# --------------------------------------------------------------------------------------------
#: Immerkaer's 3x3 second-difference filter: zero on constants and linear ramps, unit gain on
#: white noise (the squares of its taps sum to 1).
_RESIDUAL_FILTER = np.array([[1.0, -2.0, 1.0], [-2.0, 4.0, -2.0], [1.0, -2.0, 1.0]]) / 6.0
#: Side of the local mean's window.
_MEAN_WINDOW = 7


@dataclass(frozen=True)
class VarianceProfile:
    """Noise variance against local mean, in intensity bins (:func:`variance_profile`).

    Attributes:
        means: ``(B,)`` mean of the local means in each bin.
        variances: ``(B,)`` mean square of the residual in each bin (the noise variance there).
        counts: ``(B,)`` values behind each bin.
    """

    means: np.ndarray
    variances: np.ndarray
    counts: np.ndarray


def variance_profile(
    image: np.ndarray, *, bins: int = 16, smooth_share: float = 0.5, exclude_extremes: bool = False
) -> VarianceProfile:
    """Noise variance of an observation as a function of the local mean intensity.

    Per channel, the residual ``r`` of Immerkaer's 3x3 filter (unit gain on white noise, zero on
    constants and ramps, so ``E r^2`` is the noise variance where the image is smooth) and the
    7x7 local mean ``m`` (its own noise is small and, since the filter's taps sum to 0,
    uncorrelated with ``r``). Values are sorted into ``bins`` bins of equal count by ``m``; in
    each bin only the ``smooth_share`` of pixels with the smallest gradient of a smoothed copy of
    the image (Gaussian, sigma 2: a measure of structure that noise barely moves) are kept, and
    the bin's variance is the mean of ``r^2`` over them.

    Args:
        image: ``(H, W)`` or ``(H, W, C)`` float observation in ``[0, 1]``, at least 9x9.
        bins: Number of intensity bins.
        smooth_share: Share of the pixels of each bin kept (the smoothest).
        exclude_extremes: Leave out pixels whose 3x3 neighbourhood holds a value exactly 0 or 1
            (clipping and impulses; the laws of :func:`clipped_moments` account for clipping in
            the mean only roughly there).

    Returns:
        The :class:`VarianceProfile` (bins with no values are dropped).

    Raises:
        ValueError: If the image is invalid or smaller than 9x9.
    """
    x = _check_image(image)
    if min(x.shape[:2]) < 9:
        raise ValueError(f"image must be at least 9x9 for a variance profile, got {x.shape}")
    means, residuals, structure = [], [], []
    keep_masks = []
    for c in range(x.shape[2]):
        plane = x[..., c]
        r = ndimage.correlate(plane, _RESIDUAL_FILTER, mode="reflect")
        m = ndimage.uniform_filter(plane, _MEAN_WINDOW, mode="reflect")
        smoothed = ndimage.gaussian_filter(plane, 2.0, mode="reflect")
        gy, gx = np.gradient(smoothed)
        grad = np.hypot(gx, gy)
        border = _MEAN_WINDOW // 2
        inner = (slice(border, -border), slice(border, -border))
        keep = np.ones(plane.shape, bool)
        if exclude_extremes:
            extreme = (plane == 0.0) | (plane == 1.0)
            keep &= ~ndimage.binary_dilation(extreme, np.ones((3, 3), bool))
        means.append(m[inner].ravel())
        residuals.append(r[inner].ravel())
        structure.append(grad[inner].ravel())
        keep_masks.append(keep[inner].ravel())
    m_all = np.concatenate(means)
    r_all = np.concatenate(residuals)
    g_all = np.concatenate(structure)
    k_all = np.concatenate(keep_masks)
    m_all, r_all, g_all = m_all[k_all], r_all[k_all], g_all[k_all]
    if m_all.size < bins * 8:
        return VarianceProfile(np.empty(0), np.empty(0), np.empty(0, dtype=np.int64))
    order = np.argsort(m_all, kind="stable")
    out_m, out_v, out_n = [], [], []
    for chunk in np.array_split(order, bins):
        g = g_all[chunk]
        kept = chunk[g <= np.quantile(g, smooth_share)]
        if kept.size < 4:
            continue
        out_m.append(float(m_all[kept].mean()))
        out_v.append(float(np.mean(r_all[kept] ** 2)))
        out_n.append(int(kept.size))
    return VarianceProfile(np.array(out_m), np.array(out_v), np.array(out_n, dtype=np.int64))


#: Bins of mean intensity outside this range (black or white areas: no noise left to see) are
#: not fitted.
_MEAN_RANGE = (0.02, 0.98)
#: Added to observed and predicted variances before their log ratio (a std of 0.003, ~1/255):
#: below it, quantisation and leaking texture dominate.
_VARIANCE_FLOOR = 1e-5
#: Weight of a variance above the law's prediction in the misfit (leaking texture only adds).
_EXCESS_WEIGHT = 0.3


def _law_curve(kind: NoiseKind, parameter: float) -> tuple[np.ndarray, np.ndarray]:
    """(mean, variance) of the clipped observation along clean values 0..1 (``kind``'s law)."""
    grid = np.linspace(0.0, 1.0, 101)
    return clipped_moments(kind, grid, parameter)


def _law_misfit(profile: VarianceProfile, kind: NoiseKind, parameter: float) -> float:
    """Count-weighted mean of |log(observed / predicted variance)| over the profile's bins,
    an excess (observed above predicted) weighted by :data:`_EXCESS_WEIGHT`."""
    curve_mean, curve_var = _law_curve(kind, parameter)
    order = np.argsort(curve_mean, kind="stable")
    inside = (profile.means >= _MEAN_RANGE[0]) & (profile.means <= _MEAN_RANGE[1])
    if not inside.any():
        inside[:] = True
    predicted = np.interp(profile.means[inside], curve_mean[order], curve_var[order])
    observed = profile.variances[inside]
    residual = np.log(observed + _VARIANCE_FLOOR) - np.log(predicted + _VARIANCE_FLOOR)
    penalty = np.where(residual < 0, -residual, _EXCESS_WEIGHT * residual)
    return float(np.average(penalty, weights=profile.counts[inside]))


def fit_noise_law(profile: VarianceProfile, kind: NoiseKind) -> tuple[float, float]:
    """Fit the variance-versus-mean law of a continuous noise kind to a profile.

    The law is :func:`clipped_moments`' (mean, variance) curve along the clean value, so clipping
    at 0 and 1 is part of the prediction: a bin of mean ``m`` is compared with the variance the
    law predicts for the clean value whose clipped mean is ``m``. The parameter minimises the
    count-weighted mean of ``|log(observed / predicted variance)|`` over bins of mean
    0.02..0.98, where a variance above the prediction counts 0.3 times: texture that leaks into
    the residual can only add variance (on dark, textured areas it is what made speckle look
    like shot noise). A grid over the log of the parameter, then a bounded scalar search.

    Args:
        profile: From :func:`variance_profile`.
        kind: ``"gaussian"`` (constant law), ``"poisson"`` (linear) or ``"speckle"`` (quadratic).

    Returns:
        ``(parameter, misfit)``: the kind's ``c`` and the misfit at it (0 is a perfect fit;
        0.1 is a ~10% typical shortfall of the predicted variance).

    Raises:
        ValueError: For ``"impulse"`` or an unknown kind, or an empty profile.
    """
    kind = check_noise_kind(kind)
    if kind not in _LAWS:
        raise ValueError(f"fit_noise_law fits {', '.join(map(repr, _LAWS))}, got {kind!r}")
    if profile.means.size == 0:
        raise ValueError("the variance profile is empty (image too small or saturated)")
    lo, hi = (math.log(v) for v in _PARAMETER_RANGE[kind])
    # coarse grid first (the misfit can have shallow local minima where clipping dominates)
    grid = np.linspace(lo, hi, 41)
    errors = [_law_misfit(profile, kind, math.exp(g)) for g in grid]
    best = int(np.argmin(errors))
    a, b = grid[max(best - 1, 0)], grid[min(best + 1, len(grid) - 1)]
    result = optimize.minimize_scalar(
        lambda g: _law_misfit(profile, kind, math.exp(g)), bounds=(a, b), method="bounded",
        options={"xatol": 1e-3},
    )
    parameter, misfit = math.exp(float(result.x)), float(result.fun)
    if errors[best] < misfit:
        parameter, misfit = math.exp(float(grid[best])), errors[best]
    return parameter, misfit


# --------------------------------------------------------------------------------------------
# Parameter estimators
# --------------------------------------------------------------------------------------------
def estimate_gaussian_level(image: np.ndarray) -> float:
    """Std of white Gaussian noise, from the observation alone.

    Donoho's wavelet estimator, the library's (:func:`oscfast.noise_level.estimate_noise_level`).
    Clipping makes it read low at high levels (the law fit of :func:`detect_noise`, which
    models clipping, is reported beside it in ``bench/results/noise-detect.md``).

    Args:
        image: ``(H, W)`` or ``(H, W, C)`` float observation in ``[0, 1]``.

    Returns:
        The noise std on the ``[0, 1]`` scale.
    """
    from oscfast.noise_level import estimate_noise_level

    return float(estimate_noise_level(_check_image(image)))


def estimate_poisson_scale(image: np.ndarray) -> float:
    """Photon scale ``c`` of shot noise (``y = Poisson(c x) / c``), from the observation alone.

    Fits the clipped Poisson law ``variance = mean / c`` (:func:`clipped_moments`) to the
    variance profile of smooth pixels (:func:`variance_profile`, :func:`fit_noise_law`).
    On 128 px photos the estimate is within ~15% of the truth for ``c`` = 3..60 (tests and
    ``bench/results/noise-detect.md``); texture left in the residual makes it read low
    (more noise), and the search is bounded to 0.3..3000.

    Args:
        image: ``(H, W)`` or ``(H, W, C)`` float observation in ``[0, 1]``, at least 9x9.

    Returns:
        ``c``, photons of a white pixel.
    """
    return fit_noise_law(variance_profile(image), "poisson")[0]


def estimate_speckle_level(image: np.ndarray) -> float:
    """Relative std ``c`` of speckle noise (``y = x + x N(0, c^2)``), from the observation alone.

    Fits the clipped law ``variance = c^2 mean^2`` (:func:`clipped_moments`) to the variance
    profile of smooth pixels (:func:`variance_profile`, :func:`fit_noise_law`).

    Args:
        image: ``(H, W)`` or ``(H, W, C)`` float observation in ``[0, 1]``, at least 9x9.

    Returns:
        ``c``, the noise std relative to the clean value.
    """
    return fit_noise_law(variance_profile(image), "speckle")[0]


def _impulse_features(x: np.ndarray) -> tuple[float, float]:
    """(impulse share, noise of the values that are not 0 or 1) of an ``(H, W, C)`` image."""
    share = _impulse_share(x)
    extreme = (x == 0.0) | (x == 1.0)
    differences = []
    for axis in (0, 1):
        a = np.moveaxis(x, axis, 0)
        e = np.moveaxis(extreme, axis, 0)
        both = ~e[1:] & ~e[:-1]
        differences.append((a[1:] - a[:-1])[both])
    d = np.abs(np.concatenate(differences))
    if d.size < 16:
        return share, 0.0
    # upper quartile, not median: shot noise at a few photons puts values on a coarse lattice,
    # where most neighbour differences are exactly 0
    return share, float(np.quantile(d, 0.75) / (_HALF_NORMAL_Q75 * math.sqrt(2.0)))


#: 75th percentile of |N(0, 1)|.
_HALF_NORMAL_Q75 = float(special.ndtri(0.875))


def _impulse_share(x: np.ndarray) -> float:
    """Share of values replaced by salt and pepper, beyond the clean image's own 0s and 1s."""
    footprint = np.ones((3, 3, 1), bool)
    estimates = []
    for value in (0.0, 1.0):
        at = x == value
        f = float(at.mean())
        # clean saturated areas show as values whose whole 3x3 neighbourhood holds the same
        # value: impulses alone make such blocks with probability (c / 2)^9, and a clean area
        # keeps one with probability (1 - c / 2)^9 (none of its 9 values flipped to the other)
        flat = float(ndimage.binary_erosion(at, footprint, border_value=0).mean())

        def excess(c: float, f: float = f, flat: float = flat) -> float:
            clean = min(max(flat - (c / 2) ** 9, 0.0) / max(1.0 - c / 2, 1e-9) ** 9, f)
            return c / 2 + (1 - c) * clean - f

        if f >= 0.5:
            estimates.append(1.0)
        elif excess(0.0) >= 0.0:
            estimates.append(0.0)
        else:
            estimates.append(float(optimize.brentq(excess, 0.0, 1.0, xtol=1e-6)))
    return float(min(estimates))


def impulse_known_mask(image: np.ndarray) -> np.ndarray:
    """The values salt and pepper left alone: 1 where a value is known, 0 where it may be an impulse.

    Salt and pepper sets a share of the values (per pixel and channel) to exactly 0 or 1 and
    leaves the others exact. Known: every value strictly between 0 and 1, and the 0s and 1s of
    clean saturated areas, i.e. those that lie in a 3x3 block of their channel holding that
    same value throughout (the morphological opening of the value's set; random impulses make
    such a block with probability ``(c / 2)^9``, ``4e-6`` at half the values replaced). The rest
    is unknown and is restored like missing pixels. Impulses kept by mistake (they complete a
    block at the edge of a saturated area) were measured on a photo with saturated quarters at
    0 / 0.02 / 0.2 / 1.7% of the impulses for a share c of 0.3 / 0.5 / 0.7 / 0.9.

    Args:
        image: ``(H, W)`` or ``(H, W, C)`` float observation in ``[0, 1]``.

    Returns:
        The mask, float32 in {0, 1}, the shape of ``image``.

    Raises:
        ValueError: For an image with no known value (nothing to fit).

    Example:
        >>> y = np.full((5, 5), 0.5); y[2, 2] = 1.0
        >>> int(impulse_known_mask(y).sum())
        24
    """
    x = _check_image(image)
    known = (x > 0.0) & (x < 1.0)
    footprint = np.ones((3, 3, 1), bool)
    for value in (0.0, 1.0):
        known |= ndimage.binary_opening(x == value, footprint, border_value=0)
    if not known.any():
        raise ValueError("no value of the observation lies strictly between 0 and 1: salt and pepper left nothing to fit")
    return known.astype(np.float32).reshape(np.shape(image))


def estimate_impulse_share(image: np.ndarray) -> float:
    """Share ``c`` of values replaced by 0 or 1 (salt and pepper), from the observation alone.

    Salt and pepper gives ``f_v = c / 2 + (1 - c) z_v`` values at exactly ``v`` (0 or 1), with
    ``z_v`` the clean image's own share. ``z_v`` is estimated from the values whose 3x3
    neighbourhood all holds ``v`` (clean saturated areas; random impulses rarely form such
    blocks), corrected for the impulses that break such blocks; the smaller of the two
    one-sided estimates is returned (a clean image saturated on one side then does not inflate
    it). Clipped continuous noise also makes exact 0s and 1s: :func:`detect_noise` tells them
    apart.

    Args:
        image: ``(H, W)`` or ``(H, W, C)`` float observation in ``[0, 1]``.

    Returns:
        ``c`` in ``[0, 1]``.
    """
    return _impulse_share(_check_image(image))


def estimate_noise_parameter(image: np.ndarray, kind: NoiseKind) -> float:
    """The parameter ``c`` of noise ``kind`` estimated from the observation.

    Dispatches to :func:`estimate_gaussian_level`, :func:`estimate_poisson_scale`,
    :func:`estimate_speckle_level` or :func:`estimate_impulse_share`.

    Raises:
        ValueError: For an unknown kind.
    """
    kind = check_noise_kind(kind)
    estimators: dict[str, Callable[[np.ndarray], float]] = {
        "gaussian": estimate_gaussian_level,
        "poisson": estimate_poisson_scale,
        "speckle": estimate_speckle_level,
        "impulse": estimate_impulse_share,
    }
    return estimators[kind](image)


def noise_variance_map(
    image: np.ndarray, kind: NoiseKind, parameter: float, *, smoothing: float = 2.0
) -> np.ndarray:
    """Per-entry noise variance ``v`` of an observation under noise ``kind`` (for the probe).

    ``c^2`` (gaussian), ``x / c`` (poisson), ``c^2 x^2`` (speckle) before clipping; returned is
    the variance after clipping (:func:`clipped_moments`), which is what the error of the
    observation has (at severity 3-4 clipping removes 10-20% of the Gaussian std on photos).
    ``x`` is the observation smoothed by a Gaussian of std ``smoothing`` pixels (a stand-in for
    the clean image); the floor is ``(1/255)^2``. The twin's shaped probe is
    ``n = a sqrt(v) b`` and the risk reads ``mean(v)`` (module docstring).

    Args:
        image: ``(H, W)`` or ``(H, W, C)`` float observation in ``[0, 1]``.
        kind: ``"gaussian"``, ``"poisson"`` or ``"speckle"``.
        parameter: The kind's ``c``.
        smoothing: Std of the Gaussian smoothing, in pixels.

    Returns:
        ``v``, the shape of ``image``.

    Raises:
        ValueError: For ``"impulse"`` (no variance: probe the values not at 0 or 1 instead) or
            an unknown kind.
    """
    kind = check_noise_kind(kind)
    if kind == "impulse":
        raise ValueError("impulse noise has no per-entry variance; probe the values not at 0 or 1")
    c = _check_parameter(kind, parameter)
    shape = image.shape if isinstance(image, np.ndarray) else None
    x = _check_image(image)
    smooth = ndimage.gaussian_filter(x, (smoothing, smoothing, 0), mode="reflect")
    # the moments on a grid of clean values, interpolated: the exact Poisson sum costs ceil(c)
    # terms per entry (c up to 3000), and the moments are smooth in x
    grid = np.linspace(0.0, 1.0, _VARIANCE_GRID)
    _, v_grid = clipped_moments(kind, grid, c)
    v = np.interp(np.clip(smooth, 0.0, 1.0), grid, v_grid)
    return np.maximum(v, (1 / 255) ** 2).reshape(shape)  # type: ignore[arg-type]


#: clean values at which :func:`noise_variance_map` evaluates the moments exactly
_VARIANCE_GRID = 1025


# --------------------------------------------------------------------------------------------
# Which noise?
# --------------------------------------------------------------------------------------------
#: Impulse noise needs at least this share of salt and pepper beyond the clean image's own...
_IMPULSE_MIN_SHARE = 0.05
#: ... and values that are not 0 or 1 this quiet (std of neighbour differences / sqrt 2, from
#: their upper quartile). Measured at 128 px: under impulse noise the clean values gave
#: 0.014..0.048 (skimage photos, the benchmark's 5 images); continuous noise that clips a
#: share of 0.05 or more on both sides gave 0.082 and up.
_IMPULSE_MAX_NOISE = 0.065


@dataclass(frozen=True)
class NoiseGuess:
    """What :func:`detect_noise` read from an observation.

    Attributes:
        kind: The noise kind picked.
        parameter: Its estimated parameter ``c`` (:data:`SEVERITY_PARAMETERS`' units).
        confidence: 0 (a coin toss between the two best) .. 1 (clear); see
            :func:`detect_noise`.
        scores: The evidence: ``"impulse_share"`` (salt-and-pepper share beyond the clean
            image's), ``"clean_noise"`` (noise of the values not at 0 or 1), and
            ``"misfit_<kind>"`` for each continuous law (:func:`fit_noise_law`, lower is
            better) and ``"parameter_<kind>"`` for its fitted parameter (absent when the pick
            is impulse).
    """

    kind: NoiseKind
    parameter: float
    confidence: float
    scores: dict[str, float] = field(default_factory=dict)


def detect_noise(image: np.ndarray) -> NoiseGuess:
    """Pick the noise model of an observation ("auto"), with its parameter.

    1. Impulse: salt and pepper leaves a share ``c`` of exact 0s and 1s in equal numbers
       (:func:`estimate_impulse_share`) and the other values untouched. Clipped continuous noise
       also makes exact 0s and 1s, but then the other values are noisy. So: impulse when the
       share is at least 0.05 and the values not at 0 or 1 are quiet (the upper quartile of
       their neighbour differences reads a std below 0.065).
    2. Otherwise the variance-versus-mean law of smooth pixels (:func:`variance_profile`) is
       fitted by each continuous law, clipping included (:func:`fit_noise_law`): constant
       (gaussian), proportional to the mean (poisson), to its square (speckle). The best fit
       wins.

    Confidence: for impulse, the smaller of the two margins to the thresholds in octaves
    (``log2(share / 0.05)``, ``log2(0.065 / noise)``) clipped to [0, 1]; otherwise
    ``1 - best misfit / second misfit`` (0 when two laws fit equally well).

    Reliability (``tests/test_noise_models.py``, ``bench/results/noise-detect.md``): at 128 px
    impulse noise at shares 0.1..0.9 was told apart from the rest on every test image, and
    the right law was picked for gaussian, poisson and speckle at severities 1..5 on 4 skimage
    photos except speckle at severity 1 on the astronaut (texture in dark areas looks like
    Poisson) and near-ties between gaussian and poisson at severity 5, where clipping makes
    both laws alike (low confidence). Images with a narrow intensity range cannot show a
    law: expect low confidence there. On the benchmark's files (5 images x 4 kinds x
    severities 2-4, 128 px centre crops) all 60 picks were right, median confidence 0.84
    (``bench/results/noise-detect.md``); the 4 held-back images are untested.

    Args:
        image: ``(H, W)`` or ``(H, W, C)`` float observation in ``[0, 1]``, at least 9x9.

    Returns:
        A :class:`NoiseGuess`.

    Raises:
        ValueError: If the image is invalid or smaller than 9x9.
        TypeError: If it is not a float numpy array.

    Example:
        >>> from skimage import data
        >>> clean = data.camera()[::4, ::4, None] / 255.0
        >>> detect_noise(add_noise(clean, "impulse", 2, seed=0)).kind
        'impulse'
    """
    x = _check_image(image)
    if min(x.shape[:2]) < 9:
        raise ValueError(f"image must be at least 9x9 to detect its noise, got {x.shape}")
    share, quiet = _impulse_features(x)
    scores: dict[str, float] = {"impulse_share": share, "clean_noise": quiet}
    if share >= _IMPULSE_MIN_SHARE and quiet <= _IMPULSE_MAX_NOISE:
        margin = min(
            math.log2(share / _IMPULSE_MIN_SHARE),
            math.log2(_IMPULSE_MAX_NOISE / max(quiet, 1e-6)),
        )
        return NoiseGuess("impulse", share, float(np.clip(margin, 0.0, 1.0)), scores)
    profile = variance_profile(x)
    fits = {law: fit_noise_law(profile, law) for law in _LAWS}
    for law, (parameter, misfit) in fits.items():
        scores[f"misfit_{law}"] = misfit
        scores[f"parameter_{law}"] = parameter
    ranked = sorted(_LAWS, key=lambda law: fits[law][1])
    best, second = fits[ranked[0]][1], fits[ranked[1]][1]
    confidence = 1.0 - best / second if second > 0 else 0.0
    kind = ranked[0]
    logger.debug("noise guess %s (misfits %s)", kind, {k: round(v[1], 3) for k, v in fits.items()})
    return NoiseGuess(kind, fits[kind][0], float(np.clip(confidence, 0.0, 1.0)), scores)


# --------------------------------------------------------------------------------------------
# The model a restoration uses
# --------------------------------------------------------------------------------------------
NoiseChoiceName = Literal["gaussian", "poisson", "speckle", "impulse", "auto"]
#: What ``restore(..., noise=)`` and ``--noise`` take: a kind, or "auto" (:func:`detect_noise`).
NOISE_CHOICES: tuple[NoiseChoiceName, ...] = get_args(NoiseChoiceName)

#: The stop rule each model reads by default (``docs/noise-models.md``): the risk (SURE of the
#: returned fit, with ``s^2 = mean(v)`` for the shaped probes) where the data term is smooth;
#: the knee of ``P_twin`` for L1, where the divergence argument does not hold.
STOP_RULES: Mapping[NoiseKind, str] = {
    "gaussian": "risk",
    "poisson": "risk",
    "speckle": "risk",
    "impulse": "knee",
}


@dataclass(frozen=True)
class NoiseChoice:
    """The noise model a restoration uses (:func:`choose_noise`).

    Attributes:
        kind: The model.
        parameter: Its parameter ``c`` (:data:`SEVERITY_PARAMETERS`' units), estimated from the
            observation unless given; None for ``"gaussian"``, whose level the risk rule
            estimates itself (Donoho, as without a noise model).
        confidence: :func:`detect_noise`'s confidence when the model was picked by ``"auto"``;
            None when it was named.
    """

    kind: NoiseKind
    parameter: float | None = None
    confidence: float | None = None

    @property
    def detected(self) -> bool:
        """Whether ``"auto"`` picked the model."""
        return self.confidence is not None


def check_noise_choice(noise: object) -> NoiseChoiceName:
    """Return ``noise`` if it is a noise kind or ``"auto"``.

    Raises:
        ValueError: If it is not, naming the value and the allowed ones.
    """
    return _one_of(noise, NOISE_CHOICES)  # type: ignore[return-value]


def choose_noise(image: np.ndarray, noise: NoiseChoiceName = "gaussian", *, parameter: float | None = None) -> NoiseChoice:
    """The noise model of an observation: the one named, or the one :func:`detect_noise` picks.

    Args:
        image: ``(H, W)`` or ``(H, W, C)`` float observation in ``[0, 1]``.
        noise: A kind of :data:`NOISE_KINDS`, or ``"auto"``.
        parameter: The model's parameter ``c`` when it is known (not for ``"gaussian"``, whose
            level is the run option ``noise_level=``, nor for ``"auto"``); else it is estimated
            (:func:`estimate_noise_parameter`; for ``"auto"`` the detection's own estimate).

    Returns:
        A :class:`NoiseChoice`.

    Raises:
        ValueError: An unknown ``noise``, a parameter out of range or where none applies, or an
            invalid image.

    Example:
        >>> clean = np.full((32, 32, 3), 0.5)
        >>> choose_noise(add_noise(clean, "poisson", 3, seed=0), "poisson", parameter=12.0)
        NoiseChoice(kind='poisson', parameter=12.0, confidence=None)
    """
    noise = check_noise_choice(noise)
    if parameter is not None and noise in ("gaussian", "auto"):
        raise ValueError(
            f"parameter= does not apply to noise={noise!r}"
            + (" (give the Gaussian level as noise_level=)" if noise == "gaussian" else "")
        )
    if noise == "auto":
        guess = detect_noise(image)
        logger.info("noise model %s picked (confidence %.2f)", guess.kind, guess.confidence)
        level = None if guess.kind == "gaussian" else guess.parameter
        return NoiseChoice(guess.kind, level, guess.confidence)
    if noise == "gaussian":
        return NoiseChoice("gaussian")
    if parameter is not None:
        return NoiseChoice(noise, _check_parameter(noise, parameter))
    return NoiseChoice(noise, estimate_noise_parameter(image, noise))


def probe_shape(image: np.ndarray, kind: NoiseKind, parameter: float | None = None) -> np.ndarray:
    """Per-entry factor ``s`` of the twin's probe ``n = std * s * b`` for noise ``kind``.

    ``b`` is i.i.d. zero-mean, unit-variance pseudo-noise (Gaussian, or uniform for the masked
    impulse probe), ``std`` the probe's RMS (1/25 by default):

    - gaussian: ``s = 1`` (today's i.i.d. probe);
    - poisson, speckle: ``s = sqrt(v / mean(v))`` with ``v`` from :func:`noise_variance_map`:
      the probe is the same fraction of the local noise std everywhere, and its RMS stays
      ``std``, so the risk rule reads ``s^2 = mean(v)`` (module docstring);
    - impulse: ``s = 1`` on the known values (:func:`impulse_known_mask`), 0 on the values
      salt and pepper may have replaced (the ones the fit does not see).

    Args:
        image: ``(H, W)`` or ``(H, W, C)`` float observation in ``[0, 1]``.
        kind: The noise kind.
        parameter: The kind's ``c`` (needed for poisson and speckle).

    Returns:
        ``s``, float32, the shape of ``image``.

    Raises:
        ValueError: For a missing parameter, an unknown kind, or an impulse observation with no
            known value (nothing to probe).
    """
    kind = check_noise_kind(kind)
    x = _check_image(image).reshape(image.shape)
    if kind == "gaussian":
        return np.ones(x.shape, np.float32)
    if kind == "impulse":
        return impulse_known_mask(image)
    if parameter is None:
        raise ValueError(f"the {kind} probe needs the noise parameter")
    v = noise_variance_map(image, kind, parameter)
    return np.sqrt(v / v.mean()).astype(np.float32)
