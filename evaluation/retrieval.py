"""Image -> report retrieval metrics on a precomputed similarity matrix."""

from __future__ import annotations

import torch


def recall_at_k(similarity: torch.Tensor, ks: list[int]) -> dict[str, float]:
    """Image->report Recall@K. ``similarity[i, j]`` scores image i against report j and the
    matching report of image i is report i. Ties count against the match (pessimistic), so a
    constant similarity gives recall 0, not 1.

    Returns ``{"R@K": recall, "R@K_chance": K / N}`` for each K (chance = expected recall of a
    random ranking)."""
    if similarity.ndim != 2 or similarity.shape[0] != similarity.shape[1]:
        raise ValueError(f"similarity must be square (N images x N reports), got {tuple(similarity.shape)}")
    n = similarity.shape[0]
    positive = similarity.diagonal().unsqueeze(1)
    # Rank of the true report = number of reports scoring >= it, other than itself.
    rank = (similarity >= positive).sum(dim=1) - 1
    metrics: dict[str, float] = {}
    for k in ks:
        metrics[f"R@{k}"] = float((rank < k).float().mean())
        metrics[f"R@{k}_chance"] = min(k, n) / n
    return metrics
