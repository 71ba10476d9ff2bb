"""Training and selecting the probe grid on frozen features (COLIPRI App. C.2).

- All probes of a :class:`~evaluation.probe_grid.ProbeGrid` train jointly on the
  same batches: of cached features here, or of tokens the frozen encoder computes batch by batch
  (:mod:`evaluation.joint_probes`) when they do not fit the cache budget. SGD with momentum
  0.95, no weight decay, a cosine schedule from each probe's own learning rate to 0, and binary
  cross-entropy over the known labels only (NaN labels are masked, never treated as negative).
- The single best probe is the one with the highest **validation** macro AUPRC (AUPRC because
  most labels are rare). It is then applied unchanged to test and transfer splits, with
  thresholds fitted on validation.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from evaluation.features import TokenFeatures
from evaluation.metrics import classification_metrics
from evaluation.probe_grid import ProbeGrid

MOMENTUM = 0.95


@dataclass(frozen=True)
class ProbeTraining:
    steps: int = 12_500
    batch_size: int = 16
    seed: int = 0


def masked_bce(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-probe BCE over known labels. logits (P, B, K), labels (B, K) with NaN -> (P,)."""
    known = ~torch.isnan(labels)
    target = labels.nan_to_num(0.0).expand_as(logits)
    losses = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    return (losses * known).sum(dim=(1, 2)) / known.sum().clamp(min=1)


def cached_batches(
    features: TokenFeatures, labels: torch.Tensor, config: ProbeTraining, device: torch.device | str = "cpu"
) -> Iterator[tuple[dict[str, torch.Tensor], torch.Tensor]]:
    """The training batches of :func:`probe_batch_indices` read from cached features."""
    if len(features) != labels.shape[0]:
        raise ValueError(f"{len(features)} feature rows but {labels.shape[0]} label rows")
    for indices in probe_batch_indices(len(features), config):
        yield features.batch(indices, device), labels[indices]


def probe_batch_indices(volumes: int, config: ProbeTraining) -> torch.Tensor:
    """(steps, batch) volume indices of the probe training stream: seeded reshuffles, every volume
    once per pass. The cached and the joint (encoder in the loop) paths draw the same stream."""
    if config.steps < 1:
        raise ValueError(f"probe steps must be >= 1, got {config.steps}")
    generator = torch.Generator().manual_seed(config.seed)
    per_batch = min(config.batch_size, volumes)
    passes = math.ceil(config.steps * per_batch / volumes)
    order = torch.cat([torch.randperm(volumes, generator=generator) for _ in range(passes)])
    return order[: config.steps * per_batch].view(config.steps, per_batch)


def train_probe_grid(
    grid: ProbeGrid,
    features: TokenFeatures,
    labels: torch.Tensor,
    config: ProbeTraining,
    device: torch.device | str = "cpu",
    progress: bool = True,
) -> torch.Tensor:
    """Train every probe of ``grid`` in place on cached features; returns each probe's mean loss
    over the last 10 % of the steps, (P,)."""
    batches = cached_batches(features, labels, config, device)
    return train_probe_grid_on(grid, batches, config.steps, device, progress)


@torch.enable_grad()  # callers may run evaluation under no_grad (the periodic EvaluationCallback)
def train_probe_grid_on(
    grid: ProbeGrid,
    batches: Iterable[tuple[dict[str, torch.Tensor], torch.Tensor]],
    steps: int,
    device: torch.device | str = "cpu",
    progress: bool = True,
    description: str = "probes",
) -> torch.Tensor:
    """Train every probe of ``grid`` in place on ``steps`` (features, labels) batches; returns
    each probe's mean loss over the last 10 % of the steps, (P,)."""
    grid.to(device).train()
    optimizer = torch.optim.SGD(grid.param_groups(), momentum=MOMENTUM, weight_decay=0.0, foreach=True)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
    tail = max(1, steps // 10)
    tail_loss = torch.zeros(len(grid.specs))
    step = -1
    for step, (features, labels) in enumerate(
        tqdm(batches, total=steps, desc=description, disable=not progress, leave=False)
    ):
        losses = masked_bce(grid(features), labels.to(device))
        optimizer.zero_grad(set_to_none=True)
        losses.sum().backward()  # probes share no parameters: each gets its own gradient
        optimizer.step()
        schedule.step()
        if step >= steps - tail:
            tail_loss += losses.detach().cpu() / tail
    if step + 1 != steps:
        raise ValueError(f"The probe training stream ended after {step + 1} of {steps} batches")
    return tail_loss


@torch.no_grad()
def predict_probe_grid(
    grid: ProbeGrid, features: TokenFeatures, batch_size: int = 64, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """(P, V, K) probabilities of every probe for every volume."""
    grid.to(device).eval()
    chunks = []
    for start in range(0, len(features), batch_size):
        indices = torch.arange(start, min(start + batch_size, len(features)))
        chunks.append(grid(features.batch(indices, device)).sigmoid().cpu())
    return torch.cat(chunks, dim=1)


def select_probe(
    probabilities: torch.Tensor, labels: torch.Tensor, label_names: list[str], names: list[str]
) -> tuple[int, dict[str, float]]:
    """Index of the probe with the highest validation macro AUPRC, and every probe's value.

    A probe whose macro AUPRC is NaN (no valid label) is never chosen.
    """
    auprc = {
        name: classification_metrics(probs, labels, label_names, warn=False).macro["AUPRC"]
        for name, probs in zip(names, probabilities, strict=True)
    }
    ranked = [-math.inf if math.isnan(v) else v for v in auprc.values()]
    if all(v == -math.inf for v in ranked):
        raise ValueError("No probe has a defined validation AUPRC: the validation split has no valid label")
    return int(torch.tensor(ranked).argmax()), auprc
