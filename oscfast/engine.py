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
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch
from tqdm.auto import tqdm

from oscfast.config import DIPConfig
from oscfast.fits import StackedAdam, StackedGenerators, Strategy
from oscfast.memory import check_memory, estimate_run_bytes
from oscfast.probe import projection
from oscfast.stopping import Decision, Signals, StopRule
from oscfast.tasks import Task

__all__ = [
    "CanvasGeometry",
    "EngineOptions",
    "FitSpec",
    "GeneratorSnapshot",
    "RunRecord",
    "SyncInfo",
    "Watch",
    "canvas_geometry",
    "make_input",
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
        progress: show a tqdm bar.
        check_memory: estimate the memory before allocating and refuse runs that do not fit.
        sync_every: iterations between two reads of the device buffers by the host.
        wmv_window: the ES-WMV window W (reference-configs.md section 7).
        emv_alpha: the ES-EMV weight alpha.
        change_lag: the plateau signal compares the averaged output with the one this many
            iterations earlier.
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


def canvas_geometry(height: int, width: int, multiple: int) -> CanvasGeometry:
    """Pad (H, W) up to a multiple of the net's stride; the image sits centred in it."""
    canvas_h = math.ceil(height / multiple) * multiple
    canvas_w = math.ceil(width / multiple) * multiple
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
    """The task on ``device``; a copy when it must move (the caller's object is not changed)."""
    if all(tensor.device == device for tensor in [*task.buffers(), *task.parameters()]):
        return task
    return copy.deepcopy(task).to(device)


def _stack(values: Sequence[torch.Tensor]) -> torch.Tensor:
    return torch.stack([value.reshape(()) for value in values])


class _DeviceState:
    """Everything the step touches for K fits, preallocated on the device."""

    def __init__(
        self,
        fits: Sequence[FitSpec],
        config: DIPConfig,
        *,
        signals: Sequence[str],
        metrics: Mapping[str, Callable[[torch.Tensor], torch.Tensor]],
        ring_size: int,
        options: EngineOptions,
    ) -> None:
        device = options.device
        self.device = device
        moved: dict[int, Task] = {}
        self.tasks = [moved.setdefault(id(fit.task), _on_device(fit.task, device)) for fit in fits]
        self.num_fits = k = len(fits)
        channels, height, width = self.tasks[0].output_shape
        self.geometry = canvas_geometry(height, width, config.net.stride_multiple)
        self.height, self.width = height, width
        self.generators = StackedGenerators(
            config.net, channels, [fit.seed for fit in fits], strategy=options.strategy, device=device
        )
        self.optimizer = StackedAdam(list(self.generators.parameters()), num_slots=k, lr=config.learning_rate)
        self.z = torch.cat([make_input(config, self.geometry.height, self.geometry.width, seed=fit.seed + 1) for fit in fits])
        self.z = self.z.unsqueeze(1).to(device)
        self.z_in = self.z.clone()
        self.eps = torch.zeros_like(self.z)
        self.reg_noise_std = config.reg_noise_std
        self.rngs = [torch.Generator(device=device).manual_seed(fit.seed + 2) for fit in fits]
        self.targets, self.noises, self.inv_energies = [], [], []
        for fit, task in zip(fits, self.tasks):
            noise = fit.probe.to(device) if fit.probe is not None else None
            self.noises.append(noise)
            energy = float(noise.double().pow(2).sum()) if noise is not None else 0.0
            # a zero probe has no direction to project on: its P is 0 by convention
            self.inv_energies.append(1.0 / energy if energy > 0 else 0.0)
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
        self.ring_size = ring_size
        self.ring_raw = torch.zeros((ring_size, *image), device=device)
        self.ring_ema = torch.zeros_like(self.ring_raw)
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
                    projection(m, n, inv) if n is not None else torch.zeros((), device=self.device)
                    for m, n, inv in zip(outputs, self.noises, self.inv_energies)
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
        index = self.t.view(k, 1, 1).expand(k, len(self.trace_names), 1)
        self.trace.scatter_(2, index, row.unsqueeze(-1))
        self._put(self.ring_raw, self.ring_size, x)
        self._put(self.ring_ema, self.ring_size, self.ema)
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

    # -- host-side helpers -------------------------------------------------------------------
    def images_at(self, fit: int, iteration: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Raw and averaged output of ``fit`` at ``iteration`` (still in the ring)."""
        slot = iteration % self.ring_size
        return self.ring_raw[slot, fit].clone(), self.ring_ema[slot, fit].clone()

    def mutable_tensors(self) -> Iterator[torch.Tensor]:
        """Tensors a warm-up changes, to be put back before the real run."""
        yield from self.generators.parameters()
        yield from self.optimizer.state_tensors()
        yield from (self.ema, self.t, self.trace, self.ring_raw, self.ring_ema)
        for name in ("wmv_ring", "wmv_sum", "wmv_sumsq", "emv_mean", "emv", "change_ring"):
            if hasattr(self, name):
                yield getattr(self, name)


def _capture_cuda_graph(state: _DeviceState, warmup: int = 3) -> torch.cuda.CUDAGraph:
    """Capture one step in a CUDA graph; the warm-up steps it needs are undone afterwards."""
    saved = [tensor.detach().clone() for tensor in state.mutable_tensors()]
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(warmup):
            state.step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    for rng in state.rngs:
        graph.register_generator_state(rng)
    with torch.cuda.graph(graph):
        state.step()
    with torch.no_grad():
        for tensor, value in zip(state.mutable_tensors(), saved):
            tensor.copy_(value)
    for rng in state.rngs:
        rng.manual_seed(rng.initial_seed())
    return graph


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
    snapshot_iteration: int | None = None,
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
        snapshot_iteration: keep the driving fit's generator and perturbed input of this
            iteration in ``RunRecord.generator_snapshot``; runs eagerly and ends after it.

    Returns:
        A :class:`RunRecord`.
    """
    options = options or EngineOptions()
    if stop_mode not in ("osc", "never"):
        raise ValueError(f"unknown stop mode {stop_mode!r}; expected 'osc' or 'never'")
    if not fits:
        raise ValueError("need at least one fit")
    if not 0 <= driver < len(watches):
        raise ValueError(f"driver {driver} is not a watch index (have {len(watches)})")
    shapes = {fit.task.output_shape for fit in fits}
    if len(shapes) > 1:
        raise ValueError(f"all fits must have one output shape, got {sorted(shapes)}")
    for watch in watches:
        for index in (watch.fit, watch.probe, watch.base):
            if index is not None and not 0 <= index < len(fits):
                raise ValueError(f"watch {watch.label!r} names fit {index}, there are {len(fits)}")
        if watch.rule.max_iterations < config.max_iterations:
            raise ValueError(f"rule {watch.label!r} holds {watch.rule.max_iterations} iterations, the cap is {config.max_iterations}")
    cap = config.max_iterations
    signals = [name for name in ENGINE_SIGNALS if name == "loss" or any(name in w.rule.needs for w in watches) or name in extra_signals]
    unknown = set(extra_signals) - set(ENGINE_SIGNALS)
    if unknown:
        raise ValueError(f"unknown signals {sorted(unknown)}; the engine computes {ENGINE_SIGNALS}")
    metrics = dict(metrics or {})
    sync_every = options.sync_every
    leader = watches[driver]
    ring_size = leader.rule.lag + sync_every + 1
    device = options.device
    if options.check_memory:
        check_memory(
            estimate_run_bytes(fits[0].task.output_shape, config, ring_size=ring_size, num_fits=len(fits),
                               window=options.wmv_window if "wmv" in signals else 0,
                               change_lag=options.change_lag if "change" in signals else 0),
            device,
        )
    state = _DeviceState(fits, config, signals=signals, metrics=metrics, ring_size=ring_size, options=options)
    rules = [watch.rule for watch in watches]
    best_raw, best_ema = state.images_at(leader.fit, 0)

    flags = (
        torch.backends.cudnn.flags(enabled=True, benchmark=True, deterministic=False, allow_tf32=True)
        if device.type == "cuda"
        else contextlib.nullcontext()
    )
    start = time.perf_counter()
    with flags:
        if snapshot_iteration is not None:
            return _run_to_snapshot(state, leader.fit, snapshot_iteration, rules, driver)
        graph = _capture_cuda_graph(state) if options.use_cuda_graph else None
        run_step = graph.replay if graph is not None else state.step
        done = 0
        bar = tqdm(total=cap, disable=not options.progress, unit="it", leave=False)
        try:
            while done < cap:
                count = min(sync_every, cap - done)
                for _ in range(count):
                    run_step()
                first, done = done, done + count
                # one transfer per sync: everything the rules and the progress bar read
                block = state.trace[:, :, first:done].cpu().double().numpy()
                chunk = {name: block[:, i] for i, name in enumerate(state.trace_names)}
                for index, watch in enumerate(watches):
                    frozen = watch.rule.decision.should_stop
                    decision = watch.rule.update(Signals(first, _signals_for(watch, chunk)))
                    if index == driver and decision.new_best and not frozen:
                        best_raw, best_ema = state.images_at(watch.fit, decision.iteration)
                lead = rules[driver].decision
                if options.progress:
                    bar.update(count)
                    postfix = {"loss": f"{chunk['loss'][leader.fit, -1]:.2e}", "rule": leader.label}
                    if lead.iteration is not None:
                        postfix["choice"] = lead.iteration
                    bar.set_postfix(postfix, refresh=False)
                if on_sync is not None:
                    on_sync(SyncInfo(
                        iteration=done,
                        decisions=tuple(rule.decision for rule in rules),
                        latest={name: values[:, -1] for name, values in chunk.items()},
                        images=lambda: {"raw": state.ring_raw[(done - 1) % ring_size].clone(), "ema": state.ema.clone()},
                    ))
                if stop_mode == "osc" and lead.should_stop:
                    break
        finally:
            bar.close()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start

    last_slot = (done - 1) % ring_size
    if rules[driver].decision.iteration is None:
        logger.info("rule %r chose nothing in %d iterations: returning the last iterate", leader.label, done)
        best_raw, best_ema = state.images_at(leader.fit, done - 1)
    traces = state.trace[:, :, :done].cpu().double().numpy()
    return RunRecord(
        decisions=[rule.decision for rule in rules],
        driver=driver,
        iterations_run=done,
        raw_image=best_raw.detach().cpu(),
        ema_image=best_ema.detach().cpu(),
        last_images=state.ring_raw[last_slot].detach().cpu().clone(),
        traces={name: traces[:, i] for i, name in enumerate(state.trace_names)},
        seconds=seconds,
        rules=rules,
    )


def _run_to_snapshot(state: _DeviceState, fit: int, iteration: int, rules: list[StopRule], driver: int) -> RunRecord:
    """Run eagerly up to ``iteration`` and keep the generator that produced its output."""
    if iteration < 0:
        raise ValueError(f"snapshot_iteration must be >= 0, got {iteration}")
    start = time.perf_counter()
    for _ in range(iteration):
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
        ema_image=ema.cpu(), last_images=state.ring_raw[iteration % state.ring_size].cpu().clone(),
        traces={name: traces[:, i] for i, name in enumerate(state.trace_names)},
        seconds=time.perf_counter() - start, rules=rules, generator_snapshot=snapshot,
    )
