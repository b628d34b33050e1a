"""The device side of the engine: the K fits' state on the device, the step that computes every
signal there, moving a task (and the tensors of a custom operator) to the device, the CUDA graph
capture with its fallback to eager, and a clock that synchronises before it reads."""
from __future__ import annotations

import contextlib
import copy
import logging
import math
import time
import types
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import torch

from oscfast.config import DIPConfig
from oscfast.fits import StackedAdam, StackedGenerators
from oscfast.probe import projection
from oscfast.engine.specs import EngineOptions, FitSpec, ResumePoint, canvas_geometry, make_input
from oscfast.tasks import Task


__all__ = ["DeviceClock", "cuda_graph_unavailable_reason", "device_clock"]

logger = logging.getLogger("oscfast.engine")

Precision = Literal["fp32", "bf16"]
StopMode = Literal["osc", "never"]
#: signals the engine can compute per fit (see oscfast.stopping)
ENGINE_SIGNALS = ("loss", "loss_ema", "p", "p_ema", "wmv", "emv", "change")


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

    A slot can *mirror* another (:meth:`mirror_slot`, the late-start twin's fit B before its
    start): it does not train (no reg-noise draw, forward, backward or Adam update of its own),
    its output is its parent's, and its signals are computed from that output against its own
    target; :meth:`branch` then gives it a copy of its parent's whole state, and it trains
    from there.
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
        #: slot -> the slot whose output it mirrors (None: it trains); see :meth:`mirror_slot`
        self.mirror: list[int | None] = [None] * k
        #: the slots that train, in order
        self.active: list[int] = list(range(k))

    # -- late starts ------------------------------------------------------------------------
    def mirror_slot(self, k: int, parent: int) -> None:
        """Let slot ``k`` mirror slot ``parent`` until :meth:`branch`: it stops training and
        its output is ``parent``'s (a host-side switch: a captured step must be captured again)."""
        if k == parent or self.mirror[parent] is not None:
            raise ValueError(f"slot {k} cannot mirror slot {parent} (itself, or a slot that mirrors another)")
        self.mirror[k] = parent
        self.active = [slot for slot, source in enumerate(self.mirror) if source is None]

    def branch(self, k: int) -> None:
        """Start slot ``k``, which mirrors its parent, from a copy of the parent's whole state:
        weights, Adam moments and step count, input z, the reg-noise generator's state, the
        averages, windows and counters (those are equal already: they were computed from the
        same outputs; copying makes the clone complete). Its trace, target and probe stay its
        own. Not inside a captured step: a graph captured with ``k`` mirroring no longer
        applies."""
        parent = self.mirror[k]
        if parent is None:
            raise ValueError(f"slot {k} mirrors no slot: it trains already")
        adam = self.optimizer
        with torch.no_grad():
            for tensor in [*self.generators.stacked.values(), *adam.exp_avg, *adam.exp_avg_sq, adam.steps, self.z, self.ema,
                           self.last_raw, self.t]:
                tensor[k].copy_(tensor[parent])
            for name in ("wmv_sum", "wmv_sumsq", "emv_mean", "emv"):
                if hasattr(self, name):
                    getattr(self, name)[k].copy_(getattr(self, name)[parent])
            for name in ("wmv_ring", "change_ring"):
                if hasattr(self, name):
                    getattr(self, name)[:, k].copy_(getattr(self, name)[:, parent])
        self.rngs[k].set_state(self.rngs[parent].get_state())
        if self.host_t is not None:
            self.host_t[k] = self.host_t[parent]
        self.mirror[k] = None
        self.active = [slot for slot, source in enumerate(self.mirror) if source is None]

    def _state_slot(self, k: int) -> int:
        """The slot whose weights, Adam state and reg-noise stream are slot ``k``'s now (its
        parent while it mirrors one)."""
        parent = self.mirror[k]
        return k if parent is None else parent

    # -- the step -------------------------------------------------------------------------
    def step(self) -> None:
        """One DIP iteration of every fit with all bookkeeping on the device (no host sync)."""
        self.optimizer.zero_grad()
        if self.reg_noise_std > 0:
            for k in self.active:
                self.eps[k].normal_(generator=self.rngs[k])
            torch.add(self.z, self.eps, alpha=self.reg_noise_std, out=self.z_in)
        else:
            self.z_in.copy_(self.z)
        if len(self.active) < self.num_fits:
            x, measured, losses = self._train_active()
        elif self.generators.per_slot:
            # each fit's forward, loss and backward on its own (the graphs share nothing): the
            # same numbers as one backward of the summed losses, and with the "threads"
            # strategy the fits run in parallel, one CPU thread each
            x, measured, losses = (list(column) for column in zip(*self.generators.map_slots(self._fit_forward_backward)))
            x = torch.stack(x)
        else:
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

    def _train_active(self) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
        """Forward and backward of the training slots only; a mirroring slot's output and
        measurement are its parent's, its loss that output's against its own target (no
        backward: its gradient stays zero, so Adam leaves its weights as they are until
        :meth:`branch` overwrites them). Returns every slot's output (K, 1, C, H, W),
        measurements and losses, detached."""
        active = self.active
        if self.generators.per_slot:
            trained = self.generators.map_slots(self._fit_forward_backward, slots=active)
        else:
            g = self.geometry
            with self.autocast():
                out = self.generators(torch.stack([self.z_in[k] for k in active]), slots=active)
            x = out[..., g.top : g.top + self.height, g.left : g.left + self.width].float()
            measured = [self.tasks[k](x[i]) for i, k in enumerate(active)]
            losses = [self.tasks[k].loss(m, self.targets[k]) for k, m in zip(active, measured)]
            torch.stack(losses).sum().backward()
            trained = [(x[i].detach(), m.detach(), loss.detach()) for i, (m, loss) in enumerate(zip(measured, losses))]
        by_slot = dict(zip(active, trained))
        outputs, measurements, losses = [], [], []
        with torch.no_grad():
            for k, parent in enumerate(self.mirror):
                x_k, m_k, loss_k = by_slot[k if parent is None else parent]
                outputs.append(x_k)
                measurements.append(m_k)
                losses.append(loss_k if parent is None else self.tasks[k].loss(m_k, self.targets[k]))
        return torch.stack(outputs), measurements, losses

    def _fit_forward_backward(self, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Fit ``k``'s output, measurement and loss (detached), after its backward."""
        g = self.geometry
        task = self.tasks[k]
        with self.autocast():  # autocast is thread-local: entered here, in the thread that runs the fit
            out = self.generators.slot_forward(k, self.z_in[k])
        x = out[..., g.top : g.top + self.height, g.left : g.left + self.width].float()
        measured = task(x)
        loss = task.loss(measured, self.targets[k])
        loss.backward()
        return x.detach(), measured.detach(), loss.detach()

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
        if self.mirror[k] is not None:  # a new fit trains unless told to mirror (mirror_slot)
            self.mirror[k] = None
            self.active = [slot for slot, source in enumerate(self.mirror) if source is None]

    def state_dict(self) -> dict[str, object]:
        """Everything a resumed run needs to continue bit for bit (CPU)."""
        return {
            "tensors": {name: tensor.detach().cpu().clone() for name, tensor in self.named_mutable_tensors()},
            "rngs": [rng.get_state() for rng in self.rngs],
            "host_t": list(self.host_t) if self.host_t is not None else None,
            "mirror": list(self.mirror),
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
        # which slots mirror another (a late start before or after its branch point); a
        # checkpoint without the key (written before late starts existed) has none
        mirror = list(state.get("mirror", [None] * self.num_fits))
        if len(mirror) != self.num_fits:
            raise ValueError("the checkpoint's tensors do not match this run's")
        self.mirror = mirror
        self.active = [slot for slot, source in enumerate(self.mirror) if source is None]

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
        """Fit ``k``'s state now, copied to the host (:class:`ResumePoint`); a slot that mirrors
        another has that slot's state (its own is overwritten when it branches)."""
        s = self._state_slot(k)
        parameters = {name: tensor[s].detach().cpu().clone() for name, tensor in self.generators.stacked.items()}
        adam = self.optimizer
        return ResumePoint(
            iteration=int(self.host_t[k]) if self.host_t is not None else int(self.t[k]),
            parameters=parameters,
            exp_avg=[m[s].detach().cpu().clone() for m in adam.exp_avg],
            exp_avg_sq=[v[s].detach().cpu().clone() for v in adam.exp_avg_sq],
            adam_step=float(adam.steps[s]),
            rng_state=self.rngs[s].get_state(),
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


