"""Logs greedy-decoded reports of a few validation volumes to TensorBoard as text, beside the
reference, at the end of every validation (report generation active: ``objectives.rrg``).

The volumes are the first ``num_volumes`` of the validation split, centre-cropped, with the
sections in canonical order. Each trained decoding mode (parallel: one pass; causal:
autoregressive) gets its own greedy report, so a user sees what the decoder has learnt to say
about each volume and how it compares with what the radiologist wrote. Every rank decodes the
same volumes (a sharded model, FSDP, needs all ranks in each forward); global rank 0 logs.

The callback knows no module class: the module decodes (``ReportGenerator.report_samples``), as
``ColipriModule`` with RRG and ``CapPaModule`` do, and returns each volume's reference and reports.
"""

from __future__ import annotations

from typing import Any, Protocol

import lightning as L
import torch
from lightning.pytorch.loggers import TensorBoardLogger

TAG_PREFIX = "reports"


def _block(title: str, text: str) -> str:
    """A Markdown heading and the report as a preformatted block (one line per section)."""
    body = "\n".join(f"    {line}" for line in text.splitlines())
    return f"**{title}**\n\n{body}"


class ReportGenerator(Protocol):
    def report_samples(self, batch: dict[str, Any]) -> list[dict[str, str]]:
        """Per volume of a collated batch: ``{"reference": text, "<mode> (greedy)": text, ...}``."""
        ...


class ReportSamplesCallback(L.Callback):
    def __init__(self, num_volumes: int = 3) -> None:
        self.num_volumes = num_volumes

    def generate(self, trainer: L.Trainer, pl_module: ReportGenerator) -> list[tuple[str, str]]:
        """``(tag, markdown)`` per logged volume: the reference, then one report per mode."""
        datamodule = trainer.datamodule
        dataset = datamodule.datasets["val"]
        samples = [dataset[i] for i in range(min(self.num_volumes, len(dataset)))]
        if not samples:
            return []
        batch = datamodule.collate(samples)
        with torch.no_grad(), trainer.precision_plugin.forward_context():
            reports = pl_module.report_samples(batch)
        texts = []
        for i, (sample, titled) in enumerate(zip(samples, reports, strict=True)):
            markdown = "\n\n".join(_block(title, text) for title, text in titled.items())
            texts.append((f"{TAG_PREFIX}/{i}_{sample['image_id']}", markdown))
        return texts

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        logger = trainer.logger
        if not isinstance(logger, TensorBoardLogger) or trainer.sanity_checking or self.num_volumes <= 0:
            return
        texts = self.generate(trainer, pl_module)
        if trainer.is_global_zero:
            for tag, text in texts:
                logger.experiment.add_text(tag, text, trainer.global_step)
