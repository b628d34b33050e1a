"""DIP generator networks (installed as ``oscfast.models``).

- :func:`skip`: the DIP encoder-decoder with skip connections (the reference net).
- :class:`UNet`, :class:`ResNet`: the inpainting notebook's alternatives (our own designs).
- :class:`NetSpec` + :func:`build_net`: a frozen description of a generator and its factory.
- ``*_SPEC``: the generator of each reference experiment; :data:`REFERENCE_SPECS` by name.

Example:
    >>> from oscfast.models import DENOISE_SPEC, build_net
    >>> net = build_net(DENOISE_SPEC, output_channels=3)
    >>> sum(p.numel() for p in net.parameters())
    2217831
"""
from __future__ import annotations

from .build import build_net
from .presets import (
    DENOISE_SPEC,
    INPAINT_KATE_SPEC,
    INPAINT_LIBRARY_RESNET_SPEC,
    INPAINT_LIBRARY_SPEC,
    INPAINT_LIBRARY_UNET_SPEC,
    INPAINT_VASE_SPEC,
    JPEG_SPEC,
    REFERENCE_SPECS,
    RESTORE_KATE_SPEC,
)
from .resnet import ResNet
from .skip import skip
from .spec import NetKind, NetSpec
from .unet import UNet

__all__ = [
    "DENOISE_SPEC",
    "INPAINT_KATE_SPEC",
    "INPAINT_LIBRARY_RESNET_SPEC",
    "INPAINT_LIBRARY_SPEC",
    "INPAINT_LIBRARY_UNET_SPEC",
    "INPAINT_VASE_SPEC",
    "JPEG_SPEC",
    "NetKind",
    "NetSpec",
    "REFERENCE_SPECS",
    "RESTORE_KATE_SPEC",
    "ResNet",
    "UNet",
    "build_net",
    "skip",
]
