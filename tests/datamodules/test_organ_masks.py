"""Organ masks from the phantom CT-RATE writer (TotalSegmentator label maps in CT-RATE's ts_seg/
layout) through the CT-RATE source into the cache, on the session phantom (real NIfTI files)."""

from __future__ import annotations

import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from datamodules.cache import CacheIndex, cache_path, read_volume
from datamodules.preprocess import build_cache
from datamodules.sources.ct_rate import scan_ct_rate
from datamodules.totalseg import (
    HEART,
    LUNG_LOBES,
    ORGAN_LABEL_MAPS,
    ORGANS,
    TS_BODY,
    TS_ORGAN_IDS,
    TS_TOTAL,
    ct_rate_mask_path,
)

SPACING = 6.0


@pytest.fixture(scope="module")
def index(phantom_cache_dir: Path) -> CacheIndex:
    return CacheIndex.load(cache_path(phantom_cache_dir, "ct_rate", SPACING, "paper"))


def test_phantom_writes_totalsegmentator_maps_in_the_ct_rate_layout(phantom_root: Path) -> None:
    volumes = sorted(phantom_root.glob("*_fixed/*/*/*.nii.gz"))
    assert volumes
    for volume in volumes[:6]:
        image = nib.load(volume)
        for task in (TS_TOTAL, TS_BODY):
            path = ct_rate_mask_path(phantom_root, task, volume)
            assert path == phantom_root / "ts_seg" / task / volume.relative_to(phantom_root)
            label_map = nib.load(path)
            assert label_map.shape == image.shape
            np.testing.assert_array_equal(label_map.affine, image.affine)  # the same (lying) header
            assert np.asarray(label_map.dataobj).dtype == np.uint8
    chest = scan_ct_rate(phantom_root).records[0].image_path  # a chest CT (head CTs are dropped)
    total = np.asarray(nib.load(ct_rate_mask_path(phantom_root, TS_TOTAL, chest)).dataobj)
    present = set(np.unique(total).tolist())
    for organ in ("lungs", "heart", "aorta", "spine"):
        assert present & set(ORGAN_LABEL_MAPS[organ][1]), organ


def test_source_attaches_masks(phantom_root: Path) -> None:
    records = scan_ct_rate(phantom_root).records
    assert records and all(set(r.masks) == set(ORGANS) for r in records)


def test_cached_masks_land_on_the_right_voxels(index: CacheIndex) -> None:
    """Both storage orientations (RAS and LPS, lying header spacing) give masks on their tissue."""
    assert all(entry.masks == list(ORGANS) for entry in index.entries)
    for entry in index.entries[:12]:
        hu = read_volume(entry).astype(np.float32)
        bits = np.load(entry.mask_file)
        assert bits.shape == hu.shape and bits.dtype == np.uint8
        mean = {o: hu[((bits >> i) & 1).astype(bool)].mean() for i, o in enumerate(ORGANS)}
        assert mean["lungs"] < -600, (entry.id, mean)
        assert mean["spine"] > 200, (entry.id, mean)
        assert -150 < mean["heart"] < 300, (entry.id, mean)
        assert hu[((bits >> ORGANS.index("body")) & 1) == 0].mean() < -900  # outside the body is air


def test_an_older_cache_without_masks_gains_them(phantom_root: Path, tmp_path: Path) -> None:
    records = scan_ct_rate(phantom_root).records[:3]
    bare = [type(r)(**{**r.__dict__, "masks": {}}) for r in records]
    root = tmp_path / "cache"
    first = build_cache(bare, root, spacing=12.0, workers=1, progress=False)
    assert not any(e.masks for e in first.entries)
    stamps = {e.id: os.stat(e.file).st_mtime_ns for e in first.entries}
    second = build_cache(records, root, spacing=12.0, workers=1, progress=False)
    assert all(e.masks == list(ORGANS) and e.mask_file.is_file() for e in second.entries)
    assert {e.id: os.stat(e.file).st_mtime_ns for e in second.entries} == stamps  # volumes reused
    assert second.is_complete()


def test_the_totalsegmentator_label_map_is_cached_beside_the_bit_field(index: CacheIndex) -> None:
    """ts_labels/<id>.npy holds the ``total`` class ids on the image grid; the entry lists the ids
    present, and the unions the bit field stores are the same voxels read from it."""
    lobes = sorted(LUNG_LOBES.values())
    for entry in index.entries[:12]:
        labels = np.load(entry.ts_labels_file)
        bits = np.load(entry.mask_file)
        assert labels.shape == bits.shape == entry.shape and labels.dtype == np.uint8
        assert entry.ts_labels == sorted(int(i) for i in np.unique(labels) if i)
        assert set(lobes) <= set(entry.ts_labels) and HEART in entry.ts_labels
        lungs = ((bits >> ORGANS.index("lungs")) & 1).astype(bool)
        np.testing.assert_array_equal(np.isin(labels, lobes), lungs)
        spine = ((bits >> ORGANS.index("spine")) & 1).astype(bool)
        thoracic = np.isin(labels, TS_ORGAN_IDS["thoracic_vertebrae"])
        assert thoracic.any() and not (thoracic & ~spine).any()


def test_an_older_cache_without_ts_labels_gains_them(phantom_root: Path, tmp_path: Path) -> None:
    records = scan_ct_rate(phantom_root).records[:3]
    assert all(r.ts_total is not None for r in records)
    bare = [type(r)(**{**r.__dict__, "ts_total": None}) for r in records]
    root = tmp_path / "cache"
    first = build_cache(bare, root, spacing=12.0, workers=1, progress=False)
    assert all(e.masks and not e.ts_labels for e in first.entries)
    stamps = {e.id: os.stat(e.file).st_mtime_ns for e in first.entries}
    second = build_cache(records, root, spacing=12.0, workers=1, progress=False)
    assert all(e.ts_labels and e.ts_labels_file.is_file() for e in second.entries)
    assert {e.id: os.stat(e.file).st_mtime_ns for e in second.entries} == stamps  # volumes reused
    assert second.is_complete()
    second.entries[0].ts_labels_file.unlink()
    assert second.missing_entries() == [second.entries[0]]


def test_label_maps_are_cached_only_for_the_organ_tasks_that_read_them(
    small_ct_rate_root: Path, tmp_path: Path, data_config
) -> None:
    """A CLIP run's cache (no organ tasks) holds no ts_labels/; Uniferum's call adds them beside the
    same volumes."""
    from datamodules.datamodule import ensure_source_cache
    from datamodules.mixing import data_sources

    data = data_config(tmp_path, root=str(small_ct_rate_root))
    (source,) = data_sources(data)
    plain = ensure_source_cache(data, source, progress=False)
    assert plain.entries and all(e.masks and not e.ts_labels for e in plain.entries)
    assert not (plain.root / "ts_labels").exists()
    stamps = {e.id: os.stat(e.file).st_mtime_ns for e in plain.entries}
    full = ensure_source_cache(data, source, progress=False, masks=True, ts_labels=True)
    assert all(e.ts_labels and e.ts_labels_file.is_file() for e in full.entries)
    assert {e.id: os.stat(e.file).st_mtime_ns for e in full.entries} == stamps
    assert (
        ensure_source_cache(data, source, progress=False, masks=True, ts_labels=True).entries == full.entries
    )
