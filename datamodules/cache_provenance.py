"""What a cache was built from, so that a changed dataset is never served from a stale cache.

The cache folder (``<cache_dir>/<source>/<spacing>mm-<interpolation>/``) does not depend on
``data.root``, and volume ids repeat across datasets in the same layout (every CT-RATE copy, and the
phantom, has a ``train_1_a_1``). Without provenance, pointing an experiment at another dataset, or
regenerating the phantom in place, would silently reuse the old volumes, reports and labels.

Two levels, both cheap:

- **Per volume** (``sources/<id>.json``, written beside ``volumes/<id>.npy``): the image file's
  absolute path, size and modification time, and the metadata that shapes the conversion (spacing,
  HU slope and intercept). :func:`datamodules.preprocess.build_cache` reuses a cached volume only
  when this signature still matches, so a rebuild redoes exactly the changed volumes.
- **Per dataset** (``source.json``): the dataset root and the size and modification time of every
  file in its top two levels (the tables: reports, labels, metadata, sidecars). A complete cache is
  used without rescanning the dataset only while this stamp matches; otherwise the dataset is
  rescanned and the build runs, reusing every volume whose signature still matches.
  A label table that replaces the source's labels (``data.labels``: ``ctvlp annotate``'s
  ``llm_labels.csv``, wherever it lives) is stamped too, by path, size and modification time: a
  re-annotated table, or a switch to or from one, is a changed dataset like a changed report.

The annotation sidecars (shortened findings, CapPa sections) are not cached: they are read at every
setup, so a new sidecar takes effect at the next run without a rebuild.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from datamodules.cache import CacheIndex, write_json_atomic
from datamodules.records import Record

log = logging.getLogger(__name__)

SOURCES_DIR = "sources"
STAMP_NAME = "source.json"
_STAMP_DEPTH = 2


def signature_relpath(volume_id: str) -> str:
    return f"{SOURCES_DIR}/{volume_id}.json"


def source_signature(record: Record) -> dict[str, Any]:
    """The inputs of one cached volume. A directory (a DICOM series) is stamped by its own entry:
    adding, removing or renaming files changes it, rewriting a file in place does not."""
    path = Path(record.image_path).absolute()
    try:
        stat = path.stat()
        file = [stat.st_size, stat.st_mtime_ns]
    except OSError:
        file = None
    return {
        "path": str(path),
        "file": file,
        "spacing": None if record.spacing is None else [float(s) for s in record.spacing],
        "hu": [float(record.hu_slope), float(record.hu_intercept)],
    }


def write_signature(cache_root: Path, volume_id: str, signature: dict[str, Any]) -> None:
    write_json_atomic(cache_root / signature_relpath(volume_id), signature)


def signature_is_current(cache_root: Path, record: Record) -> bool:
    """Whether the cached volume of ``record`` was built from the same inputs (``False`` when it
    has no signature: a cache from before signatures existed is rebuilt once)."""
    try:
        saved = json.loads((cache_root / signature_relpath(record.id)).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return saved == source_signature(record)


def _file_stamp(path: Path) -> list[Any]:
    path = Path(path).absolute()
    try:
        stat = path.stat()
    except OSError:
        return [str(path), None]
    return [str(path), [stat.st_size, stat.st_mtime_ns]]


def dataset_stamp(root: Path, label_table: Path | None = None) -> dict[str, Any]:
    """The dataset root, (size, mtime) of every file in its top two levels, and the label table."""
    root = Path(root).absolute()
    files: dict[str, list[int]] = {}

    def walk(folder: Path, depth: int) -> None:
        try:
            entries = list(os.scandir(folder))
        except OSError:
            return
        for entry in entries:
            if entry.is_file():
                stat = entry.stat()
                files[os.path.relpath(entry.path, root)] = [stat.st_size, stat.st_mtime_ns]
            elif entry.is_dir() and depth < _STAMP_DEPTH:
                walk(Path(entry.path), depth + 1)

    walk(root, 1)
    stamp: dict[str, Any] = {"root": str(root), "files": dict(sorted(files.items()))}
    if label_table is not None:
        stamp["label_table"] = _file_stamp(label_table)
    return stamp


def write_dataset_stamp(cache_root: Path, root: Path, label_table: Path | None = None) -> None:
    write_json_atomic(cache_root / STAMP_NAME, dataset_stamp(root, label_table))


def dataset_stamp_matches(cache_root: Path, root: Path, label_table: Path | None = None) -> bool:
    try:
        saved = json.loads((cache_root / STAMP_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return saved == dataset_stamp(root, label_table)


def reusable_index(cache_root: Path, root: Path, label_table: Path | None = None) -> CacheIndex | None:
    """The cache index at ``cache_root`` when it can serve the dataset at ``root`` without a build:
    it exists, every entry's volume is complete and the dataset stamp matches. Otherwise ``None``,
    with a warning saying why when an index exists (the caller rescans and builds, which reuses
    every volume whose signature still matches)."""
    if not (cache_root / "index.json").exists():
        return None
    index = CacheIndex.load(cache_root)
    missing = index.missing_entries()
    if missing:
        log.warning(
            "%s: %d of %d cached volumes are missing or incomplete (e.g. %s); resuming the build",
            cache_root,
            len(missing),
            len(index.entries),
            missing[0].file,
        )
        return None
    if not dataset_stamp_matches(cache_root, root, label_table):
        log.warning(
            "%s was built from another dataset or label table, or %s changed since; rescanning it and "
            "rebuilding what changed",
            cache_root,
            root,
        )
        return None
    return index
