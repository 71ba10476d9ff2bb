"""A label table that replaces a source's own labels (``data.labels``, or ``labels`` of a
``data.sources`` entry), such as the ``llm_labels.csv`` that ``ctvlp annotate --tasks labels`` writes.

The table is the source's own label layout: an id column first (CT-RATE's ``VolumeName``, with or
without ``.nii.gz``; Merlin's study id), then one column per label name of the source. Cells are
``1`` (present), ``0`` (absent), ``-1`` (uncertain or not mentioned) or empty; ``-1`` and empty
become NaN, which every loss and metric masks out (as for Merlin's own table). Any other value
stops the run at load time with its row and column named: a table the annotator or a script
garbled must never train silently as zeros.

A volume without a row keeps no labels (all NaN) and is counted in a warning, so a partial table
is visible rather than silently shrinking the labelled set.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from datamodules.errors import DataRootError, MissingLabelColumnError
from datamodules.records import Record

log = logging.getLogger(__name__)

_VALUES = {"1": 1.0, "1.0": 1.0, "0": 0.0, "0.0": 0.0, "-1": math.nan, "-1.0": math.nan, "": math.nan}
_SUFFIXES = (".nii.gz", ".nii")


def _volume_key(name: str) -> str:
    name = str(name).strip()
    for suffix in _SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def read_label_table(path: Path | str, label_names: Sequence[str]) -> dict[str, dict[str, float]]:
    """id -> {label name: 1.0 / 0.0 / NaN} from a label table (module docstring)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataRootError(
            f"label table {path} does not exist (data.labels / data.sources[].labels); "
            "`ctvlp annotate --tasks labels` writes one as llm_labels.csv"
        )
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8-sig")
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
        raise DataRootError(f"cannot parse label table {path}: {error}") from error
    if frame.shape[1] < 2:
        raise DataRootError(
            f"label table {path} needs an id column and label columns; got {list(frame.columns)}"
        )
    id_column = str(frame.columns[0])
    missing = [name for name in label_names if name not in frame.columns]
    if missing:
        raise MissingLabelColumnError(
            f"label table {path} lacks label column(s) {missing}; columns found: {list(frame.columns)[1:]}"
        )
    table: dict[str, dict[str, float]] = {}
    for row_number, row in enumerate(frame.to_dict("records"), start=2):  # row 1 is the header
        key = _volume_key(row[id_column])
        if not key:
            continue
        values: dict[str, float] = {}
        for name in label_names:
            cell = str(row[name]).strip()
            if cell not in _VALUES:
                raise DataRootError(
                    f"label table {path}, row {row_number} ({id_column}={row[id_column]}), column "
                    f"{name!r}: {cell!r} is not 1, 0, -1 or empty"
                )
            values[name] = _VALUES[cell]
        if key in table and table[key] != values:
            raise DataRootError(f"label table {path}: conflicting rows for {row[id_column]}")
        table[key] = values
    return table


def apply_label_table(records: list[Record], path: Path | str, label_names: Sequence[str]) -> list[Record]:
    """``records`` with their labels taken from the table at ``path`` (NaN for ids without a row)."""
    table = read_label_table(path, label_names)
    unknown = dict.fromkeys(label_names, math.nan)
    replaced = [dataclasses.replace(r, labels=dict(table.get(r.id, unknown))) for r in records]
    without = sum(r.id not in table for r in records)
    if without:
        log.warning(
            "label table %s: %d of %d volumes have no row; their labels are unknown (NaN, masked)",
            path,
            without,
            len(records),
        )
    unused = len(set(table) - {r.id for r in records})
    log.info(
        "labels of %d volumes from %s (%d rows for other volumes unused)",
        len(records) - without,
        path,
        unused,
    )
    return replaced
