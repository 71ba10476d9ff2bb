"""MAE masks: the exact ratio for every style, consistent keep indices, contiguous blocks."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from lightning_modules.nets.mae_masking import MASK_STYLES, num_masked, sample_mask

GRIDS = [(6, 6, 6), (4, 5, 3), (8, 8, 8), (20, 20, 20)]


@pytest.mark.parametrize("style", MASK_STYLES)
@pytest.mark.parametrize("ratio", [0.6, 0.75, 0.9])
@pytest.mark.parametrize("grid", GRIDS)
def test_every_sample_masks_exactly_the_ratio(style: str, ratio: float, grid: tuple[int, int, int]) -> None:
    n = int(np.prod(grid))
    mask = sample_mask(3, grid, ratio, style, generator=torch.Generator().manual_seed(0))
    expected = round(ratio * n)
    assert mask.masked.shape == (3, n)
    assert mask.masked.sum(dim=1).tolist() == [expected] * 3
    assert mask.num_keep == n - expected
    for row, keep in zip(mask.masked, mask.keep_indices, strict=True):
        assert torch.equal(keep, torch.nonzero(~row).flatten())  # ascending, exactly the visible ones


def test_masks_differ_between_samples_and_follow_the_generator() -> None:
    for style in MASK_STYLES:
        a = sample_mask(4, (6, 6, 6), 0.75, style, generator=torch.Generator().manual_seed(1))
        b = sample_mask(4, (6, 6, 6), 0.75, style, generator=torch.Generator().manual_seed(1))
        assert torch.equal(a.masked, b.masked)
        assert not torch.equal(a.masked[0], a.masked[1]), style


def test_ratio_bounds() -> None:
    assert num_masked(216, 0.75) == 162
    assert num_masked(4, 0.99) == 3  # at least one visible patch
    with pytest.raises(ValueError, match="ratio"):
        num_masked(216, 1.0)
    with pytest.raises(ValueError, match="style"):
        sample_mask(1, (4, 4, 4), 0.75, "checkerboard")


def _cube_covered(cells: np.ndarray) -> np.ndarray:
    """Which True cells lie in a fully True 2x2x2 cube of cells."""
    covered = np.zeros_like(cells)
    full = cells[:-1, :-1, :-1].copy()
    for dx in (0, 1):
        for dy in (0, 1):
            for dz in (0, 1):
                full &= cells[dx : dx + full.shape[0], dy : dy + full.shape[1], dz : dz + full.shape[2]]
    for dx in (0, 1):
        for dy in (0, 1):
            for dz in (0, 1):
                covered[dx : dx + full.shape[0], dy : dy + full.shape[1], dz : dz + full.shape[2]] |= full
    return covered & cells


def _blocks(style: str, mask: torch.Tensor, grid: tuple[int, int, int]) -> np.ndarray:
    """The cells the style places cuboids on: masked (block) or kept (inverse_block) ones."""
    cells = mask.view(grid).numpy()
    return cells if style in ("block", "random") else ~cells


@pytest.mark.parametrize("style", ["block", "inverse_block"])
def test_block_masks_are_unions_of_cuboids(style: str) -> None:
    """Every cuboid has edges >= 2, so every cell of a block lies in a fully covered 2x2x2 cube,
    except the cells of the one cuboid cut to reach the exact count (at most max_edge^3 = 64 of
    them here); and every connected piece is at least one 2x2x2 cube, except at most that cut one."""
    grid, ratio = (8, 8, 8), {"block": 0.3, "inverse_block": 0.7}[style]
    mask = sample_mask(8, grid, ratio, style, generator=torch.Generator().manual_seed(2))
    for row in mask.masked:
        cells = _blocks(style, row, grid)
        assert (cells & ~_cube_covered(cells)).sum() <= 4**3
        labels, _ = ndimage.label(cells)
        sizes = np.bincount(labels.ravel())[1:]
        assert (sizes < 8).sum() <= 1, sizes


def test_random_masks_are_not_blocks() -> None:
    """The same checks fail for random masks (the block test can fail)."""
    grid = (8, 8, 8)
    mask = sample_mask(8, grid, 0.3, "random", generator=torch.Generator().manual_seed(2))
    for row in mask.masked:
        cells = _blocks("random", row, grid)
        assert (cells & ~_cube_covered(cells)).sum() > 4**3
        sizes = np.bincount(ndimage.label(cells)[0].ravel())[1:]
        assert (sizes < 8).sum() > 1
