"""Fails a run at its first validation when ``trainer.best_metric`` names a metric the module does
not log, with the closest logged names.

Lightning's ModelCheckpoint would raise too, but with the full list of every logged key (train
metrics included) and no hint that the name came from the config.
"""

from __future__ import annotations

import lightning as L
from lightning.pytorch.callbacks import Callback

from ctvlp.config.errors import ConfigError, did_you_mean


class SelectionMetricCheck(Callback):
    def __init__(self, metric: str, module: str) -> None:
        self.metric = metric
        self.module = module
        self.checked = False

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.checked or trainer.sanity_checking or trainer.state.fn != "fit":
            return
        self.checked = True
        logged = sorted(key for key in trainer.callback_metrics if key.startswith("val/"))
        if self.metric in logged:
            return
        raise ConfigError(
            f"trainer.best_metric='{self.metric}' is not a metric the '{self.module}' module logs on "
            f"validation.{did_you_mean(self.metric, logged, cutoff=0.5)} Logged: {', '.join(logged) or 'none'}"
        )
