"""Logs greedy-decoded reports of a few validation volumes to TensorBoard as text, beside the
reference, at the end of every validation (report generation active: ``objectives.rrg``).

The volumes are the first ``num_volumes`` of the validation split, centre-cropped, with the
sections in canonical order. Each trained decoding mode (parallel: one pass; causal:
autoregressive) gets its own greedy report, so a user sees what the decoder has learnt to say
about each volume and how it compares with what the radiologist wrote. Every rank decodes the
same volumes (a sharded model, FSDP, needs all ranks in each forward); global rank 0 logs.

The module must expose ``image_encoder`` (returning ``ImageOutput``), ``rrg_head`` and
``rrg_targets``, as ``ColipriModule`` with RRG and ``CapPaModule`` do.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from lightning.pytorch.loggers import TensorBoardLogger

from lightning_modules import rrg

TAG_PREFIX = "reports"


def _block(title: str, text: str) -> str:
    """A Markdown heading and the report as a preformatted block (one line per section)."""
    body = "\n".join(f"    {line}" for line in text.splitlines())
    return f"**{title}**\n\n{body}"


class ReportSamplesCallback(L.Callback):
    def __init__(self, num_volumes: int = 3, parallel_prob: float = 1.0) -> None:
        self.num_volumes = num_volumes
        self.modes = rrg.mode_weights(parallel_prob)

    def generate(self, trainer: L.Trainer, pl_module: Any) -> list[tuple[str, str]]:
        """``(tag, markdown)`` per logged volume: the reference, then one report per mode."""
        datamodule = trainer.datamodule
        dataset = datamodule.datasets["val"]
        samples = [dataset[i] for i in range(min(self.num_volumes, len(dataset)))]
        if not samples:
            return []
        batch = datamodule.collate(samples)
        targets = pl_module.rrg_targets
        orders = [tuple(sections) for sections in batch["sections"]]
        header_ids = batch["cappa"]["header_ids"].to(pl_module.device)
        generated: dict[str, list[str]] = {}
        with torch.no_grad(), trainer.precision_plugin.forward_context():
            tokens = pl_module.image_encoder(batch["image"].to(pl_module.device)).tokens
            for mode in self.modes:
                generated[mode] = rrg.generate_reports(
                    pl_module.rrg_head, targets, tokens, header_ids, orders, causal=mode == "causal"
                )
        texts = []
        for i, sample in enumerate(samples):
            reference = targets.decode(targets.slot_ids(batch["cappa"]["labels"][i]), orders[i])
            blocks = [_block("reference", reference)]
            blocks += [_block(f"{mode} (greedy)", reports[i]) for mode, reports in generated.items()]
            texts.append((f"{TAG_PREFIX}/{i}_{sample['image_id']}", "\n\n".join(blocks)))
        return texts

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        logger = trainer.logger
        if not isinstance(logger, TensorBoardLogger) or trainer.sanity_checking or self.num_volumes <= 0:
            return
        texts = self.generate(trainer, pl_module)
        if trainer.is_global_zero:
            for tag, text in texts:
                logger.experiment.add_text(tag, text, trainer.global_step)
