"""When each objective of a ColipriModule trains: the one place that decides it (COLIPRI Sec. 4.3).

With ``objectives.mae.enabled`` the vision-only MAE objective joins the vision-language objectives
(CLIP, plus RRG when enabled):

- **late inclusion**: MAE is off before step ``mae_start = round(start_fraction * max_steps)`` and
  on from there to the end (``start_fraction`` 0.75 = "included for the last 25 %" of Tab. 5);
- **alternation** (``alternate``): from ``mae_start`` on, steps alternate MAE, vision-language,
  MAE, ... (the first step with MAE is an MAE step). Without alternation every paired batch trains
  both objectives at once;
- **LR change on switch**: from ``mae_start`` on, the learning rate of the warm-up/decay schedule is
  multiplied by ``lr_factor_on_switch`` (the paper halves it);
- **which batches**: the data layer asks :meth:`ObjectiveSchedule.batch_kind` what kind of batch a
  step needs (``datamodules/samplers.py``, ``MixedBatchSampler(kind_plan=...)``): vision-language
  steps need ``paired`` batches; MAE steps take any kind, drawn by the ``data.sources`` weights
  (image-only volumes, and paired volumes used as images). An image-only batch therefore only
  ever arrives on a step where MAE is on.

Everything is a pure function of the optimiser step, so DDP ranks agree and a resumed run follows
the same schedule. The module asks :meth:`ObjectiveSchedule.active` once per step and logs the
answer; the LR factor is folded into the LambdaLR multiplier (:class:`ObjectiveLR`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, NamedTuple

import torch
from omegaconf import DictConfig, OmegaConf

from datamodules.batching import IMAGE_ONLY, PAIRED
from lightning_modules.optim import WarmupDecay


class ActiveObjectives(NamedTuple):
    vision_language: bool  # CLIP (+ RRG when configured) on this step's batch
    mae: bool  # the MAE loss on this step's batch


@dataclass(frozen=True)
class ObjectiveSchedule:
    max_steps: int
    mae_enabled: bool = False
    start_fraction: float = 0.75
    alternate: bool = True
    lr_factor_on_switch: float = 0.5

    def __post_init__(self) -> None:
        if not 0.0 <= self.start_fraction <= 1.0:
            raise ValueError(f"objectives.mae.start_fraction must be in [0, 1], got {self.start_fraction}")
        if not self.lr_factor_on_switch > 0:
            raise ValueError(
                f"objectives.mae.lr_factor_on_switch must be positive, got {self.lr_factor_on_switch}"
            )

    @classmethod
    def from_config(cls, cfg: DictConfig) -> ObjectiveSchedule:
        mae = OmegaConf.select(cfg, "objectives.mae")
        if mae is None or not bool(mae.enabled):
            return cls(max_steps=int(cfg.trainer.max_steps))
        return cls(
            max_steps=int(cfg.trainer.max_steps),
            mae_enabled=True,
            start_fraction=float(mae.start_fraction),
            alternate=bool(mae.alternate),
            lr_factor_on_switch=float(mae.lr_factor_on_switch),
        )

    @property
    def mae_start(self) -> int | None:
        """The first step with MAE (``None`` when MAE is off)."""
        return round(self.start_fraction * self.max_steps) if self.mae_enabled else None

    def mae_on(self, step: int) -> bool:
        start = self.mae_start
        return start is not None and step >= start

    def is_mae_step(self, step: int) -> bool:
        """Whether ``step`` trains MAE (with alternation: every other step from ``mae_start``)."""
        if not self.mae_on(step):
            return False
        return not self.alternate or (step - int(self.mae_start or 0)) % 2 == 0

    def batch_kind(self, step: int) -> str | None:
        """The batch kind step ``step`` needs: ``paired``, or ``None`` (any kind, by source weight)."""
        return None if self.is_mae_step(step) else PAIRED

    def active(self, step: int, kind: str) -> ActiveObjectives:
        """The objectives that train on step ``step``'s batch of kind ``kind``."""
        if kind == IMAGE_ONLY:
            if not self.mae_on(step):
                raise ValueError(
                    f"An image-only batch arrived at step {step}, where MAE is off "
                    f"(it starts at step {self.mae_start}); the data layer must follow batch_kind()"
                )
            return ActiveObjectives(vision_language=False, mae=True)
        if not self.mae_on(step):
            return ActiveObjectives(vision_language=True, mae=False)
        if self.alternate:
            mae_step = self.is_mae_step(step)
            return ActiveObjectives(vision_language=not mae_step, mae=mae_step)
        return ActiveObjectives(vision_language=True, mae=True)

    def lr_factor(self, step: int) -> float:
        """Multiplier of the scheduled learning rate at ``step``."""
        return self.lr_factor_on_switch if self.mae_on(step) else 1.0

    def skips_parameters(self) -> bool:
        """Whether some steps leave an objective's parameters without gradient (MAE-only steps and
        image-only batches skip the text side, vision-language-only steps the MAE decoder), so
        DDP must search for unused parameters."""
        return self.mae_enabled


@dataclass
class ObjectiveLR(WarmupDecay):
    """The warm-up/decay multiplier times :meth:`ObjectiveSchedule.lr_factor`.

    Fields are plain values (LambdaLR stores a callable object's fields in its state dict, and
    checkpoints must load without unpickling our classes); ``objectives`` holds the
    :class:`ObjectiveSchedule`'s fields.
    """

    objectives: dict[str, Any] = field(default_factory=dict)

    def __call__(self, step: int) -> float:
        return super().__call__(step) * ObjectiveSchedule(**self.objectives).lr_factor(step)


def with_objective_lr(optimizers: dict[str, Any], schedule: ObjectiveSchedule) -> dict[str, Any]:
    """Fold the schedule's LR factor into the ``LambdaLR`` of a ``configure_optimizers`` dict
    (as built by ``lightning_modules.optim.build_optimizer_and_scheduler``)."""
    if not schedule.mae_enabled:
        return optimizers
    scheduler = optimizers["lr_scheduler"]["scheduler"]
    if not isinstance(scheduler, torch.optim.lr_scheduler.LambdaLR):
        raise TypeError(f"expected a LambdaLR, got {type(scheduler).__name__}")
    lambdas = []
    for base in scheduler.lr_lambdas:
        if not isinstance(base, WarmupDecay):
            raise TypeError(f"expected WarmupDecay multipliers, got {type(base).__name__}")
        base_fields = {k: v for k, v in asdict(base).items() if k != "objectives"}
        lambdas.append(ObjectiveLR(**base_fields, objectives=asdict(schedule)))
    scheduler.lr_lambdas = lambdas
    # The current lr was set with the old multiplier at construction: set it again.
    for group, base_lr, multiplier in zip(
        scheduler.optimizer.param_groups, scheduler.base_lrs, lambdas, strict=True
    ):
        group["lr"] = base_lr * multiplier(scheduler.last_epoch)
    scheduler._last_lr = [group["lr"] for group in scheduler.optimizer.param_groups]
    return optimizers
