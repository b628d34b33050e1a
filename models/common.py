"""Building blocks shared by the DIP generators: conv, activation, norm and crop-concat.

The conv/activation conventions follow reference-configs.md section 2 (the upstream
``models/common.py``): padding ``(k - 1) // 2``, reflection padding as part of the conv,
stride-2 downsampling either inside the conv or as a pooling layer after a stride-1 conv.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, TypeVar

import torch
from torch import nn

__all__ = [
    "ACT_FUNS",
    "ActFun",
    "DOWNSAMPLE_MODES",
    "DownsampleMode",
    "NORMS",
    "Norm",
    "PAD_MODES",
    "PadMode",
    "UPSAMPLE_MODES",
    "UpsampleMode",
    "activation",
    "check_choice",
    "conv",
    "center_crop",
    "crop_cat",
    "norm_layer",
    "per_scale",
]

PadMode = Literal["zero", "reflection"]
ActFun = Literal["LeakyReLU", "Swish", "ELU", "ReLU", "none"]
DownsampleMode = Literal["stride", "avg", "max"]
UpsampleMode = Literal["nearest", "bilinear"]
Norm = Literal["batch", "instance", "none"]

PAD_MODES: tuple[str, ...] = ("zero", "reflection")
ACT_FUNS: tuple[str, ...] = ("LeakyReLU", "Swish", "ELU", "ReLU", "none")
DOWNSAMPLE_MODES: tuple[str, ...] = ("stride", "avg", "max")
UPSAMPLE_MODES: tuple[str, ...] = ("nearest", "bilinear")
NORMS: tuple[str, ...] = ("batch", "instance", "none")

_T = TypeVar("_T")


def check_choice(field: str, value: object, choices: Sequence[str]) -> None:
    """Raise a ``ValueError`` naming ``field`` when ``value`` is not one of ``choices``.

    Args:
        field: name of the argument, used in the message.
        value: the value given.
        choices: the accepted values.

    Raises:
        ValueError: if ``value`` is not in ``choices``.
    """
    if value not in choices:
        raise ValueError(f"{field}={value!r} is not supported; expected one of {list(choices)}")


def per_scale(field: str, value: _T | Sequence[_T], num_scales: int) -> list[_T]:
    """Broadcast a scalar option to one value per scale, or check a per-scale sequence.

    Args:
        field: name of the argument, used in error messages.
        value: a single value (``int`` or ``str``) or a sequence with one value per scale.
        num_scales: the number of scales.

    Returns:
        A list of length ``num_scales``.

    Raises:
        ValueError: if a sequence of the wrong length is given.
    """
    if isinstance(value, (str, int)):
        return [value] * num_scales  # type: ignore[list-item]
    values = list(value)  # type: ignore[arg-type]
    if len(values) != num_scales:
        raise ValueError(
            f"{field} has {len(values)} entries {values}, expected one per scale ({num_scales})"
        )
    return values


def activation(name: ActFun) -> nn.Module:
    """Return the activation module called ``name``.

    ``"LeakyReLU"`` uses slope 0.2 as in DIP; ``"Swish"`` is ``x * sigmoid(x)`` (``nn.SiLU``);
    ``"none"`` is the identity.

    Args:
        name: one of :data:`ACT_FUNS`.

    Returns:
        A parameter-free activation module.
    """
    check_choice("act_fun", name, ACT_FUNS)
    if name == "LeakyReLU":
        # In place is safe: it always follows a BatchNorm/conv whose input, not output, is
        # needed for backward, and LeakyReLU's own backward only needs the sign of its output.
        return nn.LeakyReLU(0.2, inplace=True)
    if name == "Swish":
        return nn.SiLU()
    if name == "ELU":
        return nn.ELU()
    if name == "ReLU":
        return nn.ReLU()
    return nn.Identity()


def norm_layer(name: Norm, channels: int) -> nn.Module:
    """Return a 2-D normalisation layer over ``channels`` channels.

    Args:
        name: ``"batch"`` (``BatchNorm2d``, eps 1e-5, momentum 0.1, affine), ``"instance"``
            (``InstanceNorm2d`` with a learnable affine) or ``"none"`` (identity).
        channels: number of channels.

    Returns:
        The normalisation module.
    """
    check_choice("norm", name, NORMS)
    if name == "batch":
        return nn.BatchNorm2d(channels)
    if name == "instance":
        return nn.InstanceNorm2d(channels, affine=True)
    return nn.Identity()


def conv(
    in_channels: int,
    out_channels: int,
    kernel_size: int,
    stride: int = 1,
    *,
    bias: bool = True,
    pad: PadMode = "zero",
    downsample_mode: DownsampleMode = "stride",
) -> nn.Module:
    """DIP convolution: same-size padding, optional reflection, optional pooling.

    With ``pad="reflection"`` the reflection padding is folded into the conv
    (``padding_mode="reflect"``), which computes the same thing as a separate
    ``ReflectionPad2d`` with the same parameters. When ``stride > 1`` and ``downsample_mode``
    is not ``"stride"``, the conv runs at stride 1 and is followed by a pooling layer of that
    stride (reference-configs.md section 2).

    Args:
        in_channels: input channels.
        out_channels: output channels.
        kernel_size: square kernel size k; the padding is ``(k - 1) // 2``.
        stride: downsampling factor.
        bias: whether the conv has a bias.
        pad: ``"zero"`` or ``"reflection"``.
        downsample_mode: ``"stride"`` (strided conv), ``"avg"`` or ``"max"`` (pooling).

    Returns:
        A ``Conv2d``, or a ``Sequential(Conv2d, pool)``.
    """
    check_choice("pad", pad, PAD_MODES)
    check_choice("downsample_mode", downsample_mode, DOWNSAMPLE_MODES)
    pool: nn.Module | None = None
    if stride != 1 and downsample_mode != "stride":
        pool_type = nn.AvgPool2d if downsample_mode == "avg" else nn.MaxPool2d
        pool = pool_type(stride, stride)
        stride = 1
    layer = nn.Conv2d(
        in_channels,
        out_channels,
        kernel_size,
        stride=stride,
        padding=(kernel_size - 1) // 2,
        padding_mode="reflect" if pad == "reflection" else "zeros",
        bias=bias,
    )
    return layer if pool is None else nn.Sequential(layer, pool)


def center_crop(tensor: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Crop the last two dimensions to ``height x width`` around the centre.

    The offset is ``(size - target) // 2``, as in the upstream ``Concat``.

    Args:
        tensor: a tensor of at least 2 dimensions, at least ``height x width`` in its last two.
        height: target height.
        width: target width.

    Returns:
        The cropped view (the tensor itself when it already has that size).
    """
    if tensor.shape[-2] == height and tensor.shape[-1] == width:
        return tensor
    top = (tensor.shape[-2] - height) // 2
    left = (tensor.shape[-1] - width) // 2
    return tensor[..., top : top + height, left : left + width]


def crop_cat(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """Concatenate along channels, centre-cropping every tensor to the smallest H and W.

    This is the upstream ``Concat`` (reference-configs.md section 2).

    Args:
        tensors: BCHW tensors with the same batch size.

    Returns:
        The concatenation, of spatial size (min H, min W).

    Shape:
        - Inputs: :math:`(B, C_i, H_i, W_i)`.
        - Output: :math:`(B, \\sum C_i, \\min H_i, \\min W_i)`.
    """
    height = min(t.shape[-2] for t in tensors)
    width = min(t.shape[-1] for t in tensors)
    return torch.cat([center_crop(t, height, width) for t in tensors], dim=1)
