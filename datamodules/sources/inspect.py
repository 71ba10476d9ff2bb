"""INSPECT (CT pulmonary angiograms of pulmonary-embolism patients, Stanford AIMI) on disk -> records.

Layout under the data root (the public release; volumes and tables may sit in sub-folders)::

    CTPA/<impression_id>.nii.gz              one CTPA volume per study (NIfTI with its real geometry)
    Final_impressions.csv                    "impression_id", "impressions" (the report's impression)
    labels_20250611.tsv                      "impression_id" + pe_positive_nlp and the 7 outcomes
      (or Final_labels.csv)                  (True / False / Censored)
    splits_20250611.tsv                      "impression_id", "split" (train / valid / test)
      (or Final_splits.csv)
    study_mapping_20250611.tsv               optional: "impression_id", "person_id" (patient ids)
      (or Final_mapping.csv)

Of each pair of table names the first found is read; a ``.tsv`` is tab-separated.

**Report text.** INSPECT publishes the impression section only. It becomes the record's
``impressions`` *and* its ``findings``: the CLIP text (``data.text.section``, default ``findings``),
CapPa's sections and the report metrics all read ``findings``, so an empty one would pair every
volume with an empty report. ``section: both`` does not repeat a text both sections hold
(``datamodules.text.ReportTransform``).

**Labels** (``labels.INSPECT_LABELS``): ``pe_positive`` (read from ``pe_positive_nlp``, or a
``pe_positive`` column) and the prognostic ``<x>_month_<event>`` columns under their own names.
True / 1 -> 1, False / 0 -> 0; Censored (the outcome was not observed for that long) and blank are
NaN = unknown, masked out of every loss, metric and Uniferum task; any other value is NaN too and
counted in a warning. A study without a label row keeps all labels unknown (logged).

The NIfTI header geometry and scaling are trusted (``spacing=None``), as for Merlin. Scans with a
corrupted affine or two channels (the 145 scans the Uniferum paper dropped) are quarantined by the
cache build (``datamodules.preprocess.load_hu``). Patient ids come from the mapping table when there
is one, else each study is its own patient. Splits are INSPECT's own (``valid`` -> ``val``).
"""

from __future__ import annotations

import logging
import math
from collections import defaultdict
from pathlib import Path

import pandas as pd

from datamodules.errors import DataRootError, MissingLabelColumnError
from datamodules.labels import INSPECT_LABELS
from datamodules.records import Record
from datamodules.sources.common import (
    SAFE_ID,
    SPLIT_NAMES,
    Rejected,
    find_column,
    find_files,
    find_table,
    read_csv,
    require_columns,
    rows_by_id,
    text_problems,
)
from datamodules.sources.ct_rate import SourceScan

log = logging.getLogger(__name__)

SOURCE = "inspect"
VOLUMES_DIR = "CTPA"
VOLUME_SUFFIX = ".nii.gz"
IMPRESSIONS = "Final_impressions.csv"
# Each table under its current release name, then its older one; the first found is read.
LABEL_TABLES = ("labels_20250611.tsv", "Final_labels.csv")
SPLIT_TABLES = ("splits_20250611.tsv", "Final_splits.csv")
MAPPING_TABLES = ("study_mapping_20250611.tsv", "Final_mapping.csv")
ID_COLUMN = "impression_id"
IMPRESSION_COLUMN = "impressions"
SPLIT_COLUMN = "split"
PATIENT_COLUMN = "person_id"
# Our label name -> the columns that may hold it, first match (others: their own name).
LABEL_COLUMNS: dict[str, tuple[str, ...]] = {"pe_positive": ("pe_positive_nlp", "pe_positive")}
# Label cells (lower case, stripped) -> value; numbers 1 / 0 are read as well.
CELL_VALUES: dict[str, float] = {"true": 1.0, "false": 0.0, "censored": math.nan, "": math.nan}

EXPECTED_LAYOUT = f"""\
Expected the INSPECT layout under the data root:
  {VOLUMES_DIR}/<impression_id>{VOLUME_SUFFIX} files (any sub-folder)
  {IMPRESSIONS}  (columns "{ID_COLUMN}", "{IMPRESSION_COLUMN}")
  {" or ".join(LABEL_TABLES)}  ("{ID_COLUMN}" + pe_positive_nlp and the 7 outcome columns,
      True / False / Censored)
  {" or ".join(SPLIT_TABLES)}  ("{ID_COLUMN}", "{SPLIT_COLUMN}": train / valid / test)
  optional: {" or ".join(MAPPING_TABLES)}  ("{ID_COLUMN}", "{PATIENT_COLUMN}")
Run `ctvlp phantom --source inspect --out DIR` for a phantom INSPECT."""


def _tables(root: Path) -> dict[str, Path | None]:
    return {
        "impressions": find_table(root, [IMPRESSIONS]),
        "labels": find_table(root, LABEL_TABLES),
        "splits": find_table(root, SPLIT_TABLES),
        "mapping": find_table(root, MAPPING_TABLES),
    }


def resolve_root(root: Path | str) -> Path:
    """The INSPECT root (the folder holding the tables, at any depth); checks the layout."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataRootError(f"INSPECT data root {root} does not exist or is not a folder.\n{EXPECTED_LAYOUT}")
    tables = _tables(root)
    wanted = {"impressions": (IMPRESSIONS,), "labels": LABEL_TABLES, "splits": SPLIT_TABLES}
    missing = [" or ".join(names) for key, names in wanted.items() if tables[key] is None]
    if missing:
        raise DataRootError(f"INSPECT data root {root} lacks {', '.join(missing)}.\n{EXPECTED_LAYOUT}")
    return root


def read_table(path: Path) -> pd.DataFrame:
    """A table of the release as strings: ``.tsv`` tab-separated, anything else comma-separated."""
    return read_csv(path, EXPECTED_LAYOUT, sep="\t" if path.suffix.lower() == ".tsv" else ",")


def outcome_value(text: str) -> float | None:
    """A label cell -> 1.0 / 0.0 / NaN (Censored, blank); ``None`` for a value INSPECT does not use."""
    key = str(text).strip().lower()
    if key in CELL_VALUES:
        return CELL_VALUES[key]
    try:
        value = float(key)
    except ValueError:
        return None
    return value if value in (0.0, 1.0) else None


def scan_inspect(root: Path, label_names: list[str] = INSPECT_LABELS) -> SourceScan:
    """Scan an INSPECT copy into records; every problem with one study becomes a rejected row."""
    root = resolve_root(root)
    tables = _tables(root)
    impressions_path, labels_path, splits_path = tables["impressions"], tables["labels"], tables["splits"]
    assert impressions_path is not None and labels_path is not None and splits_path is not None
    volumes, twice = find_files(root, VOLUME_SUFFIX)

    impressions_df = read_table(impressions_path)
    columns = require_columns(
        impressions_df, impressions_path, [ID_COLUMN, IMPRESSION_COLUMN], EXPECTED_LAYOUT
    )
    impressions, impression_dups = rows_by_id(impressions_df, columns[ID_COLUMN], impressions_path.name)

    labels_df = read_table(labels_path)
    label_id = require_columns(labels_df, labels_path, [ID_COLUMN], EXPECTED_LAYOUT)[ID_COLUMN]
    label_columns = {name: _label_column(labels_df, name) for name in label_names}
    missing = [name for name, column in label_columns.items() if column is None]
    if missing:
        found = [c for c in labels_df.columns if c != label_id]
        raise MissingLabelColumnError(
            f"{labels_path} lacks label column(s) {missing}; columns found: {found}"
        )
    labels, label_dups = rows_by_id(labels_df, label_id, labels_path.name)

    splits_df = read_table(splits_path)
    split_columns = require_columns(splits_df, splits_path, [ID_COLUMN, SPLIT_COLUMN], EXPECTED_LAYOUT)
    splits, split_dups = rows_by_id(splits_df, split_columns[ID_COLUMN], splits_path.name)
    patients, patient_conflicts = _patients(tables["mapping"])

    records: list[Record] = []
    rejected: list[Rejected] = []
    unlabelled = 0
    unknown_cells: dict[str, int] = defaultdict(int)
    tabled = set(impressions) | impression_dups | set(labels) | label_dups | set(splits) | split_dups
    for sid in sorted(set(volumes) | tabled):
        path = volumes.get(sid)
        reasons: list[str] = []
        if path is None:
            where = next(
                name
                for name, ids in (
                    (impressions_path.name, set(impressions) | impression_dups),
                    (labels_path.name, set(labels) | label_dups),
                    (splits_path.name, set(splits) | split_dups),
                )
                if sid in ids
            )
            reasons.append(f"row in {where} without a volume file")
        elif sid in twice:
            reasons.append("volume file found more than once: " + ", ".join(str(p) for p in twice[sid]))
        for name, dups in (
            (impressions_path.name, impression_dups),
            (labels_path.name, label_dups),
            (splits_path.name, split_dups),
        ):
            if sid in dups:
                reasons.append(f"duplicate '{ID_COLUMN}' rows in {name}")
        if sid in patient_conflicts:
            reasons.append(f"several '{PATIENT_COLUMN}' values in the mapping table")
        if not SAFE_ID.match(sid):
            reasons.append("impression id is not usable as a file name")
        text = ""
        impression = impressions.get(sid)
        if impression is not None:
            text = str(impression[columns[IMPRESSION_COLUMN]]).strip()
            reasons += text_problems([text], impressions_path.name)
            if not text:
                reasons.append(f"missing or empty {IMPRESSION_COLUMN} in {impressions_path.name}")
        elif path is not None and sid not in impression_dups:
            reasons.append(f"missing impression: no row in {impressions_path.name}")
        split = ""
        split_row = splits.get(sid)
        if split_row is not None:
            raw_split = str(split_row[split_columns[SPLIT_COLUMN]]).strip().lower()
            split = SPLIT_NAMES.get(raw_split, "")
            if not split:
                reasons.append(
                    f"unknown {SPLIT_COLUMN} {raw_split!r} in {splits_path.name} "
                    f"(expected one of {sorted(SPLIT_NAMES)})"
                )
        elif path is not None and sid not in split_dups:
            reasons.append(f"no split: no row in {splits_path.name}")
        if reasons:
            rejected.append((sid, str(path or ""), "; ".join(reasons)))
            continue
        assert path is not None
        label_row = labels.get(sid)
        values = dict.fromkeys(label_names, math.nan)
        if label_row is None:
            unlabelled += 1
        else:
            for name in label_names:
                value = outcome_value(label_row[str(label_columns[name])])
                if value is None:
                    unknown_cells[name] += 1
                else:
                    values[name] = value
        records.append(
            Record(
                id=sid,
                patient_id=patients.get(sid, sid),
                split=split,
                image_path=path,
                spacing=None,  # INSPECT's NIfTI headers are the truth
                sections={"findings": text, "impressions": text},
                labels=values,
                source=SOURCE,
            )
        )
    if unlabelled:
        log.warning(
            "INSPECT: %d studies have no row in %s; their labels are unknown (NaN)",
            unlabelled,
            labels_path.name,
        )
    if unknown_cells:
        log.warning(
            "INSPECT: label cells other than True / False / Censored / 1 / 0 / blank read as unknown "
            "(NaN): %s",
            dict(unknown_cells),
        )
    log.info("INSPECT: %d records, %d rejected (root %s)", len(records), len(rejected), root)
    return SourceScan(records=records, rejected=rejected)


def _label_column(df: pd.DataFrame, name: str) -> str | None:
    for candidate in LABEL_COLUMNS.get(name, (name,)):
        column = find_column(df, candidate)
        if column is not None:
            return column
    return None


def _patients(path: Path | None) -> tuple[dict[str, str], set[str]]:
    """impression id -> person id from the mapping table (none: every study is its own patient),
    and the ids the table gives several person ids (a study may have several rows, e.g. one per
    series, all with the same person)."""
    if path is None:
        return {}, set()
    df = read_table(path)
    columns = require_columns(df, path, [ID_COLUMN, PATIENT_COLUMN], EXPECTED_LAYOUT)
    persons: dict[str, set[str]] = defaultdict(set)
    for sid, pid in zip(df[columns[ID_COLUMN]], df[columns[PATIENT_COLUMN]], strict=True):
        sid, pid = str(sid).strip(), str(pid).strip()
        if sid and pid:
            persons[sid].add(pid)
    conflicts = {sid for sid, pids in persons.items() if len(pids) > 1}
    return {sid: next(iter(pids)) for sid, pids in persons.items() if len(pids) == 1}, conflicts
