"""GreenRFM r3d_18 encoder: stem replacement, Kinetics loading from a local file, output shapes."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torchvision.models.video import r3d_18

from lightning_modules.nets.image_encoder import ImageOutput
from lightning_modules.nets.r3d_encoder import R3DEncoder, build_r3d_encoder, load_kinetics_weights


@pytest.fixture(scope="module")
def r3d_state() -> dict[str, torch.Tensor]:
    """A seeded torchvision r3d_18 state dict whose BN buffers are randomised too (so that a
    load is visible in every tensor, not only in the parameters)."""
    torch.manual_seed(0)
    state = r3d_18(weights=None).state_dict()
    for key, value in state.items():
        if key.endswith(("running_mean", "running_var")):
            state[key] = torch.rand_like(value) + 0.5
        elif key.endswith("num_batches_tracked"):
            state[key] = torch.tensor(7)
    return state


def test_kinetics_weights_load_everywhere_except_the_replaced_stem(
    tmp_path: Path, r3d_state: dict[str, torch.Tensor]
) -> None:
    path = tmp_path / "r3d_18_kinetics.pth"
    torch.save(r3d_state, path)
    torch.manual_seed(1)
    encoder = build_r3d_encoder(stem=2, weights=str(path))
    loaded = encoder.state_dict()
    assert loaded["stem.0.weight"].shape == (64, 1, 2, 2, 2)
    assert not any(k.startswith("fc.") for k in loaded)
    for key, value in loaded.items():
        if key != "stem.0.weight":
            assert torch.equal(value, r3d_state[key]), key


@pytest.mark.parametrize("wrapper", ["state_dict", "model"])
def test_wrapped_state_dicts_load_too(
    tmp_path: Path, r3d_state: dict[str, torch.Tensor], wrapper: str
) -> None:
    path = tmp_path / "checkpoint.pth"
    torch.save({wrapper: r3d_state, "epoch": 3}, path)
    encoder = R3DEncoder(stem=4)  # the Lite stem has a different shape but is never loaded
    keys = load_kinetics_weights(encoder, path)
    assert set(keys) == set(encoder.state_dict()) - {"stem.0.weight"}
    assert torch.equal(encoder.layer4[1].conv2[1].running_var, r3d_state["layer4.1.conv2.1.running_var"])


def test_missing_weights_file_says_where_to_get_them(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.pth"
    with pytest.raises(FileNotFoundError) as error:
        build_r3d_encoder(weights=str(missing))
    message = str(error.value)
    assert f"model.image.weights={missing} does not exist" in message
    assert "r3d_18 KINETICS400_V1" in message and "point model.image.weights at the file" in message


def test_a_non_r3d_file_is_rejected_with_its_keys(tmp_path: Path) -> None:
    path = tmp_path / "other.pth"
    torch.save({"encoder.weight": torch.zeros(3), "layer1.0.conv1.0.weight": torch.zeros(1)}, path)
    with pytest.raises(ValueError, match="not a torchvision r3d_18 checkpoint") as error:
        build_r3d_encoder(weights=str(path))
    message = str(error.value)
    assert "encoder.weight" in message  # unexpected
    assert "layer4.1.conv2.1.weight" in message  # missing
    assert "layer1.0.conv1.0.weight: (1,)" in message  # misshapen

    torch.save({"state_dict": "not tensors"}, path)
    with pytest.raises(ValueError, match="state dict of tensors"):
        build_r3d_encoder(weights=str(path))


@pytest.mark.parametrize(
    ("stem", "grid", "patch"), [(2, (2, 3, 3), (16, 16, 16)), (4, (1, 2, 2), (32, 32, 32))]
)
def test_output_shapes(stem: int, grid: tuple[int, int, int], patch: tuple[int, int, int]) -> None:
    # (32, 48, 48): stem /s, then layers 2-4 halve each axis (ceil): 32/16 = 2, 48/16 = 3; /32 -> 1, 2 (ceil 1.5).
    torch.manual_seed(0)
    encoder = build_r3d_encoder(stem=stem).eval()
    assert encoder.stem[0].kernel_size == encoder.stem[0].stride == (stem,) * 3
    assert encoder.stem[0].in_channels == 1 and encoder.stem[0].padding == (0, 0, 0)
    assert encoder.patch_size == patch and encoder.proj_dim == 512
    assert isinstance(encoder.get_submodule("layer4"), torch.nn.Module)  # Grad-CAM target
    images = torch.randn(2, 1, 32, 48, 48)
    with torch.no_grad():
        out = encoder(images)
    assert isinstance(out, ImageOutput)
    n = grid[0] * grid[1] * grid[2]
    assert out.grid == grid and out.tokens.shape == (2, n, 512) and out.pooled.shape == (2, 512)
    assert torch.allclose(out.pooled, out.tokens.mean(dim=1), atol=1e-5)  # GAP of the layer4 map
    feature_map = encoder.feature_map(images)
    assert torch.equal(out.tokens[:, 1], feature_map[:, :, 0, 0, 1])  # (d h w) order: w fastest
