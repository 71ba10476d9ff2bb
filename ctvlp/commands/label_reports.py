"""``ctvlp label-reports``: the 18 CT-RATE labels of each report in a CSV, by the rule-based labeller
(or, with ``--classifier DIR``, a local text classifier: datamodules/report_classifier.py).

Reads ``--in`` (one report per row), labels the ``--text-column`` with
:mod:`datamodules.report_labeller` and writes ``--out``: the ``--id-column`` first, then one 0/1
column per label named exactly as in CT-RATE's ``multi_abnormality_labels`` CSVs, so the output can
stand in for them (``data.labels=...``). Rows with empty or missing text are labelled all 0, and
their number is reported in a warning. Uncertain mentions ("cannot be excluded") count as positive
unless ``--uncertain-as-negative`` is given.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import pandas as pd

from ctvlp.config.errors import ConfigError
from datamodules.labels import CT_RATE_LABELS
from datamodules.report_classifier import RuleBasedLabeller, report_labeller
from datamodules.report_labeller import is_blank_report

log = logging.getLogger(__name__)


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "label-reports",
        help="label report texts with the 18 CT-RATE labels (rule-based, negation-aware)",
        description=(
            "Label each report of a CSV with the 18 CT-RATE abnormality labels by a rule-based, "
            "negation- and uncertainty-aware labeller (datamodules/report_labeller.py). Writes one row "
            "per report: the id column, then one 0/1 column per label with CT-RATE's column names. "
            "Empty or missing report texts are labelled all 0 and counted in a warning."
        ),
    )
    parser.add_argument("--in", dest="input", type=Path, required=True, metavar="CSV", help="reports CSV")
    parser.add_argument(
        "--text-column", default="Findings_EN", help="column holding the report text (default: Findings_EN)"
    )
    parser.add_argument(
        "--id-column", default="VolumeName", help="column identifying each report (default: VolumeName)"
    )
    parser.add_argument("--out", type=Path, required=True, metavar="CSV", help="labels CSV to write")
    parser.add_argument(
        "--uncertain-as-negative",
        action="store_true",
        help="score hedged mentions ('possible', 'cannot be excluded') 0 instead of 1",
    )
    parser.add_argument(
        "--classifier",
        metavar="DIR",
        help="label with this local Hugging Face sequence-classification model instead (e.g. CT-RATE's "
        "RadBERT classifier saved with save_pretrained; its id2label names the 18 labels)",
    )
    parser.add_argument(
        "--threshold", type=float, default=0.5, help="--classifier: sigmoid probability of a present label"
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    if not args.input.is_file():
        raise FileNotFoundError(f"--in: {args.input} does not exist")
    # Strings throughout: ids such as "001" keep their zeros; empty cells become NaN (counted below).
    frame = pd.read_csv(args.input, dtype=str, encoding="utf-8-sig")
    frame.columns = [str(c).strip() for c in frame.columns]
    for option, column in (("--id-column", args.id_column), ("--text-column", args.text_column)):
        if column not in frame.columns:
            print(
                f"ctvlp label-reports: error: {args.input} has no column {column!r} ({option}); "
                f"its columns are: {list(frame.columns)}",
                file=sys.stderr,
            )
            return 2
    texts = frame[args.text_column].tolist()
    empty = sum(is_blank_report(text) for text in texts)
    if args.classifier and args.uncertain_as_negative:
        raise ConfigError(
            "--uncertain-as-negative is a rule of the rule-based labeller; --classifier has none"
        )
    labeller = (
        report_labeller(args.classifier, args.threshold)
        if args.classifier
        else RuleBasedLabeller(uncertain_as_positive=not args.uncertain_as_negative)
    )
    labels = labeller(texts)
    out = pd.DataFrame(labels, columns=CT_RATE_LABELS)
    out.insert(0, args.id_column, frame[args.id_column].to_numpy())
    args.out.parent.mkdir(parents=True, exist_ok=True)
    out.to_csv(args.out, index=False)
    if empty:
        log.warning(
            "%d of %d report(s) have an empty %r and were labelled all 0", empty, len(texts), args.text_column
        )
    positives = ", ".join(
        f"{name} {int(n)}" for name, n in zip(CT_RATE_LABELS, labels.sum(axis=0), strict=True)
    )
    print(
        f"label-reports: {len(texts) - empty} report(s) labelled, {empty} empty (all 0); "
        f"positives: {positives}; written to {args.out} "
        f"(labeller: {labeller.name})"
    )
    return 0
