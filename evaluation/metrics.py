"""Multi-label classification metrics with the COLIPRI protocol (App. C.1.2) and honest guards.

Inputs everywhere: ``scores`` (N, K) positive-class probabilities and ``labels`` (N, K) in
{0, 1} with NaN = unknown (masked per label, never counted as negative).

Protocol choices:

- **AUROC, AUPRC** per label with torchmetrics' binary functions (AUPRC = average precision).
- **Thresholds** are fitted on *validation* only (:func:`f1_optimal_thresholds`): per label the
  score that maximises F1, predicting positive when ``score >= threshold``. They are frozen and
  reused on test and transfer splits; fitting them on the evaluated set (as CT-CLIP's published
  script does) inflates every thresholded metric.
- **Balanced accuracy** reuses the F1 threshold (the paper does), even though another
  threshold might give a higher BA.
- **ACC, precision, sensitivity, specificity** at the same threshold: GreenRFM's table reports
  them (its Table 1); ACC is plain accuracy, which the many negatives dominate.
- **Macro F1** is the headline F1; **weighted F1** (support = positives) is only for
  comparisons with older papers.
- **Guard:** a label with no positive or no negative among its known values in a split has no
  defined AUROC. torchmetrics returns 0 for it, which silently drags macro averages down
  (docs/evaluation.md). Such a label gets NaN for every metric and is excluded from the macro averages,
  with a warning naming it; it is never counted as 0. Non-finite scores exclude a label the same
  way (e.g. a native zero-shot prompt without training reports).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torchmetrics.functional.classification import (
    binary_auroc,
    binary_average_precision,
    binary_precision_recall_curve,
    binary_stat_scores,
)

log = logging.getLogger(__name__)

RANKING_METRICS = ("AUROC", "AUPRC")
THRESHOLD_METRICS = ("BA", "F1", "ACC", "precision", "sensitivity", "specificity")
MACRO_METRICS = (*RANKING_METRICS, *THRESHOLD_METRICS, "F1_weighted")


@dataclass(frozen=True)
class ClassificationMetrics:
    """Per-label values (NaN where a label is excluded) and their macro averages."""

    label_names: list[str]
    per_label: dict[str, torch.Tensor]  # metric -> (K,)
    macro: dict[str, float]  # MACRO_METRICS -> value (NaN when no label is valid)
    excluded: list[str]  # labels left out of the macro averages


def _check_shapes(scores: torch.Tensor, labels: torch.Tensor) -> None:
    if scores.ndim != 2 or scores.shape != labels.shape:
        raise ValueError(
            f"scores and labels must both be (N, K); got {tuple(scores.shape)} and {tuple(labels.shape)}"
        )


def _known(scores: torch.Tensor, labels: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Scores and integer targets of label ``k`` where the label is known."""
    known = ~torch.isnan(labels[:, k])
    return scores[known, k].float(), labels[known, k].long()


def valid_label_mask(scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """(K,) bool: the label has >= 1 known positive, >= 1 known negative and finite scores."""
    _check_shapes(scores, labels)
    known = ~torch.isnan(labels)
    positives = ((labels == 1) & known).any(dim=0)
    negatives = ((labels == 0) & known).any(dim=0)
    finite = (torch.isfinite(scores) | ~known).all(dim=0)
    return positives & negatives & finite


# (split, labels) already warned about: periodic evaluation repeats the same exclusions every N
# steps (the phantom never draws five of the 18 labels); the first time warns, repeats log at DEBUG.
_WARNED_EXCLUSIONS: set[tuple[str, tuple[str, ...]]] = set()


def _warn_excluded(excluded: list[str], split: str) -> None:
    if not excluded:
        return
    key = (split, tuple(excluded))
    level = logging.DEBUG if key in _WARNED_EXCLUSIONS else logging.WARNING
    _WARNED_EXCLUSIONS.add(key)
    log.log(
        level,
        "%s: excluded from the macro averages (no positive, no negative or no score in this split; "
        "not counted as 0): %s",
        split,
        ", ".join(excluded),
    )


def f1_optimal_thresholds(scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """(K,) per-label threshold maximising F1 (predict positive when ``score >= threshold``).

    Candidates are the observed scores (torchmetrics' precision–recall curve). Ties in F1 go to
    the lowest threshold. Labels without a positive or a negative get NaN: no threshold can be
    fitted, and the thresholded metrics of that label are then excluded wherever it is applied.
    Call this on validation only.
    """
    valid = valid_label_mask(scores, labels)
    thresholds = torch.full((scores.shape[1],), math.nan)
    for k in torch.nonzero(valid).flatten().tolist():
        preds, target = _known(scores, labels, k)
        precision, recall, candidates = binary_precision_recall_curve(preds, target, validate_args=False)
        precision, recall = precision[:-1], recall[:-1]  # the last point is the (P=1, R=0) anchor
        f1 = torch.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
        thresholds[k] = candidates[int(torch.argmax(f1))]
    return thresholds


def per_label_metrics(
    scores: torch.Tensor, labels: torch.Tensor, thresholds: torch.Tensor | None, valid: torch.Tensor
) -> dict[str, torch.Tensor]:
    """AUROC, AUPRC (and BA, F1, support when ``thresholds`` is given) per label; NaN where invalid."""
    num_labels = scores.shape[1]
    names = RANKING_METRICS if thresholds is None else (*RANKING_METRICS, *THRESHOLD_METRICS)
    out = {name: torch.full((num_labels,), math.nan) for name in names}
    out["support"] = (labels == 1).sum(dim=0).float()  # known positives (NaN == 1 is False)
    for k in torch.nonzero(valid).flatten().tolist():
        preds, target = _known(scores, labels, k)
        out["AUROC"][k] = binary_auroc(preds, target, validate_args=False)
        out["AUPRC"][k] = binary_average_precision(preds, target, validate_args=False)
        if thresholds is None or math.isnan(float(thresholds[k])):
            continue
        decisions = (preds >= thresholds[k]).long()
        # One confusion count for all thresholded metrics (torchmetrics' stat scores), rather
        # than a torchmetrics call per metric: the bootstrap runs this 1000 times per split.
        tp, fp, tn, fn, _ = binary_stat_scores(decisions, target, validate_args=False).double().tolist()
        sensitivity, specificity = _ratio(tp, tp + fn), _ratio(tn, tn + fp)
        out["BA"][k] = (sensitivity + specificity) / 2
        out["F1"][k] = _ratio(2 * tp, 2 * tp + fp + fn, zero=0.0)
        out["ACC"][k] = _ratio(tp + tn, tp + tn + fp + fn)
        out["precision"][k] = _ratio(tp, tp + fp, zero=0.0)
        out["sensitivity"][k], out["specificity"][k] = sensitivity, specificity
    return out


def _ratio(numerator: float, denominator: float, zero: float = math.nan) -> float:
    """``numerator / denominator``, ``zero`` when nothing is counted (torchmetrics' 0 for F1 and
    precision without positive decisions; a valid label always has both classes, so the others
    never divide by zero)."""
    return numerator / denominator if denominator else zero


def _nanmean(values: torch.Tensor) -> float:
    finite = values[~torch.isnan(values)]
    return float(finite.mean()) if finite.numel() else math.nan


def macro_averages(per_label: dict[str, torch.Tensor]) -> dict[str, float]:
    """Unweighted means over the labels with a value, and the support-weighted F1."""
    macro = {name: _nanmean(per_label[name]) for name in MACRO_METRICS if name in per_label}
    if "F1" in per_label:
        f1, support = per_label["F1"], per_label["support"]
        has_value = ~torch.isnan(f1)
        weight = support[has_value].sum()
        macro["F1_weighted"] = (
            float((f1[has_value] * support[has_value]).sum() / weight) if weight else math.nan
        )
    return macro


def classification_metrics(
    scores: torch.Tensor,
    labels: torch.Tensor,
    label_names: Sequence[str],
    thresholds: torch.Tensor | None = None,
    split: str = "split",
    warn: bool = True,
) -> ClassificationMetrics:
    """All metrics of one split. ``thresholds`` come from validation (None: ranking metrics only).

    ``warn=False`` silences the exclusion warning (bootstrap resamples call this 1000 times).
    """
    _check_shapes(scores, labels)
    if len(label_names) != scores.shape[1]:
        raise ValueError(f"{len(label_names)} label names for {scores.shape[1]} score columns")
    valid = valid_label_mask(scores, labels)
    excluded = [name for name, ok in zip(label_names, valid.tolist(), strict=True) if not ok]
    if warn:
        _warn_excluded(excluded, split)
    per_label = per_label_metrics(scores, labels, thresholds, valid)
    return ClassificationMetrics(list(label_names), per_label, macro_averages(per_label), excluded)
