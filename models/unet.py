"""A small U-Net generator, the inpainting notebook's alternative to the skip net.

reference-configs.md section 5 names ``UNet(feature_scale 8, more_layers 1, deconv, zero pad,
InstanceNorm)`` for the Library image. This is our own compact version of that idea: widths
``[64, 128, 256, 512, 1024] // feature_scale``, four down/up levels plus ``more_layers``
extra levels at the deepest width, skip concatenation with a centre crop, a 1x1 conv and a
sigmoid at the end.
"""
from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from .common import (
    ACT_FUNS,
    NORMS,
    PAD_MODES,
    UPSAMPLE_MODES,
    ActFun,
    Norm,
    PadMode,
    activation,
    check_choice,
    conv,
    crop_cat,
    norm_layer,
)

__all__ = ["UNet", "UNET_BASE_WIDTHS"]

UNET_BASE_WIDTHS: tuple[int, ...] = (64, 128, 256, 512, 1024)
"""Channel widths of the five U-Net levels before division by ``feature_scale``."""

UNetUpsample = Literal["deconv", "nearest", "bilinear"]


class _DoubleConv(nn.Sequential):
    """conv 3x3 -> norm -> act -> conv 3x3 -> norm -> act."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        pad: PadMode,
        norm: Norm,
        act_fun: ActFun,
        bias: bool,
    ) -> None:
        super().__init__(
            conv(in_channels, out_channels, 3, bias=bias, pad=pad),
            norm_layer(norm, out_channels),
            activation(act_fun),
            conv(out_channels, out_channels, 3, bias=bias, pad=pad),
            norm_layer(norm, out_channels),
            activation(act_fun),
        )


class _Up(nn.Module):
    """Upsample x2 to ``out_channels``, concatenate with the skip feature, double conv."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        upsample_mode: UNetUpsample,
        pad: PadMode,
        norm: Norm,
        act_fun: ActFun,
        bias: bool,
    ) -> None:
        super().__init__()
        if upsample_mode == "deconv":
            # k=4, s=2, p=1 exactly doubles the size.
            self.up: nn.Module = nn.ConvTranspose2d(
                in_channels, out_channels, 4, stride=2, padding=1, bias=bias
            )
        else:
            align = False if upsample_mode == "bilinear" else None
            self.up = nn.Sequential(
                nn.Upsample(scale_factor=2, mode=upsample_mode, align_corners=align),
                conv(in_channels, out_channels, 3, bias=bias, pad=pad),
            )
        self.conv = _DoubleConv(
            2 * out_channels, out_channels, pad=pad, norm=norm, act_fun=act_fun, bias=bias
        )

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        # The encoder pools with ceil_mode, so the upsampled map is never smaller than the
        # skip feature; the crop brings it back to the skip feature's size.
        return self.conv(crop_cat([skip, self.up(x)]))


class UNet(nn.Module):
    """U-Net generator for DIP.

    Encoder: double conv, then ``4 + more_layers`` times (max-pool 2 -> double conv). Decoder:
    the mirror, each level upsampling (transposed conv or interpolation + conv), concatenating
    the encoder feature of the same level (centre-cropped) and applying a double conv. A 1x1
    conv and a sigmoid produce the image. Pooling uses ``ceil_mode``, so any input size gives
    an output of the same size; multiples of ``2 ** (4 + more_layers)`` avoid any crop.

    Args:
        num_input_channels: channels of the input z.
        num_output_channels: channels of the output image.
        feature_scale: divides the base widths (64, 128, 256, 512, 1024); widths are at
            least 1.
        more_layers: extra levels at the deepest width.
        upsample_mode: ``"deconv"`` (``ConvTranspose2d`` k4 s2), ``"nearest"`` or
            ``"bilinear"`` (interpolation followed by a 3x3 conv).
        pad: ``"zero"`` or ``"reflection"``.
        norm: ``"instance"``, ``"batch"`` or ``"none"``.
        act_fun: activation name (see :func:`oscfast.models.common.activation`).
        need_sigmoid: end with a sigmoid.
        need_bias: convs have biases.

    Raises:
        ValueError: for a non-positive ``feature_scale``, negative ``more_layers`` or an unknown
            option name.

    Shape:
        - Input: :math:`(B, C_{in}, H, W)`.
        - Output: :math:`(B, C_{out}, H, W)`.

    Example:
        >>> net = UNet(1, 3, feature_scale=8, more_layers=1)
        >>> net(torch.rand(1, 1, 64, 64)).shape
        torch.Size([1, 3, 64, 64])
    """

    def __init__(
        self,
        num_input_channels: int,
        num_output_channels: int,
        *,
        feature_scale: int = 8,
        more_layers: int = 1,
        upsample_mode: UNetUpsample = "deconv",
        pad: PadMode = "zero",
        norm: Norm = "instance",
        act_fun: ActFun = "ReLU",
        need_sigmoid: bool = True,
        need_bias: bool = True,
    ) -> None:
        super().__init__()
        if feature_scale < 1:
            raise ValueError(f"feature_scale must be >= 1, got {feature_scale}")
        if more_layers < 0:
            raise ValueError(f"more_layers must be >= 0, got {more_layers}")
        check_choice("upsample_mode", upsample_mode, ("deconv", *UPSAMPLE_MODES))
        check_choice("pad", pad, PAD_MODES)
        check_choice("norm", norm, NORMS)
        check_choice("act_fun", act_fun, ACT_FUNS)

        base = [max(1, w // feature_scale) for w in UNET_BASE_WIDTHS]
        widths = base + [base[-1]] * more_layers
        opts = {"pad": pad, "norm": norm, "act_fun": act_fun, "bias": need_bias}
        self.inc = _DoubleConv(num_input_channels, widths[0], **opts)
        self.downs = nn.ModuleList(
            nn.Sequential(
                nn.MaxPool2d(2, ceil_mode=True), _DoubleConv(widths[i], widths[i + 1], **opts)
            )
            for i in range(len(widths) - 1)
        )
        self.ups = nn.ModuleList(
            _Up(widths[i + 1], widths[i], upsample_mode=upsample_mode, **opts)
            for i in reversed(range(len(widths) - 1))
        )
        self.outc = nn.Conv2d(widths[0], num_output_channels, 1, bias=need_bias)
        self.out_act: nn.Module = nn.Sigmoid() if need_sigmoid else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map z to an image of the same spatial size."""
        features = [self.inc(x)]
        for down in self.downs:
            features.append(down(features[-1]))
        y = features.pop()
        for up in self.ups:
            y = up(y, features.pop())
        return self.out_act(self.outc(y))
