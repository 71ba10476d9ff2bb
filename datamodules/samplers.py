"""Rank-aware samplers whose output depends only on (seed, step, rank, world size).

Training draws from one endless, seeded stream: epoch ``k`` of the stream is
``permutation(seed, k)`` cut into global batches of ``batch_size * world`` (the tail that does
not fill one is dropped); rank ``r`` takes the ``r``-th block of ``batch_size`` of every global
batch. So a DDP step on W ranks sees exactly the samples of one single-process step with
batch ``W * batch_size``. Each ``__iter__`` starts at the stream position of the trainer's
current global step (one stream step per micro-batch: optimiser steps x gradient accumulation), so
a run resumed from a mid-epoch checkpoint sees exactly the batches an uninterrupted run would have,
whatever Lightning's epoch bookkeeping does. Samples are
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
                "lower data.global_batch_size (or data.batch_size, per device)"
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


class MixedBatchSampler(Sampler[list[tuple[int, int]]]):
    """Batches mixed from several sources with weights; each batch holds one ``kind`` only.

    Step ``s`` of the stream draws its kind with probability proportional to the summed weights of
    the sources of that kind, then the source of each of its ``batch_size * world`` samples among
    the sources of that kind by weight, so sources appear in proportion to their weights. Within a
    source, samples come from that source's own endless stream of seeded permutations (every volume
    once per source epoch). Rank ``r`` takes the ``r``-th block of each global batch, as
    :class:`TrainSampler` does. The draws are made in chunks of :attr:`CHUNK` steps, each seeded
    from ``(seed, chunk)``, so the whole stream (and each source's position in its own stream) is a
    function of ``(seed, global_step)``: a resumed run continues exactly where it left off.

    ``kind_plan(step)`` (optional, a pure function of the step) fixes the kind of a step instead of
    the weighted draw where it returns a kind name (``None``: the draw). An objective schedule uses
    it to keep image-only batches away from vision-language steps.

    Yields lists of ``(global_index, source_epoch)``; ``global_index`` counts through the sources
    in order (``offsets``).
    """

    CHUNK = 512

    def __init__(
        self,
        sizes: list[int],
        kinds: list[str],
        weights: list[float],
        batch_size: int,
        seed: int = 0,
        global_step: Callable[[], int] = lambda: 0,
        steps_per_epoch: int | None = None,
        kind_plan: Callable[[int], str | None] | None = None,
    ) -> None:
        if not (len(sizes) == len(kinds) == len(weights)) or not sizes:
            raise ValueError("one size, kind and weight per source")
        if any(n <= 0 for n in sizes):
            raise ValueError(f"every mixed source needs training samples, got sizes {sizes}")
        if any(not w > 0 for w in weights):
            raise ValueError(f"source weights must be positive, got {weights}")
        self.sizes = [int(n) for n in sizes]
        self.kinds = list(kinds)
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.global_step = global_step
        self.offsets = np.concatenate([[0], np.cumsum(self.sizes)[:-1]]).astype(np.int64)
        self.kind_names = list(dict.fromkeys(kinds))
        self.kind_plan = kind_plan
        w = np.asarray(weights, dtype=np.float64)
        self.kind_p = np.array([w[[k == name for k in kinds]].sum() for name in self.kind_names]) / w.sum()
        self.members = [np.flatnonzero([k == name for k in kinds]) for name in self.kind_names]
        self.member_p = [w[m] / w[m].sum() for m in self.members]
        _, world = _rank_and_world()
        self.global_batch = self.batch_size * world
        self.steps_per_epoch = steps_per_epoch or max(1, sum(self.sizes) // self.global_batch)
        self._counts: dict[int, np.ndarray] = {0: np.zeros(len(self.sizes), np.int64)}
        self._rows: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
        self._permutations: dict[tuple[int, int], np.ndarray] = {}

    def _draw(self, chunk: int) -> tuple[np.ndarray, np.ndarray]:
        """(kind per step, source per sample) of one chunk: (CHUNK,), (CHUNK, global_batch)."""
        rng = np.random.default_rng([self.seed, 0x6D6978, chunk])
        kinds = rng.choice(len(self.kind_names), size=self.CHUNK, p=self.kind_p)
        if self.kind_plan is not None:
            for row in range(self.CHUNK):
                planned = self.kind_plan(chunk * self.CHUNK + row)
                if planned is not None:
                    if planned not in self.kind_names:
                        raise ValueError(
                            f"step {chunk * self.CHUNK + row} needs a {planned!r} batch, but the mix has "
                            f"only {', '.join(self.kind_names)} sources"
                        )
                    kinds[row] = self.kind_names.index(planned)
        sources = np.empty((self.CHUNK, self.global_batch), dtype=np.int64)
        for k, (members, p) in enumerate(zip(self.members, self.member_p, strict=True)):
            draws = rng.choice(members, size=(self.CHUNK, self.global_batch), p=p)
            sources[kinds == k] = draws[kinds == k]
        return kinds, sources

    def _counts_before(self, chunk: int) -> np.ndarray:
        """How many samples each source gave in chunks ``0 .. chunk - 1`` (memoised, iterative)."""
        known = max((c for c in self._counts if c <= chunk), default=0)
        counts = self._counts.get(known, np.zeros(len(self.sizes), np.int64))
        for c in range(known, chunk):
            counts = counts + np.bincount(self._draw(c)[1].reshape(-1), minlength=len(self.sizes))
            self._counts[c + 1] = counts
        return counts

    def _chunk(self, chunk: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(kinds, sources, ordinal of each sample in its source's own stream) of one chunk."""
        if chunk not in self._rows:
            before = self._counts_before(chunk)
            kinds, sources = self._draw(chunk)
            flat = sources.reshape(-1)
            ordinals = np.empty_like(flat)
            for j in range(len(self.sizes)):
                where = np.flatnonzero(flat == j)
                ordinals[where] = before[j] + np.arange(where.size)
            self._counts[chunk + 1] = before + np.bincount(flat, minlength=len(self.sizes))
            if len(self._rows) >= 2:
                self._rows.pop(min(self._rows))
            self._rows[chunk] = (kinds, sources, ordinals.reshape(sources.shape))
        return self._rows[chunk]

    def _local(self, source: int, ordinal: int) -> tuple[int, int]:
        epoch, position = divmod(int(ordinal), self.sizes[source])
        key = (source, epoch)
        if key not in self._permutations:
            for old in [k for k in self._permutations if k[0] == source and k[1] < epoch - 1]:
                del self._permutations[old]
            rng = np.random.default_rng([self.seed, 0x737263, source, epoch])
            self._permutations[key] = rng.permutation(self.sizes[source])
        return int(self._permutations[key][position]), epoch

    def global_batch_at(self, step: int) -> list[tuple[int, int]]:
        """All ``batch_size * world`` samples of stream step ``step`` (before rank sharding)."""
        chunk, row = divmod(int(step), self.CHUNK)
        _, sources, ordinals = self._chunk(chunk)
        out = []
        for source, ordinal in zip(sources[row].tolist(), ordinals[row].tolist(), strict=True):
            local, epoch = self._local(source, ordinal)
            out.append((int(self.offsets[source]) + local, epoch))
        return out

    def kind_at(self, step: int) -> str:
        chunk, row = divmod(int(step), self.CHUNK)
        return self.kind_names[int(self._chunk(chunk)[0][row])]

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        rank, _ = _rank_and_world()
        start = self.global_step()
        for step in range(start, start + self.steps_per_epoch):
            batch = self.global_batch_at(step)
            yield batch[rank * self.batch_size : (rank + 1) * self.batch_size]

    def __len__(self) -> int:
        return self.steps_per_epoch
