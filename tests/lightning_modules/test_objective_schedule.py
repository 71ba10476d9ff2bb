"""The objective schedule: MAE switches on at the right step, alternates, asks the data layer for
the right batch kinds, and changes the learning rate of the real optimiser as configured."""

from __future__ import annotations

import io

import pytest
import torch
from omegaconf import OmegaConf

from lightning_modules.objective_schedule import ActiveObjectives, ObjectiveSchedule, with_objective_lr
from lightning_modules.optim import WarmupDecay, build_optimizer_and_scheduler

VL = ActiveObjectives(vision_language=True, mae=False)
MAE = ActiveObjectives(vision_language=False, mae=True)
BOTH = ActiveObjectives(vision_language=True, mae=True)


def test_late_inclusion_with_alternation() -> None:
    schedule = ObjectiveSchedule(max_steps=300, mae_enabled=True, start_fraction=0.75, alternate=True)
    assert schedule.mae_start == 225
    plan = [schedule.active(step, "paired") for step in range(300)]
    assert plan[:225] == [VL] * 225  # no MAE in the first 75 %
    assert plan[225:231] == [MAE, VL, MAE, VL, MAE, VL]  # then MAE first, alternating
    assert sum(p.mae for p in plan) == 38 and sum(p.vision_language for p in plan) == 225 + 37
    assert [schedule.batch_kind(s) for s in (0, 224, 225, 226, 299)] == [
        "paired",
        "paired",
        None,
        "paired",
        None,
    ]
    assert schedule.active(225, "image_only") == MAE
    with pytest.raises(ValueError, match="MAE is off"):
        schedule.active(224, "image_only")


def test_without_alternation_paired_batches_train_both() -> None:
    schedule = ObjectiveSchedule(max_steps=100, mae_enabled=True, start_fraction=0.5, alternate=False)
    assert [schedule.active(s, "paired") for s in (49, 50, 51)] == [VL, BOTH, BOTH]
    assert schedule.active(51, "image_only") == MAE
    assert [schedule.batch_kind(s) for s in (49, 50, 51)] == ["paired", None, None]


@pytest.mark.parametrize(("last", "start"), [(0.25, 750), (0.5, 500), (0.75, 250), (1.0, 0)])
def test_included_for_the_last_fraction(last: float, start: int) -> None:
    schedule = ObjectiveSchedule(max_steps=1000, mae_enabled=True, start_fraction=1 - last)
    assert schedule.mae_start == start
    assert not schedule.mae_on(start - 1) and schedule.mae_on(start) and schedule.is_mae_step(start)


def test_disabled_is_plain_vision_language() -> None:
    schedule = ObjectiveSchedule(max_steps=10)
    assert schedule.mae_start is None and not schedule.skips_parameters()
    assert all(schedule.active(s, "paired") == VL and schedule.batch_kind(s) == "paired" for s in range(10))
    assert all(schedule.lr_factor(s) == 1.0 for s in range(10))


def test_from_config() -> None:
    cfg = OmegaConf.create(
        {
            "trainer": {"max_steps": 40},
            "objectives": {
                "mae": {
                    "enabled": True,
                    "start_fraction": 0.5,
                    "alternate": False,
                    "lr_factor_on_switch": 0.25,
                }
            },
        }
    )
    assert ObjectiveSchedule.from_config(cfg) == ObjectiveSchedule(40, True, 0.5, False, 0.25)
    cfg.objectives.mae.enabled = False
    assert not ObjectiveSchedule.from_config(cfg).mae_enabled
    with pytest.raises(ValueError, match="start_fraction"):
        ObjectiveSchedule(10, True, start_fraction=1.5)


def _lrs(schedule: ObjectiveSchedule, steps: int) -> list[float]:
    """The lr the real AdamW uses at each step, through the shared optimiser builder."""
    model = torch.nn.Linear(3, 2)
    config = build_optimizer_and_scheduler(
        model, lr=1e-3, weight_decay=0.05, warmup_steps=4, total_steps=steps, schedule="poly"
    )
    config = with_objective_lr(config, schedule)
    optimizer, scheduler = config["optimizer"], config["lr_scheduler"]["scheduler"]
    lrs = []
    for _ in range(steps):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return lrs


def test_lr_is_halved_from_the_switch_on() -> None:
    steps = 20
    base = WarmupDecay(warmup_steps=4, total_steps=steps, schedule="poly")
    halved = _lrs(
        ObjectiveSchedule(steps, mae_enabled=True, start_fraction=0.75, lr_factor_on_switch=0.5), steps
    )
    for step, lr in enumerate(halved):
        factor = 0.5 if step >= 15 else 1.0
        assert lr == pytest.approx(1e-3 * base(step) * factor), step
    assert halved[15] / halved[14] == pytest.approx(0.5 * base(15) / base(14))
    # MAE from the first step: the lr of step 0 is already changed.
    assert _lrs(ObjectiveSchedule(steps, mae_enabled=True, start_fraction=0.0), steps)[0] == pytest.approx(
        0.5 * 1e-3 * base(0)
    )
    assert _lrs(ObjectiveSchedule(steps), steps) == pytest.approx([1e-3 * base(s) for s in range(steps)])


def test_lr_scheduler_state_loads_without_unpickling_our_classes() -> None:
    model = torch.nn.Linear(3, 2)
    config = build_optimizer_and_scheduler(model, lr=1e-3, weight_decay=0.0, warmup_steps=2, total_steps=10)
    scheduler = with_objective_lr(config, ObjectiveSchedule(10, mae_enabled=True))["lr_scheduler"][
        "scheduler"
    ]
    buffer = io.BytesIO()
    torch.save(scheduler.state_dict(), buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)
    assert state["lr_lambdas"][0]["objectives"]["start_fraction"] == 0.75
