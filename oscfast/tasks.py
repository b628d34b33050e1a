"""Inverse problems as objects with a forward operator (method.md section 1), and their registry.

The engine only calls ``task.forward(x)``, ``task.pseudo_noise(std, seed)``, ``task.loss``
and ``task.finalize``: a new task is a new subclass, never a change to the engine.

Each named task class carries everything the rest of the package needs to know about it: its
name, the keyword options it takes (:attr:`Task.options`), its default preset and default stop
(:attr:`Task.default_stop`), how it is built from an observation and those options
(:meth:`Task.from_options`) and how a test observation is made from a clean image
(:meth:`Task.degrade_image`, behind :func:`degrade`). Registering a class with
:func:`register_task` makes it a task of ``restore``, ``restore_many``, the folders, the CLI and
``degrade``: a new task (or noise model) is one class.
"""
from __future__ import annotations

import math
import numbers
import logging
from collections.abc import Callable
from typing import Any, ClassVar, Literal, NamedTuple, Union

import numpy as np
import torch
from torch import nn

from oscfast import degradations as dg
from oscfast import io, operators
from oscfast import noise_models as nm
from oscfast.checks import check_bool, check_host_allocation, check_integer, check_real
from oscfast.probe import gaussian_pseudo_noise, masked_uniform_pseudo_noise

__all__ = [
    "TASKS",
    "StopDefault",
    "build_task",
    "check_task_options",
    "degrade",
    "load_mask",
    "register_task",
    "task_class",
    "task_names",
    "Task",
    "Denoise",
    "PoissonDenoise",
    "SpeckleDenoise",
    "ImpulseDenoise",
    "NOISE_MODEL_TASKS",
    "JPEG",
    "SuperResolution",
    "Inpaint",
    "RestorePixels",
    "Deblur",
    "CustomOperator",
]

OutputKind = Literal["ema", "raw"]
Observation = Union[np.ndarray, "tuple[np.ndarray, np.ndarray]"]


class StopDefault(NamedTuple):
    """What a task gets when the caller names neither probe nor rule (chosen on the selection
    half of the recorded runs: bench/rules_study.py, bench/results/rules.md)."""

    probe: str
    rule: str
    output: OutputKind

logger = logging.getLogger(__name__)


class Task(nn.Module):
    """Base class: an observation y and a forward operator A with y ~ A(x).

    Args:
        observation: the measurement, shape (1, C, h, w), float in [0, 1].
        output_size: (H, W) of the image to reconstruct.

    Shape:
        forward: (1, C, H, W) -> measurement shape (1, C, h, w).
    """

    name: ClassVar[str] = "task"
    #: which image the task returns at the chosen iteration by default (method.md section 5)
    default_output: ClassVar[OutputKind] = "raw"
    #: the keyword options ``restore(..., task=name)`` takes for this task
    options: ClassVar[frozenset[str]] = frozenset()
    #: options that preparation fills in from the input file (not the caller's to give)
    file_options: ClassVar[frozenset[str]] = frozenset()
    #: options that cannot come from a command line or a folder run (callables)
    code_only_options: ClassVar[frozenset[str]] = frozenset()
    #: the preset used when none is named (``oscfast.presets.PRESETS[name]``)
    default_preset: ClassVar[str] = "f16"
    #: the probe, rule and output used when the caller names neither
    default_stop: ClassVar[StopDefault] = StopDefault("twin", "risk", "raw")
    #: the options of :meth:`degrade_image` (besides ``seed``), with their defaults in its doc
    degrade_options: ClassVar[tuple[str, ...]] = ()
    #: whether the observation itself must have the minimum size (else only the output)
    checks_observation_size: ClassVar[bool] = True
    #: the noise model whose data term and probe the task uses (:meth:`Denoise.with_noise`;
    #: recorded in the result); None: the task's own error model
    noise_choice: nm.NoiseChoice | None = None

    def __init__(self, observation: torch.Tensor, output_size: tuple[int, int]) -> None:
        super().__init__()
        if observation.ndim != 4 or observation.shape[0] != 1:
            raise ValueError(f"observation must have shape (1, C, h, w), got {tuple(observation.shape)}")
        self.register_buffer("observation", observation.float().contiguous())
        self.output_size = (int(output_size[0]), int(output_size[1]))

    @property
    def channels(self) -> int:
        """Number of image channels."""
        return int(self.observation.shape[1])

    @property
    def output_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of the reconstruction."""
        return (self.channels, *self.output_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102 - the operator A
        raise NotImplementedError

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        """A^T y for linear operators (used by export and evaluation, not by the engine)."""
        raise NotImplementedError(f"task {self.name!r} has no adjoint")

    def pseudo_noise(self, std: float, *, seed: int) -> torch.Tensor:
        """Pseudo-noise in measurement space (method.md section 2): Gaussian by default."""
        return gaussian_pseudo_noise(tuple(self.observation.shape), std, seed=seed)

    def loss(self, measured: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The data term of one fit: mean squared error over all measurement entries (as the
        reference notebooks). A noise model overrides it (:class:`Denoise`'s subclasses).

        Shape:
            measured, target: (1, C, h, w) (one fit); returns a 0-d tensor. The engine calls it
            per fit and sums, so each fit's gradient is its own.
        """
        return torch.mean((measured - target) ** 2)

    def finalize(self, image: torch.Tensor) -> torch.Tensor:
        """Post-process the returned image (e.g. put known pixels back). Identity here."""
        return image

    def noise_level(self) -> float:
        """Std of the measurement noise e in y = A x + e (used by the "risk" stop rule).
        0 here: the observation is exact (an ideal LR image, known pixels)."""
        return 0.0

    # -- the registry's side: building and degrading by name ---------------------------------

    @classmethod
    def from_options(cls, observation: np.ndarray, *, seed: int = 0, **options: Any) -> Task:
        """Build the task from an HxWxC observation and its (checked) keyword options."""
        return cls(io.image_to_tensor(observation))

    @classmethod
    def preset_for(cls, options: dict[str, Any]) -> str:
        """The default preset for these task options."""
        return cls.default_preset

    @classmethod
    def degrade_image(cls, image: np.ndarray, *, seed: int = 0, **options: Any) -> Observation:
        """A test observation of the clean ``image`` (HxW or HxWxC float in [0, 1])."""
        raise ValueError(f"task {cls.name!r} has no built-in degradation (its operator is the caller's)")

    @classmethod
    def observe(cls, image: np.ndarray, *, seed: int = 0, **options: Any) -> tuple[np.ndarray, dict[str, Any]]:
        """A test observation of the clean ``image`` (:func:`degrade`) and the task options that
        :func:`oscfast.restore` needs to restore it (the mask, the factor, the blur)."""
        made = degrade(image, cls.name, seed=seed, **options)
        if isinstance(made, tuple):
            return made[0], {"mask": made[1]}
        return made, {}


def observation_noise_level(observation: torch.Tensor) -> float:
    """White-noise std of an observation (1, C, H, W): Donoho's estimator
    (:func:`oscfast.noise_level.donoho_noise_level`, chosen by bench/noise_level.py)."""
    from oscfast.noise_level import donoho_noise_level

    return donoho_noise_level(observation.detach().cpu()[0].permute(1, 2, 0).double().numpy())


class Denoise(Task):
    """Denoising: A is the identity.

    White Gaussian noise by default (MSE, the i.i.d. probe, the risk rule with Donoho's level).
    ``noise=`` (``restore(..., noise=...)``, ``--noise``) picks another model of
    :mod:`oscfast.noise_models`, each a subclass that brings its data term, its parameter
    estimate, its probe and its default rule (``docs/noise-models.md``):

    ========= ================ ========================== =============================
    noise     data term        probe                      default rule (what it reads)
    ========= ================ ========================== =============================
    gaussian  MSE              i.i.d. N(0, std^2)         risk, s = Donoho's level
    poisson   MSE              N(0, std^2 v / mean v)     risk, s^2 = mean(v), v = x / c
    speckle   MSE              N(0, std^2 v / mean v)     risk, s^2 = mean(v), v = c^2 x^2
    impulse   MSE on known     U on the known values      knee of P_twin (exact values: no noise, no level)
    ========= ================ ========================== =============================

    ``v`` is :func:`oscfast.noise_models.noise_variance_map` (after clipping), ``c`` estimated
    from the observation. ``"auto"`` picks the model with
    :func:`oscfast.noise_models.detect_noise`. :meth:`with_noise` builds the model's task.

    Args:
        observation: the noisy image, (1, C, H, W).
        noise: the noise model (:class:`oscfast.noise_models.NoiseChoice`): recorded in the
            result; None for a task built without one (JPEG, which derives from this class).
    """

    name = "denoise"
    options = frozenset({"noise"})
    default_output = "ema"
    default_stop = StopDefault("twin", "risk", "ema")
    degrade_options = ("noise", "severity", "sigma", "clip")
    #: the noise model whose data term, probe and rule this class implements
    noise_kind: ClassVar[nm.NoiseKind] = "gaussian"

    def __init__(self, observation: torch.Tensor, *, noise: nm.NoiseChoice | None = None) -> None:
        super().__init__(observation, tuple(observation.shape[-2:]))
        if noise is not None and noise.kind != self.noise_kind:
            raise ValueError(f"{type(self).__name__} implements {self.noise_kind!r} noise, got a {noise.kind!r} model")
        self.noise_choice = noise

    @classmethod
    def with_noise(
        cls, observation: torch.Tensor, noise: nm.NoiseChoiceName = "gaussian", *, parameter: float | None = None
    ) -> Denoise:
        """The denoising task of noise model ``noise`` (its subclass of :class:`Denoise`).

        Args:
            observation: the noisy image, (1, C, H, W) in [0, 1].
            noise: ``"gaussian"``, ``"poisson"``, ``"speckle"``, ``"impulse"`` or ``"auto"``.
            parameter: the model's parameter ``c`` if known (else estimated from the image).

        Raises:
            ValueError: an unknown ``noise`` (naming the allowed ones) or a bad parameter.

        Example:
            >>> y = torch.full((1, 3, 32, 32), 0.5)
            >>> type(Denoise.with_noise(y, "impulse")).__name__
            'ImpulseDenoise'
        """
        choice = nm.choose_noise(_as_image(observation), nm.check_noise_choice(noise), parameter=parameter)
        return NOISE_MODEL_TASKS[choice.kind](observation, noise=choice)

    @classmethod
    def from_options(cls, observation: np.ndarray, *, seed: int = 0, **options: Any) -> Task:
        return cls.with_noise(io.image_to_tensor(observation), options.get("noise", "gaussian"))

    @classmethod
    def degrade_image(cls, image: np.ndarray, *, seed: int = 0, **options: Any) -> Observation:
        """White Gaussian noise: sigma (25/255), clip (True); or noise ("gaussian", "poisson",
        "speckle", "impulse") at severity (1..5, default 3) as ImageNet-C and the ES-WMV
        benchmark define them (:func:`oscfast.noise_models.add_noise`)."""
        noise, severity = options.get("noise"), options.get("severity")
        if noise is None and severity is None:
            return dg.add_gaussian_noise(image, options.get("sigma", 25 / 255), seed=seed, clip=options.get("clip", True))
        kind = nm.check_noise_kind("gaussian" if noise is None else noise)
        if severity is None and kind == "gaussian":
            return dg.add_gaussian_noise(image, options.get("sigma", 25 / 255), seed=seed, clip=options.get("clip", True))
        strangers = [name for name in ("sigma", "clip") if options.get(name) is not None]
        if strangers:
            raise ValueError(
                f"{' and '.join(strangers)} apply only to Gaussian noise without severity=; "
                f"noise={kind!r} at a severity is defined by severity= alone (always clipped)"
            )
        return nm.add_noise(image, kind, nm.check_severity(3 if severity is None else severity), seed=seed)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        return y

    def noise_level(self) -> float:
        return observation_noise_level(self.observation)

    def _choice(self, noise: nm.NoiseChoice | None) -> nm.NoiseChoice:
        """``noise``, or this class's model with its parameter estimated from the observation."""
        return noise if noise is not None else nm.choose_noise(_as_image(self.observation), self.noise_kind)


def _as_image(observation: torch.Tensor) -> np.ndarray:
    """A (1, C, H, W) observation as the HxWxC float64 array :mod:`oscfast.noise_models` reads."""
    return observation.detach().cpu()[0].permute(1, 2, 0).double().numpy()


class _ShapedProbeDenoise(Denoise):
    """Noise whose variance follows the image (shot, speckle): the probe is shaped like the
    noise, ``n = std sqrt(v / mean v) b``, so it is the same fraction of the local noise std
    everywhere and its RMS is ``std``; the risk rule then reads ``s^2 = mean(v)``, the
    heteroscedastic SURE of docs/noise-models.md (method.md section 8 with v per entry)."""

    def __init__(self, observation: torch.Tensor, *, noise: nm.NoiseChoice | None = None) -> None:
        super().__init__(observation, noise=noise)
        self.noise_choice = choice = self._choice(noise)
        image, c = _as_image(self.observation), float(choice.parameter)
        self._level = math.sqrt(float(nm.noise_variance_map(image, choice.kind, c).mean()))
        self._probe_shape = io.image_to_tensor(nm.probe_shape(image, choice.kind, c))

    def pseudo_noise(self, std: float, *, seed: int) -> torch.Tensor:
        return gaussian_pseudo_noise(tuple(self.observation.shape), std, seed=seed) * self._probe_shape

    def noise_level(self) -> float:
        """sqrt(mean(v)): the risk rule's s for the shaped probe."""
        return self._level


class PoissonDenoise(_ShapedProbeDenoise):
    """Shot noise, ``y = Poisson(c x) / c``: MSE (the benchmark's setting), the shaped probe
    (``v = x / c``, ``c`` estimated) and the risk rule.

    The risk (heteroscedastic SURE) reads the squared residual ``|x_A - y|^2``, so the fit's
    loss must be the MSE: with the Poisson likelihood as the loss (``data_term("poisson")``,
    kept for comparison) the risk read a loss ~c / (2 y) times the squared residual and never
    rose (the benchmark's F16 file at severity 3 ran to the cap, 6.3 dB below its peak).
    """

    noise_kind = "poisson"


class SpeckleDenoise(_ShapedProbeDenoise):
    """Speckle noise, ``y = x + x N(0, c^2)``: MSE (the benchmark's setting), the shaped probe
    (``v = c^2 x^2``) and the risk rule."""

    noise_kind = "speckle"


class _KnownValues:
    """A that keeps the known entries of a mask (``self.masking``, 1 = known): inpainting,
    pixel restoration and salt and pepper. The probe is masked uniform pseudo-noise on the
    known entries; ``keep_known`` puts the known values back in the result."""

    masking: operators.MaskOperator
    keep_known: bool
    observation: torch.Tensor
    channels: int

    @property
    def mask(self) -> torch.Tensor:
        """The known-entry mask, (1, 1 or C, H, W)."""
        return self.masking.mask

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.masking(x)

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        return self.masking.adjoint(y)

    def pseudo_noise(self, std: float, *, seed: int) -> torch.Tensor:
        return masked_uniform_pseudo_noise(self.mask, std, channels=self.channels, seed=seed)

    def finalize(self, image: torch.Tensor) -> torch.Tensor:
        if not self.keep_known:
            return image
        return self.mask * self.observation + (1 - self.mask) * image


class ImpulseDenoise(_KnownValues, Denoise):
    """Salt and pepper as missing values: A keeps the values salt and pepper left alone.

    Salt and pepper sets values to exactly 0 or 1 and leaves the others exact, so the known
    values (:func:`oscfast.noise_models.impulse_known_mask`: strictly between 0 and 1, or in a
    clean saturated 3x3 block) are fitted with MSE (``"known-mse"``), the others restored as
    missing pixels are, and the known values put back in the result (``keep_known``, as for
    random pixel restoration). The observation on the known values is exact, so there is no
    noise to overfit and no level: the default is the knee of ``P_twin`` (masked uniform probe
    on the known values), the default of the exact tasks. L1 on all values, the literature's
    choice, is measured against this in ``bench/results/data-terms.md``.

    Args:
        observation: the noisy image, (1, C, H, W).
        noise: the noise model (its ``parameter``, the impulse share, is reported only).
        keep_known: return m * y + (1 - m) * x (the known values are exact).
    """

    noise_kind = "impulse"
    default_stop = StopDefault("twin", "knee", "ema")

    def __init__(self, observation: torch.Tensor, *, noise: nm.NoiseChoice | None = None, keep_known: bool = True) -> None:
        super().__init__(observation, noise=noise)
        self.noise_choice = self._choice(noise)
        known = io.image_to_tensor(nm.impulse_known_mask(_as_image(self.observation)))
        self.masking = operators.MaskOperator(known)
        self.keep_known = keep_known

    def loss(self, measured: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return nm.known_mse_data_term(measured, target, self.mask).reshape(())

    def noise_level(self) -> float:
        """0: the known values are exact (the unknown ones never reach the loss)."""
        return 0.0


#: noise kind -> the denoising task of that model (:meth:`Denoise.with_noise`)
NOISE_MODEL_TASKS: dict[str, type[Denoise]] = {
    "gaussian": Denoise,
    "poisson": PoissonDenoise,
    "speckle": SpeckleDenoise,
    "impulse": ImpulseDenoise,
}


class JPEG(Denoise):
    """Blind JPEG-artefact removal: A is the identity, the target is the JPEG image.

    The risk rule needs the size of the JPEG error. It comes from the quantisation tables
    (``tables``, as Pillow reads them from the file; ``subsampling`` in Pillow's code), or from
    the standard tables of ``quality``; with neither, Donoho's white-noise estimate is used,
    which sees a few percent of a JPEG's error, so the risk rule then runs to the cap. The
    tables' level is too high for the risk (it went negative on both recorded JPEG runs): the
    risk rule cuts it to the run's own bound (:class:`oscfast.stopping.RiskRule`,
    ``level_bound``), so its risk is never negative. The error is quantisation, not white
    noise independent of the image, so the risk is a rule here, not an estimate:
    ``estimated_psnr`` is None (:attr:`estimate_caveat`).

    Args:
        observation: the decoded JPEG, (1, C, H, W).
        tables: quantisation tables (table index -> 64 values, natural order).
        subsampling: chroma subsampling (0: 4:4:4, 1: 4:2:2, 2: 4:2:0; None: 4:2:0).
        quality: the JPEG quality, when the tables are not at hand.
    """

    name = "jpeg"
    #: why the risk's error estimate is not shown for this task (``Restoration.estimated_psnr_reason``)
    estimate_caveat: ClassVar[str] = (
        "JPEG error is quantisation, not white noise independent of the image: the risk ranks iterations but does "
        "not estimate the error (with the tables' level it went negative on both recorded JPEG runs)")
    options = frozenset({"quality", "quantization", "subsampling"})
    file_options = frozenset({"quantization", "subsampling"})
    default_preset = "snail"
    default_stop = StopDefault("twin", "risk", "ema")
    degrade_options = ("quality",)

    def __init__(self, observation: torch.Tensor, *, tables: Any = None, subsampling: int | None = None,
                 quality: int | None = None) -> None:
        super().__init__(observation)
        if quality is not None:
            quality = check_integer(quality, "quality", minimum=1, maximum=100)
        if subsampling is not None:  # Pillow's codes: -1 (other layouts), 0 (4:4:4), 1 (4:2:2), 2 (4:2:0)
            subsampling = check_integer(subsampling, "subsampling", minimum=-1, maximum=2)
        if tables is not None and quality is not None:
            raise ValueError("give either the quantisation tables or quality=, not both")
        self.tables = tables
        self.subsampling = subsampling
        self.quality = quality

    def noise_level(self) -> float:
        from oscfast.jpeg_error import jpeg_noise_level
        from oscfast.jpeg_files import jpeg_tables_for_quality

        tables = self.tables if self.tables is not None else (
            jpeg_tables_for_quality(int(self.quality)) if self.quality is not None else None)
        if tables is None:
            logger.warning("JPEG task without quantisation tables or quality=: the error level is unknown and "
                           "the risk rule will run to the cap (give quality= or a JPEG file)")
            return super().noise_level()
        image = self.observation.detach().cpu()[0].permute(1, 2, 0).double().numpy()
        return float(jpeg_noise_level(image, tables, subsampling=self.subsampling))

    @classmethod
    def from_options(cls, observation: np.ndarray, *, seed: int = 0, **options: Any) -> Task:
        return cls(io.image_to_tensor(observation), tables=options.get("quantization"),
                   subsampling=options.get("subsampling"), quality=options.get("quality"))

    @classmethod
    def degrade_image(cls, image: np.ndarray, *, seed: int = 0, **options: Any) -> Observation:
        """JPEG compression: quality (10)."""
        return dg.jpeg_compress(image, options.get("quality", 10))

    @classmethod
    def observe(cls, image: np.ndarray, *, seed: int = 0, **options: Any) -> tuple[np.ndarray, dict[str, Any]]:
        """The decoded JPEG and its quality (the array has no tables: the quality gives them)."""
        observation, _ = super().observe(image, seed=seed, **options)
        return observation, {"quality": options.get("quality", 10)}


class SuperResolution(Task):
    """x``factor`` super-resolution; A is the Lanczos-2 half-phase downsampler
    (reference-configs.md section 4)."""

    name = "super_resolution"
    options = frozenset({"factor"})
    default_preset = "x4"
    default_stop = StopDefault("none", "plateau", "ema")
    degrade_options = ("factor",)
    checks_observation_size = False

    def __init__(self, observation: torch.Tensor, factor: int = 4) -> None:
        factor = check_integer(factor, "factor", minimum=2)
        height, width = observation.shape[-2:]
        # the output canvas (float32) and the Lanczos kernel (float64, (4 factor)^2 taps)
        check_host_allocation(
            4 * observation.shape[1] * height * width * factor**2 + 8 * (4 * factor) ** 2,
            f"super-resolution x{factor} of a {height}x{width} image "
            f"(a {height * factor}x{width * factor} output)",
        )
        super().__init__(observation, (height * factor, width * factor))
        self.factor = factor
        self.downsampler = operators.LanczosDownsampler(factor, observation.shape[1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.downsampler(x)

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        return self.downsampler.adjoint(y)

    @classmethod
    def from_options(cls, observation: np.ndarray, *, seed: int = 0, **options: Any) -> Task:
        factor = options.get("factor")
        return cls(io.image_to_tensor(observation), factor=4 if factor is None else factor)

    @classmethod
    def preset_for(cls, options: dict[str, Any]) -> str:
        """x8 for factor >= 8, else x4."""
        factor = options.get("factor")
        return "x8" if isinstance(factor, numbers.Real) and not isinstance(factor, bool) and factor >= 8 else "x4"

    @classmethod
    def degrade_image(cls, image: np.ndarray, *, seed: int = 0, **options: Any) -> Observation:
        """PIL Lanczos downsampling as in the reference: factor (4)."""
        return dg.downsample(image, options.get("factor", 4))

    @classmethod
    def observe(cls, image: np.ndarray, *, seed: int = 0, **options: Any) -> tuple[np.ndarray, dict[str, Any]]:
        observation, _ = super().observe(image, seed=seed, **options)
        return observation, {"factor": options.get("factor", 4)}


class Inpaint(_KnownValues, Task):
    """Fill holes; A multiplies by the known-pixel mask (1 = known, 0 = hole).

    Args:
        observation: (1, C, H, W) image with holes.
        mask: (1, 1 or C, H, W) in {0, 1}.
        keep_known: return m * y + (1 - m) * x: known pixels are known (method.md section 5).
    """

    name = "inpaint"
    options = frozenset({"mask", "keep_known", "mask_threshold"})
    default_preset = "kate"
    default_stop = StopDefault("twin", "knee", "ema")
    degrade_options = ("mask", "coverage", "keep")

    def __init__(self, observation: torch.Tensor, mask: torch.Tensor, *, keep_known: bool = True) -> None:
        super().__init__(observation, tuple(observation.shape[-2:]))
        if mask.ndim != 4 or mask.shape[0] != 1 or mask.shape[-2:] != observation.shape[-2:] or mask.shape[1] not in (1, observation.shape[1]):
            raise ValueError(
                f"mask has shape {tuple(mask.shape)}, observation is {tuple(observation.shape)}"
            )
        if not bool(mask.any()):
            raise ValueError("mask is all zeros: no pixel is known")
        self.masking = operators.MaskOperator(mask.float())
        self.keep_known = keep_known

    @classmethod
    def from_options(cls, observation: np.ndarray, *, seed: int = 0, **options: Any) -> Task:
        keep_known = options.get("keep_known")
        keep_known = True if keep_known is None else check_bool(keep_known, "keep_known")
        mask = load_mask(options.get("mask"), observation.shape[:2], _mask_threshold(options))
        return cls(io.image_to_tensor(observation), mask, keep_known=keep_known)

    @classmethod
    def degrade_image(cls, image: np.ndarray, *, seed: int = 0, **options: Any) -> Observation:
        """Holes: mask (default: a text mask drawn with ``seed``), coverage (0.05, a generated
        text mask only) or keep (a random mask keeping that share of the pixels instead)
        -> (observation, mask)."""
        h, w = image.shape[:2]
        mask = options.get("mask")
        if mask is not None and ("coverage" in options or "keep" in options):
            raise ValueError("coverage and keep apply only to a generated mask; do not give them with mask")
        if "coverage" in options and "keep" in options:
            raise ValueError("give coverage (a text mask) or keep (a random mask), not both")
        if mask is None and "keep" in options:
            mask = dg.random_pixel_mask((h, w), keep=options["keep"], seed=seed)
        elif mask is None:
            mask = dg.text_mask((h, w), seed=seed, coverage=options.get("coverage", 0.05))
        else:
            mask = dg.check_mask(mask, h, w)
        return dg.apply_mask(image, mask), mask


class RestorePixels(Inpaint):
    """Restore an image from a random subset of its pixels (the 'Barbara 50%' experiment)."""

    name = "restore_pixels"
    options = frozenset({"mask", "keep", "keep_known", "mask_threshold"})
    default_preset = "barbara"
    degrade_options = ("keep", "channels")

    @classmethod
    def from_options(cls, observation: np.ndarray, *, seed: int = 0, **options: Any) -> Task:
        if options.get("mask") is not None:
            if options.get("keep") is not None:
                raise ValueError("give either mask= or keep= for task 'restore_pixels', not both")
            return super().from_options(observation, seed=seed, **options)
        keep_known = options.get("keep_known")
        keep_known = True if keep_known is None else check_bool(keep_known, "keep_known")
        _mask_threshold(options)
        keep = 0.5 if options.get("keep") is None else options["keep"]
        keep = check_real(keep, "keep", "the fraction of known pixels, in (0, 1]", minimum=0, maximum=1, open_minimum=True)
        mask = io.image_to_tensor(dg.random_pixel_mask(observation.shape[:2], keep=keep, seed=seed))
        return cls(io.image_to_tensor(observation) * mask, mask, keep_known=keep_known)  # dropped pixels are not observed

    @classmethod
    def degrade_image(cls, image: np.ndarray, *, seed: int = 0, **options: Any) -> Observation:
        """A random share of the pixels: keep (0.5), channels (1: one mask for all channels)
        -> (observation, mask)."""
        h, w = image.shape[:2]
        channels = check_integer(options.get("channels", 1), "channels", minimum=1)
        image_channels = 1 if image.ndim == 2 else image.shape[2]
        if channels not in (1, image_channels):
            if image.ndim == 2:
                raise ValueError(f"channels must be 1 for a grayscale image, got {channels}")
            raise ValueError(f"channels must be 1 or {image_channels} for an image of {image_channels} channels, got {channels}")
        mask = dg.random_pixel_mask((h, w), options.get("keep", 0.5), seed=seed, channels=channels)
        return dg.apply_mask(image, mask), mask


class Deblur(Task):
    """Deconvolution; A convolves with a known blur kernel.

    The twin's probe lives in measurement space, so the risk rule's SURE is the error of the
    *blurred* image: it cannot see errors in the frequencies the blur removes. It still ranks
    iterations by their fit to the noisy data, but it is no image-space estimate:
    ``estimated_psnr`` is None (:attr:`estimate_caveat`; docs/twin-probe.md, "Blur").
    """

    name = "deblur"
    #: why the risk's error estimate is not shown for this task (``Restoration.estimated_psnr_reason``)
    estimate_caveat: ClassVar[str] = (
        "the risk of a blur is measured on the blurred image (measurement space): it is blind to the frequencies the "
        "blur removes (41.5 dB printed for a 21.6 dB image in issue 15), so it is not shown as the image's PSNR")
    options = frozenset({"kernel", "blur_sigma"})
    degrade_options = ("sigma", "kernel", "noise")

    def __init__(self, observation: torch.Tensor, kernel: torch.Tensor) -> None:
        super().__init__(observation, tuple(observation.shape[-2:]))
        self.blur = operators.BlurOperator(kernel)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blur(x)

    def noise_level(self) -> float:
        return observation_noise_level(self.observation)

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        return self.blur.adjoint(y)

    @classmethod
    def from_options(cls, observation: np.ndarray, *, seed: int = 0, **options: Any) -> Task:
        kernel, sigma = options.get("kernel"), options.get("blur_sigma")
        if (kernel is None) == (sigma is None):
            raise ValueError("task 'deblur' needs exactly one of kernel= (2-D array) or blur_sigma=")
        shape_hw = (int(observation.shape[0]), int(observation.shape[1]))
        if kernel is None:
            kernel64 = dg.checked_gaussian_kernel(sigma, shape_hw, "blur_sigma")
        else:
            kernel64 = dg.checked_kernel(kernel, shape_hw, "kernel")
        total = float(kernel64.sum())
        if not (math.isfinite(total) and total > 0):
            raise ValueError(f"kernel must have a positive finite sum (it is normalised to 1), got sum {total:.6g}")
        return cls(io.image_to_tensor(observation), torch.as_tensor((kernel64 / total).astype(np.float32)))

    @classmethod
    def degrade_image(cls, image: np.ndarray, *, seed: int = 0, **options: Any) -> Observation:
        """Blur with the task's own operator: sigma (2.0) or kernel; then white Gaussian noise of
        std noise (0: none), clipped to [0, 1] like 8-bit data."""
        blurred = dg.blur(image, sigma=options.get("sigma"), kernel=options.get("kernel"))
        noise = check_real(options.get("noise", 0.0), "noise", "a noise std >= 0", minimum=0)
        if noise == 0:
            return blurred
        return dg.add_gaussian_noise(np.clip(blurred, 0, 1), noise, seed=seed)

    @classmethod
    def observe(cls, image: np.ndarray, *, seed: int = 0, **options: Any) -> tuple[np.ndarray, dict[str, Any]]:
        observation, _ = super().observe(image, seed=seed, **options)
        if options.get("kernel") is not None:
            return observation, {"kernel": options["kernel"]}
        return observation, {"blur_sigma": options.get("sigma", dg.DEFAULT_BLUR_SIGMA)}


class CustomOperator(Task):
    """Any differentiable callable x -> A(x), or a deepinv ``Physics``-like object.

    An object with an ``A`` method (deepinv's ``Physics``) is used through ``A`` and, when it
    has one, ``A_adjoint``: calling a deepinv ``Physics`` applies its noise model too, which a
    DIP fit must not see at every step (the noise is in the observation already).

    Args:
        observation: the measurement y, (1, C', h, w).
        operator: the forward operator; applied to (1, C, H, W) images in [0, 1].
        output_shape: (C, H, W) of the image to reconstruct.
        adjoint: optional A^T.

    Raises:
        ValueError: a bad ``output_shape``, or ``operator`` fails on a mid-grey test image
            (its error is chained), maps it to the wrong shape, returns NaN/inf, or lets no
            gradient through.
        TypeError: ``operator``/``adjoint`` not callable, or ``operator`` returns something
            other than a real floating-point tensor.
    """

    name = "custom"
    #: why the risk's error estimate is not shown for this task (``Restoration.estimated_psnr_reason``)
    estimate_caveat: ClassVar[str] = (
        "the risk of a custom operator is measured in its measurement space, where errors the operator removes are "
        "invisible; the error of the image is not estimated")
    options = frozenset({"operator", "output_shape", "adjoint"})
    code_only_options = frozenset({"operator", "output_shape", "adjoint"})
    checks_observation_size = False

    def __init__(
        self,
        observation: torch.Tensor,
        operator: Callable[[torch.Tensor], torch.Tensor],
        output_shape: tuple[int, int, int],
        adjoint: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> None:
        output_shape = _output_shape(output_shape)
        if not callable(operator):
            raise TypeError(f"operator must be a callable x -> A(x), got {type(operator).__name__}")
        if adjoint is not None and not callable(adjoint):
            raise TypeError(f"adjoint must be a callable y -> A^T(y) or None, got {type(adjoint).__name__}")
        check_host_allocation(4 * math.prod(output_shape), f"an output of shape {output_shape}")
        super().__init__(observation, (output_shape[1], output_shape[2]))
        self._image_channels = int(output_shape[0])
        forward = getattr(operator, "A", None)
        if callable(forward):  # deepinv-style: A (noise-free), not __call__ (A + noise)
            if adjoint is None and callable(getattr(operator, "A_adjoint", None)):
                adjoint = operator.A_adjoint
            operator = forward
        self.operator = operator
        self._adjoint = adjoint
        # one call on a mid-grey image: the operator must run, return a real tensor of the
        # observation's shape, stay finite and let gradients through (DIP fits through it)
        test_shape = (1, *output_shape)
        with torch.enable_grad():
            x = torch.full(test_shape, 0.5, device=observation.device, requires_grad=True).clone()
            try:
                probe = operator(x)
            except Exception as error:  # noqa: BLE001 - any failure of the user's callable
                raise ValueError(
                    f"operator raised {type(error).__name__} on a {test_shape} test image: {error}"
                ) from error
        if not isinstance(probe, torch.Tensor):
            raise TypeError(
                f"operator must return a torch tensor, got {type(probe).__name__} for a {test_shape} image"
            )
        if not probe.is_floating_point():
            raise TypeError(f"operator must return a real floating-point tensor, got dtype {probe.dtype}")
        if tuple(probe.shape) != tuple(observation.shape):
            raise ValueError(
                f"operator maps a {tuple(output_shape)} image to {tuple(probe.shape)}, "
                f"but the observation has shape {tuple(observation.shape)}"
            )
        if not bool(torch.isfinite(probe.detach()).all()):
            raise ValueError(f"operator returned NaN or infinite values for a mid-grey {test_shape} image")
        if not probe.requires_grad:
            raise ValueError(
                "operator output carries no gradient to its input: DIP fits the image through A, so "
                "A must be differentiable torch code (no .detach(), numpy round trip or integer cast)"
            )

    @property
    def output_shape(self) -> tuple[int, int, int]:
        return (self._image_channels, *self.output_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.operator(x)

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        if self._adjoint is None:
            return super().adjoint(y)
        return self._adjoint(y)

    @classmethod
    def from_options(cls, observation: np.ndarray, *, seed: int = 0, **options: Any) -> Task:
        operator = options.get("operator")
        if operator is None or not callable(operator):
            raise ValueError("task 'custom' needs operator= (a callable x -> A(x) on 1xCxHxW tensors)")
        output_shape = options.get("output_shape")
        if output_shape is None:
            output_shape = (observation.shape[2], *observation.shape[:2])
        return cls(io.image_to_tensor(observation), operator, output_shape, adjoint=options.get("adjoint"))


def load_mask(mask: Any, shape_hw: tuple[int, int], threshold: float = 0.5) -> torch.Tensor:
    """A known-pixel mask as (1, 1 or C, H, W) float {0, 1}: a path, array, PIL image or
    tensor; non-binary masks are thresholded at ``threshold`` (1 = known, 0 = hole).

    Raises:
        ValueError: missing, unreadable, wrong shape, no known pixel, or a threshold outside
            [0, 1]. TypeError: a mask or threshold of the wrong type. FileNotFoundError: a
            missing mask file.
    """
    if mask is None:
        raise ValueError("this task needs mask= (path or array; 1 = known pixel, 0 = hole)")
    threshold = check_real(threshold, "mask_threshold", "a level in [0, 1]", minimum=0, maximum=1)
    if isinstance(mask, np.ndarray) and (mask.dtype == bool or (mask.dtype == np.uint8 and mask.max(initial=0) <= 1)):
        mask = mask.astype(np.float32)  # {0, 1} integers are a mask, not 8-bit grey levels
    array = io.load_image(mask, name="mask")
    if array.shape[:2] != tuple(shape_hw):
        raise ValueError(f"mask has shape {array.shape[:2]}, image is {tuple(shape_hw)}")
    binary = (array >= threshold).astype(np.float32)
    if binary.shape[2] > 1 and np.all(binary == binary[:, :, :1]):
        binary = binary[:, :, :1]
    if not binary.any():
        raise ValueError("mask is all zeros: no pixel is known (1 = known, 0 = hole)")
    return io.image_to_tensor(binary)


#: task name -> task class, in the order tasks are listed to users
TASKS: dict[str, type[Task]] = {}


def register_task(cls: type[Task]) -> type[Task]:
    """Make ``cls`` a named task of every entry point (decorator); its ``name`` must be new."""
    if not (isinstance(cls, type) and issubclass(cls, Task)) or cls.name == Task.name:
        raise TypeError(f"register_task takes a Task subclass with its own name, got {cls!r}")
    if cls.name in TASKS and TASKS[cls.name] is not cls:
        raise ValueError(f"a task named {cls.name!r} is registered already ({TASKS[cls.name].__name__})")
    TASKS[cls.name] = cls
    return cls


for _cls in (Denoise, JPEG, SuperResolution, Inpaint, RestorePixels, Deblur, CustomOperator):
    register_task(_cls)


def task_names() -> tuple[str, ...]:
    """The names ``restore(..., task=...)`` takes."""
    return tuple(TASKS)


def task_class(name: object) -> type[Task]:
    """The task class registered as ``name``.

    Raises:
        ValueError: an unknown name, listing the known ones.
    """
    if not isinstance(name, str) or name not in TASKS:
        raise ValueError(f"unknown task {name!r}; expected one of {list(TASKS)}")
    return TASKS[name]


def check_task_options(name: str, options: dict[str, Any], *, allowed: frozenset[str] | None = None) -> None:
    """Refuse options (those not None) that task ``name`` does not take, naming the valid ones.

    ``allowed``: the options this entry point lets through (default: all of the task's)."""
    valid = task_class(name).options if allowed is None else task_class(name).options & allowed
    anywhere = frozenset().union(*(cls.options for cls in TASKS.values()))
    strangers = sorted(set(options) - anywhere)
    if strangers:  # no task takes it: a misspelt keyword, as Python reports one
        raise TypeError(f"unexpected keyword argument(s) {strangers}; the options of task {name!r}: {sorted(valid) or 'none'}")
    unknown = {key for key, value in options.items() if value is not None} - valid
    if unknown:
        raise ValueError(f"option(s) {sorted(unknown)} do not apply to task {name!r}; valid: {sorted(valid) or 'none'}")


def build_task(task: str, observation: np.ndarray, *, seed: int = 0, **options: Any) -> Task:
    """Make a :class:`Task` from a task name, the observation (HxWxC float) and options.

    Raises:
        ValueError: unknown task, an option that the task does not take, or a bad option
            value (:class:`oscfast.TooLargeError`, a ValueError, when the task's buffers
            would not fit in memory).
        TypeError: an option of the wrong type (e.g. a string for a number).
    """
    cls = task_class(task)
    check_task_options(task, options)
    return cls.from_options(observation, seed=seed, **{k: v for k, v in options.items() if v is not None})


def degrade(image: np.ndarray, task: str, *, seed: int = 0, **options: Any) -> Observation:
    """Make the observation of ``image`` for one restoration task.

    Tasks, their options (defaults) and what they return:

    - ``"denoise"``: sigma (25/255), clip (True) -> noisy image; or noise (``"gaussian"``,
      ``"poisson"`` (shot), ``"speckle"``, ``"impulse"``) at severity (1..5, default 3), the
      ImageNet-C / ES-WMV benchmark definitions (:func:`oscfast.noise_models.add_noise`).
    - ``"jpeg"``: quality (10) -> decoded JPEG.
    - ``"super_resolution"``: factor (4) -> LR image (H / factor, W / factor).
    - ``"inpaint"``: mask (default ``text_mask(seed=seed)``), coverage (0.05) or keep (a random
      mask instead) -> (observed, mask).
    - ``"restore_pixels"``: keep (0.5), channels (1) -> (observed, mask).
    - ``"deblur"``: sigma (2.0) or kernel, noise (0) -> blurred (and noisy) image.

    ``seed`` seeds the noise (denoise) and the generated masks (inpaint without ``mask``,
    restore_pixels); the other tasks are deterministic and ignore it.

    Args:
        image: Clean image (H, W) or (H, W, C), float in [0, 1].
        task: One of the task names above.
        seed: Random seed.
        **options: Task options from the list.

    Returns:
        The observation (float32), or ``(observation, mask)`` for the masked tasks, the mask being
        float32 {0, 1} of shape (H, W, 1) unless given.

    Raises:
        ValueError: For an unknown task or option, an invalid image or invalid option values.
        TypeError: If ``image`` is not a float numpy array.

    Example:
        >>> x = np.full((32, 32, 3), 0.5, np.float32)
        >>> degrade(x, "super_resolution", factor=4).shape
        (8, 8, 3)
        >>> y, m = degrade(x, "restore_pixels", keep=0.25, seed=1)
    """
    degradable = [name for name, cls in TASKS.items() if cls.degrade_options or cls.degrade_image.__func__ is not Task.degrade_image.__func__]
    if not isinstance(task, str) or task not in degradable:
        raise ValueError(f"unknown task {task!r}; valid tasks: {', '.join(degradable)}")
    cls = TASKS[task]
    unknown = sorted(set(options) - set(cls.degrade_options))
    if unknown:
        raise ValueError(
            f"unknown option(s) {', '.join(unknown)} for task {task!r}; "
            f"valid options: {', '.join(cls.degrade_options) or 'none'} (and seed)"
        )
    return cls.degrade_image(dg.check_image(image), seed=seed, **options)


def _mask_threshold(options: dict[str, Any]) -> float:
    threshold = 0.5 if options.get("mask_threshold") is None else options["mask_threshold"]
    return check_real(threshold, "mask_threshold", "a level in [0, 1]", minimum=0, maximum=1)


def _output_shape(output_shape: Any) -> tuple[int, int, int]:
    """``output_shape`` as (C, H, W) positive integers."""
    if isinstance(output_shape, (str, bytes)) or not isinstance(output_shape, (tuple, list, torch.Size, np.ndarray)):
        raise TypeError(f"output_shape must be a tuple (C, H, W) of positive integers, got {output_shape!r}")
    values = list(output_shape.tolist() if isinstance(output_shape, np.ndarray) else output_shape)
    if len(values) != 3:
        raise ValueError(f"output_shape must be a tuple (C, H, W) of 3 positive integers, got {output_shape!r}")
    try:
        return tuple(check_integer(v, f"output_shape {name}", minimum=1) for v, name in zip(values, "CHW"))  # type: ignore[return-value]
    except TypeError as error:
        raise TypeError(f"output_shape must be a tuple (C, H, W) of positive integers, got {output_shape!r}: {error}") from None
    except ValueError as error:
        raise ValueError(f"output_shape must be a tuple (C, H, W) of positive integers, got {output_shape!r}: {error}") from None
