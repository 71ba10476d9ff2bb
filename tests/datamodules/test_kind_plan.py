"""MixedBatchSampler with a kind plan: planned steps draw the planned kind, the others the weighted
draw, and the stream stays a function of (seed, step)."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from datamodules.samplers import MixedBatchSampler
from lightning_modules.objective_schedule import ObjectiveSchedule

SIZES, KINDS, WEIGHTS = [40, 15], ["paired", "image_only"], [1.0, 1.0]


def _kinds_of(sampler: MixedBatchSampler, step: int) -> set[str]:
    sources = (
        np.searchsorted(sampler.offsets, [i for i, _ in sampler.global_batch_at(step)], side="right") - 1
    )
    return {KINDS[s] for s in sources}


def test_schedule_plan_keeps_image_only_batches_on_mae_steps() -> None:
    schedule = ObjectiveSchedule(max_steps=1200, mae_enabled=True, start_fraction=0.75)
    sampler = MixedBatchSampler(SIZES, KINDS, WEIGHTS, batch_size=4, seed=0, kind_plan=schedule.batch_kind)
    kinds: Counter[str] = Counter()
    for step in range(1200):
        batch_kinds = _kinds_of(sampler, step)
        assert batch_kinds == {sampler.kind_at(step)}
        if not schedule.is_mae_step(step):
            assert batch_kinds == {"paired"}, step
        else:
            kinds[batch_kinds.pop()] += 1
    # MAE steps draw by weight: about half image-only (150 MAE steps, weights 1:1).
    assert sum(kinds.values()) == 150 and 50 < kinds["image_only"] < 100, kinds


def test_planned_stream_resumes_exactly() -> None:
    plan = ObjectiveSchedule(max_steps=1400, mae_enabled=True, start_fraction=0.5).batch_kind
    whole = list(MixedBatchSampler(SIZES, KINDS, WEIGHTS, 4, seed=3, steps_per_epoch=1300, kind_plan=plan))
    resumed = MixedBatchSampler(
        SIZES, KINDS, WEIGHTS, 4, seed=3, global_step=lambda: 1000, steps_per_epoch=300, kind_plan=plan
    )
    assert list(resumed) == whole[1000:1300]  # crosses the chunk boundary at 1024


def test_a_plan_the_mix_cannot_serve_fails_clearly() -> None:
    sampler = MixedBatchSampler([10], ["image_only"], [1.0], 2, kind_plan=lambda step: "paired")
    with pytest.raises(ValueError, match="needs a 'paired' batch"):
        sampler.global_batch_at(0)
