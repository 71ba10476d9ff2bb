"""Atomic writes of the annotation outputs and their provenance.

Each output ``<file>`` gets a companion ``<file>.meta.json`` (prompt version, model, date,
counts), so the sidecars keep exactly the format their readers expect
(``datamodules.text.load_shortened_findings``, ``datamodules.report_sections.load_structured_sections``).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import pandas as pd

SECTIONS_FILE = "structured_findings.json"
SHORTENED_FILE = "shortened_findings.json"
LABELS_FILE = "llm_labels.csv"
REVIEW_FILE = "annotate_review.jsonl"
PROGRESS_FILE = "annotate_progress.jsonl"
OUTPUT_FILES = {"sections": SECTIONS_FILE, "shorten": SHORTENED_FILE, "labels": LABELS_FILE}


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to a temporary file beside ``path``, then ``os.replace`` it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def keep_foreign(path: Path) -> None:
    """A file at ``path`` that ``ctvlp annotate`` did not write (no companion meta file) is kept
    as ``<file>.orig`` before its first overwrite."""
    if path.exists() and not meta_path(path).exists():
        backup = path.with_name(path.name + ".orig")
        if not backup.exists():
            os.replace(path, backup)


def write_json_sidecar(path: Path, entries: dict[str, object], meta: dict[str, object]) -> None:
    keep_foreign(path)
    atomic_write_text(path, json.dumps(entries, indent=1, ensure_ascii=False) + "\n")
    atomic_write_text(meta_path(path), json.dumps(meta, indent=1) + "\n")


def write_label_table(
    path: Path, id_column: str, names: tuple[str, ...], rows: dict[str, dict[str, int]], meta: dict
) -> None:
    """The source's label layout (id column + one column per label), -1 kept as -1."""
    keep_foreign(path)
    frame = pd.DataFrame([[vid, *(rows[vid][n] for n in names)] for vid in rows], columns=[id_column, *names])
    atomic_write_text(path, frame.to_csv(index=False))
    atomic_write_text(meta_path(path), json.dumps(meta, indent=1) + "\n")


def meta_path(path: Path) -> Path:
    return path.with_name(path.name + ".meta.json")
