"""GreenRFM prompt-pair zero-shot: prompt texts and dot-product scores against hand-computed values."""

from __future__ import annotations

import pytest
import torch

from evaluation.prompt_zero_shot import (
    GREENRFM_PROMPTS,
    prompt_scores,
    prompt_texts,
    zero_shot_prompt_scores,
)


def test_the_five_prompt_pairs_for_pleural_effusion() -> None:
    expected = [
        ("pleural effusion.", "not pleural effusion."),
        ("pleural effusion.", ""),
        ("There is pleural effusion.", "There is no pleural effusion."),
        ("pleural effusion is present.", "pleural effusion is not present."),
        (
            "Findings are compatible with pleural effusion.",
            "Findings are not compatible with pleural effusion.",
        ),
    ]
    assert len(GREENRFM_PROMPTS) == 5
    for index, (positive, negative) in enumerate(expected):
        assert prompt_texts(["Pleural effusion"], index) == ([positive], [negative])
    assert prompt_texts(["Pleural effusion", "Emphysema"], 2, lowercase=False) == (
        ["There is Pleural effusion.", "There is Emphysema."],
        ["There is no Pleural effusion.", "There is no Emphysema."],
    )
    with pytest.raises(ValueError, match="pair_index"):
        prompt_texts(["Pleural effusion"], 5)


def test_prompt_scores_are_the_softmax_of_raw_dot_products() -> None:
    # v = [1, 0], t+ = [2, 0], t- = [0, 0]: e^2 / (e^2 + e^0) = sigmoid(2) = 0.8807970779778823.
    score = prompt_scores(torch.tensor([[1.0, 0.0]]), torch.tensor([[2.0, 0.0]]), torch.tensor([[0.0, 0.0]]))
    assert score.shape == (1, 1)
    assert score.item() == pytest.approx(0.8807970779778823, abs=1e-7)
    # Two images x two labels; no normalisation, so [0, 3] is not [0, 1]:
    #   v0 = [1, 0]: label 0 sigmoid(2 - 0) = 0.8808, label 1 t+ = [1, 1], t- = [0, 1]: sigmoid(1 - 0) = 0.7311
    #   v1 = [0, 3]: label 0 sigmoid(0 - 0) = 0.5,    label 1 sigmoid(3 - 3) = 0.5
    scores = prompt_scores(
        torch.tensor([[1.0, 0.0], [0.0, 3.0]]),
        torch.tensor([[2.0, 0.0], [1.0, 1.0]]),
        torch.tensor([[0.0, 0.0], [0.0, 1.0]]),
    )
    expected = torch.tensor([[0.8807970779778823, 0.7310585786300049], [0.5, 0.5]])
    assert torch.allclose(scores, expected, atol=1e-7)


def test_all_five_pairs_and_their_mean_with_an_empty_negative() -> None:
    # Fake text encoder: [negated, empty]. Positives -> [0, 0]; "not ..."/"... no ..." -> [1, 0];
    # "" (P2's negative) -> [0, 1]. Image v = [-1, 2]: v·t+ = 0, v·t-(negated) = -1, v·"" = 2, so
    #   P1, P3, P4, P5: sigmoid(0 - (-1)) = sigmoid(1) = 0.7310585786300049
    #   P2:             sigmoid(0 - 2)   = sigmoid(-2) = 0.11920292202211755
    #   mean = (4·0.7310585786 + 0.1192029220) / 5 = 0.6086874473084274
    calls: list[list[str]] = []

    def encode(texts: list[str]) -> torch.Tensor:
        calls.append(texts)
        negated = [" not " in f" {t}" or " no " in f" {t}" for t in texts]
        return torch.tensor([[float(n), float(t == "")] for n, t in zip(negated, texts, strict=True)])

    scores = zero_shot_prompt_scores(torch.tensor([[-1.0, 2.0]]), encode, ["Pleural effusion", "Emphysema"])
    assert list(scores) == ["p1", "p2", "p3", "p4", "p5", "mean"]
    for key in ("p1", "p3", "p4", "p5"):
        assert torch.allclose(scores[key], torch.full((1, 2), 0.7310585786300049), atol=1e-7), key
    assert torch.allclose(scores["p2"], torch.full((1, 2), 0.11920292202211755), atol=1e-7)
    assert torch.allclose(scores["mean"], torch.full((1, 2), 0.6086874473084274), atol=1e-7)
    # One encoder call; every distinct text once, the empty string included.
    assert len(calls) == 1 and len(calls[0]) == len(set(calls[0])) and "" in calls[0]
