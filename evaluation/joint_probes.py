"""The probe grid trained with the frozen encoder in the loop (COLIPRI App. C.2, as the paper ran it).

When the probe tokens of every split do not fit ``evaluation.feature_cache_gb`` (about 12 MB a
volume at 160³ and 768 channels: 300 GB for CT-RATE's training split), the grid keeps its shape:
all 20 probes train on the same seeded stream of batches the cached path draws
(:func:`~evaluation.probes.probe_batch_indices`), but each batch's tokens come from one forward
of the frozen encoder (bf16 on a GPU when the trainer's precision is bf16) instead of a
memory-mapped cache. The tokens are rounded to the cache's fp16 as the cached path stores them,
so both paths train on the same numbers and select the same probe. Validation and test
predictions take one more encoder pass over their loaders.

Cost: ``steps × batch_size`` encoder forwards (12.5k × 16 = 200k in the paper), against one pass
per volume for the cached path; the log shows the rate and ETA every 10 % of the steps.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager
from typing import Any

import torch
from torch.utils.data import DataLoader

from evaluation.features import TOKEN_TORCH_DTYPE, VisionLanguageModel
from evaluation.probe_grid import ProbeGrid
from evaluation.probes import ProbeTraining, probe_batch_indices, train_probe_grid_on

log = logging.getLogger(__name__)

Autocast = Callable[[], AbstractContextManager]


def _index_loader(loader: Iterable[dict[str, Any]], index_batches: torch.Tensor) -> DataLoader:
    """``loader``'s dataset, collate function and workers, serving the rows of ``index_batches``."""
    if not isinstance(loader, DataLoader):
        raise TypeError(
            "Joint probe training draws its own batches from the training split: TrainSplit.loader must "
            f"be a torch DataLoader over an indexable dataset, not {type(loader).__name__}"
        )
    return DataLoader(
        loader.dataset,
        batch_sampler=index_batches.tolist(),
        collate_fn=loader.collate_fn,
        num_workers=loader.num_workers,
        pin_memory=loader.pin_memory,
        prefetch_factor=loader.prefetch_factor if loader.num_workers > 0 else None,
    )


def _encoded_tokens(
    model: VisionLanguageModel, images: torch.Tensor, device: torch.device | str, autocast: Autocast
) -> torch.Tensor:
    """float32 tokens (B, N, C) of one frozen encoder forward, through the cache's fp16."""
    with torch.no_grad(), autocast():
        tokens = model.image_encoder(images.to(device)).tokens
    return tokens.to(TOKEN_TORCH_DTYPE).float()


class _ProgressLog:
    """A log line every 10 % of ``total`` steps with the rate and the ETA (the log file has no tqdm)."""

    def __init__(self, what: str, total: int) -> None:
        self.what, self.total = what, total
        self.every = max(1, math.ceil(total / 10))
        self.start = time.perf_counter()

    def step(self, done: int) -> None:
        if done % self.every and done != self.total:
            return
        elapsed = time.perf_counter() - self.start
        rate = done / max(elapsed, 1e-9)
        log.info(
            "%s: %d/%d steps, %.2f steps/s, ETA %.0f s",
            self.what,
            done,
            self.total,
            rate,
            (self.total - done) / max(rate, 1e-9),
        )


def _training_batches(
    model: VisionLanguageModel,
    loader: Iterable[dict[str, Any]],
    volumes: int,
    config: ProbeTraining,
    device: torch.device | str,
    autocast: Autocast,
) -> Iterator[tuple[dict[str, torch.Tensor], torch.Tensor]]:
    index_batches = probe_batch_indices(volumes, config)
    progress = _ProgressLog("Joint probe training (encoder in the loop)", config.steps)
    for step, batch in enumerate(_index_loader(loader, index_batches)):
        if not torch.equal(batch["index"], index_batches[step]):
            raise ValueError(
                "The training dataset's 'index' field does not match the requested rows: joint probes need "
                "a dataset whose item i carries index i"
            )
        yield {"tokens": _encoded_tokens(model, batch["image"], device, autocast)}, batch["labels"].float()
        progress.step(step + 1)


def train_probe_grid_jointly(
    grid: ProbeGrid,
    model: VisionLanguageModel,
    loader: Iterable[dict[str, Any]],
    volumes: int,
    config: ProbeTraining,
    device: torch.device | str = "cpu",
    autocast: Autocast = contextlib.nullcontext,
    progress: bool = True,
) -> torch.Tensor:
    """Train every probe of ``grid`` in place on ``config.steps`` batches of ``loader``'s dataset
    (``volumes`` rows), encoded by ``model``'s frozen image encoder per batch; returns each probe's
    mean loss over the last 10 % of the steps, (P,)."""
    batches = _training_batches(model, loader, volumes, config, device, autocast)
    return train_probe_grid_on(
        grid, batches, config.steps, device, progress, description="probes (encoder in the loop)"
    )


@torch.no_grad()
def predict_probe_grid_jointly(
    grid: ProbeGrid,
    model: VisionLanguageModel,
    loader: Iterable[dict[str, Any]],
    volumes: int,
    device: torch.device | str = "cpu",
    autocast: Autocast = contextlib.nullcontext,
) -> torch.Tensor:
    """(P, V, K) probabilities of every probe for every volume of ``loader`` (one encoder pass;
    rows placed by ``batch["index"]``, repeats of padded shards ignored)."""
    grid.to(device).eval()
    probabilities: torch.Tensor | None = None
    seen = torch.zeros(volumes, dtype=torch.bool)
    for batch in loader:
        fresh = ~seen[batch["index"]]
        if not bool(fresh.any()):
            continue
        rows = batch["index"][fresh]
        tokens = _encoded_tokens(model, batch["image"][fresh], device, autocast)
        batch_probabilities = grid({"tokens": tokens}).sigmoid().cpu()
        if probabilities is None:
            probes, _, labels = batch_probabilities.shape
            probabilities = torch.full((probes, volumes, labels), math.nan)
        probabilities[:, rows] = batch_probabilities
        seen[rows] = True
    if probabilities is None or not bool(seen.all()):
        missing = (~seen).nonzero().flatten().tolist()[:10]
        raise ValueError(f"Joint probe prediction saw no batch for volume indices {missing} (of {volumes})")
    return probabilities
