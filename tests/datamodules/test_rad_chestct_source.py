"""RAD-ChestCT: .npz volumes (key "ct", int16 HU, 0.8 mm), the abnormality x location tables, summary
labels, the mapping onto CT-RATE names, geometry and units, bad inputs."""

from __future__ import annotations

import csv
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from datamodules.cache import CacheIndex, cache_path
from datamodules.errors import MissingLabelColumnError
from datamodules.labels import (
    CT_RATE_LABELS,
    RAD_CHESTCT_ABNORMALITIES,
    RAD_CHESTCT_LABELS,
    RAD_CHESTCT_LOCATIONS,
    label_projection,
    project_labels,
)
from datamodules.phantom.rad_chestct_writer import ras_to_stack, write_npz
from datamodules.preprocess import preprocess_volume_with_affine
from datamodules.readers import read_npz
from datamodules.records import Record
from datamodules.sources.rad_chestct import scan_rad_chestct

SPACING = 6.0  # tests/datamodules/conftest.py
TABLES = [
    "imgtrain_Abnormality_and_Location_Labels.csv",
    "imgvalid_Abnormality_and_Location_Labels.csv",
    "imgtest_Abnormality_and_Location_Labels.csv",
]


def test_phantom_layout_and_columns(rad_root: Path) -> None:
    assert len(RAD_CHESTCT_ABNORMALITIES) == 84 and len(RAD_CHESTCT_LOCATIONS) == 52
    ids = set()
    for table in TABLES:
        df = pd.read_csv(rad_root / table)
        assert df.columns[0] == "NoteAcc_DEID" and len(df.columns) == 1 + 84 * 52
        assert all("*" in c for c in df.columns[1:])
        ids |= set(df["NoteAcc_DEID"])
    files = {p.stem for p in (rad_root / "volumes").glob("*.npz")}
    assert files == ids and {i[:3] for i in ids} == {"trn", "val", "tst"}
    with np.load(sorted((rad_root / "volumes").glob("*.npz"))[0]) as archive:
        ct = archive["ct"]
        assert archive.files == ["ct"]
    assert ct.dtype == np.int16
    assert ct.ndim == 3 and ct.min() >= -1000 and ct.max() <= 1000


def test_source_summary_labels_and_splits(rad_root: Path) -> None:
    scan = scan_rad_chestct(rad_root)
    assert scan.rejected == [] and len(scan.records) == 5
    manifest = json.loads((rad_root / "phantom_manifest.json").read_text(encoding="utf-8"))
    tables = {t: pd.read_csv(rad_root / t).set_index("NoteAcc_DEID") for t in TABLES}
    for record in scan.records:
        assert record.split == {"trn": "train", "val": "val", "tst": "test"}[record.id[:3]]
        assert record.spacing == (0.8, 0.8, 0.8) and (record.hu_slope, record.hu_intercept) == (1.0, 0.0)
        assert list(record.labels) == RAD_CHESTCT_LABELS and record.sections == {}
        row = next(t.loc[record.id] for t in tables.values() if record.id in t.index)
        for abnormality in RAD_CHESTCT_ABNORMALITIES:
            cells = row[[f"{abnormality}*{loc}" for loc in RAD_CHESTCT_LOCATIONS]]
            assert record.labels[abnormality] == float(cells.max())  # summary = any location
        assert record.labels["calcification*aorta"] == row["calcification*aorta"]
        present = set(manifest["ct_rate_labels"][record.id])
        mapped = dict(
            zip(
                CT_RATE_LABELS,
                project_labels(
                    record.label_vector(RAD_CHESTCT_LABELS),
                    label_projection("rad_chestct", RAD_CHESTCT_LABELS, "ct_rate", CT_RATE_LABELS),
                ),
                strict=True,
            )
        )
        for name in CT_RATE_LABELS:
            if name == "Mosaic attenuation pattern":
                assert math.isnan(mapped[name])  # no RAD-ChestCT counterpart
            elif name in (
                "Pulmonary fibrotic sequela",
                "Peribronchial thickening",
                "Bronchiectasis",
                "Interlobular septal thickening",
            ):
                continue  # not drawn by the chest scene
            else:
                assert mapped[name] == float(name in present), (record.id, name)


def test_mapping_covers_17_ct_rate_classes() -> None:
    projection = label_projection("rad_chestct", RAD_CHESTCT_LABELS, "ct_rate", CT_RATE_LABELS)
    unmapped = [n for n, p in zip(CT_RATE_LABELS, projection, strict=True) if not p]
    assert unmapped == ["Mosaic attenuation pattern"]
    values = [0.0] * len(RAD_CHESTCT_LABELS)
    values[RAD_CHESTCT_LABELS.index("calcification*heart")] = 1.0
    mapped = dict(zip(CT_RATE_LABELS, project_labels(values, projection), strict=True))
    assert (
        mapped["Coronary artery wall calcification"] == 1.0 and mapped["Arterial wall calcification"] == 0.0
    )


def test_npz_geometry_and_units(tmp_path: Path) -> None:
    """A marker at a known RAS+ voxel of a 0.8 mm volume lands there after preprocessing; HU stay HU."""
    hu = np.full((40, 36, 30), -1000.0, dtype=np.float32)
    hu[28:31, 4:7, 22:25] = 40.0  # right, posterior, superior
    path = tmp_path / "trn09999.npz"
    write_npz(hu, path)
    stack = np.load(path)["ct"]
    assert stack.shape == (30, 36, 40)  # (slice, row, column)
    assert stack[30 - 1 - 23, 36 - 1 - 5, 40 - 1 - 29] == 40  # top slice first, rows A->P, columns R->L
    record = Record("trn09999", "trn09999", "train", path, spacing=(0.8, 0.8, 0.8))
    ras, affine = read_npz(record)
    np.testing.assert_array_equal(ras, np.rint(hu))
    out, out_affine = preprocess_volume_with_affine(record, 1.6, "colipri_inference")
    world = affine[:3, :3] @ np.array([29.0, 5.0, 23.0]) + affine[:3, 3]
    expected = np.linalg.solve(out_affine[:3, :3], world - out_affine[:3, 3])
    found = np.argwhere(out > -500).mean(axis=0)
    assert np.abs(found - expected).max() <= 0.75, (found, expected)
    assert -1000 <= out.min() and out.max() <= 40  # units: HU, not HU x 1000


def test_cached_volumes_are_in_hu(sources_cache_dir: Path) -> None:
    index = CacheIndex.load(cache_path(sources_cache_dir, "rad_chestct", SPACING, "paper"))
    assert index.label_names == RAD_CHESTCT_LABELS and len(index.entries) == 5
    volume = np.load(index.entries[0].file)
    assert volume.min() >= -1000 and volume.max() <= 1000
    # HU x 1000 (a units bug of one public loader) would saturate nearly every voxel at +-1000.
    assert ((volume > -200) & (volume < 200)).any() and (np.abs(volume) < 990).mean() > 0.05


def test_end_to_end_datamodule(rad_root: Path, sources_cache_dir: Path, make_datamodule) -> None:
    dm = make_datamodule(sources_cache_dir, source="rad_chestct", root=str(rad_root), batch_size=2)
    assert dm.label_names == RAD_CHESTCT_LABELS
    assert [len(dm.splits[s]) for s in ("train", "val", "test")] == [3, 1, 1]
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (2, 1, 32, 32, 32) and batch["kind"] == ["image_only"] * 2
    assert "report" not in batch and batch["labels"].shape == (2, len(RAD_CHESTCT_LABELS))
    assert bool(batch["label_mask"].all())
    test = next(iter(dm.loader("test")))
    assert test["image_id"][0].startswith("tst")


BAD = {
    "trn90001": "truncated",
    "trn90002": "zero-byte",
    "trn90003": "no array 'ct'",
    "trn90004": "not a 3D volume",
    "trn90005": "label row without a volume file",
    "trn90006": "no row in any label table",
    "trn90007": "duplicate NoteAcc_DEID",
}


@pytest.mark.slow
def test_bad_inputs_are_quarantined(rad_root: Path, tmp_path: Path, run_preprocess) -> None:
    root = tmp_path / "rad"
    shutil.copytree(rad_root, root)
    volumes = root / "volumes"
    template = sorted(volumes.glob("trn*.npz"))[0]
    data = template.read_bytes()
    (volumes / "trn90001.npz").write_bytes(data[: len(data) // 3])
    (volumes / "trn90002.npz").write_bytes(b"")
    np.savez(volumes / "trn90003.npz", image=np.zeros((4, 4, 4), np.int16))
    np.savez(volumes / "trn90004.npz", ct=np.zeros((16, 16), np.int16))
    for rid in ("trn90006", "trn90007"):
        shutil.copy(template, volumes / f"{rid}.npz")
    train = pd.read_csv(root / TABLES[0])
    row = train.iloc[0].copy()
    for rid in ("trn90001", "trn90002", "trn90003", "trn90004", "trn90005", "trn90007"):
        row["NoteAcc_DEID"] = rid
        train.loc[len(train)] = row
    train.to_csv(root / TABLES[0], index=False)
    valid = pd.read_csv(root / TABLES[1])
    row["NoteAcc_DEID"] = "trn90007"  # the same id in a second table
    valid.loc[len(valid)] = row
    valid.to_csv(root / TABLES[1], index=False)

    cache_dir = tmp_path / "cache"
    run_preprocess("rad_chestct", root, cache_dir)
    cache_root = cache_path(cache_dir, "rad_chestct", SPACING, "paper")
    with open(cache_root / "quarantine.csv", newline="", encoding="utf-8") as f:
        quarantine = {r["id"]: r["reason"] for r in csv.DictReader(f)}
    assert set(quarantine) == set(BAD)
    for rid, reason in BAD.items():
        assert reason in quarantine[rid], (rid, quarantine[rid])
    assert {e.id for e in CacheIndex.load(cache_root).entries} == {
        p.stem for p in (rad_root / "volumes").glob("*.npz")
    }

    train.drop(columns=[c for c in train.columns if c.startswith("calcification*")]).to_csv(
        root / TABLES[0], index=False
    )
    with pytest.raises(MissingLabelColumnError, match="calcification"):
        scan_rad_chestct(root)


def test_stack_convention_round_trips() -> None:
    hu = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    stack = ras_to_stack(hu)
    np.testing.assert_array_equal(stack.transpose(2, 1, 0)[::-1, ::-1, ::-1], hu)
