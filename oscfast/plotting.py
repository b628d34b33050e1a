"""Plots of a run's curves (matplotlib, headless)."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from oscfast.api import Restoration

__all__ = ["plot_history"]


def plot_history(result: Restoration, path: str | Path) -> Path:
    """Write a PNG with P_t, its curvature and, when recorded, the PSNR curves.

    The returned iteration is marked with a vertical line, the stop of the online rule with
    a dotted one.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    history = result.history
    panels = [("P_t (pseudo-noise absorbed)", {"P_t": history.p})] if history.p.size else []
    if history.curvature.size:
        panels.append(("curvature of smoothed P", {"kappa": history.curvature}))
    if history.psnr_raw is not None:
        panels.append(("PSNR (dB)", {"raw output": history.psnr_raw, "averaged output": history.psnr_ema}))
    panels.append(("loss", {"loss": history.loss}))
    figure, axes = plt.subplots(len(panels), 1, figsize=(7, 2.2 * len(panels)), sharex=True, squeeze=False)
    for axis, (title, curves) in zip(axes[:, 0], panels):
        for label, values in curves.items():
            if values is not None:
                axis.plot(np.arange(values.size), values, label=label, linewidth=1)
        axis.axvline(result.stop_iteration, color="tab:red", linewidth=1, label=f"returned: {result.stop_iteration}")
        if result.osc_stop_iteration is not None:
            axis.axvline(result.osc_stop_iteration, color="tab:gray", linestyle=":", linewidth=1, label="rule stopped")
        axis.set_title(title, fontsize=9)
        if title == "loss":
            axis.set_yscale("log")
        axis.legend(fontsize=7, loc="best")
    axes[-1, 0].set_xlabel("iteration")
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path
