"""Helpers the Merlin, RAD-ChestCT, INSPECT and image-only sources share: tables keyed by id, file
walks, text and label checks. A source turns every problem with one volume or row into a reason string;
only a wrong layout or a missing label column raises."""

from __future__ import annotations

import logging
import math
import os
import re
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path

import pandas as pd

from datamodules.errors import DataRootError

log = logging.getLogger(__name__)

REPLACEMENT_CHAR = "\ufffd"
SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
Rejected = tuple[str, str, str]  # (id, path, reason)
# A dataset's split names -> ours (train / val / test).
SPLIT_NAMES = {
    "train": "train",
    "training": "train",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "test": "test",
}


def find_files(root: Path, suffix: str) -> tuple[dict[str, Path], dict[str, list[Path]]]:
    """id (file name without ``suffix``) -> path, plus the ids whose file name occurs more than once."""
    paths: dict[str, list[Path]] = defaultdict(list)
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            if name.endswith(suffix) and not name.startswith("."):
                paths[name[: -len(suffix)]].append(Path(dirpath) / name)
    found = {vid: sorted(ps)[0] for vid, ps in paths.items()}
    twice = {vid: sorted(ps) for vid, ps in paths.items() if len(ps) > 1}
    return found, twice


def find_table(root: Path, names: Iterable[str]) -> Path | None:
    """The first of ``names`` found: directly under ``root``, else in any sub-folder (sorted paths)."""
    for name in names:
        direct = root / name
        if direct.is_file():
            return direct
        hits = sorted(p for p in root.rglob(name) if p.is_file())
        if hits:
            return hits[0]
    return None


def find_column(df: pd.DataFrame, wanted: str) -> str | None:
    """The column named ``wanted``, matched without regard to case and surrounding blanks."""
    key = wanted.strip().lower()
    for column in df.columns:
        if str(column).strip().lower() == key:
            return str(column)
    return None


def require_columns(df: pd.DataFrame, path: Path, wanted: list[str], layout: str) -> dict[str, str]:
    """wanted name -> actual column name; a missing one is a layout error."""
    found = {name: find_column(df, name) for name in wanted}
    missing = [name for name, column in found.items() if column is None]
    if missing:
        raise DataRootError(f"{path} lacks column(s) {missing}; columns found: {list(df.columns)}\n{layout}")
    return {name: str(column) for name, column in found.items()}


def read_csv(path: Path, layout: str, sep: str = ",") -> pd.DataFrame:
    """All cells as strings (blank = ""); undecodable bytes become U+FFFD, which the sources reject.
    ``sep="\\t"`` reads a tab-separated table."""
    try:
        return pd.read_csv(
            path,
            sep=sep,
            dtype=str,
            keep_default_na=False,
            encoding="utf-8-sig",
            encoding_errors="replace",
        )
    except (pd.errors.ParserError, pd.errors.EmptyDataError, OSError) as error:
        raise DataRootError(f"cannot parse {path}: {error}\n{layout}") from error


def rows_by_id(
    df: pd.DataFrame, id_column: str, table: str, normalise=lambda s: s.strip()
) -> tuple[dict[str, dict[str, str]], set[str]]:
    """id -> row. Exact duplicate rows collapse to one; conflicting duplicates are returned apart."""
    rows: dict[str, dict[str, str]] = {}
    conflicting: set[str] = set()
    collapsed = 0
    for row in df.to_dict("records"):
        rid = normalise(str(row[id_column]))
        if not rid:
            continue
        if rid in rows:
            if rows[rid] == row:
                collapsed += 1
            else:
                conflicting.add(rid)
            continue
        rows[rid] = row
    for rid in conflicting:
        del rows[rid]
    if collapsed:
        log.warning("%s: %d exact duplicate rows collapsed", table, collapsed)
    return rows, conflicting


def text_problems(texts: Iterable[str], table: str) -> list[str]:
    """Reasons to reject a report: undecodable bytes."""
    if any(REPLACEMENT_CHAR in t for t in texts):
        return [f"non-UTF-8 text in {table}"]
    return []


def label_value(text: str, minus_one_unknown: bool = True) -> float:
    """A label cell -> 1.0 / 0.0, NaN for unknown (blank, -1 when ``minus_one_unknown``, unparseable)."""
    try:
        value = float(str(text).strip())
    except ValueError:
        return math.nan
    if value == 1.0:
        return 1.0
    if value == 0.0:
        return 0.0
    if value == -1.0 and minus_one_unknown:
        return math.nan
    return math.nan


def split_report(text: str) -> dict[str, str]:
    """A report with an ``IMPRESSION:`` header -> findings / impressions (a leading ``FINDINGS:`` goes)."""
    text = str(text).strip()
    match = re.search(r"\bIMPRESSIONS?\s*:", text, flags=re.IGNORECASE)
    findings, impressions = (text[: match.start()], text[match.end() :]) if match else (text, "")
    findings = re.sub(r"^\s*FINDINGS\s*:\s*", "", findings, flags=re.IGNORECASE)
    return {"findings": findings.strip(), "impressions": impressions.strip()}
