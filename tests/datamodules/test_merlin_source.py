"""Merlin: the phantom in the real layout, the source (columns, -1 masking, splits, report split),
preprocessing through the CLI, the DataModule, and every bad-input class with its quarantine row."""

from __future__ import annotations

import csv
import json
import math
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from datamodules.cache import CacheIndex, cache_path
from datamodules.errors import MissingLabelColumnError
from datamodules.labels import CT_RATE_LABELS, MERLIN_LABELS, MERLIN_TO_CT_RATE
from datamodules.phantom.geometry import Grid
from datamodules.phantom.merlin_writer import write_nifti_hu
from datamodules.preprocess import preprocess_volume_with_affine
from datamodules.sources import merlin
from datamodules.sources.merlin import scan_merlin

MERLIN_N = 10  # tests/conftest.py
SPACING = 6.0


def test_phantom_has_the_real_merlin_columns(merlin_root: Path) -> None:
    reports = pd.read_excel(merlin_root / "reports_final.xlsx", dtype=str)
    assert list(reports.columns) == ["study id", "Findings", "Split"]
    assert set(reports["Split"]) == {"train", "val", "test"}
    labels = pd.read_csv(merlin_root / "zero_shot_findings_disease_cls.csv")
    assert list(labels.columns) == ["study id", *MERLIN_LABELS] and len(MERLIN_LABELS) == 30
    assert set(np.unique(labels[MERLIN_LABELS].to_numpy())) <= {-1, 0, 1}
    assert (labels[MERLIN_LABELS].to_numpy() == -1).any()  # "not mentioned" occurs
    volumes = sorted(p.name for p in (merlin_root / "merlin_data").glob("*.nii.gz"))
    assert volumes == sorted(f"{sid}.nii.gz" for sid in reports["study id"])
    assert "study id" in pd.read_csv(merlin_root / "metadata.csv").columns


def test_source_masks_minus_one_and_keeps_official_splits(merlin_root: Path) -> None:
    scan = scan_merlin(merlin_root)
    assert scan.rejected == [] and len(scan.records) == MERLIN_N
    raw = pd.read_csv(merlin_root / "zero_shot_findings_disease_cls.csv", dtype=str).set_index("study id")
    splits = pd.read_excel(merlin_root / "reports_final.xlsx", dtype=str).set_index("study id")["Split"]
    minus_one = zero = one = 0
    for record in scan.records:
        assert record.split == splits[record.id] and record.source == "merlin" and record.spacing is None
        assert list(record.labels) == MERLIN_LABELS
        for name, value in record.labels.items():
            cell = raw.loc[record.id, name]
            if cell == "-1":
                assert math.isnan(value)
                minus_one += 1
            else:
                assert value == float(cell)
                zero += cell == "0"
                one += cell == "1"
        assert "IMPRESSION" not in record.sections["findings"] and record.sections["impressions"]
        assert record.sections["findings"].startswith("LOWER THORAX:")
    assert minus_one and zero and one


def test_visible_findings_are_in_the_voxels(merlin_root: Path) -> None:
    """Splenomegaly and renal cysts as the labels say, measured in the preprocessed RAS+ volume."""
    manifest = json.loads((merlin_root / "phantom_manifest.json").read_text(encoding="utf-8"))
    records = {r.id: r for r in scan_merlin(merlin_root).records}
    checked = 0
    for sid, findings in manifest["findings"].items():
        if "renal_cyst" not in findings:
            continue
        volume, affine = preprocess_volume_with_affine(records[sid], 3.0, "colipri_inference")
        centre = np.array(findings["renal_cyst"]["center"])
        index = np.rint(np.linalg.solve(affine[:3, :3], centre - affine[:3, 3])).astype(int)
        assert -30 <= volume[tuple(index)] <= 40, volume[tuple(index)]  # water in a ~150 HU kidney
        assert records[sid].labels["renal_cyst"] == 1.0
        checked += 1
    assert checked >= 1


def test_geometry_marker_lands_at_the_expected_voxel(tmp_path: Path) -> None:
    """A marker written with a true LPS header (as Merlin's files) lands at its RAS+ position."""
    grid = Grid((30, 24, 20), (2.0, 2.5, 3.0))
    hu = np.full(grid.shape, -1000.0, dtype=np.float32)
    hu[20:23, 4:7, 14:16] = 900.0  # RAS index box: right, posterior, superior of centre
    path = tmp_path / "ACmarker01.nii.gz"
    write_nifti_hu(hu, grid, path, lps=True, offset_storage=True)
    record = merlin.Record(id="ACmarker01", patient_id="p", split="train", image_path=path, source="merlin")
    out, affine = preprocess_volume_with_affine(record, 1.0, "colipri_inference")
    world_marker = (np.array([21.0, 5.0, 14.5]) - (np.array(grid.shape) - 1) / 2) * np.array(grid.spacing)
    expected = np.linalg.solve(affine[:3, :3], world_marker - affine[:3, 3])
    found = np.argwhere(out > 500).mean(axis=0)
    assert np.abs(found - expected).max() <= 1.0, (found, expected)


def test_end_to_end_datamodule(merlin_root: Path, sources_cache_dir: Path, make_datamodule) -> None:
    index = CacheIndex.load(cache_path(sources_cache_dir, "merlin", SPACING, "paper"))
    assert index.label_names == MERLIN_LABELS and len(index.entries) == MERLIN_N
    dm = make_datamodule(sources_cache_dir, source="merlin", root=str(merlin_root))
    assert dm.label_names == MERLIN_LABELS
    assert {len(dm.splits[s]) for s in ("val", "test")} == {2}  # Merlin's own val/test splits
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (4, 1, 32, 32, 32) and set(batch["kind"]) == {"paired"}
    assert set(batch["source"]) == {"merlin"}
    assert batch["labels"].shape == (4, 30)
    assert torch_equal(batch["label_mask"], ~batch["labels"].isnan())
    assert (~batch["label_mask"]).any()  # the -1 cells are masked
    assert all(report.strip() for report in batch["report"]) and batch["input_ids"].shape[0] == 4
    val = next(iter(dm.loader("val")))
    assert all("IMPRESSION" not in r for r in val["report"])


def torch_equal(a, b) -> bool:
    return bool((a == b).all())


def test_labels_map_onto_ct_rate_names() -> None:
    from datamodules.labels import label_projection, project_labels

    projection = label_projection("merlin", MERLIN_LABELS, "ct_rate", CT_RATE_LABELS)
    values = [math.nan] * 30
    values[MERLIN_LABELS.index("pleural_effusion")] = 1.0
    values[MERLIN_LABELS.index("cardiomegaly")] = 0.0
    values[MERLIN_LABELS.index("splenomegaly")] = 1.0  # no CT-RATE counterpart
    mapped = dict(zip(CT_RATE_LABELS, project_labels(values, projection), strict=True))
    assert mapped["Pleural effusion"] == 1.0 and mapped["Cardiomegaly"] == 0.0
    assert math.isnan(mapped["Atelectasis"])  # mapped, but unknown (-1) in Merlin
    assert math.isnan(mapped["Emphysema"]) and math.isnan(mapped["Lung nodule"])  # no mapping
    assert sum(bool(p) for p in projection) == len(MERLIN_TO_CT_RATE) == 6


# ------------------------------------------------------------------------------------------ bad input

BAD = {
    "ACbad0trunc": "truncated",
    "ACbad0zero": "zero-byte",
    "ACbad04d": "not a 3D volume",
    "ACbad02d": "not a 3D volume",
    "ACbad0nan": "NaN or Inf",
    "ACbad0spc": "zero, negative or non-finite spacing",
    "ACbad0noreport": "missing report",
    "ACbad0empty": "empty Findings",
    "ACbad0utf": "non-UTF-8",
    "ACbad0novol": "without a volume file",
    "ACbad0dup": "duplicate 'study id' rows",
}


def _bad_copy(merlin_root: Path, out: Path) -> Path:
    """The phantom plus one extra study per bad-input class (the good studies are untouched)."""
    shutil.copytree(merlin_root, out)
    volumes = out / "merlin_data"
    template = sorted(volumes.glob("*.nii.gz"))[0]
    reports = pd.read_excel(out / "reports_final.xlsx", dtype=str)
    labels = pd.read_csv(out / "zero_shot_findings_disease_cls.csv", dtype=str)
    good_text = reports["Findings"].iloc[0]
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    for sid in BAD:
        if sid != "ACbad0novol":
            shutil.copy(template, volumes / f"{sid}.nii.gz")
        text = {"ACbad0empty": "", "ACbad0utf": "LIVER: Cyst in segment \ufffd\ufffd. IMPRESSION: Cyst."}.get(
            sid, good_text
        )
        if sid != "ACbad0noreport":
            reports.loc[len(reports)] = [sid, text, "train"]
        labels.loc[len(labels)] = [sid, *(["0"] * 30)]
    reports.loc[len(reports)] = ["ACbad0dup", "A conflicting second report.", "train"]
    data = (volumes / "ACbad0trunc.nii.gz").read_bytes()
    (volumes / "ACbad0trunc.nii.gz").write_bytes(data[: len(data) // 2])
    (volumes / "ACbad0zero.nii.gz").write_bytes(b"")
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 8, 2), np.int16), affine), volumes / "ACbad04d.nii.gz")
    nib.save(nib.Nifti1Image(np.zeros((8, 8), np.int16), affine), volumes / "ACbad02d.nii.gz")
    nan = np.zeros((8, 8, 8), np.float32)
    nan[1, 2, 3] = np.nan
    nib.save(nib.Nifti1Image(nan, affine), volumes / "ACbad0nan.nii.gz")
    zero_spacing = nib.Nifti1Image(np.zeros((8, 8, 8), np.int16), None)
    zero_spacing.header["pixdim"][1:4] = (2.0, 0.0, 2.0)
    nib.save(zero_spacing, volumes / "ACbad0spc.nii.gz")
    reports.to_excel(out / "reports_final.xlsx", index=False)
    labels.to_csv(out / "zero_shot_findings_disease_cls.csv", index=False)
    return out


def test_bad_inputs_are_quarantined_with_reasons_and_the_rest_is_served(
    merlin_root: Path, tmp_path: Path, run_preprocess, make_datamodule
) -> None:
    root = _bad_copy(merlin_root, tmp_path / "merlin_bad")
    cache_dir = tmp_path / "cache"
    run_preprocess("merlin", root, cache_dir)
    cache_root = cache_path(cache_dir, "merlin", SPACING, "paper")
    with open(cache_root / "quarantine.csv", newline="", encoding="utf-8") as f:
        quarantine = {row["id"]: row["reason"] for row in csv.DictReader(f)}
    assert set(quarantine) == set(BAD)
    for sid, reason in BAD.items():
        assert reason in quarantine[sid], (sid, quarantine[sid])

    good = {r.id for r in scan_merlin(merlin_root).records}
    dm = make_datamodule(cache_dir, source="merlin", root=str(root))
    served = set()
    for split in ("train", "val", "test"):
        for batch in dm.loader(split):
            served |= set(batch["image_id"])
    assert served == good  # every good study, no bad one

    # A re-run finds every entry complete and rewrites nothing.
    mtimes = {p.name: p.stat().st_mtime_ns for p in (cache_root / "volumes").glob("*.npy")}
    run_preprocess("merlin", root, cache_dir)
    assert {p.name: p.stat().st_mtime_ns for p in (cache_root / "volumes").glob("*.npy")} == mtimes


def test_missing_label_column_fails_fast(merlin_root: Path, tmp_path: Path) -> None:
    root = tmp_path / "merlin"
    shutil.copytree(merlin_root, root)
    labels = pd.read_csv(root / "zero_shot_findings_disease_cls.csv").drop(columns=["ascites"])
    labels.to_csv(root / "zero_shot_findings_disease_cls.csv", index=False)
    with pytest.raises(MissingLabelColumnError, match="ascites") as info:
        scan_merlin(root)
    assert "splenomegaly" in str(info.value)  # names the columns it found
