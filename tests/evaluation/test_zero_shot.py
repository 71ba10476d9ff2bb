"""Zero-shot prompts and scores against hand-computed values."""

from __future__ import annotations

import logging
import math

import pytest
import torch

from evaluation.zero_shot import (
    ClassPrompts,
    native_class_prompts,
    sample_native_reports,
    short_class_prompts,
    short_prompts,
    zero_shot_scores,
)

NAN = math.nan


def test_short_prompts_follow_the_paper_template() -> None:
    positive, negative = short_prompts(["Lung nodule", "Emphysema"])
    assert positive == ["Lung nodule present", "Emphysema present"]
    assert negative == ["No Lung nodule present", "No Emphysema present"]


def test_score_is_the_softmax_of_cosines_over_temperature_0_07() -> None:
    prompts = ClassPrompts(positive=torch.tensor([[1.0, 0.0]]), negative=torch.tensor([[0.0, 1.0]]))
    # Image at 60 degrees from "present": cos 0.5 vs cos(30 deg) = 0.866 towards "absent".
    image = torch.tensor([[0.5, math.sqrt(3) / 2]])
    expected = 1 / (1 + math.exp((math.sqrt(3) / 2 - 0.5) / 0.07))
    assert zero_shot_scores(image, prompts).item() == pytest.approx(expected, rel=1e-5)
    # Cosine similarity: the image norm does not matter.
    assert zero_shot_scores(10 * image, prompts).item() == pytest.approx(expected, rel=1e-5)
    # An image equally similar to both prompts scores 0.5.
    assert zero_shot_scores(torch.tensor([[1.0, 1.0]]), prompts).item() == pytest.approx(0.5)


def test_short_prompt_embeddings_are_normalised_encoder_outputs() -> None:
    seen: list[list[str]] = []

    def encode(texts: list[str]) -> torch.Tensor:
        seen.append(texts)
        return torch.tensor([[3.0, 4.0], [0.0, 2.0]])

    prompts = short_class_prompts(["Cardiomegaly"], encode)
    assert seen == [["Cardiomegaly present", "No Cardiomegaly present"]]
    assert prompts.positive[0].tolist() == pytest.approx([0.6, 0.8])
    assert prompts.negative[0].tolist() == pytest.approx([0.0, 1.0])


def test_native_reports_come_from_known_positives_and_negatives_with_text(
    caplog: pytest.LogCaptureFixture,
) -> None:
    reports = ["a", "b", "", "d", "e", "f"]
    labels = torch.tensor([[1.0], [1.0], [1.0], [0.0], [NAN], [0.0]])
    with caplog.at_level(logging.WARNING):
        ((positive, negative),) = sample_native_reports(reports, labels, ["Nodule"], per_class=50, seed=0)
    assert positive == [0, 1]  # report 2 is positive but empty
    assert negative == [3, 5]  # report 4 is unknown, never a negative
    assert "Nodule (positive: 2)" in caplog.text


def test_native_sampling_caps_each_class_and_is_seeded() -> None:
    reports = [f"report {i}" for i in range(200)]
    labels = (torch.arange(200) % 2).float().unsqueeze(1)
    ((positive, negative),) = sample_native_reports(reports, labels, ["x"], per_class=50, seed=1)
    assert len(positive) == 50 and len(negative) == 50
    assert all(i % 2 == 1 for i in positive) and all(i % 2 == 0 for i in negative)
    assert sample_native_reports(reports, labels, ["x"], per_class=50, seed=1)[0][0] == positive
    assert sample_native_reports(reports, labels, ["x"], per_class=50, seed=2)[0][0] != positive


def test_native_prompt_is_the_mean_of_unit_report_embeddings() -> None:
    reports = ["p1", "p2", "n1"]
    vectors = {"p1": [2.0, 0.0, 0.0], "p2": [0.0, 5.0, 0.0], "n1": [0.0, 0.0, 1.0]}
    calls: list[list[str]] = []

    def encode(texts: list[str]) -> torch.Tensor:
        calls.append(texts)
        return torch.tensor([vectors[t] for t in texts])

    labels = torch.tensor([[1.0, 0.0], [1.0, NAN], [0.0, 1.0]])
    prompts = native_class_prompts(reports, labels, ["A", "B"], encode, per_class=50)
    assert len(calls) == 1 and sorted(calls[0]) == ["n1", "p1", "p2"]  # each report encoded once
    s = 1 / math.sqrt(2)
    # A: mean of unit p1 and p2 = (0.5, 0.5, 0), normalised.
    assert prompts.positive[0].tolist() == pytest.approx([s, s, 0.0])
    assert prompts.negative[0].tolist() == pytest.approx([0.0, 0.0, 1.0])
    # B: positive n1, negative p1 (p2 unknown).
    assert prompts.positive[1].tolist() == pytest.approx([0.0, 0.0, 1.0])
    assert prompts.negative[1].tolist() == pytest.approx([1.0, 0.0, 0.0])


def test_a_label_without_training_positives_gets_nan_scores() -> None:
    def encode(texts: list[str]) -> torch.Tensor:
        return torch.ones(len(texts), 2)

    prompts = native_class_prompts(["r1", "r2"], torch.tensor([[0.0], [0.0]]), ["A"], encode)
    scores = zero_shot_scores(torch.tensor([[1.0, 0.0]]), prompts)
    assert math.isnan(scores.item())
