"""The engine's value types: options, fits, watches, what a sync shows, what a run returns,
the canvas the net runs on, and the sizes of the rings (no device state, no loop)."""
from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch

from oscfast.config import DIPConfig
from oscfast.models import NetSpec
from oscfast.fits import Strategy
from oscfast.stopping import Decision, StopRule
from oscfast.tasks import Task


__all__ = ["ENGINE_SIGNALS", "CanvasGeometry", "EngineOptions", "FitSpec", "GeneratorSnapshot", "Precision", "ResumePoint", "RunRecord", "StopMode", "SyncInfo", "Watch", "canvas_geometry", "make_input", "resume_points_for", "ring_size_for"]

logger = logging.getLogger("oscfast.engine")

Precision = Literal["fp32", "bf16"]
StopMode = Literal["osc", "never"]
#: signals the engine can compute per fit (see oscfast.stopping)
ENGINE_SIGNALS = ("loss", "loss_ema", "p", "p_ema", "wmv", "emv", "change")


@dataclass(frozen=True)
class EngineOptions:
    """How to run (not what to compute).

    Attributes:
        device: torch device to run on.
        precision: ``"fp32"`` or ``"bf16"`` (autocast of the network; loss, P, EMA stay fp32).
        cuda_graph: capture the step in a CUDA graph (None: whenever the device is CUDA).
        strategy: how K fits share a step (:class:`oscfast.fits.StackedGenerators`).
        seed: unused by the engine itself (each fit has its own); kept for callers.
            ``"auto"`` is the loop on a CPU (measured faster on 2 cores) and vmap on CUDA when
            there are several fits: the CUDA choice is unmeasured in this version (no GPU run);
            pass ``"loop"`` or ``"vmap"`` to choose.
        progress: show a tqdm bar.
        check_memory: estimate the memory before allocating and refuse runs that do not fit.
        sync_every: iterations between two reads of the device buffers by the host.
        wmv_window: the ES-WMV window W (reference-configs.md section 7).
        emv_alpha: the ES-EMV weight alpha.
        change_lag: the plateau signal compares the averaged output with the one this many
            iterations earlier.
        compile: run the generator through ``torch.compile`` (inductor; the first step of each
            shape pays the compile time; a failure falls back to eager with a logged reason).
            Off by default: on this project's 2-core AVX2 CPU it measured slower than eager
            (bench/results/throughput-*.md).
        allow_tf32: let cuDNN run fp32 convolutions in TF32 on CUDA (10 mantissa bits, faster
            on Ampere and later). Off by default: an ``"fp32"`` run computes in fp32. The flag
            is set inside the run only (``torch.backends.cudnn.flags``) and restored after it.
        keep_resume_points: keep, on the host, the driving fit's weights, Adam state and
            reg-noise state at each sync that the rule may still return from
            (:class:`ResumePoint`), so that the returned iteration's generator can be rebuilt
            exactly by a few eager steps (``Restoration.export``). Costs host memory: about
            three copies of the network's parameters per ``sync_every`` iterations of the
            ring (``estimate_run_bytes(..., resume_points=...)``).
    """

    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    precision: Precision = "fp32"
    cuda_graph: bool | None = None
    strategy: Strategy = "auto"
    seed: int = 0
    progress: bool = True
    check_memory: bool = True
    sync_every: int = 25
    wmv_window: int = 100
    emv_alpha: float = 0.1
    change_lag: int = 100
    compile: bool = False
    allow_tf32: bool = False
    keep_resume_points: bool = True

    def __post_init__(self) -> None:
        if self.precision not in ("fp32", "bf16"):
            raise ValueError(f"unknown precision {self.precision!r}; expected 'fp32' or 'bf16'")
        if self.sync_every < 1 or self.wmv_window < 2 or self.change_lag < 1:
            raise ValueError("sync_every >= 1, wmv_window >= 2 and change_lag >= 1 are required")

    @property
    def use_cuda_graph(self) -> bool:
        """Whether the step will be graph-captured."""
        wanted = self.device.type == "cuda" if self.cuda_graph is None else self.cuda_graph
        if wanted and self.device.type != "cuda":
            raise ValueError("cuda_graph=True needs a CUDA device")
        return wanted


@dataclass(frozen=True)
class FitSpec:
    """One DIP fit.

    Attributes:
        task: observation and forward operator.
        seed: initial weights (seed), input z (seed + 1), reg-noise draws (seed + 2).
        probe: the pseudo-noise n this fit's P is measured against (None: no P).
        noisy_target: the target is y + n (the probed fit) instead of y.
        branch_of: the fit (an index into its group's fits) this fit branches off, or None.
            A branching fit does not train before iteration ``branch_at``: its output there
            is its parent's (so its signals are computed from the parent's output against its
            own target, and P_twin is 0); before iteration ``branch_at`` runs it takes a copy
            of the parent's whole state (weights, Adam moments and step count, input, the
            reg-noise generator's state, averages and windows) and trains on its own target
            from then on (the late-start twin, ``StopConfig.twin_start``). Its own ``seed``
            is then unused.
        branch_at: the iteration before which the fit branches off ``branch_of``.
    """

    task: Task
    seed: int = 0
    probe: torch.Tensor | None = None
    noisy_target: bool = False
    branch_of: int | None = None
    branch_at: int = 0

    def __post_init__(self) -> None:
        if self.noisy_target and self.probe is None:
            raise ValueError("a noisy target needs the pseudo-noise (probe=)")
        if self.branch_of is None and self.branch_at != 0:
            raise ValueError(f"branch_at={self.branch_at} needs the fit it branches off (branch_of=)")
        if isinstance(self.branch_at, bool) or not isinstance(self.branch_at, int) or self.branch_at < 0:
            raise ValueError(f"branch_at must be an integer >= 0, got {self.branch_at!r}")


@dataclass
class Watch:
    """A stop rule attached to fits.

    Attributes:
        rule: the rule.
        fit: the fit whose image the rule returns (its loss, variances and change are fed).
        probe: the fit that carries the pseudo-noise (its P is fed); None for rules without P.
        base: the fit whose P is subtracted (twin probe: P_twin = P_B - P_A); None for inline.
        label: a name for reports (default: the rule's name).
    """

    rule: StopRule
    fit: int = 0
    probe: int | None = None
    base: int | None = None
    label: str = ""

    def __post_init__(self) -> None:
        self.label = self.label or self.rule.name


@dataclass(frozen=True)
class SyncInfo:
    """What a host callback sees at each sync."""

    iteration: int
    decisions: tuple[Decision, ...]
    latest: Mapping[str, np.ndarray]
    images: Callable[[], dict[str, torch.Tensor]]


@dataclass
class GeneratorSnapshot:
    """The generator as it was at one iteration: network, its input and where to crop."""

    iteration: int
    net: torch.nn.Module
    net_input: torch.Tensor
    top: int
    left: int
    height: int
    width: int
    raw_image: torch.Tensor


@dataclass
class ResumePoint:
    """One fit's state at the start of an iteration, on the host: enough to continue that fit
    alone, step for step (its weights, Adam moments and step count, reg-noise generator state
    and exponential average).

    Attributes:
        iteration: the iteration about to run (the weights are those its output comes from).
        parameters: stacked-parameter name -> the fit's tensor.
        exp_avg, exp_avg_sq: Adam's moments, in the order of the parameters.
        adam_step: Adam's step count.
        rng_state: the reg-noise generator's state.
        ema: the exponential average, (1, C, H, W).
    """

    iteration: int
    parameters: dict[str, torch.Tensor]
    exp_avg: list[torch.Tensor]
    exp_avg_sq: list[torch.Tensor]
    adam_step: float
    rng_state: torch.Tensor
    ema: torch.Tensor

    @property
    def nbytes(self) -> int:
        """Host bytes held."""
        tensors = [*self.parameters.values(), *self.exp_avg, *self.exp_avg_sq, self.rng_state, self.ema]
        return sum(t.numel() * t.element_size() for t in tensors)


@dataclass
class RunRecord:
    """What one engine run produced (host-side CPU tensors and numpy arrays).

    Attributes:
        decisions: the final decision of each watch, in order.
        driver: index of the watch that drove the run.
        iterations_run: iterations the run made.
        raw_image, ema_image: the driver's fit at its chosen iteration (its last iteration
            when it chose nothing), (1, C, H, W).
        last_images: the raw output of every fit at the last iteration, (K, 1, C, H, W).
        traces: signal name -> (K, iterations_run) values per fit.
        seconds: wall time of the loop.
        rules: the watches' rules after the run (their scores and histories).
        interrupted: the run was cancelled or interrupted before its rule fired.
        resume_point: the driving fit's latest :class:`ResumePoint` at or before the chosen
            iteration (None when none was kept): the export continues from it.
        fit_iterations: the iterations each fit actually trained (a fit that branches off
            another, :attr:`FitSpec.branch_of`, counts from its branch point on).
    """

    decisions: list[Decision]
    driver: int
    iterations_run: int
    raw_image: torch.Tensor
    ema_image: torch.Tensor
    last_images: torch.Tensor
    traces: dict[str, np.ndarray]
    seconds: float
    rules: list[StopRule]
    generator_snapshot: GeneratorSnapshot | None = None
    interrupted: bool = False
    resume_point: ResumePoint | None = None
    fit_iterations: tuple[int, ...] = ()

    @property
    def decision(self) -> Decision:
        """The driving rule's decision."""
        return self.decisions[self.driver]


@dataclass(frozen=True)
class CanvasGeometry:
    """The network's output canvas: the image size rounded up to the net's stride multiple."""

    height: int
    width: int
    top: int
    left: int


def canvas_geometry(height: int, width: int, spec: NetSpec) -> CanvasGeometry:
    """Pad (H, W) up to the net's canvas (:meth:`NetSpec.canvas_side`); the image sits centred in it."""
    canvas_h = spec.canvas_side(height)
    canvas_w = spec.canvas_side(width)
    return CanvasGeometry(canvas_h, canvas_w, (canvas_h - height) // 2, (canvas_w - width) // 2)


def make_input(config: DIPConfig, height: int, width: int, *, seed: int) -> torch.Tensor:
    """The fixed network input z (reference-configs.md section 1), drawn on the CPU."""
    if config.input_kind == "meshgrid":
        cols = torch.linspace(0, 1, width).expand(height, width)
        rows = torch.linspace(0, 1, height)[:, None].expand(height, width)
        return torch.stack([cols, rows])[None].contiguous()
    generator = torch.Generator().manual_seed(seed)
    shape = (1, config.net.input_channels, height, width)
    return torch.rand(shape, generator=generator).mul_(config.input_scale)


def ring_size_for(lag: int, sync_every: int) -> int:
    """Recent outputs a run keeps for its driving fit: the rule's lag and one sync block more
    (a new choice is at most ``lag`` iterations old when the block that reveals it ends)."""
    return lag + sync_every + 1


def resume_points_for(ring_size: int, sync_every: int) -> int:
    """The most :class:`ResumePoint` kept per driving fit: one per sync in the ring, one for
    the current choice and the newest."""
    return -(-ring_size // sync_every) + 2  # the syncs inside the ring, the one before it, the choice's


