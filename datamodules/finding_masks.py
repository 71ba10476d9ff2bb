"""Finding masks (``datamodules.finding_mask_layout``) on the cached volume's grid, for dense
evaluation: nearest-neighbour resampled with the geometry of ``datamodules.mask_preprocess``
(header directions and origin, the record's spacing, RAS+, cache spacing), cropped like the
volume.

Cached as ``<cache root>/finding_masks/<id>.npy`` (uint8, the volume's shape), so a second
evaluation does not resample again; rebuilt when its source map is newer or its shape is not the
volume's.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import nibabel as nib
import numpy as np
from omegaconf import DictConfig

from datamodules.cache import (
    MASK_DTYPE,
    CacheEntry,
    CacheIndex,
    _padded_crop,  # the cache's own padded read, shared rather than copied
    npy_shape,
)
from datamodules.datamodule import resolve_cache_root
from datamodules.finding_mask_layout import (
    EXPECTED_LAYOUT,
    FINDING_MASKS_DIR,
    BadFindingMaskError,
    FindingMasksMissingError,
    finding_mask_path,
    read_label_names,
)
from datamodules.mask_preprocess import resample_label_map
from datamodules.mixing import data_sources
from datamodules.preprocess import save_npy_atomic
from datamodules.records import Record
from datamodules.sources.ct_rate import resolve_root, scan_ct_rate

log = logging.getLogger(__name__)


def resample_finding_mask(record: Record, mask_path: Path, spacing: float | Sequence[float]) -> np.ndarray:
    """The label map at ``mask_path`` on the cached grid of ``record``'s volume (RAS+, ``spacing``
    mm, nearest neighbour): header directions and origin, the record's spacing when it has one."""
    try:
        image = nib.load(mask_path)
        data = np.asarray(
            image.dataobj.get_unscaled() if hasattr(image.dataobj, "get_unscaled") else image.dataobj
        )
    except Exception as error:
        raise BadFindingMaskError(
            f"unreadable label map {mask_path}: {type(error).__name__}: {error}"
        ) from error
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise BadFindingMaskError(f"label map {mask_path} is not 3D: shape {data.shape}")
    affine = np.asarray(image.affine, dtype=np.float64).copy()
    zooms = np.linalg.norm(affine[:3, :3], axis=0)
    if not (np.isfinite(affine).all() and (zooms > 0).all()):
        raise BadFindingMaskError(f"degenerate label-map affine of {mask_path}:\n{affine}")
    if record.spacing is not None:
        affine[:3, :3] = affine[:3, :3] / zooms * np.asarray(record.spacing, dtype=np.float64)
    return resample_label_map(np.rint(data).astype(MASK_DTYPE), affine, spacing)


class FindingMasks:
    """The finding masks of one CT-RATE cache, resampled on first use and kept under
    ``<cache root>/finding_masks/``."""

    def __init__(self, cache_root: Path, source_root: Path, records: Mapping[str, Record]) -> None:
        self.cache_root = Path(cache_root)
        self.source_root = Path(source_root)
        self.records = dict(records)
        self.labels = read_label_names(self.source_root)  # value -> name
        self.spacing = CacheIndex.load(self.cache_root).spacing
        self.skipped: dict[str, str] = {}  # volume id -> why it has no mask

    @classmethod
    def from_data_config(cls, data: DictConfig) -> FindingMasks:
        """The finding masks of the primary source of ``data`` (a CT-RATE layout) on its cache."""
        primary = data_sources(data)[0]
        if primary.name != "ct_rate":
            raise FindingMasksMissingError(
                f"Finding masks are read from a CT-RATE layout; the primary source is {primary.name!r}. "
                f"Expected: {EXPECTED_LAYOUT}."
            )
        root = resolve_root(Path(primary.root))
        read_label_names(root)  # fails before the scan when there are none
        records = {record.id: record for record in scan_ct_rate(root).records}
        return cls(resolve_cache_root(data), root, records)

    def cached_file(self, volume_id: str) -> Path:
        return self.cache_root / FINDING_MASKS_DIR / f"{volume_id}.npy"

    def volume(self, entry: CacheEntry) -> np.ndarray | None:
        """The entry's label map on its cached grid (uint8, entry.shape), or None (logged, and
        counted in ``skipped``) when the volume has no usable mask."""
        record = self.records.get(entry.id)
        if record is None:
            return self._skip(entry.id, "not in the source's records")
        source = finding_mask_path(self.source_root, record.image_path)
        if not source.is_file():
            return self._skip(entry.id, f"no mask file {source}")
        target = self.cached_file(entry.id)
        fresh = (
            npy_shape(target, MASK_DTYPE) == tuple(entry.shape)
            and target.stat().st_mtime_ns >= source.stat().st_mtime_ns
        )
        if fresh:
            return np.load(target, mmap_mode="r")
        try:
            labels = resample_finding_mask(record, source, self.spacing)
        except BadFindingMaskError as error:
            return self._skip(entry.id, str(error))
        if labels.shape != tuple(entry.shape):
            return self._skip(entry.id, f"mask grid {labels.shape} differs from the image grid {entry.shape}")
        target.parent.mkdir(parents=True, exist_ok=True)
        save_npy_atomic(labels, target, MASK_DTYPE)
        return labels

    def crop(self, entry: CacheEntry, start: Sequence[int], size: Sequence[int]) -> np.ndarray | None:
        """``volume(entry)[start : start + size]``, 0 outside the volume (as ``read_mask_crop``)."""
        labels = self.volume(entry)
        if labels is None:
            return None
        return _padded_crop(labels, tuple(int(s) for s in start), tuple(int(s) for s in size), 0)

    def _skip(self, volume_id: str, why: str) -> None:
        if volume_id not in self.skipped:
            log.warning("no finding mask for %s: %s", volume_id, why)
            self.skipped[volume_id] = why
        return None
