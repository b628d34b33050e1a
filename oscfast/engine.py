"""The DIP loop for K fits at once, with every signal computed on the device (method.md 1-8).

One training step does everything on the device for each of K fits (stacked parameters,
:mod:`oscfast.fits`): perturb z, forward, loss against the fit's target, backward, Adam, the
exponential average, the signals the stop rules read (loss, P of the raw and averaged output,
ES variances, the change of the averaged output, metrics against a reference), and the ring of
recent outputs, each written at the fit's iteration index of preallocated buffers. On CUDA the
step is captured once in a CUDA graph and replayed; on the CPU the same function runs eagerly.
The host reads the new values every ``sync_every`` iterations and feeds the stop rules.

A *fit* is one DIP optimisation (:class:`FitSpec`: its task, seed, whether its target carries
the pseudo-noise). A *watch* attaches a stop rule to fits (:class:`Watch`): whose image it
returns, which fit carries the probe and which is subtracted from it (the twin). One watch
drives the run (its image is returned, its stop ends the run); the others only record their
decisions (evaluation). The engine knows neither the task nor the rule behind the protocols.
"""
from __future__ import annotations

import contextlib
import copy
import logging
import math
import threading
import time
import types
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch
from tqdm.auto import tqdm

from oscfast.checkpoint import Checkpoint
from oscfast.config import DIPConfig
from oscfast.models import NetSpec
from oscfast.fits import StackedAdam, StackedGenerators, Strategy
from oscfast.memory import check_memory, estimate_run_bytes
from oscfast.probe import projection
from oscfast.stopping import Decision, Signals, StopRule
from oscfast.tasks import Task

__all__ = [
    "BatchRun",
    "CanvasGeometry",
    "Group",
    "EngineOptions",
    "FitSpec",
    "GeneratorSnapshot",
    "ResumePoint",
    "RunRecord",
    "SyncInfo",
    "Watch",
    "canvas_geometry",
    "make_input",
    "ring_size_for",
    "run_fits",
]

logger = logging.getLogger(__name__)

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
    """

    task: Task
    seed: int = 0
    probe: torch.Tensor | None = None
    noisy_target: bool = False

    def __post_init__(self) -> None:
        if self.noisy_target and self.probe is None:
            raise ValueError("a noisy target needs the pseudo-noise (probe=)")


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


def _on_device(task: Task, device: torch.device) -> Task:
    """The task on ``device``; a copy when it must move (the caller's object is not changed).

    Besides its buffers and parameters, a task's tensors can hide in callables it holds (a
    custom operator that is a closure, or a bound method of a deepinv ``Physics``, which is not
    a submodule): those move too (:func:`_moved_callable`). A tensor the copy still cannot move
    (a global of the operator's module, an attribute of a plain object) shows up in one call
    of the operator on the device, and is reported as a ``ValueError`` naming the problem.
    """
    if all(tensor.device == device for tensor in _task_tensors(task)):
        return task
    moved = copy.deepcopy(task).to(device)
    for module in moved.modules():
        for name, value in list(vars(module).items()):
            if callable(value) and not isinstance(value, (torch.nn.Module, type)) and not name.startswith("__"):
                setattr(module, name, _moved_callable(value, device))
    _check_operator_device(moved, device)
    return moved


def _task_tensors(task: Task) -> Iterator[torch.Tensor]:
    """Every tensor a task holds: buffers, parameters and those inside its callables."""
    yield from task.buffers()
    yield from task.parameters()
    for module in task.modules():
        for name, value in vars(module).items():
            if callable(value) and not isinstance(value, (torch.nn.Module, type)) and not name.startswith("__"):
                yield from _callable_tensors(value, depth=0)


def _callable_tensors(function: object, *, depth: int) -> Iterator[torch.Tensor]:
    if depth > 4:
        return
    owner = getattr(function, "__self__", None)
    if isinstance(owner, torch.nn.Module):
        yield from owner.buffers()
        yield from owner.parameters()
    if isinstance(function, types.FunctionType):
        values = [cell.cell_contents for cell in function.__closure__ or () if _cell_filled(cell)]
        values += list(function.__defaults__ or ()) + list((function.__kwdefaults__ or {}).values())
        for value in values:
            if isinstance(value, torch.Tensor):
                yield value
            elif isinstance(value, torch.nn.Module):
                yield from value.buffers()
                yield from value.parameters()
            elif callable(value):
                yield from _callable_tensors(value, depth=depth + 1)


def _cell_filled(cell: types.CellType) -> bool:
    try:
        cell.cell_contents  # noqa: B018 - an empty cell raises
    except ValueError:
        return False
    return True


def _moved_callable(function: object, device: torch.device, depth: int = 0) -> object:
    """``function`` with its tensors on ``device``: a bound method of a module (already a copy,
    made by the task's deepcopy) has its module moved; a closure is rebuilt with moved copies
    of the tensors and modules in its cells and defaults (the caller's function is unchanged)."""
    owner = getattr(function, "__self__", None)
    if isinstance(owner, torch.nn.Module):
        owner.to(device)
        return function
    if not isinstance(function, types.FunctionType) or depth > 4:
        return function

    def move(value: object) -> object:
        if isinstance(value, torch.Tensor):
            return value.to(device)
        if isinstance(value, torch.nn.Module):
            return copy.deepcopy(value).to(device)
        if callable(value):
            return _moved_callable(value, device, depth + 1)
        return value

    cells = tuple(types.CellType(move(cell.cell_contents)) if _cell_filled(cell) else cell for cell in function.__closure__ or ())
    moved = types.FunctionType(function.__code__, function.__globals__, function.__name__,
                               tuple(move(v) for v in function.__defaults__ or ()) or None, cells or None)
    moved.__kwdefaults__ = {k: move(v) for k, v in (function.__kwdefaults__ or {}).items()} or None
    moved.__dict__.update(function.__dict__)
    return moved


def _check_operator_device(task: Task, device: torch.device) -> None:
    """One call of the moved operator on the device; a tensor left behind is named."""
    try:
        with torch.no_grad():
            task(torch.zeros((1, *task.output_shape), device=device))
    except RuntimeError as error:
        if "device" not in str(error):
            raise
        raise ValueError(
            f"the task's operator keeps tensors that oscfast cannot move to {device} (a global, or an "
            f"attribute of an object that is not a torch module): {error}. Build the operator's tensors "
            f"on {device}, or make them attributes of an nn.Module (or of the closure)"
        ) from None


def _copy_buffers(source: Task, target: Task) -> None:
    """Copy a task's tensors into another task of the same kind and shapes, in place."""
    pairs = list(zip(source.buffers(), target.buffers()))
    if type(source) is not type(target) or len(pairs) != len(list(target.buffers())) or any(a.shape != b.shape for a, b in pairs):
        raise ValueError(f"a captured slot holds a {type(target).__name__}; the new task must have the same kind and shapes")
    with torch.no_grad():
        for a, b in pairs:
            b.copy_(a)


def _stack(values: Sequence[torch.Tensor]) -> torch.Tensor:
    return torch.stack([value.reshape(()) for value in values])


class _DeviceState:
    """Everything the step touches for K fits, preallocated on the device.

    The rings of recent outputs are kept only for the fits whose images are read
    (``ring_slots``: each restoration's driving fit); every fit's newest raw output is kept in
    ``last_raw``.
    """

    def __init__(
        self,
        fits: Sequence[FitSpec],
        config: DIPConfig,
        *,
        signals: Sequence[str],
        metrics: Mapping[str, Callable[[torch.Tensor], torch.Tensor]],
        ring_size: int,
        options: EngineOptions,
        ring_slots: Sequence[int] | None = None,
    ) -> None:
        device = options.device
        self.device = device
        self.config = config
        moved: dict[int, Task] = {}
        self.tasks = [moved.setdefault(id(fit.task), _on_device(fit.task, device)) for fit in fits]
        self.num_fits = k = len(fits)
        channels, height, width = self.tasks[0].output_shape
        self.geometry = canvas_geometry(height, width, config.net)
        self.height, self.width = height, width
        self.generators = StackedGenerators(
            config.net, channels, [fit.seed for fit in fits], strategy=options.strategy, device=device,
            compile=options.compile, compute_dtype=torch.bfloat16 if options.precision == "bf16" else None,
        )
        self.optimizer = StackedAdam(list(self.generators.parameters()), num_slots=k, lr=config.learning_rate)
        self.z = torch.cat([make_input(config, self.geometry.height, self.geometry.width, seed=fit.seed + 1) for fit in fits])
        self.z = self.z.unsqueeze(1).to(device)
        self.z_in = self.z.clone()
        self.eps = torch.zeros_like(self.z)
        self.reg_noise_std = config.reg_noise_std
        self.rngs = [torch.Generator(device=device).manual_seed(fit.seed + 2) for fit in fits]
        self.targets, self.noises = [], []
        # 1 / <n, n> per fit on the device: a captured graph reads it at each replay, so a
        # refill with another probe energy (load_fit) takes effect (a Python float would be
        # baked into the graph)
        self.inv_energy = torch.zeros(k, device=device)
        for slot, (fit, task) in enumerate(zip(fits, self.tasks)):
            noise = fit.probe.to(device) if fit.probe is not None else None
            self.noises.append(noise)
            self.inv_energy[slot] = _inverse_energy(noise)
            self.targets.append(task.observation + noise if fit.noisy_target else task.observation.clone())
        self.signal_names = list(signals)
        self.metric_names = [f"{name}{suffix}" for name in metrics for suffix in ("", "_ema")]
        self.metrics = dict(metrics)
        self.trace_names = self.signal_names + self.metric_names
        cap = config.max_iterations
        self.t = torch.zeros(k, dtype=torch.long, device=device)
        self.trace = torch.full((k, len(self.trace_names), cap), math.nan, device=device)
        image = (k, 1, channels, height, width)
        self.ema = torch.zeros(image, device=device)
        self.ema_decay = config.ema_decay
        self.last_raw = torch.zeros(image, device=device)
        self.ring_size = ring_size
        self.ring_slots = list(range(k)) if ring_slots is None else sorted(set(ring_slots))
        #: slot -> its row in the rings (None: no ring for that slot)
        self.ring_row: list[int | None] = [None] * k
        for row, slot in enumerate(self.ring_slots):
            self.ring_row[slot] = row
        ring_shape = (ring_size, len(self.ring_slots), *image[1:])
        self.ring_raw = torch.zeros(ring_shape, device=device)
        self.ring_ema = torch.zeros_like(self.ring_raw)
        self.ring_index = torch.tensor(self.ring_slots, dtype=torch.long, device=device)
        self.ring_rows = torch.arange(len(self.ring_slots), device=device)
        self.fit_index = torch.arange(k, device=device)
        # eager runs index the rings with host integers (plain slicing: tensor indexing costs
        # milliseconds per image on a CPU); a captured graph must use the device counter
        self.host_t: list[int] | None = None if options.use_cuda_graph else [0] * k
        if "wmv" in signals:
            self.wmv_window = options.wmv_window
            self.wmv_ring = torch.zeros((options.wmv_window, *image), device=device)
            self.wmv_sum = torch.zeros(image, dtype=torch.float64, device=device)
            self.wmv_sumsq = torch.zeros_like(self.wmv_sum)
        if "emv" in signals:
            self.emv_alpha = options.emv_alpha
            self.emv_mean = torch.zeros(image, device=device)
            self.emv = torch.zeros(k, device=device)
        if "change" in signals:
            self.change_lag = options.change_lag
            self.change_ring = torch.zeros((options.change_lag, *image), device=device)
        self.autocast = (
            (lambda: torch.autocast(device.type, dtype=torch.bfloat16, cache_enabled=False))
            if options.precision == "bf16"
            else contextlib.nullcontext
        )

    # -- the step -------------------------------------------------------------------------
    def step(self) -> None:
        """One DIP iteration of every fit with all bookkeeping on the device (no host sync)."""
        self.optimizer.zero_grad()
        if self.reg_noise_std > 0:
            for k, rng in enumerate(self.rngs):
                self.eps[k].normal_(generator=rng)
            torch.add(self.z, self.eps, alpha=self.reg_noise_std, out=self.z_in)
        else:
            self.z_in.copy_(self.z)
        g = self.geometry
        with self.autocast():
            out = self.generators(self.z_in)
        x = out[..., g.top : g.top + self.height, g.left : g.left + self.width].float()
        measured = [task(x[k]) for k, task in enumerate(self.tasks)]
        losses = [task.loss(m, target) for task, m, target in zip(self.tasks, measured, self.targets)]
        torch.stack(losses).sum().backward()
        self.optimizer.step()
        with torch.no_grad():
            self._record(x.detach(), [m.detach() for m in measured], losses)

    def _record(self, x: torch.Tensor, measured: list[torch.Tensor], losses: list[torch.Tensor]) -> None:
        k = self.num_fits
        # the first output initialises the average (reference-configs.md section 3)
        weight = ((self.t > 0).to(torch.float32) * self.ema_decay).view(k, 1, 1, 1, 1)
        self.ema.lerp_(x, 1.0 - weight)
        values: dict[str, torch.Tensor] = {"loss": _stack([loss.detach() for loss in losses])}
        needs_ema = any(name in self.signal_names for name in ("loss_ema", "p_ema"))
        measured_ema = [task(self.ema[i]) for i, task in enumerate(self.tasks)] if needs_ema else []
        if "loss_ema" in self.signal_names:
            values["loss_ema"] = _stack([task.loss(m, t) for task, m, t in zip(self.tasks, measured_ema, self.targets)])
        for name, outputs in (("p", measured), ("p_ema", measured_ema)):
            if name in self.signal_names:
                values[name] = _stack([
                    projection(m, n, self.inv_energy[i]) if n is not None
                    else torch.zeros((), device=self.device)
                    for i, (m, n) in enumerate(zip(outputs, self.noises))
                ])
        if "wmv" in self.signal_names:
            values["wmv"] = self._windowed_variance(x)
        if "emv" in self.signal_names:
            values["emv"] = self._exponential_variance(x)
        if "change" in self.signal_names:
            values["change"] = self._change()
        for name, metric in self.metrics.items():
            values[name] = _stack([metric(task.finalize(x[i])) for i, task in enumerate(self.tasks)])
            values[f"{name}_ema"] = _stack([metric(task.finalize(self.ema[i])) for i, task in enumerate(self.tasks)])
        row = torch.stack([values[name].float() for name in self.trace_names], dim=1)  # (K, S)
        # a finished slot that got no new fit keeps stepping until the batch ends: it writes on
        # its last column, which nobody reads any more
        index = self.t.clamp(max=self.trace.shape[2] - 1).view(k, 1, 1).expand(k, len(self.trace_names), 1)
        self.trace.scatter_(2, index, row.unsqueeze(-1))
        self.last_raw.copy_(x)
        self._put_rows(self.ring_raw, x)
        self._put_rows(self.ring_ema, self.ema)
        self.t.add_(1)
        if self.host_t is not None:
            self.host_t = [t + 1 for t in self.host_t]

    def _get(self, ring: torch.Tensor, size: int) -> torch.Tensor:
        """Each fit's entry at position t mod size of a ring (size, K, ...)."""
        if self.host_t is not None:
            return torch.stack([ring[t % size, k] for k, t in enumerate(self.host_t)])
        return ring[torch.remainder(self.t, size), self.fit_index]

    def _put(self, ring: torch.Tensor, size: int, values: torch.Tensor) -> None:
        """Write each fit's value at position t mod size of a ring."""
        if self.host_t is not None:
            for k, t in enumerate(self.host_t):
                ring[t % size, k].copy_(values[k])
        else:
            ring.index_put_((torch.remainder(self.t, size), self.fit_index), values)

    def _put_rows(self, ring: torch.Tensor, values: torch.Tensor) -> None:
        """Write the ring slots' values at position t mod ring_size of a ring (size, R, ...)."""
        size = self.ring_size
        if self.host_t is not None:
            for row, slot in enumerate(self.ring_slots):
                ring[self.host_t[slot] % size, row].copy_(values[slot])
        else:
            position = torch.remainder(self.t.index_select(0, self.ring_index), size)
            ring.index_put_((position, self.ring_rows), values.index_select(0, self.ring_index))

    def _windowed_variance(self, x: torch.Tensor) -> torch.Tensor:
        """ES-WMV's VAR_t = mean over elements of the variance across the last W outputs
        (reference-configs.md section 7), kept incrementally: sums in float64 of a ring of
        the last W outputs; NaN until W outputs exist."""
        leaving = self._get(self.wmv_ring, self.wmv_window).double()
        entering = x.double()
        self.wmv_sum.add_(entering - leaving)
        self.wmv_sumsq.add_(entering * entering - leaving * leaving)
        self._put(self.wmv_ring, self.wmv_window, x)
        mean = self.wmv_sum / self.wmv_window
        variance = (self.wmv_sumsq / self.wmv_window - mean * mean).flatten(1).mean(dim=1)
        return torch.where(self.t >= self.wmv_window - 1, variance, torch.full_like(variance, math.nan))

    def _exponential_variance(self, x: torch.Tensor) -> torch.Tensor:
        """ES-EMV (reference-configs.md section 7): at t = 0 the mean is x_0 and the variance
        0; then delta = x_t - mean, mean <- clip(mean + alpha delta, 0, 1),
        emv <- (1 - alpha)(emv + alpha |delta|^2)."""
        k = self.num_fits
        first = (self.t == 0).view(k, 1, 1, 1, 1)
        delta = x - self.emv_mean
        alpha = self.emv_alpha
        updated = (self.emv_mean + alpha * delta).clamp_(0, 1)
        self.emv_mean.copy_(torch.where(first, x, updated))
        norm = delta.double().pow(2).flatten(1).sum(dim=1).float()
        self.emv.copy_(torch.where(first.view(k), torch.zeros_like(self.emv), (1 - alpha) * (self.emv + alpha * norm)))
        return self.emv.clone()

    def _change(self) -> torch.Tensor:
        """Mean squared change of the averaged output over the last ``change_lag``
        iterations (NaN until that many exist); the ring holds the past averages."""
        old = self._get(self.change_ring, self.change_lag)
        change = (self.ema - old).pow(2).flatten(1).mean(dim=1)
        self._put(self.change_ring, self.change_lag, self.ema)
        return torch.where(self.t >= self.change_lag, change, torch.full_like(change, math.nan))

    # -- slots ------------------------------------------------------------------------------
    def load_fit(self, k: int, fit: FitSpec, config: DIPConfig) -> None:
        """Start a new fit in slot ``k``: its task, initial weights, input, reg-noise stream,
        probe and target; a fresh Adam, average, trace and windows. A captured graph keeps
        reading the slot's tensors, so everything is copied in place."""
        task = _on_device(fit.task, self.device)
        if task.output_shape != self.tasks[k].output_shape:
            raise ValueError(f"slot {k} holds {self.tasks[k].output_shape} images, the new fit has {task.output_shape}")
        if self.host_t is None:  # a captured graph reads the old task's tensors: refill them
            _copy_buffers(task, self.tasks[k])
        else:
            self.tasks[k] = task
        self.generators.reset_slot(k, fit.seed)
        self.optimizer.reset_slot(k)
        g = self.geometry
        with torch.no_grad():
            self.z[k].copy_(make_input(self.config, g.height, g.width, seed=fit.seed + 1)[0])
            self.rngs[k].manual_seed(fit.seed + 2)
            noise = fit.probe.to(self.device) if fit.probe is not None else None
            if (noise is None) != (self.noises[k] is None) and self.host_t is None:
                raise ValueError("a captured slot cannot switch between probed and unprobed fits")
            if noise is not None and self.noises[k] is not None:
                self.noises[k].copy_(noise)
            else:
                self.noises[k] = noise
            self.inv_energy[k] = _inverse_energy(noise)
            self.targets[k].copy_(self.tasks[k].observation + noise if fit.noisy_target else self.tasks[k].observation)
            self.ema[k].zero_()
            self.last_raw[k].zero_()
            self.t[k] = 0
            self.trace[k].fill_(math.nan)
            for name in ("wmv_ring", "change_ring"):
                if hasattr(self, name):
                    getattr(self, name)[:, k].zero_()
            for name in ("wmv_sum", "wmv_sumsq", "emv_mean"):
                if hasattr(self, name):
                    getattr(self, name)[k].zero_()
        if self.host_t is not None:
            self.host_t[k] = 0

    def state_dict(self) -> dict[str, object]:
        """Everything a resumed run needs to continue bit for bit (CPU)."""
        return {
            "tensors": {name: tensor.detach().cpu().clone() for name, tensor in self.named_mutable_tensors()},
            "rngs": [rng.get_state() for rng in self.rngs],
            "host_t": list(self.host_t) if self.host_t is not None else None,
        }

    def load_state_dict(self, state: Mapping[str, object]) -> None:
        saved = state["tensors"]
        if not isinstance(saved, Mapping):  # checkpoint format 1: a list, rings for every fit
            saved = self._from_format_1(list(saved))
        tensors = dict(self.named_mutable_tensors())
        if set(saved) != set(tensors) or any(saved[name].shape != tensors[name].shape for name in tensors):
            raise ValueError("the checkpoint's tensors do not match this run's")
        with torch.no_grad():
            for name, tensor in tensors.items():
                tensor.copy_(saved[name])
        for rng, value in zip(self.rngs, state["rngs"]):
            rng.set_state(value)
        if self.host_t is not None:
            self.host_t = list(state["host_t"])

    def _from_format_1(self, saved: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        """Name the tensors of a format-1 checkpoint (rings of every fit, no ``last_raw``)."""
        names = [name for name, _ in self.named_mutable_tensors() if name != "last_raw"]
        if len(saved) != len(names):
            raise ValueError("the checkpoint's tensors do not match this run's")
        named = dict(zip(names, saved))
        t = named["t"]
        for name in ("ring_raw", "ring_ema"):
            ring = named[name]
            if ring.ndim < 2 or ring.shape[1] != self.num_fits:
                raise ValueError("the checkpoint's tensors do not match this run's")
            named[name] = ring[:, self.ring_slots].clone()
        old_raw = saved[names.index("ring_raw")]
        named["last_raw"] = torch.stack([old_raw[(int(t[k]) - 1) % old_raw.shape[0], k] for k in range(self.num_fits)])
        return named

    # -- resume points -----------------------------------------------------------------------
    def resume_point(self, k: int) -> ResumePoint:
        """Fit ``k``'s state now, copied to the host (:class:`ResumePoint`)."""
        parameters = {name: tensor[k].detach().cpu().clone() for name, tensor in self.generators.stacked.items()}
        adam = self.optimizer
        return ResumePoint(
            iteration=int(self.host_t[k]) if self.host_t is not None else int(self.t[k]),
            parameters=parameters,
            exp_avg=[m[k].detach().cpu().clone() for m in adam.exp_avg],
            exp_avg_sq=[v[k].detach().cpu().clone() for v in adam.exp_avg_sq],
            adam_step=float(adam.steps[k]),
            rng_state=self.rngs[k].get_state(),
            ema=self.ema[k].detach().cpu().clone(),
        )

    def load_resume_point(self, k: int, point: ResumePoint) -> None:
        """Put fit ``k`` in the state of ``point`` (the trace and rings are not restored)."""
        adam = self.optimizer
        with torch.no_grad():
            for name, tensor in self.generators.stacked.items():
                tensor[k].copy_(point.parameters[name])
            for moments, saved in ((adam.exp_avg, point.exp_avg), (adam.exp_avg_sq, point.exp_avg_sq)):
                for tensor, value in zip(moments, saved):
                    tensor[k].copy_(value)
            adam.steps[k] = point.adam_step
            self.ema[k].copy_(point.ema)
            self.t[k] = point.iteration
        self.rngs[k].set_state(point.rng_state)
        if self.host_t is not None:
            self.host_t[k] = point.iteration

    # -- host-side helpers -------------------------------------------------------------------
    def images_at(self, fit: int, iteration: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Raw and averaged output of ``fit`` at ``iteration`` (still in the ring)."""
        row = self.ring_row[fit]
        if row is None:
            raise ValueError(f"slot {fit} keeps no ring of outputs (ring slots: {self.ring_slots})")
        slot = iteration % self.ring_size
        return self.ring_raw[slot, row].clone(), self.ring_ema[slot, row].clone()

    def mutable_tensors(self) -> Iterator[torch.Tensor]:
        """Tensors a step changes (checkpoints hold them; a warm-up is undone on them)."""
        for _, tensor in self.named_mutable_tensors():
            yield tensor

    def named_mutable_tensors(self) -> Iterator[tuple[str, torch.Tensor]]:
        """:meth:`mutable_tensors` with names."""
        for name, tensor in self.generators.stacked.items():
            yield f"param.{name}", tensor
        for i, tensor in enumerate(self.optimizer.state_tensors()):
            yield f"adam.{i}", tensor
        yield from (("ema", self.ema), ("t", self.t), ("trace", self.trace), ("ring_raw", self.ring_raw),
                    ("ring_ema", self.ring_ema))
        for name in ("wmv_ring", "wmv_sum", "wmv_sumsq", "emv_mean", "emv", "change_ring"):
            if hasattr(self, name):
                yield name, getattr(self, name)
        yield "last_raw", self.last_raw

    def ring_positions(self) -> dict[str, tuple[int, list[int]]]:
        """Ring tensors -> (ring size, the fits' current positions): a step writes only there."""
        rings = {"ring_raw": self.ring_size, "ring_ema": self.ring_size}
        if hasattr(self, "wmv_ring"):
            rings["wmv_ring"] = self.wmv_window
        if hasattr(self, "change_ring"):
            rings["change_ring"] = self.change_lag
        t = self.host_t if self.host_t is not None else [int(v) for v in self.t.cpu()]
        return {name: (size, t) for name, size in rings.items()}


def _inverse_energy(noise: torch.Tensor | None) -> float:
    """1 / <n, n> (method.md section 3); a zero or absent probe has no direction: 0 (P = 0)."""
    energy = float(noise.double().pow(2).sum()) if noise is not None else 0.0
    return 1.0 / energy if energy > 0 else 0.0


class _WarmupUndo:
    """Save what ``steps`` eager steps will change, put it back afterwards (tensors and the
    reg-noise generators' states), cloning on the device only what the steps touch: whole
    tensors for the weights, Adam and the averages, but only the rows of the rings and the
    trace columns at the fits' next ``steps`` positions (the rings are most of the memory).

    Used around the warm-up and capture of a CUDA graph (:func:`_capture_cuda_graph`); the
    generators' states are restored with ``set_state``, so a run resumed from a checkpoint
    continues its reg-noise stream instead of restarting it.
    """

    def __init__(self, state: _DeviceState, steps: int) -> None:
        self.state = state
        self.rng_states = [rng.get_state() for rng in state.rngs]
        rings = state.ring_positions()
        t = rings["ring_raw"][1] if rings else []
        cap = state.trace.shape[2]
        self.saved: list[tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]] = []
        for name, tensor in state.named_mutable_tensors():
            if name in rings:
                size, positions = rings[name]
                rows = sorted({(p + i) % size for p in positions for i in range(steps)})
                index = torch.tensor(rows, dtype=torch.long, device=tensor.device)
                self.saved.append((tensor, index, tensor.index_select(0, index).clone()))
            elif name == "trace":
                columns = sorted({min(p + i, cap - 1) for p in t for i in range(steps)})
                index = torch.tensor(columns, dtype=torch.long, device=tensor.device)
                self.saved.append((tensor, index, tensor.index_select(2, index).clone()))
            else:
                self.saved.append((tensor, None, tensor.detach().clone()))
        self.host_t = list(state.host_t) if state.host_t is not None else None

    @property
    def nbytes(self) -> int:
        """Device bytes the saved copies hold."""
        return sum(copy_.numel() * copy_.element_size() for _, _, copy_ in self.saved)

    def restore(self) -> None:
        """Put every saved tensor and generator state back."""
        with torch.no_grad():
            for tensor, index, value in self.saved:
                if index is None:
                    tensor.copy_(value)
                elif tensor is self.state.trace:
                    tensor.index_copy_(2, index, value)
                else:
                    tensor.index_copy_(0, index, value)
        for rng, value in zip(self.state.rngs, self.rng_states):
            rng.set_state(value)
        if self.host_t is not None:
            self.state.host_t = list(self.host_t)


def cuda_graph_unavailable_reason() -> str | None:
    """Why this torch cannot capture the step in a CUDA graph (None: it can). The step draws
    the reg-noise inside the graph, which needs graph-safe generator states
    (``CUDAGraph.register_generator_state``); older torch builds lack it, and the engine then
    runs the step eagerly."""
    graph_class = getattr(torch.cuda, "CUDAGraph", None)
    if graph_class is None or not hasattr(graph_class, "register_generator_state"):
        return (f"torch {torch.__version__} has no CUDAGraph.register_generator_state (graph-safe reg-noise "
                "draws); running the step eagerly")
    return None


def _device_scope(device: torch.device) -> contextlib.AbstractContextManager:
    """Make ``device`` the current CUDA device (streams, graphs and the caching allocator
    follow the current device, not the tensors'); nothing on other devices."""
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


def _backend_flags(options: EngineOptions) -> contextlib.AbstractContextManager:
    """cuDNN settings for the run's scope (restored after it): benchmark mode, and TF32 only
    when the options allow it (an ``"fp32"`` run computes in fp32 otherwise)."""
    if options.device.type != "cuda":
        return contextlib.nullcontext()
    return torch.backends.cudnn.flags(enabled=True, benchmark=True, deterministic=False, allow_tf32=options.allow_tf32)


def _capture_cuda_graph(state: _DeviceState, warmup: int = 3) -> torch.cuda.CUDAGraph:
    """Capture one step in a CUDA graph on the state's device; the warm-up steps it needs are
    undone afterwards, the reg-noise generators' states included (:class:`_WarmupUndo`), also
    when the capture fails."""
    device = state.device
    undo = _WarmupUndo(state, warmup + 1)
    try:
        with _device_scope(device):
            side = torch.cuda.Stream(device=device)
            side.wait_stream(torch.cuda.current_stream(device))
            with torch.cuda.stream(side):
                for _ in range(warmup):
                    state.step()
            torch.cuda.current_stream(device).wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            for rng in state.rngs:
                graph.register_generator_state(rng)
            with torch.cuda.graph(graph, stream=torch.cuda.Stream(device=device)):
                state.step()
    finally:
        undo.restore()
    return graph


def _graph_or_eager(
    state: _DeviceState, capture: Callable[[_DeviceState], object] = _capture_cuda_graph
) -> tuple[object | None, Callable[[], None]]:
    """Capture the step, or say why not and step eagerly: (graph or None, the step to call).

    A capture fails when the step does something a graph cannot hold, e.g. a custom operator
    that reads a value on the host (``.item()``, ``if tensor:``) or makes a tensor from host
    data; the run then goes on eagerly from the same state, with the reason in the log.
    """
    reason = cuda_graph_unavailable_reason()
    if reason is None:
        try:
            graph = capture(state)
        except RuntimeError as error:
            reason = (f"the step cannot be captured in a CUDA graph ({type(error).__name__}: {error}); "
                      "a custom operator that syncs with the host does this. Running the step eagerly")
        else:
            return graph, graph.replay
    logger.warning(reason)
    if state.host_t is None:  # eager steps index the rings with host counters
        state.host_t = [int(v) for v in state.t.cpu()]
    return None, state.step


@dataclass(frozen=True)
class DeviceClock:
    """Wall time that includes the device's queued work: ``sync`` before each ``read``.

    On CUDA the host only queues kernels, so a clock read without a sync measures launches.
    """

    sync: Callable[[], None]
    read: Callable[[], float] = time.perf_counter

    def now(self) -> float:
        """Wait for the device, then read the clock."""
        self.sync()
        return self.read()


def device_clock(device: torch.device) -> DeviceClock:
    """The :class:`DeviceClock` of ``device`` (no sync on a CPU)."""
    if device.type == "cuda":
        return DeviceClock(lambda: torch.cuda.synchronize(device))
    return DeviceClock(lambda: None)


def ring_size_for(lag: int, sync_every: int) -> int:
    """Recent outputs a run keeps for its driving fit: the rule's lag and one sync block more
    (a new choice is at most ``lag`` iterations old when the block that reveals it ends)."""
    return lag + sync_every + 1


def resume_points_for(ring_size: int, sync_every: int) -> int:
    """The most :class:`ResumePoint` kept per driving fit: one per sync in the ring, one for
    the current choice and the newest."""
    return ring_size // sync_every + 2


def _point_before(points: Sequence[ResumePoint], iteration: int) -> ResumePoint | None:
    """The latest point at or before ``iteration`` (None when there is none)."""
    before = [point for point in points if point.iteration <= iteration]
    return before[-1] if before else None


def _signals_for(watch: Watch, chunk: dict[str, np.ndarray]) -> Signals:
    """The rule's view of a chunk of per-fit traces (method.md section 8: P_twin)."""
    values: dict[str, np.ndarray] = {}
    for name in watch.rule.needs:
        if name in ("p", "p_ema"):
            if watch.probe is None:
                raise ValueError(f"rule {watch.rule.name!r} needs the pseudo-noise probe")
            series = chunk[name][watch.probe]
            if watch.base is not None:
                series = series - chunk[name][watch.base]
            values[name] = series
        else:
            values[name] = chunk[name][watch.fit]
    return values


@dataclass
class Group:
    """The fits of one restoration inside a batched run, and its rule.

    Attributes:
        slots: the slot index of each of its fits (``fits[i]`` runs in ``slots[i]``).
        watches: its rules; fit indices are the group's own (0 .. len(slots) - 1).
        driver: the watch whose decision ends the group and picks its image.
        tag: the caller's identifier.
    """

    slots: list[int]
    watches: list[Watch]
    driver: int = 0
    tag: object = None
    done: int = 0
    best_raw: torch.Tensor | None = None
    best_ema: torch.Tensor | None = None
    finished: bool = False
    interrupted: bool = False
    #: wall time spent while this group was running (its share is the whole step's time)
    seconds: float = 0.0
    #: the driving fit's states at the syncs its rule may still return from (oldest first)
    resume_points: list[ResumePoint] = field(default_factory=list)

    @property
    def leader(self) -> Watch:
        """The driving watch."""
        return self.watches[self.driver]

    def slot(self, index: int | None) -> int | None:
        """The slot of the group's fit ``index``."""
        return None if index is None else self.slots[index]


def _signal_names(watches: Sequence[Watch], extra: Sequence[str]) -> list[str]:
    unknown = set(extra) - set(ENGINE_SIGNALS)
    if unknown:
        raise ValueError(f"unknown signals {sorted(unknown)}; the engine computes {ENGINE_SIGNALS}")
    return [name for name in ENGINE_SIGNALS if name == "loss" or any(name in w.rule.needs for w in watches) or name in extra]


def _check_group(fits: Sequence[FitSpec], watches: Sequence[Watch], driver: int, cap: int) -> None:
    if not fits:
        raise ValueError("need at least one fit")
    if not 0 <= driver < len(watches):
        raise ValueError(f"driver {driver} is not a watch index (have {len(watches)})")
    for watch in watches:
        for index in (watch.fit, watch.probe, watch.base):
            if index is not None and not 0 <= index < len(fits):
                raise ValueError(f"watch {watch.label!r} names fit {index}, there are {len(fits)}")
        if watch.rule.max_iterations < cap:
            raise ValueError(f"rule {watch.label!r} holds {watch.rule.max_iterations} iterations, the cap is {cap}")


class BatchRun:
    """K fits stepped together, grouped into restorations that each end on their own rule.

    :func:`run_fits` (one group) and :func:`oscfast.many.restore_many` (a queue of groups
    refilling the slots that finish) both drive this loop.

    Args:
        groups: the initial groups with their fits; slots are numbered in order.
        config: the DIP configuration (one network and one cap for all).
        metrics: see :func:`run_fits`.
        extra_signals: see :func:`run_fits`.
        options: engine options.
        ring_size: recent outputs kept per fit (default: the largest driver lag + a sync).
    """

    def __init__(
        self,
        groups: Sequence[tuple[Sequence[FitSpec], Sequence[Watch], int, object]],
        config: DIPConfig,
        *,
        metrics: Mapping[str, Callable[[torch.Tensor], torch.Tensor]] | None = None,
        extra_signals: Sequence[str] = (),
        options: EngineOptions | None = None,
        ring_size: int | None = None,
        signals: Sequence[str] | None = None,
    ) -> None:
        self.options = options = options or EngineOptions()
        self.config = config
        cap = config.max_iterations
        fits: list[FitSpec] = []
        self.groups: list[Group] = []
        for group_fits, watches, driver, tag in groups:
            _check_group(group_fits, watches, driver, cap)
            slots = list(range(len(fits), len(fits) + len(group_fits)))
            fits.extend(group_fits)
            self.groups.append(Group(slots, list(watches), driver, tag))
        shapes = {fit.task.output_shape for fit in fits}
        if len(shapes) > 1:
            raise ValueError(f"all fits must have one output shape, got {sorted(shapes)}")
        all_watches = [w for g in self.groups for w in g.watches]
        self.signals = list(signals) if signals is not None else _signal_names(all_watches, extra_signals)
        self.metrics = dict(metrics or {})
        if ring_size is None:
            ring_size = ring_size_for(max(g.leader.rule.lag for g in self.groups), options.sync_every)
        self.ring_size = ring_size
        ring_slots = [g.slot(g.leader.fit) for g in self.groups]
        if options.check_memory:
            check_memory(
                estimate_run_bytes(fits[0].task.output_shape, config, ring_size=ring_size, num_fits=len(fits),
                                   window=options.wmv_window if "wmv" in self.signals else 0,
                                   change_lag=options.change_lag if "change" in self.signals else 0,
                                   ring_fits=len(ring_slots), cuda_graph=options.use_cuda_graph,
                                   resume_points=(resume_points_for(ring_size, options.sync_every) * len(ring_slots)
                                                  if options.keep_resume_points and options.device.type == "cpu" else 0)),
                options.device, shape_hw=tuple(fits[0].task.output_shape[1:]),
            )
        self.state = _DeviceState(fits, config, signals=self.signals, metrics=self.metrics, ring_size=ring_size,
                                  options=options, ring_slots=ring_slots)
        #: the clock of group times (synchronises the device before each read)
        self.clock = device_clock(options.device)
        self.seconds = 0.0
        self.steps = 0
        #: False while a step block runs: a state_dict taken then (after Ctrl-C) would not resume
        self.consistent = True
        self._graph: torch.cuda.CUDAGraph | None = None
        self._graph_warned = False

    # -- slots ------------------------------------------------------------------------------
    def replace_group(self, index: int, fits: Sequence[FitSpec], watches: Sequence[Watch], driver: int = 0, tag: object = None) -> None:
        """Start a new restoration in the slots of finished group ``index``."""
        old = self.groups[index]
        if not old.finished:
            raise ValueError(f"group {index} is still running")
        if len(fits) != len(old.slots):
            raise ValueError(f"group {index} has {len(old.slots)} slots, the new one needs {len(fits)}")
        _check_group(fits, watches, driver, self.config.max_iterations)
        missing = set().union(*(w.rule.needs for w in watches)) & set(ENGINE_SIGNALS) - set(self.signals)
        if missing:
            raise ValueError(f"this run does not compute the signals {sorted(missing)}")
        new = Group(list(old.slots), list(watches), driver, tag)
        if self.state.ring_row[new.slot(new.leader.fit)] is None:
            raise ValueError(
                f"the new driving fit {new.leader.fit} runs in slot {new.slot(new.leader.fit)}, which keeps no ring "
                f"of outputs (the ring slots are {self.state.ring_slots}: the first groups' driving fits)"
            )
        for slot, fit in zip(old.slots, fits):
            self.state.load_fit(slot, fit, self.config)
        self.groups[index] = new

    # -- the loop ----------------------------------------------------------------------------
    def run(
        self,
        *,
        stop_mode: StopMode = "osc",
        cancel: Callable[[], bool] | threading.Event | None = None,
        on_sync: Callable[[SyncInfo], None] | None = None,
        on_group_done: Callable[[int, Group], None] | None = None,
        checkpoint: Callable[[BatchRun], None] | None = None,
    ) -> None:
        """Step until every group has finished (its driver fired, or its cap).

        ``on_group_done(index, group)`` may call :meth:`replace_group` to refill the slots;
        ``cancel`` (a callable or an Event) and Ctrl-C end every group at the next sync with its
        current choice (``group.interrupted``); ``checkpoint(self)`` is called after each sync.
        """
        options, state = self.options, self.state
        cap = self.config.max_iterations
        clock = self.clock
        start = clock.now()
        total = sum(1 for g in self.groups if not g.finished) * cap
        bar = tqdm(total=total, disable=not options.progress, unit="it", leave=False)
        try:
            with _device_scope(options.device), _backend_flags(options):
                if options.use_cuda_graph and self._graph is None and not self._graph_warned:
                    self._graph, _ = _graph_or_eager(state)
                    self._graph_warned = self._graph is None
                run_step = self._graph.replay if self._graph is not None else state.step
                self._keep_resume_points()
                while any(not g.finished for g in self.groups):
                    count = min(options.sync_every, *(cap - g.done for g in self.groups if not g.finished))
                    block_start = clock.now()
                    running = [g for g in self.groups if not g.finished]
                    try:
                        self.consistent = False  # the device runs ahead of the host's counters
                        for _ in range(count):
                            run_step()
                        self.consistent = True
                        self.steps += count
                        block_end = clock.now()  # the device's work, not the launches
                        for group in running:  # before the sync: a group finishing there has its time
                            group.seconds += block_end - block_start
                        self._sync(count, stop_mode, bar, on_sync, on_group_done)
                        self._keep_resume_points()
                        if checkpoint is not None:
                            checkpoint(self)
                        cancelled = cancel is not None and (cancel.is_set() if isinstance(cancel, threading.Event) else cancel())
                    except KeyboardInterrupt:
                        cancelled = True
                    if cancelled:
                        self._interrupt()
                        break
        finally:
            bar.close()
            self.seconds += clock.now() - start

    def _keep_resume_points(self) -> None:
        """At a sync: keep the driving fits' :class:`ResumePoint` and drop the ones no choice
        can need any more (the rule can still choose the iterations in the ring, or keep its
        current choice)."""
        if not self.options.keep_resume_points:
            return
        for group in self.groups:
            if group.finished:
                continue
            points = group.resume_points
            if not points or points[-1].iteration != group.done:
                points.append(self.state.resume_point(group.slot(group.leader.fit)))
            oldest = group.done - self.ring_size
            chosen = group.leader.rule.decision.iteration
            if chosen is not None:
                oldest = min(oldest, chosen)
            while len(points) > 1 and points[1].iteration <= oldest:
                points.pop(0)

    def _interrupt(self) -> None:
        for index, group in enumerate(self.groups):
            if not group.finished:
                group.finished = group.interrupted = True
                if group.best_raw is None:
                    group.best_raw, group.best_ema = self.state.images_at(group.slot(group.leader.fit), max(group.done - 1, 0))
        logger.warning("interrupted: returning the best image so far")

    def _sync(self, count: int, stop_mode: StopMode, bar: tqdm, on_sync, on_group_done) -> None:
        state = self.state
        # one transfer per sync: everything the rules and the progress bar read
        names = state.trace_names
        for index, group in enumerate(self.groups):
            if group.finished:
                continue
            first, group.done = group.done, group.done + count
            block = state.trace[group.slots, :, first : group.done].cpu().double().numpy()
            chunk = {name: block[:, i] for i, name in enumerate(names)}
            for w, watch in enumerate(group.watches):
                frozen = watch.rule.decision.should_stop
                decision = watch.rule.update(Signals(first, _signals_for(watch, chunk)))
                if w == group.driver and decision.new_best and not frozen:
                    group.best_raw, group.best_ema = state.images_at(group.slot(watch.fit), decision.iteration)
            lead = group.leader.rule.decision
            if self.options.progress:
                bar.update(count)
                postfix = {"loss": f"{chunk['loss'][group.leader.fit, -1]:.2e}", "rule": group.leader.label}
                if lead.iteration is not None:
                    postfix["choice"] = lead.iteration
                bar.set_postfix(postfix, refresh=False)
            if on_sync is not None:
                slots = group.slots
                on_sync(SyncInfo(
                    iteration=group.done,
                    decisions=tuple(w.rule.decision for w in group.watches),
                    latest={name: values[:, -1] for name, values in chunk.items()},
                    images=lambda slots=slots: {"raw": state.last_raw[slots].clone(), "ema": state.ema[slots].clone()},
                ))
            if (stop_mode == "osc" and lead.should_stop) or group.done >= self.config.max_iterations:
                group.finished = True
                if lead.iteration is None or group.best_raw is None:
                    logger.info("rule %r chose nothing in %d iterations: the last iterate", group.leader.label, group.done)
                    group.best_raw, group.best_ema = state.images_at(group.slot(group.leader.fit), group.done - 1)
                if on_group_done is not None:
                    on_group_done(index, group)

    # -- checkpoints -------------------------------------------------------------------------
    def state_dict(self) -> dict[str, object]:
        """The whole run's state: device tensors, RNG states, groups and their rules."""
        return {
            "device": self.state.state_dict(),
            "groups": [
                # an interrupted group goes on when resumed
                {"done": g.done, "finished": g.finished and not g.interrupted, "rules": [w.rule.state_dict() for w in g.watches],
                 "best_raw": g.best_raw, "best_ema": g.best_ema}
                for g in self.groups
            ],
            "steps": self.steps,
            "seconds": self.seconds,
            "group_seconds": [g.seconds for g in self.groups],
        }

    def load_state_dict(self, state: Mapping[str, object]) -> None:
        """Continue from :meth:`state_dict`."""
        groups = state["groups"]
        if len(groups) != len(self.groups):
            raise ValueError("the checkpoint has another number of restorations")
        self.state.load_state_dict(state["device"])
        for group, saved in zip(self.groups, groups):
            group.done, group.finished = saved["done"], saved["finished"]
            group.best_raw, group.best_ema = saved["best_raw"], saved["best_ema"]
            for watch, rule_state in zip(group.watches, saved["rules"]):
                watch.rule.load_state_dict(rule_state)
        self.steps, self.seconds = state["steps"], state["seconds"]
        for group, seconds in zip(self.groups, state["group_seconds"]):
            group.seconds = seconds

    # -- results -----------------------------------------------------------------------------
    def record(self, index: int = 0) -> RunRecord:
        """The :class:`RunRecord` of group ``index`` (its slots' traces, its rules' decisions)."""
        group = self.groups[index]
        state = self.state
        done = group.done
        traces = state.trace[group.slots, :, :done].cpu().double().numpy()
        last = state.last_raw[group.slots].detach().cpu().clone()
        assert group.best_raw is not None and group.best_ema is not None
        return RunRecord(
            decisions=[w.rule.decision for w in group.watches],
            driver=group.driver,
            iterations_run=done,
            raw_image=group.best_raw.detach().cpu(),
            ema_image=group.best_ema.detach().cpu(),
            last_images=last,
            traces={name: traces[:, i] for i, name in enumerate(state.trace_names)},
            seconds=group.seconds,
            rules=[w.rule for w in group.watches],
            interrupted=group.interrupted,
            resume_point=_point_before(group.resume_points, group.leader.rule.decision.iteration
                                       if group.leader.rule.decision.iteration is not None else done - 1),
        )


def run_fits(
    fits: Sequence[FitSpec],
    config: DIPConfig,
    watches: Sequence[Watch],
    *,
    driver: int = 0,
    stop_mode: StopMode = "osc",
    metrics: Mapping[str, Callable[[torch.Tensor], torch.Tensor]] | None = None,
    extra_signals: Sequence[str] = (),
    options: EngineOptions | None = None,
    on_sync: Callable[[SyncInfo], None] | None = None,
    cancel: Callable[[], bool] | threading.Event | None = None,
    checkpoint: Checkpoint | None = None,
    snapshot_iteration: int | None = None,
    resume_from: ResumePoint | None = None,
) -> RunRecord:
    """Run K DIP fits in one batched step until the driving rule stops (or the cap).

    Args:
        fits: the fits (one task shape and one network for all).
        config: the DIP configuration (network, input, Adam, iteration cap).
        watches: stop rules attached to fits; ``watches[driver]`` drives the run.
        driver: index of the driving watch.
        stop_mode: ``"osc"`` stops when the driving rule fires; ``"never"`` runs to the cap
            (the rules' decisions are the same, they are causal).
        metrics: name -> function of a finalised (1, C, H, W) image giving a 0-d tensor
            (e.g. PSNR against a reference), recorded per fit for the raw and averaged output.
        extra_signals: signals to record although no rule reads them.
        options: device, precision, sync interval.
        on_sync: called on the host after each read of the device buffers.
        cancel: a callable returning True, or a ``threading.Event``: when it says so (checked at
            each sync), the run ends and returns the driving rule's choice so far
            (``RunRecord.interrupted``); Ctrl-C does the same.
        checkpoint: write (and resume from) checkpoints (:class:`Checkpoint`).
        snapshot_iteration: keep the driving fit's generator and perturbed input of this
            iteration in ``RunRecord.generator_snapshot``; runs eagerly and ends after it.
        resume_from: with ``snapshot_iteration``: start the driving fit from this
            :class:`ResumePoint` (kept by an earlier run of the same fit) instead of iteration 0.

    Returns:
        A :class:`RunRecord`.
    """
    options = options or EngineOptions()
    if stop_mode not in ("osc", "never"):
        raise ValueError(f"unknown stop mode {stop_mode!r}; expected 'osc' or 'never'")
    run = BatchRun([(fits, watches, driver, None)], config, metrics=metrics, extra_signals=extra_signals, options=options)
    if snapshot_iteration is not None:
        return _run_to_snapshot(run, watches[driver].fit, snapshot_iteration, resume_from)
    if checkpoint is not None:
        checkpoint.restore(run)
    run.run(stop_mode=stop_mode, cancel=cancel, on_sync=on_sync, checkpoint=checkpoint)
    if checkpoint is not None and run.consistent:
        checkpoint.finish(run)
    return run.record(0)


def _run_to_snapshot(run: BatchRun, fit: int, iteration: int, resume_from: ResumePoint | None = None) -> RunRecord:
    """Run eagerly up to ``iteration`` (from ``resume_from`` when given) and keep the generator
    that produced its output."""
    if iteration < 0:
        raise ValueError(f"snapshot_iteration must be >= 0, got {iteration}")
    state = run.state
    start = time.perf_counter()
    first = 0
    if resume_from is not None:
        if resume_from.iteration > iteration:
            raise ValueError(f"the resume point is at iteration {resume_from.iteration}, after {iteration}")
        state.load_resume_point(fit, resume_from)
        first = resume_from.iteration
    for _ in range(first, iteration):
        state.step()
    net_before = state.generators.module(fit)
    state.step()
    raw, ema = state.images_at(fit, iteration)
    g = state.geometry
    snapshot = GeneratorSnapshot(
        iteration=iteration, net=net_before, net_input=state.z_in[fit].detach().cpu().clone().contiguous(),
        top=g.top, left=g.left, height=state.height, width=state.width, raw_image=raw.cpu(),
    )
    done = iteration + 1
    traces = state.trace[:, :, :done].cpu().double().numpy()
    return RunRecord(
        decisions=[Decision(iteration=iteration)], driver=0, iterations_run=done, raw_image=raw.cpu(),
        ema_image=ema.cpu(), last_images=state.last_raw.cpu().clone(),
        traces={name: traces[:, i] for i, name in enumerate(state.trace_names)},
        seconds=time.perf_counter() - start, rules=[w.rule for w in run.groups[0].watches], generator_snapshot=snapshot,
    )
