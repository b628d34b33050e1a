"""Tests of the DIP generators (oscfast.models) against reference-configs.md sections 2, 5, 6."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from oscfast.models import (
    DENOISE_SPEC,
    INPAINT_KATE_SPEC,
    INPAINT_LIBRARY_RESNET_SPEC,
    INPAINT_LIBRARY_SPEC,
    INPAINT_LIBRARY_UNET_SPEC,
    INPAINT_VASE_SPEC,
    JPEG_SPEC,
    REFERENCE_SPECS,
    RESTORE_KATE_SPEC,
    NetSpec,
    ResNet,
    UNet,
    build_net,
    skip,
)
from oscfast.models.common import conv, crop_cat


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """These nets are tiny: one thread is fastest and immune to OpenMP spin-waiting when
    the (2-core) machine is busy, which otherwise makes each forward pass ~100x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def n_params(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


def z_like(spec: NetSpec, height: int, width: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return 0.1 * torch.rand(1, spec.input_channels, height, width, generator=gen)


# --- parameter counts: the table of reference-configs.md section 2 ---------------------------


@pytest.mark.parametrize(
    ("spec", "out_channels", "expected"),
    [
        pytest.param(DENOISE_SPEC, 3, 2_217_831, id="denoise-32to3"),
        pytest.param(JPEG_SPEC, 3, 572_827, id="snail-jpeg-3to3"),
        pytest.param(INPAINT_KATE_SPEC, 3, 3_002_627, id="inpaint-kate"),
        pytest.param(INPAINT_VASE_SPEC, 3, 2_157_955, id="inpaint-vase"),
        pytest.param(INPAINT_LIBRARY_SPEC, 3, 2_996_467, id="inpaint-library"),
        pytest.param(DENOISE_SPEC, 1, 2_217_573, id="restore-barbara-gray"),
        pytest.param(RESTORE_KATE_SPEC, 3, 1_027_379, id="restore-kate-avg"),
    ],
)
def test_reference_parameter_counts(spec: NetSpec, out_channels: int, expected: int) -> None:
    assert n_params(build_net(spec, out_channels)) == expected


def test_denoise_parameter_breakdown() -> None:
    # Section 2: conv 2,211,351 + BN 6,480.
    net = build_net(DENOISE_SPEC, 3)
    bn = sum(n_params(m) for m in net.modules() if isinstance(m, nn.BatchNorm2d))
    assert bn == 6_480
    assert n_params(net) - bn == 2_211_351


def test_get_net_equivalent_call() -> None:
    net = skip(32, 3, channels_down=[128] * 5, channels_up=[128] * 5, channels_skip=[4] * 5,
               pad="reflection", upsample_mode="bilinear")
    assert n_params(net) == 2_217_831


# --- structure ------------------------------------------------------------------------------


def test_reflection_conv_matches_separate_pad() -> None:
    torch.manual_seed(0)
    layer = conv(3, 5, 5, pad="reflection")
    reference = nn.Sequential(nn.ReflectionPad2d(2), nn.Conv2d(3, 5, 5))
    reference[1].load_state_dict(layer.state_dict())
    x = torch.rand(2, 3, 9, 11)
    torch.testing.assert_close(layer(x), reference(x))


def test_pooling_downsample() -> None:
    layer = conv(3, 4, 3, 2, downsample_mode="avg")
    assert isinstance(layer, nn.Sequential) and isinstance(layer[1], nn.AvgPool2d)
    assert layer[0].stride == (1, 1)
    assert layer(torch.rand(1, 3, 8, 10)).shape == (1, 4, 4, 5)
    assert isinstance(conv(3, 4, 3, 2, downsample_mode="max")[1], nn.MaxPool2d)
    assert conv(3, 4, 3, 2).stride == (2, 2)


def test_bilinear_upsampling_uses_modern_default() -> None:
    net = build_net(DENOISE_SPEC.scaled(0.125), 3)
    ups = [m for m in net.modules() if isinstance(m, nn.Upsample)]
    assert len(ups) == 5
    assert all(u.mode == "bilinear" and u.align_corners is False for u in ups)


def test_skip_branch_comes_first_in_concat() -> None:
    a = torch.zeros(1, 2, 4, 4)
    b = torch.ones(1, 3, 4, 4)
    assert crop_cat([a, b])[:, :2].eq(0).all() and crop_cat([a, b])[:, 2:].eq(1).all()


def test_crop_cat_centre_crops_to_smallest() -> None:
    big = torch.arange(6 * 7, dtype=torch.float32).reshape(1, 1, 6, 7)
    small = torch.zeros(1, 2, 3, 4)
    out = crop_cat([big, small])
    assert out.shape == (1, 3, 3, 4)
    # offsets floor((6-3)/2) = 1 and floor((7-4)/2) = 1
    torch.testing.assert_close(out[:, :1], big[..., 1:4, 1:5])


def test_per_scale_options() -> None:
    net = skip(
        2, 3, channels_down=[4, 4], channels_up=[4, 4], channels_skip=[1, 0],
        filter_size_down=[5, 3], filter_size_up=(3, 1), upsample_mode=["nearest", "bilinear"],
    )
    kernels = [m.kernel_size for m in net.modules() if isinstance(m, nn.Conv2d)]
    assert (5, 5) in kernels and (1, 1) in kernels
    outer = net[0]
    inner = outer.deeper[-2]
    assert outer.deeper[-1].mode == "nearest" and inner.deeper[-1].mode == "bilinear"
    assert outer.skip is not None and inner.skip is None
    assert net(torch.rand(1, 2, 12, 12)).shape == (1, 3, 12, 12)


@pytest.mark.parametrize("act_fun", ["Swish", "ELU", "none"])
def test_other_activations(act_fun: str) -> None:
    net = build_net(NetSpec(act_fun=act_fun).scaled(0.0625), 3)
    assert net(torch.rand(1, 32, 64, 64)).shape == (1, 3, 64, 64)


# --- forward: shapes, range, memory format ---------------------------------------------------


@pytest.mark.parametrize("size", [(64, 64), (66, 70)])
@pytest.mark.parametrize(
    "spec",
    [DENOISE_SPEC, JPEG_SPEC, INPAINT_KATE_SPEC, INPAINT_VASE_SPEC],
    ids=["denoise", "jpeg", "kate", "vase"],
)
def test_skip_output_shape_and_range(spec: NetSpec, size: tuple[int, int]) -> None:
    torch.manual_seed(0)
    net = build_net(spec.scaled(0.125), 3)
    out = net(z_like(spec, *size))
    assert out.shape == (1, 3, *size)
    assert out.gt(0).all() and out.lt(1).all()


def test_avg_downsampling_output_shape() -> None:
    net = build_net(RESTORE_KATE_SPEC.scaled(0.125), 3)
    assert net(z_like(RESTORE_KATE_SPEC, 64, 64)).shape == (1, 3, 64, 64)


def test_library_output_shape() -> None:
    # 6 scales and 5x5 reflection-padded convs need at least 4 px at the deepest scale.
    net = build_net(INPAINT_LIBRARY_SPEC.scaled(0.125), 3)
    assert net(z_like(INPAINT_LIBRARY_SPEC, 256, 192)).shape == (1, 3, 256, 192)


def test_barbara_size_514() -> None:
    # Section 6: 514 -> 257 -> 129 -> 65 -> 33 -> 17 and back to 514 through the crop.
    net = build_net(DENOISE_SPEC.scaled(0.0625), 1)
    assert net(z_like(DENOISE_SPEC, 514, 130)).shape == (1, 1, 514, 130)


def test_channels_last_matches_contiguous() -> None:
    torch.manual_seed(0)
    net = build_net(DENOISE_SPEC.scaled(0.125), 3)
    x = z_like(DENOISE_SPEC, 66, 70)
    reference = net(x)
    out = net(x.to(memory_format=torch.channels_last))
    torch.testing.assert_close(out, reference, atol=1e-5, rtol=1e-5)
    net = net.to(memory_format=torch.channels_last)
    out = net(x.to(memory_format=torch.channels_last))
    torch.testing.assert_close(out, reference, atol=1e-5, rtol=1e-5)
    out.mean().backward()
    assert all(p.grad is not None for p in net.parameters())


def test_unet_output_shape() -> None:
    spec = INPAINT_LIBRARY_UNET_SPEC.scaled(0.5)
    net = build_net(spec, 3)
    assert isinstance(net, UNet)
    for size in [(64, 64), (66, 70)]:
        out = net(z_like(spec, *size))
        assert out.shape == (1, 3, *size)
        assert out.gt(0).all() and out.lt(1).all()


@pytest.mark.parametrize("upsample_mode", ["nearest", "bilinear"])
def test_unet_interpolation_modes(upsample_mode: str) -> None:
    net = UNet(2, 1, feature_scale=16, more_layers=0, upsample_mode=upsample_mode, norm="batch")
    assert net(torch.rand(1, 2, 48, 40)).shape == (1, 1, 48, 40)


def test_resnet_output_shape() -> None:
    spec = INPAINT_LIBRARY_RESNET_SPEC.scaled(0.25)
    net = build_net(spec, 3)
    assert isinstance(net, ResNet)
    assert sum(isinstance(m, nn.BatchNorm2d) for m in net.modules()) == 2 * spec.resnet_blocks
    out = net(z_like(spec, 33, 47))
    assert out.shape == (1, 3, 33, 47)
    assert out.gt(0).all() and out.lt(1).all()


def test_resnet_zero_blocks_is_rejected_by_spec_not_by_module() -> None:
    assert ResNet(1, 1, num_blocks=0, num_channels=4)(torch.rand(1, 1, 5, 5)).shape == (1, 1, 5, 5)
    with pytest.raises(ValueError, match="resnet_blocks"):
        NetSpec(kind="resnet", resnet_blocks=0)


# --- NetSpec ----------------------------------------------------------------------------------


def test_netspec_defaults_are_denoise() -> None:
    assert NetSpec() == DENOISE_SPEC
    assert REFERENCE_SPECS["restore_barbara"] is DENOISE_SPEC
    assert REFERENCE_SPECS["inpaint_library"] is INPAINT_LIBRARY_SPEC


def test_netspec_stride_multiple() -> None:
    assert DENOISE_SPEC.stride_multiple == 32
    assert INPAINT_LIBRARY_SPEC.stride_multiple == 64
    assert NetSpec(kind="unet", unet_more_layers=0).stride_multiple == 16
    assert INPAINT_LIBRARY_UNET_SPEC.stride_multiple == 32
    assert INPAINT_LIBRARY_RESNET_SPEC.stride_multiple == 1


def test_netspec_lists_become_tuples() -> None:
    spec = NetSpec(
        channels_down=[8, 8], channels_up=[8, 8], channels_skip=[0, 4], filter_size_down=[5, 3]
    )
    assert spec.channels_down == (8, 8) and spec.filter_size_down == (5, 3)
    hash(spec)


def test_netspec_scaled() -> None:
    small = JPEG_SPEC.scaled(0.125)
    assert small.channels_down == (1, 2, 4, 8, 16)
    assert small.channels_up == (1, 2, 4, 8, 16)
    assert small.channels_skip == (0, 0, 0, 1, 1)
    assert small.input_channels == JPEG_SPEC.input_channels
    assert INPAINT_KATE_SPEC.scaled(0.25).channels_skip == (32,) * 5
    assert INPAINT_LIBRARY_RESNET_SPEC.scaled(0.25).resnet_channels == 8
    assert INPAINT_LIBRARY_UNET_SPEC.scaled(0.5).unet_feature_scale == 16
    with pytest.raises(ValueError, match="width_factor"):
        DENOISE_SPEC.scaled(0)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"channels_up": (128,) * 4}, "channels_up"),
        ({"channels_skip": (4,) * 6}, "channels_skip"),
        ({"channels_down": ()}, "channels_down"),
        ({"channels_down": (128, 0, 128, 128, 128)}, "channels_down"),
        ({"channels_skip": (4, 4, -1, 4, 4)}, "channels_skip"),
        ({"input_channels": 0}, "input_channels"),
        ({"input_channels": 2.5}, "input_channels"),
        ({"kind": "vgg"}, "kind"),
        ({"pad": "circular"}, "pad"),
        ({"upsample_mode": "bicubic"}, "upsample_mode"),
        ({"upsample_mode": "deconv"}, "upsample_mode"),
        ({"upsample_mode": ("nearest",) * 4}, "upsample_mode"),
        ({"downsample_mode": "lanczos2"}, "downsample_mode"),
        ({"act_fun": "GELU"}, "act_fun"),
        ({"filter_size_down": 0}, "filter_size_down"),
        ({"filter_size_up": (3, 3)}, "filter_size_up"),
        ({"filter_skip_size": -1}, "filter_skip_size"),
        ({"unet_feature_scale": 0}, "unet_feature_scale"),
        ({"resnet_channels": 0}, "resnet_channels"),
    ],
)
def test_netspec_validation(kwargs: dict, field: str) -> None:
    with pytest.raises(ValueError, match=field) as info:
        NetSpec(**kwargs)
    value = next(iter(kwargs.values()))
    if not isinstance(value, tuple):
        assert repr(value) in str(info.value) or str(value) in str(info.value)


def test_skip_and_build_net_validation() -> None:
    with pytest.raises(ValueError, match="equal length"):
        skip(3, 3, channels_down=[8, 8], channels_up=[8], channels_skip=[0, 0])
    with pytest.raises(ValueError, match="filter_size_down"):
        skip(3, 3, channels_down=[8, 8], channels_up=[8, 8], channels_skip=[0, 0],
             filter_size_down=[3])
    with pytest.raises(ValueError, match="pad"):
        skip(3, 3, channels_down=[8], channels_up=[8], channels_skip=[0],
             pad="same")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="output_channels"):
        build_net(DENOISE_SPEC, 0)
