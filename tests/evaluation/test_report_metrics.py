"""Report-generation metrics against hand-computed values: BLEU, ROUGE-L, METEOR naming, CRG, clinical F1."""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np
import pytest
import sacrebleu
from sklearn.metrics import precision_recall_fscore_support

from evaluation import report_metrics
from evaluation.report_metrics import (
    bleu_from_statistics,
    bleu_statistics,
    clinical_metrics,
    corpus_bleu,
    crg_score,
    report_generation_metrics,
    rouge_l_scores,
    tokenize,
)

# Three reports, labels a b c d. Per label:
#   a: TP 1 (row 0), FN 1 (row 1), FP 0 -> P 1,  R 1/2,        F1 2*1/(2*1+0+1) = 2/3
#   b: TP 2, FP 0, FN 0               -> P 1,  R 1,          F1 1
#   c: TP 0, FP 1, FN 0               -> P 0,  R 0/0 -> 0,   F1 0
#   d: positive nowhere               -> excluded (NaN)
REFERENCE_LABELS = np.array([[1, 0, 0, 0], [1, 1, 0, 0], [0, 1, 0, 0]])
GENERATED_LABELS = np.array([[1, 0, 1, 0], [0, 1, 0, 0], [0, 1, 0, 0]])
LABEL_NAMES = ["a", "b", "c", "d"]


class _Lemma:
    def __init__(self, name: str) -> None:
        self._name = name

    def name(self) -> str:
        return self._name


class _Synset:
    def __init__(self, *names: str) -> None:
        self._lemmas = [_Lemma(n) for n in names]

    def lemmas(self) -> list[_Lemma]:
        return self._lemmas


class FakeWordNet:
    """A WordNet that knows one synonym pair, big ~ huge, so the synonym stage is observable.

    nltk looks synonyms up after its stem stage, on the Porter stems of the leftover words; both
    words are their own stems, so the pair matches as written."""

    def synsets(self, word: str) -> list[Any]:
        return [_Synset("big", "huge")] if word in {"big", "huge"} else []


# --------------------------------------------------------------------------------- tokenizer
def test_tokenizer_lowercases_and_keeps_decimals_and_punctuation_apart() -> None:
    assert tokenize("Nodule, 3.5 mm. T2-weighted") == ["nodule", ",", "3.5", "mm", ".", "t2", "-", "weighted"]
    assert tokenize("") == []


# ---------------------------------------------------------------------------------------- BLEU
def test_bleu1_is_unigram_precision_times_brevity_penalty() -> None:
    # Tokens: hyp [the, lung, is, clear] (4), ref [the, lungs, are, clear, .] (5).
    # Unigram matches: the, clear -> precision 2/4; BP = exp(1 - 5/4) = exp(-0.25) = 0.7788.
    # BLEU-1 = 0.5 * 0.7788 = 0.3894.
    value = corpus_bleu(["The lungs are clear."], ["the lung is clear"], max_ngram_order=1)
    assert value == pytest.approx(0.5 * math.exp(-0.25), abs=1e-9)


def test_bleu_is_corpus_level_and_summed_statistics_match_sacrebleu() -> None:
    references = ["No acute findings.", "Small left pleural effusion.", "Heart size is normal."]
    generated = ["No acute findings seen.", "Large right pleural effusion.", "Heart is normal."]
    joined_refs = [" ".join(tokenize(t)) for t in references]
    joined_gens = [" ".join(tokenize(t)) for t in generated]
    for order in (1, 4):
        sacre = sacrebleu.BLEU(tokenize="none", force=True, max_ngram_order=order)
        expected = sacre.corpus_score(joined_gens, [joined_refs])
        assert corpus_bleu(references, generated, order) == pytest.approx(expected.score / 100)
        # A subset's summed statistics equal a fresh corpus score of that subset (the bootstrap path).
        stats = bleu_statistics(references, generated, order)
        subset = corpus_bleu([references[0], references[2]], [generated[0], generated[2]], order)
        assert bleu_from_statistics(stats[[0, 2]].sum(0), order) == pytest.approx(subset)
    # Corpus BLEU is not the mean of sentence BLEU.
    per_report = np.mean([corpus_bleu([r], [g], 4) for r, g in zip(references, generated, strict=True)])
    assert corpus_bleu(references, generated, 4) != pytest.approx(per_report)


# -------------------------------------------------------------------------------------- ROUGE-L
def test_rouge_l_is_the_lcs_f_measure() -> None:
    # ref [no, acute, cardiopulmonary, process] (4), hyp [no, acute, process] (3): LCS 3.
    # P = 3/3, R = 3/4, F = 2 * 1 * 0.75 / 1.75 = 6/7.
    scores = rouge_l_scores(["No acute cardiopulmonary process"], ["no acute process"])
    assert scores.tolist() == pytest.approx([6 / 7])


def test_identical_reports_score_one_and_empty_generated_reports_score_zero() -> None:
    references = ["No acute cardiopulmonary process.", "Mild cardiomegaly without effusion."]
    same = report_generation_metrics(references, list(references), synonyms=False)
    for key in ("BLEU-1", "BLEU-4", "ROUGE-L"):
        assert same[key] == pytest.approx(1.0)
    empty = report_generation_metrics(references, ["", ""], synonyms=False)
    for key in ("BLEU-1", "BLEU-4", "ROUGE-L", "METEOR_no_synonyms"):
        assert empty[key] == 0.0


# --------------------------------------------------------------------------------------- METEOR
# ref [the, heart, is, huge], hyp [the, heart, is, big].
# With big ~ huge: 4 matches in 1 chunk, P = R = 1, Fmean = 1,
#   penalty = 0.5 * (1/4)^3 = 0.0078125 -> METEOR 0.9921875.
# Without synonyms (no exact or stem match for big): 3 matches in 1 chunk, P = R = 3/4,
#   Fmean = PR / (0.9 P + 0.1 R) = 3/4, penalty = 0.5 * (1/3)^3 = 1/54 -> 0.75 * 53/54 = 0.7361.
METEOR_WITH_SYNONYMS = 1 - 0.5 / 64
METEOR_WITHOUT_SYNONYMS = 0.75 * (1 - 0.5 / 27)


def test_meteor_uses_wordnet_synonyms_when_available(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(report_metrics, "wordnet_reader", lambda: FakeWordNet())
    result = report_generation_metrics(["The heart is huge."], ["The heart is big."])
    assert "METEOR_no_synonyms" not in result
    # The final "." is a fifth matched token in the same chunk: penalty 0.5 * (1/5)^3.
    assert result["METEOR"] == pytest.approx(1 - 0.5 / 125)
    result = report_generation_metrics(["the heart is huge"], ["the heart is big"])
    assert result["METEOR"] == pytest.approx(METEOR_WITH_SYNONYMS)


def test_meteor_without_wordnet_changes_its_key_and_warns_once(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(report_metrics, "wordnet_reader", lambda: None)
    monkeypatch.setattr(report_metrics, "_WARNED_NO_WORDNET", False)
    with caplog.at_level(logging.WARNING, logger="evaluation.report_metrics"):
        first = report_generation_metrics(["the heart is huge"], ["the heart is big"])
        report_generation_metrics(["the heart is huge"], ["the heart is big"])
    assert "METEOR" not in first
    assert first["METEOR_no_synonyms"] == pytest.approx(METEOR_WITHOUT_SYNONYMS)
    warnings = [r for r in caplog.records if "WordNet" in r.getMessage()]
    assert len(warnings) == 1
    assert "python -m nltk.downloader wordnet" in warnings[0].getMessage()
    assert "NLTK_DATA" in warnings[0].getMessage()


def test_meteor_without_synonyms_on_request_even_with_wordnet(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(report_metrics, "wordnet_reader", lambda: FakeWordNet())
    result = report_generation_metrics(["the heart is huge"], ["the heart is big"], synonyms=False)
    assert "METEOR" not in result
    assert result["METEOR_no_synonyms"] == pytest.approx(METEOR_WITHOUT_SYNONYMS)


def test_meteor_key_follows_the_real_wordnet_availability() -> None:
    result = report_generation_metrics(["the heart is huge"], ["the heart is big"])
    expected = "METEOR" if report_metrics.wordnet_reader() is not None else "METEOR_no_synonyms"
    assert set(result) & {"METEOR", "METEOR_no_synonyms"} == {expected}


# ------------------------------------------------------------------------------------------ CRG
def test_crg_matches_hand_computed_values() -> None:
    # Case 1: A = 2 positives, T = 6 entries, w = (6 - 2) / (2 * 2) = 1.
    #   TP 1 (0,0), FP 1 (0,1), FN 1 (1,1): s = 1 - 1 - 1 = -1, S_max = 2 * 1 = 2,
    #   CRG = 2 / (2 * 2 - (-1)) = 2/5.
    assert crg_score([[1, 0, 0], [0, 1, 0]], [[1, 1, 0], [0, 0, 0]]) == pytest.approx(0.4)
    # Case 2: A = 1, T = 8, w = 7 / 2 = 3.5. TP 1, FP 1, FN 0: s = 3.5 - 0 - 1 = 2.5,
    #   S_max = 3.5, CRG = 3.5 / (7 - 2.5) = 7/9.
    assert crg_score([[1, 0, 0, 0], [0, 0, 0, 0]], [[1, 0, 1, 0], [0, 0, 0, 0]]) == pytest.approx(7 / 9)
    # The shared matrix: A = 4, T = 12, w = 8 / 8 = 1; TP 3, FP 1, FN 1: s = 3 - 1 - 1 = 1,
    #   S_max = 4, CRG = 4 / (8 - 1) = 4/7.
    assert crg_score(REFERENCE_LABELS, GENERATED_LABELS) == pytest.approx(4 / 7)
    # One label column (torchmetrics drops the label axis then): A = 2, T = 3, w = 1/4.
    #   TP 1, FP 1, FN 1: s = 1/4 - 1/4 - 1 = -1, S_max = 1/2, CRG = 0.5 / (1 + 1) = 1/4.
    assert crg_score([[1], [1], [0]], [[1], [0], [1]]) == pytest.approx(0.25)


def test_crg_landmarks_perfect_all_negative_all_positive_and_inverted() -> None:
    reference = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 0]])
    assert crg_score(reference, reference) == pytest.approx(1.0)
    # All negative: s = -A w = -S_max -> 1/3; all positive: s = S_max - (T - A) = -S_max -> 1/3.
    assert crg_score(reference, np.zeros_like(reference)) == pytest.approx(1 / 3)
    assert crg_score(reference, np.ones_like(reference)) == pytest.approx(1 / 3)
    # Every entry wrong: s = -S_max - 2 S_max -> S_max / (5 S_max) = 1/5.
    assert crg_score(reference, 1 - reference) == pytest.approx(0.2)


def test_crg_is_undefined_without_reference_positives_or_negatives() -> None:
    with pytest.raises(ValueError, match="A = 0"):
        crg_score(np.zeros((2, 3)), np.ones((2, 3)))
    with pytest.raises(ValueError, match="A = T"):
        crg_score(np.ones((2, 3)), np.ones((2, 3)))


# -------------------------------------------------------------------------------- clinical P/R/F1
def test_clinical_micro_and_macro_against_hand_values_and_sklearn() -> None:
    metrics = clinical_metrics(REFERENCE_LABELS, GENERATED_LABELS, LABEL_NAMES)
    # Micro: TP 3, FP 1, FN 1 -> P = R = F1 = 3/4.
    assert metrics.micro == pytest.approx({"precision": 0.75, "recall": 0.75, "F1": 0.75})
    # Macro over a, b, c (d positive nowhere): P (1 + 1 + 0) / 3, R (1/2 + 1 + 0) / 3,
    # F1 (2/3 + 1 + 0) / 3 = 5/9.
    assert metrics.macro == pytest.approx({"precision": 2 / 3, "recall": 0.5, "F1": 5 / 9})
    assert metrics.excluded == ["d"]
    assert metrics.per_label["F1"]["a"] == pytest.approx(2 / 3)
    assert metrics.per_label["recall"]["c"] == 0.0
    assert math.isnan(metrics.per_label["F1"]["d"])
    assert metrics.per_label["support"] == {"a": 2.0, "b": 2.0, "c": 0.0, "d": 0.0}
    # An independent oracle: scikit-learn, macro restricted to the covered labels.
    micro = precision_recall_fscore_support(REFERENCE_LABELS, GENERATED_LABELS, average="micro")
    macro = precision_recall_fscore_support(
        REFERENCE_LABELS, GENERATED_LABELS, average="macro", labels=[0, 1, 2], zero_division=0
    )
    assert [metrics.micro[s] for s in ("precision", "recall", "F1")] == pytest.approx(list(micro[:3]))
    assert [metrics.macro[s] for s in ("precision", "recall", "F1")] == pytest.approx(list(macro[:3]))


def test_entry_point_reports_label_metrics() -> None:
    result = report_generation_metrics(
        ["a", "b", "c"], ["a", "b", "c"], REFERENCE_LABELS, GENERATED_LABELS, LABEL_NAMES, synonyms=False
    )
    assert result["CRG"] == pytest.approx(4 / 7)
    assert result["clinical_F1_micro"] == pytest.approx(0.75)
    assert result["clinical_F1_macro"] == pytest.approx(5 / 9)
    assert result["clinical_precision_macro"] == pytest.approx(2 / 3)
    assert result["clinical_recall_macro"] == pytest.approx(0.5)
    assert result["clinical_precision_micro"] == pytest.approx(0.75)
    assert result["clinical_recall_micro"] == pytest.approx(0.75)


def test_entry_point_gives_nan_crg_without_reference_positives(caplog: pytest.LogCaptureFixture) -> None:
    zeros = np.zeros((2, 2), dtype=int)
    with caplog.at_level(logging.WARNING, logger="evaluation.report_metrics"):
        result = report_generation_metrics(["x", "y"], ["x", "y"], zeros, zeros, ["p", "q"], synonyms=False)
    assert math.isnan(result["CRG"]) and math.isnan(result["clinical_F1_micro"])
    assert any("CRG set to NaN" in r.getMessage() for r in caplog.records)


# ------------------------------------------------------------------------------------- bootstrap
def test_bootstrap_ci_keys_bracket_the_estimate_and_are_seeded() -> None:
    references = [
        "No acute cardiopulmonary process.",
        "Small left pleural effusion with adjacent atelectasis.",
        "Heart size is normal. Lungs are clear.",
        "Moderate cardiomegaly. No pneumothorax.",
        "Nodule of 3.5 mm in the right upper lobe.",
        "Emphysema in both upper lobes.",
    ]
    generated = [
        "No acute process.",
        "Small right pleural effusion.",
        "Heart size is normal. Lungs are clear.",
        "Cardiomegaly without pneumothorax.",
        "",
        "Mild emphysema.",
    ]
    reference_labels = np.array([[0, 0], [1, 0], [0, 0], [0, 1], [1, 0], [1, 1]])
    generated_labels = np.array([[0, 0], [1, 0], [0, 0], [1, 1], [0, 0], [1, 0]])
    kwargs: dict[str, Any] = dict(label_names=["effusion", "cardiomegaly"], synonyms=False, seed=3)
    result = report_generation_metrics(
        references, generated, reference_labels, generated_labels, bootstrap_resamples=60, **kwargs
    )
    point_keys = [k for k in result if not k.endswith(("_ci_low", "_ci_high"))]
    assert set(point_keys) >= {
        "BLEU-1",
        "BLEU-4",
        "ROUGE-L",
        "METEOR_no_synonyms",
        "CRG",
        "clinical_F1_macro",
    }
    for key in point_keys:
        assert result[f"{key}_ci_low"] <= result[key] <= result[f"{key}_ci_high"], key
    # Real resampling: the reports differ, so the interval has width.
    assert result["ROUGE-L_ci_low"] < result["ROUGE-L_ci_high"]
    again = report_generation_metrics(
        references, generated, reference_labels, generated_labels, bootstrap_resamples=60, **kwargs
    )
    assert again == result
    plain = report_generation_metrics(references, generated, reference_labels, generated_labels, **kwargs)
    assert not any(k.endswith("_ci_low") for k in plain)


# ------------------------------------------------------------------------------------- bad input
def test_bad_inputs_raise_clear_errors() -> None:
    with pytest.raises(ValueError, match="pair up one to one"):
        report_generation_metrics(["a", "b"], ["a"])
    with pytest.raises(ValueError, match="no reports"):
        report_generation_metrics([], [])
    with pytest.raises(ValueError, match="not single strings"):
        report_generation_metrics("a report", "a report")
    with pytest.raises(ValueError, match="or neither"):
        report_generation_metrics(["a"], ["a"], reference_labels=np.ones((1, 2)), label_names=["p", "q"])
    with pytest.raises(ValueError, match="one row per report"):
        report_generation_metrics(["a"], ["a"], np.ones((2, 2)), np.ones((2, 2)), ["p", "q"])
    with pytest.raises(ValueError, match="label names"):
        report_generation_metrics(["a"], ["a"], np.ones((1, 2)), np.ones((1, 2)), ["p"])
    with pytest.raises(ValueError, match="only 0 and 1"):
        crg_score(np.array([[0.7, 1.0]]), np.array([[1, 0]]))
    with pytest.raises(ValueError, match="same shape"):
        crg_score(np.ones((2, 2)), np.ones((2, 3)))
    with pytest.raises(ValueError, match="matrix"):
        clinical_metrics(np.ones(3), np.ones(3), ["p"])
