import pytest
import torch

from evaluation.retrieval import (
    mean_rank,
    query_similarity,
    recall_at_k,
    recall_from_ranks,
    retrieval_metrics,
    true_report_ranks,
)


def test_recall_on_a_toy_similarity_matrix() -> None:
    # Rank of the true report per image: image0 -> 0, image1 -> 2, image2 -> 1, image3 -> 3.
    similarity = torch.tensor(
        [
            [0.9, 0.1, 0.2, 0.3],
            [0.8, 0.5, 0.7, 0.1],
            [0.1, 0.2, 0.6, 0.7],
            [0.9, 0.8, 0.7, 0.1],
        ]
    )
    metrics = recall_at_k(similarity, [1, 2, 3, 10])
    assert metrics["R@1"] == pytest.approx(1 / 4)
    assert metrics["R@2"] == pytest.approx(2 / 4)
    assert metrics["R@3"] == pytest.approx(3 / 4)
    assert metrics["R@10"] == pytest.approx(1.0)
    assert metrics["R@1_chance"] == pytest.approx(1 / 4)
    assert metrics["R@2_chance"] == pytest.approx(2 / 4)
    assert metrics["R@10_chance"] == pytest.approx(1.0)


def test_ties_count_against_the_match() -> None:
    metrics = recall_at_k(torch.ones(5, 5), [1, 4, 5])
    assert metrics["R@1"] == 0.0 and metrics["R@4"] == 0.0 and metrics["R@5"] == 1.0


def test_non_square_is_rejected() -> None:
    with pytest.raises(ValueError, match="square"):
        recall_at_k(torch.zeros(2, 3), [1])


def test_true_report_ranks_and_recall_from_ranks_match_recall_at_k() -> None:
    similarity = torch.tensor([[0.9, 0.1, 0.2], [0.8, 0.5, 0.7], [0.1, 0.2, 0.6]])
    ranks = true_report_ranks(similarity)
    assert ranks.tolist() == [0, 2, 0]
    # Resampling queries: image 1 twice and image 2 once -> hits at K=1 are [0, 0, 1].
    assert recall_from_ranks(ranks[torch.tensor([1, 1, 2])], [1, 3]) == pytest.approx(
        {"R@1": 1 / 3, "R@3": 1.0}
    )


def test_mean_rank_by_hand() -> None:
    # True-report ranks (1-based) 1, 3, 1 -> mean 5/3; a random ranking of 3 reports averages 2.
    similarity = torch.tensor([[0.9, 0.1, 0.2], [0.8, 0.5, 0.7], [0.1, 0.2, 0.6]])
    assert mean_rank(similarity) == pytest.approx({"MnR": 5 / 3, "MnR_chance": 2.0})
    # Ties count against the match: a constant similarity ranks every true report last.
    assert mean_rank(torch.ones(5, 5))["MnR"] == 5.0
    metrics = retrieval_metrics(similarity, [1])
    assert metrics == pytest.approx({"R@1": 2 / 3, "R@1_chance": 1 / 3, "MnR": 5 / 3, "MnR_chance": 2.0})


def test_report_to_image_ranks_the_volumes_for_each_report() -> None:
    """Images 1 and 2 prefer report 0, yet each report prefers its own image: the direction
    changes the recall."""
    image_by_report = torch.tensor([[1.0, 0.0, 0.0], [0.9, 0.5, 0.6], [0.95, 0.4, 0.7]])
    by_image = query_similarity(image_by_report, "image_to_report")
    by_report = query_similarity(image_by_report, "report_to_image")
    assert true_report_ranks(by_image).tolist() == [0, 2, 1]
    assert true_report_ranks(by_report).tolist() == [0, 0, 0]
    assert recall_at_k(by_image, [1])["R@1"] == pytest.approx(1 / 3)
    assert recall_at_k(by_report, [1])["R@1"] == 1.0
    with pytest.raises(ValueError, match="valid: image_to_report, report_to_image"):
        query_similarity(image_by_report, "both")
