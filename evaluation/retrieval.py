"""Retrieval metrics on a precomputed query x gallery similarity matrix.

The query is the image (COLIPRI: each volume ranks the split's reports) or the report (GreenRFM:
each report ranks the split's volumes); :func:`query_similarity` orients the image x report matrix.

Recall@K (the protocol's metric) plus the mean rank of the true report (``MnR``, 1-based, lower is
better). Recall at a small K over a few dozen volumes is noisy; the mean rank uses every query's
whole ranking, so it separates a model that learned something from chance with far fewer volumes
(under a random ranking, MnR over N volumes has mean (N+1)/2 and standard deviation ~sqrt(N / 12)).

Which pairs are ranked (:func:`retrieval_pairs`): the split's image-report pairs minus the
non-chest scans (CT-RATE's ``no_chest_valid.txt``; COLIPRI App. C.1), then one pair per distinct
Findings text, since identical reports cannot be told apart (the COLIPRI authors' protocol, not
in the paper; real CT-RATE validation: 1,564 -> 1,551 -> 1,493 pairs).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass

import torch

DIRECTIONS = ("image_to_report", "report_to_image")


def query_similarity(image_by_report: torch.Tensor, direction: str) -> torch.Tensor:
    """The (queries x gallery) matrix of ``direction`` from ``image_by_report[i, j]`` = image i
    against report j: itself for ``image_to_report``, its transpose for ``report_to_image``."""
    if direction not in DIRECTIONS:
        raise ValueError(f"Unknown retrieval direction {direction!r}; valid: {', '.join(DIRECTIONS)}")
    return image_by_report if direction == "image_to_report" else image_by_report.T


def true_report_ranks(similarity: torch.Tensor) -> torch.Tensor:
    """(N,) 0-based rank of each query's match (gallery item i for query i) among all N items.

    ``similarity[i, j]`` scores query i (an image, or a report) against gallery item j. Ties
    count against the match (pessimistic), so a constant similarity ranks every match last."""
    if similarity.ndim != 2 or similarity.shape[0] != similarity.shape[1]:
        raise ValueError(f"similarity must be square (N images x N reports), got {tuple(similarity.shape)}")
    positive = similarity.diagonal().unsqueeze(1)
    # Rank of the match = number of gallery items scoring >= it, other than itself.
    return (similarity >= positive).sum(dim=1) - 1


def recall_from_ranks(ranks: torch.Tensor, ks: list[int]) -> dict[str, float]:
    """``{"R@K": fraction of ranks < K}``: a mean over queries, so bootstrapping it means
    resampling the queries against the fixed gallery of the split."""
    return {f"R@{k}": float((ranks < k).float().mean()) for k in ks}


def recall_at_k(similarity: torch.Tensor, ks: list[int]) -> dict[str, float]:
    """Recall@K. ``similarity[i, j]`` scores query i against gallery item j (image against report,
    or report against image: :func:`query_similarity`) and the match of query i is item i. Ties
    count against the match (pessimistic), so a constant similarity gives recall 0, not 1.

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


@dataclass(frozen=True)
class RetrievalPairs:
    """The image-report pairs retrieval ranks, and what the protocol removed to get them.

    ``reports``: the pairs before any removal, non-chest scans that never reached the split (left
    out when the cache was built) included; ``non_chest``: non-chest scans removed (here or
    before); ``duplicates``: pairs whose Findings repeat an earlier kept pair's."""

    image_ids: tuple[str, ...]  # kept, in the split's order
    reports: int
    non_chest: int
    duplicates: int

    @property
    def pairs(self) -> int:
        return len(self.image_ids)

    def counts(self) -> dict[str, float]:
        """The counts as ``<metric>`` keys of the retrieval results."""
        return {
            "reports": float(self.reports),
            "non_chest_removed": float(self.non_chest),
            "duplicates_removed": float(self.duplicates),
            "pairs": float(self.pairs),
        }

    def describe(self) -> str:
        return (
            f"{self.reports} reports -> {self.reports - self.non_chest} without {self.non_chest} "
            f"non-chest scans -> {self.pairs} pairs without {self.duplicates} duplicate Findings"
        )


def _normalised(text: str) -> str:
    return " ".join(str(text).split())


def retrieval_pairs(
    image_ids: Sequence[str],
    findings: Sequence[str],
    non_chest: Collection[str] = (),
    non_chest_before: int = 0,
) -> RetrievalPairs:
    """COLIPRI's retrieval set of a split: ``image_ids`` (with their ``findings``) minus the ids in
    ``non_chest``, then the first pair of each Findings text (identical up to whitespace).

    ``non_chest_before``: non-chest scans already left out of ``image_ids`` upstream (the data
    layer drops CT-RATE's listed head CTs when it builds the cache); they count in ``reports`` and
    ``non_chest`` so the counts read as the protocol's (1,564 -> 1,551 -> 1,493 on CT-RATE)."""
    if len(image_ids) != len(findings):
        raise ValueError(f"{len(image_ids)} image ids but {len(findings)} Findings")
    if len(set(image_ids)) != len(image_ids):
        raise ValueError("image ids must be unique")
    excluded = set(non_chest)
    seen: set[str] = set()
    kept: list[str] = []
    removed_here = duplicates = 0
    for image_id, text in zip(image_ids, findings, strict=True):
        if image_id in excluded:
            removed_here += 1
            continue
        key = _normalised(text)
        if key in seen:
            duplicates += 1
            continue
        seen.add(key)
        kept.append(image_id)
    return RetrievalPairs(
        image_ids=tuple(kept),
        reports=len(image_ids) + int(non_chest_before),
        non_chest=removed_here + int(non_chest_before),
        duplicates=duplicates,
    )
