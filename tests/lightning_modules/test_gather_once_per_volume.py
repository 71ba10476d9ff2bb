"""Evaluation values are kept once per volume: DDP's padded repeats are dropped, order follows index."""

from __future__ import annotations

from types import SimpleNamespace

import torch

from lightning_modules.base import ObjectiveModule


def test_repeated_indices_keep_their_first_copy() -> None:
    single_process = SimpleNamespace(trainer=SimpleNamespace(world_size=1))
    collected = {
        "index": torch.tensor([2, 0, 1, 2, 0]),  # 2 and 0 repeated, as a padded shard would
        "value": torch.tensor([[20.0], [0.0], [10.0], [21.0], [1.0]]),
    }
    once = ObjectiveModule.gather_once_per_volume(single_process, collected)  # type: ignore[arg-type]
    assert once["index"].tolist() == [0, 1, 2]
    assert once["value"].flatten().tolist() == [0.0, 10.0, 20.0]
