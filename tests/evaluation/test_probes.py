"""Probe training and selection: masked BCE, batching, joint training, choice by validation AUPRC."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
import torch

from evaluation.features import TokenFeatures
from evaluation.metrics import classification_metrics
from evaluation.probe_grid import ProbeGrid
from evaluation.probes import (
    ProbeTraining,
    masked_bce,
    predict_probe_grid,
    probe_batch_indices,
    select_probe,
    train_probe_grid,
)


def test_masked_bce_ignores_unknown_labels() -> None:
    logits = torch.zeros(2, 3, 2)  # 2 probes, 3 volumes, 2 labels: every known term is ln 2
    labels = torch.tensor([[1.0, math.nan], [0.0, math.nan], [math.nan, 1.0]])
    assert masked_bce(logits, labels).tolist() == pytest.approx([math.log(2)] * 2)
    logits[:, 0, 1] = 100.0  # an unknown entry: no effect
    assert masked_bce(logits, labels).tolist() == pytest.approx([math.log(2)] * 2)


def test_batches_visit_every_volume_once_per_pass() -> None:
    batches = probe_batch_indices(10, ProbeTraining(steps=5, batch_size=4, seed=0))
    assert batches.shape == (5, 4)
    assert sorted(batches.flatten()[:10].tolist()) == list(range(10))
    assert probe_batch_indices(3, ProbeTraining(2, 16, 0)).shape == (2, 3)  # small splits: batch = split
    torch.testing.assert_close(batches, probe_batch_indices(10, ProbeTraining(5, 4, 0)))  # seeded


def test_selection_takes_the_highest_validation_auprc() -> None:
    labels = torch.tensor([[1.0], [0.0], [1.0], [0.0]])
    perfect = torch.tensor([[0.9], [0.1], [0.8], [0.2]])
    inverted = 1 - perfect
    probabilities = torch.stack([inverted, perfect, torch.full_like(perfect, 0.5)])
    best, auprc = select_probe(probabilities, labels, ["a"], ["inv", "perfect", "flat"])
    assert best == 1 and auprc["perfect"] == pytest.approx(1.0)


def test_joint_training_learns_the_toy_labels(toy_data: Any, toy_model: Any) -> None:
    def tokens(split: str) -> TokenFeatures:
        images = toy_data.splits[split]["images"].flatten(1)
        return TokenFeatures({"tokens": torch.diag_embed(images).numpy().astype(np.float16)})

    torch.manual_seed(0)
    grid = ProbeGrid(embed_dim=8, num_labels=3, num_heads=2, lrs=(0.1, 0.01))
    labels = toy_data.splits["train"]["labels"]
    tail_loss = train_probe_grid(grid, tokens("train"), labels, ProbeTraining(200, 16, 0), progress=False)
    assert tail_loss.shape == (10,) and bool((tail_loss < math.log(2)).all())
    probabilities = predict_probe_grid(grid, tokens("test"))
    best, _ = select_probe(
        predict_probe_grid(grid, tokens("val")), toy_data.splits["val"]["labels"], ["a", "b", "c"], grid.names
    )
    metrics = classification_metrics(probabilities[best], toy_data.splits["test"]["labels"], ["a", "b", "c"])
    assert metrics.macro["AUROC"] > 0.95
