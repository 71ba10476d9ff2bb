"""MAE head: patch layout, the masked-patch loss (hand-computed), norm_pix, the mean-predictor
reference, and a decoder that only learns from masked patches."""

from __future__ import annotations

import pytest
import torch

from lightning_modules.nets.mae_head import (
    MAEHead,
    masked_mse,
    mean_predictor_loss,
    patch_targets,
    patchify,
    unpatchify,
)
from lightning_modules.nets.mae_masking import sample_mask
from lightning_modules.nets.primus_encoder import build_primus

INPUT, PATCH = 32, 8
GRID = (INPUT // PATCH,) * 3


def test_masked_mse_counts_masked_patches_only() -> None:
    # 4 patches of 2 voxels; patches 0 and 2 are masked.
    target = torch.tensor([[[0.0, 0.0], [0.0, 0.0], [1.0, 1.0], [5.0, 5.0]]])
    prediction = torch.tensor([[[1.0, 3.0], [100.0, -100.0], [3.0, 1.0], [-50.0, 7.0]]])
    masked = torch.tensor([[True, False, True, False]])
    # patch 0: (1 + 9) / 2 = 5; patch 2: (4 + 0) / 2 = 2; mean over the 2 masked patches = 3.5
    assert masked_mse(prediction, target, masked).item() == pytest.approx(3.5)
    # Visible patches may be anything.
    prediction[0, 1] = 1e6
    assert masked_mse(prediction, target, masked).item() == pytest.approx(3.5)


def test_masked_mse_weights_every_masked_patch_of_the_batch_equally() -> None:
    target = torch.zeros(2, 3, 1)
    prediction = torch.tensor([[[1.0], [2.0], [3.0]], [[4.0], [5.0], [6.0]]])
    masked = torch.tensor([[True, False, False], [True, True, False]])
    assert masked_mse(prediction, target, masked).item() == pytest.approx((1 + 16 + 25) / 3)


def test_mean_predictor_loss_by_hand() -> None:
    # Visible patches 1 and 3 of sample 0 have mean (2 + 4 + 6 + 8) / 4 = 5.
    target = torch.tensor([[[1.0, 3.0], [2.0, 4.0], [9.0, 5.0], [6.0, 8.0]]])
    masked = torch.tensor([[True, False, True, False]])
    # masked voxels 1, 3, 9, 5 against 5: (16 + 4 + 16 + 0) / 4 = 9
    assert mean_predictor_loss(target, masked).item() == pytest.approx(9.0)


def test_patchify_order_matches_the_token_grid() -> None:
    images = torch.zeros(1, 1, INPUT, INPUT, INPUT)
    images[0, 0, 8:16, 16:24, 24:32] = 1.0  # patch (1, 2, 3) of the 4^3 grid
    patches = patchify(images, (PATCH,) * 3)
    assert patches.shape == (1, 64, PATCH**3)
    assert torch.nonzero(patches.sum(-1)[0]).flatten().tolist() == [1 * 16 + 2 * 4 + 3]
    volume = torch.randn(2, 1, INPUT, INPUT, INPUT)
    assert torch.equal(unpatchify(patchify(volume, (PATCH,) * 3), GRID, (PATCH,) * 3), volume)


def test_norm_pix_standardises_each_patch() -> None:
    images = 3.0 + 2.0 * torch.randn(2, 1, INPUT, INPUT, INPUT)
    target = patch_targets(images, (PATCH,) * 3, norm_pix=True)
    torch.testing.assert_close(target.mean(-1), torch.zeros(2, 64), atol=1e-5, rtol=0)
    torch.testing.assert_close(target.var(-1), torch.ones(2, 64), atol=1e-4, rtol=0)
    assert torch.equal(patch_targets(images, (PATCH,) * 3, norm_pix=False), patchify(images, (PATCH,) * 3))


@pytest.fixture(scope="module")
def parts():
    torch.manual_seed(0)
    backbone = build_primus("tiny", INPUT, PATCH, drop_path=0.0, depth=2)
    head = MAEHead(backbone.embed_dim, GRID, (PATCH,) * 3, dim=32, depth=2, heads=4)
    return backbone, head


def test_head_forward_and_reconstruction(parts) -> None:
    backbone, head = parts
    images = torch.randn(2, 1, INPUT, INPUT, INPUT)
    mask = sample_mask(2, GRID, 0.75, "random", generator=torch.Generator().manual_seed(0))
    output = head(backbone, images, mask=mask)
    assert output.prediction.shape == (2, 64, PATCH**3) and output.loss.ndim == 0
    assert output.loss.item() == pytest.approx(
        masked_mse(output.prediction, output.target, mask.masked).item()
    )
    masked_input, reconstruction = head.reconstruction(images, output)
    visible = ~mask.masked[..., None]
    patches = patchify(images, (PATCH,) * 3)
    assert torch.equal(
        patchify(reconstruction, (PATCH,) * 3)[visible.expand_as(patches)],
        patches[visible.expand_as(patches)],
    )
    assert torch.all(patchify(masked_input, (PATCH,) * 3)[~visible.expand_as(patches)] == images.min())


def test_only_masked_patches_train_the_decoder(parts) -> None:
    """The gradient reaching the decoder's output layer comes from masked patches only: changing
    the content of visible patches of the *target* changes nothing, masked ones do."""
    backbone, head = parts
    images = torch.randn(1, 1, INPUT, INPUT, INPUT)
    mask = sample_mask(1, GRID, 0.75, "random", generator=torch.Generator().manual_seed(1))
    output = head(backbone, images, mask=mask)
    prediction = output.prediction.detach()
    changed_visible = output.target.clone()
    changed_visible[~mask.masked] += 10.0
    changed_masked = output.target.clone()
    changed_masked[mask.masked] += 10.0
    base = masked_mse(prediction, output.target, mask.masked)
    assert masked_mse(prediction, changed_visible, mask.masked) == base
    assert masked_mse(prediction, changed_masked, mask.masked) > base + 50


@pytest.fixture
def one_thread():
    """Tiny tensors on 2 shared cores: a second thread only adds waiting (20x slower here)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_a_few_steps_fit_one_volume_below_the_mean_predictor(one_thread) -> None:
    """Sanity: the head can learn (a fixed smooth 16^3 volume, fixed mask) in a few dozen steps."""
    torch.manual_seed(0)
    size, patch = 16, 4
    grid = (size // patch,) * 3
    backbone = build_primus("tiny", size, patch, drop_path=0.0, depth=1)
    head = MAEHead(backbone.embed_dim, grid, (patch,) * 3, dim=32, depth=1, heads=4)
    axis = torch.linspace(-1, 1, size)
    images = (axis[:, None, None] + 0.5 * axis[None, :, None] - axis[None, None, :]).expand(1, 1, -1, -1, -1)
    mask = sample_mask(1, grid, 0.75, "random", generator=torch.Generator().manual_seed(2))
    optimizer = torch.optim.AdamW([*backbone.parameters(), *head.parameters()], lr=3e-3)
    for _ in range(30):
        loss = head(backbone, images, mask=mask).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    output = head(backbone, images, mask=mask)
    assert output.loss < 0.3 * mean_predictor_loss(output.target, mask.masked)


def test_an_untrained_head_is_exactly_the_mean_predictor(one_thread) -> None:
    """The readout starts at zero over the visible mean, so a decoder that joins late in a decayed
    schedule starts at the mean predictor's loss rather than above it."""
    torch.manual_seed(0)
    backbone = build_primus("tiny", 16, 4, drop_path=0.0, depth=1)
    head = MAEHead(backbone.embed_dim, (4, 4, 4), (4, 4, 4), dim=32, depth=1, heads=4)
    images = torch.randn(2, 1, 16, 16, 16) * 0.3 - 0.5
    output = head(backbone, images, generator=torch.Generator().manual_seed(1))
    assert output.loss.item() == pytest.approx(
        mean_predictor_loss(output.target, output.mask.masked).item(), rel=1e-6
    )
    # the visible patches' own sample mean: sample 0 and sample 1 get different constants
    constants = output.prediction.flatten(1)
    assert torch.allclose(constants, constants[:, :1]) and not torch.isclose(constants[0, 0], constants[1, 0])
