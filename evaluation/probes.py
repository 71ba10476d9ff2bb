"""Training and selecting the probe grid on frozen features (COLIPRI App. C.2).

- All probes of a :class:`~evaluation.probe_grid.ProbeGrid` train jointly on the
  same batches of cached features: SGD with momentum 0.95, no weight decay, a cosine schedule
  from each probe's own learning rate to 0, and binary cross-entropy over the known labels only
  (NaN labels are masked, never treated as negative).
- The single best probe is the one with the highest **validation** macro AUPRC (AUPRC because
  most labels are rare). It is then applied unchanged to test and transfer splits, with
  thresholds fitted on validation.
"""

from __future__ import annotations

import math
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


def _batches(volumes: int, batch_size: int, steps: int, generator: torch.Generator) -> torch.Tensor:
    """(steps, batch) volume indices: seeded reshuffles, every volume once per pass."""
    per_batch = min(batch_size, volumes)
    passes = math.ceil(steps * per_batch / volumes)
    order = torch.cat([torch.randperm(volumes, generator=generator) for _ in range(passes)])
    return order[: steps * per_batch].view(steps, per_batch)


@torch.enable_grad()  # callers may run evaluation under no_grad (the periodic EvaluationCallback)
def train_probe_grid(
    grid: ProbeGrid,
    features: TokenFeatures,
    labels: torch.Tensor,
    config: ProbeTraining,
    device: torch.device | str = "cpu",
    progress: bool = True,
) -> torch.Tensor:
    """Train every probe of ``grid`` in place; returns each probe's mean loss over the last
    10 % of the steps, (P,)."""
    if len(features) != labels.shape[0]:
        raise ValueError(f"{len(features)} feature rows but {labels.shape[0]} label rows")
    if config.steps < 1:
        raise ValueError(f"probe steps must be >= 1, got {config.steps}")
    grid.to(device).train()
    optimizer = torch.optim.SGD(grid.param_groups(), momentum=MOMENTUM, weight_decay=0.0, foreach=True)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.steps)
    generator = torch.Generator().manual_seed(config.seed)
    tail = max(1, config.steps // 10)
    tail_loss = torch.zeros(len(grid.specs))
    for step, indices in enumerate(
        tqdm(
            _batches(len(features), config.batch_size, config.steps, generator),
            desc="probes",
            disable=not progress,
            leave=False,
        )
    ):
        losses = masked_bce(grid(features.batch(indices, device)), labels[indices].to(device))
        optimizer.zero_grad(set_to_none=True)
        losses.sum().backward()  # probes share no parameters: each gets its own gradient
        optimizer.step()
        schedule.step()
        if step >= config.steps - tail:
            tail_loss += losses.detach().cpu() / tail
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
