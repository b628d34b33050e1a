"""What a restoration gives back: :class:`Restoration` with its :class:`History`, and the
:class:`Progress` an application sees at each sync; made from an engine record by
:func:`to_restoration`."""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from oscfast import io
from oscfast.config import DIPConfig, StopConfig
from oscfast.engine import EngineOptions, ResumePoint, RunRecord, SyncInfo
from oscfast.level import PSNREstimate, estimate_psnr, level_interval
from oscfast.metrics import psnr
from oscfast.plan import RunPlan
from oscfast.tasks import Task

__all__ = ["History", "OutputChoice", "Progress", "Restoration", "progress_of", "to_restoration"]

OutputChoice = Literal["auto", "ema", "raw"]


@dataclass
class History:
    """Per-iteration curves of a run (index = iteration).

    Attributes:
        loss, loss_ema: loss of the returned fit's raw and averaged output.
        p, p_ema: the probe's P as the rule reads it (inline: P_t of the returned fit; twin:
            P_twin = P_B - P_A, method.md section 8); None without a probe.
        psnr_raw, psnr_ema: PSNR of the returned fit's raw and averaged output after the
            task's final step (known pixels put back), only with ``reference=``.
        scores: the rule's own curves by label (e.g. its risk or curvature).
        fits: every recorded signal of every fit, name -> (fits, iterations); for the twin,
            row 0 is the returned fit (plain DIP) and row 1 the fit on y + n.
    """

    loss: np.ndarray
    loss_ema: np.ndarray | None = None
    p: np.ndarray | None = None
    p_ema: np.ndarray | None = None
    psnr_raw: np.ndarray | None = None
    psnr_ema: np.ndarray | None = None
    scores: dict[str, np.ndarray] = field(default_factory=dict)
    fits: dict[str, np.ndarray] = field(default_factory=dict, repr=False)

    def as_dict(self) -> dict[str, np.ndarray]:
        """The curves that exist, by name (scores prefixed ``score:``)."""
        curves = {k: v for k, v in self.__dict__.items() if isinstance(v, np.ndarray)}
        curves.update({f"score:{label}": values for label, values in self.scores.items()})
        return curves


@dataclass
class Restoration:
    """The result of :func:`restore`.

    Attributes:
        image: restored image, float32 HxWxC in [0, 1] (C = 1 for grayscale).
        stop_iteration: the iteration whose output was returned.
        iterations_run: how many iterations ran.
        history: per-iteration curves.
        task: the task name.
        rule: the stop rule that decided.
        probe: ``"twin"``, ``"inline"`` or ``"none"``.
        stop_reason: the rule's name when it fired, ``"cap"`` when the run reached its cap,
            ``"interrupted"`` when it was cancelled or interrupted (Ctrl-C) first.
        output: which image was returned: ``"ema"`` (exponential average) or ``"raw"``.
        rule_iteration: the iteration the rule chose (None if it chose nothing).
        rule_stop_iteration: iterations seen when the rule fired (None if it never did).
        raw_image, ema_image: both images at ``stop_iteration`` (before ``finalize``).
        last_image: the raw output of the returned fit at the last iteration run.
        psnr: PSNR of ``image`` against ``reference`` when one was given.
        estimated_psnr: the rule's own estimate of the PSNR of ``image`` (the middle of
            ``estimated_psnr_interval``), shown only where it has been measured to be right:
            the twin probe's risk of white noise in image space (denoising), a positive risk,
            and an interval at most ``StopConfig.max_estimate_width_db`` wide; None elsewhere,
            with the reason in ``estimated_psnr_reason`` (docs/twin-probe.md, "The estimate").
        noise_level: the measurement noise level the risk rule used at the end (the given or
            estimated one, cut to the run's own bound: :class:`oscfast.stopping.RiskRule`;
            None for other rules).
        seconds: wall time of the loop.
        device: where it ran.
        config, stop_config: the configurations used.
        noise_model: the noise model of a denoising run (``"gaussian"``, ``"poisson"``,
            ``"speckle"``, ``"impulse"``; its data term, probe and rule: README "Noise models");
            None for the other tasks.
        noise_parameter: that model's parameter ``c`` as used (estimated unless given; None for
            ``"gaussian"``, whose level is ``noise_level``).
        noise_confidence: with ``noise="auto"``, how sure the pick was (0: a tie between two
            models, 1: clear; :func:`oscfast.noise_models.detect_noise`); None when named.
        fit_iterations: the iterations each fit trained: ``(fit A,)``, or for the twin ``(fit
            A, fit B)``, where fit B's count starts at ``StopConfig.twin_start``.
    """

    image: np.ndarray
    stop_iteration: int
    iterations_run: int
    history: History
    task: str
    rule: str
    probe: str
    stop_reason: str
    output: str
    rule_iteration: int | None
    rule_stop_iteration: int | None
    raw_image: np.ndarray
    ema_image: np.ndarray
    last_image: np.ndarray
    psnr: float | None
    estimated_psnr: float | None
    noise_level: float | None
    seconds: float
    device: str
    config: DIPConfig
    stop_config: StopConfig
    task_object: Task | None = field(default=None, repr=False)
    engine_options: EngineOptions | None = field(default=None, repr=False)
    seed: int = 0
    #: the returned fit's state at its last sync before stop_iteration (Restoration.export continues from it)
    resume_point: ResumePoint | None = field(default=None, repr=False)
    noise_model: str | None = None
    noise_parameter: float | None = None
    noise_confidence: float | None = None
    #: the PSNRs (dB) the rule's risk gives over the level's interval (None: unbounded or no estimate)
    estimated_psnr_interval: tuple[float, float] | None = None
    #: why ``estimated_psnr`` is None (None when it is shown)
    estimated_psnr_reason: str | None = None
    fit_iterations: tuple[int, ...] = ()

    def save(self, path: str | Path, *, bit_depth: int = 8) -> Path:
        """Write the restored image (PNG/JPEG/TIFF by suffix)."""
        return io.save_image(path, self.image, bit_depth=bit_depth)

    def plot(self, path: str | Path) -> Path:
        """Plot the rule's score, P, the loss and (with a reference) the PSNRs, with the
        returned iteration and the rule's stop marked."""
        from oscfast.plotting import plot_history

        return plot_history(self, path)

    def export(self, path: str | Path, **options: Any) -> Path:
        """Export the fitted generator with its fixed input (ONNX by default) so that running
        it reproduces the raw image of ``stop_iteration``; see :mod:`oscfast.export`."""
        from oscfast.export import export_result

        return export_result(self, path, **options)

    @property
    def seconds_per_iteration(self) -> float:
        """Mean wall time per iteration."""
        return self.seconds / max(1, self.iterations_run)


@dataclass(frozen=True)
class Progress:
    """What a restoration shows at each sync (the progress bar's values).

    Attributes:
        iteration: iterations run so far.
        loss: the returned fit's newest loss.
        p: the probe's newest P (P_twin for the twin probe), None without a probe.
        choice: the iteration the rule would return now (None while it has no choice).
        rule: the rule's name.
        stopping: the rule has fired (the run ends at this sync).
    """

    iteration: int
    loss: float
    p: float | None
    choice: int | None
    rule: str
    stopping: bool


def to_restoration(
    record: RunRecord,
    plan: RunPlan,
    task: Task,
    task_name: str,
    output: OutputChoice,
    reference: torch.Tensor | None,
    config: DIPConfig,
    stop_config: StopConfig,
    engine: EngineOptions,
    seed: int,
) -> Restoration:
    """Turn an engine record of a :class:`RunPlan` into the user's :class:`Restoration`."""
    decision = record.decision
    kind = decision.output if output == "auto" else output
    chosen = record.raw_image if kind == "raw" else record.ema_image
    cpu_task = task if all(t.device.type == "cpu" for t in task.buffers()) else None
    with torch.no_grad():
        final = (cpu_task or _cpu_copy(task)).finalize(chosen).clamp_(0, 1)
    image = io.tensor_to_image(final)
    score = None
    if reference is not None:
        score = psnr(io.tensor_to_image(reference), image)
    stop_iteration = decision.iteration if decision.iteration is not None else record.iterations_run - 1
    watch = plan.watch
    traces = record.traces
    fit = watch.fit

    def probe_series(name: str) -> np.ndarray | None:
        if watch.probe is None or name not in traces:
            return None
        series = traces[name][watch.probe]
        return series - traces[name][watch.base] if watch.base is not None else series

    rule = record.rules[record.driver]
    estimate = _psnr_estimate(rule, task, kind, stop_config)
    level = getattr(rule, "level", None)
    fired = decision.should_stop and decision.stop_iteration is not None
    reason = "interrupted" if record.interrupted else (plan.rule if fired else "cap")
    return Restoration(
        image=image,
        stop_iteration=stop_iteration,
        iterations_run=record.iterations_run,
        history=History(
            loss=traces["loss"][fit],
            loss_ema=traces["loss_ema"][fit] if "loss_ema" in traces else None,
            p=probe_series("p"),
            p_ema=probe_series("p_ema"),
            psnr_raw=traces["psnr"][fit] if "psnr" in traces else None,
            psnr_ema=traces["psnr_ema"][fit] if "psnr_ema" in traces else None,
            scores=rule.scores(),
            fits=traces,
        ),
        task=task_name,
        rule=plan.rule,
        probe=plan.probe,
        stop_reason=reason,
        output=kind,
        rule_iteration=decision.iteration,
        rule_stop_iteration=decision.stop_iteration,
        raw_image=io.tensor_to_image(record.raw_image),
        ema_image=io.tensor_to_image(record.ema_image),
        last_image=io.tensor_to_image(record.last_images[fit]),
        psnr=score,
        estimated_psnr=estimate.value,
        noise_level=level if level is not None else plan.noise_level,
        seconds=record.seconds,
        device=str(engine.device),
        config=config,
        stop_config=stop_config,
        task_object=task,
        engine_options=engine,
        seed=seed,
        resume_point=record.resume_point,
        noise_model=None if task.noise_choice is None else task.noise_choice.kind,
        noise_parameter=None if task.noise_choice is None else task.noise_choice.parameter,
        noise_confidence=None if task.noise_choice is None else task.noise_choice.confidence,
        estimated_psnr_interval=estimate.interval,
        estimated_psnr_reason=estimate.reason,
        fit_iterations=record.fit_iterations,
    )


def _psnr_estimate(rule: Any, task: Task, output: str, stop: StopConfig) -> PSNREstimate:
    """The driving rule's estimate of the returned image's PSNR, or why there is none
    (:func:`oscfast.level.estimate_psnr`; docs/twin-probe.md, "The estimate")."""
    chosen_terms = getattr(rule, "chosen_terms", None)
    level = getattr(rule, "level", None)
    if chosen_terms is None or getattr(rule, "error_scale", None) is None or level is None:
        return PSNREstimate(None, None, f"rule {rule.name!r} gives no error estimate (only the twin probe's risk "
                                        "of noise of a positive level does)")
    caveat = getattr(type(task), "estimate_caveat", None)
    if caveat:
        return PSNREstimate(None, None, caveat)
    terms = chosen_terms()
    if terms is None:
        return PSNREstimate(None, None, "the rule chose no iteration")
    if terms[2] != output:
        return PSNREstimate(None, None, f"the returned output ({output}) is not the one the rule scored ({terms[2]})")
    interval = level_interval(level, given=stop.noise_level is not None and rule.level_source == "given",
                              tolerance=stop.level_tolerance, estimated_range=stop.estimated_level_range)
    return estimate_psnr(terms[0], terms[1], interval, rho=rule.rho, max_width_db=stop.max_estimate_width_db)


def progress_of(info: SyncInfo, plan: RunPlan) -> Progress:
    """The :class:`Progress` of a sync of a run of ``plan``."""
    watch = plan.watch
    p = None
    if watch.probe is not None and "p" in info.latest:
        p = float(info.latest["p"][watch.probe] - (info.latest["p"][watch.base] if watch.base is not None else 0.0))
    decision = info.decisions[0]
    return Progress(
        iteration=info.iteration, loss=float(info.latest["loss"][watch.fit]), p=p, choice=decision.iteration,
        rule=plan.rule, stopping=decision.should_stop,
    )


def _cpu_copy(task: Task) -> Task:
    return copy.deepcopy(task).to("cpu")
