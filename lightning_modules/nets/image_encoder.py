"""Image encoder: Primus backbone -> 1×1×1 Conv3d projector -> token pooler (colipri layout)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import torch
from einops import rearrange
from torch import nn

from lightning_modules.nets.attention_pool import AttentionPool1D, build_pooler
from lightning_modules.nets.primus_encoder import build_primus


class ImageOutput(NamedTuple):
    tokens: torch.Tensor  # (B, N, proj_dim) projected tokens, N = d*h*w in (d h w) order, pre-pooling
    grid: tuple[int, int, int]  # (d, h, w) token grid
    pooled: torch.Tensor  # (B, proj_dim), not normalised


class ImageEncoder(nn.Module):
    """State-dict names match ``colipri.model.image.ImageEncoder``: ``backbone.*``, ``projector.*``, ``pooler.*``."""

    def __init__(self, backbone: nn.Module, projector: nn.Conv3d, pooler: nn.Module) -> None:
        super().__init__()
        if hasattr(backbone, "up_projection"):
            backbone.up_projection = nn.Identity()  # encoder tokens, not the Primus decoder output
        self.backbone = backbone
        self.projector = projector
        self.pooler = pooler

    @property
    def patch_size(self) -> tuple[int, int, int]:
        return tuple(self.backbone.down_projection.proj.stride)  # type: ignore[union-attr,return-value]

    @property
    def embed_dim(self) -> int:
        return int(self.projector.in_channels)

    @property
    def proj_dim(self) -> int:
        return int(self.projector.out_channels)

    def feature_map(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 1, D, H, W) -> projected feature map (B, proj_dim, d, h, w)."""
        return self.projector(self.backbone(images))

    def forward(self, images: torch.Tensor) -> ImageOutput:
        feature_map = self.feature_map(images)
        d, h, w = feature_map.shape[2:]
        tokens = rearrange(feature_map, "b c d h w -> b (d h w) c")
        return ImageOutput(tokens=tokens, grid=(d, h, w), pooled=self.pooler(tokens))

    def dense(self, images: torch.Tensor) -> torch.Tensor:
        """Language-aligned dense map (B, proj_dim, d, h, w) through the pooler's value/out projections.

        Only for attention poolers (MaskCLIP trick; colipri's ``pool=False`` path).
        """
        if not isinstance(self.pooler, AttentionPool1D):
            raise TypeError(f"dense() needs an attention pooler, got {type(self.pooler).__name__}")
        return self.pooler.forward_dense(self.feature_map(images))


def build_image_encoder(
    size: str,
    input_size: int | Sequence[int],
    patch_size: int | Sequence[int] = 8,
    proj_dim: int = 768,
    pool_heads: int = 12,
    pooler: str = "attention",
    **primus_kwargs: Any,
) -> ImageEncoder:
    """Primus (see ``build_primus`` for ``primus_kwargs``) + Conv3d(embed, proj_dim, 1) + pooler.

    ``pooler``: "attention" (colipri default), "multi_query", "mean" or "max".
    """
    backbone = build_primus(size, input_size, patch_size, **primus_kwargs)
    projector = nn.Conv3d(backbone.embed_dim, proj_dim, kernel_size=1)
    return ImageEncoder(backbone, projector, build_pooler(pooler, proj_dim, pool_heads))
