"""``NetSpec``: a frozen description of a DIP generator, independent of its output channels."""
from __future__ import annotations

import numbers
from dataclasses import dataclass, replace
from typing import Literal

from .common import ACT_FUNS, DOWNSAMPLE_MODES, PAD_MODES, UPSAMPLE_MODES, check_choice

__all__ = ["NetKind", "NetSpec"]

NetKind = Literal["skip", "unet", "resnet"]

_KINDS: tuple[str, ...] = ("skip", "unet", "resnet")
_UNET_LEVELS = 4


def _check_int(field: str, value: object, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
        raise ValueError(f"{field} must be an integer >= {low}, got {value!r}")


def _as_tuple(value: object) -> object:
    """Lists become tuples so that specs stay hashable; scalars pass through."""
    return tuple(value) if isinstance(value, list) else value


@dataclass(frozen=True)
class NetSpec:
    """Architecture of a DIP generator. The defaults are the DIP denoising net.

    The defaults reproduce ``get_net(32, 'skip', 'reflection', n33d=128, n33u=128, n11=4,
    num_scales=5, upsample_mode='bilinear')`` (reference-configs.md sections 2-3: 2,217,831
    parameters with 3 outputs). The number of output channels is not part of the spec: it is
    given to :func:`oscfast.models.build_net`, so the same spec serves RGB and grayscale.
    Lists given for tuple fields are stored as tuples.

    Attributes:
        kind: ``"skip"`` (the DIP skip net), ``"unet"`` or ``"resnet"``.
        input_channels: channels of the input z (32 for noise input, 2 for a meshgrid).
        channels_down: skip net d, per scale; its length is the number of scales.
        channels_up: skip net u, per scale.
        channels_skip: skip net s, per scale (0: no skip connection at that scale).
        filter_size_down: kernel of the deeper convs, one value or one per scale.
        filter_size_up: kernel of the up convs, one value or one per scale.
        filter_skip_size: kernel of the skip convs.
        pad: ``"reflection"`` or ``"zero"``.
        upsample_mode: ``"bilinear"`` or ``"nearest"`` (one value or one per scale for the
            skip net); the U-Net also accepts ``"deconv"``.
        downsample_mode: ``"stride"``, ``"avg"`` or ``"max"`` (one value or one per scale).
        act_fun: ``"LeakyReLU"``, ``"Swish"``, ``"ELU"``, ``"ReLU"`` or ``"none"``.
        need1x1_up: skip net: a 1x1 conv after each up conv.
        need_sigmoid: end with a sigmoid (every DIP reference net does).
        need_bias: convs have biases.
        unet_feature_scale: U-Net widths are (64, 128, 256, 512, 1024) // this.
        unet_more_layers: U-Net levels beyond the first four (the Library notebook uses 1).
        resnet_blocks: number of residual blocks of the ResNet.
        resnet_channels: width of the ResNet.

    Raises:
        ValueError: naming the field and the value, when the three channel tuples differ in
            length, a per-scale option has the wrong length, a name is unknown or a count is
            not a positive integer.

    Example:
        >>> NetSpec().stride_multiple
        32
        >>> NetSpec().scaled(0.125).channels_down
        (16, 16, 16, 16, 16)
    """

    kind: NetKind = "skip"
    input_channels: int = 32
    channels_down: tuple[int, ...] = (128,) * 5
    channels_up: tuple[int, ...] = (128,) * 5
    channels_skip: tuple[int, ...] = (4,) * 5
    filter_size_down: int | tuple[int, ...] = 3
    filter_size_up: int | tuple[int, ...] = 3
    filter_skip_size: int = 1
    pad: str = "reflection"
    upsample_mode: str | tuple[str, ...] = "bilinear"
    downsample_mode: str | tuple[str, ...] = "stride"
    act_fun: str = "LeakyReLU"
    need1x1_up: bool = True
    need_sigmoid: bool = True
    need_bias: bool = True
    unet_feature_scale: int = 8
    unet_more_layers: int = 1
    resnet_blocks: int = 8
    resnet_channels: int = 32

    def __post_init__(self) -> None:
        for name in ("channels_down", "channels_up", "channels_skip", "filter_size_down",
                     "filter_size_up", "upsample_mode", "downsample_mode"):
            object.__setattr__(self, name, _as_tuple(getattr(self, name)))

        check_choice("kind", self.kind, _KINDS)
        _check_int("input_channels", self.input_channels, 1)
        num_scales = len(self.channels_down)
        if num_scales == 0:
            raise ValueError("channels_down must not be empty, got ()")
        for name, low in (("channels_down", 1), ("channels_up", 1), ("channels_skip", 0)):
            values = getattr(self, name)
            if not isinstance(values, tuple):
                raise ValueError(f"{name} must be a tuple of integers, got {values!r}")
            if len(values) != num_scales:
                raise ValueError(
                    f"{name}={values} has {len(values)} scales but channels_down has {num_scales}"
                )
            for v in values:
                _check_int(name, v, low)
        for name in ("filter_size_down", "filter_size_up"):
            value = getattr(self, name)
            for v in self._scales(name, value, num_scales):
                _check_int(name, v, 1)
        _check_int("filter_skip_size", self.filter_skip_size, 1)
        check_choice("pad", self.pad, PAD_MODES)
        check_choice("act_fun", self.act_fun, ACT_FUNS)
        up_modes = UPSAMPLE_MODES + (("deconv",) if self.kind == "unet" else ())
        for mode in self._scales("upsample_mode", self.upsample_mode, num_scales):
            check_choice("upsample_mode", mode, up_modes)
        for mode in self._scales("downsample_mode", self.downsample_mode, num_scales):
            check_choice("downsample_mode", mode, DOWNSAMPLE_MODES)
        if self.kind == "unet" and isinstance(self.upsample_mode, tuple):
            raise ValueError(
                f"upsample_mode must be a single name for a unet, got {self.upsample_mode}"
            )
        _check_int("unet_feature_scale", self.unet_feature_scale, 1)
        _check_int("unet_more_layers", self.unet_more_layers, 0)
        _check_int("resnet_blocks", self.resnet_blocks, 1)
        _check_int("resnet_channels", self.resnet_channels, 1)

    @staticmethod
    def _scales(name: str, value: object, num_scales: int) -> tuple[object, ...]:
        if not isinstance(value, tuple):
            return (value,)
        if len(value) != num_scales:
            raise ValueError(
                f"{name}={value} has {len(value)} entries, expected one per scale ({num_scales})"
            )
        return value

    @property
    def num_scales(self) -> int:
        """Number of skip-net scales (``len(channels_down)``)."""
        return len(self.channels_down)

    @property
    def stride_multiple(self) -> int:
        """Image sizes that are multiples of this pass through the net without any crop.

        ``2 ** num_scales`` for the skip net, ``2 ** (4 + unet_more_layers)`` for the U-Net and
        1 for the ResNet. With pooling downsampling (``"avg"``/``"max"``) the skip net's
        output is smaller than its input unless the size is such a multiple.
        """
        if self.kind == "skip":
            return 2**self.num_scales
        if self.kind == "unet":
            return 2 ** (_UNET_LEVELS + self.unet_more_layers)
        return 1

    def canvas_side(self, side: int) -> int:
        """The side of the canvas the net runs on for an image side: rounded up to
        :attr:`stride_multiple`, and for the skip net at least large enough that its deepest
        scale has 2 pixels and more than its reflection padding (a smaller image sits centred
        in the canvas; the loss sees only the image)."""
        multiple = self.stride_multiple
        canvas = -(-int(side) // multiple) * multiple
        if self.kind == "skip":
            kernels = self.filter_size_down if isinstance(self.filter_size_down, tuple) else (self.filter_size_down,)
            pad = (max(kernels) - 1) // 2
            deepest = 2 if self.pad != "reflection" else max(2, pad + 1)
            canvas = max(canvas, multiple * deepest)
        return canvas

    def scaled(self, width_factor: float) -> NetSpec:
        """Return a copy with every width multiplied by ``width_factor``, for tests and small runs.

        Widths are rounded and kept >= 1; a skip width of 0 stays 0 (the scale keeps having no
        skip connection). The U-Net's ``feature_scale`` is divided by the factor instead.

        Args:
            width_factor: positive multiplier (0.125 turns 128 channels into 16).

        Returns:
            The narrower (or wider) spec; depth, kernels and modes are unchanged.

        Raises:
            ValueError: if ``width_factor`` is not positive.
        """
        if not width_factor > 0:
            raise ValueError(f"width_factor must be > 0, got {width_factor!r}")

        def scale(c: int) -> int:
            return max(1, round(c * width_factor))

        return replace(
            self,
            channels_down=tuple(scale(c) for c in self.channels_down),
            channels_up=tuple(scale(c) for c in self.channels_up),
            channels_skip=tuple(scale(c) if c else 0 for c in self.channels_skip),
            unet_feature_scale=max(1, round(self.unet_feature_scale / width_factor)),
            resnet_channels=scale(self.resnet_channels),
        )
