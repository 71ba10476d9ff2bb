"""The preprocessed-volume cache: path naming, the index, and fast partial (crop) reads.

Layout of one cache (one source at one spacing and interpolation)::

    <cache_dir>/<source>/<spacing>mm-<interpolation>/      e.g. cache/ct_rate/2mm-paper
                                                           (anisotropic: 1.5x1.5x3mm-paper, x y z)
        index.json        written last, atomically: its presence means the build finished
        quarantine.csv    id, path, reason of every record that is not in the index
        build.json        the build parameters, written first (guards resuming with other parameters)
        volumes/<id>.npy  int16 HU in [-1000, 1000], RAS+, shape (X, Y, Z), C order, uncompressed
        masks/<id>.npy    only for records with organ masks: uint8 on the same grid, bit i set where
                          organ ``datamodules.totalseg.ORGANS[i]`` is (nearest-neighbour resampled);
                          the entry's ``masks`` lists the organs it has
        ts_labels/<id>.npy only for records with a TotalSegmentator ``total`` label map: its uint8
                          class ids on the same grid (nearest neighbour), the source of the fine
                          organ tasks; the entry's ``ts_labels`` lists the ids present
        sources/<id>.json what each volume was built from; source.json: the dataset it was built
                          from (``datamodules.cache_provenance``: a changed dataset is rebuilt)

The model input is HU mapped to [-1, 1] through ``data.hu_window`` (default [-1000, 1000], i.e.
``HU / 1000``); the dataset does that mapping, the cache stores HU.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

FORMAT = 1
INDEX_NAME = "index.json"
QUARANTINE_NAME = "quarantine.csv"
BUILD_NAME = "build.json"
VOLUMES_DIR = "volumes"
MASKS_DIR = "masks"
TS_LABELS_DIR = "ts_labels"
MASK_DTYPE = np.dtype("u1")
AIR_HU = -1000
DTYPE = np.dtype("<i2")
INTERPOLATIONS = ("paper", "colipri_inference", "paper_torch")  # paper_torch: the torch backend


class CacheMissingError(FileNotFoundError):
    """No finished cache at the expected place."""


Spacing = float | tuple[float, float, float]
"""A cache spacing in mm: one number (isotropic) or (x, y, z) in the cache's RAS axis order."""


def as_spacing(value: Any) -> Spacing:
    """A configured spacing as a :data:`Spacing`: a number -> float; three numbers (a sequence, or a
    string ``"1.5,1.5,3"``) -> a tuple of 3 floats, or a float when they are equal (``[2, 2, 2]`` is
    the ``2mm`` cache). ``ValueError`` unless one or three positive, finite numbers."""
    problem = f"spacing must be a number or 3 numbers (x, y, z) in mm, not {value!r}"
    if isinstance(value, str):
        items: list[Any] = [v for v in value.replace("x", ",").split(",") if v.strip()]
    elif isinstance(value, int | float | np.number) and not isinstance(value, bool):
        items = [value]
    else:
        try:
            items = list(value)
        except TypeError:
            raise ValueError(problem) from None
    try:
        values = [float(v) for v in items]
    except (TypeError, ValueError):
        raise ValueError(problem) from None
    if len(values) not in (1, 3) or (
        len(values) == 1 and not isinstance(value, str | int | float | np.number)
    ):
        raise ValueError(problem)
    if not all(math.isfinite(v) and v > 0 for v in values):
        raise ValueError(f"spacing must be positive and finite, not {value!r}")
    if len(set(values)) == 1:
        return values[0]
    return (values[0], values[1], values[2])


def spacing_triplet(spacing: Any) -> tuple[float, float, float]:
    """The spacing (x, y, z) in mm of an isotropic or anisotropic :data:`Spacing`."""
    s = as_spacing(spacing)
    return (s, s, s) if isinstance(s, float) else s


def is_isotropic(spacing: Any) -> bool:
    return isinstance(as_spacing(spacing), float)


def spacing_json(spacing: Any) -> float | list[float]:
    """The spacing as written in ``index.json`` / ``build.json``: a number, or a list of 3."""
    s = as_spacing(spacing)
    return s if isinstance(s, float) else list(s)


def spacing_tag(spacing: Any) -> str:
    """2.0 -> ``"2mm"``, 0.5 -> ``"0.5mm"``, 1.5 -> ``"1.5mm"``; (1.5, 1.5, 3) -> ``"1.5x1.5x3mm"``."""
    s = as_spacing(spacing)
    if isinstance(s, float):
        return f"{s:g}mm"
    return "x".join(f"{v:g}" for v in s) + "mm"


def cache_path(cache_dir: Path, source: str, spacing: Any, interpolation: str) -> Path:
    """Where the cache of ``source`` at ``spacing`` mm (a number, or (x, y, z)) with ``interpolation``
    lives: ``<cache_dir>/<source>/2mm-paper``, ``.../1.5x1.5x3mm-paper``."""
    if interpolation not in INTERPOLATIONS:
        raise ValueError(f"interpolation must be one of {INTERPOLATIONS}, not {interpolation!r}")
    return Path(cache_dir) / source / f"{spacing_tag(spacing)}-{interpolation}"


def volume_relpath(volume_id: str) -> str:
    return f"{VOLUMES_DIR}/{volume_id}.npy"


def mask_relpath(volume_id: str) -> str:
    return f"{MASKS_DIR}/{volume_id}.npy"


def ts_labels_relpath(volume_id: str) -> str:
    return f"{TS_LABELS_DIR}/{volume_id}.npy"


def npy_shape(path: Path, expected: np.dtype = DTYPE) -> tuple[int, ...] | None:
    """Shape of a complete C-order ``.npy`` file of dtype ``expected`` (default int16; header parses,
    size matches), else ``None``."""
    try:
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
            elif version == (2, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
            else:
                return None
            data_offset = f.tell()
        size = os.path.getsize(path)
    except (OSError, ValueError):
        return None
    if fortran or np.dtype(dtype) != np.dtype(expected):
        return None
    if size != data_offset + math.prod(shape) * np.dtype(expected).itemsize:
        return None
    return tuple(int(s) for s in shape)


def write_json_atomic(path: Path, obj: Any) -> None:
    """Write JSON to ``path`` via a temporary file and ``os.replace`` (strict JSON: no NaN)."""
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=1, allow_nan=False)
        f.write("\n")
    os.replace(tmp, path)


@dataclass
class CacheEntry:
    """One cached volume. ``labels`` follow the index's ``label_names``; NaN = unknown."""

    id: str
    patient_id: str
    split: str
    source: str
    file: Path  # absolute
    shape: tuple[int, int, int]
    labels: list[float] = field(default_factory=list)
    sections: dict[str, str] = field(default_factory=dict)
    masks: list[str] = field(default_factory=list)  # organs in masks/<id>.npy (empty: no mask file)
    # TotalSegmentator ``total`` class ids present in ts_labels/<id>.npy (empty: no such file)
    ts_labels: list[int] = field(default_factory=list)

    @property
    def mask_file(self) -> Path:
        return self.file.parent.parent / mask_relpath(self.id)

    @property
    def ts_labels_file(self) -> Path:
        return self.file.parent.parent / ts_labels_relpath(self.id)

    def files_complete(self, check_sizes: bool = True) -> bool:
        """The volume file and the mask files the entry lists exist (and, with ``check_sizes``, are
        whole and of the entry's shape)."""
        files = [(self.file, DTYPE)]
        files += [(self.mask_file, MASK_DTYPE)] if self.masks else []
        files += [(self.ts_labels_file, MASK_DTYPE)] if self.ts_labels else []
        if not check_sizes:
            return all(path.is_file() for path, _ in files)
        return all(npy_shape(path, dtype) == self.shape for path, dtype in files)

    def to_json(self, root: Path) -> dict[str, Any]:
        try:
            file = self.file.relative_to(root).as_posix()
        except ValueError:
            file = str(self.file)
        data = {
            "id": self.id,
            "patient_id": self.patient_id,
            "split": self.split,
            "source": self.source,
            "file": file,
            "shape": list(self.shape),
            "labels": [None if math.isnan(v) else float(v) for v in self.labels],
            "sections": dict(self.sections),
        }
        if self.masks:
            data["masks"] = list(self.masks)
        if self.ts_labels:
            data["ts_labels"] = list(self.ts_labels)
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any], root: Path) -> CacheEntry:
        x, y, z = (int(s) for s in data["shape"])
        return cls(
            id=str(data["id"]),
            patient_id=str(data["patient_id"]),
            split=str(data["split"]),
            source=str(data["source"]),
            file=(root / data["file"]).absolute(),
            shape=(x, y, z),
            labels=[math.nan if v is None else float(v) for v in data["labels"]],
            sections={str(k): str(v) for k, v in data.get("sections", {}).items()},
            masks=[str(m) for m in data.get("masks", [])],
            ts_labels=[int(i) for i in data.get("ts_labels", [])],
        )


@dataclass
class CacheIndex:
    """The index of one finished cache (``index.json``)."""

    root: Path
    spacing: Spacing  # mm; (x, y, z) for an anisotropic cache
    interpolation: str
    label_names: list[str]
    entries: list[CacheEntry]
    format: int = FORMAT

    @classmethod
    def load(cls, cache_root: Path) -> CacheIndex:
        cache_root = Path(cache_root)
        path = cache_root / INDEX_NAME
        if not path.is_file():
            raise CacheMissingError(
                f"No preprocessed cache at {cache_root} ({INDEX_NAME} missing). Build it first with "
                "`ctvlp preprocess --source <source> --root <data root> --cache-dir <cache dir> "
                "--spacing <mm>` (the cache goes to <cache dir>/<source>/<spacing>mm-<interpolation>)."
            )
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        if data.get("format") != FORMAT:
            raise ValueError(
                f"{path} has cache format {data.get('format')!r}, this code reads format {FORMAT}; "
                "rebuild it with `ctvlp preprocess`."
            )
        root = cache_root.absolute()
        return cls(
            root=root,
            spacing=as_spacing(data["spacing"]),
            interpolation=str(data["interpolation"]),
            label_names=[str(n) for n in data["label_names"]],
            entries=[CacheEntry.from_json(e, root) for e in data["entries"]],
            format=int(data["format"]),
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "format": self.format,
            "spacing": spacing_json(self.spacing),
            "interpolation": self.interpolation,
            "label_names": list(self.label_names),
            "entries": [e.to_json(self.root) for e in self.entries],
        }

    def save(self) -> None:
        write_json_atomic(self.root / INDEX_NAME, self.to_json())

    @property
    def quarantine_path(self) -> Path:
        return self.root / QUARANTINE_NAME

    def split(self, name: str) -> list[CacheEntry]:
        """Entries of one official split (``"train"`` / ``"test"``)."""
        return [e for e in self.entries if e.split == name]

    def missing_entries(self, check_sizes: bool = True) -> list[CacheEntry]:
        """Entries whose volume or mask files are absent (or, with ``check_sizes``, truncated / of
        the wrong shape)."""
        return [e for e in self.entries if not e.files_complete(check_sizes)]

    def is_complete(self, check_sizes: bool = True) -> bool:
        """Every entry's volume file is present (and, with ``check_sizes``, whole)."""
        return not self.missing_entries(check_sizes)


def read_volume(entry: CacheEntry) -> np.ndarray:
    """The whole cached volume: int16 HU, (X, Y, Z), RAS+."""
    return np.load(entry.file)


def read_crop(entry: CacheEntry, start: tuple[int, int, int], size: tuple[int, int, int]) -> np.ndarray:
    """``volume[start : start + size]`` read through mmap (only the crop is touched).

    ``start`` may be negative and the crop may reach past the volume: what lies outside is air (-1000).
    Returns a C-contiguous int16 array of shape ``size``.
    """
    if len(start) != 3 or len(size) != 3 or any(int(s) <= 0 for s in size):
        raise ValueError(f"read_crop wants 3 start indices and 3 positive sizes, got {start}, {size}")
    return _padded_crop(np.load(entry.file, mmap_mode="r"), start, size, AIR_HU)


def read_mask_crop(entry: CacheEntry, start: tuple[int, int, int], size: tuple[int, int, int]) -> np.ndarray:
    """Like :func:`read_crop` for the entry's organ bit-field mask (uint8; 0 outside the volume)."""
    if not entry.masks:
        raise ValueError(f"Cache entry {entry.id} has no organ masks")
    return _padded_crop(np.load(entry.mask_file, mmap_mode="r"), start, size, 0)


def read_ts_labels_crop(
    entry: CacheEntry, start: tuple[int, int, int], size: tuple[int, int, int]
) -> np.ndarray:
    """Like :func:`read_crop` for the entry's TotalSegmentator class ids (uint8; 0 outside)."""
    if not entry.ts_labels:
        raise ValueError(f"Cache entry {entry.id} has no TotalSegmentator label map")
    return _padded_crop(np.load(entry.ts_labels_file, mmap_mode="r"), start, size, 0)


def _padded_crop(
    volume: np.ndarray, start: tuple[int, int, int], size: tuple[int, int, int], fill: int
) -> np.ndarray:
    if len(start) != 3 or len(size) != 3 or any(int(s) <= 0 for s in size):
        raise ValueError(f"read_crop wants 3 start indices and 3 positive sizes, got {start}, {size}")
    out = np.full(tuple(int(s) for s in size), fill, dtype=volume.dtype)
    src, dst = [], []
    for begin, length, extent in zip(start, size, volume.shape, strict=True):
        lo, hi = max(int(begin), 0), min(int(begin) + int(length), extent)
        if lo >= hi:
            return out
        src.append(slice(lo, hi))
        dst.append(slice(lo - int(begin), hi - int(begin)))
    out[tuple(dst)] = volume[tuple(src)]
    return out
