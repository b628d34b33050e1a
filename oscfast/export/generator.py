"""Export the generator of a finished restoration, fitted up to the returned iteration."""
from __future__ import annotations

import copy
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from oscfast.export.graph import ExportFormat, check_format, write_graph
from oscfast.fits import without_running_stats

if TYPE_CHECKING:  # pragma: no cover
    from oscfast.engine import GeneratorSnapshot

__all__ = ["FittedGenerator", "export_result"]


class FittedGenerator(nn.Module):
    """A DIP generator frozen at one iteration, with its input baked in; no arguments.

    ``forward()`` returns ``net(z_t)`` cropped to the image: the raw output of that
    iteration. BatchNorm layers use batch statistics as in training (DIP never uses running
    statistics; the engine's generators have none). The perturbed input z_t = z +
    reg_noise_std * eps_t of that iteration is a buffer (an ONNX initializer once exported),
    so the exported graph takes no input.

    Args:
        snapshot: :class:`~oscfast.engine.GeneratorSnapshot` from
            ``run_fits(..., snapshot_iteration=t)``.

    Shape:
        - Output: :math:`(1, C, H, W)`.
    """

    def __init__(self, snapshot: GeneratorSnapshot) -> None:
        super().__init__()
        net = without_running_stats(copy.deepcopy(snapshot.net).cpu().float())
        self.net = net.eval().requires_grad_(False)
        self.register_buffer("net_input", snapshot.net_input.detach().cpu().float().contiguous())
        self.iteration = snapshot.iteration
        self.top, self.left = snapshot.top, snapshot.left
        self.height, self.width = snapshot.height, snapshot.width

    def forward(self) -> torch.Tensor:
        out = self.net(self.net_input)
        return out[:, :, self.top : self.top + self.height, self.left : self.left + self.width]


def export_result(result: Any, path: str | Path, *, format: ExportFormat = "onnx") -> Path:
    """Export the generator of a finished restoration, fitted up to ``result.stop_iteration``.

    Running the exported graph (no inputs) gives the raw output of that iteration,
    ``result.raw_image`` (as (1, C, H, W) instead of HxWxC), also when the result returned
    the exponential average (``output="ema"``), which no single network state produces, and
    before the task's finishing (clipping, known pixels put back). The run keeps the returned
    fit's state at its last sync before that iteration (``result.resume_point``: weights, Adam
    state, reg-noise state); the export continues that fit alone, eagerly, for the few
    iterations up to ``stop_iteration`` (fewer than ``sync_every``). Without a resume point (a
    result resumed from a checkpoint after that iteration, or one made without) the fit is
    re-run alone from iteration 0 with the same task, configuration and seed (with the twin
    probe the returned fit is the plain one, which does not depend on its twin). CPU runs
    reproduce the result exactly either way; on CUDA the eager steps are not bitwise those of
    the run (a graph, vmap over the fits), so the rebuilt generator is compared with the result
    and the export is refused when they differ by more than ``1e-3`` (a warning is given above
    ``1e-4``).

    Args:
        result: what :func:`oscfast.restore` returned.
        path: file to write (parent folders are created).
        format: ``"onnx"`` or ``"pt2"`` (``torch.export.load(path).module()()``).

    Returns:
        The path written.

    Raises:
        ValueError: unknown format, a result that does not carry its task and engine options
            (not made by :func:`oscfast.restore`), or a rebuild that does not reproduce it.

    Example:
        >>> result = restore("noisy.png", task="denoise")  # doctest: +SKIP
        >>> export_result(result, "generator.onnx")  # doctest: +SKIP
    """
    from dataclasses import replace

    from oscfast.engine import FitSpec, Watch, run_fits
    from oscfast.plan import plan_restoration

    fmt = check_format(format)
    if result.task_object is None or result.engine_options is None:
        raise ValueError(
            "this Restoration has no task_object/engine_options (not made by oscfast.restore); "
            "export_result needs them to rebuild the generator"
        )
    plan = plan_restoration(result.task_object, result.config, result.stop_config, seed=result.seed)
    returned: FitSpec = plan.fits[plan.watch.fit]
    options = replace(result.engine_options, cuda_graph=False, progress=False, check_memory=False,
                      keep_resume_points=False)
    point = getattr(result, "resume_point", None)
    if point is not None and point.iteration > int(result.stop_iteration):
        point = None
    record = run_fits([returned], result.config, [Watch(plan.watch.rule)], options=options,
                      snapshot_iteration=int(result.stop_iteration), resume_from=point)
    snapshot = record.generator_snapshot
    assert snapshot is not None
    generator = FittedGenerator(snapshot)
    with torch.no_grad():
        rebuilt = generator()
    expected = torch.from_numpy(np.ascontiguousarray(result.raw_image)).permute(2, 0, 1)[None]
    if rebuilt.shape != expected.shape:
        raise ValueError(
            f"the rebuilt generator outputs {tuple(rebuilt.shape)}, the result's raw image is "
            f"{tuple(expected.shape)}: was the result changed after restore()?"
        )
    drift = float((rebuilt - expected).abs().max())
    if drift > 1e-3:
        raise ValueError(
            f"the rebuilt generator differs from result.raw_image by up to {drift:.2e} "
            f"(device {result.device}, precision {result.engine_options.precision}): the run could not be reproduced"
        )
    if drift > 1e-4:
        warnings.warn(
            f"the rebuilt generator differs from result.raw_image by up to {drift:.2e} "
            f"(device {result.device}, precision {result.engine_options.precision})",
            RuntimeWarning,
            stacklevel=2,
        )
    metadata = {
        "oscfast.graph": "fitted_generator",
        "oscfast.iteration": str(snapshot.iteration),
        "oscfast.rebuilt_from_iteration": str(point.iteration if point is not None else 0),
        "oscfast.task": str(result.task),
        "oscfast.seed": str(result.seed),
        "oscfast.image_shape": ",".join(str(v) for v in expected.shape[1:]),
        "oscfast.max_abs_diff_to_result": f"{drift:.3e}",
    }
    return write_graph(generator, (), path, fmt, metadata, input_names=(), output_names=("image",))
