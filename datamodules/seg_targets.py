"""Uniferum's coarse segmentation targets: mask -> max-pool by d/u -> u^3 patches per visual token.

A vision encoder with downsampling ``d`` gives one token per d^3 input block, in ``(x y z)`` raster
order (``rearrange(feature_map, "b c x y z -> b (x y z) c")``). Each token predicts the u^3 cells of
its block after the mask is max-pooled by ``d/u``: the target of token ``(i, j, k)`` is the flattened
``pooled[i*u:(i+1)*u, j*u:(j+1)*u, k*u:(k+1)*u]`` in ``(a b c)`` order. :func:`unpatchify` undoes
it (the "unpacked" prediction at 1/(d/u) of the input resolution).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange


def patchify(volume: torch.Tensor, u: int) -> torch.Tensor:
    """(..., X, Y, Z) with sides divisible by ``u`` -> (..., tokens, u^3)."""
    return rearrange(volume, "... (x a) (y b) (z c) -> ... (x y z) (a b c)", a=u, b=u, c=u)


def unpatchify(patches: torch.Tensor, grid: tuple[int, int, int], u: int) -> torch.Tensor:
    """(..., tokens, u^3) -> (..., X*u, Y*u, Z*u) for a token ``grid`` (X, Y, Z)."""
    x, y, z = grid
    return rearrange(patches, "... (x y z) (a b c) -> ... (x a) (y b) (z c)", x=x, y=y, z=z, a=u, b=u, c=u)


def seg_target(mask: torch.Tensor, downsample: int, u: int) -> torch.Tensor:
    """A binary mask at input resolution (X, Y, Z) -> (tokens, u^3) float targets."""
    if downsample % u:
        raise ValueError(f"the encoder downsampling {downsample} must be a multiple of u={u}")
    if any(side % downsample for side in mask.shape[-3:]):
        raise ValueError(f"mask sides {tuple(mask.shape[-3:])} must be multiples of {downsample}")
    pool = downsample // u
    pooled = mask.float()
    if pool > 1:
        pooled = F.max_pool3d(pooled[None, None], kernel_size=pool)[0, 0]
    return patchify(pooled, u)


def dice(prediction: torch.Tensor, target: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Dice of binary volumes over their last three axes (1.0 when both are empty)."""
    prediction, target = prediction.float().flatten(-3), target.float().flatten(-3)
    intersection = (prediction * target).sum(-1)
    total = prediction.sum(-1) + target.sum(-1)
    return (2 * intersection + eps) / (total + eps)
