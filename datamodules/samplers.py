"""Rank-aware samplers whose output depends only on (seed, step, rank, world size).

Training draws from one endless, seeded stream: epoch ``k`` of the stream is
``permutation(seed, k)`` cut into global batches of ``batch_size * world`` (the tail that does
not fill one is dropped); rank ``r`` takes the ``r``-th block of ``batch_size`` of every global
batch. So a DDP step on W ranks sees exactly the samples of one single-process step with
batch ``W * batch_size``. Each ``__iter__`` starts at the stream position of the trainer's
current global step, so a run resumed from a mid-epoch checkpoint sees exactly the batches an
uninterrupted run would have, whatever Lightning's epoch bookkeeping does. Samples are
``(index, stream_epoch)`` pairs so the dataset can make each sample's randomness a pure function
of them.

We shard across ranks here ourselves (the Trainer runs with ``use_distributed_sampler=False``):
Lightning's DistributedSamplerWrapper would materialise and re-shuffle our stream.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
import torch.distributed as dist
from torch.utils.data import Sampler


def _rank_and_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class TrainSampler(Sampler[tuple[int, int]]):
    """Yields one epoch's worth of this rank's batches from the stream, starting at
    ``global_step()``."""

    def __init__(
        self, size: int, batch_size: int, seed: int = 0, global_step: Callable[[], int] = lambda: 0
    ) -> None:
        self.size = size
        self.batch_size = batch_size
        self.seed = seed
        self.global_step = global_step
        _, world = _rank_and_world()
        self.steps_per_epoch = size // (batch_size * world)
        if self.steps_per_epoch == 0:
            raise ValueError(
                f"{size} training samples cannot fill one batch of {batch_size} on each of {world} ranks; "
                "lower data.batch_size"
            )

    def _rank_batches(self, epoch: int) -> np.ndarray:
        """(steps_per_epoch, batch_size) indices of this rank in stream epoch ``epoch``."""
        rank, world = _rank_and_world()
        order = np.random.default_rng([self.seed, epoch]).permutation(self.size)
        global_batches = order[: self.steps_per_epoch * world * self.batch_size]
        return global_batches.reshape(self.steps_per_epoch, world, self.batch_size)[:, rank]

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch, step = divmod(self.global_step(), self.steps_per_epoch)
        samples: list[tuple[int, int]] = []
        while len(samples) < len(self):
            for batch in self._rank_batches(epoch)[step:]:
                samples += [(int(i), epoch) for i in batch]
            epoch, step = epoch + 1, 0
        return iter(samples[: len(self)])

    def __len__(self) -> int:
        return self.steps_per_epoch * self.batch_size


class EvalSampler(Sampler[int]):
    """Every index once, in order, sharded round-robin across ranks. Shards are padded with
    repeats to equal length (collective gathers need it); consumers de-duplicate by index."""

    def __init__(self, size: int) -> None:
        self.size = size

    def __iter__(self) -> Iterator[int]:
        rank, world = _rank_and_world()
        per_rank = -(-self.size // world)
        padded = [i % self.size for i in range(per_rank * world)]
        return iter(padded[rank::world])

    def __len__(self) -> int:
        return -(-self.size // _rank_and_world()[1])
