"""Honest evaluation of stop rules: one twin run records plain DIP and DIP+OSC side by side.

A twin run (method.md section 8) has two fits from the same weights, input and reg-noise
draws: fit A on y (exactly a plain DIP run with that seed) and fit B on y + n (exactly the
paper's DIP+OSC run). Every rule watches the fits live in the engine (:func:`record`); the
metrics are computed on the task's final image (known pixels put back for masked tasks) for
both fits, so the plain-DIP oracle and the returned images get the same final step.

Vocabulary (method.md section 6, corrected): ``gap_db`` = best PSNR (raw or averaged) of plain
DIP (fit A) - PSNR of the image the rule returns; ``accuracy_raw`` = raw PSNR at the rule's
iteration / best raw PSNR of the same fit; ``accuracy_ema`` likewise for the averaged output
(both like for like: neither can pass 100%); ``fixed_db`` = plain DIP at the cap.
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from oscfast.checkpoint import Checkpoint
from oscfast.config import DIPConfig, StopConfig
from oscfast.engine import EngineOptions, FitSpec, RunRecord, SyncInfo, Watch, run_fits
from oscfast.plan import default_stop, make_rule
from oscfast.probe import probed_fraction, risk_constants
from oscfast.tasks import Task

__all__ = ["Candidate", "EvalRecord", "RuleOutcome", "candidate_rules", "outcome", "outcomes", "record", "save_run", "to_payload"]

#: the fits of a twin evaluation run
PLAIN, PROBED = 0, 1


@dataclass(frozen=True)
class Candidate:
    """A rule to watch: its label, probe kind and rule name, with option overrides; ``noise``
    says which noise level a risk rule reads in replays ("task": the task's estimate, as in a
    run; "jpeg": from the quantisation tables)."""

    label: str
    probe: str
    rule: str
    options: Mapping[str, Any] = field(default_factory=dict)
    noise: str = "task"


def candidate_rules(task_name: str | Task) -> list[Candidate]:
    """The rules every evaluation run watches: the task's default first (it drives the run),
    then today's inline rules, the twin rules, the peers and the plateau variants. For a Task
    object its own class gives the default (a noise model's rule, :func:`oscfast.plan.default_stop`)."""
    default = default_stop(task_name)
    candidates = [Candidate("default", default.probe, default.rule, {"output": default.output})]
    candidates += [
        Candidate("inline-risk", "inline", "risk"),
        Candidate("inline-knee", "inline", "knee"),
        Candidate("inline-paper", "inline", "paper"),
        Candidate("twin-risk", "twin", "risk"),
        Candidate("twin-knee", "twin", "knee"),
        Candidate("es-wmv", "none", "es-wmv"),
        Candidate("es-emv", "none", "es-emv"),
    ]
    for level in (40.0, 45.0, 50.0, 55.0):
        for patience in (200, 500):
            candidates.append(
                Candidate(f"plateau-{level:.0f}-{patience}", "none", "plateau", {"plateau_db": level, "plateau_patience": patience})
            )
    return candidates


@dataclass
class EvalRecord:
    """One recorded twin run.

    Attributes:
        labels: watch labels, in order (``labels[0]`` drove the run).
        decisions: each watch's final decision as a dict.
        fits: each watch's fit index (0 = plain, 1 = probed).
        probes: each watch's probe kind ("twin", "inline" or "none").
        traces: signal -> (2, iterations) per fit.
        returned_psnr: PSNR of the image the driving rule returned (computed from the image).
        cap: the iteration cap.
        seconds: wall time of the twin run.
        seconds_per_iteration_single: wall time of one plain fit's iteration, measured in the
            same process on a short run (the cost of rules that need one fit).
        noise_level: the measurement noise level the risk rules used.
        rho: the probed fraction.
        snapshots: iteration -> (2, 2, C, H, W) raw and averaged outputs of both fits, every
            ``snapshot_every`` iterations (optional, for offline studies).
    """

    labels: list[str]
    decisions: list[dict[str, Any]]
    fits: list[int]
    probes: list[str]
    traces: dict[str, np.ndarray]
    returned_psnr: float | None
    cap: int
    seconds: float
    seconds_per_iteration_single: float | None
    noise_level: float
    rho: float
    snapshots: dict[int, np.ndarray] = field(default_factory=dict)


def record(
    task: Task,
    config: DIPConfig,
    *,
    seed: int = 0,
    stop: StopConfig | None = None,
    metrics: Mapping[str, Callable[[torch.Tensor], torch.Tensor]],
    candidates: Sequence[Candidate] | None = None,
    options: EngineOptions | None = None,
    time_single: int = 0,
    snapshot_every: int = 0,
    reference: torch.Tensor | None = None,
    checkpoint: Checkpoint | None = None,
    earlier_snapshots: Mapping[int, np.ndarray] | None = None,
    on_snapshot: Callable[[Mapping[int, np.ndarray]], None] | None = None,
) -> EvalRecord:
    """Run fit A (plain) and fit B (y + n) of one seed side by side to the cap, every
    candidate rule watching live, and record everything.

    Args:
        task: the task (observation, operator).
        config: the DIP configuration; its cap ends the run.
        seed: the seed of both fits (same weights, input, reg-noise draws).
        stop: base options of the rules (pseudo-noise std, noise level, ...).
        metrics: name -> function of a final (1, C, H, W) image, recorded per fit and output.
        candidates: the rules to watch (default: :func:`candidate_rules`); the first drives.
        options: engine options.
        time_single: if > 0, first time this many iterations of a single plain fit.
        snapshot_every: keep both fits' outputs every this many iterations (0: none).
        reference: the clean image, for :attr:`EvalRecord.returned_psnr`.
        checkpoint: write (and resume from) checkpoints of the twin run, so that a long
            recording survives the end of the process; ``seconds`` then counts only the
            resumed part (the caller keeps the time of earlier parts).
        earlier_snapshots: snapshots kept by an earlier part of a resumed run.
        on_snapshot: called with all snapshots so far after each new one (to persist them).
    """
    stop = stop or StopConfig()
    options = options or EngineOptions()
    candidates = list(candidates or candidate_rules(task))
    if not candidates:
        raise ValueError("need at least one candidate rule")
    cap = config.max_iterations
    noise = task.pseudo_noise(stop.pseudo_noise_std, seed=seed + 1000)
    rho = probed_fraction(noise, stop.pseudo_noise_std)
    noise_level = stop.noise_level if stop.noise_level is not None else task.noise_level()
    fits = [FitSpec(task, seed, probe=noise), FitSpec(task, seed, probe=noise, noisy_target=True)]
    watches = []
    for candidate in candidates:
        overrides = dict(candidate.options)
        output = overrides.pop("output", task.default_output)
        settings = replace(stop, **overrides)
        risk = None
        if candidate.rule == "risk":
            risk = risk_constants(candidate.probe, noise_level=noise_level, probe_std=stop.pseudo_noise_std, rho=rho)
        rule = make_rule(candidate.rule, stop=settings, max_iterations=cap, output=output, risk=risk)
        if candidate.probe == "twin":
            watch = Watch(rule, fit=PLAIN, probe=PROBED, base=PLAIN, label=candidate.label)
        elif candidate.probe == "inline":
            watch = Watch(rule, fit=PROBED, probe=PROBED, label=candidate.label)
        else:
            watch = Watch(rule, fit=PLAIN, label=candidate.label)
        watches.append(watch)
    single = None
    if time_single > 0:
        short = replace(config, max_iterations=time_single)
        timing = run_fits([FitSpec(task, seed)], short, [Watch(make_rule("cap", stop=stop, max_iterations=time_single, output="raw"))],
                          options=replace(options, progress=False))
        single = timing.seconds / time_single
    snapshots: dict[int, np.ndarray] = dict(earlier_snapshots or {})

    def keep(info: SyncInfo) -> None:
        if snapshot_every and info.iteration % snapshot_every == 0:
            images = info.images()
            snapshots[info.iteration - 1] = torch.stack([images["raw"], images["ema"]], dim=1)[:, :, 0].cpu().numpy().astype(np.float16)
            if on_snapshot is not None:
                on_snapshot(snapshots)

    start = time.perf_counter()
    options = replace(options, keep_resume_points=False)  # a recording is never exported
    run = run_fits(fits, config, watches, stop_mode="never", metrics=metrics, extra_signals=("wmv", "emv", "change", "loss_ema", "p_ema"),
                   options=options, on_sync=keep if snapshot_every else None, checkpoint=checkpoint)
    seconds = time.perf_counter() - start
    returned = None
    if reference is not None:
        returned = _returned_psnr(run, task, reference)
    return EvalRecord(
        labels=[w.label for w in watches],
        decisions=[_decision_dict(d) for d in run.decisions],
        fits=[w.fit for w in watches],
        probes=[c.probe for c in candidates],
        traces=run.traces,
        returned_psnr=returned,
        cap=cap,
        seconds=seconds,
        seconds_per_iteration_single=single,
        noise_level=float(noise_level),
        rho=rho,
        snapshots=snapshots,
    )


def _returned_psnr(run: RunRecord, task: Task, reference: torch.Tensor) -> float:
    from oscfast import io
    from oscfast.metrics import psnr

    image = run.raw_image if run.decision.output == "raw" else run.ema_image
    cpu_task = task if all(t.device.type == "cpu" for t in task.buffers()) else task.to("cpu")
    with torch.no_grad():
        final = cpu_task.finalize(image).clamp(0, 1)
    return psnr(io.tensor_to_image(reference), io.tensor_to_image(final))


def _decision_dict(decision: Any) -> dict[str, Any]:
    data = asdict(decision)
    data["score"] = None if data["score"] is None or not math.isfinite(data["score"]) else float(data["score"])
    return data


@dataclass(frozen=True)
class RuleOutcome:
    """How one rule did on one recorded run (see the module docstring for the names).

    Attributes:
        label: the watch label.
        iteration: the iteration the rule chose (the cap - 1 when it chose nothing).
        output: raw or ema.
        fit: 0 (plain) or 1 (probed).
        psnr: PSNR of the image it returns (final step applied).
        gap_db: plain-DIP oracle - ``psnr``.
        accuracy_raw, accuracy_ema: like-for-like accuracies of its fit.
        iterations_run: iterations before it could stop (the cap when it never fired).
        fits_needed: fits its probe runs (2 for the twin, else 1).
    """

    label: str
    iteration: int
    output: str
    fit: int
    psnr: float
    gap_db: float
    accuracy_raw: float
    accuracy_ema: float
    iterations_run: int
    fits_needed: int


def oracle(traces: Mapping[str, np.ndarray], metric: str = "psnr") -> float:
    """Best PSNR of the plain run (fit A), raw or averaged."""
    return float(max(np.nanmax(traces[metric][PLAIN]), np.nanmax(traces[f"{metric}_ema"][PLAIN])))


def outcome(
    traces: Mapping[str, np.ndarray],
    *,
    label: str,
    iteration: int | None,
    output: str,
    fit: int,
    stop_iteration: int | None,
    fits_needed: int,
    metric: str = "psnr",
) -> RuleOutcome:
    """Score one decision on recorded traces."""
    cap = traces[metric].shape[1]
    index = cap - 1 if iteration is None else int(iteration)
    raw, ema = traces[metric][fit], traces[f"{metric}_ema"][fit]
    value = float((ema if output == "ema" else raw)[index])
    return RuleOutcome(
        label=label, iteration=index, output=output, fit=fit, psnr=value, gap_db=oracle(traces, metric) - value,
        accuracy_raw=float(raw[index] / np.nanmax(raw)), accuracy_ema=float(ema[index] / np.nanmax(ema)),
        iterations_run=cap if stop_iteration is None else int(stop_iteration), fits_needed=fits_needed,
    )


def outcomes(rec: EvalRecord, *, metric: str = "psnr") -> list[RuleOutcome]:
    """Every watched rule's outcome on a record, plus the fixed count: plain DIP at the cap,
    raw (``fixed-raw``) and averaged (``fixed-ema``)."""
    rows = []
    for label, decision, fit, probe in zip(rec.labels, rec.decisions, rec.fits, rec.probes):
        rows.append(outcome(
            rec.traces, label=label, iteration=decision["iteration"], output=decision["output"], fit=fit,
            stop_iteration=decision["stop_iteration"] if decision["should_stop"] else None,
            fits_needed=2 if probe == "twin" else 1, metric=metric,
        ))
    for output in ("raw", "ema"):
        rows.append(outcome(rec.traces, label=f"fixed-{output}", iteration=rec.cap - 1, output=output, fit=PLAIN,
                            stop_iteration=None, fits_needed=1, metric=metric))
    return rows


def to_payload(rec: EvalRecord, **meta: Any) -> dict[str, Any]:
    """The JSON-able description of a record (traces kept apart), with ``meta`` added."""
    return {
        **meta,
        "cap": rec.cap,
        "labels": rec.labels,
        "decisions": rec.decisions,
        "fits": rec.fits,
        "probes": rec.probes,
        "returned_psnr": rec.returned_psnr,
        "seconds": rec.seconds,
        "seconds_per_iteration_twin": rec.seconds / rec.cap,
        "seconds_per_iteration_single": rec.seconds_per_iteration_single,
        "noise_level": rec.noise_level,
        "rho": rec.rho,
    }


def save_run(folder: Path, stem: str, rec: EvalRecord, **meta: Any) -> Path:
    """Write ``<stem>.json`` (description) and ``<stem>.npz`` (float32 traces) atomically;
    snapshots, when kept, go to ``snapshots/<stem>.npz``. Returns the JSON path."""
    import json

    from oscfast.files import atomic_write as atomic

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)

    traces = {name: values.astype(np.float32) for name, values in rec.traces.items()}
    atomic(folder / f"{stem}.npz", lambda stream: np.savez_compressed(stream, **traces))
    if rec.snapshots:
        (folder / "snapshots").mkdir(exist_ok=True)
        iterations = sorted(rec.snapshots)
        atomic(folder / "snapshots" / f"{stem}.npz", lambda stream: np.savez_compressed(
            stream, iterations=np.array(iterations), images=np.stack([rec.snapshots[i] for i in iterations])))
    payload = to_payload(rec, **meta)
    # the JSON last: its presence marks the run as finished (a rerun skips it)
    atomic(folder / f"{stem}.json", lambda stream: stream.write(json.dumps(payload, indent=1, default=str)), binary=False)
    return folder / f"{stem}.json"
