"""Merlin (abdominal CT) on disk -> plain records.

Layout under the data root (the Stanford AIMI download; volumes may sit in any sub-folder)::

    <study_id>.nii.gz                        one volume per study (e.g. merlin_data/<study_id>.nii.gz)
    reports_final.xlsx                       columns "study id", "Findings", "Split" (train/val/test)
    zero_shot_findings_disease_cls.csv       "study id" + the 30 diseases, coded 1 / 0 / -1
    metadata.csv                             optional (phase, kVp, slice thickness; a "patient id"
                                             column, when present, gives patient-level ids)

The ``Findings`` cell holds the whole report; text after ``IMPRESSION:`` becomes the impressions.
Labels: -1 (not mentioned or uncertain) and blanks are NaN = unknown, masked out everywhere. A study
without a label row keeps all 30 labels unknown (logged); the NIfTI header geometry and scaling are
trusted (Merlin's files were converted from DICOM with their real geometry). Splits are Merlin's own.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from datamodules.errors import DataRootError, MissingLabelColumnError
from datamodules.labels import MERLIN_LABELS
from datamodules.records import Record
from datamodules.sources.common import (
    SAFE_ID,
    SPLIT_NAMES,
    Rejected,
    find_column,
    find_files,
    label_value,
    read_csv,
    require_columns,
    rows_by_id,
    split_report,
    text_problems,
)
from datamodules.sources.ct_rate import SourceScan

log = logging.getLogger(__name__)

SOURCE = "merlin"
VOLUME_SUFFIX = ".nii.gz"
REPORTS = "reports_final.xlsx"
LABELS = "zero_shot_findings_disease_cls.csv"
METADATA = "metadata.csv"
ID_COLUMN = "study id"
FINDINGS_COLUMN = "Findings"
SPLIT_COLUMN = "Split"
PATIENT_COLUMN = "patient id"
SPLITS = SPLIT_NAMES

EXPECTED_LAYOUT = f"""\
Expected the Merlin layout under the data root:
  <study_id>.nii.gz files (any sub-folder)
  {REPORTS}  (columns "{ID_COLUMN}", "{FINDINGS_COLUMN}", "{SPLIT_COLUMN}")
  {LABELS}  ("{ID_COLUMN}" + 30 disease columns, 1 / 0 / -1)
  optional: {METADATA}
Run `ctvlp phantom --source merlin --out DIR` for a phantom Merlin."""


def resolve_root(root: Path | str) -> Path:
    """The Merlin root (the folder with ``reports_final.xlsx``); checks the layout."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataRootError(f"Merlin data root {root} does not exist or is not a folder.\n{EXPECTED_LAYOUT}")
    missing = [name for name in (REPORTS, LABELS) if not (root / name).is_file()]
    if missing:
        raise DataRootError(f"Merlin data root {root} lacks {', '.join(missing)}.\n{EXPECTED_LAYOUT}")
    return root


def scan_merlin(root: Path, label_names: list[str] = MERLIN_LABELS) -> SourceScan:
    """Scan a Merlin copy into records; every problem with one study becomes a rejected row."""
    root = resolve_root(root)
    volumes, twice = find_files(root, VOLUME_SUFFIX)
    reports_df = _read_xlsx(root / REPORTS)
    columns = require_columns(
        reports_df, root / REPORTS, [ID_COLUMN, FINDINGS_COLUMN, SPLIT_COLUMN], EXPECTED_LAYOUT
    )
    reports, report_dups = rows_by_id(reports_df, columns[ID_COLUMN], REPORTS)

    labels_df = read_csv(root / LABELS, EXPECTED_LAYOUT)
    label_id = require_columns(labels_df, root / LABELS, [ID_COLUMN], EXPECTED_LAYOUT)[ID_COLUMN]
    label_columns = {name: find_column(labels_df, name) for name in label_names}
    missing = [name for name, column in label_columns.items() if column is None]
    if missing:
        found = [c for c in labels_df.columns if c != label_id]
        raise MissingLabelColumnError(
            f"{root / LABELS} lacks label column(s) {missing}; columns found: {found}"
        )
    labels, label_dups = rows_by_id(labels_df, label_id, LABELS)
    patients = _patients(root / METADATA)

    records: list[Record] = []
    rejected: list[Rejected] = []
    unlabelled = 0
    for sid in sorted(set(volumes) | set(reports) | report_dups | set(labels) | label_dups):
        path = volumes.get(sid)
        reasons: list[str] = []
        if path is None:
            where = REPORTS if (sid in reports or sid in report_dups) else LABELS
            reasons.append(f"row in {where} without a volume file")
        elif sid in twice:
            reasons.append("volume file found more than once: " + ", ".join(str(p) for p in twice[sid]))
        if sid in report_dups:
            reasons.append(f"duplicate '{ID_COLUMN}' rows in {REPORTS}")
        elif sid not in reports and path is not None:
            reasons.append(f"missing report: no row in {REPORTS}")
        if sid in label_dups:
            reasons.append(f"duplicate '{ID_COLUMN}' rows in {LABELS}")
        if not SAFE_ID.match(sid):
            reasons.append("study id is not usable as a file name")
        report = reports.get(sid)
        split = ""
        sections: dict[str, str] = {}
        if report is not None:
            text = str(report[columns[FINDINGS_COLUMN]])
            reasons += text_problems([text], REPORTS)
            sections = split_report(text)
            if not sections["findings"]:
                reasons.append(f"missing or empty {FINDINGS_COLUMN} in {REPORTS}")
            raw_split = str(report[columns[SPLIT_COLUMN]]).strip().lower()
            split = SPLITS.get(raw_split, "")
            if not split:
                reasons.append(
                    f"unknown {SPLIT_COLUMN} {raw_split!r} (expected one of {sorted(set(SPLITS))})"
                )
        if reasons:
            rejected.append((sid, str(path or ""), "; ".join(reasons)))
            continue
        assert path is not None
        label_row = labels.get(sid)
        if label_row is None:
            unlabelled += 1
            values = {name: float("nan") for name in label_names}
        else:
            values = {name: label_value(label_row[str(label_columns[name])]) for name in label_names}
        records.append(
            Record(
                id=sid,
                patient_id=patients.get(sid, sid),
                split=split,
                image_path=path,
                spacing=None,  # Merlin's NIfTI headers are the truth
                sections=sections,
                labels=values,
                source=SOURCE,
            )
        )
    if unlabelled:
        log.warning(
            "Merlin: %d studies have no row in %s; their labels are unknown (NaN)", unlabelled, LABELS
        )
    log.info("Merlin: %d records, %d rejected (root %s)", len(records), len(rejected), root)
    return SourceScan(records=records, rejected=rejected)


def _read_xlsx(path: Path) -> pd.DataFrame:
    try:
        df = pd.read_excel(path, dtype=str, engine="openpyxl")
    except Exception as error:  # a broken workbook is a layout problem, not one study's
        raise DataRootError(
            f"cannot read {path}: {type(error).__name__}: {error}\n{EXPECTED_LAYOUT}"
        ) from error
    return df.fillna("")


def _patients(path: Path) -> dict[str, str]:
    """study id -> patient id from metadata.csv when it has such a column (else studies stand alone)."""
    if not path.is_file():
        return {}
    df = read_csv(path, EXPECTED_LAYOUT)
    sid, pid = find_column(df, ID_COLUMN), find_column(df, PATIENT_COLUMN)
    if sid is None or pid is None:
        return {}
    return {str(s).strip(): str(p).strip() for s, p in zip(df[sid], df[pid], strict=True) if str(p).strip()}
