"""The loader plumbing every DataModule shares: seeded DataLoaders, the training stream that
starts at the trainer's global step, and evaluation loaders that see every volume once."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import lightning as L
import torch
from omegaconf import DictConfig
from torch.utils.data import BatchSampler, DataLoader, Dataset, Sampler

from datamodules.samplers import EvalSampler, TrainSampler

Collate = Callable[[list[dict[str, Any]]], dict[str, Any]]


def seeded_loader(
    dataset: Dataset,
    collate_fn: Collate,
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


class SplitDataModule(L.LightningDataModule):
    """A DataModule over ``datasets`` by split (``train``, ``val``, ``test``), set up by the subclass.

    Training draws the seeded stream of :class:`TrainSampler` from the trainer's global step, so a
    resumed run sees the batches an uninterrupted one would; :meth:`loader` serves every volume of
    a split once (centre crop, no augmentation; shards padded under DDP, batches carry ``index``
    for de-duplication). Each split's collator comes from :meth:`collate_for`.
    """

    def __init__(self, data: DictConfig, seed: int = 0) -> None:
        super().__init__()
        self.data = data
        self.seed = seed
        self.datasets: dict[str, Dataset] = {}

    def collate_for(self, split: str, dataset: Dataset) -> Collate:
        raise NotImplementedError

    def _accumulation(self) -> int:
        return int(self.trainer.accumulate_grad_batches) if self.trainer is not None else 1

    def _global_step(self) -> int:
        """The stream position: micro-batches drawn so far (optimiser steps x accumulation)."""
        return self.trainer.global_step * self._accumulation() if self.trainer is not None else 0

    def _loader(
        self,
        dataset: Dataset,
        collate: Collate,
        sampler: Sampler | None = None,
        batch_sampler: BatchSampler | Sampler | None = None,
    ) -> DataLoader:
        """``sampler`` with batches of ``data.batch_size``, or a ``batch_sampler`` of whole batches."""
        return seeded_loader(
            dataset,
            collate,
            int(self.data.num_workers),
            self.seed,
            sampler=sampler,
            batch_size=int(self.data.batch_size) if batch_sampler is None else None,
            batch_sampler=batch_sampler,
        )

    def train_dataloader(self) -> DataLoader:
        dataset = self.datasets["train"]
        sampler = TrainSampler(len(dataset), int(self.data.batch_size), self.seed, self._global_step)
        return self._loader(dataset, self.collate_for("train", dataset), sampler)

    def loader(self, split: str) -> DataLoader:
        """An evaluation loader for ``val`` or ``test`` (or ``train``, in order): every volume
        once."""
        dataset = self.datasets[split]
        return self._loader(dataset, self.collate_for(split, dataset), EvalSampler(len(dataset)))

    def val_dataloader(self) -> DataLoader:
        return self.loader("val")

    def test_dataloader(self) -> DataLoader:
        return self.loader("test")
