"""The CT-RATE source on a tiny fake tree in the real layout (real NIfTI files, real CSVs)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from datamodules.errors import DataRootError, MissingLabelColumnError
from datamodules.labels import CT_RATE_LABELS
from datamodules.sources.ct_rate import parse_xy_spacing, scan_ct_rate

BAD_BYTES_MARK = "@@BADBYTES@@"


def _volume(root: Path, folder: str, vid: str, shape: tuple[int, int, int] = (6, 6, 4)) -> None:
    prefix, pid, scan, _ = vid.split("_")
    directory = root / folder / f"{prefix}_{pid}" / f"{prefix}_{pid}_{scan}"
    directory.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.zeros(shape, np.int16), np.eye(4)), directory / f"{vid}.nii.gz")


def _rows(ids: list[str], **overrides: dict) -> tuple[list[dict], list[dict], list[dict]]:
    reports, labels, metadata = [], [], []
    for i, vid in enumerate(ids):
        name = f"{vid}.nii.gz"
        reports.append(
            {
                "VolumeName": name,
                "ClinicalInformation_EN": "Cough.",
                "Technique_EN": "Non-contrast chest CT.",
                "Findings_EN": f"Findings for {vid}. Lungs are clear.",
                "Impressions_EN": f"Impression {vid}.",
            }
        )
        labels.append({"VolumeName": name, **{label: (i + j) % 2 for j, label in enumerate(CT_RATE_LABELS)}})
        metadata.append(
            {
                "VolumeName": name,
                "Rows": 512,
                "Columns": 512,
                "XYSpacing": "[0.75, 0.8]",
                "ZSpacing": 1.5,
                "RescaleSlope": 1.0,
                "RescaleIntercept": -1024.0,
            }
        )
        for table, row in (("reports", reports[-1]), ("labels", labels[-1]), ("metadata", metadata[-1])):
            row.update(overrides.get(vid, {}).get(table, {}))
    return reports, labels, metadata


def _write_csv(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    text = pd.DataFrame(rows).to_csv(index=False)
    # Latin-1 bytes in a UTF-8 file, as a broken export would leave them.
    path.write_bytes(text.encode("utf-8").replace(BAD_BYTES_MARK.encode(), b"caf\xe9 \xff"))


TRAIN_VOLUMES = {
    # recon choice: smallest in-plane matrix (from the metadata CSV) wins
    "train_1_a_1": (8, 8, 4),
    "train_1_a_2": (6, 6, 4),
    "train_1_b_1": (6, 6, 4),  # another scan of the same patient: kept too
    "train_2_a_1": (6, 6, 4),  # head CT
    "train_3_a_1": (6, 6, 4),  # no CSV rows at all
    "train_5_a_1": (6, 6, 4),  # empty Findings
    "train_6_a_1": (6, 6, 4),  # conflicting duplicate report rows
    "train_7_a_1": (6, 6, 4),  # zero spacing
    "train_8_a_1": (8, 8, 4),  # Rows/Columns missing -> header shape decides
    "train_8_a_2": (6, 6, 4),
    "train_9_a_2": (6, 6, 4),  # tie -> lowest reconstruction number (numeric: 2 < 10)
    "train_9_a_10": (6, 6, 4),
    "train_10_a_1": (6, 6, 4),  # undecodable bytes in the report
    "train_11_a_1": (6, 6, 4),  # exact duplicate label rows: harmless, collapsed
}
VALID_VOLUMES = {"valid_1_a_1": (6, 6, 4), "valid_2_a_1": (6, 6, 4)}
EXPECTED_IDS = {"train_1_a_2", "train_1_b_1", "train_8_a_2", "train_9_a_2", "train_11_a_1", "valid_1_a_1"}


def make_fake_ct_rate(base: Path) -> Path:
    """A fake CT-RATE under ``base/dataset``; returns ``base``."""
    root = base / "dataset"
    for vid, shape in TRAIN_VOLUMES.items():
        _volume(root, "train_fixed", vid, shape)
    for vid, shape in VALID_VOLUMES.items():
        _volume(root, "valid_fixed", vid, shape)

    train_csv_ids = [v for v in TRAIN_VOLUMES if v != "train_3_a_1"] + ["train_4_a_1"]  # 4: row, no volume
    overrides = {
        "train_1_a_1": {"metadata": {"Rows": 512, "Columns": 512}},
        "train_1_a_2": {
            "metadata": {"Rows": 256, "Columns": 256, "RescaleSlope": 2.0, "RescaleIntercept": -1000}
        },
        "train_5_a_1": {"reports": {"Findings_EN": ""}},
        "train_7_a_1": {"metadata": {"XYSpacing": "[0.0, 0.0]"}},
        "train_8_a_1": {"metadata": {"Rows": "", "Columns": ""}},
        "train_8_a_2": {"metadata": {"Rows": "", "Columns": ""}},
        "train_10_a_1": {"reports": {"Findings_EN": f"Nodule in {BAD_BYTES_MARK}."}},
    }
    reports, labels, metadata = _rows(train_csv_ids, **overrides)
    reports.append({**reports[train_csv_ids.index("train_6_a_1")], "Findings_EN": "A different report."})
    labels.append(dict(labels[train_csv_ids.index("train_11_a_1")]))
    _write_csv(root / "radiology_text_reports/train_reports.csv", reports)
    _write_csv(root / "multi_abnormality_labels/train_predicted_labels.csv", labels)
    _write_csv(root / "metadata/train_metadata.csv", metadata)

    reports, labels, metadata = _rows(list(VALID_VOLUMES))
    _write_csv(root / "radiology_text_reports/validation_reports.csv", reports)
    _write_csv(root / "multi_abnormality_labels/valid_predicted_labels.csv", labels)
    _write_csv(root / "metadata/validation_metadata.csv", metadata)

    (root / "no_chest_train.txt").write_text("train_2_a_1.nii.gz\n", encoding="utf-8")
    (root / "no_chest_valid.txt").write_text("valid_2_a_1\n", encoding="utf-8")
    return base


def test_scan_fake_ct_rate(tmp_path: Path) -> None:
    scan = scan_ct_rate(make_fake_ct_rate(tmp_path))
    records = {r.id: r for r in scan.records}
    rejected = {vid: reason for vid, _, reason in scan.rejected}

    assert set(records) == EXPECTED_IDS
    # head CTs are a deliberate exclusion, not quarantined
    assert "train_2_a_1" not in rejected and "valid_2_a_1" not in rejected
    # the unchosen reconstructions are dropped silently too
    assert not {"train_1_a_1", "train_8_a_1", "train_9_a_10"} & set(rejected)
    assert set(rejected) == {
        "train_3_a_1",
        "train_4_a_1",
        "train_5_a_1",
        "train_6_a_1",
        "train_7_a_1",
        "train_10_a_1",
    }
    assert "no row in radiology_text_reports/train_reports.csv" in rejected["train_3_a_1"]
    assert "no row in metadata/train_metadata.csv" in rejected["train_3_a_1"]
    assert "without a volume file" in rejected["train_4_a_1"]
    assert "Findings" in rejected["train_5_a_1"]
    assert "duplicate VolumeName rows" in rejected["train_6_a_1"]
    assert "spacing" in rejected["train_7_a_1"]
    assert rejected["train_10_a_1"].startswith("non-UTF-8 text")
    paths = {vid: path for vid, path, _ in scan.rejected}
    assert paths["train_4_a_1"] == "" and paths["train_3_a_1"].endswith("train_3_a_1.nii.gz")

    r = records["train_1_a_2"]
    assert r.patient_id == "train_1" and r.split == "train" and r.source == "ct_rate"
    assert r.spacing == (0.8, 0.75, 1.5)
    assert (r.hu_slope, r.hu_intercept) == (2.0, -1000.0)
    assert r.image_path == tmp_path / "dataset/train_fixed/train_1/train_1_a/train_1_a_2.nii.gz"
    assert r.sections == {
        "findings": "Findings for train_1_a_2. Lungs are clear.",
        "impressions": "Impression train_1_a_2.",
    }
    assert list(r.labels) == CT_RATE_LABELS
    assert all(v in (0.0, 1.0) for v in r.labels.values())

    v = records["valid_1_a_1"]
    assert v.split == "test" and v.patient_id == "valid_1" and v.hu_intercept == -1024.0


def test_all_reconstructions_keeps_every_reconstruction_of_an_acquisition(tmp_path: Path) -> None:
    """Uniferum trains on every reconstruction (data.reconstructions: all); head CTs and bad rows
    are still left out."""
    scan = scan_ct_rate(make_fake_ct_rate(tmp_path), all_reconstructions=True)
    assert {r.id for r in scan.records} == EXPECTED_IDS | {"train_1_a_1", "train_8_a_1", "train_9_a_10"}
    assert "train_2_a_1" not in {r.id for r in scan.records}  # head CT
    assert len(scan.rejected) == 6


def test_all_reconstructions_are_cached_apart(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`ctvlp preprocess --all-reconstructions` builds the cache data.reconstructions=all (Uniferum)
    reads, beside the default one; fit reuses it."""
    from omegaconf import OmegaConf

    from ctvlp.cli import main
    from datamodules.datamodule import ensure_cache, resolve_cache_root

    root = make_fake_ct_rate(tmp_path / "ct_rate")
    cache_dir = tmp_path / "cache"
    arguments = [
        "preprocess",
        "--root",
        str(root),
        "--cache-dir",
        str(cache_dir),
        "--workers",
        "1",
        "--no-progress",
    ]
    assert main([*arguments, "--all-reconstructions"]) == 0
    built = cache_dir / "ct_rate_all_reconstructions" / "2mm-paper"
    stamps = {p.name: p.stat().st_mtime_ns for p in (built / "volumes").iterdir()}

    def data(reconstructions: str) -> Any:
        return OmegaConf.create(
            {
                "source": "ct_rate", "root": str(root), "cache_dir": str(cache_dir), "spacing": 2.0,
                "interpolation": "paper", "reconstructions": reconstructions, "preprocess_workers": 1,
            }
        )  # fmt: skip

    assert resolve_cache_root(data("all")) == built
    every = ensure_cache(data("all"), False)  # reused: nothing rewritten
    assert {p.name: p.stat().st_mtime_ns for p in (built / "volumes").iterdir()} == stamps
    one = ensure_cache(data("one_per_acquisition"), False)
    assert resolve_cache_root(data("one_per_acquisition")) == cache_dir / "ct_rate" / "2mm-paper"
    assert {e.id for e in every.entries} == {e.id for e in one.entries} | {
        "train_1_a_1",
        "train_8_a_1",
        "train_9_a_10",
    }
    capsys.readouterr()
    assert main(["preprocess", "--source", "merlin", "--root", str(root), "--all-reconstructions"]) == 2
    assert "only ct_rate has several" in capsys.readouterr().err


def test_label_subset_and_missing_label_column(tmp_path: Path) -> None:
    base = make_fake_ct_rate(tmp_path)
    scan = scan_ct_rate(base, label_names=["Emphysema", "Cardiomegaly"])
    assert all(list(r.labels) == ["Emphysema", "Cardiomegaly"] for r in scan.records)

    with pytest.raises(MissingLabelColumnError, match="Not a label") as info:
        scan_ct_rate(base, label_names=["Emphysema", "Not a label"])
    assert "Cardiomegaly" in str(info.value)  # names the columns it found

    path = base / "dataset/multi_abnormality_labels/valid_predicted_labels.csv"
    pd.read_csv(path).drop(columns=["Emphysema"]).to_csv(path, index=False)
    with pytest.raises(MissingLabelColumnError, match="Emphysema"):
        scan_ct_rate(base)


def test_missing_or_wrong_root(tmp_path: Path) -> None:
    with pytest.raises(DataRootError, match="make demo") as info:
        scan_ct_rate(tmp_path / "absent")
    assert "train_fixed" in str(info.value) and "train_reports.csv" in str(info.value)
    with pytest.raises(DataRootError, match="make demo"):
        scan_ct_rate(tmp_path)  # exists, but empty
    (tmp_path / "train_fixed").mkdir()
    with pytest.raises(DataRootError, match="metadata/train_metadata.csv"):
        scan_ct_rate(tmp_path)


def test_missing_values_in_labels_are_unknown(tmp_path: Path) -> None:
    base = make_fake_ct_rate(tmp_path)
    path = base / "dataset/multi_abnormality_labels/valid_predicted_labels.csv"
    table = pd.read_csv(path)
    table["Emphysema"] = table["Emphysema"].astype(object)
    table.loc[0, "Emphysema"] = ""
    table.to_csv(path, index=False)
    record = next(r for r in scan_ct_rate(base).records if r.id == "valid_1_a_1")
    assert math.isnan(record.labels["Emphysema"])


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[0.75, 0.75]", (0.75, 0.75)),
        ("[0.7, 0.8]", (0.8, 0.7)),
        ("(0.6 0.6)", (0.6, 0.6)),
        ("0.5", (0.5, 0.5)),
        ("['0.683', '0.683']", (0.683, 0.683)),
        ("1e-1\\1e-1", (0.1, 0.1)),
        ("", None),
        ("[1, 2, 3]", None),
    ],
)
def test_parse_xy_spacing(text: str, expected: tuple[float, float] | None) -> None:
    assert parse_xy_spacing(text) == expected


def test_cli_preprocess_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import argparse

    from ctvlp.commands import preprocess
    from datamodules.cache import CacheIndex, cache_path
    from datamodules.preprocess import read_quarantine

    parser = argparse.ArgumentParser()
    preprocess.add_parser(parser.add_subparsers(dest="command", required=True))
    base = make_fake_ct_rate(tmp_path / "data")
    cache_dir = tmp_path / "cache"
    args = parser.parse_args(
        [
            "preprocess",
            "--root",
            str(base),
            "--cache-dir",
            str(cache_dir),
            "--spacing",
            "1",
            "--spacing",
            "2",
            "--workers",
            "1",
            "--no-progress",
        ]
    )
    assert args.handler(args) == 0

    out = capsys.readouterr().out
    for spacing in (1.0, 2.0):
        root = cache_path(cache_dir, "ct_rate", spacing, "paper")
        index = CacheIndex.load(root)
        assert {e.id for e in index.entries} == EXPECTED_IDS
        assert {r[0] for r in read_quarantine(root)} == {
            "train_3_a_1",
            "train_4_a_1",
            "train_5_a_1",
            "train_6_a_1",
            "train_7_a_1",
            "train_10_a_1",
        }
        assert f"cache {root}: 6 volumes (5 train, 1 test), 6 quarantined" in out
