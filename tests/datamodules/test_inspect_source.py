"""INSPECT: the phantom CTPA layout, the source (tables, True / False / Censored labels, splits,
patients, rejected rows), the quarantine of corrupted-affine and two-channel scans through
`ctvlp preprocess`, the embolus in the voxels, and the Uniferum tasks of INSPECT's labels."""

from __future__ import annotations

import csv
import json
import math
import shutil
from collections import Counter
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from ctvlp.cli import main
from datamodules.cache import CacheIndex, cache_path
from datamodules.errors import BadVolumeError, DataRootError, MissingLabelColumnError
from datamodules.labels import CT_RATE_LABELS, INSPECT_LABELS, label_projection
from datamodules.preprocess import load_hu
from datamodules.records import Record
from datamodules.sources.inspect import scan_inspect
from datamodules.sources.registry import get_source
from datamodules.text import ReportTransform
from datamodules.uniferum_tasks import DIAGNOSIS, PROGNOSIS, TaskSampler, build_tasks, task_label

N = 12  # >= 10: the phantom writes its two bad scans
SCALE = 0.5  # ~45 voxels per axis
SPACING = 6.0  # tests/datamodules/conftest.py
LABELS_TSV, SPLITS_TSV, MAPPING_TSV = (
    "labels_20250611.tsv",
    "splits_20250611.tsv",
    "study_mapping_20250611.tsv",
)


@pytest.fixture(scope="module")
def inspect_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small phantom INSPECT, written through `ctvlp phantom`."""
    root = tmp_path_factory.mktemp("phantoms") / "inspect"
    argv = ["phantom", "--source", "inspect", "--out", str(root), "--n", str(N), "--scale", str(SCALE)]
    assert main([*argv, "--workers", "1", "--no-progress"]) == 0
    return root


@pytest.fixture(scope="module")
def manifest(inspect_root: Path) -> dict:
    return json.loads((inspect_root / "phantom_manifest.json").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def inspect_cache_dir(inspect_root: Path, tmp_path_factory: pytest.TempPathFactory, run_preprocess) -> Path:
    """`ctvlp preprocess --source inspect --spacing 6 --cache-dir DIR` of the phantom: DIR."""
    cache_dir = tmp_path_factory.mktemp("inspect_cache")
    run_preprocess("inspect", inspect_root, cache_dir)
    return cache_dir


@pytest.fixture(scope="module")
def inspect_cache(inspect_cache_dir: Path) -> Path:
    """The cache's own folder."""
    return cache_path(inspect_cache_dir, "inspect", SPACING, "paper")


def _table(root: Path, name: str) -> pd.DataFrame:
    return pd.read_csv(
        root / name, sep="\t" if name.endswith(".tsv") else ",", dtype=str, keep_default_na=False
    )


def _copy(root: Path, out: Path) -> Path:
    shutil.copytree(root, out)
    return out


# ------------------------------------------------------------------------------------- the phantom


def test_phantom_writes_the_release_layout(inspect_root: Path, manifest: dict) -> None:
    volumes = sorted((inspect_root / "CTPA").glob("*.nii.gz"))
    assert len(volumes) == N
    labels = _table(inspect_root, LABELS_TSV)
    assert list(labels.columns) == ["impression_id", "pe_positive_nlp", *INSPECT_LABELS[1:]]
    assert set(labels.drop(columns="impression_id").to_numpy().ravel()) <= {"True", "False", "Censored"}
    assert set(_table(inspect_root, SPLITS_TSV)["split"]) == {"train", "valid", "test"}
    assert list(_table(inspect_root, MAPPING_TSV).columns) == ["impression_id", "person_id"]
    assert list(_table(inspect_root, "Final_impressions.csv").columns) == ["impression_id", "impressions"]
    assert {p.name.removesuffix(".nii.gz") for p in volumes} == set(labels["impression_id"])
    assert set(manifest["summary"]["bad_cases"]) == {"corrupted_affine", "two_channels"}
    bad = set(manifest["summary"]["bad_cases"].values())
    image = nib.load(next(p for p in volumes if p.name.removesuffix(".nii.gz") not in bad))
    assert image.get_data_dtype() == np.int16 and image.ndim == 3 and max(image.shape) <= 50


# -------------------------------------------------------------------------------------- the source


def test_records_labels_splits_and_patients(inspect_root: Path, manifest: dict) -> None:
    scan = scan_inspect(inspect_root)
    assert scan.rejected == [] and len(scan.records) == N
    summary = manifest["summary"]
    splits = Counter(r.split for r in scan.records)
    assert splits == {"train": summary["n_train"], "val": summary["n_val"], "test": summary["n_test"]}

    labels = _table(inspect_root, LABELS_TSV).set_index("impression_id")
    texts = _table(inspect_root, "Final_impressions.csv").set_index("impression_id")["impressions"]
    persons = _table(inspect_root, MAPPING_TSV).set_index("impression_id")["person_id"]
    cells = Counter()
    for record in scan.records:
        assert list(record.labels) == INSPECT_LABELS and record.source == "inspect"
        assert record.spacing is None and record.image_path.parent.name == "CTPA"
        assert record.patient_id == persons[record.id]
        assert record.sections == {"findings": texts[record.id], "impressions": texts[record.id]}
        assert ReportTransform(section="both").select(record.sections) == texts[record.id]  # said once
        for name, column in zip(INSPECT_LABELS, ["pe_positive_nlp", *INSPECT_LABELS[1:]], strict=True):
            cell, value = labels.loc[record.id, column], record.labels[name]
            cells[cell] += 1
            expected = {"True": 1.0, "False": 0.0}.get(cell)
            assert math.isnan(value) if expected is None else value == expected, (record.id, name, cell)
        assert record.labels["pe_positive"] == float(bool(manifest["studies"][record.id]["pe"]))
    assert cells["Censored"] > 0 and cells["True"] > 0 and cells["False"] > 0

    # Patients with two studies: one patient id, one split.
    by_patient: dict[str, set[str]] = {}
    for record in scan.records:
        by_patient.setdefault(record.patient_id, set()).add(record.split)
    assert len(by_patient) == summary["n_patients"] < N
    assert all(len(s) == 1 for s in by_patient.values())


def test_impressions_name_the_embolus(inspect_root: Path, manifest: dict) -> None:
    for record in scan_inspect(inspect_root).records:
        text, branches = record.sections["impressions"], manifest["studies"][record.id]["pe"]
        if branches:
            where = text.split("Acute pulmonary embolism in the ")[1].split(" pulmonary arter")[0]
            assert where.replace(" and", ",").split(", ") == branches, text
        else:
            assert "pulmonary embolism." in text and "Acute" not in text


def test_registered_as_a_paired_source_without_ct_rate_labels() -> None:
    spec = get_source("inspect")
    assert spec.kind == "paired" and spec.label_names == INSPECT_LABELS
    assert label_projection("inspect", INSPECT_LABELS, "ct_rate", CT_RATE_LABELS) == [[]] * 18


def test_older_table_names_and_numeric_cells(inspect_root: Path, tmp_path: Path) -> None:
    """Final_labels.csv with a pe_positive column and 1 / 0.0 / true / blank cells, Final_splits.csv,
    and no mapping table (every study its own patient)."""
    root = _copy(inspect_root, tmp_path / "inspect")
    labels = _table(root, LABELS_TSV).rename(columns={"pe_positive_nlp": "pe_positive"})
    labels = labels.replace({"True": "1", "False": "0.0", "Censored": ""})
    labels.loc[0, "1_month_mortality"] = "true"
    labels.to_csv(root / "Final_labels.csv", index=False)
    _table(root, SPLITS_TSV).to_csv(root / "Final_splits.csv", index=False)
    for name in (LABELS_TSV, SPLITS_TSV, MAPPING_TSV):
        (root / name).unlink()

    original = {r.id: r for r in scan_inspect(inspect_root).records}
    scan = scan_inspect(root)
    assert scan.rejected == [] and len(scan.records) == N
    for record in scan.records:
        assert record.patient_id == record.id and record.split == original[record.id].split
        expected = original[record.id].label_vector(INSPECT_LABELS)
        if record.id == labels.loc[0, "impression_id"]:
            expected[1] = 1.0
        assert np.array_equal(record.label_vector(INSPECT_LABELS), expected, equal_nan=True)


def test_every_problem_with_one_study_is_a_rejected_row(inspect_root: Path, tmp_path: Path) -> None:
    root = _copy(inspect_root, tmp_path / "inspect")
    impressions = _table(root, "Final_impressions.csv")
    labels, splits = _table(root, LABELS_TSV), _table(root, SPLITS_TSV)
    template = sorted((root / "CTPA").glob("*.nii.gz"))[0]
    first, second, third = impressions["impression_id"][:3]
    text = impressions["impressions"][0]
    impressions.loc[len(impressions)] = ["PEnovolume", text]  # tables only
    splits.loc[len(splits)] = ["PEnovolume", "train"]
    for sid in ("PEnoimpression", "PE bad"):  # volume (and split) only
        shutil.copy(template, root / "CTPA" / f"{sid}.nii.gz")
        splits.loc[len(splits)] = [sid, "train"]
    impressions.loc[len(impressions)] = ["PE bad", text]
    impressions.loc[len(impressions)] = [first, "A conflicting second impression."]
    splits.loc[splits["impression_id"] == second, "split"] = "holdout"
    impressions.loc[impressions["impression_id"] == third, "impressions"] = ""
    impressions.to_csv(root / "Final_impressions.csv", index=False)
    splits.to_csv(root / SPLITS_TSV, sep="\t", index=False)
    labels.to_csv(root / LABELS_TSV, sep="\t", index=False)

    scan = scan_inspect(root)
    reasons = {sid: reason for sid, _, reason in scan.rejected}
    expected = {
        "PEnovolume": "row in Final_impressions.csv without a volume file",
        "PEnoimpression": "missing impression: no row in Final_impressions.csv",
        "PE bad": "impression id is not usable as a file name",
        first: "duplicate 'impression_id' rows in Final_impressions.csv",
        second: "unknown split 'holdout' in splits_20250611.tsv",
        third: "missing or empty impressions in Final_impressions.csv",
    }
    assert set(reasons) == set(expected)
    for sid, reason in expected.items():
        assert reason in reasons[sid], (sid, reasons[sid])
    assert len(scan.records) == N - 3


def test_missing_tables_and_columns_fail_at_once(inspect_root: Path, tmp_path: Path) -> None:
    root = _copy(inspect_root, tmp_path / "inspect")
    (root / LABELS_TSV).unlink()
    with pytest.raises(DataRootError, match="labels_20250611.tsv or Final_labels.csv") as error:
        scan_inspect(root)
    assert "ctvlp phantom --source inspect --out DIR" in str(error.value)
    _table(inspect_root, LABELS_TSV).drop(columns="12_month_PH").to_csv(
        root / LABELS_TSV, sep="\t", index=False
    )
    with pytest.raises(MissingLabelColumnError, match="12_month_PH"):
        scan_inspect(root)
    with pytest.raises(DataRootError, match="does not exist"):
        scan_inspect(tmp_path / "nowhere")


# ---------------------------------------------------------------------------- quarantine and voxels


def test_preprocess_quarantines_the_two_bad_scans(inspect_cache: Path, manifest: dict) -> None:
    with open(inspect_cache / "quarantine.csv", newline="", encoding="utf-8") as f:
        quarantine = {row["id"]: row["reason"] for row in csv.DictReader(f)}
    bad = manifest["summary"]["bad_cases"]
    assert set(quarantine) == set(bad.values())
    assert quarantine[bad["corrupted_affine"]].startswith("corrupted affine (singular direction matrix")
    assert "two channels" in quarantine[bad["two_channels"]]
    assert "(shape (" in quarantine[bad["two_channels"]]

    index = CacheIndex.load(inspect_cache)
    assert index.label_names == INSPECT_LABELS
    assert {e.id for e in index.entries} == set(manifest["studies"]) - set(bad.values())
    assert all(e.sections["findings"] and e.source == "inspect" for e in index.entries)


def test_paired_batches_with_impressions_and_masked_censored_labels(
    inspect_root: Path, inspect_cache_dir: Path, make_datamodule
) -> None:
    dm = make_datamodule(inspect_cache_dir, source="inspect", root=str(inspect_root))
    assert dm.label_names == INSPECT_LABELS
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (4, 1, 32, 32, 32) and set(batch["kind"]) == {"paired"}
    assert set(batch["source"]) == {"inspect"} and batch["labels"].shape == (4, len(INSPECT_LABELS))
    assert bool((batch["label_mask"] == ~batch["labels"].isnan()).all())
    assert all("pulmonary embolism" in report for report in batch["report"])
    assert batch["input_ids"].shape[0] == 4


def test_the_embolus_is_a_filling_defect_in_a_bright_artery(inspect_root: Path, manifest: dict) -> None:
    bad = set(manifest["summary"]["bad_cases"].values())
    checked = 0
    for sid, study in manifest["studies"].items():
        if sid in bad or not study["emboli_mm"]:
            continue
        image = nib.load(inspect_root / "CTPA" / f"{sid}.nii.gz")
        hu = image.get_fdata(dtype=np.float32)  # the header's scl_slope / scl_inter applied
        to_voxel = np.linalg.inv(image.affine)
        for embolus in study["emboli_mm"]:
            clot, blood = (
                float(hu[tuple(np.rint(to_voxel @ [*embolus[key], 1.0])[:3].astype(int))])
                for key in ("center", "probe")
            )
            assert -20.0 < clot < 90.0 and blood > 220.0, (sid, embolus, clot, blood)
            checked += 1
    assert checked >= 2


@pytest.mark.parametrize(
    ("name", "shape", "reason"),
    [
        ("two_channels_4d", (8, 8, 8, 2), r"two channels \(shape \(8, 8, 8, 2\)\)"),
        ("two_channels_5d", (8, 8, 8, 1, 2), r"two channels \(shape \(8, 8, 8, 1, 2\)\)"),
        ("three_channels", (8, 8, 8, 3), "3 channels"),
    ],
)
def test_multi_channel_nifti_is_a_bad_volume(tmp_path: Path, name: str, shape: tuple, reason: str) -> None:
    path = tmp_path / f"{name}.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros(shape, np.int16), np.diag([2.0, 2.0, 2.0, 1.0])), path)
    with pytest.raises(BadVolumeError, match=reason) as error:
        load_hu(Record(id=name, patient_id=name, split="train", image_path=path))
    assert "not a 3D volume" in str(error.value)


def _affine(kind: str) -> np.ndarray:
    affine = np.diag([2.0, 2.0, 3.0, 1.0])
    if kind == "nan":
        affine[1, 3] = np.nan
    elif kind == "zero":
        affine[:3, 1] = 0.0
    elif kind == "equal_columns":
        affine[:3, 1] = affine[:3, 0]
    elif kind == "nearly_flat":
        affine[:3, 2] = [2.0, 0.0, 0.05]  # the slice axis almost in the x axis
    elif kind == "gantry_tilt":  # a sheared grid (20 degrees) is a valid one
        affine[:3, 2] = [0.0, 3.0 * math.sin(math.radians(20)), 3.0 * math.cos(math.radians(20))]
    return affine


@pytest.mark.parametrize(
    ("kind", "reason"),
    [
        ("nan", r"corrupted affine \(non-finite entries\)"),
        ("zero", r"corrupted affine \(zero voxel size"),
        ("equal_columns", r"corrupted affine \(singular direction matrix"),
        ("nearly_flat", r"corrupted affine \(singular direction matrix"),
        ("gantry_tilt", None),
    ],
)
def test_corrupted_affines_are_bad_volumes(tmp_path: Path, kind: str, reason: str | None) -> None:
    image = nib.Nifti1Image(np.zeros((8, 8, 8, 1), np.int16), None)
    image.set_sform(_affine(kind), code=1)
    path = tmp_path / f"{kind}.nii.gz"
    nib.save(image, path)
    record = Record(id=kind, patient_id=kind, split="train", image_path=path)
    if reason is None:
        hu, affine = load_hu(record)
        assert hu.shape == (8, 8, 8) and np.allclose(np.linalg.norm(affine[:3, :3], axis=0), [2, 2, 3])
        return
    with pytest.raises(BadVolumeError, match=reason):
        load_hu(record)


# --------------------------------------------------------------------------------- Uniferum tasks


def test_uniferum_tasks_of_inspect_labels_never_sample_a_censored_label(inspect_cache: Path) -> None:
    index = CacheIndex.load(inspect_cache)
    tasks = build_tasks({"inspect": index.label_names}, organs=())
    texts = {t.text: t for t in tasks}
    assert texts["Diagnose the presence of pulmonary embolism in the pulmonary arteries"].kind == DIAGNOSIS
    for text in (
        "Predict the risk of mortality in 1 months",
        "Predict the risk of mortality in 6 months",
        "Predict the risk of mortality in 12 months",
        "Predict the risk of readmission in 1 months",
        "Predict the risk of readmission in 12 months",
        "Predict the risk of pulmonary hypertension in 12 months",
    ):
        assert texts[text].kind == PROGNOSIS
    assert len(tasks) == len(INSPECT_LABELS)

    volumes = [("inspect", entry.labels, []) for entry in index.entries]
    assert any(math.isnan(v) for _, labels, _ in volumes for v in labels)  # some labels are Censored
    sampler = TaskSampler(tasks, volumes, seed=0)
    for epoch in range(3):
        draw = sampler.draw(epoch)
        assert len(draw) == len(sampler) > 0
        for v, t, target in zip(draw.volume, draw.task, draw.target, strict=True):
            value = task_label(volumes[v][1], "inspect", tasks[t])
            assert value == target and not math.isnan(value)
    for t, task in enumerate(tasks):
        known = [task_label(labels, "inspect", task) for _, labels, _ in volumes]
        positives = sum(v == 1.0 for v in known)
        negatives = sum(v == 0.0 for v in known)
        assert int((sampler.draw(0).task == t).sum()) == positives + min(positives, negatives)


def test_uniferum_trains_on_ct_rate_and_inspect_together(
    inspect_root: Path, phantom_overrides: list[str]
) -> None:
    """uniferum_inspect.yaml: one task list over both datasets; INSPECT volumes carry the PE and
    prognosis tasks, keep INSPECT's own validation split, and make no CT-RATE diagnosis sample."""
    from ctvlp.config.loader import load_experiment
    from lightning_modules.uniferum import UniferumModule

    overrides = [
        *phantom_overrides,
        f"data.inspect_root={inspect_root}",
        "data.num_workers=0",
        "data.preprocess_workers=1",
    ]
    cfg = load_experiment("uniferum_inspect", "cpu_demo", overrides)
    datamodule = UniferumModule.build_datamodule(cfg)
    datamodule.prepare_data()
    datamodule.setup()
    tasks = {t.text: t for t in datamodule.tasks}
    pe = tasks["Diagnose the presence of pulmonary embolism in the pulmonary arteries"]
    death = tasks["Predict the risk of mortality in 6 months"]
    assert set(pe.columns) == {"inspect"} and set(death.columns) == {"inspect"}
    train = datamodule.datasets["train"]
    sources = [e.source for e in train.volumes.entries]
    assert {"ct_rate", "inspect"} <= set(sources)
    epoch = train.epoch_samples(0)
    task_of = [datamodule.tasks[int(t)] for t in epoch.task]
    inspect_tasks = {task_of[i].name for i, v in enumerate(epoch.volume) if sources[int(v)] == "inspect"}
    by_name = {t.name: t for t in datamodule.tasks}
    assert inspect_tasks and all(set(by_name[name].columns) == {"inspect"} for name in inspect_tasks)
    assert pe.name in inspect_tasks
    val_sources = {e.source for e in datamodule.datasets["val"].volumes.entries}
    assert val_sources == {"ct_rate", "inspect"}
    official_val = set(_table(inspect_root, "splits_20250611.tsv").query("split == 'valid'")["impression_id"])
    assert {e.id for e in datamodule.datasets["val"].volumes.entries if e.source == "inspect"} <= official_val
    sample = train[(next(i for i, t in enumerate(task_of) if t.name == pe.name), 0)]
    assert sample["source"] == "inspect" and sample["task_text"] == pe.text and not sample["is_seg"]
