"""What every DataModule's batches share: stacking sample dicts, and seeded DataLoaders."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset, Sampler


def stack_samples(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Sample dicts -> a batch dict: tensors stacked; bools, ints and floats become bool, long
    and float32 tensors; anything else (ids, text, section dicts) stays a list."""
    batch: dict[str, Any] = {}
    for key in samples[0]:
        values = [s[key] for s in samples]
        if isinstance(values[0], torch.Tensor):
            batch[key] = torch.stack(values)
        elif isinstance(values[0], bool):  # before int: bool is an int subclass
            batch[key] = torch.tensor(values, dtype=torch.bool)
        elif isinstance(values[0], int):
            batch[key] = torch.tensor(values, dtype=torch.long)
        elif isinstance(values[0], float):
            batch[key] = torch.tensor(values, dtype=torch.float32)
        else:
            batch[key] = values
    return batch


def seeded_loader(
    dataset: Dataset,
    collate_fn: Callable[[list[dict[str, Any]]], dict[str, Any]],
    num_workers: int,
    seed: int,
    *,
    sampler: Sampler | None = None,
    batch_size: int | None = None,
    batch_sampler: BatchSampler | Sampler | None = None,
) -> DataLoader:
    """A DataLoader with either ``sampler`` + ``batch_size`` or a ``batch_sampler``."""
    return DataLoader(
        dataset,
        batch_size=batch_size if batch_sampler is None else 1,
        sampler=sampler,
        batch_sampler=batch_sampler,
        num_workers=num_workers,
        collate_fn=collate_fn,
        pin_memory=torch.cuda.is_available(),
        # Workers start once (a worker start costs seconds); the samplers carry the epoch.
        persistent_workers=num_workers > 0,
        prefetch_factor=2 if num_workers > 0 else None,
        # Worker seeds come from this generator, not the global torch RNG, so starting a loader
        # (e.g. on resume) leaves the model's dropout randomness untouched.
        generator=torch.Generator().manual_seed(seed),
    )
