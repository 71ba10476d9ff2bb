"""Uniferum segmentation targets: max-pool by d/u, then u^3 patches in the encoder's token order."""

from __future__ import annotations

import pytest
import torch
from einops import rearrange

from datamodules.seg_targets import dice, patchify, seg_target, unpatchify


def _hand_built_target(mask: torch.Tensor, pool: int, u: int) -> torch.Tensor:
    """Loops, no einops: max over each pool^3 block, then token (i, j, k) lists its u^3 cells in
    (a, b, c) order, tokens in (i, j, k) raster order."""
    sx, sy, sz = (s // pool for s in mask.shape)
    pooled = torch.zeros(sx, sy, sz)
    for x in range(sx):
        for y in range(sy):
            for z in range(sz):
                block = mask[x * pool : (x + 1) * pool, y * pool : (y + 1) * pool, z * pool : (z + 1) * pool]
                pooled[x, y, z] = block.max()
    rows = []
    for i in range(sx // u):
        for j in range(sy // u):
            for k in range(sz // u):
                cells = [
                    pooled[i * u + a, j * u + b, k * u + c]
                    for a in range(u)
                    for b in range(u)
                    for c in range(u)
                ]
                rows.append(torch.stack(cells))
    return torch.stack(rows)


def test_seg_target_equals_a_hand_built_one() -> None:
    generator = torch.Generator().manual_seed(0)
    mask = (torch.rand(16, 8, 24, generator=generator) > 0.99).float()  # sparse: pooling matters
    target = seg_target(mask, downsample=8, u=2)  # pool 4, tokens on a 2 x 1 x 3 grid
    expected = _hand_built_target(mask, pool=4, u=2)
    assert target.shape == (2 * 1 * 3, 8)
    assert torch.equal(target, expected)
    assert 0 < target.sum() < target.numel()


def test_token_order_matches_the_encoder_feature_map_flattening() -> None:
    """Token t of the target describes the same block as token t of
    rearrange(feature_map, "b c x y z -> b (x y z) c")."""
    grid = (2, 3, 2)
    block_id = torch.arange(12, dtype=torch.float32).view(*grid)
    # A mask whose every u^3 block holds its block's id: each target row must be constant = its index.
    u = 2
    volume = block_id.repeat_interleave(u, 0).repeat_interleave(u, 1).repeat_interleave(u, 2)
    patches = patchify(volume, u)
    feature_ids = rearrange(block_id[None, None], "b c x y z -> b (x y z) c")[0, :, 0]
    assert torch.equal(patches[:, 0], feature_ids)
    assert torch.equal(patches, feature_ids[:, None].expand(-1, u**3))


def test_unpatchify_inverts_patchify() -> None:
    volume = torch.randn(3, 8, 12, 4)
    assert torch.equal(unpatchify(patchify(volume, 4), (2, 3, 1), 4), volume)


def test_seg_target_rejects_bad_sizes() -> None:
    with pytest.raises(ValueError, match="multiple"):
        seg_target(torch.zeros(30, 32, 32), downsample=32, u=4)
    with pytest.raises(ValueError, match="u=3"):
        seg_target(torch.zeros(32, 32, 32), downsample=32, u=3)


def test_dice() -> None:
    a = torch.zeros(4, 4, 4)
    b = torch.zeros(4, 4, 4)
    a[:2] = 1
    b[1:3] = 1
    assert float(dice(a, b)) == pytest.approx(2 * 16 / 64)
    assert float(dice(a, a)) == pytest.approx(1.0)
    assert float(dice(torch.zeros(2, 2, 2), torch.zeros(2, 2, 2))) == pytest.approx(1.0)
