"""Per-volume tokens of a frozen image encoder, kept in host memory within a byte budget.

A frozen encoder in eval mode maps the same crop to the same tokens, so once a volume's crop is
the same at every epoch (report generation's ``reportgen.token_cache_mb``: centre crops, no
augmentation), its tokens need one encoder pass for the whole run. They are stored in fp16 on the
host; a miss returns the same fp16-rounded values a later hit will, so every epoch (and a resumed
run, which starts with an empty cache) trains on identical inputs.

Entries are never evicted: an epoch visits every volume once, so least-recently-used eviction
would throw away each entry before its next use. When the budget is full, further volumes are
encoded at every visit instead (``uncached`` counts those encodings; the owner warns once).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from lightning_modules.nets.bounded_cache import BoundedCache, tensor_bytes


class VolumeTokenCache(BoundedCache):
    """fp16 tokens per volume id, at most ``max_mb`` MB; ``hits``, ``misses`` (first encodings)
    and ``uncached`` (encodings of volumes beyond the budget) count volumes; ``hit_rate`` is over
    all three."""

    def __init__(self, max_mb: float) -> None:
        super().__init__(max_mb)
        self.uncached = 0
        self._entries: dict[str, torch.Tensor] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def _lookups(self) -> int:
        return super()._lookups() + self.uncached

    @property
    def full(self) -> bool:
        return self.uncached > 0

    def tokens(self, encoder: nn.Module, images: torch.Tensor, ids: Sequence[str]) -> torch.Tensor:
        """(B, N, C) tokens of ``images`` (one volume each, named by ``ids``) on their device, in
        float32: cached rows as stored, the others from one encoder pass over the missing volumes.
        Call under ``no_grad`` with the encoder in eval mode."""
        rows: list[torch.Tensor | None] = [self._entries.get(str(i)) for i in ids]
        missing = [i for i, row in enumerate(rows) if row is None]
        self.hits += len(rows) - len(missing)
        if missing:
            encoded = encoder(images[missing]).tokens.half().cpu()
            for position, row in zip(missing, encoded, strict=True):
                rows[position] = row
                self._store(str(ids[position]), row)
        return torch.stack(rows).to(images.device, torch.float32, non_blocking=True)

    def _store(self, volume: str, row: torch.Tensor) -> None:
        if volume in self._entries:  # the same volume twice in one batch (DDP pads with repeats)
            return
        size = tensor_bytes(row)
        if self.bytes + size > self.max_bytes:
            self.uncached += 1
            return
        self.misses += 1
        self._entries[volume] = row.clone()  # its own storage, not a view of the batch's
        self.bytes += size
