"""Image -> report retrieval metrics on a precomputed similarity matrix.

Recall@K (the protocol's metric) plus the mean rank of the true report (``MnR``, 1-based, lower is
better). Recall at a small K over a few dozen volumes is noisy; the mean rank uses every query's
whole ranking, so it separates a model that learned something from chance with far fewer volumes
(under a random ranking, MnR over N volumes has mean (N+1)/2 and standard deviation ~sqrt(N / 12)).
"""

from __future__ import annotations

import torch


def true_report_ranks(similarity: torch.Tensor) -> torch.Tensor:
    """(N,) 0-based rank of each image's true report (report i for image i) among all N reports.

    ``similarity[i, j]`` scores image i against report j. Ties count against the match
    (pessimistic), so a constant similarity ranks every true report last, not first."""
    if similarity.ndim != 2 or similarity.shape[0] != similarity.shape[1]:
        raise ValueError(f"similarity must be square (N images x N reports), got {tuple(similarity.shape)}")
    positive = similarity.diagonal().unsqueeze(1)
    # Rank of the true report = number of reports scoring >= it, other than itself.
    return (similarity >= positive).sum(dim=1) - 1


def recall_from_ranks(ranks: torch.Tensor, ks: list[int]) -> dict[str, float]:
    """``{"R@K": fraction of ranks < K}``: a mean over queries, so bootstrapping it means
    resampling the queries (images) against the fixed gallery of the split's reports."""
    return {f"R@{k}": float((ranks < k).float().mean()) for k in ks}


def recall_at_k(similarity: torch.Tensor, ks: list[int]) -> dict[str, float]:
    """Image->report Recall@K. ``similarity[i, j]`` scores image i against report j and the
    matching report of image i is report i. Ties count against the match (pessimistic), so a
    constant similarity gives recall 0, not 1.

    Returns ``{"R@K": recall, "R@K_chance": K / N}`` for each K (chance = expected recall of a
    random ranking)."""
    n = similarity.shape[0]
    recalls = recall_from_ranks(true_report_ranks(similarity), ks)
    metrics: dict[str, float] = {}
    for k in ks:
        metrics[f"R@{k}"] = recalls[f"R@{k}"]
        metrics[f"R@{k}_chance"] = min(k, n) / n
    return metrics


def mean_rank(similarity: torch.Tensor) -> dict[str, float]:
    """``{"MnR": mean 1-based rank of the true report, "MnR_chance": (N + 1) / 2}`` (ties count
    against the match, as for recall)."""
    ranks = true_report_ranks(similarity)
    n = similarity.shape[0]
    return {"MnR": float(ranks.float().mean() + 1.0), "MnR_chance": (n + 1) / 2}


def retrieval_metrics(similarity: torch.Tensor, ks: list[int]) -> dict[str, float]:
    """Everything retrieval reports: :func:`recall_at_k` and :func:`mean_rank`."""
    return {**recall_at_k(similarity, ks), **mean_rank(similarity)}
