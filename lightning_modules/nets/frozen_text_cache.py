"""A memory-bounded cache of a frozen text backbone's hidden states, keyed by the exact token ids.

A frozen backbone in eval mode is a deterministic function of its input, so caching its output
changes nothing, provided the input is the whole key. Each sequence is therefore encoded alone at
its own length (no padding, every position attended): its states depend on its token ids only,
not on which reports share its batch or how far the batch is padded. A hit returns bit for bit what
a miss computes, so a resumed run, which starts with an empty cache, sees the same values as an
uninterrupted one. Against the padded batch forward the states differ in the last float bits
(about 2e-6 for MiniLM), as any change of batch shape does.

Entries stay on the device and in the dtype the backbone produced (the autocast state is part of
the key) and are evicted least recently used first once their bytes exceed ``max_mb``. The owner
clears the cache when the backbone's weights, device or dtype change.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from lightning_modules.nets.bounded_cache import BoundedCache, tensor_bytes

# (token ids as bytes, device, autocast dtype or None)
CacheKey = tuple[bytes, str, torch.dtype | None]


def _autocast_dtype(device: torch.device) -> torch.dtype | None:
    if not torch.is_autocast_enabled(device.type):
        return None
    return torch.get_autocast_dtype(device.type)


def _valid_lengths(attention_mask: torch.Tensor) -> list[int] | None:
    """Per-row token counts when every row is right-padded (ones, then zeros); otherwise ``None``."""
    lengths = attention_mask.sum(dim=1)
    positions = torch.arange(attention_mask.shape[1], device=attention_mask.device)
    expected = (positions[None, :] < lengths[:, None]).to(attention_mask.dtype)
    if not torch.equal(attention_mask, expected):
        return None
    return [int(n) for n in lengths.tolist()]


@contextmanager
def one_cpu_thread(device: torch.device) -> Iterator[None]:
    """One intra-op thread for the single-sequence forwards on a CPU. A 200-token MiniLM forward is
    too small to split with profit once cores are shared: each op's barrier then waits for a
    descheduled thread. Measured here (8 reports of ~200 tokens, one at a time): idle, 2 threads
    0.30 s, 1 thread 0.55 s; at load 16-20 on the same 2 cores, 2 threads 48 s, 1 thread 9.6 s.
    A fixed count also keeps each sequence's states one pure function of its ids."""
    if device.type != "cpu":
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


class FrozenBackboneCache(BoundedCache):
    """LRU cache of ``backbone(ids).last_hidden_state`` per token sequence, at most ``max_mb`` MB.

    ``hits``, ``misses`` and ``evictions`` count sequences; ``bypassed`` counts batches that were
    not right-padded, which are encoded as a whole, uncached (no tokenizer of this repository pads
    left).
    """

    def __init__(self, max_mb: float) -> None:
        super().__init__(max_mb)
        self.evictions = 0
        self.bypassed = 0
        self._entries: OrderedDict[CacheKey, torch.Tensor] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def clear(self) -> None:
        """Drop every entry (the counters stay)."""
        self._entries.clear()
        self.bytes = 0

    def hidden_states(
        self, backbone: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor | None
    ) -> torch.Tensor:
        """(B, L, hidden) states: each row's valid positions from the cache or a forward of that row
        alone; padding positions are zero. Call under ``no_grad`` with the backbone in eval mode."""
        mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask
        lengths = _valid_lengths(mask)
        if not lengths:  # left padding (None) or an empty batch
            self.bypassed += 1
            return backbone(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        autocast = _autocast_dtype(input_ids.device)
        sequences = [ids[:length] for ids, length in zip(input_ids, lengths, strict=True)]
        keys = [(sequence.cpu().numpy().tobytes(), str(input_ids.device), autocast) for sequence in sequences]
        rows = [self._lookup(key) if key in self._entries else None for key in keys]
        if any(row is None for row in rows):
            with one_cpu_thread(input_ids.device):
                for i, row in enumerate(rows):
                    if row is None:
                        rows[i] = self._encode(backbone, sequences[i], keys[i])
        out = rows[0].new_zeros(input_ids.shape[0], input_ids.shape[1], rows[0].shape[-1])
        for i, (row, length) in enumerate(zip(rows, lengths, strict=True)):
            out[i, :length] = row
        return out

    def _lookup(self, key: CacheKey) -> torch.Tensor:
        self.hits += 1
        self._entries.move_to_end(key)
        return self._entries[key]

    def _encode(self, backbone: nn.Module, sequence: torch.Tensor, key: CacheKey) -> torch.Tensor:
        if key in self._entries:  # the same report twice in one batch
            return self._lookup(key)
        self.misses += 1
        ids = sequence[None]
        states = backbone(input_ids=ids, attention_mask=torch.ones_like(ids)).last_hidden_state[0]
        size = tensor_bytes(states)
        if size <= self.max_bytes:
            self._entries[key] = states
            self.bytes += size
            while self.bytes > self.max_bytes:
                _, evicted = self._entries.popitem(last=False)
                self.bytes -= tensor_bytes(evicted)
                self.evictions += 1
        return states
