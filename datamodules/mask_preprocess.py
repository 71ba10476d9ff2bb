"""Organ masks into the cache: a record's label maps -> one uint8 bit-field volume on the grid of
its cached image (``masks/<id>.npy``, bit i = ``datamodules.totalseg.ORGANS[i]``), and its
TotalSegmentator ``total`` map as uint8 class ids on the same grid (``ts_labels/<id>.npy``).

The geometry follows the image exactly (``datamodules.preprocess.load_hu``): the label map's header
direction cosines and origin, the record's spacing (a dataset's metadata, never the header zooms),
RAS+ orientation, then resampling to the cache spacing, here with nearest neighbour. A mask that
cannot be read, or that does not land on the image's cached grid, is skipped with a warning: the
volume stays usable for classification, it only gets no segmentation task.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
import torchio as tio

from datamodules.cache import (
    MASK_DTYPE,
    Spacing,
    as_spacing,
    mask_relpath,
    npy_shape,
    ts_labels_relpath,
)
from datamodules.records import Record
from datamodules.totalseg import ORGANS

log = logging.getLogger(__name__)


class BadMaskError(ValueError):
    """A record's organ mask cannot be converted; the message says why."""


def _read_label_map(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(int32 labels (X, Y, Z) in stored voxel order, header affine) of one label-map NIfTI."""
    try:
        image = nib.load(path)
        data = np.asarray(
            image.dataobj.get_unscaled() if hasattr(image.dataobj, "get_unscaled") else image.dataobj
        )
    except Exception as error:
        raise BadMaskError(f"unreadable label map {path}: {type(error).__name__}: {error}") from error
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise BadMaskError(f"label map {path} is not 3D: shape {data.shape}")
    return np.rint(data).astype(np.int32), np.asarray(image.affine, dtype=np.float64)


def _record_affine(record: Record, affine: np.ndarray) -> np.ndarray:
    """A label map's affine as the image's is used: header directions and origin, record spacing."""
    linear = affine[:3, :3]
    zooms = np.linalg.norm(linear, axis=0)
    if not (np.isfinite(affine).all() and (zooms > 0).all()):
        raise BadMaskError(f"degenerate label-map affine:\n{affine}")
    spacing = zooms if record.spacing is None else np.asarray(record.spacing, dtype=np.float64)
    affine = affine.copy()
    affine[:3, :3] = linear / zooms * spacing
    return affine


def organ_bits(record: Record) -> tuple[np.ndarray, np.ndarray]:
    """The record's organs as one uint8 bit field in its stored voxel order, and the affine to use
    (header directions and origin, record spacing)."""
    bits: np.ndarray | None = None
    affine: np.ndarray | None = None
    loaded: dict[Path, tuple[np.ndarray, np.ndarray]] = {}
    for organ, source in record.masks.items():
        if organ not in ORGANS:
            raise BadMaskError(f"unknown organ {organ!r}; known: {', '.join(ORGANS)}")
        path = Path(source.path)
        if path not in loaded:
            loaded[path] = _read_label_map(path)
        labels, map_affine = loaded[path]
        if bits is None:
            bits = np.zeros(labels.shape, dtype=MASK_DTYPE)
            affine = map_affine
        elif labels.shape != bits.shape:
            raise BadMaskError(f"label maps of {record.id} disagree in shape: {labels.shape} vs {bits.shape}")
        bits |= np.isin(labels, source.label_ids).astype(MASK_DTYPE) << ORGANS.index(organ)
    if bits is None or affine is None:
        raise BadMaskError("record has no masks")
    return bits, _record_affine(record, affine)


def resample_masks(record: Record, spacing: Spacing | Sequence[float]) -> np.ndarray:
    """The record's organ bit field, RAS+, nearest-neighbour resampled to ``spacing`` mm (a number:
    isotropic; or (x, y, z), the image's grid rule)."""
    bits, affine = organ_bits(record)
    return resample_label_map(bits, affine, spacing)


def resample_label_map(
    labels: np.ndarray, affine: np.ndarray, spacing: Spacing | Sequence[float]
) -> np.ndarray:
    """A uint8 label map (X, Y, Z) with voxel-to-world ``affine`` -> RAS+, nearest-neighbour
    resampled to ``spacing`` mm: the grid ``datamodules.preprocess`` gives an image of that affine."""
    label_map = tio.LabelMap(tensor=torch.from_numpy(labels.astype(np.int16))[None], affine=affine)
    steps = tio.Compose(
        [tio.ToOrientation("RAS", copy=False), tio.Resample(as_spacing(spacing), copy=False)], copy=False
    )
    out = steps(label_map)
    return np.ascontiguousarray(out.data[0].numpy().astype(MASK_DTYPE))


def masks_complete(record: Record, cache_root: Path, shape: tuple[int, ...]) -> bool:
    """Whether the cache already holds this record's mask files (or the record has none): the
    organ bit field and the TotalSegmentator label map."""
    root = Path(cache_root)
    bits_done = not record.masks or npy_shape(root / mask_relpath(record.id), MASK_DTYPE) == tuple(shape)
    labels_done = record.ts_total is None or (
        npy_shape(root / ts_labels_relpath(record.id), MASK_DTYPE) == tuple(shape)
    )
    return bits_done and labels_done


def cached_mask_organs(record: Record, cache_root: Path, shape: tuple[int, ...]) -> list[str]:
    """The organs to list in the record's cache entry: its masks if their file is complete."""
    if not record.masks or npy_shape(Path(cache_root) / mask_relpath(record.id), MASK_DTYPE) != tuple(shape):
        return []
    return [organ for organ in ORGANS if organ in record.masks]


def cached_ts_label_ids(record: Record, cache_root: Path, shape: tuple[int, ...]) -> list[int]:
    """The TotalSegmentator class ids (> 0) present in the record's cached label map, or ``[]``
    when it has none (or the file is incomplete)."""
    path = Path(cache_root) / ts_labels_relpath(record.id)
    if record.ts_total is None or npy_shape(path, MASK_DTYPE) != tuple(shape):
        return []
    counts = np.bincount(np.load(path, mmap_mode="r").ravel(), minlength=256)
    return [int(i) for i in np.flatnonzero(counts[1:]) + 1]


def write_masks(
    record: Record, cache_root: Path, spacing: Spacing | Sequence[float], shape: tuple[int, ...]
) -> bool:
    """Convert and atomically write ``masks/<id>.npy`` (the organ bit field) and, when the record has
    a TotalSegmentator ``total`` map, ``ts_labels/<id>.npy``; ``False`` (with a warning) when one is
    unusable or does not match the cached image grid ``shape``: the volume then has no mask of it."""
    ok = True
    if record.masks:
        ok &= _write_label_volume(
            record,
            "organ masks",
            lambda: resample_masks(record, spacing),
            shape,
            cache_root / mask_relpath(record.id),
        )
    if record.ts_total is not None:
        ok &= _write_label_volume(
            record,
            "TotalSegmentator label map",
            lambda: resample_ts_labels(record, spacing),
            shape,
            Path(cache_root) / ts_labels_relpath(record.id),
        )
    return ok


def resample_ts_labels(record: Record, spacing: Spacing | Sequence[float]) -> np.ndarray:
    """The record's TotalSegmentator ``total`` class ids, RAS+, nearest-neighbour resampled to
    ``spacing`` mm on the image's grid (uint8: ``total`` has 117 classes)."""
    assert record.ts_total is not None
    labels, affine = _read_label_map(Path(record.ts_total))
    if labels.min() < 0 or labels.max() > np.iinfo(MASK_DTYPE).max:
        raise BadMaskError(f"label map {record.ts_total} holds ids outside 0-255")
    return resample_label_map(labels.astype(MASK_DTYPE), _record_affine(record, affine), spacing)


def _write_label_volume(
    record: Record, what: str, convert: Callable[[], np.ndarray], shape: tuple[int, ...], target: Path
) -> bool:
    try:
        volume = convert()
        if volume.shape != tuple(shape):
            raise BadMaskError(f"mask grid {volume.shape} differs from the image grid {tuple(shape)}")
    except BadMaskError as error:
        log.warning("no %s for %s: %s", what, record.id, error)
        return False
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f"{target.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            np.save(f, volume)
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()
    return True
