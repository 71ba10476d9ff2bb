"""MONAI 3D EfficientNet-B0 encoder and 2D -> 3D weight inflation (tested with random 2D weights)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import timm
import torch
import torch.nn.functional as F
from monai.networks.nets import EfficientNetBN
from safetensors.torch import save_file

from lightning_modules.nets.efficientnet3d import (
    EfficientNet3DEncoder,
    inflate_state_dict,
    load_inflated_weights,
)


@pytest.fixture(scope="module")
def weights_2d() -> dict[str, torch.Tensor]:
    """A randomly initialised 2D EfficientNet-B0 (RGB), every tensor perturbed so nothing is a
    default value by accident."""
    torch.manual_seed(0)
    net = EfficientNetBN("efficientnet-b0", pretrained=False, spatial_dims=2, in_channels=3)
    state = net.state_dict()
    return {
        k: (v + 0.01 * torch.randn_like(v.float())).to(v.dtype) if v.is_floating_point() else v
        for k, v in state.items()
    }


def test_encoder_is_b0_sized_and_downsamples_by_32() -> None:
    encoder = EfficientNet3DEncoder()
    params = sum(p.numel() for p in encoder.parameters())
    assert 4.0e6 < params < 4.8e6  # ~4.7 M (the 1280 -> 1 classifier is dropped)
    out = encoder(torch.randn(1, 1, 64, 32, 96))
    assert out.shape == (1, 1280, 2, 1, 3)


def test_inflation_repeats_every_2d_kernel_along_depth(
    weights_2d: dict[str, torch.Tensor], tmp_path: Path
) -> None:
    path = tmp_path / "effnet_b0_2d.pth"
    torch.save(weights_2d, path)
    encoder = EfficientNet3DEncoder()
    missing = load_inflated_weights(encoder, path)
    assert missing == []
    state = {k.removeprefix("net."): v for k, v in encoder.state_dict().items()}
    n_kernels = 0
    for key, value in state.items():
        if key not in weights_2d:
            continue
        source = weights_2d[key]
        if value.ndim == 5:
            n_kernels += 1
            if key == "_conv_stem.weight":  # RGB -> one channel: the sum over colours
                source = source.sum(dim=1, keepdim=True)
            for d in range(value.shape[2]):
                assert torch.equal(value[:, :, d], source), f"{key} slice {d}"
        else:
            assert torch.equal(value, source), key
    assert n_kernels > 60  # stem, head and every block's convolutions


def test_inflated_conv_on_a_depth_constant_input_repeats_the_2d_response(
    weights_2d: dict[str, torch.Tensor],
) -> None:
    """'copy' mode: a 3D kernel made of kd copies sees a depth-constant input as kd times the 2D
    image, so interior depth slices give kd x the 2D convolution."""
    key = "_blocks.1.0._expand_conv.weight" if "_blocks.1.0._expand_conv.weight" in weights_2d else None
    key = key or next(k for k, v in weights_2d.items() if v.ndim == 4 and v.shape[-1] == 3 and v.shape[1] > 1)
    w2 = weights_2d[key].float()
    target = {key: torch.zeros(*w2.shape[:2], 3, *w2.shape[2:])}
    w3 = inflate_state_dict({key: w2}, target)[0][key]
    image = torch.randn(1, w2.shape[1], 9, 9)
    volume = image[:, :, None].expand(-1, -1, 5, -1, -1)
    out3 = F.conv3d(volume, w3, padding=1)[:, :, 2]
    out2 = F.conv2d(image, w2, padding=1)
    torch.testing.assert_close(out3, 3 * out2, rtol=1e-4, atol=1e-4)
    w3_mean = inflate_state_dict({key: w2}, target, mode="mean")[0][key]
    torch.testing.assert_close(F.conv3d(volume, w3_mean, padding=1)[:, :, 2], out2, rtol=1e-4, atol=1e-4)


def test_efficientnet_pytorch_keys_without_the_stage_index_are_matched(
    weights_2d: dict[str, torch.Tensor],
) -> None:
    """efficientnet_pytorch's checkpoint (what MONAI's pretrained=True loads) names a block
    ``_blocks.<n>.`` where MONAI has ``_blocks.<stage>.<n>.`` (n counts blocks globally in both)."""
    flat = {re.sub(r"^_blocks\.\d+\.(\d+)\.", r"_blocks.\1.", k): v for k, v in weights_2d.items()}
    assert set(flat) != set(weights_2d)
    target = {k.removeprefix("net."): v for k, v in EfficientNet3DEncoder().state_dict().items()}
    from_monai, missing_monai = inflate_state_dict(weights_2d, target)
    from_flat, missing_flat = inflate_state_dict(flat, target)
    assert missing_monai == missing_flat == []
    assert all(torch.equal(from_monai[k], from_flat[k]) for k in target)


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_timm_tf_efficientnet_b0_weights_are_inflated_into_every_3d_tensor(
    suffix: str, tmp_path: Path
) -> None:
    """The paper's file: timm's tf_efficientnet_b0 state dict (random weights here, same names and
    shapes as the ImageNet one). Every 3D tensor comes from its timm counterpart: block 1.0's
    depthwise kernel repeated along depth, the stem summed over RGB, the head's batch-norm statistics."""
    torch.manual_seed(0)
    net_2d = timm.create_model("tf_efficientnet_b0", pretrained=False)
    state = {k: v.clone() for k, v in net_2d.state_dict().items()}
    path = tmp_path / f"tf_efficientnet_b0{suffix}"
    if suffix == ".safetensors":
        save_file(state, str(path))
    else:
        torch.save(state, path)
    encoder = EfficientNet3DEncoder()
    assert load_inflated_weights(encoder, path) == []
    loaded = encoder.state_dict()
    depthwise = loaded["net._blocks.1.1._depthwise_conv.weight"]  # MONAI counts blocks globally
    assert depthwise.shape == (96, 1, 3, 3, 3)
    for d in range(3):
        assert torch.equal(depthwise[:, :, d], state["blocks.1.0.conv_dw.weight"])
    assert torch.equal(
        loaded["net._blocks.1.1._expand_conv.weight"][:, :, 0], state["blocks.1.0.conv_pw.weight"]
    )
    assert torch.equal(
        loaded["net._blocks.0.0._project_conv.weight"][:, :, 0], state["blocks.0.0.conv_pw.weight"]
    )
    stem = state["conv_stem.weight"].sum(dim=1, keepdim=True)
    assert torch.equal(loaded["net._conv_stem.weight"][:, :, 1], stem)
    assert torch.equal(loaded["net._bn1.running_var"], state["bn2.running_var"])  # the head's norm


def test_a_file_without_an_efficientnet_stem_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "resnet.pth"
    torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7)}, path)
    with pytest.raises(ValueError, match="not a 2D EfficientNet-B0 state dict"):
        load_inflated_weights(EfficientNet3DEncoder(), path)
