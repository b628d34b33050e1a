"""Writing a module as ONNX (``torch.onnx.export(..., dynamo=True)``) or a ``torch.export``
program (``.pt2``), with metadata; shared by the stopper and the generator exports."""
from __future__ import annotations

import json
import logging
import operator
import warnings
from pathlib import Path
from typing import Literal

import torch
from torch import nn

__all__ = ["ExportFormat", "FORMATS", "check_format", "check_image_shape", "write_graph"]

ExportFormat = Literal["onnx", "pt2"]
FORMATS: tuple[str, ...] = ("onnx", "pt2")


def check_format(format: str) -> str:
    """The format, or ValueError naming the valid ones."""
    if format not in FORMATS:
        raise ValueError(f"unknown export format {format!r}; expected one of {list(FORMATS)}")
    return format


def check_image_shape(image_shape: tuple[int, ...]) -> tuple[int, int, int]:
    """(C, H, W) as positive ints, or ValueError."""
    try:
        shape = tuple(operator.index(v) for v in image_shape)
    except TypeError:
        raise ValueError(f"image_shape must be (C, H, W) integers, got {image_shape!r}") from None
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"image_shape must be (C, H, W) with positive sizes, got {image_shape!r}")
    return shape  # type: ignore[return-value]


def write_graph(
    module: nn.Module,
    args: tuple[torch.Tensor, ...],
    path: str | Path,
    fmt: str,
    metadata: dict[str, str],
    *,
    input_names: tuple[str, ...],
    output_names: tuple[str, ...],
) -> Path:
    """Export ``module`` called with ``args`` to ``path`` in format ``fmt``; the metadata goes to
    ONNX ``metadata_props`` or the ``.pt2`` extra file ``oscfast.json``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    module = module.eval()
    if fmt == "pt2":
        program = torch.export.export(module, args, strict=False)
        torch.export.save(program, path, extra_files={"oscfast.json": json.dumps(metadata)})
        return path
    # the exporter's own chatter (deprecations inside torch, "torchvision is not installed")
    # is not the user's business
    registry_log = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = registry_log.level
    registry_log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            program = torch.onnx.export(
                module, args, dynamo=True, input_names=list(input_names), output_names=list(output_names),
                external_data=False, verbose=False,
            )
    finally:
        registry_log.setLevel(level)
    assert program is not None
    program.model.metadata_props.update(metadata)
    program.save(path, external_data=False)
    return path
