"""RAD-ChestCT on disk -> plain records (images and labels; the public subset has no reports).

Layout under the data root (volumes and tables may sit in sub-folders)::

    trn<NNNNN>.npz, val<NNNNN>.npz, tst<NNNNN>.npz     array "ct": int16 HU, 0.8 mm isotropic
    imgtrain_Abnormality_and_Location_Labels.csv        NoteAcc_DEID + <abnormality>*<location> (0/1)
    imgvalid_Abnormality_and_Location_Labels.csv
    imgtest_Abnormality_and_Location_Labels.csv

The split is the label table a volume's row is in (train / val / test). The label space
(``labels.RAD_CHESTCT_LABELS``) is the 84 per-abnormality summary labels, 1 when the abnormality is
marked at any of the 52 locations (a plain ``<abnormality>`` column is used as is when a table has
one), plus the location-specific labels the CT-RATE mapping needs (``calcification*aorta``, ...).
The ``.npz`` carries no geometry: every record gets the dataset's 0.8 mm isotropic spacing and HU
slope 1 / intercept 0 (see ``datamodules/readers.py`` for the array orientation). Patient ids are not
public: each volume is its own patient.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

from datamodules.errors import DataRootError, MissingLabelColumnError
from datamodules.labels import RAD_CHESTCT_LABELS
from datamodules.records import Record
from datamodules.sources.common import SAFE_ID, Rejected, find_files, find_table, read_csv, rows_by_id
from datamodules.sources.ct_rate import SourceScan

log = logging.getLogger(__name__)

SOURCE = "rad_chestct"
SPACING_MM = 0.8
VOLUME_SUFFIX = ".npz"
ID_COLUMN = "NoteAcc_DEID"
# our split -> (label table, volume-name prefix)
TABLES: dict[str, tuple[str, str]] = {
    "train": ("imgtrain_Abnormality_and_Location_Labels.csv", "trn"),
    "val": ("imgvalid_Abnormality_and_Location_Labels.csv", "val"),
    "test": ("imgtest_Abnormality_and_Location_Labels.csv", "tst"),
}

EXPECTED_LAYOUT = f"""\
Expected the RAD-ChestCT layout under the data root:
  trn*.npz / val*.npz / tst*.npz volumes (array "ct", int16 HU, 0.8 mm isotropic)
  {", ".join(table for table, _ in TABLES.values())}
  (columns {ID_COLUMN} and <abnormality>*<location>)
Run `ctvlp phantom --source rad_chestct --out DIR` for a phantom RAD-ChestCT."""


def _find_tables(root: Path) -> dict[str, Path]:
    found = {split: find_table(root, [name]) for split, (name, _) in TABLES.items()}
    return {split: path for split, path in found.items() if path is not None}


def resolve_root(root: Path | str) -> Path:
    """The RAD-ChestCT root; checks that at least one label table is there."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataRootError(
            f"RAD-ChestCT data root {root} does not exist or is not a folder.\n{EXPECTED_LAYOUT}"
        )
    if not _find_tables(root):
        raise DataRootError(f"RAD-ChestCT data root {root} has no label table.\n{EXPECTED_LAYOUT}")
    return root


def summary_and_location_labels(
    row: dict[str, str], columns: list[str], label_names: list[str]
) -> dict[str, float]:
    """One label-table row -> the requested labels (summary: any location; ``a*l``: that cell)."""
    out: dict[str, float] = {}
    for name in label_names:
        if name in columns:
            cells = [row[name]]
        else:
            cells = [row[c] for c in columns if c.split("*", 1)[0] == name and "*" in c]
        values = [_cell(c) for c in cells]
        if any(v == 1.0 for v in values):
            out[name] = 1.0
        elif values and all(v == 0.0 for v in values):
            out[name] = 0.0
        else:
            out[name] = math.nan
    return out


def scan_rad_chestct(root: Path, label_names: list[str] = RAD_CHESTCT_LABELS) -> SourceScan:
    """Scan a RAD-ChestCT copy into records; problems with single volumes or rows are rejected rows."""
    root = resolve_root(root)
    volumes, twice = find_files(root, VOLUME_SUFFIX)
    tables = _find_tables(root)
    rows: dict[str, tuple[str, dict[str, str], list[str]]] = {}  # id -> (split, row, columns)
    duplicates: set[str] = set()
    for split, path in tables.items():
        df = read_csv(path, EXPECTED_LAYOUT)
        df.columns = [str(c).strip() for c in df.columns]
        if ID_COLUMN not in df.columns:
            raise DataRootError(f"{path} lacks column {ID_COLUMN}; columns found: {list(df.columns)[:8]}...")
        columns = [c for c in df.columns if c != ID_COLUMN]
        _check_label_columns(path, columns, label_names)
        table_rows, dups = rows_by_id(
            df, ID_COLUMN, path.name, normalise=lambda s: s.strip().removesuffix(".npz")
        )
        duplicates |= dups
        for rid, row in table_rows.items():
            if rid in rows:
                duplicates.add(rid)
            else:
                rows[rid] = (split, row, columns)
    for rid in duplicates:
        rows.pop(rid, None)

    records: list[Record] = []
    rejected: list[Rejected] = []
    for rid in sorted(set(volumes) | set(rows) | duplicates):
        path = volumes.get(rid)
        reasons: list[str] = []
        if path is None:
            reasons.append("label row without a volume file")
        elif rid in twice:
            reasons.append("volume file found more than once: " + ", ".join(str(p) for p in twice[rid]))
        if rid in duplicates:
            reasons.append(f"duplicate {ID_COLUMN} rows in the label tables")
        elif rid not in rows and path is not None:
            reasons.append("no row in any label table")
        if not SAFE_ID.match(rid):
            reasons.append("volume id is not usable as a file name")
        if rid in rows and path is not None:
            prefix = TABLES[rows[rid][0]][1]
            if not rid.startswith(prefix):
                reasons.append(f"volume {rid} is in the {rows[rid][0]} table but lacks the '{prefix}' prefix")
        if reasons:
            rejected.append((rid, str(path or ""), "; ".join(reasons)))
            continue
        assert path is not None
        split, row, columns = rows[rid]
        records.append(
            Record(
                id=rid,
                patient_id=rid,
                split=split,
                image_path=path,
                spacing=(SPACING_MM, SPACING_MM, SPACING_MM),
                labels=summary_and_location_labels(row, columns, label_names),
                source=SOURCE,
            )
        )
    log.info("RAD-ChestCT: %d records, %d rejected (root %s)", len(records), len(rejected), root)
    return SourceScan(records=records, rejected=rejected)


def _check_label_columns(path: Path, columns: list[str], label_names: list[str]) -> None:
    abnormalities = {c.split("*", 1)[0] for c in columns if "*" in c}
    missing = [n for n in label_names if n not in columns and ("*" in n or n not in abnormalities)]
    if missing:
        raise MissingLabelColumnError(
            f"{path} lacks label column(s) {missing} (neither a column nor an abnormality with "
            f"<abnormality>*<location> columns); {len(columns)} label columns found"
        )


def _cell(text: str) -> float:
    try:
        value = float(str(text).strip())
    except ValueError:
        return math.nan
    return value if value in (0.0, 1.0) else math.nan
