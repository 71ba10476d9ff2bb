"""Dense zero-shot segmentation from per-token image embeddings (MaskCLIP; COLIPRI Sec. 3).

The attention pooler's value and output projections map every image token into the joint
image-text space (``AttentionPool1D.token_embeddings``). Each token is scored against a finding's
two short prompts ("{label} present" / "No {label} present", ``evaluation.zero_shot``) exactly as
the pooled embedding is in ``zeroshot_short``: cosine similarities over the fixed temperature 0.07,
soft-maxed; the map is the probability of "present". Token maps are upsampled trilinearly to the
crop's voxels.

Metrics per finding, over the voxels of the volumes whose evaluated crop contains that finding's
mask (localisation within positive scans, not detection):

- **AUROC**: voxel AUROC (``torchmetrics`` ``binary_auroc``);
- **Dice**: pooled over those volumes (2 TP / (predicted + true voxels)) at a threshold chosen on the
  validation split, the one of a grid of validation-score quantiles with the highest validation
  Dice, applied unchanged to the other splits.

Each volume contributes at most ``max_voxels`` voxels, drawn without replacement from a generator
seeded by (seed, volume index): deterministic, and memory bounded whatever the crop size.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torchmetrics.functional.classification import binary_auroc

from evaluation.zero_shot import TEMPERATURE, ClassPrompts, zero_shot_scores

TASK = "dense_zeroshot"
MAX_VOXELS_PER_VOLUME = 65536
THRESHOLD_QUANTILES = 99


def dense_probability_maps(
    token_maps: torch.Tensor,
    prompts: ClassPrompts,
    size: Sequence[int],
    temperature: float = TEMPERATURE,
    normalise: bool = True,
) -> torch.Tensor:
    """(B, C, d, h, w) per-token embeddings -> (B, K, *size) probability of "present" per voxel:
    :func:`zero_shot_scores` at every token, then trilinear upsampling to the crop ``size``."""
    batch, channels, *grid = token_maps.shape
    tokens = token_maps.float().movedim(1, -1).reshape(-1, channels)
    scores = zero_shot_scores(tokens, prompts, temperature, normalise)  # (B * d*h*w, K)
    scores = scores.reshape(batch, *grid, -1).movedim(-1, 1)
    return F.interpolate(scores, size=tuple(int(s) for s in size), mode="trilinear", align_corners=False)


def voxel_sample(n_voxels: int, max_voxels: int, seed: int, volume_index: int) -> torch.Tensor | None:
    """Flat indices of at most ``max_voxels`` of ``n_voxels`` voxels (None: all), the same for the
    same (seed, volume index)."""
    if n_voxels <= max_voxels:
        return None
    generator = torch.Generator().manual_seed(seed * 1_000_003 + volume_index)
    return torch.randperm(n_voxels, generator=generator)[:max_voxels].sort().values


@dataclass
class VoxelScores:
    """One finding's sampled voxel scores and mask values over the volumes that show it."""

    scores: list[torch.Tensor] = field(default_factory=list)
    targets: list[torch.Tensor] = field(default_factory=list)
    volumes: int = 0

    def add(self, scores: torch.Tensor, target: torch.Tensor, sample: torch.Tensor | None) -> None:
        scores, target = scores.flatten().float().cpu(), target.flatten().bool().cpu()
        if sample is not None:
            scores, target = scores[sample], target[sample]
        self.scores.append(scores)
        self.targets.append(target)
        self.volumes += 1

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.scores:
            return torch.empty(0), torch.empty(0, dtype=torch.bool)
        return torch.cat(self.scores), torch.cat(self.targets)


def dice_by_threshold(scores: torch.Tensor, target: torch.Tensor, thresholds: torch.Tensor) -> torch.Tensor:
    """(T,) Dice of ``scores >= t`` against ``target`` for every threshold t (NaN where there are
    neither predicted nor true voxels). One sort instead of T comparisons of all voxels."""
    order = torch.argsort(scores)
    ascending = scores[order].contiguous()
    positives_before = F.pad(torch.cumsum(target[order].long(), 0), (1, 0))
    n, positives = len(scores), int(target.sum())
    first = torch.searchsorted(ascending, thresholds.to(ascending.dtype).contiguous(), right=False)
    predicted = n - first
    true_positive = positives - positives_before[first]
    denominator = (predicted + positives).double()
    dice = 2 * true_positive.double() / denominator
    return torch.where(denominator > 0, dice, torch.full_like(dice, math.nan))


def threshold_grid(scores: torch.Tensor, n_quantiles: int = THRESHOLD_QUANTILES) -> torch.Tensor:
    """Candidate thresholds: the distinct 1 %, 2 %, ..., 99 % quantiles of ``scores``."""
    if scores.numel() == 0:
        return torch.empty(0)
    levels = torch.arange(1, n_quantiles + 1, dtype=torch.float64) / (n_quantiles + 1)
    return torch.unique(torch.quantile(scores.double(), levels)).to(scores.dtype)


def best_dice_threshold(scores: torch.Tensor, target: torch.Tensor, thresholds: torch.Tensor) -> float:
    """The threshold of ``thresholds`` with the highest Dice (the lowest of tied ones); NaN when
    there are no true voxels."""
    if thresholds.numel() == 0 or not bool(target.any()):
        return math.nan
    dice = dice_by_threshold(scores, target, thresholds).nan_to_num(-1.0)
    return float(thresholds[int(torch.argmax(dice))])


def voxel_auroc(scores: torch.Tensor, target: torch.Tensor) -> float:
    """Voxel AUROC; NaN unless there are voxels of both classes."""
    if not (bool(target.any()) and bool((~target).any())):
        return math.nan
    return float(binary_auroc(scores, target.long(), validate_args=False))


@dataclass
class DenseResults:
    """Flat results and the validation thresholds per finding. Keys have the three parts of every
    ``results.json`` key: ``<split>/dense_zeroshot.<label>/AUROC`` (and ``Dice``) per finding,
    ``<split>/dense_zeroshot/AUROC`` (and ``Dice``) their macro means."""

    results: dict[str, float]
    thresholds: dict[str, float]
    volumes: dict[str, dict[str, int]]  # split -> finding -> volumes that show it


def dense_zero_shot_metrics(
    val: Mapping[str, VoxelScores], splits: Mapping[str, Mapping[str, VoxelScores]]
) -> DenseResults:
    """Per-finding AUROC and Dice (at the validation threshold) of every split in ``splits``, and
    their macro means over the findings that have a value (NaN findings are left out of the mean)."""
    thresholds = {}
    for label, collected in val.items():
        scores, target = collected.tensors()
        thresholds[label] = best_dice_threshold(scores, target, threshold_grid(scores))
    results: dict[str, float] = {}
    volumes: dict[str, dict[str, int]] = {}
    for split, per_label in splits.items():
        prefix = f"{split}/{TASK}"
        aurocs, dices = [], []
        volumes[split] = {}
        for label, collected in per_label.items():
            scores, target = collected.tensors()
            auroc = voxel_auroc(scores, target)
            threshold = thresholds.get(label, math.nan)
            dice = math.nan
            if not math.isnan(threshold) and scores.numel():
                dice = float(dice_by_threshold(scores, target, torch.tensor([threshold]))[0])
            results[f"{split}/{TASK}.{label}/AUROC"] = auroc
            results[f"{split}/{TASK}.{label}/Dice"] = dice
            volumes[split][label] = collected.volumes
            aurocs.append(auroc)
            dices.append(dice)
        results[f"{prefix}/AUROC"] = _nanmean(aurocs)
        results[f"{prefix}/Dice"] = _nanmean(dices)
    return DenseResults(results, thresholds, volumes)


def _nanmean(values: Sequence[float]) -> float:
    kept = [v for v in values if not math.isnan(v)]
    return sum(kept) / len(kept) if kept else math.nan
