"""Which labeller reads the 18 CT-RATE labels out of reports for the clinical report metrics.

- **Rule-based** (the default): :mod:`datamodules.report_labeller`, negation- and uncertainty-aware.
- **A trained text classifier** (``evaluation.report_classifier: DIR``): a local Hugging Face
  sequence-classification model, such as CT-RATE's RadBERT classifier converted to the
  ``save_pretrained`` layout. It is multi-label: a label is present when its sigmoid probability
  reaches ``evaluation.report_classifier_threshold`` (0.5).

  Its outputs are matched to CT-RATE's label names through the model's ``id2label`` (case and spacing
  ignored, in any order). A model with Transformers' placeholder names (``LABEL_0`` ...) and exactly
  18 outputs is read in CT-RATE's column order, with a warning; any other mismatch is an error
  that lists what is missing.

Both label blank reports all 0. The run says which labeller produced its clinical metrics: the log,
and ``<run>/clinical_labeller.txt`` beside ``reports_<split>.csv``.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from functools import cache
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from omegaconf import OmegaConf

from ctvlp.config.errors import ConfigError
from datamodules.labels import CT_RATE_LABELS
from datamodules.report_labeller import is_blank_report, label_reports

log = logging.getLogger(__name__)

RULE_BASED_NAME = "rule-based CT-RATE labeller (datamodules/report_labeller.py)"
LABELLER_FILE = "clinical_labeller.txt"
_PLACEHOLDER = re.compile(r"^LABEL_\d+$")


class ReportLabeller(Protocol):
    name: str

    def __call__(self, texts: Sequence[str | None]) -> np.ndarray:
        """(N, 18) int64 0/1 labels, columns in ``CT_RATE_LABELS`` order."""
        ...


class RuleBasedLabeller:
    """:mod:`datamodules.report_labeller`; hedged mentions ("cannot be excluded") count as positive
    unless ``uncertain_as_positive`` is False."""

    def __init__(self, uncertain_as_positive: bool = True) -> None:
        self.uncertain_as_positive = uncertain_as_positive
        self.name = RULE_BASED_NAME if uncertain_as_positive else f"{RULE_BASED_NAME}, uncertain as negative"

    def __call__(self, texts: Sequence[str | None]) -> np.ndarray:
        return label_reports(texts, uncertain_as_positive=self.uncertain_as_positive)


def _normalised(name: str) -> str:
    return " ".join(name.lower().replace("_", " ").split())


def _output_columns(id2label: dict[int, str], path: Path) -> list[int]:
    """For each CT-RATE label in order, the index of the classifier output that scores it."""
    names = [str(id2label[i]) for i in range(len(id2label))]
    if all(_PLACEHOLDER.match(name) for name in names):
        if len(names) != len(CT_RATE_LABELS):
            raise ConfigError(
                f"evaluation.report_classifier={path}: {len(names)} unnamed outputs (LABEL_0 ...); a CT-RATE "
                f"classifier has {len(CT_RATE_LABELS)}. Name them in config.json's id2label."
            )
        log.warning(
            "Report classifier %s names no labels (LABEL_0 ...): its 18 outputs are read in CT-RATE's "
            "column order (%s ... %s)",
            path,
            CT_RATE_LABELS[0],
            CT_RATE_LABELS[-1],
        )
        return list(range(len(CT_RATE_LABELS)))
    by_name = {_normalised(name): i for i, name in enumerate(names)}
    missing = [label for label in CT_RATE_LABELS if _normalised(label) not in by_name]
    if missing:
        raise ConfigError(
            f"evaluation.report_classifier={path}: the model's id2label has no output for {missing}. "
            f"It names: {names}. The clinical metrics need all {len(CT_RATE_LABELS)} CT-RATE labels."
        )
    return [by_name[_normalised(label)] for label in CT_RATE_LABELS]


class ClassifierLabeller:
    """A local sequence-classification model as a multi-label CT-RATE labeller (module docstring)."""

    def __init__(
        self, path: str | Path, threshold: float = 0.5, batch_size: int = 32, max_length: int = 512
    ) -> None:
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        self.path = Path(path).expanduser()
        if not (self.path / "config.json").is_file():
            raise ConfigError(
                f"evaluation.report_classifier={path}: no config.json there. Give a local directory written "
                "by save_pretrained (a sequence-classification model and its tokenizer)."
            )
        if not 0.0 < threshold < 1.0:
            raise ConfigError(f"evaluation.report_classifier_threshold={threshold}: must lie in (0, 1)")
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(str(self.path), local_files_only=True)
        except (OSError, ValueError) as error:
            raise ConfigError(
                f"evaluation.report_classifier={path}: its tokenizer cannot be loaded ({error}). Save the "
                "tokenizer into the same directory."
            ) from error
        self.model = AutoModelForSequenceClassification.from_pretrained(str(self.path), local_files_only=True)
        self.model.eval()
        self.columns = _output_columns(dict(self.model.config.id2label), self.path)
        self.threshold = float(threshold)
        self.batch_size = int(batch_size)
        limits = (
            max_length,
            self.tokenizer.model_max_length,
            getattr(self.model.config, "max_position_embeddings", None),
        )
        self.max_length = min(int(limit) for limit in limits if limit)
        self.name = f"report classifier {self.path} (sigmoid >= {self.threshold:g})"

    @torch.no_grad()
    def __call__(self, texts: Sequence[str | None]) -> np.ndarray:
        out = np.zeros((len(texts), len(CT_RATE_LABELS)), dtype=np.int64)
        rows = [i for i, text in enumerate(texts) if not is_blank_report(text)]
        truncated = 0
        for start in range(0, len(rows), self.batch_size):
            chunk = rows[start : start + self.batch_size]
            chunk_texts = [str(texts[i]) for i in chunk]
            lengths = [len(ids) for ids in self.tokenizer(chunk_texts)["input_ids"]]
            truncated += sum(length > self.max_length for length in lengths)
            batch = self.tokenizer(
                chunk_texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
            )
            probabilities = torch.sigmoid(self.model(**batch).logits.float())[:, self.columns]
            out[chunk] = (probabilities >= self.threshold).long().numpy()
        if truncated:
            log.warning(
                "Report classifier: %d of %d reports were longer than its %d tokens and were truncated",
                truncated,
                len(texts),
                self.max_length,
            )
        return out


@cache
def _classifier(path: str, threshold: float) -> ClassifierLabeller:
    return ClassifierLabeller(path, threshold)


def report_labeller(classifier: str | None = None, threshold: float = 0.5) -> ReportLabeller:
    """The rule-based labeller, or the classifier at ``classifier`` (loaded once per process)."""
    if not classifier:
        return RuleBasedLabeller()
    return _classifier(str(classifier), float(threshold))


def labeller_from_config(cfg: Any) -> ReportLabeller:
    """The labeller ``cfg.evaluation`` asks for (``report_classifier``, ``report_classifier_threshold``)."""
    return report_labeller(
        OmegaConf.select(cfg, "evaluation.report_classifier", default=None),
        float(OmegaConf.select(cfg, "evaluation.report_classifier_threshold", default=0.5)),
    )


def record_labeller(run_dir: Path, labeller: ReportLabeller) -> None:
    """``<run>/clinical_labeller.txt``: which labeller the run's clinical report metrics come from."""
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / LABELLER_FILE).write_text(labeller.name + "\n", encoding="utf-8")
    log.info("Clinical report metrics: labels by the %s", labeller.name)
