"""Patch dropping on Primus: masked patches are never encoded and visible ones keep their RoPE
positions.

Positional check: a kept token's encoder output with the masked patches dropped must equal its
output in the full sequence when attention is restricted to the kept tokens (an attention mask
that hides the masked keys). Everything else in a pre-norm ViT block is per token, so the two runs
compute the same function exactly when every kept token is rotated by the RoPE of its own 3D
position; rotating by any other position changes the attention logits (q_i . k_j depends on the
positions' difference) and the outputs.
"""

from __future__ import annotations

import pytest
import torch
from einops import rearrange

from lightning_modules.nets.mae_masking import sample_mask
from lightning_modules.nets.primus_encoder import build_primus
from lightning_modules.nets.primus_patch_drop import encode_visible, gather_rope

INPUT, PATCH = 32, 8
GRID = (INPUT // PATCH,) * 3


@pytest.fixture(scope="module")
def backbone():
    torch.manual_seed(0)
    return build_primus("tiny", INPUT, PATCH, drop_path=0.0, depth=2).eval()


def _restricted_full_sequence(backbone, images: torch.Tensor, masked: torch.Tensor, rope: torch.Tensor):
    """Every patch through the Eva blocks, but no query may attend to a masked patch."""
    eva = backbone.eva
    x = rearrange(backbone.down_projection(images), "b c d h w -> b (d h w) c")
    hide = torch.zeros(masked.shape[0], 1, masked.shape[1], masked.shape[1])
    hide.masked_fill_(masked[:, None, None, :], float("-inf"))
    for block in eva.blocks:
        x = block(x, rope=rope, attn_mask=hide)
    return eva.norm(x)


def _kept(tokens: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    return tokens.gather(1, keep[..., None].expand(-1, -1, tokens.shape[-1]))


def test_all_patches_kept_equals_the_backbone(backbone) -> None:
    images = torch.randn(3, 1, INPUT, INPUT, INPUT)
    with torch.no_grad():
        full = rearrange(backbone(images), "b c d h w -> b (d h w) c")
        visible = encode_visible(backbone, images, torch.arange(full.shape[1]).expand(3, -1))
    torch.testing.assert_close(visible, full, rtol=0, atol=1e-6)


@pytest.mark.parametrize("batch", [2, 4])  # 4 = the number of heads, where a batch/heads mix-up hides
@pytest.mark.parametrize("style", ["random", "block"])
def test_visible_tokens_keep_their_rope_positions(backbone, batch: int, style: str) -> None:
    images = torch.randn(batch, 1, INPUT, INPUT, INPUT)
    mask = sample_mask(batch, GRID, 0.75, style, generator=torch.Generator().manual_seed(batch))
    rope = backbone.eva.rope.get_embed()
    with torch.no_grad():
        visible = encode_visible(backbone, images, mask.keep_indices)
        restricted = _kept(_restricted_full_sequence(backbone, images, mask.masked, rope), mask.keep_indices)
        unrestricted = _kept(rearrange(backbone(images), "b c d h w -> b (d h w) c"), mask.keep_indices)
    assert visible.shape == (batch, mask.num_keep, backbone.embed_dim)
    torch.testing.assert_close(visible, restricted, rtol=0, atol=1e-5)
    assert (visible - unrestricted).abs().max() > 1e-3  # the restriction matters: a real check


def test_wrong_positions_are_detected(backbone) -> None:
    """Negative control: the dropped sequence rotated by the first N_keep positions (what a naive
    truncation of the RoPE table gives) does not match the restricted full sequence."""
    images = torch.randn(2, 1, INPUT, INPUT, INPUT)
    mask = sample_mask(2, GRID, 0.75, "random", generator=torch.Generator().manual_seed(5))
    eva = backbone.eva
    rope = eva.rope.get_embed()
    with torch.no_grad():
        tokens = _kept(
            rearrange(backbone.down_projection(images), "b c d h w -> b (d h w) c"), mask.keep_indices
        )
        naive = gather_rope(rope, torch.arange(mask.num_keep).expand(2, -1))
        x = tokens
        for block in eva.blocks:
            x = block(x, rope=naive)
        wrong = eva.norm(x)
        restricted = _kept(_restricted_full_sequence(backbone, images, mask.masked, rope), mask.keep_indices)
    assert (wrong - restricted).abs().max() > 1e-3


def test_masked_patches_never_reach_the_encoder(backbone) -> None:
    images = torch.randn(2, 1, INPUT, INPUT, INPUT)
    mask = sample_mask(2, GRID, 0.75, "random", generator=torch.Generator().manual_seed(3))
    voxel_masked = (
        rearrange(mask.masked.view(2, *GRID).float(), "b d h w -> b 1 d h w")
        .repeat_interleave(PATCH, 2)
        .repeat_interleave(PATCH, 3)
        .repeat_interleave(PATCH, 4)
    )
    changed = images + 5.0 * voxel_masked * torch.randn_like(images)
    with torch.no_grad():
        torch.testing.assert_close(
            encode_visible(backbone, changed, mask.keep_indices),
            encode_visible(backbone, images, mask.keep_indices),
            rtol=0,
            atol=0,
        )


def test_gradient_checkpointing_gives_the_same_tokens(backbone) -> None:
    images = torch.randn(2, 1, INPUT, INPUT, INPUT)
    keep = sample_mask(2, GRID, 0.75, "random", generator=torch.Generator().manual_seed(4)).keep_indices
    plain = encode_visible(backbone, images, keep)
    backbone.eva.set_grad_checkpointing(True)
    try:
        checkpointed = encode_visible(backbone, images, keep)
    finally:
        backbone.eva.set_grad_checkpointing(False)
    torch.testing.assert_close(checkpointed, plain)
