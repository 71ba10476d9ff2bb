"""MAE patch masks over a 3D token grid: which patches the encoder sees and which it must predict.

Three styles (COLIPRI Tab. 5, "mask style"), each masking **exactly** ``round(ratio * N)`` of the
``N = d * h * w`` patches of every sample, so every sample keeps the same number of tokens and a
batch of visible tokens stacks into one tensor:

- ``random``: a uniformly random subset (He et al. MAE).
- ``block``: the union of random cuboids of patches (edges ``min_edge .. max_edge`` patches per
  axis), added until the target count is reached; the cuboid that crosses the target is cut to the
  prefix of its new patches in raster order (a connected piece of that cuboid), so the count is exact.
- ``inverse_block``: the same cuboids mark the patches that are **kept**; everything else is masked.

Patches are indexed in ``(d h w)`` raster order, the order of the Primus token sequence.
Masks are drawn on the CPU from ``generator`` (the global RNG if ``None``) and moved to ``device``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch

MASK_STYLES = ("random", "block", "inverse_block")


class PatchMask(NamedTuple):
    masked: torch.Tensor  # (B, N) bool, True = masked (to be predicted, never encoded)
    keep_indices: torch.Tensor  # (B, N_keep) long, the visible patches in ascending order

    @property
    def num_keep(self) -> int:
        return int(self.keep_indices.shape[1])


def num_masked(num_patches: int, ratio: float) -> int:
    """Masked patches per sample: ``round(ratio * N)``, with at least one patch visible."""
    if not 0.0 <= ratio < 1.0:
        raise ValueError(f"mask ratio must be in [0, 1), got {ratio}")
    return min(int(round(ratio * num_patches)), num_patches - 1)


def _cuboid_cover(
    grid: tuple[int, int, int],
    count: int,
    min_edge: int,
    max_edge: int | None,
    generator: torch.Generator | None,
) -> torch.Tensor:
    """(d, h, w) bool: exactly ``count`` cells covered by random cuboids (last one cut in raster order)."""
    covered = torch.zeros(grid, dtype=torch.bool)
    if count == 0:
        return covered
    edges_max = [max(1, min(g, max_edge if max_edge is not None else max(min_edge, g // 2))) for g in grid]
    edges_min = [max(1, min(min_edge, e)) for e in edges_max]
    total = 0
    while total < count:
        size = [
            int(torch.randint(lo, hi + 1, (1,), generator=generator))
            for lo, hi in zip(edges_min, edges_max, strict=True)
        ]
        start = [
            int(torch.randint(0, g - s + 1, (1,), generator=generator))
            for g, s in zip(grid, size, strict=True)
        ]
        block = tuple(slice(a, a + s) for a, s in zip(start, size, strict=True))
        new = ~covered[block]
        added = int(new.sum())
        if added == 0:
            continue
        if total + added > count:
            # Keep the first (count - total) new cells of this cuboid in raster order.
            flat = new.flatten()
            positions = torch.nonzero(flat).flatten()[: count - total]
            cut = torch.zeros_like(flat)
            cut[positions] = True
            new = cut.view_as(new)
            added = count - total
        covered[block] |= new
        total += added
    return covered


def sample_mask(
    batch: int,
    grid: Sequence[int],
    ratio: float = 0.75,
    style: str = "random",
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    min_edge: int = 2,
    max_edge: int | None = None,
) -> PatchMask:
    """One mask per sample over the ``grid = (d, h, w)`` patch grid.

    ``min_edge`` / ``max_edge`` bound the cuboid edges (in patches) of the block styles; the
    default ``max_edge`` is half the grid edge (at least ``min_edge``).
    """
    if style not in MASK_STYLES:
        raise ValueError(f"Unknown mask style {style!r}; valid: {', '.join(MASK_STYLES)}")
    d, h, w = (int(g) for g in grid)
    n = d * h * w
    n_masked = num_masked(n, ratio)
    if style == "random":
        order = torch.argsort(torch.rand(batch, n, generator=generator), dim=1)
        masked = torch.zeros(batch, n, dtype=torch.bool)
        masked.scatter_(1, order[:, :n_masked], True)
    else:
        target = n_masked if style == "block" else n - n_masked
        covers = [
            _cuboid_cover((d, h, w), target, min_edge, max_edge, generator).flatten() for _ in range(batch)
        ]
        covered = torch.stack(covers)
        masked = covered if style == "block" else ~covered
    keep_indices = torch.nonzero(~masked)[:, 1].view(batch, n - n_masked)
    return PatchMask(masked.to(device), keep_indices.to(device))
