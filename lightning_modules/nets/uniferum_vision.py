"""Uniferum's vision side: a 3D backbone -> visual tokens (B, N, C) in (x y z) raster order.

``efficientnet_b0`` (the paper's: MONAI 3D EfficientNet-B0, 1280 channels at 1/32, optionally
inflated from 2D weights) or ``primus`` (the COLIPRI encoder, so a pretrained COLIPRI backbone can
be reused here; tokens at 1/patch).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from einops import rearrange
from torch import nn

from lightning_modules.nets.efficientnet3d import EfficientNet3DEncoder, load_inflated_weights
from lightning_modules.nets.primus_encoder import build_primus

VISION_ARCHS = ("efficientnet_b0", "primus")


class VisionTokens(nn.Module):
    """``forward(images (B, 1, X, Y, Z)) -> tokens (B, N, channels)``; ``grid(input_shape)`` is the
    token grid, ``downsample`` the input voxels per token side."""

    def __init__(self, backbone: nn.Module, downsample: int, channels: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.downsample = int(downsample)
        self.channels = int(channels)

    def grid(self, input_shape: Sequence[int]) -> tuple[int, int, int]:
        x, y, z = (int(s) // self.downsample for s in input_shape)
        return x, y, z

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return rearrange(self.backbone(images), "b c x y z -> b (x y z) c")


def build_uniferum_vision(
    arch: str,
    input_shape: Sequence[int],
    inflate_from: str | None = None,
    inflate_mode: str = "copy",
    primus_size: str = "tiny",
    primus_patch: int = 8,
    drop_path: float = 0.0,
) -> VisionTokens:
    """The vision encoder for inputs of ``input_shape`` (every side a multiple of the downsampling)."""
    if arch == "efficientnet_b0":
        backbone = EfficientNet3DEncoder(in_channels=1)
        if inflate_from:
            if not Path(inflate_from).is_file():
                raise FileNotFoundError(f"uniferum.vision_weights_2d={inflate_from}: no such file")
            load_inflated_weights(backbone, inflate_from, inflate_mode)
        downsample, channels = backbone.downsample, backbone.out_channels
    elif arch == "primus":
        backbone = build_primus(
            primus_size, tuple(int(s) for s in input_shape), primus_patch, drop_path=drop_path
        )
        downsample, channels = primus_patch, int(backbone.embed_dim)
    else:
        raise ValueError(f"Unknown vision arch {arch!r}; valid: {', '.join(VISION_ARCHS)}")
    bad = [int(s) for s in input_shape if int(s) % downsample]
    if bad:
        raise ValueError(
            f"input_shape {tuple(input_shape)} must be a multiple of {downsample} ({arch}) on every side"
        )
    return VisionTokens(backbone, downsample, channels)
