"""Primus with patch dropping: encode only the visible patches, each at its true 3D RoPE position.

MAE never lets the encoder see a masked patch. Primus (dynamic-network-architectures) drops
patches inside ``Eva._pos_embed`` through ``patch_drop`` and gathers the RoPE table at the kept
indices with timm's ``apply_keep_indices_nlc``. Two things stop us from using that path as is
(dynamic-network-architectures 0.4.4, timm 1.0.22):

- ``Primus(patch_drop_rate > 0)`` builds ``timm.layers.PatchDropout(return_indices=True)``, an
  argument timm no longer has, and its patches are random rather than our mask styles;
- the gathered RoPE table is ``(B, N_keep, D)`` while the attention's queries are
  ``(B, heads, N_keep, head_dim)``: broadcasting pairs the batch axis with the *heads* axis, so
  it fails when ``B != heads`` and silently rotates sample ``b``'s queries with the positions of
  sample ``b`` in head ``b`` when ``B == heads``.

So :func:`encode_visible` runs the backbone's own modules (patch embedding, register tokens,
absolute positions, RoPE table, Eva blocks, final norm) in ``Eva.forward_features``' order, with
the RoPE table gathered per sample at the kept indices and given a heads axis of one. Nothing is
forked: weights and blocks are the backbone's, and with every patch kept the output equals the
backbone's own forward pass (tested).
"""

from __future__ import annotations

import torch
from dynamic_network_architectures.architectures.primus import Primus
from einops import rearrange


def gather_rope(rope: torch.Tensor, keep_indices: torch.Tensor) -> torch.Tensor:
    """RoPE table ``(N, D)`` at each sample's kept patches, as ``(B, 1, N_keep, D)`` (a heads axis of 1)."""
    gathered = rope[keep_indices]  # (B, N_keep, D)
    return rearrange(gathered, "b n d -> b 1 n d")


def encode_visible(backbone: Primus, images: torch.Tensor, keep_indices: torch.Tensor) -> torch.Tensor:
    """Encoder tokens ``(B, N_keep, C)`` of the visible patches of ``images`` (B, 1, D, H, W).

    ``keep_indices`` (B, N_keep) index patches in ``(d h w)`` raster order (the backbone's token
    order). Masked patches never enter the transformer.
    """
    eva = backbone.eva
    patches = rearrange(backbone.down_projection(images), "b c d h w -> b (d h w) c")
    num_prefix = 0
    if backbone.register_tokens is not None:
        num_prefix = backbone.register_tokens.shape[1]
        patches = torch.cat((backbone.register_tokens.expand(patches.shape[0], -1, -1), patches), dim=1)
    if eva.pos_embed is not None:
        patches = patches + eva.pos_embed
    patches = eva.pos_drop(patches)
    prefix, tokens = patches[:, :num_prefix], patches[:, num_prefix:]
    kept = tokens.gather(1, keep_indices[..., None].expand(-1, -1, tokens.shape[-1]))
    x = torch.cat((prefix, kept), dim=1)
    rope = gather_rope(eva.rope.get_embed(), keep_indices) if eva.rope is not None else None
    for block in eva.blocks:
        if eva.grad_checkpointing and torch.is_grad_enabled():
            x = torch.utils.checkpoint.checkpoint(block, x, rope=rope, use_reentrant=False)
        else:
            x = block(x, rope=rope)
    x = eva.norm(x)
    return x[:, num_prefix:]
