"""Turn a :class:`~oscfast.models.spec.NetSpec` into a torch module."""
from __future__ import annotations

from torch import nn

from .resnet import ResNet
from .skip import skip
from .spec import NetSpec
from .unet import UNet

__all__ = ["build_net"]


def build_net(spec: NetSpec, output_channels: int) -> nn.Module:
    """Instantiate the generator described by ``spec`` with ``output_channels`` outputs.

    Args:
        spec: the architecture.
        output_channels: channels of the produced image (3 for RGB, 1 for grayscale).

    Returns:
        A freshly initialised module (PyTorch default init) mapping
        ``(B, spec.input_channels, H, W)`` to ``(B, output_channels, H, W)``.

    Raises:
        ValueError: if ``output_channels`` is not a positive integer.

    Example:
        >>> from oscfast.models import DENOISE_SPEC
        >>> sum(p.numel() for p in build_net(DENOISE_SPEC, 1).parameters())
        2217573
    """
    if isinstance(output_channels, bool) or not isinstance(output_channels, int):
        raise ValueError(f"output_channels must be an integer >= 1, got {output_channels!r}")
    if output_channels < 1:
        raise ValueError(f"output_channels must be an integer >= 1, got {output_channels!r}")
    if spec.kind == "unet":
        return UNet(
            spec.input_channels,
            output_channels,
            feature_scale=spec.unet_feature_scale,
            more_layers=spec.unet_more_layers,
            upsample_mode=spec.upsample_mode,  # type: ignore[arg-type]
            pad=spec.pad,  # type: ignore[arg-type]
            act_fun=spec.act_fun,  # type: ignore[arg-type]
            need_sigmoid=spec.need_sigmoid,
            need_bias=spec.need_bias,
        )
    if spec.kind == "resnet":
        return ResNet(
            spec.input_channels,
            output_channels,
            num_blocks=spec.resnet_blocks,
            num_channels=spec.resnet_channels,
            act_fun=spec.act_fun,  # type: ignore[arg-type]
            pad=spec.pad,  # type: ignore[arg-type]
            need_sigmoid=spec.need_sigmoid,
            need_bias=spec.need_bias,
        )
    return skip(
        spec.input_channels,
        output_channels,
        channels_down=spec.channels_down,
        channels_up=spec.channels_up,
        channels_skip=spec.channels_skip,
        filter_size_down=spec.filter_size_down,
        filter_size_up=spec.filter_size_up,
        filter_skip_size=spec.filter_skip_size,
        need_sigmoid=spec.need_sigmoid,
        need_bias=spec.need_bias,
        pad=spec.pad,  # type: ignore[arg-type]
        upsample_mode=spec.upsample_mode,  # type: ignore[arg-type]
        downsample_mode=spec.downsample_mode,  # type: ignore[arg-type]
        act_fun=spec.act_fun,  # type: ignore[arg-type]
        need1x1_up=spec.need1x1_up,
    )
