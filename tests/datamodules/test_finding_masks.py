"""Finding masks: the phantom CT-RATE writer's label maps of its drawn findings (real NIfTI files),
and their resampling onto the cached grid (``datamodules/finding_masks.py``)."""

from __future__ import annotations

import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from datamodules.cache import CacheIndex, cache_path, read_volume
from datamodules.finding_mask_layout import (
    FINDING_LABEL_VALUES,
    FindingMasksMissingError,
    finding_mask_path,
    read_label_names,
)
from datamodules.finding_masks import FindingMasks
from datamodules.phantom import findings as phantom
from datamodules.sources.ct_rate import SPLIT_LAYOUTS, scan_ct_rate

SPACING = 6.0
# The HU each masked finding is painted with (the hiatal hernia is fluid with an air cap: left out).
PAINTED_HU = {
    "Lung nodule": phantom.NODULE_HU,
    "Consolidation": phantom.CONSOLIDATION_HU,
    "Lung opacity": phantom.GROUND_GLASS_HU,
    "Atelectasis": phantom.ATELECTASIS_HU,
    "Emphysema": phantom.EMPHYSEMA_HU,
    "Pleural effusion": phantom.FLUID_HU,
    "Pericardial effusion": 10.0,  # datamodules/phantom/anatomy.py: the pericardial shell
    "Lymphadenopathy": phantom.NODE_HU,
    "Arterial wall calcification": phantom.CALCIUM_HU,
    "Coronary artery wall calcification": phantom.CORONARY_CALCIUM_HU,
    "Medical material": phantom.METAL_HU,
}


def _tables(root: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    labels = pd.concat([pd.read_csv(root / layout.labels) for layout in SPLIT_LAYOUTS]).set_index(
        "VolumeName"
    )
    meta = pd.concat([pd.read_csv(root / layout.metadata) for layout in SPLIT_LAYOUTS]).set_index(
        "VolumeName"
    )
    return labels, meta


def test_phantom_masks_cover_exactly_the_painted_findings(small_ct_rate_root: Path) -> None:
    root = small_ct_rate_root
    names = read_label_names(root)
    assert set(names.values()) == set(PAINTED_HU) | {"Hiatal hernia"}  # Cardiomegaly has no region
    assert all(FINDING_LABEL_VALUES[name] == value for value, name in names.items())
    labels, meta = _tables(root)
    checked: set[str] = set()
    for record in scan_ct_rate(root).records:
        volume = nib.load(record.image_path)
        mask_image = nib.load(finding_mask_path(root, record.image_path))
        assert mask_image.shape == volume.shape
        np.testing.assert_array_equal(mask_image.affine, volume.affine)  # stored like the volume
        mask = np.asarray(mask_image.dataobj)
        assert mask.dtype == np.uint8
        row = meta.loc[Path(record.image_path).name]
        hu = np.asarray(volume.dataobj).astype(np.float32) * row.RescaleSlope + row.RescaleIntercept
        shown = {names[int(v)] for v in np.unique(mask) if v}
        positive = {name for name in names.values() if labels.loc[Path(record.image_path).name, name] == 1}
        assert shown == positive, record.id  # every masked finding of the labels, and only those
        lung = np.median(hu[(mask == 0) & (hu < -700) & (hu > -950)])
        for name in shown & set(PAINTED_HU):
            inside = hu[mask == FINDING_LABEL_VALUES[name]]
            # Gaussian noise of 12 HU around the painted value in every masked voxel.
            assert abs(np.median(inside) - PAINTED_HU[name]) < 15, (record.id, name, np.median(inside))
            checked.add(name)
        if "Lung nodule" in shown:
            assert np.median(hu[mask == FINDING_LABEL_VALUES["Lung nodule"]]) > lung + 700
    assert {"Lung nodule", "Pleural effusion", "Consolidation"} <= checked, checked


@pytest.fixture(scope="module")
def masks(small_ct_rate_root: Path, tmp_path_factory: pytest.TempPathFactory, run_preprocess) -> FindingMasks:
    cache_dir = tmp_path_factory.mktemp("finding_cache")
    run_preprocess("ct_rate", small_ct_rate_root, cache_dir)
    records = {r.id: r for r in scan_ct_rate(small_ct_rate_root).records}
    return FindingMasks(cache_path(cache_dir, "ct_rate", SPACING, "paper"), small_ct_rate_root, records)


def test_masks_resampled_onto_the_cache_grid_land_on_their_findings(masks: FindingMasks) -> None:
    entries = CacheIndex.load(masks.cache_root).entries
    value = FINDING_LABEL_VALUES["Pleural effusion"]
    seen = 0
    for entry in entries:
        labels = masks.volume(entry)
        assert labels is not None and labels.shape == entry.shape
        hu = read_volume(entry).astype(np.float32)
        if (labels == value).sum() >= 20:
            # fluid (15 HU) against the lung around it, on the 6 mm grid
            assert hu[labels == value].mean() > hu[(hu > -950) & (hu < -600)].mean() + 600, entry.id
            seen += 1
    assert seen >= 2 and not masks.skipped
    # Cached: a second reader loads the file instead of resampling again.
    entry = entries[0]
    cached = masks.cached_file(entry.id)
    stamp = os.stat(cached).st_mtime_ns
    again = FindingMasks(masks.cache_root, masks.source_root, masks.records)
    np.testing.assert_array_equal(again.volume(entry), masks.volume(entry))
    assert os.stat(cached).st_mtime_ns == stamp
    # A crop is the slice of the map, 0 outside the volume.
    x, y, z = entry.shape
    crop = again.crop(entry, (-2, 1, 0), (x, y - 1, z + 3))
    np.testing.assert_array_equal(crop[2:, :, :z], np.asarray(again.volume(entry))[: x - 2, 1:, :])
    assert not crop[:2].any() and not crop[:, :, z:].any()


def test_data_without_finding_masks_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FindingMasksMissingError, match="phantom.*real data needs masks supplied"):
        read_label_names(tmp_path)
