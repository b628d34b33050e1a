"""The host side of the engine: groups of fits with their rules, the loop that steps the device
state, reads its buffers every ``sync_every`` iterations, feeds the rules, refills slots,
checkpoints and ends (:class:`BatchRun`, :func:`run_fits`)."""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch
from tqdm.auto import tqdm

from oscfast.checkpoint import Checkpoint
from oscfast.config import DIPConfig
from oscfast.memory import check_memory, estimate_run_bytes
from oscfast.stopping import Decision, Signals
from oscfast.engine.device import _backend_flags, _device_scope, _DeviceState, _graph_or_eager, device_clock
from oscfast.engine.specs import (
    EngineOptions,
    FitSpec,
    GeneratorSnapshot,
    ResumePoint,
    RunRecord,
    SyncInfo,
    Watch,
    resume_points_for,
    ring_size_for,
)


__all__ = ["BatchRun", "Group", "run_fits"]

logger = logging.getLogger("oscfast.engine")

Precision = Literal["fp32", "bf16"]
StopMode = Literal["osc", "never"]
#: signals the engine can compute per fit (see oscfast.stopping)
ENGINE_SIGNALS = ("loss", "loss_ema", "p", "p_ema", "wmv", "emv", "change")


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
    #: fit index -> (the fit it branches off, the iteration before which it does), for the fits
    #: that start late (:attr:`FitSpec.branch_of`)
    branches: dict[int, tuple[int, int]] = field(default_factory=dict)

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
    for index, fit in enumerate(fits):
        if fit.branch_of is None:
            continue
        if not 0 <= fit.branch_of < len(fits) or fit.branch_of == index:
            raise ValueError(f"fit {index} branches off fit {fit.branch_of}: not another fit of its group (have {len(fits)})")
        if fits[fit.branch_of].branch_of is not None:
            raise ValueError(f"fit {index} branches off fit {fit.branch_of}, which branches off another fit itself")
        if fit.branch_at >= cap:
            raise ValueError(f"fit {index} branches off at iteration {fit.branch_at}, at or after the cap of {cap}")


def _branches(fits: Sequence[FitSpec]) -> dict[int, tuple[int, int]]:
    """Fit index -> (parent, branch point) for the fits of a group that start late."""
    return {index: (fit.branch_of, fit.branch_at) for index, fit in enumerate(fits) if fit.branch_of is not None}


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
            self.groups.append(Group(slots, list(watches), driver, tag, branches=_branches(group_fits)))
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
        for group in self.groups:
            self._mirror_late_fits(group)
        #: the clock of group times (synchronises the device before each read)
        self.clock = device_clock(options.device)
        self.seconds = 0.0
        self.steps = 0
        #: per slot: the iterations its fit trained (a late fit's count starts at its branch point)
        self.fit_steps = [0] * len(fits)
        #: False while a step block runs: a state_dict taken then (after Ctrl-C) would not resume
        self.consistent = True
        self._graph: torch.cuda.CUDAGraph | None = None
        #: which slots mirrored which when the graph was captured (a graph replays that step only)
        self._graph_key: tuple[int | None, ...] | None = None
        self._graph_warned = False

    def _mirror_late_fits(self, group: Group) -> None:
        """Let the group's late fits mirror their parents until their branch points."""
        for fit, (parent, _) in group.branches.items():
            self.state.mirror_slot(group.slots[fit], group.slots[parent])

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
        new = Group(list(old.slots), list(watches), driver, tag, branches=_branches(fits))
        if self.state.ring_row[new.slot(new.leader.fit)] is None:
            raise ValueError(
                f"the new driving fit {new.leader.fit} runs in slot {new.slot(new.leader.fit)}, which keeps no ring "
                f"of outputs (the ring slots are {self.state.ring_slots}: the first groups' driving fits)"
            )
        for slot, fit in zip(old.slots, fits):
            self.state.load_fit(slot, fit, self.config)
            self.fit_steps[slot] = 0
        self._mirror_late_fits(new)
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
        options = self.options
        cap = self.config.max_iterations
        clock = self.clock
        start = clock.now()
        total = sum(1 for g in self.groups if not g.finished) * cap
        bar = tqdm(total=total, disable=not options.progress, unit="it", leave=False)
        try:
            with _device_scope(options.device), _backend_flags(options):
                self._stepper()  # the first capture, outside the groups' times (a late start's is inside)
                self._keep_resume_points()
                while any(not g.finished for g in self.groups):
                    count = min(options.sync_every, *(cap - g.done for g in self.groups if not g.finished))
                    block_start = clock.now()
                    running = [g for g in self.groups if not g.finished]
                    try:
                        self.consistent = False  # the device runs ahead of the host's counters
                        self._run_block(count)
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

    def _run_block(self, count: int) -> None:
        """``count`` steps; a late fit whose branch point falls inside them branches off its
        parent right before that iteration (the step it then joins is another step: captured
        again, or eager)."""
        branch_points: dict[int, list[int]] = {}
        for group in self.groups:
            if group.finished:
                continue
            for fit, (_, at) in group.branches.items():
                slot = group.slots[fit]
                offset = max(at - group.done, 0)
                if self.state.mirror[slot] is not None and offset < count:
                    branch_points.setdefault(offset, []).append(slot)
        # a finished group's slots step on until the batch ends (or a refill): not its fits' work
        running = {slot for group in self.groups if not group.finished for slot in group.slots}
        done = 0
        for offset in [*sorted(branch_points), count]:
            if offset > done:
                run_step = self._stepper()
                for _ in range(offset - done):
                    run_step()
                for slot in self.state.active:
                    if slot in running:
                        self.fit_steps[slot] += offset - done
                done = offset
            for slot in branch_points.get(offset, ()):
                logger.debug("slot %d branches off slot %d's state", slot, self.state.mirror[slot])
                self.state.branch(slot)

    def _stepper(self) -> Callable[[], None]:
        """The step to call: the CUDA graph captured for the slots that train now (captured
        again when they changed: a late fit branched off, or a refill), or the eager step."""
        if self.options.use_cuda_graph and not self._graph_warned:
            key = tuple(self.state.mirror)
            if self._graph is None or key != self._graph_key:
                if self._graph is not None:
                    logger.info("the slots that train changed (%s -> %s): capturing the step again", self._graph_key, key)
                self._graph = None  # the old graph's memory goes before the new capture
                self._graph, _ = _graph_or_eager(self.state)
                self._graph_key = key
                self._graph_warned = self._graph is None
        return self._graph.replay if self._graph is not None else self.state.step

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
            group.resume_points[:] = _needed_points(points, group.done - self.ring_size,
                                                    group.leader.rule.decision.iteration)

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
            "fit_steps": list(self.fit_steps),
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
        if "fit_steps" in state:
            self.fit_steps = list(state["fit_steps"])
        else:  # written before late starts: every fit trained at every iteration of its group
            for group in self.groups:
                for slot in group.slots:
                    self.fit_steps[slot] = group.done

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
            fit_iterations=tuple(self.fit_steps[slot] for slot in group.slots),
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


def _needed_points(points: Sequence[ResumePoint], ring_start: int, chosen: int | None) -> list[ResumePoint]:
    """The resume points a choice can still need: the newest one at or before the current choice
    (export replays from it) and, for choices the rule may still make, the newest one at or
    before the start of the ring and every later one; the points in between are dropped, so at
    most ``ring_size / sync_every + 2`` are kept however long the run."""
    def newest_at_or_before(limit: int) -> ResumePoint | None:
        eligible = [point for point in points if point.iteration <= limit]
        return eligible[-1] if eligible else None

    base = newest_at_or_before(ring_start)
    keep = [point for point in points if point.iteration > ring_start]
    if base is not None:
        keep.insert(0, base)
    elif points and (not keep or keep[0] is not points[0]):
        keep.insert(0, points[0])  # nothing at or before the ring's start yet: keep the oldest
    if chosen is not None:
        anchor = newest_at_or_before(chosen)
        if anchor is not None and all(anchor is not point for point in keep):
            keep.insert(0, anchor)
    return keep


def _run_to_snapshot(run: BatchRun, fit: int, iteration: int, resume_from: ResumePoint | None = None) -> RunRecord:
    """Run eagerly up to ``iteration`` (from ``resume_from`` when given) and keep the generator
    that produced its output, under the run's device and numeric flags (TF32 off for fp32, as
    the run computed)."""
    with _device_scope(run.options.device), _backend_flags(run.options):
        return _snapshot_steps(run, fit, iteration, resume_from)


def _snapshot_steps(run: BatchRun, fit: int, iteration: int, resume_from: ResumePoint | None) -> RunRecord:
    if iteration < 0:
        raise ValueError(f"snapshot_iteration must be >= 0, got {iteration}")
    if fit in run.groups[0].branches:
        raise ValueError(f"fit {fit} branches off another fit: a snapshot replays a fit that trains from iteration 0")
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
