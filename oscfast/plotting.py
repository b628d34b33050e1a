"""Plots of a run's curves (matplotlib, headless)."""
from __future__ import annotations

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

__all__ = ["history_panels", "plot_history", "pyplot", "save_figure"]


def history_panels(result: Restoration) -> list[tuple[str, dict[str, np.ndarray]]]:
    """The panels :func:`plot_history` draws: the rule's own scores first, then P, the PSNRs
    (with a reference) and the loss; each a title and labelled curves."""
    history = result.history
    panels: list[tuple[str, dict[str, np.ndarray]]] = []
    scores = {label: values for label, values in history.scores.items() if values.size and np.isfinite(values).any()}
    if scores:
        panels.append((f"the score of rule '{result.rule}'", scores))
    if history.p is not None:
        name = "P_twin = P_B - P_A" if result.probe == "twin" else "P_t"
        curves = {name: history.p}
        if history.p_ema is not None:
            curves[f"{name} (averaged output)"] = history.p_ema
        panels.append(("pseudo-noise absorbed", curves))
    if history.psnr_raw is not None:
        panels.append(("PSNR (dB)", {"raw output": history.psnr_raw, "averaged output": history.psnr_ema}))
    loss = {"loss": history.loss}
    if history.loss_ema is not None:
        loss["loss (averaged output)"] = history.loss_ema
    panels.append(("loss", loss))
    return panels


def plot_history(result: Restoration, path: str | Path) -> Path:
    """Write a PNG with the rule's score, P, the PSNRs (when recorded) and the loss.

    The returned iteration is marked with a solid line, the iteration at which the rule fired
    with a dotted one.
    """
    plt = pyplot()
    panels = history_panels(result)
    figure, axes = plt.subplots(len(panels), 1, figsize=(7, 2.2 * len(panels)), sharex=True, squeeze=False)
    for axis, (title, curves) in zip(axes[:, 0], panels):
        for label, values in curves.items():
            if values is not None:
                axis.plot(np.arange(values.size), values, label=label, linewidth=1)
        axis.axvline(result.stop_iteration, color="tab:red", linewidth=1, label=f"returned: {result.stop_iteration} ({result.output})")
        if result.rule_stop_iteration is not None:
            axis.axvline(result.rule_stop_iteration, color="tab:gray", linestyle=":", linewidth=1, label=f"{result.rule} fired")
        axis.set_title(title, fontsize=9)
        if title == "loss":
            axis.set_yscale("log")
        axis.legend(fontsize=7, loc="best")
    axes[-1, 0].set_xlabel("iteration")
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
