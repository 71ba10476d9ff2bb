"""The bootstrap really resamples: resamples differ, seeds matter, intervals hold the estimate."""

from __future__ import annotations

import math

import pytest
import torch

from evaluation.bootstrap import bootstrap, resample_indices
from evaluation.metrics import classification_metrics


def test_resample_indices_draw_with_replacement_and_differ_between_resamples() -> None:
    indices = resample_indices(n=20, resamples=50, seed=0)
    assert indices.shape == (50, 20)
    assert int(indices.min()) >= 0 and int(indices.max()) < 20
    # With replacement: some resample repeats a row (P(no repeat in 50 draws of 20 from 20) ~ 1e-7 each).
    assert any(len(set(row.tolist())) < 20 for row in indices)
    # Resamples are not copies of one another (CT-CLIP's commented-out resampling).
    assert len({tuple(row.tolist()) for row in indices}) == 50


def test_resampling_is_a_pure_function_of_the_seed() -> None:
    assert torch.equal(resample_indices(10, 5, seed=3), resample_indices(10, 5, seed=3))
    assert not torch.equal(resample_indices(10, 5, seed=3), resample_indices(10, 5, seed=4))


def test_ci_of_a_mean_contains_the_estimate_and_has_the_expected_width() -> None:
    data = torch.arange(10, dtype=torch.float64)  # mean 4.5, sd 2.87, standard error ~0.86

    def mean(rows: torch.Tensor) -> dict[str, float]:
        return {"mean": float(data[rows].mean())}

    result = bootstrap(mean, n=10, resamples=1000, seed=0)
    samples = result.samples["mean"]
    assert samples.shape == (1000,) and float(samples.std()) > 0.5  # real resampling
    assert result.low["mean"] < 4.5 < result.high["mean"]
    # Normal approximation: 4.5 -/+ 1.96 * 0.86 = [2.8, 6.2]; the percentile interval is close.
    assert result.low["mean"] == pytest.approx(2.8, abs=0.4)
    assert result.high["mean"] == pytest.approx(6.2, abs=0.4)
    other_seed = bootstrap(mean, n=10, resamples=1000, seed=1)
    assert not torch.equal(other_seed.samples["mean"], samples)


def test_nan_resamples_are_left_out_of_the_interval() -> None:
    def sometimes_nan(rows: torch.Tensor) -> dict[str, float]:
        return {"m": math.nan if int(rows[0]) == 0 else 1.0, "never": math.nan}

    result = bootstrap(sometimes_nan, n=4, resamples=100, seed=0)
    assert result.low["m"] == 1.0 and result.high["m"] == 1.0
    assert math.isnan(result.low["never"]) and math.isnan(result.high["never"])


def test_auroc_interval_contains_the_point_estimate() -> None:
    generator = torch.Generator().manual_seed(0)
    labels = (torch.rand(60, 2, generator=generator) > 0.6).float()
    scores = (labels + torch.randn(60, 2, generator=generator)).sigmoid()
    names = ["a", "b"]
    point = classification_metrics(scores, labels, names, warn=False).macro["AUROC"]
    result = bootstrap(
        lambda rows: classification_metrics(scores[rows], labels[rows], names, warn=False).macro,
        n=60,
        resamples=200,
        seed=0,
    )
    assert result.low["AUROC"] < point < result.high["AUROC"]
    assert result.high["AUROC"] - result.low["AUROC"] > 0.05


def test_invalid_arguments_are_rejected() -> None:
    with pytest.raises(ValueError, match="resamples"):
        resample_indices(5, 0, seed=0)
    with pytest.raises(ValueError, match="level"):
        bootstrap(lambda rows: {}, n=3, level=1.5)
