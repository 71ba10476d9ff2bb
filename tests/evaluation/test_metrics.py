"""Classification metrics against hand-computed values: thresholds, BA, F1, the no-positive guard."""

from __future__ import annotations

import logging
import math

import pytest
import torch

from evaluation.metrics import classification_metrics, f1_optimal_thresholds, valid_label_mask

NAN = math.nan


def test_threshold_maximises_f1_on_validation() -> None:
    # Candidates (predict positive when score >= t):
    #   t=0.10 -> TP2 FP2 -> F1 2/3;  t=0.35 -> TP2 FP1 -> F1 0.8;
    #   t=0.40 -> TP1 FP1 FN1 -> 0.5; t=0.80 -> TP1 FN1 -> 2/3.
    scores = torch.tensor([[0.1], [0.4], [0.35], [0.8]])
    labels = torch.tensor([[0.0], [0.0], [1.0], [1.0]])
    assert f1_optimal_thresholds(scores, labels).tolist() == pytest.approx([0.35])


def test_threshold_ignores_unknown_labels_and_ties_go_to_the_lowest_threshold() -> None:
    # Known rows: 0.2 (neg), 0.6 (pos), 0.9 (pos): t=0.6 separates them (F1 1). The NaN row
    # (score 0.7) must not count as a negative, or t=0.6 would have a false positive.
    scores = torch.tensor([[0.2], [0.6], [0.7], [0.9]])
    labels = torch.tensor([[0.0], [1.0], [NAN], [1.0]])
    assert f1_optimal_thresholds(scores, labels).tolist() == pytest.approx([0.6])
    # t=0.2 -> TP2 FP2 (F1 2/3), t=0.4 -> 0.4, t=0.6 -> 0.5, t=0.8 -> TP1 FN1 (F1 2/3):
    # a tie between 0.2 and 0.8, which goes to the lower threshold.
    scores = torch.tensor([[0.2], [0.4], [0.6], [0.8]])
    labels = torch.tensor([[1.0], [0.0], [0.0], [1.0]])
    assert f1_optimal_thresholds(scores, labels).tolist() == pytest.approx([0.2])


def test_frozen_threshold_gives_hand_computed_ba_f1_auroc_auprc_on_test() -> None:
    thresholds = torch.tensor([0.35])  # fitted on validation above
    scores = torch.tensor([[0.2], [0.5], [0.3], [0.9], [0.36]])
    labels = torch.tensor([[0.0], [0.0], [1.0], [1.0], [1.0]])
    metrics = classification_metrics(scores, labels, ["nodule"], thresholds)
    # Decisions [0, 1, 0, 1, 1]: TP 2, FN 1, TN 1, FP 1.
    assert metrics.macro["BA"] == pytest.approx((2 / 3 + 1 / 2) / 2)
    assert metrics.macro["F1"] == pytest.approx(2 * 2 / (2 * 2 + 1 + 1))
    assert metrics.macro["ACC"] == pytest.approx(3 / 5)
    assert metrics.macro["precision"] == pytest.approx(2 / 3)
    assert metrics.macro["sensitivity"] == pytest.approx(2 / 3)
    assert metrics.macro["specificity"] == pytest.approx(1 / 2)
    # Positive/negative pairs ranked correctly: 0.3>0.2, 0.9>both, 0.36>0.2 -> 4 of 6.
    assert metrics.macro["AUROC"] == pytest.approx(4 / 6)
    # Ranked 0.9(P) 0.5(N) 0.36(P) 0.3(P): AP = (1 + 2/3 + 3/4) / 3.
    assert metrics.macro["AUPRC"] == pytest.approx((1 + 2 / 3 + 3 / 4) / 3)


def test_balanced_accuracy_differs_from_accuracy_on_imbalanced_labels() -> None:
    # 1 positive among 5; threshold 0.5 catches it and one negative:
    # sensitivity 1, specificity 3/4 -> BA 0.875 (accuracy would be 0.8).
    scores = torch.tensor([[0.9], [0.6], [0.1], [0.2], [0.3]])
    labels = torch.tensor([[1.0], [0.0], [0.0], [0.0], [0.0]])
    metrics = classification_metrics(scores, labels, ["effusion"], torch.tensor([0.5]))
    assert metrics.macro["BA"] == pytest.approx(0.875)


def test_label_without_positives_is_excluded_not_counted_as_zero(caplog: pytest.LogCaptureFixture) -> None:
    scores = torch.tensor([[0.9, 0.8, 0.1], [0.1, 0.7, 0.2], [0.8, 0.3, 0.3], [0.2, 0.2, 0.4]])
    labels = torch.tensor([[1.0, 1.0, 0.0], [0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    thresholds = torch.tensor([0.5, 0.5, 0.5])
    with caplog.at_level(logging.WARNING):
        metrics = classification_metrics(
            scores, labels, ["nodule", "opacity", "hernia"], thresholds, split="test/guard"
        )
    assert metrics.excluded == ["hernia"]
    assert "hernia" in caplog.text and "test/guard" in caplog.text
    assert math.isnan(metrics.per_label["AUROC"][2]) and math.isnan(metrics.per_label["F1"][2])
    # Both remaining labels are ranked perfectly: the macro AUROC is 1, not (1 + 1 + 0) / 3.
    assert metrics.macro["AUROC"] == pytest.approx(1.0)
    assert metrics.macro["AUPRC"] == pytest.approx(1.0)


def test_a_repeated_exclusion_warns_once(caplog: pytest.LogCaptureFixture) -> None:
    """Periodic evaluation repeats the same exclusions: one warning, then DEBUG lines."""
    scores = torch.tensor([[0.9, 0.1], [0.2, 0.3]])
    labels = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    with caplog.at_level(logging.DEBUG, logger="evaluation.metrics"):
        for split in ("val/repeat", "val/repeat", "test/repeat"):
            assert classification_metrics(scores, labels, ["a", "b"], split=split).excluded == ["b"]
    levels = [
        (r.levelname, r.getMessage().split(":")[0]) for r in caplog.records if "excluded" in r.getMessage()
    ]
    assert levels == [("WARNING", "val/repeat"), ("DEBUG", "val/repeat"), ("WARNING", "test/repeat")]


def test_label_without_negatives_or_with_only_unknowns_is_excluded() -> None:
    scores = torch.rand(4, 3)
    labels = torch.tensor([[1.0, NAN, 1.0], [1.0, NAN, 0.0], [1.0, NAN, 1.0], [1.0, 1.0, 0.0]])
    assert valid_label_mask(scores, labels).tolist() == [False, False, True]


def test_label_with_non_finite_scores_is_excluded() -> None:
    scores = torch.tensor([[NAN, 0.9], [NAN, 0.1]])
    labels = torch.tensor([[1.0, 1.0], [0.0, 0.0]])
    metrics = classification_metrics(scores, labels, ["a", "b"], warn=False)
    assert metrics.excluded == ["a"] and metrics.macro["AUROC"] == pytest.approx(1.0)


def test_weighted_f1_weighs_labels_by_their_positives() -> None:
    # Label a: 3 positives, all caught, no false positive -> F1 1.
    # Label b: 1 positive, missed, one false positive -> F1 0.
    scores = torch.tensor([[0.9, 0.9], [0.9, 0.1], [0.9, 0.1], [0.1, 0.1]])
    labels = torch.tensor([[1.0, 0.0], [1.0, 1.0], [1.0, 0.0], [0.0, 0.0]])
    metrics = classification_metrics(scores, labels, ["a", "b"], torch.tensor([0.5, 0.5]))
    assert metrics.macro["F1"] == pytest.approx(0.5)
    assert metrics.macro["F1_weighted"] == pytest.approx((3 * 1.0 + 1 * 0.0) / 4)


def test_no_threshold_from_validation_leaves_thresholded_metrics_undefined() -> None:
    scores = torch.tensor([[0.9], [0.1]])
    labels = torch.tensor([[1.0], [0.0]])
    metrics = classification_metrics(scores, labels, ["a"], torch.tensor([NAN]))
    assert metrics.macro["AUROC"] == pytest.approx(1.0)
    assert math.isnan(metrics.macro["F1"]) and math.isnan(metrics.macro["BA"])


def test_shape_mismatch_is_an_error() -> None:
    with pytest.raises(ValueError, match=r"\(N, K\)"):
        classification_metrics(torch.rand(3, 2), torch.rand(3, 3), ["a", "b"])
