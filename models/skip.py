"""The DIP encoder-decoder with skip connections (reference-configs.md section 2)."""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .common import (
    ACT_FUNS,
    DOWNSAMPLE_MODES,
    PAD_MODES,
    UPSAMPLE_MODES,
    ActFun,
    DownsampleMode,
    PadMode,
    UpsampleMode,
    activation,
    center_crop,
    check_choice,
    conv,
    crop_cat,
    per_scale,
)

__all__ = ["SkipBlock", "skip"]


class SkipBlock(nn.Module):
    """One scale B_i of the skip network.

    ``merge(concat(skip(x), deeper(x)))``, where the concat centre-crops to the smaller
    spatial size. Without a skip branch it is ``merge(crop(deeper(x)))``: the deeper output
    is centre-cropped to at most the size of ``x``, the size a skip branch would have had.
    Upstream has no crop there, so for sizes that are not multiples of 2**L its output grew
    (66 -> 96 with five such scales); for multiples of 2**L both agree exactly.

    Args:
        deeper: the downsampling branch; it ends with the upsampling layer.
        skip: the 1x1 skip branch, or ``None`` when the scale has no skip channels.
        merge: BN over the concat, the up conv and the optional 1x1 conv.
    """

    def __init__(self, deeper: nn.Module, skip: nn.Module | None, merge: nn.Module) -> None:
        super().__init__()
        self.skip = skip
        self.deeper = deeper
        self.merge = merge

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the block.

        Args:
            x: input of shape :math:`(B, C, H, W)`.

        Returns:
            Output of shape :math:`(B, u_i, H', W')` with H' = min(H, rows of the deeper
            output): H' = H with stride downsampling; pooling floors odd sizes, so it can
            be smaller.
        """
        y = self.deeper(x)
        if self.skip is not None:
            y = crop_cat([self.skip(x), y])
        else:
            y = center_crop(y, min(y.shape[-2], x.shape[-2]), min(y.shape[-1], x.shape[-1]))
        return self.merge(y)


def _bn_act(layer: nn.Module, channels: int, act_fun: ActFun) -> list[nn.Module]:
    return [layer, nn.BatchNorm2d(channels), activation(act_fun)]


def skip(
    num_input_channels: int,
    num_output_channels: int,
    *,
    channels_down: Sequence[int] = (16, 32, 64, 128, 128),
    channels_up: Sequence[int] = (16, 32, 64, 128, 128),
    channels_skip: Sequence[int] = (4, 4, 4, 4, 4),
    filter_size_down: int | Sequence[int] = 3,
    filter_size_up: int | Sequence[int] = 3,
    filter_skip_size: int = 1,
    need_sigmoid: bool = True,
    need_bias: bool = True,
    pad: PadMode = "zero",
    upsample_mode: UpsampleMode | Sequence[UpsampleMode] = "nearest",
    downsample_mode: DownsampleMode | Sequence[DownsampleMode] = "stride",
    act_fun: ActFun = "LeakyReLU",
    need1x1_up: bool = True,
) -> nn.Sequential:
    """Build the DIP skip network (upstream ``models/skip.py``).

    For each scale i (input channels c_0 = ``num_input_channels``, c_i = d[i-1]):

    1. deeper: conv(c_i -> d_i, kd, stride 2) -> BN -> act -> conv(d_i -> d_i, kd) -> BN ->
       act -> [scale i+1] -> Upsample(x2). It outputs k_i = u[i+1] channels (d[i] at the
       deepest scale).
    2. skip (if s_i > 0): conv(c_i -> s_i, ks) -> BN -> act, concatenated *before* the deeper
       output, with a centre crop when the sizes differ.
    3. BN(s_i + k_i) -> conv(s_i + k_i -> u_i, ku) -> BN -> act -> [conv 1x1 -> BN -> act].

    The network ends with a 1x1 conv to ``num_output_channels`` and a sigmoid. Sizes that are
    not multiples of 2**L are handled by the centre crop: with stride downsampling the output
    has the input's size (a 66x70 input gives a 66x70 output). Scales without a skip branch
    crop too (see :class:`SkipBlock`), which upstream did not.

    Args:
        num_input_channels: channels of the input z.
        num_output_channels: channels of the output image.
        channels_down: d, channels of the deeper branch per scale; its length L is the number
            of scales.
        channels_up: u, channels after the up conv per scale.
        channels_skip: s, channels of the skip branch per scale (0: no skip at that scale).
        filter_size_down: kd, kernel size of the deeper convs (one value or one per scale).
        filter_size_up: ku, kernel size of the up conv (one value or one per scale).
        filter_skip_size: ks, kernel size of the skip conv.
        need_sigmoid: end with a sigmoid.
        need_bias: convs have biases.
        pad: ``"zero"`` or ``"reflection"`` padding.
        upsample_mode: ``"nearest"`` or ``"bilinear"`` (``align_corners=False``), one value
            or one per scale.
        downsample_mode: ``"stride"``, ``"avg"`` or ``"max"``, one value or one per scale.
        act_fun: ``"LeakyReLU"`` (slope 0.2), ``"Swish"``, ``"ELU"``, ``"ReLU"`` or ``"none"``.
        need1x1_up: add a 1x1 conv -> BN -> act after each up conv.

    Returns:
        ``Sequential(B_0, Conv2d 1x1, [Sigmoid])``.

    Raises:
        ValueError: if the channel lists have different lengths, a per-scale option has the
            wrong length, a channel count is not positive, or an option name is unknown.

    Example:
        >>> net = skip(32, 3, channels_down=[128] * 5, channels_up=[128] * 5,
        ...            channels_skip=[4] * 5, pad="reflection", upsample_mode="bilinear")
        >>> sum(p.numel() for p in net.parameters())
        2217831
    """
    down, up, skips = list(channels_down), list(channels_up), list(channels_skip)
    num_scales = len(down)
    if num_scales == 0 or len(up) != num_scales or len(skips) != num_scales:
        raise ValueError(
            "channels_down, channels_up and channels_skip must be non-empty and of equal length, "
            f"got {len(down)}, {len(up)} and {len(skips)}"
        )
    checks = (("channels_down", down, 1), ("channels_up", up, 1), ("channels_skip", skips, 0))
    for field, values, low in checks:
        if any(int(v) != v or v < low for v in values):
            raise ValueError(f"{field} must hold integers >= {low}, got {values}")
    check_choice("pad", pad, PAD_MODES)
    check_choice("act_fun", act_fun, ACT_FUNS)
    kd = per_scale("filter_size_down", filter_size_down, num_scales)
    ku = per_scale("filter_size_up", filter_size_up, num_scales)
    up_modes = per_scale("upsample_mode", upsample_mode, num_scales)
    down_modes = per_scale("downsample_mode", downsample_mode, num_scales)
    for mode in up_modes:
        check_choice("upsample_mode", mode, UPSAMPLE_MODES)
    for mode in down_modes:
        check_choice("downsample_mode", mode, DOWNSAMPLE_MODES)

    def make_conv(
        cin: int, cout: int, k: int, stride: int = 1, mode: DownsampleMode = "stride"
    ) -> nn.Module:
        return conv(cin, cout, k, stride, bias=need_bias, pad=pad, downsample_mode=mode)

    # Built from the deepest scale outwards, so each block can hold the next one.
    inner: SkipBlock | None = None
    for i in reversed(range(num_scales)):
        c_in = num_input_channels if i == 0 else down[i - 1]
        deeper_layers = [
            *_bn_act(make_conv(c_in, down[i], kd[i], 2, down_modes[i]), down[i], act_fun),
            *_bn_act(make_conv(down[i], down[i], kd[i]), down[i], act_fun),
        ]
        if inner is not None:
            deeper_layers.append(inner)
        if up_modes[i] == "bilinear":
            deeper_layers.append(nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False))
        else:
            deeper_layers.append(nn.Upsample(scale_factor=2, mode="nearest"))
        k = down[i] if i == num_scales - 1 else up[i + 1]

        skip_branch = None
        if skips[i] > 0:
            skip_conv = make_conv(c_in, skips[i], filter_skip_size)
            skip_branch = nn.Sequential(*_bn_act(skip_conv, skips[i], act_fun))

        merge_layers: list[nn.Module] = [
            nn.BatchNorm2d(skips[i] + k),
            *_bn_act(make_conv(skips[i] + k, up[i], ku[i]), up[i], act_fun),
        ]
        if need1x1_up:
            merge_layers += _bn_act(make_conv(up[i], up[i], 1), up[i], act_fun)
        inner = SkipBlock(nn.Sequential(*deeper_layers), skip_branch, nn.Sequential(*merge_layers))

    assert inner is not None  # num_scales >= 1 was checked above
    layers: list[nn.Module] = [inner, make_conv(up[0], num_output_channels, 1)]
    if need_sigmoid:
        layers.append(nn.Sigmoid())
    return nn.Sequential(*layers)
