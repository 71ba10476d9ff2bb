"""``ctvlp label-reports`` end to end: a reports CSV in, CT-RATE-style label CSV out, through the CLI."""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd
import pytest

from ctvlp.cli import main
from datamodules.labels import CT_RATE_LABELS


def _write_reports(path: Path) -> None:
    frame = pd.DataFrame(
        {
            "VolumeName": ["valid_1_a_1.nii.gz", "valid_2_a_1.nii.gz", "valid_3_a_1.nii.gz", "007"],
            "Findings_EN": [
                "Mild cardiomegaly. No pleural or pericardial effusion was detected.",
                "",  # empty: labelled all 0 and counted
                "Coronary artery calcification. Atelectasis cannot be excluded. A port catheter is observed.",
                "   ",  # blanks only: also empty
            ],
        }
    )
    frame.to_csv(path, index=False)


def _expected(*positive: str) -> list[int]:
    return [int(name in positive) for name in CT_RATE_LABELS]


def test_label_reports_writes_ct_rate_columns(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    reports, out = tmp_path / "reports.csv", tmp_path / "sub" / "labels.csv"
    _write_reports(reports)
    argv = ["label-reports", "--in", str(reports), "--text-column", "Findings_EN"]
    with caplog.at_level(logging.WARNING):
        code = main([*argv, "--id-column", "VolumeName", "--out", str(out)])
    assert code == 0
    labels = pd.read_csv(out, dtype={"VolumeName": str})
    # The id column first, then CT-RATE's label columns in its order, as its label CSVs.
    assert list(labels.columns) == ["VolumeName", *CT_RATE_LABELS]
    assert labels["VolumeName"].tolist() == [
        "valid_1_a_1.nii.gz",
        "valid_2_a_1.nii.gz",
        "valid_3_a_1.nii.gz",
        "007",
    ]
    rows = labels[CT_RATE_LABELS].to_numpy().tolist()
    assert rows[0] == _expected("Cardiomegaly")
    assert rows[1] == _expected()
    assert rows[2] == _expected("Coronary artery wall calcification", "Atelectasis", "Medical material")
    assert rows[3] == _expected()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("2 of 4 report(s)" in message and "Findings_EN" in message for message in warnings), warnings
    summary = capsys.readouterr().out
    assert "2 report(s) labelled, 2 empty" in summary
    assert "Cardiomegaly 1" in summary and str(out) in summary

    # Hedged mentions scored 0 on request.
    strict = tmp_path / "strict.csv"
    assert main([*argv, "--out", str(strict), "--uncertain-as-negative"]) == 0
    row = pd.read_csv(strict)[CT_RATE_LABELS].to_numpy()[2].tolist()
    assert row == _expected("Coronary artery wall calcification", "Medical material")
    assert "uncertain as negative" in capsys.readouterr().out


def test_label_reports_missing_column(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    reports = tmp_path / "reports.csv"
    _write_reports(reports)
    code = main(
        ["label-reports", "--in", str(reports), "--text-column", "Findings", "--out", str(tmp_path / "x.csv")]
    )
    assert code == 2
    error = capsys.readouterr().err
    assert "'Findings'" in error and "--text-column" in error
    assert "VolumeName" in error and "Findings_EN" in error  # the columns that exist
    assert not (tmp_path / "x.csv").exists()


def test_label_reports_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["label-reports", "--in", str(tmp_path / "nope.csv"), "--out", str(tmp_path / "x.csv")])
    assert code == 2
    assert "nope.csv" in capsys.readouterr().err
