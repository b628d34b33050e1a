"""Estimate the memory of a DIP run before allocating it, and refuse runs that cannot fit."""
from __future__ import annotations

import math
import os

import torch

from oscfast.config import DIPConfig
from oscfast.models import build_net

__all__ = ["TooLargeError", "estimate_run_bytes", "available_bytes", "check_memory"]

_FLOAT = 4
#: what a forward + backward pass holds per element of the forward's layer outputs: autograd
#: saves 1.2-1.5x of them and the peak during backward adds workspace and gradients
#: (bench/memory_check.py on CPU at 64-256 px: the estimate is within 25% of the measured
#: peak with 1.75; 3.0, the factor before, overestimated 256 px twice over; re-measured with
#: the rings kept for the driving fit only, bench/results/memory-cpu2.md)
_ACTIVATION_FACTOR = 1.75


class TooLargeError(ValueError, MemoryError):
    """The run would not fit in the device's memory."""


def _activation_elements(config: DIPConfig, output_channels: int, height: int, width: int) -> int:
    """Sum of the output sizes of every leaf module for one forward pass, counted on the
    meta device (no memory is touched)."""
    with torch.device("meta"):
        net = build_net(config.net, output_channels)
        total = 0

        def count(_module: torch.nn.Module, _inputs: object, output: torch.Tensor) -> None:
            nonlocal total
            if isinstance(output, torch.Tensor):
                total += output.numel()

        hooks = [m.register_forward_hook(count) for m in net.modules() if not list(m.children())]
        net(torch.empty(1, config.net.input_channels, height, width))
        for hook in hooks:
            hook.remove()
        parameters = sum(p.numel() for p in net.parameters())
    return total, parameters


def estimate_run_bytes(
    output_shape: tuple[int, int, int],
    config: DIPConfig,
    *,
    ring_size: int,
    num_fits: int = 1,
    window: int = 0,
    change_lag: int = 0,
    ring_fits: int = 1,
    cuda_graph: bool = False,
    resume_points: int = 0,
) -> int:
    """Bytes a run of ``num_fits`` fits needs.

    Per fit: the activations (forward + backward), parameters with their gradient and two
    Adam moments, the average, the newest output and the step's images, the ES-WMV window
    (``window`` outputs plus float64 sums), the plateau ring (``change_lag`` outputs), the
    input and the trace. Per fit that keeps a ring (``ring_fits``: each restoration's
    driving fit): ``ring_size`` raw and averaged outputs. With ``cuda_graph``, what the
    capture's warm-up saves to undo itself (:class:`oscfast.engine.device._WarmupUndo`): the weights
    and Adam state, the image-sized state, and a few ring rows. ``resume_points`` host copies
    of one fit's weights, Adam moments and average (count them where the host is the device).

    Args:
        output_shape: (C, H, W) of the image.
        config: the network and iteration cap.
        ring_size: outputs per ring.
        num_fits: fits stepped together.
        window, change_lag: ES-WMV window and plateau lag (0: not computed).
        ring_fits: fits that keep rings.
        cuda_graph: the step is captured in a CUDA graph.
        resume_points: resume points kept (in all).

    Returns:
        Bytes.
    """
    channels, height, width = output_shape
    canvas_h = config.net.canvas_side(height)
    canvas_w = config.net.canvas_side(width)
    activations, parameters = _activation_elements(config, channels, canvas_h, canvas_w)
    image = channels * height * width
    # the step's images (targets, noise, z, eps, ...), the average, the newest output; ES-WMV's float64 sums
    state_images = 9 + (4 if window else 0)
    per_fit = (
        _ACTIVATION_FACTOR * activations
        + 4 * parameters
        + (state_images + window + change_lag) * image
        + 3 * config.net.input_channels * canvas_h * canvas_w
        + 12 * config.max_iterations
    )
    rings = ring_fits * 2 * ring_size * image
    capture = 0
    if cuda_graph:
        # weights + 2 moments, the average, the newest output, ES sums; rows of the rings
        capture = num_fits * (3 * parameters + state_images * image) + 4 * (2 * ring_fits + 2 * num_fits) * image
    points = resume_points * (3 * parameters + image)
    return int((num_fits * per_fit + rings + capture + points) * _FLOAT)


def available_bytes(device: torch.device) -> int:
    """Free memory on ``device`` (MemAvailable for the CPU)."""
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES"))


def check_memory(
    needed: int, device: torch.device, *, headroom: float = 0.9, shape_hw: tuple[int, int] | None = None
) -> None:
    """Raise :class:`TooLargeError` when ``needed`` bytes exceed the free memory.

    ``shape_hw``, the output's height and width, lets the message name the largest image of
    the same aspect that would fit (the estimate grows about linearly with the pixel count).

    Raises:
        TooLargeError: with the estimate and what is free, in GiB.
    """
    free = available_bytes(device)
    if needed > headroom * free:
        hint = ""
        if shape_hw is not None:
            scale = math.sqrt(headroom * free / needed)
            height, width = (max(1, int(side * scale) // 32 * 32) for side in shape_hw)
            hint = f"; the largest image of this aspect that fits is about {height}x{width} px"
        raise TooLargeError(
            f"this image is too large for memory on {device.type}: the run needs about "
            f"{needed / 2**30:.1f} GiB, {free / 2**30:.1f} GiB are free{hint}; use a smaller image, "
            "fewer iterations (the ring buffer grows with the stop window) or another device"
        )
