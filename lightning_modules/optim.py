"""Shared optimiser and learning-rate schedule for every LightningModule's ``configure_optimizers``.

Schedule (a multiplier of each param group's base lr, evaluated per optimiser step ``s``):

- warm-up, ``s < warmup_steps``: ``(s + 1) / warmup_steps`` (lr/W at the first step, lr at step W-1);
- then with ``t = (s - warmup_steps) / (total_steps - warmup_steps)`` clipped to [0, 1] and
  ``m = min_lr_ratio``: ``m + (1 - m) * decay(t)`` where decay is
  poly ``(1 - t) ** poly_power`` (nnU-Net PolyLR), cosine ``0.5 (1 + cos(pi t))``,
  linear ``1 - t`` or constant ``1``. Past ``total_steps`` the multiplier stays at ``m``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

NO_DECAY_NAME_PARTS: tuple[str, ...] = (
    "logit_scale",
    "logit_bias",
    "temperature",
    "pos_embed",
    "mask_token",
    "register_tokens",
)
SCHEDULES = ("poly", "cosine", "linear", "constant")
OPTIMIZERS = ("adamw", "adam", "sgd")


def param_groups(
    module: nn.Module, weight_decay: float, extra_no_decay: Iterable[str] = ()
) -> list[dict[str, Any]]:
    """Split trainable parameters into a decayed group and a no-decay group.

    No weight decay for parameters with ndim <= 1 (norms, biases, scalars) and for names containing
    any of ``NO_DECAY_NAME_PARTS`` or ``extra_no_decay``. Frozen parameters are left out; empty
    groups are dropped. Groups carry ``params`` and ``weight_decay`` only.
    """
    no_decay_parts = (*NO_DECAY_NAME_PARTS, *extra_no_decay)
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for name, param in module.named_parameters():
        if not param.requires_grad:
            continue
        if param.ndim <= 1 or any(part in name for part in no_decay_parts):
            no_decay.append(param)
        else:
            decay.append(param)
    groups = [
        {"params": decay, "weight_decay": float(weight_decay)},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return [g for g in groups if g["params"]]


def param_groups_with_lrs(
    module: nn.Module, weight_decay: float, lr: float, own_lrs: Iterable[tuple[nn.Module, float]]
) -> list[dict[str, Any]]:
    """:func:`param_groups`' decay / no-decay split at ``lr``, with the parameters of each
    ``(submodule, lr)`` of ``own_lrs`` split off into groups at that lr (the first match wins).
    Each group's lr still follows the schedule's multiplier."""
    owners = [({id(p) for p in sub.parameters()}, float(sub_lr)) for sub, sub_lr in own_lrs]

    def lr_of(param: nn.Parameter) -> float:
        return next((sub_lr for ids, sub_lr in owners if id(param) in ids), float(lr))

    groups = []
    for group in param_groups(module, weight_decay):
        by_lr: dict[float, list[nn.Parameter]] = {}
        for param in group["params"]:
            by_lr.setdefault(lr_of(param), []).append(param)
        groups += [{**group, "params": params, "lr": group_lr} for group_lr, params in by_lr.items()]
    return groups


@dataclass
class WarmupDecay:
    """Picklable lr multiplier for ``LambdaLR`` (its fields are saved in the scheduler state)."""

    warmup_steps: int
    total_steps: int
    schedule: str = "poly"
    poly_power: float = 1.0
    min_lr_ratio: float = 0.0

    def __post_init__(self) -> None:
        if self.schedule not in SCHEDULES:
            raise ValueError(f"Unknown schedule {self.schedule!r}; valid: {', '.join(SCHEDULES)}")
        if self.warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {self.warmup_steps}")
        if self.total_steps <= self.warmup_steps:
            raise ValueError(
                f"total_steps ({self.total_steps}) must be greater than warmup_steps ({self.warmup_steps}): "
                f"nothing would be left for the {self.schedule} decay"
            )
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ValueError(f"min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        t = min(max((step - self.warmup_steps) / (self.total_steps - self.warmup_steps), 0.0), 1.0)
        if self.schedule == "poly":
            decay = (1.0 - t) ** self.poly_power
        elif self.schedule == "cosine":
            decay = 0.5 * (1.0 + math.cos(math.pi * t))
        elif self.schedule == "linear":
            decay = 1.0 - t
        else:
            decay = 1.0
        return self.min_lr_ratio + (1.0 - self.min_lr_ratio) * decay


def build_optimizer_and_scheduler(
    module: nn.Module,
    *,
    name: Literal["adamw", "adam", "sgd"] = "adamw",
    lr: float,
    weight_decay: float,
    betas: tuple[float, float] = (0.9, 0.999),
    warmup_steps: int,
    total_steps: int,
    schedule: Literal["poly", "cosine", "linear", "constant"] = "poly",
    poly_power: float = 1.0,
    min_lr_ratio: float = 0.0,
    momentum: float = 0.9,
    eps: float = 1e-8,
    groups: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Optimiser over ``param_groups(module, weight_decay)`` (or the given ``groups``) and a per-step
    warm-up + decay ``LambdaLR``, in the dict form Lightning's ``configure_optimizers`` returns.

    ``groups`` may set their own ``lr``/``weight_decay`` (e.g. one probe per learning rate); the
    schedule multiplies each group's own lr. ``momentum`` is used by SGD only, ``betas``/``eps`` by
    Adam(W).
    """
    if name not in OPTIMIZERS:
        raise ValueError(f"Unknown optimizer {name!r}; valid: {', '.join(OPTIMIZERS)}")
    lr_lambda = WarmupDecay(
        warmup_steps=int(warmup_steps),
        total_steps=int(total_steps),
        schedule=schedule,
        poly_power=float(poly_power),
        min_lr_ratio=float(min_lr_ratio),
    )
    if groups is None:
        groups = param_groups(module, weight_decay)
    groups = [{**g, "params": list(g["params"])} for g in groups]
    if not any(g["params"] for g in groups):
        raise ValueError(f"No trainable parameters in {type(module).__name__}")

    optimizer: torch.optim.Optimizer
    if name == "adamw":
        optimizer = torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)
    elif name == "adam":
        optimizer = torch.optim.Adam(groups, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)
    else:
        optimizer = torch.optim.SGD(groups, lr=lr, momentum=momentum, weight_decay=weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda)
    return {
        "optimizer": optimizer,
        "lr_scheduler": {"scheduler": scheduler, "interval": "step", "frequency": 1},
    }
