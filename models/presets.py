"""The generator of each DIP reference experiment (reference-configs.md sections 2-6).

Parameter counts are for the output channels the experiment uses (checked in
``tests/test_models.py``).
"""
from __future__ import annotations

from types import MappingProxyType

from .spec import NetSpec

__all__ = [
    "DENOISE_SPEC",
    "INPAINT_KATE_SPEC",
    "INPAINT_LIBRARY_RESNET_SPEC",
    "INPAINT_LIBRARY_SPEC",
    "INPAINT_LIBRARY_UNET_SPEC",
    "INPAINT_VASE_SPEC",
    "JPEG_SPEC",
    "REFERENCE_SPECS",
    "RESTORE_KATE_SPEC",
]

DENOISE_SPEC = NetSpec()
"""``get_net(32, 'skip', 'reflection', 128, 128, 4, 5 scales, 'bilinear')``: F16 denoising, SR,
ES-WMV/EMV (2,217,831 params with 3 outputs) and restoration Barbara (1 output: 2,217,573)."""

JPEG_SPEC = NetSpec(
    input_channels=3,
    channels_down=(8, 16, 32, 64, 128),
    channels_up=(8, 16, 32, 64, 128),
    channels_skip=(0, 0, 0, 4, 4),
)
"""Snail blind JPEG-artefact removal: skip 3->3, bilinear, reflection (572,827 params)."""

INPAINT_KATE_SPEC = NetSpec(
    channels_down=(128,) * 5,
    channels_up=(128,) * 5,
    channels_skip=(128,) * 5,
    upsample_mode="nearest",
)
"""Inpainting Kate (text mask): skip 32->3, d=u=s=128, nearest (3,002,627 params)."""

INPAINT_VASE_SPEC = NetSpec(
    input_channels=2,
    channels_down=(128,) * 5,
    channels_up=(128,) * 5,
    channels_skip=(0,) * 5,
    upsample_mode="nearest",
)
"""Inpainting Vase: meshgrid input (2 channels), no skips, nearest (2,157,955 params)."""

INPAINT_LIBRARY_SPEC = NetSpec(
    input_channels=1,
    channels_down=(16, 32, 64, 128, 128, 128),
    channels_up=(16, 32, 64, 128, 128, 128),
    channels_skip=(0,) * 6,
    filter_size_down=5,
    filter_size_up=3,
    upsample_mode="nearest",
    need1x1_up=False,
)
"""Inpainting Library, ``skip_depth6``: 1-channel noise, 6 scales, 5x5 down filters, no 1x1
up convs (2,996,467 params)."""

INPAINT_LIBRARY_UNET_SPEC = NetSpec(
    kind="unet",
    input_channels=1,
    unet_feature_scale=8,
    unet_more_layers=1,
    upsample_mode="deconv",
    pad="zero",
    act_fun="ReLU",
)
"""The notebook's U-Net alternative for Library (our own U-Net design; the notebook used
LR 0.001 with it)."""

INPAINT_LIBRARY_RESNET_SPEC = NetSpec(
    kind="resnet", input_channels=1, resnet_blocks=8, resnet_channels=32
)
"""The notebook's ResNet alternative for Library (our own ResNet design; LR 0.001)."""

RESTORE_KATE_SPEC = NetSpec(
    channels_down=(16, 32, 64, 128, 128),
    channels_up=(16, 32, 64, 128, 128),
    channels_skip=(0,) * 5,
    downsample_mode="avg",
)
"""Restoration Kate (2 % of pixels kept): skip 32->3, no skips, bilinear, average-pool
downsampling (1,027,379 params)."""

REFERENCE_SPECS = MappingProxyType(
    {
        "denoise": DENOISE_SPEC,
        "jpeg": JPEG_SPEC,
        "inpaint_kate": INPAINT_KATE_SPEC,
        "inpaint_vase": INPAINT_VASE_SPEC,
        "inpaint_library": INPAINT_LIBRARY_SPEC,
        "inpaint_library_unet": INPAINT_LIBRARY_UNET_SPEC,
        "inpaint_library_resnet": INPAINT_LIBRARY_RESNET_SPEC,
        "restore_barbara": DENOISE_SPEC,
        "restore_kate": RESTORE_KATE_SPEC,
    }
)
"""Read-only mapping from experiment name to its spec."""
