"""Token poolers: (B, N, C) tokens (+ optional validity mask) -> (B, C).

``AttentionPool1D`` and ``MultiLearnedQueryAttentionPool1D`` have the same parameter names and
semantics as ``colipri.pooling`` so that state dicts can be exchanged: an
``nn.MultiheadAttention(batch_first=True)`` stored as ``attn``, queried with the masked mean of
the tokens (or with learned queries).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn


def valid_token_mask(tokens: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor | None:
    """Boolean (B, N) mask of valid tokens (``None`` when every token is valid).

    Raises ``ValueError`` when the shape does not match or a row has no valid token.
    """
    if attention_mask is None:
        return None
    expected = tokens.shape[:2]
    if attention_mask.shape != expected:
        raise ValueError(
            f"Expected attention_mask shape {tuple(expected)}, got {tuple(attention_mask.shape)}"
        )
    valid = attention_mask.to(device=tokens.device, dtype=torch.bool)
    if not bool(valid.any(dim=1).all()):
        raise ValueError("Each sequence must contain at least one valid token")
    return valid


def masked_mean(tokens: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
    """Mean over the token axis, ignoring invalid tokens. (B, N, C) -> (B, C)."""
    if valid is None:
        return tokens.mean(dim=1)
    weights = rearrange(valid, "batch length -> batch length 1").to(tokens.dtype)
    return (tokens * weights).sum(dim=1) / weights.sum(dim=1)


class AttentionPool1D(nn.Module):
    """Multi-head attention pooling with one query: the masked mean of the tokens."""

    def __init__(self, embed_dim: int, num_heads: int) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(embed_dim, num_heads, batch_first=True)

    @property
    def embed_dim(self) -> int:
        return self.attn.embed_dim

    def forward(self, x: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """x: (B, N, C) tokens; attention_mask: (B, N), nonzero = valid. Returns (B, C)."""
        valid = valid_token_mask(x, attention_mask)
        query = rearrange(masked_mean(x, valid), "batch channels -> batch 1 channels")
        key_padding_mask = None if valid is None else ~valid
        pooled, _ = self.attn(query, x, x, key_padding_mask=key_padding_mask, need_weights=False)
        return rearrange(pooled, "batch 1 channels -> batch channels")

    def _value_out_params(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        dim = self.attn.embed_dim
        w_v = self.attn.in_proj_weight[2 * dim :]
        b_v = self.attn.in_proj_bias[2 * dim :]
        return w_v, b_v, self.attn.out_proj.weight, self.attn.out_proj.bias

    def token_embeddings(self, tokens: torch.Tensor) -> torch.Tensor:
        """Per-token embeddings in the pooled (joint image-text) space, the MaskCLIP trick: each token
        through the value projection, then the output projection, no query-key attention. What
        :meth:`forward` returns when all attention falls on that one token (every head, every query).

        tokens: (..., N, C) -> (..., N, C). Live parameters, so gradients flow.
        """
        w_v, b_v, w_o, b_o = self._value_out_params()
        return F.linear(F.linear(tokens, w_v, b_v), w_o, b_o)

    def forward_dense(self, feature_map: torch.Tensor) -> torch.Tensor:
        """Differentiable dense map (MaskCLIP trick): :meth:`token_embeddings` at every position.

        feature_map: (B, C, *spatial) -> (B, C, *spatial). Uses the live parameters, so gradients
        flow; ``to_dense()`` builds a detached, colipri-compatible module instead.
        """
        return torch.movedim(self.token_embeddings(torch.movedim(feature_map, 1, -1)), -1, 1)

    def to_dense(self) -> nn.Sequential:
        """Two 1×1×1 Conv3d layers (value projection, output projection), as in colipri.

        Applied to a (B, C, x, y, z) map, it gives the per-position language-aligned embedding:
        what attention pooling would return if all attention fell on that position.
        The convs hold copies of the current weights (no gradient link to this module).
        """
        w_v, b_v, w_o, b_o = self._value_out_params()
        dim = self.attn.embed_dim
        value_projection = nn.Conv3d(dim, dim, kernel_size=1)
        out_projection = nn.Conv3d(dim, dim, kernel_size=1)
        with torch.no_grad():
            value_projection.weight.copy_(rearrange(w_v, "c_out c_in -> c_out c_in 1 1 1"))
            value_projection.bias.copy_(b_v)
            out_projection.weight.copy_(rearrange(w_o, "c_out c_in -> c_out c_in 1 1 1"))
            out_projection.bias.copy_(b_o)
        return nn.Sequential(value_projection, out_projection).to(device=w_v.device, dtype=w_v.dtype)


class MultiLearnedQueryAttentionPool1D(AttentionPool1D):
    """Attention pooling with ``num_queries`` learned queries; the outputs are averaged.

    With the default 4 queries this matches colipri's ``MultiLearnedQueryAttentionPool1D``
    (parameter ``query`` of shape (1, 4, C)); ``num_queries=1`` gives a single learned query.
    """

    def __init__(self, embed_dim: int, num_heads: int, num_queries: int = 4) -> None:
        super().__init__(embed_dim, num_heads)
        self.query = nn.Parameter(torch.randn(1, num_queries, embed_dim) / embed_dim**0.5)

    def forward(self, x: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        valid = valid_token_mask(x, attention_mask)
        query = self.query.expand(x.shape[0], -1, -1).to(x.dtype)
        key_padding_mask = None if valid is None else ~valid
        pooled, _ = self.attn(query, x, x, key_padding_mask=key_padding_mask, need_weights=False)
        return pooled.mean(dim=1)


class MeanPool1D(nn.Module):
    """Masked average of the tokens (no parameters)."""

    def forward(self, x: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        return masked_mean(x, valid_token_mask(x, attention_mask))


class MaxPool1D(nn.Module):
    """Masked maximum over the tokens (no parameters)."""

    def forward(self, x: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        valid = valid_token_mask(x, attention_mask)
        if valid is not None:
            x = x.masked_fill(~rearrange(valid, "batch length -> batch length 1"), float("-inf"))
        return x.amax(dim=1)


POOLERS = ("attention", "multi_query", "mean", "max")


def build_pooler(kind: str, embed_dim: int, num_heads: int, num_queries: int = 4) -> nn.Module:
    """``kind``: "attention" (mean query, colipri default), "multi_query", "mean" or "max"."""
    if kind == "attention":
        return AttentionPool1D(embed_dim, num_heads)
    if kind == "multi_query":
        return MultiLearnedQueryAttentionPool1D(embed_dim, num_heads, num_queries)
    if kind == "mean":
        return MeanPool1D()
    if kind == "max":
        return MaxPool1D()
    raise ValueError(f"Unknown pooler {kind!r}; valid: {', '.join(POOLERS)}")
