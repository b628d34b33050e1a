"""Published DIP configurations per task (reference-configs.md sections 3-6)."""
from __future__ import annotations

from dataclasses import replace

from oscfast.config import DIPConfig
from oscfast.models import (
    DENOISE_SPEC,
    INPAINT_KATE_SPEC,
    INPAINT_LIBRARY_SPEC,
    INPAINT_VASE_SPEC,
    JPEG_SPEC,
    RESTORE_KATE_SPEC,
)

__all__ = ["PRESETS", "default_preset", "get_preset", "preset_names", "preset_table"]

_F16 = DIPConfig(net=DENOISE_SPEC, learning_rate=0.01, reg_noise_std=1 / 30, max_iterations=3000)

#: task -> preset name -> configuration
PRESETS: dict[str, dict[str, DIPConfig]] = {
    "denoise": {"f16": _F16},
    "jpeg": {
        "snail": DIPConfig(net=JPEG_SPEC, learning_rate=0.01, reg_noise_std=1 / 30, max_iterations=2400),
        "f16": _F16,
    },
    "super_resolution": {
        "x4": replace(_F16, reg_noise_std=0.03, max_iterations=2000),
        "x8": replace(_F16, reg_noise_std=0.05, max_iterations=4000),
    },
    "inpaint": {
        "kate": DIPConfig(net=INPAINT_KATE_SPEC, reg_noise_std=0.03, max_iterations=6001),
        "vase": DIPConfig(net=INPAINT_VASE_SPEC, input_kind="meshgrid", reg_noise_std=0.03, max_iterations=5001),
        "library": DIPConfig(net=INPAINT_LIBRARY_SPEC, reg_noise_std=0.0, max_iterations=3001),
    },
    "restore_pixels": {
        "barbara": DIPConfig(net=DENOISE_SPEC, learning_rate=0.001, reg_noise_std=0.03, max_iterations=11000),
        "kate": DIPConfig(net=RESTORE_KATE_SPEC, learning_rate=0.01, reg_noise_std=0.0, max_iterations=1000),
    },
    # no published deblurring experiment: the denoising configuration, documented as ours
    "deblur": {"f16": _F16},
    "custom": {"f16": _F16},
}

def preset_table(task: str) -> dict[str, DIPConfig]:
    """The presets of a registered task: its own, else those of the nearest registered base
    class that has some (a task registered as a subclass of Denoise gets the denoising presets),
    else the custom task's.

    Raises:
        ValueError: an unknown task name.
    """
    from oscfast.tasks import TASKS, task_class

    names_by_class = {cls: name for name, cls in TASKS.items()}
    for cls in task_class(task).__mro__:
        name = names_by_class.get(cls)
        if name in PRESETS:
            return PRESETS[name]
    return PRESETS["custom"]


def preset_names(task: str) -> list[str]:
    """Names of the presets of ``task``."""
    return sorted(preset_table(task))


def get_preset(task: str, name: str | None = None, *, factor: int | None = None) -> DIPConfig:
    """The configuration of preset ``name`` (the task's default when None).

    For super-resolution the default follows the factor: x8 for factor >= 8, else x4.

    Raises:
        ValueError: unknown task or preset, naming the valid ones.
    """
    table = preset_table(task)
    if name is None:
        name = default_preset(task, factor=factor)
        if name not in table:  # a registered task naming a preset its table lacks
            raise ValueError(f"task {task!r} names the default preset {name!r}, which is not one of {sorted(table)}")
    if name not in table:
        raise ValueError(f"unknown preset {name!r} for task {task!r}; expected one of {sorted(table)}")
    return table[name]


def default_preset(task: str, *, factor: int | None = None) -> str:
    """The preset a task uses when none is named (its class's, :attr:`oscfast.tasks.Task.default_preset`;
    for super-resolution x8 from factor 8 on, else x4)."""
    from oscfast.tasks import task_class

    return task_class(task).preset_for({"factor": factor})
