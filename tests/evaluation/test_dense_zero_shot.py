"""Dense zero-shot metrics on hand-computed examples."""

from __future__ import annotations

import math

import pytest
import torch

from evaluation.dense_zero_shot import (
    VoxelScores,
    best_dice_threshold,
    dense_probability_maps,
    dense_zero_shot_metrics,
    dice_by_threshold,
    voxel_auroc,
    voxel_sample,
)
from evaluation.zero_shot import ClassPrompts

SCORES = torch.tensor([0.1, 0.4, 0.35, 0.8])
TARGET = torch.tensor([False, False, True, True])


def test_dice_by_threshold_and_best_threshold():
    thresholds = torch.tensor([0.05, 0.3, 0.35, 0.5, 0.9])
    # >= 0.05: 4 predicted, 2 true positives: 4 / 6; >= 0.3 and >= 0.35: 3 predicted, 2 TP: 4 / 5;
    # >= 0.5: {0.8}: 2 / 3; >= 0.9: nothing predicted: 0 / 2.
    expected = torch.tensor([4 / 6, 4 / 5, 4 / 5, 2 / 3, 0.0], dtype=torch.float64)
    torch.testing.assert_close(dice_by_threshold(SCORES, TARGET, thresholds), expected)
    assert best_dice_threshold(SCORES, TARGET, thresholds) == pytest.approx(0.3)
    assert math.isnan(
        float(dice_by_threshold(SCORES, torch.zeros(4, dtype=torch.bool), torch.tensor([0.9]))[0])
    )
    assert math.isnan(best_dice_threshold(SCORES, torch.zeros(4, dtype=torch.bool), thresholds))


def test_voxel_auroc_counts_ordered_pairs():
    # positives {0.35, 0.8} vs negatives {0.1, 0.4}: 3 of 4 pairs ordered
    assert voxel_auroc(SCORES, TARGET) == pytest.approx(0.75)
    assert math.isnan(voxel_auroc(SCORES, torch.ones(4, dtype=torch.bool)))


def test_validation_threshold_is_applied_to_test():
    val, test = VoxelScores(), VoxelScores()
    val.add(SCORES, TARGET, None)
    test.add(torch.tensor([0.2, 0.6, 0.7, 0.25]), torch.tensor([False, True, True, False]), None)
    out = dense_zero_shot_metrics({"Lung nodule": val}, {"test": {"Lung nodule": test}})
    # Validation Dice is highest (4/5) for thresholds in (0.1, 0.35]; the lowest quantile there is
    # the 1 % quantile, 0.1 + 0.03 * (0.35 - 0.1) = 0.1075. On test every voxel is >= it: 4 / 6.
    assert out.thresholds["Lung nodule"] == pytest.approx(0.1075)
    assert out.results["test/dense_zeroshot.Lung nodule/Dice"] == pytest.approx(4 / 6)
    assert out.results["test/dense_zeroshot.Lung nodule/AUROC"] == pytest.approx(1.0)
    assert out.results["test/dense_zeroshot/AUROC"] == pytest.approx(1.0)
    assert out.results["test/dense_zeroshot/Dice"] == pytest.approx(4 / 6)


def test_dense_probability_maps_score_each_token_like_the_pooled_embedding():
    prompts = ClassPrompts(positive=torch.tensor([[1.0, 0.0]]), negative=torch.tensor([[0.0, 1.0]]))
    tokens = torch.zeros(1, 2, 1, 1, 2)
    tokens[0, :, 0, 0, 0] = torch.tensor([3.0, 0.0])  # "present"-like: cos 1 vs 0
    tokens[0, :, 0, 0, 1] = torch.tensor([0.0, 2.0])  # "absent"-like
    maps = dense_probability_maps(tokens, prompts, size=(2, 2, 4))
    assert maps.shape == (1, 1, 2, 2, 4)
    present = 1 / (1 + math.exp(-1 / 0.07))
    assert float(maps[0, 0, 0, 0, 0]) == pytest.approx(present)
    assert float(maps[0, 0, 1, 1, 3]) == pytest.approx(1 - present)
    assert float(maps[0, 0, 0, 0, 1]) == pytest.approx(0.75 * present + 0.25 * (1 - present))


def test_voxel_sample_is_deterministic_and_bounded():
    assert voxel_sample(10, 20, seed=0, volume_index=3) is None
    first = voxel_sample(1000, 100, seed=0, volume_index=3)
    assert first is not None and len(first) == 100 and len(set(first.tolist())) == 100
    torch.testing.assert_close(first, voxel_sample(1000, 100, seed=0, volume_index=3))
    assert not torch.equal(first, voxel_sample(1000, 100, seed=0, volume_index=4))
