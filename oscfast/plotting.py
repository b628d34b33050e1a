"""Plots of a run's curves (matplotlib, headless)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np


class Restoration(Protocol):
    """What the plots read of an :class:`oscfast.result.Restoration` (a protocol, so that this
    module stays below the result types and imports nothing of the package)."""

    history: Any
    rule: str
    probe: str
    stop_iteration: int
    rule_stop_iteration: int | None
    output: str

__all__ = ["Panel", "decision_window", "history_panels", "plot_history", "pyplot", "save_figure"]


@dataclass(frozen=True)
class Panel:
    """One panel of :func:`plot_history`.

    Attributes:
        title: the panel's title.
        curves: label -> one value per iteration.
        xlim: the iterations shown (None: the whole run).
        log: a logarithmic y axis.
    """

    title: str
    curves: dict[str, np.ndarray]
    xlim: tuple[int, int] | None = None
    log: bool = False

    def ylim(self) -> tuple[float, float] | None:
        """The y range of the curves' finite values inside ``xlim`` with a 10% margin (None
        without a window or values): where the rule's minimum is visible."""
        if self.xlim is None:
            return None
        lo, hi = self.xlim
        values = np.concatenate([np.asarray(v[lo:hi], dtype=np.float64) for v in self.curves.values()])
        values = values[np.isfinite(values)]
        if values.size == 0:
            return None
        bottom, top = float(values.min()), float(values.max())
        margin = 0.1 * (top - bottom) or 0.1 * abs(top) or 1.0
        return bottom - margin, top + margin


def decision_window(chosen: int, stopped: int, length: int) -> tuple[int, int]:
    """The iterations around a rule's decision: from ``chosen - span`` to ``stopped + span / 2``
    with ``span = max(50, stopped - chosen)``, inside ``[0, length)``.

    Example:
        >>> decision_window(800, 900, 3000)
        (700, 950)
    """
    span = max(50, stopped - chosen)
    return max(0, chosen - span), min(length, stopped + span // 2)


def history_panels(result: Restoration) -> list[Panel]:
    """The panels :func:`plot_history` draws: the rule's own scores, the same zoomed to the
    iterations around its decision (the whole-run scale hides the minimum: the risk falls by
    orders of magnitude before it), then P, the PSNRs (with a reference) and the loss."""
    history = result.history
    panels: list[Panel] = []
    scores = {label: values for label, values in history.scores.items() if values.size and np.isfinite(values).any()}
    if scores:
        panels.append(Panel(f"the score of rule '{result.rule}'", scores))
        length = max(values.size for values in scores.values())
        stopped = result.rule_stop_iteration if result.rule_stop_iteration is not None else length
        window = decision_window(result.stop_iteration, min(stopped, length), length)
        # the smoothed scores decide where there are some; thresholds are on another scale
        deciding = {label: values for label, values in scores.items() if "-mean" in label} or {
            label: values for label, values in scores.items() if not label.startswith("rise needed")}
        # the returned output's curve alone: the other output's sits elsewhere and flattens it
        deciding = {label: values for label, values in deciding.items() if label.endswith(f"({result.output})")} or deciding
        if deciding and window[1] - window[0] > 1:
            panels.append(Panel(f"the score of rule '{result.rule}' around its choice", deciding, xlim=window))
    if history.p is not None:
        name = "P_twin = P_B - P_A" if result.probe == "twin" else "P_t"
        curves = {name: history.p}
        if history.p_ema is not None:
            curves[f"{name} (averaged output)"] = history.p_ema
        panels.append(Panel("pseudo-noise absorbed", curves))
    if history.psnr_raw is not None:
        panels.append(Panel("PSNR (dB)", {"raw output": history.psnr_raw, "averaged output": history.psnr_ema}))
    loss = {"loss": history.loss}
    if history.loss_ema is not None:
        loss["loss (averaged output)"] = history.loss_ema
    panels.append(Panel("loss", loss, log=True))
    return panels


def plot_history(result: Restoration, path: str | Path) -> Path:
    """Write a PNG with the rule's score (whole run, and zoomed to its decision), P, the PSNRs
    (when recorded) and the loss.

    The returned iteration is marked with a solid line, the iteration at which the rule fired
    with a dotted one.
    """
    plt = pyplot()
    panels = history_panels(result)
    figure, axes = plt.subplots(len(panels), 1, figsize=(7, 2.2 * len(panels)), squeeze=False)
    for axis, panel in zip(axes[:, 0], panels):
        for label, values in panel.curves.items():
            if values is not None:
                axis.plot(np.arange(values.size), values, label=label, linewidth=1)
        axis.axvline(result.stop_iteration, color="tab:red", linewidth=1, label=f"returned: {result.stop_iteration} ({result.output})")
        if result.rule_stop_iteration is not None:
            axis.axvline(result.rule_stop_iteration, color="tab:gray", linestyle=":", linewidth=1, label=f"{result.rule} fired")
        axis.set_title(panel.title, fontsize=9)
        if panel.xlim is not None:
            axis.set_xlim(*panel.xlim)
            limits = panel.ylim()
            if limits is not None:
                axis.set_ylim(*limits)
        if panel.log:
            axis.set_yscale("log")
        axis.legend(fontsize=7, loc="best")
        axis.set_xlabel("iteration", fontsize=8)
    return save_figure(figure, path, dpi=110)


def pyplot() -> Any:
    """matplotlib's pyplot on the headless Agg backend (unless the caller chose another)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def save_figure(figure: Any, path: str | Path, *, dpi: int = 100) -> Path:
    """Lay out ``figure``, write it to ``path`` (folders created) and close it."""
    plt = pyplot()
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=dpi)
    plt.close(figure)
    return path
