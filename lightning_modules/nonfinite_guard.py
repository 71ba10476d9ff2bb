"""Skips optimiser steps whose loss is NaN/Inf and stops a run that keeps producing them."""

from __future__ import annotations

import torch


class NonFiniteLossError(RuntimeError):
    """Too many consecutive non-finite losses: the run cannot recover by skipping steps."""


class NonFiniteGuard:
    """``observe`` the loss in ``training_step``; ask ``should_step`` in ``optimizer_step``.

    The finiteness flag is reduced over ranks (min) by the caller-supplied ``reduce`` so every
    DDP rank skips the same steps (a one-rank skip would desynchronise the replicas).
    """

    def __init__(self, max_consecutive: int) -> None:
        self.max_consecutive = max_consecutive
        self.consecutive = 0
        self.skipped_total = 0
        self._finite = True

    def observe(self, loss: torch.Tensor, reduce=lambda flag: flag) -> bool:
        flag = reduce(torch.isfinite(loss.detach()).all().float())
        self._finite = bool(flag >= 1.0)
        return self._finite

    def should_step(self) -> bool:
        if self._finite:
            self.consecutive = 0
            return True
        self.consecutive += 1
        self.skipped_total += 1
        if self.consecutive >= self.max_consecutive:
            raise NonFiniteLossError(
                f"{self.consecutive} consecutive training steps had a NaN/Inf loss "
                f"({self.skipped_total} skipped in total). Lower optim.lr, check the data (quarantine.csv) "
                "or raise optim.max_consecutive_nonfinite."
            )
        return False
