"""A plain residual generator, the inpainting notebook's other alternative to the skip net.

reference-configs.md section 5 names ``ResNet(8 blocks, 32 ch)`` for the Library image. This
is our own simple version: no downsampling, so it works at any input size.
"""
from __future__ import annotations

import torch
from torch import nn

from .common import ACT_FUNS, PAD_MODES, ActFun, PadMode, activation, check_choice, conv

__all__ = ["ResidualBlock", "ResNet"]


class ResidualBlock(nn.Module):
    """``x + BN(conv(act(BN(conv(x)))))`` with 3x3 convs at constant width.

    Args:
        channels: width of the block.
        act_fun: activation name.
        pad: ``"zero"`` or ``"reflection"``.
        bias: convs have biases.
    """

    def __init__(self, channels: int, *, act_fun: ActFun, pad: PadMode, bias: bool) -> None:
        super().__init__()
        self.body = nn.Sequential(
            conv(channels, channels, 3, bias=bias, pad=pad),
            nn.BatchNorm2d(channels),
            activation(act_fun),
            conv(channels, channels, 3, bias=bias, pad=pad),
            nn.BatchNorm2d(channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the block; the output has the input's shape."""
        return x + self.body(x)


class ResNet(nn.Module):
    """Residual generator: conv in -> act -> N residual blocks -> conv out -> sigmoid.

    Args:
        num_input_channels: channels of the input z.
        num_output_channels: channels of the output image.
        num_blocks: number of residual blocks.
        num_channels: width of the blocks.
        act_fun: activation name (see :func:`oscfast.models.common.activation`).
        pad: ``"zero"`` or ``"reflection"``.
        need_sigmoid: end with a sigmoid.
        need_bias: convs have biases.

    Raises:
        ValueError: for a non-positive width, a negative number of blocks or an unknown
            option name.

    Shape:
        - Input: :math:`(B, C_{in}, H, W)`.
        - Output: :math:`(B, C_{out}, H, W)`.

    Example:
        >>> net = ResNet(1, 3, num_blocks=2, num_channels=8)
        >>> net(torch.rand(1, 1, 20, 30)).shape
        torch.Size([1, 3, 20, 30])
    """

    def __init__(
        self,
        num_input_channels: int,
        num_output_channels: int,
        *,
        num_blocks: int = 8,
        num_channels: int = 32,
        act_fun: ActFun = "LeakyReLU",
        pad: PadMode = "reflection",
        need_sigmoid: bool = True,
        need_bias: bool = True,
    ) -> None:
        super().__init__()
        if num_channels < 1:
            raise ValueError(f"num_channels must be >= 1, got {num_channels}")
        if num_blocks < 0:
            raise ValueError(f"num_blocks must be >= 0, got {num_blocks}")
        check_choice("act_fun", act_fun, ACT_FUNS)
        check_choice("pad", pad, PAD_MODES)
        self.head = nn.Sequential(
            conv(num_input_channels, num_channels, 3, bias=need_bias, pad=pad), activation(act_fun)
        )
        self.blocks = nn.Sequential(
            *(
                ResidualBlock(num_channels, act_fun=act_fun, pad=pad, bias=need_bias)
                for _ in range(num_blocks)
            )
        )
        self.tail = conv(num_channels, num_output_channels, 3, bias=need_bias, pad=pad)
        self.out_act: nn.Module = nn.Sigmoid() if need_sigmoid else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map z to an image of the same spatial size."""
        return self.out_act(self.tail(self.blocks(self.head(x))))
