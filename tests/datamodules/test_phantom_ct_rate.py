"""The phantom CT-RATE writer: real files in the real CT-RATE layout, labels that match the voxels."""

from __future__ import annotations

import ast
import hashlib
import json
import re
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from datamodules.labels import CT_RATE_LABELS
from datamodules.phantom.ct_rate_writer import write_phantom_ct_rate

N, SEED = 24, 0
REPORT_COLUMNS = ["VolumeName", "ClinicalInformation_EN", "Technique_EN", "Findings_EN", "Impressions_EN"]
META_KEYS = [
    "VolumeName",
    "Manufacturer",
    "PatientSex",
    "PatientAge",
    "Rows",
    "Columns",
    "SliceThickness",
    "XYSpacing",
    "ZSpacing",
    "RescaleIntercept",
    "RescaleSlope",
    "RescaleType",
    "NumberofSlices",
]
FILES = {
    "train": ("train_reports.csv", "train_predicted_labels.csv", "train_metadata.csv", "no_chest_train.txt"),
    "valid": (
        "validation_reports.csv",
        "valid_predicted_labels.csv",
        "validation_metadata.csv",
        "no_chest_valid.txt",
    ),
}
PATH_RE = re.compile(r"^(train|valid)_fixed/\1_([1-9]\d*)/\1_\2_([a-z])/\1_\2_\3_([1-9]\d*)\.nii\.gz$")


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("phantom") / "dataset"
    summary = write_phantom_ct_rate(out, N, seed=SEED, workers=2, progress=False)
    assert summary.n_scans == N and summary.root == out and not summary.reused
    return out


def _tables(root: Path, split: str) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, list[str]]:
    rep, lab, meta, no_chest = FILES[split]
    return (
        pd.read_csv(root / "radiology_text_reports" / rep),
        pd.read_csv(root / "multi_abnormality_labels" / lab),
        pd.read_csv(root / "metadata" / meta),
        (root / no_chest).read_text(encoding="utf-8").split(),
    )


def _volume_path(root: Path, name: str) -> Path:
    split, pid, scan, _ = name.removesuffix(".nii.gz").split("_")
    return root / f"{split}_fixed" / f"{split}_{pid}" / f"{split}_{pid}_{scan}" / name


def _load_ras(root: Path, name: str, meta: pd.Series) -> tuple[np.ndarray, tuple[np.ndarray, ...]]:
    """HU in RAS+ axis order and the world coordinates (mm) of each axis, as a correct reader does it."""
    img = nib.load(_volume_path(root, name))
    raw = np.asarray(img.dataobj)
    assert raw.dtype == np.int16
    hu = raw.astype(np.float32) * float(meta["RescaleSlope"]) + float(meta["RescaleIntercept"])
    signs = np.sign(np.diag(img.affine)[:3])
    for axis in range(3):
        if signs[axis] < 0:
            hu = np.flip(hu, axis)
    sx, sy = ast.literal_eval(meta["XYSpacing"])
    spacing = (sx, sy, float(meta["ZSpacing"]))
    axes = tuple((np.arange(n) - (n - 1) / 2.0) * s for n, s in zip(hu.shape, spacing, strict=True))
    return hu, axes


def _chest_volumes(root: Path) -> list[tuple[str, pd.Series, pd.Series, pd.Series]]:
    """(name, report row, label row, metadata row) of every chest volume."""
    out = []
    for split in FILES:
        rep, lab, meta, heads = _tables(root, split)
        rep, lab, meta = (
            rep.set_index("VolumeName"),
            lab.set_index("VolumeName"),
            meta.set_index("VolumeName"),
        )
        for name in lab.index:
            if name not in heads:
                out.append((name, rep.loc[name], lab.loc[name], meta.loc[name]))
    return out


def _box_fraction(
    hu: np.ndarray, axes: tuple[np.ndarray, ...], box: tuple[float, ...], lo: float, hi: float
) -> float:
    x, y, z = axes
    sel = np.ix_((x > box[0]) & (x < box[1]), (y > box[2]) & (y < box[3]), (z > box[4]) & (z < box[5]))
    sub = hu[sel]
    return float(((sub > lo) & (sub < hi)).mean())


def test_csv_columns_match_ct_rate(root: Path) -> None:
    for split in FILES:
        rep, lab, meta, _ = _tables(root, split)
        assert list(rep.columns) == REPORT_COLUMNS
        assert list(lab.columns) == ["VolumeName", *CT_RATE_LABELS]
        assert set(META_KEYS) <= set(meta.columns)
        assert set(lab[CT_RATE_LABELS].to_numpy().ravel().tolist()) <= {0, 1}
        for s in meta["XYSpacing"]:
            assert re.fullmatch(r"\[\d+\.\d+, \d+\.\d+\]", s)


def test_tree_and_rows_agree(root: Path) -> None:
    files = sorted(p.relative_to(root).as_posix() for p in root.glob("*_fixed/**/*.nii.gz"))
    assert files and all(PATH_RE.match(f) for f in files), files
    short = json.loads((root / "shortened_findings.json").read_text(encoding="utf-8"))
    all_names: set[str] = set()
    for split in FILES:
        names = {Path(f).name for f in files if f.startswith(f"{split}_fixed/")}
        rep, lab, meta, heads = _tables(root, split)
        for table in (rep, lab, meta):
            assert table["VolumeName"].is_unique
            assert set(table["VolumeName"]) == names
        assert 1 <= len(heads) <= 2 and set(heads) <= names
        assert (lab.set_index("VolumeName").loc[heads, CT_RATE_LABELS] == 0).all().all()
        pids = {int(n.split("_")[1]) for n in names}
        assert pids == set(range(1, max(pids) + 1))
        all_names |= names
    assert set(short) == all_names
    assert all(set(v) == {"positive", "negative"} for v in short.values())
    # Patients with two scans and scans with two reconstructions both occur; splits are by patient.
    assert any("_b_" in n for n in all_names) and any(n.endswith("_2.nii.gz") for n in all_names)
    manifest = json.loads((root / "phantom_manifest.json").read_text(encoding="utf-8"))
    assert (manifest["n"], manifest["seed"], manifest["n_volumes"]) == (N, SEED, len(files))


def test_reconstructions_share_scan_but_differ_in_matrix(root: Path) -> None:
    for split in FILES:
        rep, lab, meta, _ = _tables(root, split)
        meta = meta.assign(scan=meta["VolumeName"].str.rsplit("_", n=1).str[0])
        for scan, group in meta.groupby("scan"):
            if len(group) < 2:
                continue
            assert group["Rows"].nunique() == 2 and group["ZSpacing"].nunique() == 1
            names = group["VolumeName"].tolist()
            assert lab.set_index("VolumeName").loc[names].nunique().max() == 1, scan
            assert rep.set_index("VolumeName").loc[names].nunique().max() == 1, scan


def test_header_lies_and_orientations_vary(root: Path) -> None:
    orientations = set()
    for name, _, _, meta in _chest_volumes(root):
        img = nib.load(_volume_path(root, name))
        assert np.allclose(img.header.get_zooms(), 1.0)
        sx, sy = ast.literal_eval(meta["XYSpacing"])
        assert not np.isclose(sx, 1.0) and not np.isclose(float(meta["ZSpacing"]), 1.0)
        assert img.dataobj.slope == 1.0 and img.dataobj.inter == 0.0
        assert (int(meta["Columns"]), int(meta["Rows"]), int(meta["NumberofSlices"])) == img.shape
        orientations.add(nib.aff2axcodes(img.affine))
    assert orientations == {("R", "A", "S"), ("L", "P", "S")}


def test_raw_values_need_csv_rescale(root: Path) -> None:
    changed = 0
    for name, _, _, meta in _chest_volumes(root):
        img = nib.load(_volume_path(root, name))
        raw = np.asarray(img.dataobj)[:4, :4, :].astype(np.float32)  # a corner: air outside the body
        hu = raw * float(meta["RescaleSlope"]) + float(meta["RescaleIntercept"])
        assert abs(float(np.median(hu)) + 1000.0) < 15.0, name
        changed += abs(float(np.median(raw)) + 1000.0) > 100.0
    assert changed >= 3


def test_labels_agree_with_voxels(root: Path) -> None:
    metal, cardio = {0: [], 1: []}, {0: [], 1: []}
    for name, _, lab, meta in _chest_volumes(root):
        hu, axes = _load_ras(root, name, meta)
        metal[int(lab["Medical material"])].append(float(hu.max()))
        if not lab["Pericardial effusion"]:  # pericardial fluid also enlarges the cardiac silhouette
            # Soft-tissue fraction of a box around the heart (world mm): lung there unless the heart is big.
            frac = _box_fraction(hu, axes, (-90, 50, -10, 70, -60, -10), -200.0, 400.0)
            cardio[int(lab["Cardiomegaly"])].append(frac)
    assert metal[1] and metal[0]
    assert min(metal[1]) > 2000.0 and max(metal[0]) < 2000.0
    assert len(cardio[1]) >= 2 and len(cardio[0]) >= 2
    pos, neg = np.array(cardio[1]), np.array(cardio[0])
    auc = float((pos[:, None] > neg[None, :]).mean())
    assert auc >= 0.9 and pos.mean() > neg.mean() + 0.05, (cardio, auc)


def test_effusion_side_is_physical(root: Path) -> None:
    """Unilateral pleural fluid is on the side the report names, whatever the storage orientation."""
    short = json.loads((root / "shortened_findings.json").read_text(encoding="utf-8"))
    checked = 0
    for name, _, _, meta in _chest_volumes(root):
        positive = short[name]["positive"]
        side = (
            "right"
            if "Right pleural effusion." in positive
            else "left"
            if "Left pleural effusion." in positive
            else None
        )
        if side is None:
            continue
        hu, axes = _load_ras(root, name, meta)
        # Posterior-basal boxes of each hemithorax (world RAS: +x = patient right).
        right = _box_fraction(hu, axes, (35, 120, -90, -35, -110, 20), -40.0, 70.0)
        left = _box_fraction(hu, axes, (-120, -35, -90, -35, -110, 20), -40.0, 70.0)
        assert (right > left) == (side == "right"), (name, side, right, left)
        checked += 1
    assert checked >= 2


def test_reports_name_present_findings(root: Path) -> None:
    terms = {
        "Lung nodule": "nodule",
        "Pleural effusion": "pleural effusion",
        "Cardiomegaly": "enlarged|cardiomegaly|heart size is",
        "Emphysema": "emphysema",
        "Consolidation": "consolidat",
        "Medical material": "catheter|pacemaker|sternotomy|nasogastric",
    }
    seen = dict.fromkeys(terms, 0)
    findings = set()
    for _, rep, lab, _ in _chest_volumes(root):
        findings.add(rep["Findings_EN"])
        for label, pattern in terms.items():
            if lab[label]:
                seen[label] += 1
                assert re.search(pattern, rep["Findings_EN"], re.IGNORECASE), (label, rep["Findings_EN"])
                assert re.search(pattern, rep["Impressions_EN"], re.IGNORECASE), (
                    label,
                    rep["Impressions_EN"],
                )
        assert "Trachea" in rep["Findings_EN"] or "trachea" in rep["Findings_EN"]
    assert sum(v > 0 for v in seen.values()) >= 4
    assert len(findings) >= 0.6 * N  # reports are varied


def _digest(root: Path) -> dict[str, str]:
    files = [p for p in root.rglob("*") if p.is_file() and p.suffix in (".csv", ".json", ".txt")]
    files += sorted(root.glob("*_fixed/**/*.nii.gz"))[:3]
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def test_deterministic_and_seed_dependent(root: Path, tmp_path: Path) -> None:
    again = write_phantom_ct_rate(tmp_path / "again", N, seed=SEED, workers=1, progress=False)
    assert _digest(again.root) == _digest(root)  # same bytes, whatever the number of workers
    other = write_phantom_ct_rate(tmp_path / "other", N, seed=SEED + 1, workers=2, progress=False)
    lab = "multi_abnormality_labels/train_predicted_labels.csv"
    rep = "radiology_text_reports/train_reports.csv"
    assert (other.root / lab).read_bytes() != (root / lab).read_bytes()
    assert (other.root / rep).read_bytes() != (root / rep).read_bytes()


def test_complete_phantom_is_reused(root: Path) -> None:
    start = time.perf_counter()
    summary = write_phantom_ct_rate(root, N, seed=SEED, workers=2, progress=False)
    assert summary.reused and summary.n_scans == N
    assert time.perf_counter() - start < 2.0


def test_rewrites_when_parameters_change(tmp_path: Path) -> None:
    out = tmp_path / "ds"
    write_phantom_ct_rate(out, 5, seed=3, workers=1, progress=False)
    second = write_phantom_ct_rate(out, 2, seed=3, workers=1, progress=False)
    assert not second.reused and second.n_scans == 2
    assert sum(1 for _ in out.glob("*_fixed/**/*.nii.gz")) == second.n_volumes  # no stale files


@pytest.mark.slow
def test_time_300_scans(tmp_path: Path) -> None:
    start = time.perf_counter()
    summary = write_phantom_ct_rate(tmp_path / "ds", 300, seed=0, workers=2, progress=False)
    print(
        f"\nwrote {summary.n_volumes} volumes ({summary.n_scans} scans) in {time.perf_counter() - start:.1f} s"
    )
