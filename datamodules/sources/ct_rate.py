"""CT-RATE on disk -> plain records.

Reads the Hugging Face ``ibrahimhamamci/CT-RATE`` layout (volumes, report / label / metadata CSVs,
optional head-CT lists, optional TotalSegmentator organ masks under ``ts_seg/``, see
``datamodules/totalseg.py``). Spacing and HU rescale come from the metadata CSV, never from the NIfTI
header. Problems with single volumes or rows are returned as ``rejected`` (for quarantine.csv);
only a wrong layout or a missing label column raises.
"""

from __future__ import annotations

import logging
import math
import os
import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import pandas as pd

from datamodules.errors import DataRootError, MissingLabelColumnError
from datamodules.labels import CT_RATE_LABELS
from datamodules.records import Record
from datamodules.sources.common import read_csv, rows_by_id
from datamodules.totalseg import ct_rate_masks, ct_rate_ts_total

log = logging.getLogger(__name__)

SOURCE = "ct_rate"
VOLUME_SUFFIX = ".nii.gz"
REPLACEMENT_CHAR = "\ufffd"


@dataclass(frozen=True)
class _SplitLayout:
    folder: str
    prefix: str  # VolumeName prefix, also the patient-id prefix
    split: str  # our split name: the official validation split is our test split
    reports: str
    labels: str
    metadata: str
    no_chest: str


SPLIT_LAYOUTS: tuple[_SplitLayout, ...] = (
    _SplitLayout(
        folder="train_fixed",
        prefix="train",
        split="train",
        reports="radiology_text_reports/train_reports.csv",
        labels="multi_abnormality_labels/train_predicted_labels.csv",
        metadata="metadata/train_metadata.csv",
        no_chest="no_chest_train.txt",
    ),
    _SplitLayout(
        folder="valid_fixed",
        prefix="valid",
        split="test",
        reports="radiology_text_reports/validation_reports.csv",
        labels="multi_abnormality_labels/valid_predicted_labels.csv",
        metadata="metadata/validation_metadata.csv",
        no_chest="no_chest_valid.txt",
    ),
)

REPORT_COLUMNS = ["VolumeName", "Findings_EN"]
METADATA_COLUMNS = ["VolumeName", "XYSpacing", "ZSpacing", "RescaleSlope", "RescaleIntercept"]

EXPECTED_LAYOUT = """\
Expected the CT-RATE layout (the folder that holds these, or its parent with a `dataset/` folder):
  train_fixed/train_<pid>/train_<pid>_<scan>/train_<pid>_<scan>_<recon>.nii.gz   (and/or valid_fixed/valid_...)
  radiology_text_reports/train_reports.csv, validation_reports.csv
  multi_abnormality_labels/train_predicted_labels.csv, valid_predicted_labels.csv
  metadata/train_metadata.csv, validation_metadata.csv
  optional: no_chest_train.txt, no_chest_valid.txt
Run `make demo` to generate a phantom CT-RATE, or point data.root at a CT-RATE copy."""

_VOLUME_NAME = re.compile(r"^(?P<prefix>train|valid)_(?P<pid>[^_]+)_(?P<scan>[^_]+)_(?P<recon>[^_]+)$")
_NUMBER = re.compile(
    r"[-+]?(?:nan|inf(?:inity)?|\d+(?:\.\d*)?(?:[eE][-+]?\d+)?|\.\d+(?:[eE][-+]?\d+)?)",
    re.IGNORECASE,
)


@dataclass
class SourceScan:
    """What a source found: usable records, and (id, path, reason) for everything it had to reject."""

    records: list[Record]
    rejected: list[tuple[str, str, str]]


def scan_ct_rate(
    root: Path, label_names: list[str] = CT_RATE_LABELS, all_reconstructions: bool = False
) -> SourceScan:
    """Scan a CT-RATE copy into records (head CTs removed): one reconstruction per acquisition
    (COLIPRI, CT-CLIP), or every reconstruction with ``all_reconstructions`` (Uniferum)."""
    root = resolve_root(root)
    records: list[Record] = []
    rejected: list[tuple[str, str, str]] = []
    for layout in SPLIT_LAYOUTS:
        if not (root / layout.folder).is_dir():
            log.warning("CT-RATE: no %s/ under %s; split %r is empty", layout.folder, root, layout.split)
            continue
        split_records, split_rejected = _scan_split(root, layout, list(label_names), all_reconstructions)
        records.extend(split_records)
        rejected.extend(split_rejected)
    records.sort(key=lambda r: r.id)
    log.info("CT-RATE: %d records, %d rejected (root %s)", len(records), len(rejected), root)
    return SourceScan(records=records, rejected=rejected)


def resolve_root(root: Path | str) -> Path:
    """The folder that holds the CT-RATE layout (``root/dataset`` when that exists); checks the layout."""
    given = Path(root).expanduser()
    if not given.is_dir():
        raise DataRootError(
            f"CT-RATE data root {given} does not exist or is not a folder.\n{EXPECTED_LAYOUT}"
        )
    root = given / "dataset" if (given / "dataset").is_dir() else given
    present = [layout for layout in SPLIT_LAYOUTS if (root / layout.folder).is_dir()]
    if not present:
        raise DataRootError(
            f"CT-RATE data root {root} has neither train_fixed/ nor valid_fixed/.\n{EXPECTED_LAYOUT}"
        )
    missing = [
        rel
        for layout in present
        for rel in (layout.reports, layout.labels, layout.metadata)
        if not (root / rel).is_file()
    ]
    if missing:
        raise DataRootError(f"CT-RATE data root {root} lacks {', '.join(missing)}.\n{EXPECTED_LAYOUT}")
    return root


def parse_xy_spacing(text: str) -> tuple[float, float] | None:
    """``"[0.75, 0.8]"`` -> (x, y) = (0.8, 0.75); one number means both. ``None`` if unparseable.

    XYSpacing is DICOM PixelSpacing: [row spacing (along y), column spacing (along x)].
    """
    values = [float(v) for v in _NUMBER.findall(str(text))]
    if len(values) == 1:
        return values[0], values[0]
    if len(values) == 2:
        return values[1], values[0]
    return None


def volume_id(name: str) -> str:
    """VolumeName (``train_12_a_1.nii.gz``) -> record id (``train_12_a_1``)."""
    name = name.strip()
    for suffix in (VOLUME_SUFFIX, ".nii"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


# --------------------------------------------------------------------------------------------- internals


def _scan_split(
    root: Path, layout: _SplitLayout, label_names: list[str], all_reconstructions: bool = False
) -> tuple[list[Record], list[tuple[str, str, str]]]:
    volumes, twice = _find_volumes(root / layout.folder)
    reports, report_dups = _rows_by_id(_read_csv(root / layout.reports, REPORT_COLUMNS), layout.reports)
    labels_df = _read_csv(root / layout.labels, ["VolumeName"])
    missing_labels = [name for name in label_names if name not in labels_df.columns]
    if missing_labels:
        found = [c for c in labels_df.columns if c != "VolumeName"]
        raise MissingLabelColumnError(
            f"{root / layout.labels} lacks label column(s) {missing_labels}; columns found: {found}"
        )
    labels, label_dups = _rows_by_id(labels_df, layout.labels)
    metadata, meta_dups = _rows_by_id(_read_csv(root / layout.metadata, METADATA_COLUMNS), layout.metadata)
    no_chest = read_no_chest(root, layout.no_chest)

    tables = {layout.reports: reports, layout.labels: labels, layout.metadata: metadata}
    duplicates = {layout.reports: report_dups, layout.labels: label_dups, layout.metadata: meta_dups}
    all_ids = set(volumes) | set(reports) | set(labels) | set(metadata)
    for dups in duplicates.values():
        all_ids |= dups

    candidates: list[tuple[Record, dict[str, str]]] = []
    rejected: list[tuple[str, str, str]] = []
    excluded = 0
    for vid in sorted(all_ids):
        if vid in no_chest:
            excluded += 1
            continue
        path = volumes.get(vid)
        reasons: list[str] = []
        if path is None:
            reasons.append("CSV row without a volume file under " + layout.folder)
        elif vid in twice:
            reasons.append("volume file found more than once: " + ", ".join(str(p) for p in twice[vid]))
        for csv_name, table in tables.items():
            if vid in duplicates[csv_name]:
                reasons.append(f"duplicate VolumeName rows in {csv_name}")
            elif vid not in table and path is not None:
                reasons.append(f"no row in {csv_name}")
        match = _VOLUME_NAME.match(vid)
        if match is None or match["prefix"] != layout.prefix:
            reasons.append(f"VolumeName does not look like {layout.prefix}_<pid>_<scan>_<recon>.nii.gz")
        if reasons:
            rejected.append((vid, str(path or ""), "; ".join(reasons)))
            continue
        assert path is not None and match is not None
        record, reason = _make_record(
            vid, path, match, layout, reports[vid], labels[vid], metadata[vid], label_names
        )
        if record is None:
            rejected.append((vid, str(path), reason))
        else:
            candidates.append((record, metadata[vid]))

    if all_reconstructions:
        records, dropped = [record for record, _ in candidates], 0
    else:
        records, dropped = _one_reconstruction_per_acquisition(candidates)
    for record in records:  # TotalSegmentator organ masks under ts_seg/, where present
        record.masks = ct_rate_masks(root, record.image_path)
        record.ts_total = ct_rate_ts_total(root, record.image_path)
    log.info(
        "CT-RATE %s: %d volume files, %d head CTs excluded (%s), %d extra reconstructions dropped, "
        "%d rejected, %d records",
        layout.split,
        len(volumes),
        excluded,
        layout.no_chest,
        dropped,
        len(rejected),
        len(records),
    )
    return records, rejected


def _find_volumes(folder: Path) -> tuple[dict[str, Path], dict[str, list[Path]]]:
    """One walk of the tree: id -> path, plus ids whose file name occurs more than once."""
    paths: dict[str, list[Path]] = defaultdict(list)
    for dirpath, _, filenames in os.walk(folder):
        for name in filenames:
            if name.endswith(VOLUME_SUFFIX):
                paths[name[: -len(VOLUME_SUFFIX)]].append(Path(dirpath) / name)
    found = {vid: sorted(ps)[0] for vid, ps in paths.items()}
    twice = {vid: sorted(ps) for vid, ps in paths.items() if len(ps) > 1}
    return found, twice


def _read_csv(path: Path, required: list[str]) -> pd.DataFrame:
    df = read_csv(path, EXPECTED_LAYOUT)
    df.columns = [str(c).strip() for c in df.columns]
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise DataRootError(
            f"{path} lacks column(s) {missing}; columns found: {list(df.columns)}\n{EXPECTED_LAYOUT}"
        )
    return df


def _rows_by_id(df: pd.DataFrame, csv_name: str) -> tuple[dict[str, dict[str, str]], set[str]]:
    """VolumeName (without the suffix) -> row; duplicates as :func:`rows_by_id` treats them."""
    return rows_by_id(df, "VolumeName", csv_name, normalise=volume_id)


def read_no_chest(root: Path, name: str) -> set[str]:
    """The volume ids a ``no_chest_*.txt`` list names (head CTs; beside the tables or in metadata/)."""
    for path in (root / name, root / "metadata" / name):
        if path.is_file():
            lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
            return {volume_id(line) for line in lines if line.strip()}
    return set()


@dataclass(frozen=True)
class NonChestScans:
    """A split's non-chest scans for the retrieval protocol (COLIPRI App. C.1).

    ``in_split``: its volume ids in an acquisition a ``no_chest_*.txt`` list names (a cache built
    without the list still holds them); ``before``: listed acquisitions of the split that are not in
    it, left out when the cache was built (the whole official validation split, our test split,
    counts them all; a split carved from official train only those of its own patients)."""

    in_split: frozenset[str]
    before: int


def _acquisition(vid: str) -> tuple[str, str, str] | None:
    match = _VOLUME_NAME.match(volume_id(vid))
    return None if match is None else (match["prefix"], match["pid"], match["scan"])


def non_chest_scans(root: Path | str, volume_ids: list[str]) -> NonChestScans:
    """The scans of a split (``volume_ids``, CT-RATE record ids) that its ``no_chest_*.txt`` lists
    mark as non-chest, matched by acquisition (``<prefix>_<pid>_<scan>``: a listed reconstruction
    marks its scan). No list (or not a CT-RATE root): nothing is non-chest."""
    try:
        root = resolve_root(root)
    except DataRootError:
        return NonChestScans(frozenset(), 0)
    present = {key: vid for vid in volume_ids if (key := _acquisition(vid)) is not None}
    patients = {(prefix, pid) for prefix, pid, _ in present}
    in_split: set[str] = set()
    before = 0
    for layout in SPLIT_LAYOUTS:
        if not any(prefix == layout.prefix for prefix, _, _ in present):
            continue
        listed = {key for vid in read_no_chest(root, layout.no_chest) if (key := _acquisition(vid))}
        for key in listed:
            if key in present:
                in_split.update(vid for vid in volume_ids if _acquisition(vid) == key)
            elif layout.split == "test" or key[:2] in patients:
                before += 1
    return NonChestScans(frozenset(in_split), before)


def _float(text: str) -> float:
    try:
        return float(str(text).strip())
    except ValueError:
        return math.nan


def _make_record(
    vid: str,
    path: Path,
    match: re.Match[str],
    layout: _SplitLayout,
    report: dict[str, str],
    label_row: dict[str, str],
    meta: dict[str, str],
    label_names: list[str],
) -> tuple[Record | None, str]:
    reasons: list[str] = []
    findings = str(report.get("Findings_EN", ""))
    impressions = str(report.get("Impressions_EN", ""))
    if REPLACEMENT_CHAR in findings or REPLACEMENT_CHAR in impressions:
        reasons.append(f"non-UTF-8 text in {layout.reports}")
    if not findings.strip():
        reasons.append("missing or empty Findings_EN")

    xy = parse_xy_spacing(meta["XYSpacing"])
    z = _float(meta["ZSpacing"])
    spacing = (*xy, z) if xy is not None else None
    if spacing is None or not all(math.isfinite(s) and s > 0 for s in spacing):
        reasons.append(f"bad spacing XYSpacing={meta['XYSpacing']!r} ZSpacing={meta['ZSpacing']!r}")
    slope, intercept = _float(meta["RescaleSlope"]), _float(meta["RescaleIntercept"])
    if not (math.isfinite(slope) and slope != 0 and math.isfinite(intercept)):
        reasons.append(
            f"bad HU rescale RescaleSlope={meta['RescaleSlope']!r} RescaleIntercept={meta['RescaleIntercept']!r}"
        )
    if reasons:
        return None, "; ".join(reasons)
    assert spacing is not None
    record = Record(
        id=vid,
        patient_id=f"{match['prefix']}_{match['pid']}",
        split=layout.split,
        image_path=path,
        spacing=(float(spacing[0]), float(spacing[1]), float(spacing[2])),
        hu_slope=slope,
        hu_intercept=intercept,
        sections={"findings": findings.strip(), "impressions": impressions.strip()},
        labels={name: _float(label_row[name]) for name in label_names},
        source=SOURCE,
    )
    return record, ""


def _in_plane_size(record: Record, meta: dict[str, str]) -> float:
    rows, columns = _float(meta.get("Rows", "")), _float(meta.get("Columns", ""))
    if math.isfinite(rows) and math.isfinite(columns) and rows > 0 and columns > 0:
        return rows * columns
    try:
        shape = nib.load(record.image_path).shape  # header only
        return float(shape[0] * shape[1])
    except Exception:  # an unreadable file loses the tie; preprocessing will quarantine it if kept
        return math.inf


def _recon_key(recon: str) -> tuple[int, int | str]:
    return (0, int(recon)) if recon.isdigit() else (1, recon)


def _one_reconstruction_per_acquisition(
    candidates: list[tuple[Record, dict[str, str]]],
) -> tuple[list[Record], int]:
    """Per (patient, scan): the smallest in-plane matrix, ties -> lowest reconstruction number."""
    groups: dict[tuple[str, str], list[tuple[Record, dict[str, str]]]] = defaultdict(list)
    for record, meta in candidates:
        match = _VOLUME_NAME.match(record.id)
        assert match is not None
        groups[(record.patient_id, match["scan"])].append((record, meta))
    kept: list[Record] = []
    for group in groups.values():
        if len(group) == 1:
            kept.append(group[0][0])
            continue
        best = min(
            group,
            key=lambda item: (
                _in_plane_size(item[0], item[1]),
                _recon_key(_VOLUME_NAME.match(item[0].id)["recon"]),  # type: ignore[index]
            ),
        )
        kept.append(best[0])
    return kept, len(candidates) - len(kept)
