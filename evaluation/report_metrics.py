"""Scores of generated radiology reports against their references: language and clinical metrics.

Language metrics, on the text of each (reference, generated) pair:

- **BLEU-1, BLEU-4**: corpus BLEU of ``sacrebleu`` (n-gram orders 1 and 4), as fractions in [0, 1].
  sacrebleu rather than torchmetrics' BLEUScore: it is the reference implementation of corpus BLEU,
  and its per-report sufficient statistics (the ones its own paired bootstrap sums) let a bootstrap
  resample re-score the corpus by summing counts instead of re-counting n-grams. Its default
  smoothing (``exp``) is kept; it only matters when an n-gram order has no match at all.
- **ROUGE-L**: mean over pairs of the LCS F-measure of ``rouge-score``.
- **METEOR**: mean over pairs of ``nltk``'s METEOR (exact, Porter-stem and WordNet-synonym
  matches; alpha 0.9, beta 3, gamma 0.5). Not comparable to the Java METEOR 1.5 of pycocoevalcap,
  which adds paraphrase tables. Without the WordNet data (a separate download), the synonym stage is
  replaced by one that finds none and the score is reported as ``METEOR_no_synonyms``, with a
  warning: a lower number never stands under the METEOR name.

All three see the same tokens (:func:`tokenize`): lower-cased, split by one regular expression
into numbers (``3.5``), words and single punctuation marks. nltk's ``word_tokenize`` is not used
because it needs the punkt data, which may be missing.

Clinical metrics, on binary label matrices (N reports x L labels) extracted from the reference and
the generated reports by the same labeller:

- **Precision, recall, F1**, micro (pooled counts) and macro (unweighted mean over labels). Counts
  come from torchmetrics' ``multilabel_stat_scores`` (as in :mod:`evaluation.metrics`); one call
  serves these and the CRG score. The macro mean covers the labels with at least one positive in
  the references *or* the generated labels: F1 is defined on exactly those. A label positive
  nowhere has 0/0 everywhere, and counting it as 0 (or 1) would move the mean for nothing the model
  did; it gets NaN and is listed as excluded. Within the covered labels a 0/0 precision (a finding
  never predicted) or recall (a finding predicted but absent from every reference) counts as 0,
  like scikit-learn's ``zero_division=0``.
- **CRG** (the VLM3D challenge's distribution-aware score). With A the positives in the references
  and T the number of entries (N * L): w_TP = w_FN = (T - A) / (2A), w_FP = 1,
  s = TP * w_TP - FN * w_FN - FP * w_FP, S_max = A * w_TP and CRG = S_max / (2 * S_max - s).
  It is 1 for perfect labels and 1/3 both for all-negative and all-positive predictions.

Confidence intervals: percentile bootstrap over reports with :func:`evaluation.bootstrap.bootstrap`
(report indices drawn with replacement; every metric recomputed on the resample).
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any

import numpy as np
import torch
from nltk.translate.meteor_score import meteor_score
from rouge_score import rouge_scorer
from sacrebleu.metrics import BLEU
from torchmetrics.functional.classification import multilabel_stat_scores

from evaluation.bootstrap import bootstrap

log = logging.getLogger(__name__)

# A number with an optional decimal part ("3.5" stays one token: sizes matter in reports), a run of
# word characters, or one punctuation mark.
_TOKEN = re.compile(r"\d+(?:\.\d+)?|\w+|[^\w\s]")

CLINICAL_STATS = ("precision", "recall", "F1")


def tokenize(text: str) -> list[str]:
    """Lower-cased tokens of ``text``: numbers (with decimals), words and single punctuation marks.

    Deterministic and data-free: ``"Nodule, 3.5 mm."`` -> ``["nodule", ",", "3.5", "mm", "."]``.
    """
    return _TOKEN.findall(text.lower())


def _check_reports(references: Sequence[str], generated: Sequence[str]) -> None:
    if isinstance(references, str) or isinstance(generated, str):
        raise ValueError("references and generated must be lists of reports, not single strings")
    if len(references) != len(generated):
        raise ValueError(
            f"references and generated must pair up one to one; got {len(references)} references "
            f"and {len(generated)} generated reports"
        )
    if len(references) == 0:
        raise ValueError("no reports to score")


# ------------------------------------------------------------------------------------------- BLEU
@cache  # one scorer per order: a bootstrap re-scores the corpus thousands of times
def _bleu(max_ngram_order: int) -> BLEU:
    # tokenize="none": the texts arrive as tokenize()'s tokens joined by spaces, so sacrebleu splits
    # on whitespace only and BLEU sees the same tokens as ROUGE-L and METEOR. force=True: those
    # texts end in " ." by construction, which sacrebleu would otherwise flag as pre-tokenised.
    return BLEU(tokenize="none", force=True, max_ngram_order=max_ngram_order)


def _joined(texts: Sequence[str]) -> list[str]:
    return [" ".join(tokenize(text)) for text in texts]


def bleu_statistics(references: Sequence[str], generated: Sequence[str], max_ngram_order: int) -> np.ndarray:
    """(N, 2 + 2 * order) per-report BLEU counts (lengths, matches, totals); corpus BLEU of any
    subset of reports is :func:`bleu_from_statistics` of their sum."""
    _check_reports(references, generated)
    stats = _bleu(max_ngram_order)._extract_corpus_statistics(_joined(generated), [_joined(references)])
    return np.asarray(stats, dtype=np.int64)


def bleu_from_statistics(summed: np.ndarray, max_ngram_order: int) -> float:
    """Corpus BLEU in [0, 1] from :func:`bleu_statistics` summed over the reports."""
    return _bleu(max_ngram_order)._compute_score_from_stats(summed.tolist()).score / 100


def corpus_bleu(references: Sequence[str], generated: Sequence[str], max_ngram_order: int = 4) -> float:
    """Corpus BLEU in [0, 1] (BLEU-1 with ``max_ngram_order=1``, BLEU-4 with 4)."""
    return bleu_from_statistics(
        bleu_statistics(references, generated, max_ngram_order).sum(0), max_ngram_order
    )


# ---------------------------------------------------------------------------------------- ROUGE-L
class _Tokenizer:
    """rouge-score's tokenizer interface over :func:`tokenize` (its default one drops punctuation)."""

    def tokenize(self, text: str) -> list[str]:
        return tokenize(text)


def rouge_l_scores(references: Sequence[str], generated: Sequence[str]) -> np.ndarray:
    """(N,) ROUGE-L F-measure of each (reference, generated) pair; 0 when either is empty."""
    _check_reports(references, generated)
    scorer = rouge_scorer.RougeScorer(["rougeL"], tokenizer=_Tokenizer())
    return np.array(
        [scorer.score(ref, gen)["rougeL"].fmeasure for ref, gen in zip(references, generated, strict=True)],
        dtype=np.float64,
    )


# ----------------------------------------------------------------------------------------- METEOR
class NoSynonyms:
    """Stand-in for nltk's WordNet reader that knows no synonyms: METEOR then matches exact words and
    Porter stems only (``meteor_score(..., wordnet=NoSynonyms())``)."""

    def synsets(self, word: str) -> list[Any]:
        return []


@cache
def wordnet_reader() -> Any | None:
    """nltk's WordNet reader when its data is installed, else None (looked up once per process)."""
    from nltk.corpus import wordnet

    try:
        wordnet.ensure_loaded()
        wordnet.synsets("lung")
    except LookupError:
        return None
    return wordnet


_WARNED_NO_WORDNET = False


def _warn_no_wordnet() -> None:
    global _WARNED_NO_WORDNET
    if _WARNED_NO_WORDNET:
        return
    _WARNED_NO_WORDNET = True
    log.warning(
        "NLTK's WordNet data is missing: METEOR is computed without synonym matches and reported as "
        "METEOR_no_synonyms (not comparable to METEOR). Install it with `python -m nltk.downloader "
        "wordnet` on a machine with internet, or point NLTK_DATA at a folder that holds it."
    )


def meteor_scores(references: Sequence[str], generated: Sequence[str], wordnet: Any) -> np.ndarray:
    """(N,) nltk METEOR of each pair; ``wordnet`` is nltk's reader or :class:`NoSynonyms`."""
    _check_reports(references, generated)
    return np.array(
        [
            meteor_score([tokenize(ref)], tokenize(gen), wordnet=wordnet)
            for ref, gen in zip(references, generated, strict=True)
        ],
        dtype=np.float64,
    )


def _meteor_reader(synonyms: bool) -> tuple[str, Any]:
    """The result key and the WordNet reader (or stand-in) METEOR runs with."""
    if not synonyms:
        return "METEOR_no_synonyms", NoSynonyms()
    reader = wordnet_reader()
    if reader is None:
        _warn_no_wordnet()
        return "METEOR_no_synonyms", NoSynonyms()
    return "METEOR", reader


# ------------------------------------------------------------------------------ clinical metrics
def _as_labels(labels: Any, name: str) -> np.ndarray:
    array = np.asarray(labels)
    if array.ndim != 2:
        raise ValueError(f"{name} must be an (N reports, L labels) matrix, got shape {array.shape}")
    if not np.isin(array, (0, 1)).all():
        raise ValueError(f"{name} must hold only 0 and 1 (no NaN, no probabilities)")
    return array.astype(bool)


def _check_labels(reference_labels: Any, generated_labels: Any) -> tuple[np.ndarray, np.ndarray]:
    reference = _as_labels(reference_labels, "reference_labels")
    generated = _as_labels(generated_labels, "generated_labels")
    if reference.shape != generated.shape:
        raise ValueError(
            f"reference_labels and generated_labels must have the same shape, got {reference.shape} "
            f"and {generated.shape}"
        )
    return reference, generated


def label_counts(reference: np.ndarray, generated: np.ndarray) -> np.ndarray:
    """(L, 3) per-label TP, FP, FN of binary (N, L) matrices (torchmetrics' stat scores)."""
    num_labels = reference.shape[1]
    stats = multilabel_stat_scores(
        torch.from_numpy(generated.astype(np.int64)),
        torch.from_numpy(reference.astype(np.int64)),
        num_labels=num_labels,
        average=None,
        validate_args=False,
    )
    # Columns tp, fp, tn, fn, support; torchmetrics drops the label axis when L == 1.
    stats = stats.reshape(num_labels, 5).numpy().astype(np.int64)
    return stats[:, [0, 1, 3]]


def crg_from_counts(tp: float, fp: float, fn: float, positives: float, entries: float) -> float:
    """CRG of pooled counts; ``positives`` = A (reference positives), ``entries`` = T."""
    if positives <= 0:
        raise ValueError("CRG is undefined without any positive label in the references (A = 0)")
    if positives >= entries:
        # w_TP = 0, so S_max = 0 and, without negatives, s = 0: CRG = 0 / 0.
        raise ValueError("CRG is undefined when every reference label is positive (A = T)")
    weight = (entries - positives) / (2 * positives)  # w_TP = w_FN
    score = tp * weight - fn * weight - fp  # w_FP = 1
    best = positives * weight
    return best / (2 * best - score)


def crg_score(reference_labels: Any, generated_labels: Any) -> float:
    """CRG of binary (N, L) label matrices; ValueError when the references have no positive (or no
    negative), where the weights are undefined."""
    reference, generated = _check_labels(reference_labels, generated_labels)
    tp, fp, fn = label_counts(reference, generated).sum(0).tolist()
    return crg_from_counts(tp, fp, fn, positives=int(reference.sum()), entries=reference.size)


def _ratio(numerator: float, denominator: float) -> float:
    # 0/0 counts as 0 (scikit-learn's zero_division=0); see the module docstring for when it applies.
    return numerator / denominator if denominator else 0.0


@dataclass(frozen=True)
class ClinicalMetrics:
    """Micro and macro precision, recall and F1, and the per-label values behind the macro means."""

    label_names: list[str]
    per_label: dict[str, dict[str, float]]  # CLINICAL_STATS and "support" -> label -> value (NaN: excluded)
    micro: dict[str, float]  # CLINICAL_STATS -> value (NaN when no label is positive anywhere)
    macro: dict[str, float]  # CLINICAL_STATS -> value (NaN when every label is excluded)
    excluded: list[str]  # labels positive in neither matrix, left out of the macro means


def clinical_metrics_from_counts(counts: np.ndarray, label_names: Sequence[str]) -> ClinicalMetrics:
    """:class:`ClinicalMetrics` of (L, 3) TP, FP, FN counts (:func:`label_counts`)."""
    per_label: dict[str, dict[str, float]] = {name: {} for name in (*CLINICAL_STATS, "support")}
    excluded: list[str] = []
    for name, (tp, fp, fn) in zip(label_names, counts.tolist(), strict=True):
        per_label["support"][name] = float(tp + fn)
        if tp + fp + fn == 0:
            excluded.append(name)
            for stat in CLINICAL_STATS:
                per_label[stat][name] = math.nan
            continue
        per_label["precision"][name] = _ratio(tp, tp + fp)
        per_label["recall"][name] = _ratio(tp, tp + fn)
        per_label["F1"][name] = _ratio(2 * tp, 2 * tp + fp + fn)
    macro = {}
    for stat in CLINICAL_STATS:
        values = [v for v in per_label[stat].values() if not math.isnan(v)]
        macro[stat] = float(np.mean(values)) if values else math.nan
    tp, fp, fn = counts.sum(0).tolist()
    if tp + fp + fn == 0:
        micro = dict.fromkeys(CLINICAL_STATS, math.nan)
    else:
        micro = {
            "precision": _ratio(tp, tp + fp),
            "recall": _ratio(tp, tp + fn),
            "F1": _ratio(2 * tp, 2 * tp + fp + fn),
        }
    return ClinicalMetrics(list(label_names), per_label, micro, macro, excluded)


def clinical_metrics(
    reference_labels: Any, generated_labels: Any, label_names: Sequence[str]
) -> ClinicalMetrics:
    """Micro/macro precision, recall and F1 of the generated reports' labels against the references'."""
    reference, generated = _check_labels(reference_labels, generated_labels)
    if len(label_names) != reference.shape[1]:
        raise ValueError(f"{len(label_names)} label names for {reference.shape[1]} label columns")
    return clinical_metrics_from_counts(label_counts(reference, generated), label_names)


# ------------------------------------------------------------------------------------ entry point
class _ReportScorer:
    """Per-report quantities computed once; ``score(rows)`` re-aggregates any (re)sample of reports."""

    def __init__(
        self,
        references: Sequence[str],
        generated: Sequence[str],
        labels: tuple[np.ndarray, np.ndarray] | None,
        label_names: Sequence[str],
        synonyms: bool,
    ) -> None:
        self.bleu1 = bleu_statistics(references, generated, 1)
        self.bleu4 = bleu_statistics(references, generated, 4)
        self.rouge_l = rouge_l_scores(references, generated)
        self.meteor_key, reader = _meteor_reader(synonyms)
        self.meteor = meteor_scores(references, generated, reader)
        self.labels = labels
        self.label_names = list(label_names)
        # Bootstrap resamples without a reference positive have no CRG; the point estimate warns.
        self.warn_crg = True

    def score(self, rows: np.ndarray) -> dict[str, float]:
        out = {
            "BLEU-1": bleu_from_statistics(self.bleu1[rows].sum(0), 1),
            "BLEU-4": bleu_from_statistics(self.bleu4[rows].sum(0), 4),
            "ROUGE-L": float(self.rouge_l[rows].mean()),
            self.meteor_key: float(self.meteor[rows].mean()),
        }
        if self.labels is None:
            return out
        reference, generated = self.labels[0][rows], self.labels[1][rows]
        counts = label_counts(reference, generated)
        tp, fp, fn = counts.sum(0).tolist()
        try:
            out["CRG"] = crg_from_counts(tp, fp, fn, positives=int(reference.sum()), entries=reference.size)
        except ValueError as error:
            if self.warn_crg:
                log.warning("CRG set to NaN: %s", error)
            out["CRG"] = math.nan
        clinical = clinical_metrics_from_counts(counts, self.label_names)
        for stat in CLINICAL_STATS:
            out[f"clinical_{stat}_micro"] = clinical.micro[stat]
            out[f"clinical_{stat}_macro"] = clinical.macro[stat]
        return out


def report_generation_metrics(
    references: Sequence[str],
    generated: Sequence[str],
    reference_labels: Any | None = None,
    generated_labels: Any | None = None,
    label_names: Sequence[str] | None = None,
    bootstrap_resamples: int = 0,
    seed: int = 0,
    synonyms: bool = True,
) -> dict[str, float]:
    """All metrics of a set of generated reports, as ``{name: value}``.

    Keys: ``BLEU-1``, ``BLEU-4``, ``ROUGE-L``, ``METEOR`` (``METEOR_no_synonyms`` when WordNet is
    missing or ``synonyms=False``) and, with label matrices, ``CRG`` and
    ``clinical_{precision,recall,F1}_{micro,macro}``. With ``bootstrap_resamples > 0`` every key
    also gets ``<key>_ci_low`` / ``<key>_ci_high`` (95 % percentile bootstrap over reports, seeded).
    Per-label clinical values: :func:`clinical_metrics`.

    Empty generated reports are valid and score 0. CRG is NaN (with a warning) when the references
    have no positive label, or no negative one; it is never counted as 0.
    """
    _check_reports(references, generated)
    labels = None
    if (reference_labels is None) != (generated_labels is None):
        raise ValueError("give both reference_labels and generated_labels, or neither")
    if reference_labels is not None:
        labels = _check_labels(reference_labels, generated_labels)
        if labels[0].shape[0] != len(references):
            raise ValueError(
                f"{labels[0].shape[0]} label rows for {len(references)} reports: one row per report"
            )
        if label_names is None or len(label_names) != labels[0].shape[1]:
            count = "no" if label_names is None else len(label_names)
            raise ValueError(f"{count} label names for {labels[0].shape[1]} label columns")
    names = list(label_names) if label_names is not None else []
    scorer = _ReportScorer(references, generated, labels, names, synonyms)
    results = scorer.score(np.arange(len(references)))
    if bootstrap_resamples > 0:
        scorer.warn_crg = False
        intervals = bootstrap(
            lambda rows: scorer.score(rows.numpy()),
            n=len(references),
            resamples=bootstrap_resamples,
            seed=seed,
        )
        for name in list(results):
            results[f"{name}_ci_low"] = intervals.low[name]
            results[f"{name}_ci_high"] = intervals.high[name]
    return results
