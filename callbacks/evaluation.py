"""Periodic light evaluation during pretraining (``evaluation.every_n_steps``).

Every ``every_n_steps`` optimiser steps, global rank 0 encodes one split (validation by default)
with the current weights and runs a light subset of ``ctvlp eval`` (retrieval and short zero-shot
by default: no probe training, no token cache), then logs ``<split>/<task>/<metric>`` scalars to
the Trainer's logger. Other ranks skip it (the split is read by rank 0 alone, unsharded).

Thresholded metrics need a validation split to fit thresholds on; evaluating the validation split
itself makes them optimistic, so the callback's numbers track progress and are not the final
protocol. Bootstrap CIs are off here to keep it cheap.

:func:`evaluate_splits` is the same evaluation on any splits; ``ctvlp fit`` uses it for
``evaluation.final_tasks`` once training ends.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader

from ctvlp.config.errors import ConfigError
from ctvlp.config.evaluation_tasks import TASKS, parse_tasks
from evaluation.runner import (
    EvalSettings,
    EvalSplit,
    Evaluator,
    TrainSplit,
    hf_tokenize,
)

LIGHT_TASKS = ("retrieval", "zeroshot_short")


class EvaluationCallback(L.Callback):
    def __init__(
        self,
        every_n_steps: int,
        tasks: Sequence[str] = LIGHT_TASKS,
        split: str = "val",
        settings: EvalSettings | None = None,
    ) -> None:
        if every_n_steps < 1:
            raise ValueError(f"every_n_steps must be >= 1, got {every_n_steps}")
        self.every_n_steps = every_n_steps
        self.tasks = parse_tasks(tasks)
        self.split = split
        self.settings = settings or EvalSettings()
        self.settings.tasks = self.tasks
        self.settings.bootstrap_resamples = 0
        self.settings.feature_cache_dir = None
        self._last_step = -1

    def evaluate(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, float]:
        return evaluate_splits(trainer, pl_module, self.settings, [self.split])

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        step = trainer.global_step
        if step == 0 or step % self.every_n_steps or step == self._last_step:
            return
        self._last_step = step  # with gradient accumulation the step repeats across batches
        if not trainer.is_global_zero or trainer.logger is None:
            return
        with torch.no_grad():
            results = self.evaluate(trainer, pl_module)
        trainer.logger.log_metrics(results, step=step)


def _split_loader(datamodule: Any, split: str) -> DataLoader:
    """Every volume of ``split`` once, in order, on this rank alone (no DDP sharding)."""
    return DataLoader(
        datamodule.datasets[split],
        batch_size=int(datamodule.data.batch_size),
        shuffle=False,
        num_workers=0,
        collate_fn=datamodule.collate,
        generator=torch.Generator(),  # the loader's seed draw must not advance the global RNG
    )


def evaluate_splits(
    trainer: L.Trainer, pl_module: L.LightningModule, settings: EvalSettings, splits: Sequence[str]
) -> dict[str, float]:
    """``settings.tasks`` on the Trainer's DataModule ``splits`` with the module's current weights
    (thresholds and probe choice from ``val``), as flat ``<split>/<task>/<metric>`` results."""
    datamodule = trainer.datamodule
    tokenize = hf_tokenize(datamodule.collate.tokenizer, datamodule.collate.max_length)

    def split(name: str) -> EvalSplit:
        return EvalSplit(name, _split_loader(datamodule, name), len(datamodule.datasets[name]))

    evaluator = Evaluator(
        pl_module,
        tokenize,
        datamodule.label_names,
        settings,
        device=pl_module.device,
        autocast=trainer.precision_plugin.forward_context,
        progress=False,
    )
    evaluated = [split(name) for name in splits]
    val = next((s for s in evaluated if s.name == "val"), None) or split("val")
    train = None
    if "zeroshot_native" in settings.tasks or "probe" in settings.tasks:
        loader = _split_loader(datamodule, "train") if "probe" in settings.tasks else None
        train = TrainSplit.from_entries(datamodule.splits["train"], loader)
    return evaluator.run(val, evaluated, train).results


def evaluation_callback_from_config(cfg: Any, supported: Sequence[str] = TASKS) -> EvaluationCallback | None:
    """The callback configured by ``cfg.evaluation`` (every_n_steps, callback_tasks, callback_split),
    or ``None`` when ``every_n_steps`` is 0.

    ``supported``: the tasks the module can be measured by (``ObjectiveModule.evaluation_tasks``); a
    module without report embeddings (MAE, CapPa) can only be probed, and a retrieval or zero-shot
    task is then a config error. On the validation split, when every callback
    step is also a validation step (``every_n_steps`` a multiple of ``trainer.val_check_interval``),
    retrieval is left to the module's own validation, which logs the same ``val/retrieval/*``
    values one step earlier; a callback left with no task is not built (``None``)."""
    try:
        tasks = parse_tasks(list(cfg.evaluation.callback_tasks))
    except ValueError as error:
        raise ConfigError(f"evaluation.callback_tasks: {error}") from error
    if int(cfg.evaluation.every_n_steps) <= 0:
        return None
    text_tasks = [task for task in tasks if task not in supported]
    if text_tasks:
        raise ConfigError(
            f"The '{cfg.module}' module has no text encoder, so evaluation.callback_tasks cannot include "
            f"{', '.join(text_tasks)}: use evaluation.callback_tasks=[probe] or evaluation.every_n_steps=0"
        )
    every, split = int(cfg.evaluation.every_n_steps), str(cfg.evaluation.callback_split)
    if split == "val" and every % int(cfg.trainer.val_check_interval) == 0:
        tasks = [task for task in tasks if task != "retrieval"]
    if not tasks:
        return None
    return EvaluationCallback(every, tasks, split, EvalSettings.from_config(cfg, tasks))
