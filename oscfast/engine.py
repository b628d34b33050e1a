"""The DIP loop with on-device OSC bookkeeping (method.md sections 1-5).

One training step does everything on the device: perturb z, forward, loss against y + n,
backward, Adam, the exponential average, P_t, the PSNRs when a reference is given, and the
ring buffer of recent outputs, each written at index t of preallocated buffers. On CUDA the
step is captured once in a CUDA graph and replayed; on the CPU the same function runs
eagerly. The host reads the new P values every ``sync_every`` iterations and drives the
:class:`~oscfast.stopping.OSCStopper`. The engine does not know which task it runs.
"""
from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch
from tqdm.auto import tqdm

from oscfast.config import DIPConfig, StopConfig
from oscfast.memory import check_memory, estimate_run_bytes
from oscfast.metrics import psnr_torch
from oscfast.models import build_net
from oscfast.stopping import OSCStopper, RiskStopper, make_stopper, projection, risk_weight
from oscfast.tasks import Task

__all__ = ["EngineOptions", "RunRecord", "run_dip", "canvas_geometry"]

logger = logging.getLogger(__name__)

Precision = Literal["fp32", "bf16"]
StopMode = Literal["osc", "never"]


@dataclass(frozen=True)
class EngineOptions:
    """How to run (not what to compute).

    Attributes:
        device: torch device to run on.
        precision: ``"fp32"`` or ``"bf16"`` (autocast of the network; loss, P, EMA stay fp32).
        cuda_graph: capture the step in a CUDA graph (None: whenever the device is CUDA).
        channels_last: run the network in channels_last memory format (None: on CUDA only;
            on this project's AVX2 CPUs it measured ~20% slower than NCHW).
        seed: seeds the network initialisation, z, the reg-noise and the pseudo-noise.
        progress: show a tqdm bar.
        check_memory: estimate the memory before allocating and refuse runs that do not fit.
    """

    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    precision: Precision = "fp32"
    cuda_graph: bool | None = None
    channels_last: bool | None = None
    seed: int = 0
    progress: bool = True
    check_memory: bool = True

    def __post_init__(self) -> None:
        if self.precision not in ("fp32", "bf16"):
            raise ValueError(f"unknown precision {self.precision!r}; expected 'fp32' or 'bf16'")

    @property
    def use_cuda_graph(self) -> bool:
        """Whether the step will be graph-captured."""
        wanted = self.device.type == "cuda" if self.cuda_graph is None else self.cuda_graph
        if wanted and self.device.type != "cuda":
            raise ValueError("cuda_graph=True needs a CUDA device")
        return wanted


@dataclass
class RunRecord:
    """What one engine run produced (host-side, CPU tensors and numpy arrays)."""

    chosen_iteration: int | None
    osc_stop_iteration: int | None
    iterations_run: int
    raw_image: torch.Tensor
    ema_image: torch.Tensor
    last_image: torch.Tensor
    p: np.ndarray
    curvature: np.ndarray
    loss: np.ndarray
    psnr_raw: np.ndarray | None
    psnr_ema: np.ndarray | None
    seconds: float
    half_window: int | None
    patience: int | None
    generator_snapshot: GeneratorSnapshot | None = None
    risk: np.ndarray | None = None
    risk_ema: np.ndarray | None = None
    best_output: str | None = None
    p_ema: np.ndarray | None = None
    loss_ema: np.ndarray | None = None
    risk_weight: float | None = None

    @property
    def stop_reason(self) -> str:
        """``"knee"`` when the online rule fired, ``"cap"`` otherwise."""
        return "knee" if self.osc_stop_iteration is not None else "cap"


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


class _DeviceState:
    """Everything the step touches, preallocated on the device."""

    def __init__(
        self,
        task: Task,
        config: DIPConfig,
        stop: StopConfig,
        *,
        reference: torch.Tensor | None,
        ring_size: int,
        options: EngineOptions,
    ) -> None:
        device = options.device
        channels, height, width = task.output_shape
        self.geometry = canvas_geometry(height, width, config.net.stride_multiple)
        self.height, self.width = height, width
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(options.seed)
            net = build_net(config.net, channels)
        channels_last = device.type == "cuda" if options.channels_last is None else options.channels_last
        memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.net = net.to(device=device, memory_format=memory_format).train()
        self.z = make_input(config, self.geometry.height, self.geometry.width, seed=options.seed + 1)
        self.z = self.z.to(device=device, memory_format=memory_format)
        self.z_in = self.z.clone()
        self.eps = torch.zeros_like(self.z)
        self.reg_noise_std = config.reg_noise_std
        self.generator = torch.Generator(device=device).manual_seed(options.seed + 2)
        observation = task.observation
        if stop.pseudo_noise_std > 0:
            noise = task.pseudo_noise(stop.pseudo_noise_std, seed=options.seed + 1000).to(device)
            self.noise: torch.Tensor | None = noise
            self.inv_noise_energy = torch.tensor(1.0 / float(noise.double().pow(2).sum()), device=device)
            self.target = observation + noise  # not clipped: method.md section 2
        else:
            self.noise = None
            self.target = observation.clone()
        cap = config.max_iterations
        self.t = torch.zeros((), dtype=torch.long, device=device)
        # one buffer for everything the host reads each sync: P, loss, P and loss of the EMA
        self.trace = torch.zeros((4, cap), device=device)
        self.p, self.loss, self.p_ema, self.loss_ema = self.trace.unbind(0)
        self.reference = reference.to(device) if reference is not None else None
        self.psnr_raw = torch.zeros(cap, device=device) if reference is not None else None
        self.psnr_ema = torch.zeros(cap, device=device) if reference is not None else None
        self.ring_size = ring_size
        self.ring_raw = torch.zeros((ring_size, channels, height, width), device=device)
        self.ring_ema = torch.zeros_like(self.ring_raw)
        self.best_raw = torch.zeros((1, channels, height, width), device=device)
        self.best_ema = torch.zeros_like(self.best_raw)
        self.ema = torch.zeros_like(self.best_raw)
        self.ema_decay = config.ema_decay
        fused = device.type == "cuda"
        self.optimizer = torch.optim.Adam(
            self.net.parameters(),
            lr=config.learning_rate,
            fused=fused or None,
            foreach=None if fused else True,
            capturable=options.use_cuda_graph,
        )
        self.autocast = (
            (lambda: torch.autocast(device.type, dtype=torch.bfloat16, cache_enabled=False))
            if options.precision == "bf16"
            else contextlib.nullcontext
        )

    def step(self, task: Task, *, zero_grad: bool = True) -> None:
        """One DIP iteration with all bookkeeping on the device (no host sync)."""
        if zero_grad:
            self.optimizer.zero_grad(set_to_none=True)
        if self.reg_noise_std > 0:
            self.eps.normal_(generator=self.generator)
            torch.add(self.z, self.eps, alpha=self.reg_noise_std, out=self.z_in)
        geometry = self.geometry
        with self.autocast():
            out = self.net(self.z_in)
        x = out[:, :, geometry.top : geometry.top + self.height, geometry.left : geometry.left + self.width].float()
        measured = task(x)
        loss = task.loss(measured, self.target)
        loss.backward()
        self.optimizer.step()
        with torch.no_grad():
            x = x.detach()
            index = self.t.view(1)
            # the first output initialises the average (reference-configs.md section 3)
            weight = (self.t > 0).to(torch.float32) * self.ema_decay
            self.ema.lerp_(x, 1.0 - weight)
            if self.noise is not None:
                self.p.index_copy_(0, index, projection(measured.detach(), self.noise, self.inv_noise_energy).view(1))
                # the averaged output gets its own P and loss: the risk rule scores both images
                measured_ema = task(self.ema)
                self.p_ema.index_copy_(0, index, projection(measured_ema, self.noise, self.inv_noise_energy).view(1))
                self.loss_ema.index_copy_(0, index, task.loss(measured_ema, self.target).view(1))
            self.loss.index_copy_(0, index, loss.detach().view(1))
            if self.reference is not None:
                self.psnr_raw.index_copy_(0, index, psnr_torch(self.reference, x).view(1))
                self.psnr_ema.index_copy_(0, index, psnr_torch(self.reference, self.ema).view(1))
            slot = torch.remainder(self.t, self.ring_size).view(1)
            self.ring_raw.index_copy_(0, slot, x)
            self.ring_ema.index_copy_(0, slot, self.ema)
            self.t.add_(1)

    def snapshot_best(self, iteration: int) -> None:
        """Copy the ring slot of ``iteration`` into the best-image buffers (device copy)."""
        slot = iteration % self.ring_size
        self.best_raw.copy_(self.ring_raw[slot : slot + 1])
        self.best_ema.copy_(self.ring_ema[slot : slot + 1])

    def mutable_tensors(self) -> Iterator[torch.Tensor]:
        """Tensors a warm-up changes, to be put back before the real run."""
        yield from self.net.parameters()
        yield from self.net.buffers()
        for state in self.optimizer.state.values():
            yield from (value for value in state.values() if isinstance(value, torch.Tensor))
        yield from (self.ema, self.t, self.trace)


def _capture_cuda_graph(state: _DeviceState, task: Task, warmup: int = 3) -> torch.cuda.CUDAGraph:
    """Capture one step in a CUDA graph; the warm-up steps it needs are undone afterwards."""
    saved_params = [tensor.detach().clone() for tensor in list(state.net.parameters()) + list(state.net.buffers())]
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(warmup):
            state.step(task)
    torch.cuda.current_stream().wait_stream(side)
    state.optimizer.zero_grad(set_to_none=True)
    graph = torch.cuda.CUDAGraph()
    if hasattr(graph, "register_generator_state"):
        graph.register_generator_state(state.generator)
    with torch.cuda.graph(graph):
        state.step(task, zero_grad=False)
    with torch.no_grad():
        for tensor, saved in zip(list(state.net.parameters()) + list(state.net.buffers()), saved_params):
            tensor.copy_(saved)
        # a fresh Adam starts from zero moments and step 0
        for optimizer_state in state.optimizer.state.values():
            for value in optimizer_state.values():
                if isinstance(value, torch.Tensor):
                    value.zero_()
        for tensor in (state.ema, state.t, state.trace):
            tensor.zero_()
    state.generator.manual_seed(state.generator.initial_seed())
    return graph


def run_dip(
    task: Task,
    config: DIPConfig,
    stop: StopConfig,
    *,
    stop_mode: StopMode = "osc",
    reference: torch.Tensor | None = None,
    options: EngineOptions | None = None,
    on_sync: Callable[[int, OSCStopper | None], None] | None = None,
    snapshot_iteration: int | None = None,
) -> RunRecord:
    """Run DIP on ``task`` until the OSC rule stops it (or the cap).

    Args:
        task: the inverse problem (observation + forward operator).
        config: the DIP configuration (network, input, Adam, iteration cap).
        stop: OSC options; ``pseudo_noise_std=0`` runs plain DIP to the cap.
        stop_mode: ``"osc"`` stops when the online rule fires; ``"never"`` runs to the cap
            but still returns the image the rule chose.
        reference: clean image (1, C, H, W) for per-iteration PSNR of raw and EMA outputs.
        options: device, precision and the like.
        on_sync: called on the host after each read of the device buffers.
        snapshot_iteration: keep the generator's weights and perturbed input of this
            iteration (those that produced its raw output) in ``RunRecord.generator_snapshot``;
            runs eagerly and ends right after that iteration (used to export a result).

    Returns:
        A :class:`RunRecord`.
    """
    options = options or EngineOptions()
    if stop_mode not in ("osc", "never"):
        raise ValueError(f"unknown stop mode {stop_mode!r}; expected 'osc' or 'never'")
    cap = config.max_iterations
    use_osc = stop.pseudo_noise_std > 0
    sync_every = stop.sync_every
    settings = stop.resolve(cap)
    # the ring must still hold the chosen iterate when the rule, lagging the data, names it
    lag = settings.risk_smoothing // 2 if settings.rule == "risk" else settings.half_window
    ring_size = lag + sync_every + 1 if use_osc else 1
    device = options.device
    task = task.to(device)
    if options.check_memory:
        check_memory(estimate_run_bytes(task.output_shape, config, ring_size=ring_size), device)
    state = _DeviceState(task, config, stop, reference=reference, ring_size=ring_size, options=options)
    weight = None
    if use_osc:
        noise_level = stop.noise_level if stop.noise_level is not None else task.noise_level()
        weight = risk_weight(noise_level, state.noise, stop.pseudo_noise_std)
    stopper = make_stopper(stop, max_iterations=cap, risk_weight_value=weight) if use_osc else None
    half_window = settings.half_window if use_osc and settings.rule != "risk" else None

    flags = (
        torch.backends.cudnn.flags(enabled=True, benchmark=True, deterministic=False, allow_tf32=True)
        if device.type == "cuda"
        else contextlib.nullcontext()
    )
    start = time.perf_counter()
    with flags:
        if snapshot_iteration is not None:
            return _run_to_snapshot(state, task, snapshot_iteration)
        graph = _capture_cuda_graph(state, task) if options.use_cuda_graph else None
        run_step = graph.replay if graph is not None else (lambda: state.step(task))
        done = 0
        bar = tqdm(total=cap, disable=not options.progress, unit="it", leave=False)
        try:
            while done < cap:
                count = min(sync_every, cap - done)
                for _ in range(count):
                    run_step()
                first, done = done, done + count
                # one transfer per sync: everything the rule and the progress bar read
                p, loss, p_ema, loss_ema = state.trace[:, first:done].cpu().double().numpy()
                if stopper is not None:
                    frozen = stopper.should_stop
                    decision = stopper.update_p(p, loss, p_ema=p_ema, loss_ema=loss_ema)
                    if decision.new_best and not frozen:
                        state.snapshot_best(decision.best_iteration)
                if options.progress:
                    bar.update(count)
                    postfix = {"loss": f"{loss[-1]:.2e}"}
                    if stopper is not None:
                        postfix["P"] = f"{p[-1]:.3f}"
                        postfix["stop@"] = stopper.best_iteration
                    bar.set_postfix(postfix, refresh=False)
                if on_sync is not None:
                    on_sync(done, stopper)
                if stop_mode == "osc" and stopper is not None and stopper.should_stop:
                    break
        finally:
            bar.close()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start

    chosen = stopper.best_iteration if stopper is not None else None
    trace = state.trace[:, :done].cpu().double().numpy()
    last_slot = (done - 1) % ring_size
    last_image = state.ring_raw[last_slot : last_slot + 1]
    if chosen is None:
        # no knee: the last iterate is the answer (method.md section 7, 'no knee' case)
        raw_image, ema_image = last_image, state.ema
        logger.info("no knee found in %d iterations: returning the last iterate", done)
    else:
        raw_image, ema_image = state.best_raw, state.best_ema
    return RunRecord(
        chosen_iteration=chosen,
        osc_stop_iteration=stopper.stop_iteration if stopper is not None else None,
        iterations_run=done,
        raw_image=raw_image.detach().cpu().clone(),
        ema_image=ema_image.detach().cpu().clone(),
        last_image=last_image.detach().cpu().clone(),
        p=trace[0] if use_osc else np.zeros(0),
        curvature=stopper.curvature if stopper is not None else np.zeros(0),
        loss=trace[1],
        psnr_raw=state.psnr_raw[:done].cpu().numpy().astype(np.float64) if state.psnr_raw is not None else None,
        psnr_ema=state.psnr_ema[:done].cpu().numpy().astype(np.float64) if state.psnr_ema is not None else None,
        seconds=seconds,
        half_window=half_window,
        patience=stopper.settings.patience if stopper is not None else None,
        risk=stopper.risk if isinstance(stopper, RiskStopper) else None,
        risk_ema=stopper.risk_ema if isinstance(stopper, RiskStopper) else None,
        best_output=stopper.best_output if isinstance(stopper, RiskStopper) and chosen is not None else None,
        p_ema=trace[2] if use_osc else np.zeros(0),
        loss_ema=trace[3] if use_osc else np.zeros(0),
        risk_weight=weight,
    )


def _run_to_snapshot(state: _DeviceState, task: Task, iteration: int) -> RunRecord:
    """Run eagerly up to ``iteration`` and keep the generator that produced its output."""
    import copy

    if iteration < 0:
        raise ValueError(f"snapshot_iteration must be >= 0, got {iteration}")
    start = time.perf_counter()
    for _ in range(iteration):
        state.step(task)
    net_before = copy.deepcopy(state.net).cpu()
    state.step(task)
    geometry = state.geometry
    slot = iteration % state.ring_size
    raw = state.ring_raw[slot : slot + 1].detach().cpu().clone()
    snapshot = GeneratorSnapshot(
        iteration=iteration,
        net=net_before,
        net_input=state.z_in.detach().cpu().clone().contiguous(),
        top=geometry.top,
        left=geometry.left,
        height=state.height,
        width=state.width,
        raw_image=raw,
    )
    done = iteration + 1
    return RunRecord(
        chosen_iteration=iteration, osc_stop_iteration=None, iterations_run=done,
        raw_image=raw, ema_image=state.ema.detach().cpu().clone(), last_image=raw,
        p=state.p[:done].cpu().numpy().astype(np.float64), curvature=np.zeros(0),
        loss=state.loss[:done].cpu().numpy().astype(np.float64), psnr_raw=None, psnr_ema=None,
        seconds=time.perf_counter() - start, half_window=None, patience=None, generator_snapshot=snapshot,
    )
