"""Sharded cache builds: many processes (e.g. a SLURM array) convert one dataset into ONE cache.

Shard ``K/N`` (1-based) converts the records at positions ``K-1, K-1+N, K-1+2N, ...`` of the records
sorted by id: every process computes the same split whatever the timing, and the shares differ by at
most one record. Each volume is converted by exactly one shard, and its files (``volumes/``,
``masks/``, ``sources/``) are written atomically, so shards never write the same volume file.

A shard ends by writing ``shards/<K>-of-<N>.json`` (atomically): the index entries it built and the
records it quarantined, each with its position in the build's record order, plus a fingerprint of
every record of the whole build. The shard that then finds all N results present, each with its own
fingerprint and parameters, assembles ``quarantine.csv`` and ``index.json`` exactly as a
single-process build writes them (same order, same content); ``ctvlp preprocess --finalize`` does the
same on demand and names the shards that are missing. Two shards finishing at once both assemble
the same bytes from the same files, and each replaces the shared files atomically.

Temporary files carry host, process id and a random part: on a cluster, two processes with the
same pid on two nodes may write the same shared file at once (``build.json``, ``index.json``).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import os
import re
import socket
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from datamodules.cache import (
    INDEX_NAME,
    QUARANTINE_NAME,
    CacheEntry,
    CacheIndex,
    Spacing,
)
from datamodules.cache_provenance import STAMP_NAME, dataset_stamp
from datamodules.records import Record

SHARDS_DIR = "shards"
_RESULT_FORMAT = 1
_RESULT_NAME = re.compile(r"^(\d+)-of-(\d+)\.json$")

QuarantineRow = tuple[str, str, str]  # id, path, reason


class ShardsIncompleteError(FileNotFoundError):
    """Some shard results are missing, or were written for other records or parameters."""


@dataclass(frozen=True)
class Shard:
    """Shard ``index`` of ``count`` (1-based)."""

    index: int
    count: int

    def __post_init__(self) -> None:
        if not 1 <= self.index <= self.count:
            raise ValueError(f"a shard is K/N with 1 <= K <= N, not {self.index}/{self.count}")

    @classmethod
    def parse(cls, text: str) -> Shard:
        """``"3/8"`` -> ``Shard(3, 8)``."""
        match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
        if match is None:
            raise ValueError(f"a shard is K/N (e.g. 3/8, 1-based), not {text!r}")
        return cls(int(match[1]), int(match[2]))

    @property
    def label(self) -> str:
        return f"{self.index}/{self.count}"

    @property
    def file_name(self) -> str:
        return f"{self.index}-of-{self.count}.json"

    def owns(self, records: Sequence[Record]) -> list[Record]:
        """This shard's records: round-robin over the records sorted by id (in that order)."""
        return sorted(records, key=lambda r: r.id)[self.index - 1 :: self.count]


def shard_result_path(cache_root: Path, shard: Shard) -> Path:
    return Path(cache_root) / SHARDS_DIR / shard.file_name


# ------------------------------------------------------------------------------------ shared writers


def unique_tmp(path: Path) -> Path:
    """A temporary name beside ``path`` that no other process, on this host or another, uses."""
    return path.with_name(f"{path.name}.tmp-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}")


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a :func:`unique_tmp` file, then ``os.replace``."""
    tmp = unique_tmp(path)
    try:
        with open(tmp, "w", encoding="utf-8", newline="") as f:
            f.write(text)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def json_text(obj: Any) -> str:
    """JSON as ``datamodules.cache.write_json_atomic`` writes it (indent 1, strict, final newline)."""
    return json.dumps(obj, indent=1, allow_nan=False) + "\n"


def quarantine_text(rows: Sequence[QuarantineRow]) -> str:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["id", "path", "reason"])
    writer.writerows(rows)
    return out.getvalue()


def write_finished_cache(
    cache_root: Path,
    spacing: Spacing,
    interpolation: str,
    label_names: Sequence[str],
    entries: list[CacheEntry],
    quarantine: Sequence[QuarantineRow],
    source_root: Path | None = None,
    label_table: Path | None = None,
) -> CacheIndex:
    """The last step of every build, single-process or sharded: ``quarantine.csv``, then
    ``index.json`` (its presence means the build finished), then the dataset stamp."""
    cache_root = Path(cache_root)
    write_text_atomic(cache_root / QUARANTINE_NAME, quarantine_text(quarantine))
    index = CacheIndex(
        root=cache_root,
        spacing=spacing,
        interpolation=interpolation,
        label_names=list(label_names),
        entries=entries,
    )
    write_text_atomic(cache_root / INDEX_NAME, json_text(index.to_json()))
    if source_root is not None:
        write_text_atomic(cache_root / STAMP_NAME, json_text(dataset_stamp(source_root, label_table)))
    return index


# ------------------------------------------------------------------------------------ shard results


def records_fingerprint(
    records: Sequence[Record], quarantine: Sequence[QuarantineRow], label_names: Sequence[str]
) -> str:
    """A hash of everything a build's index and quarantine depend on besides the conversions: shards
    scanned from another root, with another label table, or from a dataset that changed between
    array tasks get another fingerprint, and are never assembled into one index."""
    digest = hashlib.sha256()
    digest.update(json.dumps([list(label_names), [list(row) for row in quarantine]]).encode())
    for r in records:
        labels = [None if math.isnan(v) else v for v in r.label_vector(list(label_names))]
        item = [
            r.id,
            r.patient_id,
            r.split,
            r.source,
            str(r.image_path),
            labels,
            r.sections,
            sorted(r.masks),
            str(r.ts_total or ""),
        ]
        digest.update(json.dumps(item, sort_keys=True).encode())
    return digest.hexdigest()


def start_shard(cache_root: Path, shard: Shard) -> None:
    """Forget this shard's previous result (it is rewritten at the end; a crash in between must not
    leave an old one to be assembled) and the results of a sharding into another number of shards."""
    folder = Path(cache_root) / SHARDS_DIR
    folder.mkdir(parents=True, exist_ok=True)
    for path in folder.glob("*-of-*.json"):
        match = _RESULT_NAME.match(path.name)
        if path.name == shard.file_name or (match is not None and int(match[2]) != shard.count):
            path.unlink(missing_ok=True)


def clear_shard_results(cache_root: Path) -> None:
    """Drop every shard result (a single-process build replaced them): ``--finalize`` must not later
    assemble an index from them."""
    for path in (Path(cache_root) / SHARDS_DIR).glob("*-of-*.json"):
        path.unlink(missing_ok=True)


def write_shard_result(
    cache_root: Path,
    shard: Shard,
    params: dict[str, Any],
    fingerprint: str,
    screened: Sequence[QuarantineRow],
    entries: Sequence[tuple[int, CacheEntry]],
    failed: Sequence[tuple[int, QuarantineRow]],
) -> None:
    """``shards/<K>-of-<N>.json``: ``entries`` and ``failed`` with their positions in the build's
    record order; ``screened`` (the records quarantined before conversion) is the same for every shard."""
    cache_root = Path(cache_root)
    result = {
        "format": _RESULT_FORMAT,
        "shard": [shard.index, shard.count],
        "params": params,
        "fingerprint": fingerprint,
        "screened": [list(row) for row in screened],
        "entries": [[position, entry.to_json(cache_root)] for position, entry in entries],
        "failed": [[position, list(row)] for position, row in failed],
    }
    write_text_atomic(shard_result_path(cache_root, shard), json_text(result))


def shard_counts(cache_root: Path) -> list[int]:
    """The numbers of shards N of the results present under ``shards/``."""
    counts = set()
    for path in (Path(cache_root) / SHARDS_DIR).glob("*-of-*.json"):
        match = _RESULT_NAME.match(path.name)
        if match is not None:
            counts.add(int(match[2]))
    return sorted(counts)


def _read_result(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def check_shards(
    cache_root: Path, count: int, params: dict[str, Any], fingerprint: str
) -> tuple[dict[int, dict[str, Any]], list[int], list[int]]:
    """(results by shard index, missing shard indices, stale shard indices): a stale result was
    written with other parameters, from other records, or in another format."""
    results: dict[int, dict[str, Any]] = {}
    missing: list[int] = []
    stale: list[int] = []
    for k in range(1, count + 1):
        path = shard_result_path(cache_root, Shard(k, count))
        if not path.is_file():
            missing.append(k)
            continue
        result = _read_result(path)
        if (
            result is None
            or result.get("format") != _RESULT_FORMAT
            or result.get("shard") != [k, count]
            or result.get("params") != params
            or result.get("fingerprint") != fingerprint
        ):
            stale.append(k)
        else:
            results[k] = result
    return results, missing, stale


def assemble_shards(
    cache_root: Path,
    count: int,
    params: dict[str, Any],
    fingerprint: str,
    spacing: Spacing,
    interpolation: str,
    label_names: Sequence[str],
    source_root: Path | None = None,
    label_table: Path | None = None,
) -> CacheIndex:
    """Write ``quarantine.csv`` and ``index.json`` from all ``count`` shard results, as a single
    process would have. Idempotent. :class:`ShardsIncompleteError` names missing or stale shards."""
    cache_root = Path(cache_root).absolute()
    results, missing, stale = check_shards(cache_root, count, params, fingerprint)
    if missing or stale:
        raise ShardsIncompleteError(describe_incomplete(cache_root, count, missing, stale))
    positioned: list[tuple[int, CacheEntry]] = []
    failed: list[tuple[int, QuarantineRow]] = []
    for result in results.values():
        positioned += [(int(p), CacheEntry.from_json(e, cache_root)) for p, e in result["entries"]]
        failed += [(int(p), (str(r[0]), str(r[1]), str(r[2]))) for p, r in result["failed"]]
    screened = [(str(r[0]), str(r[1]), str(r[2])) for r in results[1]["screened"]]
    positioned.sort(key=lambda item: item[0])
    failed.sort(key=lambda item: item[0])
    return write_finished_cache(
        cache_root,
        spacing,
        interpolation,
        label_names,
        [entry for _, entry in positioned],
        [*screened, *(row for _, row in failed)],
        source_root,
        label_table,
    )


def describe_incomplete(cache_root: Path, count: int, missing: Sequence[int], stale: Sequence[int]) -> str:
    parts = []
    if missing:
        parts.append(f"missing shard(s) {', '.join(f'{k}/{count}' for k in missing)}")
    if stale:
        parts.append(
            f"shard(s) {', '.join(f'{k}/{count}' for k in stale)} built from other records or with other "
            "parameters (another --root or --labels, a changed dataset, or an interrupted rerun)"
        )
    return (
        f"{cache_root}: cannot assemble the index: {'; '.join(parts)}. Run those shards "
        f"(`ctvlp preprocess ... --shard K/{count}`, same arguments as the others), then --finalize."
    )


__all__ = [
    "SHARDS_DIR",
    "Shard",
    "ShardsIncompleteError",
    "assemble_shards",
    "check_shards",
    "clear_shard_results",
    "records_fingerprint",
    "shard_counts",
    "start_shard",
    "write_finished_cache",
    "write_shard_result",
]
