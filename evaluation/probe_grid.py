"""The probe grid of COLIPRI App. C.2: 5 token aggregators × 4 learning rates, one linear head each.

All probes read the same frozen encoder tokens and are trained jointly: each probe has its own
aggregator and head (its own parameters), so summing their losses trains them independently.

Aggregators (``AGGREGATORS``):

- ``avg`` / ``max``: mean / max over the tokens (no parameters; can be precomputed per volume).
- ``learned_query``: attention pooling with one learned query.
- ``mean_query``: attention pooling queried with the mean token (the COLIPRI/CLIP pooler).
- ``multi_learned_query``: four learned queries, the four outputs averaged.

Attention pooling with Q ≪ N queries is computed without projecting every token to keys and
values (:func:`few_query_attention`): the key projection is folded into the query and the value
projection is applied after the attention-weighted sum of the tokens. The result equals
``nn.MultiheadAttention`` with the same parameters at O(B·Q·N·C) instead of O(B·N·C²) cost, and
the probes of one aggregator kind (one per learning rate) run as one batched computation. That
is what keeps 12 attention probes over thousands of tokens cheap. Parameters are named as in
``attention_pool.AttentionPool1D`` / ``MultiLearnedQueryAttentionPool1D`` (``attn.*``,
``query``), so a trained aggregator loads into those classes.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from einops import rearrange
from torch import nn

from lightning_modules.nets.attention_pool import MaxPool1D, MeanPool1D

log = logging.getLogger(__name__)

AGGREGATORS = ("avg", "max", "learned_query", "mean_query", "multi_learned_query")
# Aggregators without parameters: one output serves the probes of every learning rate.
PARAMETER_FREE_AGGREGATORS = ("avg", "max")
PAPER_LEARNING_RATES = (1e-1, 3e-2, 1e-2, 3e-3)


def few_query_attention(
    attns: Sequence[nn.MultiheadAttention], queries: torch.Tensor, tokens: torch.Tensor
) -> torch.Tensor:
    """``attns[l](queries[l], tokens, tokens)[0]`` for L batch-first, dropout-free, unmasked
    attentions with the same shape, in one batched computation.

    queries: (L, B, Q, C), tokens: (B, N, C) -> (L, B, Q, C). Per head with key weights K (d, C):
    q · (K x + b) = (Kᵀ q) · x + q · b, and q · b is the same for every token, so it cancels in
    the softmax. The values V x + c are linear, so the attention-weighted token sum is projected once.
    """
    heads = attns[0].num_heads
    in_weight = torch.stack([a.in_proj_weight for a in attns])  # (L, 3C, C)
    in_bias = torch.stack([a.in_proj_bias for a in attns])  # (L, 3C)
    w_q, w_k, w_v = in_weight.chunk(3, dim=1)
    b_q, _, b_v = in_bias.chunk(3, dim=1)
    w_k = rearrange(w_k, "l (h d) c -> l h d c", h=heads)
    w_v = rearrange(w_v, "l (h d) c -> l h d c", h=heads)
    q = torch.einsum("lbqc,ldc->lbqd", queries, w_q) + rearrange(b_q, "l d -> l 1 1 d")
    q = rearrange(q, "l b q (h d) -> l b q h d", h=heads)
    folded_query = torch.einsum("lbqhd,lhdc->lbqhc", q, w_k) / w_k.shape[2] ** 0.5
    weights = torch.einsum("lbqhc,bnc->lbqhn", folded_query, tokens).softmax(dim=-1)
    pooled_tokens = torch.einsum("lbqhn,bnc->lbqhc", weights, tokens)
    values = torch.einsum("lbqhc,lhdc->lbqhd", pooled_tokens, w_v)
    values = rearrange(values, "l b q h d -> l b q (h d)") + rearrange(b_v, "l d -> l 1 1 d")
    out_weight = torch.stack([a.out_proj.weight for a in attns])
    out_bias = torch.stack([a.out_proj.bias for a in attns])
    return torch.einsum("lbqc,ldc->lbqd", values, out_weight) + rearrange(out_bias, "l d -> l 1 1 d")


class ProbeAttentionPool(nn.Module):
    """Attention pooling with learned queries (``num_queries``) or the mean token (``None``)."""

    def __init__(self, embed_dim: int, num_heads: int, num_queries: int | None) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(embed_dim, num_heads, batch_first=True)
        if num_queries is not None:
            self.query = nn.Parameter(torch.randn(1, num_queries, embed_dim) / embed_dim**0.5)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, N, C) -> (B, C); several queries are averaged."""
        return pool_jointly([self], tokens)[0]


def pool_jointly(pools: Sequence[ProbeAttentionPool], tokens: torch.Tensor) -> torch.Tensor:
    """Apply same-kind attention pools to the same tokens at once. (B, N, C) -> (L, B, C)."""
    if hasattr(pools[0], "query"):
        queries = torch.stack([p.query[0] for p in pools])  # (L, Q, C)
        queries = queries.to(tokens.dtype).unsqueeze(1).expand(-1, tokens.shape[0], -1, -1)
    else:
        queries = tokens.mean(dim=1, keepdim=True).expand(len(pools), -1, -1, -1)
    return few_query_attention([p.attn for p in pools], queries, tokens).mean(dim=2)


def build_aggregator(kind: str, embed_dim: int, num_heads: int) -> nn.Module:
    if kind == "avg":
        return MeanPool1D()
    if kind == "max":
        return MaxPool1D()
    if kind == "learned_query":
        return ProbeAttentionPool(embed_dim, num_heads, num_queries=1)
    if kind == "mean_query":
        return ProbeAttentionPool(embed_dim, num_heads, num_queries=None)
    if kind == "multi_learned_query":
        return ProbeAttentionPool(embed_dim, num_heads, num_queries=4)
    raise ValueError(f"Unknown probe aggregator {kind!r}; valid: {', '.join(AGGREGATORS)}")


@dataclass(frozen=True)
class ProbeSpec:
    aggregator: str
    lr: float

    @property
    def name(self) -> str:
        return f"{self.aggregator}@lr={self.lr:g}"


def attention_heads(embed_dim: int, wanted: int) -> int:
    """The head count of the attention probes: ``wanted`` (``model.pool_heads``) when it divides the
    token width, else the largest count below it that does (GreenRFM's r3d_18 gives 512 channels,
    which 12 heads do not divide), with a warning naming both."""
    if wanted < 1:
        raise ValueError(f"the attention probes need at least one head, not {wanted}")
    heads = max(h for h in range(1, min(wanted, embed_dim) + 1) if embed_dim % h == 0)
    if heads != wanted:
        log.warning(
            "Attention probes: model.pool_heads=%d does not divide the token width %d; they use %d heads",
            wanted,
            embed_dim,
            heads,
        )
    return heads


class ProbeGrid(nn.Module):
    """``len(aggregators) × len(lrs)`` probes; ``forward`` takes ``{"tokens": (B, N, C)}`` and
    returns logits (P, B, K). The attention probes use :func:`attention_heads` of ``num_heads``."""

    def __init__(
        self,
        embed_dim: int,
        num_labels: int,
        num_heads: int,
        aggregators: Sequence[str] = AGGREGATORS,
        lrs: Sequence[float] = PAPER_LEARNING_RATES,
    ) -> None:
        super().__init__()
        if not aggregators or not lrs:
            raise ValueError("The probe grid needs at least one aggregator and one learning rate")
        self.specs = [ProbeSpec(kind, float(lr)) for kind in aggregators for lr in lrs]
        num_heads = attention_heads(embed_dim, num_heads)
        self.aggregators = nn.ModuleList(
            build_aggregator(s.aggregator, embed_dim, num_heads) for s in self.specs
        )
        self.heads = nn.ModuleList(nn.Linear(embed_dim, num_labels) for _ in self.specs)
        self._kinds = {
            kind: [i for i, s in enumerate(self.specs) if s.aggregator == kind] for kind in aggregators
        }

    @property
    def names(self) -> list[str]:
        return [spec.name for spec in self.specs]

    def param_groups(self) -> list[dict]:
        """One optimiser group per probe (its aggregator and head) at that probe's learning rate."""
        return [
            {"params": [*aggregator.parameters(), *head.parameters()], "lr": spec.lr}
            for spec, aggregator, head in zip(self.specs, self.aggregators, self.heads, strict=True)
        ]

    def pooled(self, features: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Every probe's aggregated features, (P, B, C)."""
        if "tokens" not in features:
            raise ValueError(f"The probe grid needs token features ('tokens'); got {sorted(features)}")
        tokens = features["tokens"]
        pooled: list[torch.Tensor | None] = [None] * len(self.specs)
        for kind, indices in self._kinds.items():
            if kind in PARAMETER_FREE_AGGREGATORS:  # computed once for all learning rates
                kind_pooled = self.aggregators[indices[0]](tokens).expand(len(indices), -1, -1)
            else:
                kind_pooled = pool_jointly([self.aggregators[i] for i in indices], tokens)
            for row, index in enumerate(indices):
                pooled[index] = kind_pooled[row]
        return torch.stack(pooled)  # type: ignore[arg-type]

    def forward(self, features: Mapping[str, torch.Tensor]) -> torch.Tensor:
        weight = torch.stack([head.weight for head in self.heads])  # (P, K, C)
        bias = torch.stack([head.bias for head in self.heads])  # (P, K)
        return torch.einsum("pbc,pkc->pbk", self.pooled(features), weight) + bias.unsqueeze(1)
