"""Image-only (NLST style): DICOM series and NIfTI files, one volume per acquisition, DICOM geometry."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import pytest

from datamodules.cache import cache_path
from datamodules.phantom.geometry import Grid
from datamodules.phantom.image_only_writer import write_dicom_series
from datamodules.phantom.merlin_writer import write_nifti_hu
from datamodules.preprocess import preprocess_volume_with_affine
from datamodules.records import Record
from datamodules.sources.image_only import find_series, scan_image_only

SPACING = 6.0


def test_one_volume_per_acquisition(image_only_root: Path) -> None:
    series = find_series(image_only_root)
    acquisitions = {p.parent for p in series}
    assert len(series) > len(acquisitions)  # some acquisitions have two reconstructions
    assert any(p.is_dir() for p in series) and any(p.name.endswith(".nii.gz") for p in series)
    scan = scan_image_only(image_only_root)
    assert scan.rejected == [] and len(scan.records) == len(acquisitions)
    assert {Path(r.image_path).parent for r in scan.records} == acquisitions
    assert all(r.split == "train" and r.labels == {} and r.sections == {} for r in scan.records)
    assert {r.patient_id for r in scan.records} == {p.name for p in image_only_root.iterdir() if p.is_dir()}
    assert scan_image_only(image_only_root).records == scan.records  # the seeded choice is stable


def test_dicom_and_nifti_of_one_volume_agree_and_marker_lands(tmp_path: Path) -> None:
    grid = Grid((24, 20, 16), (2.0, 2.0, 3.0))
    hu = np.full(grid.shape, -1000.0, dtype=np.float32)
    hu[17:20, 3:5, 11:13] = 800.0  # right, posterior, superior
    write_dicom_series(hu, grid, tmp_path / "p1" / "T0" / "dicom", "p1", "1.2.3.4")
    write_nifti_hu(hu, grid, tmp_path / "p1" / "T1" / "nifti.nii.gz", lps=True, offset_storage=False)
    dicom = Record("d", "p1", "train", tmp_path / "p1" / "T0" / "dicom")
    nifti = Record("n", "p1", "train", tmp_path / "p1" / "T1" / "nifti.nii.gz")
    out_d, aff_d = preprocess_volume_with_affine(dicom, 2.0, "colipri_inference")
    out_n, aff_n = preprocess_volume_with_affine(nifti, 2.0, "colipri_inference")
    np.testing.assert_allclose(aff_d, aff_n, atol=1e-3)
    assert np.abs(out_d.astype(int) - out_n.astype(int)).max() <= 1
    world = (np.array([18.0, 3.5, 11.5]) - (np.array(grid.shape) - 1) / 2) * np.array(grid.spacing)
    expected = np.linalg.solve(aff_d[:3, :3], world - aff_d[:3, 3])
    assert np.abs(np.argwhere(out_d > 0).mean(axis=0) - expected).max() <= 1.0


def test_end_to_end_datamodule(image_only_root: Path, sources_cache_dir: Path, make_datamodule) -> None:
    dm = make_datamodule(sources_cache_dir, source="image_only", root=str(image_only_root), batch_size=2)
    assert dm.label_names == [] and len(dm.splits["test"]) == 0
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (2, 1, 32, 32, 32) and batch["kind"] == ["image_only"] * 2
    assert batch["labels"].shape == (2, 0) and "report" not in batch
    assert len(next(iter(dm.loader("val")))["image_id"]) >= 1


@pytest.mark.slow
def test_bad_series_are_quarantined(image_only_root: Path, tmp_path: Path, run_preprocess) -> None:
    root = tmp_path / "nlst"
    shutil.copytree(image_only_root, root)
    dicom = next(p for p in find_series(root) if p.is_dir())
    broken = root / "999999" / "T0" / "broken"
    shutil.copytree(dicom, broken)
    for f in sorted(broken.glob("*.dcm"))[3:6]:
        f.write_bytes(b"")
    nifti = next(p for p in find_series(root) if p.name.endswith(".nii.gz"))
    (root / "999998" / "T0").mkdir(parents=True)
    data = nifti.read_bytes()
    (root / "999998" / "T0" / "cut.nii.gz").write_bytes(data[: len(data) // 2])
    run_preprocess("image_only", root, tmp_path / "cache")
    cache_root = cache_path(tmp_path / "cache", "image_only", SPACING, "paper")
    with open(cache_root / "quarantine.csv", newline="", encoding="utf-8") as f:
        quarantine = {r["id"]: r["reason"] for r in csv.DictReader(f)}
    assert set(quarantine) == {"999999_T0_broken", "999998_T0_cut"}
    assert "zero-byte" in quarantine["999999_T0_broken"]
    assert "truncated" in quarantine["999998_T0_cut"]
