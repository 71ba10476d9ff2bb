"""GreenRFM heads: bias-free projections into a shared space, one shared classifier, and a
lightweight coarse-segmentation decoder.

The classifier is shared by the projected image and text embeddings ("consistency in semantic
focus"): both modalities are scored by the same label directions, which anchors the alignment
space to the diagnostic labels. The projections have no bias, so a zero feature maps to the
origin and the dot-product similarity keeps the feature magnitude as confidence.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn


class GreenRFMHeads(nn.Module):
    """``image_projection`` (image_dim -> latent_dim), ``text_projection`` (text_dim -> latent_dim),
    both bias-free, and ``classifier`` (latent_dim -> num_classes) applied to either embedding."""

    def __init__(
        self, num_classes: int, image_dim: int = 512, text_dim: int = 768, latent_dim: int = 768
    ) -> None:
        super().__init__()
        self.image_projection = nn.Linear(image_dim, latent_dim, bias=False)
        self.text_projection = nn.Linear(text_dim, latent_dim, bias=False)
        self.classifier = nn.Linear(latent_dim, num_classes)

    def project_image(self, pooled: torch.Tensor) -> torch.Tensor:
        """(B, image_dim) pooled image features -> (B, latent_dim), not normalised."""
        return self.image_projection(pooled)

    def project_text(self, cls: torch.Tensor) -> torch.Tensor:
        """(B, text_dim) [CLS] features -> (B, latent_dim), not normalised."""
        return self.text_projection(cls)

    def classify(self, embedding: torch.Tensor) -> torch.Tensor:
        """(B, latent_dim) image *or* text embedding -> (B, num_classes) label logits."""
        return self.classifier(embedding)


class CoarseSegDecoder(nn.Module):
    """Lightweight decoder: layer4 features -> coarse organ logits, for the paper's optional L_seg.

    The paper only says "we attach a lightweight decoder to predict coarse anatomical segmentation
    masks ... optimized via Cross-Entropy loss" and the public code has none, so this is ours: two
    1×1×1 convolutions (in_channels -> hidden -> num_classes) at the feature resolution, then
    trilinear upsampling to the requested size. It is deliberately weak, so the segmentation signal
    shapes the encoder's features instead of being solved by the decoder.
    """

    def __init__(self, num_classes: int, in_channels: int = 512, hidden: int = 64) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv3d(in_channels, hidden, kernel_size=1),
            nn.ReLU(inplace=True),
            nn.Conv3d(hidden, num_classes, kernel_size=1),
        )

    def forward(self, feature_map: torch.Tensor, size: Sequence[int] | None = None) -> torch.Tensor:
        """(B, in_channels, d, h, w) -> (B, num_classes, *size) logits (feature resolution if None)."""
        logits = self.net(feature_map)
        if size is None or tuple(size) == tuple(logits.shape[2:]):
            return logits
        return F.interpolate(logits, size=tuple(size), mode="trilinear", align_corners=False)

    def decode_tokens(
        self, tokens: torch.Tensor, grid: Sequence[int], size: Sequence[int] | None = None
    ) -> torch.Tensor:
        """Same, from ``ImageOutput.tokens`` (B, d·h·w, C) in (d h w) order and its ``grid``."""
        d, h, w = grid
        return self(rearrange(tokens, "b (d h w) c -> b c d h w", d=d, h=h, w=w), size)
