"""Training progress as log lines, for runs whose stdout is not a terminal (a SLURM log,
``make demo > log``), where the tqdm bar is turned off (ctvlp/trainer_factory.py)::

    step 120/600 (20%) | loss 3.412 | 18.3 samples/s | elapsed 1m05s | ETA 4m20s

One line every ``every_n_steps`` optimizer steps and at the last step, on global rank 0, through
``logging`` (the CLI prints it; ``ctvlp fit`` also writes it to ``<run>/train.log``). The loss is
rank 0's mean over the steps since the previous line; samples/s counts every rank's batches over
the wall time since the previous line (validation included); the ETA extrapolates the mean time
per step since training (re)started in this process. Silent while a progress bar is shown.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping
from typing import Any

import lightning as L
import torch

log = logging.getLogger(__name__)


def format_duration(seconds: float) -> str:
    """``65`` -> ``1m05s``, ``3725`` -> ``1h02m05s``, ``9`` -> ``9s`` (rounded to the second)."""
    total = max(0, round(seconds))
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m{secs:02d}s"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


def eta_seconds(step: int, total: int, start_step: int, elapsed: float) -> float | None:
    """Seconds left at ``step`` of ``total``: the mean time per step since ``start_step`` (where
    this process started or resumed) times the steps left; ``None`` before a step was timed."""
    done = step - start_step
    if done <= 0 or total <= 0:
        return None
    return elapsed / done * max(0, total - step)


def progress_line(
    step: int,
    total: int | None,
    loss: float | None,
    samples_per_s: float | None,
    elapsed: float,
    eta: float | None,
) -> str:
    """``step 120/600 (20%) | loss 3.412 | 18.3 samples/s | elapsed 1m05s | ETA 4m20s``; parts
    that are unknown (no total, no loss, no batch size) are left out."""
    parts = [f"step {step}/{total} ({100 * step // total}%)" if total else f"step {step}"]
    if loss is not None:
        parts.append(f"loss {loss:.3f}")
    if samples_per_s is not None:
        parts.append(f"{samples_per_s:.1f} samples/s")
    parts.append(f"elapsed {format_duration(elapsed)}")
    if eta is not None:
        parts.append(f"ETA {format_duration(eta)}")
    return " | ".join(parts)


def _batch_size(batch: Any) -> int | None:
    """The number of samples in a batch dict (its ``image``, else its first tensor)."""
    if not isinstance(batch, Mapping):
        return None
    image = batch.get("image")
    if isinstance(image, torch.Tensor):
        return int(image.shape[0])
    first = next((v for v in batch.values() if isinstance(v, torch.Tensor) and v.dim() > 0), None)
    return None if first is None else int(first.shape[0])


def _loss(outputs: Any) -> torch.Tensor | None:
    loss = outputs.get("loss") if isinstance(outputs, Mapping) else outputs
    return loss.detach() if isinstance(loss, torch.Tensor) and loss.numel() == 1 else None


class ProgressLog(L.Callback):
    def __init__(self, every_n_steps: int) -> None:
        self.every_n_steps = int(every_n_steps)

    def _active(self, trainer: L.Trainer) -> bool:
        return self.every_n_steps > 0 and trainer.is_global_zero and trainer.progress_bar_callback is None

    def _total(self, trainer: L.Trainer) -> int | None:
        if trainer.max_steps > 0:
            return int(trainer.max_steps)
        estimate = trainer.estimated_stepping_batches
        return int(estimate) if math.isfinite(estimate) else None

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start = self._window_start = time.perf_counter()
        self._start_step = self._last_step = int(trainer.global_step)
        self._samples = 0
        self._unknown_size = False
        self._loss_sum: torch.Tensor | None = None  # summed on the device: no sync per step
        self._loss_count = 0

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if not self._active(trainer):
            return
        size = _batch_size(batch)
        self._unknown_size |= size is None
        self._samples += (size or 0) * trainer.world_size
        loss = _loss(outputs)
        if loss is not None:
            self._loss_sum = loss if self._loss_sum is None else self._loss_sum + loss
            self._loss_count += 1
        step, total = int(trainer.global_step), self._total(trainer)
        if step == self._last_step or not (step % self.every_n_steps == 0 or step == total):
            return  # no optimizer step since the last line (accumulation), or not a logging step
        now = time.perf_counter()
        mean_loss = None if self._loss_sum is None else self._loss_sum.item() / self._loss_count
        window = now - self._window_start
        rate = None if self._unknown_size or window <= 0 else self._samples / window
        elapsed = now - self._start
        eta = eta_seconds(step, total, self._start_step, elapsed) if total else None
        log.info(progress_line(step, total, mean_loss, rate, elapsed, eta))
        self._window_start, self._last_step, self._samples = now, step, 0
        self._unknown_size, self._loss_sum, self._loss_count = False, None, 0
