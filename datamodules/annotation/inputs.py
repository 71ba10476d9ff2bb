"""The reports to annotate, read from a source's own tables (no volumes needed).

Volumes that share one report (CT-RATE's reconstructions of one scan) are annotated once: an
:class:`Item` holds the report text and every volume id it belongs to; its id is the first of them.
CT-RATE's head CTs (its ``no_chest_*.txt`` lists) are left out, as the data layer leaves them out:
their reports would cost LLM calls and never be read.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from datamodules.errors import DataRootError
from datamodules.labels import CT_RATE_LABELS, MERLIN_LABELS
from datamodules.sources import ct_rate, merlin
from datamodules.sources.common import split_report

SOURCES = ("ct_rate", "merlin")


@dataclass(frozen=True)
class Item:
    id: str
    volumes: tuple[str, ...]
    findings: str
    impressions: str


def label_names(source: str) -> tuple[str, ...]:
    return tuple(CT_RATE_LABELS if source == "ct_rate" else MERLIN_LABELS)


def id_column(source: str) -> str:
    return "VolumeName" if source == "ct_rate" else merlin.ID_COLUMN


def _ct_rate_rows(root: Path) -> list[tuple[str, str, str]]:
    root = root / "dataset" if (root / "dataset").is_dir() else root
    rows = []
    tables = [root / layout.reports for layout in ct_rate.SPLIT_LAYOUTS if (root / layout.reports).is_file()]
    if not tables:
        raise DataRootError(f"no CT-RATE report table under {root}.\n{ct_rate.EXPECTED_LAYOUT}")
    no_chest = {v for layout in ct_rate.SPLIT_LAYOUTS for v in ct_rate.read_no_chest(root, layout.no_chest)}
    for table in tables:
        df = pd.read_csv(table, dtype=str).fillna("")
        if "VolumeName" not in df or "Findings_EN" not in df:
            raise DataRootError(f"{table} lacks VolumeName / Findings_EN.\n{ct_rate.EXPECTED_LAYOUT}")
        impressions = df["Impressions_EN"] if "Impressions_EN" in df else [""] * len(df)
        rows += zip(df["VolumeName"], df["Findings_EN"], impressions, strict=True)
    return [
        (str(name).strip(), f.strip(), i.strip())
        for name, f, i in rows
        if ct_rate.volume_id(str(name)) not in no_chest
    ]


def _merlin_rows(root: Path) -> list[tuple[str, str, str]]:
    table = root / merlin.REPORTS
    if not table.is_file():
        raise DataRootError(f"no {merlin.REPORTS} under {root}.\n{merlin.EXPECTED_LAYOUT}")
    df = pd.read_excel(table, dtype=str, engine="openpyxl").fillna("")
    rows = []
    for sid, text in zip(df[merlin.ID_COLUMN], df[merlin.FINDINGS_COLUMN], strict=True):
        parts = split_report(text)
        rows.append((str(sid).strip(), parts["findings"], parts["impressions"]))
    return rows


def read_items(source: str, root: Path | str) -> list[Item]:
    """One item per distinct report text, in table order; reports without findings are skipped."""
    if source not in SOURCES:
        raise ValueError(f"annotate supports --source {' or '.join(SOURCES)}, got {source!r}")
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataRootError(f"data root {root} does not exist or is not a folder")
    rows = _ct_rate_rows(root) if source == "ct_rate" else _merlin_rows(root)
    groups: dict[tuple[str, str], list[str]] = {}
    for volume, findings, impressions in rows:
        if findings:
            groups.setdefault((findings, impressions), []).append(volume)
    return [Item(vols[0], tuple(vols), f, i) for (f, i), vols in groups.items()]
