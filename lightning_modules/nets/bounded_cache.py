"""What the frozen-model caches share (frozen_text_cache.py, frozen_token_cache.py): a byte budget,
the bytes their entries hold, and hit / miss counts."""

from __future__ import annotations

import torch


def tensor_bytes(tensor: torch.Tensor) -> int:
    return tensor.numel() * tensor.element_size()


class BoundedCache:
    """At most ``max_mb`` MB of entries (``bytes`` held); ``hits`` and ``misses`` count lookups."""

    def __init__(self, max_mb: float) -> None:
        if max_mb <= 0:
            raise ValueError(f"max_mb must be positive, got {max_mb}; leave the cache out to turn it off")
        self.max_bytes = int(max_mb * 2**20)
        self.bytes = 0
        self.hits = 0
        self.misses = 0

    def _lookups(self) -> int:
        return self.hits + self.misses

    @property
    def hit_rate(self) -> float:
        looked_up = self._lookups()
        return self.hits / looked_up if looked_up else 0.0
