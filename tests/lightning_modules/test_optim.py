import math
import pickle

import pytest
import torch
from torch import nn

from lightning_modules.nets.clip_loss import ClipLoss
from lightning_modules.optim import (
    WarmupDecay,
    build_optimizer_and_scheduler,
    param_groups,
    param_groups_with_lrs,
)


class Toy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(4, 3)
        self.norm = nn.LayerNorm(3)
        self.pos_embed = nn.Parameter(torch.zeros(1, 5, 3))
        self.loss = ClipLoss("sigmoid")
        self.frozen = nn.Linear(3, 3)
        self.frozen.requires_grad_(False)


def _ids(params) -> set[int]:
    return {id(p) for p in params}


def test_param_groups_split():
    model = Toy()
    groups = param_groups(model, weight_decay=0.05)
    assert [g["weight_decay"] for g in groups] == [0.05, 0.0]
    decay, no_decay = (_ids(g["params"]) for g in groups)
    assert decay == {id(model.linear.weight)}
    assert no_decay == _ids(
        [
            model.linear.bias,
            model.norm.weight,
            model.norm.bias,
            model.pos_embed,
            model.loss.logit_scale,
            model.loss.logit_bias,
        ]
    )
    assert not (decay | no_decay) & _ids(model.frozen.parameters())


def test_param_groups_with_lrs_split_a_submodule_off_at_its_own_lr():
    model = Toy()
    groups = param_groups_with_lrs(model, 0.05, 1e-3, [(model.norm, 2e-2)])
    got = {(g["weight_decay"], g["lr"]): _ids(g["params"]) for g in groups}
    assert got == {
        (0.05, 1e-3): {id(model.linear.weight)},
        (0.0, 1e-3): _ids(
            [model.linear.bias, model.pos_embed, model.loss.logit_scale, model.loss.logit_bias]
        ),
        (0.0, 2e-2): _ids(model.norm.parameters()),  # no decoupled decay group: norms never decay
    }
    # the optimiser and schedule keep each group's own lr
    config = build_optimizer_and_scheduler(
        model, lr=1e-3, weight_decay=0.05, warmup_steps=2, total_steps=10, groups=groups
    )
    assert sorted(g["lr"] for g in config["optimizer"].param_groups) == pytest.approx([5e-4, 5e-4, 1e-2])


def _lrs(schedule: str, steps: list[int], **kwargs) -> list[float]:
    model = nn.Linear(2, 2)
    config = build_optimizer_and_scheduler(
        model, lr=1e-3, weight_decay=0.05, warmup_steps=10, total_steps=110, schedule=schedule, **kwargs
    )
    optimizer, scheduler = config["optimizer"], config["lr_scheduler"]["scheduler"]
    assert config["lr_scheduler"]["interval"] == "step"
    lrs = {}
    for step in range(max(steps) + 1):
        lrs[step] = optimizer.param_groups[0]["lr"]
        optimizer.step()
        scheduler.step()
    return [lrs[s] for s in steps]


# Steps: 0 (first), 4 (mid warm-up), 9 (last warm-up step), 10 (decay start), 60 (half-way), 109 (last).
STEPS = [0, 4, 9, 10, 60, 109]


def test_poly_schedule_values():
    # warm-up (s+1)/10; then (1 - (s-10)/100)^0.9
    expected = [1e-4, 5e-4, 1e-3, 1e-3, 1e-3 * 0.5**0.9, 1e-3 * 0.01**0.9]
    assert _lrs("poly", STEPS, poly_power=0.9) == pytest.approx(expected, rel=1e-9)


def test_cosine_schedule_values():
    # 0.5 * (1 + cos(pi t)), t = (s-10)/100: 1 at t=0, 0.5 at t=0.5, 0.5*(1+cos(0.99 pi)) at s=109
    expected = [1e-4, 5e-4, 1e-3, 1e-3, 0.5e-3, 1e-3 * 0.5 * (1 + math.cos(0.99 * math.pi))]
    assert _lrs("cosine", STEPS) == pytest.approx(expected, rel=1e-9)


def test_linear_and_min_lr_ratio():
    # 0.1 + 0.9 * (1 - t)
    expected = [1e-4, 5e-4, 1e-3, 1e-3, 1e-3 * (0.1 + 0.9 * 0.5), 1e-3 * (0.1 + 0.9 * 0.01)]
    assert _lrs("linear", STEPS, min_lr_ratio=0.1) == pytest.approx(expected, rel=1e-9)
    assert WarmupDecay(10, 110, "poly", min_lr_ratio=0.1)(500) == pytest.approx(0.1)  # clamps past the end


def test_errors_and_state():
    with pytest.raises(ValueError, match="greater than warmup_steps"):
        WarmupDecay(warmup_steps=100, total_steps=100)
    with pytest.raises(ValueError, match="Unknown schedule"):
        WarmupDecay(1, 10, "step")
    with pytest.raises(ValueError, match="No trainable parameters"):
        build_optimizer_and_scheduler(
            nn.Linear(2, 2).requires_grad_(False), lr=1, weight_decay=0, warmup_steps=0, total_steps=1
        )
    config = build_optimizer_and_scheduler(
        Toy(),
        name="sgd",
        lr=0.1,
        weight_decay=0.0,
        warmup_steps=0,
        total_steps=5,
        schedule="cosine",
        momentum=0.95,
    )
    assert isinstance(config["optimizer"], torch.optim.SGD)
    assert config["optimizer"].param_groups[0]["momentum"] == 0.95
    state = config["lr_scheduler"]["scheduler"].state_dict()
    assert state["lr_lambdas"][0]["schedule"] == "cosine"
    pickle.dumps(state)
