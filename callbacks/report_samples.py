"""Logs greedy-decoded reports of a few validation volumes to TensorBoard as text, beside the
reference, at the end of every validation (report generation active: ``objectives.rrg``).

The volumes are the first ``num_volumes`` of the validation split, centre-cropped, with the
sections in canonical order. Each trained decoding mode (parallel: one pass; causal:
autoregressive) gets its own greedy report, so a user sees what the decoder has learnt to say
about each volume and how it compares with what the radiologist wrote. Every rank decodes the
same volumes (a sharded model, FSDP, needs all ranks in each forward); global rank 0 logs.

The callback knows no module class: the module decodes (``ReportGenerator.report_samples``), as
``ColipriModule`` with RRG, ``CapPaModule`` and ``ReportGenerationModule`` do, and returns each
volume's reference and reports.

Beside each report goes what the run's CT-RATE labeller reads in it (the rule-based one of
``ctvlp label-reports``, or ``evaluation.report_classifier``: datamodules/report_classifier.py),
and each mode's clinical micro-F1 against the references over the logged volumes is logged as
``val/report_samples/<mode>/clinical_F1_micro`` (a few volumes: a sign of life, not a metric), so a
report that names no finding is never shown without saying so.
"""

from __future__ import annotations

from typing import Any, Protocol

import lightning as L
import torch
from lightning.pytorch.loggers import TensorBoardLogger

from datamodules.labels import CT_RATE_LABELS
from datamodules.report_classifier import ReportLabeller, RuleBasedLabeller
from evaluation.report_metrics import clinical_metrics

TAG_PREFIX = "reports"


def _block(title: str, text: str) -> str:
    """A Markdown heading and the report as a preformatted block (one line per section)."""
    body = "\n".join(f"    {line}" for line in text.splitlines())
    return f"**{title}**\n\n{body}"


def _names(row: Any) -> str:
    """The labels set in one labeller row, or "no finding"."""
    names = [name for name, value in zip(CT_RATE_LABELS, row, strict=True) if value]
    return ", ".join(names) or "no finding"


class ReportGenerator(Protocol):
    def report_samples(self, batch: dict[str, Any]) -> list[dict[str, str]]:
        """Per volume of a collated batch: ``{"reference": text, "<mode> (greedy)": text, ...}``."""
        ...


class ReportSamplesCallback(L.Callback):
    def __init__(self, num_volumes: int = 3, labeller: ReportLabeller | None = None) -> None:
        self.num_volumes = num_volumes
        self.labeller = labeller or RuleBasedLabeller()

    def generate(
        self, trainer: L.Trainer, pl_module: ReportGenerator
    ) -> tuple[list[tuple[str, str]], dict[str, float]]:
        """``(tag, markdown)`` per logged volume (the reference, then one report per mode, then the
        labels the labeller finds in each), and each mode's clinical micro-F1 over these volumes."""
        datamodule = trainer.datamodule
        dataset = datamodule.datasets["val"]
        samples = [dataset[i] for i in range(min(self.num_volumes, len(dataset)))]
        if not samples:
            return [], {}
        batch = datamodule.collate(samples)
        with torch.no_grad(), trainer.precision_plugin.forward_context():
            reports = pl_module.report_samples(batch)
        titles = list(reports[0])
        labels = {title: self.labeller([r[title] for r in reports]) for title in titles}
        texts = []
        for i, (sample, titled) in enumerate(zip(samples, reports, strict=True)):
            markdown = "\n\n".join(_block(title, text) for title, text in titled.items())
            found = "; ".join(f"{title}: {_names(labels[title][i])}" for title in titles)
            markdown += f"\n\n_labeller_: {found}"
            texts.append((f"{TAG_PREFIX}/{i}_{sample['image_id']}", markdown))
        scores = {}
        for title in titles[1:]:
            f1 = clinical_metrics(labels[titles[0]], labels[title], CT_RATE_LABELS).micro["F1"]
            scores[title.split(" (")[0]] = f1  # NaN: no finding in any reference or report
        return texts, scores

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        logger = trainer.logger
        if not isinstance(logger, TensorBoardLogger) or trainer.sanity_checking or self.num_volumes <= 0:
            return
        texts, scores = self.generate(trainer, pl_module)
        if trainer.is_global_zero:
            for tag, text in texts:
                logger.experiment.add_text(tag, text, trainer.global_step)
            for mode, f1 in scores.items():
                logger.experiment.add_scalar(
                    f"val/report_samples/{mode}/clinical_F1_micro", f1, trainer.global_step
                )
