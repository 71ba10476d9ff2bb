"""Model selection: which validation metric picks the best checkpoint, and in which direction.

``trainer.best_metric`` / ``trainer.best_mode`` override the module's own choice (its
``best_metric`` / ``best_mode``). The same selection names the ``best-step*.ckpt`` callback and the
weights ``ctvlp fit`` evaluates at the end for modules that select on validation.
"""

from __future__ import annotations

from typing import NamedTuple

from omegaconf import DictConfig

from lightning_modules.registry import module_class

# Metrics that are better when lower; every other metric (recall, AUROC, Dice, ...) is maximised.
MINIMISED_NAMES = ("loss", "MnR")


class Selection(NamedTuple):
    metric: str
    mode: str  # "min" | "max"
    configured: bool  # set by trainer.best_metric (not the module's default)


def inferred_mode(metric: str) -> str:
    """``min`` for losses (``.../loss``, ``.../loss_*``) and the mean rank ``MnR``, else ``max``."""
    name = metric.rsplit("/", 1)[-1]
    return "min" if name in MINIMISED_NAMES or name.startswith("loss_") else "max"


def model_selection(cfg: DictConfig) -> Selection:
    module_cls = module_class(cfg.module)
    metric = cfg.trainer.best_metric
    if metric is None:
        return Selection(module_cls.best_metric, module_cls.best_mode, False)
    metric = str(metric)
    if cfg.trainer.best_mode is not None:
        mode = str(cfg.trainer.best_mode)
    elif metric == module_cls.best_metric:
        mode = module_cls.best_mode
    else:
        mode = inferred_mode(metric)
    return Selection(metric, mode, True)
