"""Projectors from a frozen image encoder's tokens into a causal LM's embedding space
(``reportgen.projector``; lightning_modules/report_generation.py).

- ``mlp2x``: LLaVA-1.5's two-layer MLP with GELU, one LM position per visual token (COLIPRI C.4).
- ``perceiver``: RadFM's perceiver resampler (Flamingo's): ``num_latents`` learned latents that
  cross-attend to [visual tokens; latents] in ``layers`` blocks, so any number of visual tokens
  becomes a fixed ``num_latents`` LM positions.
- ``qformer``: RadFound's instruction-aware Q-Former (InstructBLIP's): learned queries self-attend
  jointly with the instruction's tokens, then only the queries cross-attend to the visual tokens;
  the queries become the LM positions.

The blocks are written from ``torch.nn.MultiheadAttention`` because no maintained package in our
stack provides a 3D-agnostic perceiver resampler or an instruction-aware Q-Former without pulling
a whole model zoo (and its 2D image processors) along.
"""

from __future__ import annotations

import torch
from torch import nn

PROJECTORS = ("mlp2x", "perceiver", "qformer")


def _feed_forward(dim: int, ratio: int = 4) -> nn.Sequential:
    return nn.Sequential(
        nn.LayerNorm(dim), nn.Linear(dim, dim * ratio), nn.GELU(), nn.Linear(dim * ratio, dim)
    )


class MLP2xProjector(nn.Module):
    """LLaVA-1.5's ``mlp2x_gelu``: Linear → GELU → Linear, token by token."""

    def __init__(self, vision_dim: int, lm_dim: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(vision_dim, lm_dim), nn.GELU(), nn.Linear(lm_dim, lm_dim))

    def forward(self, tokens: torch.Tensor, instruction: torch.Tensor | None = None) -> torch.Tensor:
        return self.net(tokens)


class _PerceiverBlock(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.norm_media = nn.LayerNorm(dim)
        self.norm_latents = nn.LayerNorm(dim)
        self.attention = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.feed_forward = _feed_forward(dim)

    def forward(self, media: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        queries = self.norm_latents(latents)
        keys = torch.cat([self.norm_media(media), queries], dim=1)  # Flamingo: latents see themselves
        latents = latents + self.attention(queries, keys, keys, need_weights=False)[0]
        return latents + self.feed_forward(latents)


class PerceiverResampler(nn.Module):
    """RadFM's perceiver: (B, N, vision_dim) → (B, num_latents, lm_dim)."""

    def __init__(
        self, vision_dim: int, lm_dim: int, width: int, num_latents: int, layers: int, heads: int
    ) -> None:
        super().__init__()
        self.input = nn.Linear(vision_dim, width)
        self.latents = nn.Parameter(torch.randn(num_latents, width) * width**-0.5)
        self.blocks = nn.ModuleList(_PerceiverBlock(width, heads) for _ in range(layers))
        self.norm = nn.LayerNorm(width)
        self.output = nn.Linear(width, lm_dim)

    def forward(self, tokens: torch.Tensor, instruction: torch.Tensor | None = None) -> torch.Tensor:
        media = self.input(tokens)
        latents = self.latents.unsqueeze(0).expand(tokens.shape[0], -1, -1)
        for block in self.blocks:
            latents = block(media, latents)
        return self.output(self.norm(latents))


class _QFormerBlock(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.norm_joint = nn.LayerNorm(dim)
        self.self_attention = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm_queries = nn.LayerNorm(dim)
        self.norm_media = nn.LayerNorm(dim)
        self.cross_attention = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.feed_forward = _feed_forward(dim)

    def forward(self, queries: torch.Tensor, instruction: torch.Tensor, media: torch.Tensor) -> torch.Tensor:
        count = queries.shape[1]
        joint = self.norm_joint(torch.cat([queries, instruction], dim=1))
        mixed = self.self_attention(joint, joint, joint, need_weights=False)[0]
        queries, instruction = queries + mixed[:, :count], instruction + mixed[:, count:]
        q, m = self.norm_queries(queries), self.norm_media(media)
        queries = queries + self.cross_attention(q, m, m, need_weights=False)[0]  # queries only
        return torch.cat([queries + self.feed_forward(queries), instruction], dim=1)


class InstructionQFormer(nn.Module):
    """RadFound's Q-Former: (B, N, vision_dim) tokens and (B, T, lm_dim) instruction embeddings →
    (B, num_queries, lm_dim)."""

    def __init__(
        self, vision_dim: int, lm_dim: int, width: int, num_queries: int, layers: int, heads: int
    ) -> None:
        super().__init__()
        self.input = nn.Linear(vision_dim, width)
        self.instruction_input = nn.Linear(lm_dim, width)
        self.queries = nn.Parameter(torch.randn(num_queries, width) * width**-0.5)
        self.blocks = nn.ModuleList(_QFormerBlock(width, heads) for _ in range(layers))
        self.norm = nn.LayerNorm(width)
        self.output = nn.Linear(width, lm_dim)

    def forward(self, tokens: torch.Tensor, instruction: torch.Tensor | None = None) -> torch.Tensor:
        if instruction is None:
            raise ValueError("the qformer projector needs the instruction's token embeddings")
        media = self.input(tokens)
        count = self.queries.shape[0]
        instruction = self.instruction_input(instruction).expand(tokens.shape[0], -1, -1)
        joint = torch.cat([self.queries.unsqueeze(0).expand(tokens.shape[0], -1, -1), instruction], dim=1)
        for block in self.blocks:
            joint = block(joint[:, :count], joint[:, count:], media)
        return self.output(self.norm(joint[:, :count]))


def build_projector(
    kind: str,
    vision_dim: int,
    lm_dim: int,
    width: int,
    num_latents: int,
    layers: int,
    heads: int,
) -> nn.Module:
    """The ``reportgen.projector`` named ``kind`` (``PROJECTORS``)."""
    if kind == "mlp2x":
        return MLP2xProjector(vision_dim, lm_dim)
    if kind == "perceiver":
        return PerceiverResampler(vision_dim, lm_dim, width, num_latents, layers, heads)
    if kind == "qformer":
        return InstructionQFormer(vision_dim, lm_dim, width, num_latents, layers, heads)
    raise ValueError(f"Unknown projector {kind!r}; choose one of {', '.join(PROJECTORS)}")
