"""Bootstrap confidence intervals with real resampling.

Each resample draws N rows *with replacement* from the N evaluated volumes and recomputes the
statistic on them; the interval is the percentile interval of the resampled values. CT-CLIP's
published script has its resampling commented out, so its "1000 bootstraps" are 1000 copies of
one number and its intervals have zero width. Here a test checks that resamples differ.

Anything fitted on validation (thresholds, the chosen probe) stays frozen inside the resamples:
the interval covers the sampling of the evaluated set, not the model selection.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

Statistic = Callable[[torch.Tensor], dict[str, float]]


@dataclass(frozen=True)
class BootstrapResult:
    low: dict[str, float]
    high: dict[str, float]
    samples: dict[str, torch.Tensor]  # metric -> (resamples,), NaN where undefined in a resample


def resample_indices(n: int, resamples: int, seed: int) -> torch.Tensor:
    """(resamples, n) row indices drawn uniformly with replacement; a pure function of the seed."""
    if n < 1 or resamples < 1:
        raise ValueError(f"bootstrap needs n >= 1 and resamples >= 1, got n={n}, resamples={resamples}")
    generator = torch.Generator().manual_seed(int(seed))
    return torch.randint(0, n, (resamples, n), generator=generator)


def bootstrap(
    statistic: Statistic, n: int, resamples: int = 1000, seed: int = 0, level: float = 0.95
) -> BootstrapResult:
    """Percentile CIs of every metric ``statistic(indices)`` returns.

    ``statistic`` maps a (n,) index tensor (rows of the evaluated set, with repeats) to named
    floats. Resamples where a metric is NaN (e.g. a resample without any positive) are left out of
    that metric's interval; a metric NaN in every resample gets a NaN interval.
    """
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    values: dict[str, list[float]] = {}
    for row in resample_indices(n, resamples, seed):
        for name, value in statistic(row).items():
            values.setdefault(name, []).append(float(value))
    alpha = (1 - level) / 2
    samples = {name: torch.tensor(v, dtype=torch.float64) for name, v in values.items()}
    low: dict[str, float] = {}
    high: dict[str, float] = {}
    for name, sample in samples.items():
        finite = sample[~torch.isnan(sample)]
        if finite.numel() == 0:
            low[name] = high[name] = math.nan
            continue
        bounds = torch.quantile(finite, torch.tensor([alpha, 1 - alpha], dtype=torch.float64))
        low[name], high[name] = float(bounds[0]), float(bounds[1])
    return BootstrapResult(low, high, samples)
