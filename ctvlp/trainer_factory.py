"""Builds the Lightning Trainer from the ``trainer`` config: precision, logger, callbacks (and, on a
CPU, the allocator setting of ``ctvlp/cpu_allocator.py``)."""

from __future__ import annotations

import logging
import sys

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger
from omegaconf import DictConfig

from callbacks.progress_log import ProgressLog
from callbacks.rng_state import RngStateCallback
from callbacks.selection_metric_check import SelectionMetricCheck
from callbacks.volume_preview import VolumePreviewCallback
from ctvlp.config.batch import BatchPlan, plan_from_data
from ctvlp.cpu_allocator import keep_freed_memory
from ctvlp.model_selection import model_selection
from ctvlp.run_dir import RunDir
from lightning_modules.objective_schedule import ObjectiveSchedule

log = logging.getLogger(__name__)


def uses_gpu(trainer_cfg: DictConfig) -> bool:
    return trainer_cfg.accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available()


def effective_precision(trainer_cfg: DictConfig) -> str:
    """bf16 mixed precision is a GPU setting; on CPU fall back to fp32 with a notice."""
    precision = str(trainer_cfg.precision)
    if not uses_gpu(trainer_cfg) and precision not in ("32", "32-true", "64", "64-true"):
        log.warning("No GPU in use: trainer.precision=%s replaced by 32-true", precision)
        return "32-true"
    return precision


def effective_strategy(cfg: DictConfig) -> str:
    """``trainer.strategy``, with DDP's unused-parameter search when the objective schedule leaves
    some parameters without gradient on some steps (MAE steps skip the text side; GreenRFM's two
    stages train different heads)."""
    strategy = str(cfg.trainer.strategy)
    skips = cfg.module == "greenrfm" or ObjectiveSchedule.from_config(cfg).skips_parameters()
    if strategy == "ddp" and skips:
        return "ddp_find_unused_parameters_true"
    return strategy


def apply_batch_plan(cfg: DictConfig, trainer: L.Trainer) -> BatchPlan:
    """The batch plan for the Trainer's devices and nodes (ctvlp/config/batch.py), written into
    ``cfg`` (so config.yaml and the hparams hold the values the run uses) and the Trainer's gradient
    accumulation (a memory cap may raise it above ``trainer.accumulate_grad_batches``)."""
    plan = plan_from_data(
        cfg.data, int(cfg.trainer.accumulate_grad_batches), int(trainer.num_devices), int(trainer.num_nodes)
    )
    if cfg.data.global_batch_size is None and plan.world > 1:
        log.warning(
            "data.batch_size=%d is per device and data.global_batch_size is not set: on %d devices the "
            "global batch is %d. Set data.global_batch_size to keep the recipe's batch (and learning rate) "
            "on any device count",
            plan.per_device,
            plan.world,
            plan.global_batch,
        )
    cfg.data.batch_size = plan.per_device
    cfg.data.global_batch_size = plan.global_batch
    cfg.trainer.accumulate_grad_batches = plan.accumulate
    cfg.trainer.num_nodes = plan.nodes
    cfg.trainer.devices = plan.devices
    trainer.accumulate_grad_batches = plan.accumulate  # Lightning reads it when the fit loop runs
    return plan


def build_trainer(cfg: DictConfig, run: RunDir) -> L.Trainer:
    """The trainer with the callbacks every run has (checkpoints, RNG state, previews, model
    selection); each module adds its own from ``configure_callbacks()``."""
    t = cfg.trainer
    selection = model_selection(cfg)
    logger = TensorBoardLogger(
        save_dir=str(run.path), name="tensorboard", version="", default_hp_metric=False
    )
    last = ModelCheckpoint(
        dirpath=run.checkpoints,
        save_last=True,
        save_top_k=0,
        every_n_train_steps=int(t.checkpoint_every_n_steps),
    )
    best = ModelCheckpoint(
        dirpath=run.checkpoints,
        filename="best-step{step}",
        monitor=selection.metric,
        mode=selection.mode,
        save_top_k=1,
        auto_insert_metric_name=False,
    )
    callbacks = [last, best, RngStateCallback(), VolumePreviewCallback(int(cfg.evaluation.preview_volumes))]
    callbacks.append(ProgressLog(int(t.progress_every_n_steps)))  # lines where no tqdm bar is shown
    if selection.configured:
        log.info("Best checkpoint by %s (%s)", selection.metric, selection.mode)
        callbacks.append(SelectionMetricCheck(selection.metric, str(cfg.module)))
    if not uses_gpu(t) and t.cpu_keep_freed_memory:  # activations stay mapped, not page-faulted in again
        keep_freed_memory()
    return L.Trainer(
        default_root_dir=str(run.path),
        max_steps=int(t.max_steps),
        accelerator=t.accelerator,
        devices=t.devices,
        num_nodes=int(t.num_nodes),
        strategy=effective_strategy(cfg),
        precision=effective_precision(t),
        gradient_clip_val=t.gradient_clip_val,
        accumulate_grad_batches=int(t.accumulate_grad_batches),
        val_check_interval=int(t.val_check_interval),
        check_val_every_n_epoch=None,
        log_every_n_steps=int(t.log_every_n_steps),
        limit_val_batches=t.limit_val_batches,
        deterministic=bool(t.deterministic),
        logger=logger,
        callbacks=callbacks,
        # Our samplers shard by rank themselves (datamodules/samplers.py).
        use_distributed_sampler=False,
        num_sanity_val_steps=0,
        fast_dev_run=bool(t.fast_dev_run),
        enable_model_summary=True,
        # A bar of carriage returns floods a log file (SLURM, `make demo > log`): ProgressLog's
        # lines stand in for it there.
        enable_progress_bar=sys.stdout.isatty(),
    )
