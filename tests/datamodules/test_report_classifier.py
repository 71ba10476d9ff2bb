"""datamodules/report_classifier.py: a local Hugging Face text classifier as the clinical metrics'
labeller (evaluation.report_classifier), on tiny BERT classifiers built from a config whose head is
set by hand, so what each report must be labelled is known."""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd
import pytest
import torch
from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

from callbacks.report_samples import ReportSamplesCallback
from ctvlp.cli import main
from ctvlp.config.errors import ConfigError
from datamodules.labels import CT_RATE_LABELS
from datamodules.report_classifier import (
    LABELLER_FILE,
    ClassifierLabeller,
    RuleBasedLabeller,
    record_labeller,
    report_labeller,
)
from lightning_modules.cappa import CapPaModule
from lightning_modules.nets.text_encoder import resolve_text_model_path
from lightning_modules.report_generation import score_reports

EMPHYSEMA = CT_RATE_LABELS.index("Emphysema")
MAX_POSITIONS = 64


def write_classifier(path: Path, names: list[str] | None, positive: int, num_labels: int = 18) -> Path:
    """A 1-layer BERT classifier whose head ignores the text: output ``positive`` scores +5 (sigmoid
    0.993), every other -5. ``names``: its id2label (None: Transformers' LABEL_i placeholders)."""
    tokenizer = AutoTokenizer.from_pretrained(resolve_text_model_path("minilm"))
    labels = (
        {}
        if names is None
        else {"id2label": dict(enumerate(names)), "label2id": {n: i for i, n in enumerate(names)}}
    )
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=MAX_POSITIONS,
        num_labels=num_labels,
        problem_type="multi_label_classification",
        **labels,
    )
    model = BertForSequenceClassification(config)
    with torch.no_grad():
        model.classifier.weight.zero_()
        model.classifier.bias.fill_(-5.0)
        model.classifier.bias[positive] = 5.0
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def reversed_classifier(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Outputs named in reverse CT-RATE order; the Emphysema output fires."""
    names = list(reversed(CT_RATE_LABELS))
    return write_classifier(tmp_path_factory.mktemp("clf") / "reversed", names, names.index("Emphysema"))


def test_outputs_are_matched_to_ct_rate_columns_by_name(
    reversed_classifier: Path, caplog: pytest.LogCaptureFixture
) -> None:
    labeller = ClassifierLabeller(reversed_classifier)
    long_report = "The lungs are clear. " * 40  # far over the model's 64 positions
    with caplog.at_level(logging.WARNING):
        labels = labeller(["No acute findings.", "", long_report, None])
    expected_row = [int(i == EMPHYSEMA) for i in range(len(CT_RATE_LABELS))]
    assert labels.shape == (4, 18)
    assert labels[0].tolist() == expected_row
    assert labels[2].tolist() == expected_row  # truncated, still classified
    assert labels[1].sum() == 0 and labels[3].sum() == 0  # blank reports: all 0, as the rule-based one
    assert "1 of 4 reports were longer than its 64 tokens" in caplog.text
    assert str(reversed_classifier) in labeller.name


def test_placeholder_label_names_are_read_in_ct_rate_order_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = write_classifier(tmp_path / "unnamed", None, positive=3)
    with caplog.at_level(logging.WARNING):
        labels = ClassifierLabeller(path)(["Some report."])
    assert labels[0].tolist() == [int(i == 3) for i in range(18)]
    assert "names no labels" in caplog.text


def test_bad_classifiers_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no config.json"):
        ClassifierLabeller(tmp_path / "missing")
    partial = write_classifier(tmp_path / "partial", list(CT_RATE_LABELS[:17]), 0, num_labels=17)
    with pytest.raises(ConfigError, match="Interlobular septal thickening"):
        ClassifierLabeller(partial)
    unnamed = write_classifier(tmp_path / "unnamed17", None, 0, num_labels=17)
    with pytest.raises(ConfigError, match="17 unnamed outputs"):
        ClassifierLabeller(unnamed)
    with pytest.raises(ConfigError, match="threshold"):
        ClassifierLabeller(partial, threshold=1.5)


def test_report_scores_use_the_configured_labeller(reversed_classifier: Path, tmp_path: Path) -> None:
    # The rule-based labeller reads Emphysema in the reference and its negation in the generated
    # report: no true positive. The classifier labels both Emphysema: every label agrees.
    references, generated = ["Emphysema in both upper lobes."], ["No emphysema."]
    rule_based = score_reports(references, generated, 0, 0)
    classifier = report_labeller(str(reversed_classifier))
    learned = score_reports(references, generated, 0, 0, classifier)
    assert rule_based["clinical_F1_micro"] == 0.0
    assert learned["clinical_F1_micro"] == 1.0
    assert rule_based["BLEU-1"] == learned["BLEU-1"]  # only the clinical metrics change
    assert report_labeller(str(reversed_classifier)) is classifier  # loaded once
    assert isinstance(report_labeller(None), RuleBasedLabeller)
    record_labeller(tmp_path, classifier)
    assert str(reversed_classifier) in (tmp_path / LABELLER_FILE).read_text(encoding="utf-8")


def test_label_reports_command_with_a_classifier(
    reversed_classifier: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    reports = tmp_path / "reports.csv"
    pd.DataFrame({"VolumeName": ["a", "b"], "Findings_EN": ["Clear lungs.", ""]}).to_csv(reports, index=False)
    out = tmp_path / "labels.csv"
    argv = [
        "label-reports",
        "--in",
        str(reports),
        "--out",
        str(out),
        "--classifier",
        str(reversed_classifier),
    ]
    assert main(argv) == 0
    frame = pd.read_csv(out)
    assert list(frame.columns) == ["VolumeName", *CT_RATE_LABELS]
    assert frame["Emphysema"].tolist() == [1, 0]
    assert int(frame[list(CT_RATE_LABELS)].to_numpy().sum()) == 1
    assert f"labeller: report classifier {reversed_classifier}" in capsys.readouterr().out
    # Hedging is a rule of the rule-based labeller: asking a classifier for it is refused.
    out.unlink()
    assert main([*argv, "--uncertain-as-negative"]) == 2
    assert "--uncertain-as-negative" in capsys.readouterr().err
    assert not out.exists()


def test_report_samples_in_tensorboard_use_the_configured_labeller(reversed_classifier: Path) -> None:
    """The labels and clinical F1 beside the generated reports in TensorBoard come from the same
    labeller as the run's clinical metrics."""
    sections = {"model": {"image": {"size": "tiny"}}, "objectives": {"rrg": {"depth": 1}}}
    default = CapPaModule.from_sections(**sections, module="cappa")
    configured = CapPaModule.from_sections(
        **sections, module="cappa", evaluation={"report_classifier": str(reversed_classifier)}
    )
    labellers = [
        next(c for c in m.configure_callbacks() if isinstance(c, ReportSamplesCallback)).labeller
        for m in (default, configured)
    ]
    assert isinstance(labellers[0], RuleBasedLabeller)
    assert labellers[1] is report_labeller(str(reversed_classifier))
    texts = ["Clear lungs."]
    assert labellers[0](texts).sum() == 0 and labellers[1](texts)[0, EMPHYSEMA] == 1
