"""The nnU-Net / MSD segmentation source: the phantom writer's layout, the scan's quarantine, the cache
(label maps, nnU-Net CT normalisation statistics) and the 5-fold cross-validation splits."""

from __future__ import annotations

import argparse
import csv
import json
import re
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from ctvlp.commands import phantom as phantom_command
from ctvlp.commands import preprocess as preprocess_command
from datamodules.batching import IMAGE_ONLY
from datamodules.cache import read_volume
from datamodules.errors import DataRootError
from datamodules.sources import msd
from datamodules.sources.registry import get_source
from datamodules.splits import fold_splits

SPACING = 4.0
N_GOOD = 6  # phantom cases kept; two more are corrupted below


def _cli(module, argv: list[str]) -> None:
    """Run one ``ctvlp`` command through its real parser."""
    parser = argparse.ArgumentParser()
    module.add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    assert args.handler(args) == 0


@pytest.fixture(scope="module")
def liver_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("msd") / "liver"
    argv = ["phantom", "--source", "msd_liver", "--out", str(root), "--n", str(N_GOOD + 2)]
    _cli(phantom_command, [*argv, "--workers", "1", "--no-progress"])
    return root


@pytest.fixture(scope="module")
def corrupted_root(liver_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the liver phantom whose last two label maps are broken: one on a shifted grid,
    one with a value dataset.json does not name."""
    root = tmp_path_factory.mktemp("msd") / "corrupted"
    shutil.copytree(liver_root, root)
    shifted = root / "labelsTr" / f"liver_{N_GOOD:03d}.nii.gz"
    image = nib.load(shifted)
    affine = image.affine.copy()
    affine[:3, 3] += 2.5  # mm: the label map no longer lies on its image's grid
    nib.save(nib.Nifti1Image(np.asarray(image.dataobj), affine), shifted)
    unknown = root / "labelsTr" / f"liver_{N_GOOD + 1:03d}.nii.gz"
    image = nib.load(unknown)
    data = np.asarray(image.dataobj).copy()
    data[0, 0, 0] = 7
    nib.save(nib.Nifti1Image(data, image.affine), unknown)
    return root


@pytest.fixture(scope="module")
def cache(corrupted_root: Path, tmp_path_factory: pytest.TempPathFactory) -> msd.MsdCache:
    cache_dir = tmp_path_factory.mktemp("msd_cache")
    return msd.build_msd_cache(corrupted_root, cache_dir, spacing=SPACING, workers=1, progress=False)


@pytest.mark.parametrize("task", ["liver", "lung"])
def test_phantom_writes_a_layout_nnunet_accepts(task: str, liver_root: Path, tmp_path: Path) -> None:
    if task == "liver":
        root = liver_root
    else:
        root = tmp_path / "lung"
        _cli(phantom_command, ["phantom", "--source", "msd_lung", "--out", str(root), "--n", "2"])
    dataset = json.loads((root / "dataset.json").read_text(encoding="utf-8"))
    assert dataset["channel_names"] == {"0": "CT"}
    organ = "liver" if task == "liver" else "lung"
    assert dataset["labels"] == {"background": 0, organ: 1, "lesion": 2}
    assert dataset["file_ending"] == ".nii.gz"
    images = sorted(p.name for p in (root / "imagesTr").iterdir())
    labels = sorted(p.name for p in (root / "labelsTr").iterdir())
    assert dataset["numTraining"] == len(images) == len(labels)
    assert all(re.fullmatch(rf"{task}_\d{{3}}_0000\.nii\.gz", name) for name in images)
    assert [n.replace("_0000", "") for n in images] == labels
    for name in labels:
        image = nib.load(root / "imagesTr" / name.replace(".nii.gz", "_0000.nii.gz"))
        label = nib.load(root / "labelsTr" / name)
        assert image.shape == label.shape and np.allclose(image.affine, label.affine)
        values = np.asarray(label.dataobj)
        assert set(np.unique(values).tolist()) == {0, 1, 2}, name  # organ and lesion in every case
        hu = np.asarray(image.dataobj).astype(np.float32)
        # the lesion is darker than the liver / denser than the lung around it: labels match the image
        if task == "liver":
            assert hu[values == 2].mean() < hu[values == 1].mean() - 20
        else:
            assert hu[values == 2].mean() > hu[values == 1].mean() + 500
    assert msd.read_dataset_json(root).labels == dataset["labels"]


def test_scan_quarantines_a_shifted_label_and_an_unknown_value(corrupted_root: Path) -> None:
    scan = get_source("msd").scan(corrupted_root, [])
    assert [r.id for r in scan.records] == [f"liver_{i:03d}" for i in range(N_GOOD)]
    assert all(r.split == "train" and r.patient_id == r.id and r.source == "msd" for r in scan.records)
    reasons = {case: reason for case, _, reason in scan.rejected}
    assert set(reasons) == {f"liver_{N_GOOD:03d}", f"liver_{N_GOOD + 1:03d}"}
    assert "label grid differs from its image: affine" in reasons[f"liver_{N_GOOD:03d}"]
    assert "label values {7} not in dataset.json labels" in reasons[f"liver_{N_GOOD + 1:03d}"]


def test_cache_holds_nearest_neighbour_labels_on_the_volume_grid(cache: msd.MsdCache) -> None:
    assert len(cache.index.entries) == N_GOOD and cache.index.label_names == []
    with open(cache.index.quarantine_path, newline="", encoding="utf-8") as f:
        quarantined = {row["id"]: row["reason"] for row in csv.DictReader(f)}
    assert set(quarantined) == {f"liver_{N_GOOD:03d}", f"liver_{N_GOOD + 1:03d}"}
    assert "label grid differs" in quarantined[f"liver_{N_GOOD:03d}"]
    assert "label values {7}" in quarantined[f"liver_{N_GOOD + 1:03d}"]
    assert cache.labels == {"background": 0, "liver": 1, "lesion": 2}
    for entry in cache.index.entries:
        labels = np.load(cache.label_file(entry))
        assert labels.dtype == np.uint8 and labels.shape == entry.shape
        assert set(np.unique(labels).tolist()) == {0, 1, 2}  # nearest: no new values, lesion kept
        hu = read_volume(entry).astype(np.float32)
        assert hu[labels == 2].mean() < hu[labels == 1].mean() - 20  # still aligned after resampling
        image, label = cache.load_case(entry.id)
        assert image.dtype == torch.float32 and label.dtype == torch.int64
        assert image.shape == label.shape == entry.shape
        assert torch.equal(label, torch.from_numpy(labels.astype(np.int64)))
    crop_image, crop_label = cache.read_case_crop(cache.index.entries[0].id, (-4, 10, 10), (16, 16, 16))
    assert crop_image.shape == crop_label.shape == (16, 16, 16)
    assert (crop_label[:4] == 0).all()  # outside the volume: background


def test_normalisation_statistics_are_foreground_based_and_stored(cache: msd.MsdCache) -> None:
    saved = json.loads((cache.root / msd.SEGMENTATION_JSON).read_text(encoding="utf-8"))
    norm = saved["normalisation"]
    assert saved["sampling"]["samples_per_case"] == msd.SAMPLES_PER_CASE
    pool = np.concatenate(
        [
            msd.foreground_sample(read_volume(e), np.load(cache.label_file(e)), e.id)
            for e in cache.index.entries
        ]
    )
    assert norm["foreground_voxels_sampled"] == pool.size <= msd.SAMPLES_PER_CASE * N_GOOD
    assert norm["mean"] == pytest.approx(pool.mean()) and norm["std"] == pytest.approx(pool.std())
    assert (norm["lower"], norm["upper"]) == pytest.approx(tuple(np.percentile(pool, [0.5, 99.5])))
    # soft tissue, not the air and fat of the whole volume
    assert -150 < norm["lower"] < norm["mean"] < norm["upper"] < 250
    image, label = cache.load_case(cache.index.entries[0])
    assert float(image.max()) <= (norm["upper"] - norm["mean"]) / norm["std"] + 1e-5
    assert float(image.min()) >= (norm["lower"] - norm["mean"]) / norm["std"] - 1e-5
    # the sample is seeded per case, capped, and all voxels when fewer
    volume = np.arange(1000, dtype=np.int16).reshape(10, 10, 10)
    labels = np.ones((10, 10, 10), np.uint8)
    a = msd.foreground_sample(volume, labels, "case_a", n=50)
    assert a.size == 50 and np.array_equal(a, msd.foreground_sample(volume, labels, "case_a", n=50))
    assert not np.array_equal(a, msd.foreground_sample(volume, labels, "case_b", n=50))
    assert msd.foreground_sample(volume, labels, "case_a", n=5000).size == 1000


def test_rebuild_reuses_labels_and_statistics(cache: msd.MsdCache, corrupted_root: Path) -> None:
    stats_file = cache.root / msd.SEGMENTATION_JSON
    before = stats_file.stat().st_mtime_ns
    again = msd.finish_msd_cache(cache.root, corrupted_root)
    assert stats_file.stat().st_mtime_ns == before and again.stats == cache.stats


def test_five_folds_are_disjoint_cover_every_case_and_are_deterministic(cache: msd.MsdCache) -> None:
    entries = cache.index.entries
    folds = [fold_splits(entries, k) for k in range(5)]
    vals = [{e.id for e in f["val"]} for f in folds]
    assert set().union(*vals) == {e.id for e in entries}
    assert sum(len(v) for v in vals) == len(entries)  # pairwise disjoint
    assert max(len(v) for v in vals) - min(len(v) for v in vals) <= 1
    for split, val in zip(folds, vals, strict=True):
        assert not val & {e.id for e in split["train"]} and split["test"] == []
    assert [{e.id for e in fold_splits(entries, k)["val"]} for k in range(5)] == vals
    assert [{e.id for e in fold_splits(entries, k, seed=1)["val"]} for k in range(5)] != vals
    with pytest.raises(ValueError, match="data.fold=5"):
        fold_splits(entries, 5)


def test_generic_preprocess_then_finish(liver_root: Path, tmp_path: Path) -> None:
    """`ctvlp preprocess --source msd` builds the volume cache with the common builder and then
    finishes it (labels and stats); a data config finds the same cache."""
    argv = ["preprocess", "--source", "msd", "--root", str(liver_root), "--cache-dir", str(tmp_path)]
    _cli(preprocess_command, [*argv, "--spacing", str(SPACING), "--workers", "1", "--no-progress"])
    root = tmp_path / "msd" / "4mm-paper"
    built = msd.MsdCache.load(root)  # segmentation.json written by the command
    assert len(built.index.entries) == N_GOOD + 2
    data = OmegaConf.create(
        {
            "source": "msd",
            "root": str(liver_root),
            "cache_dir": str(tmp_path),
            "spacing": SPACING,
            "interpolation": "paper",
            "preprocess_workers": 1,
            "fold": 0,
        }
    )
    finished = msd.ensure_msd_cache(data, progress=False)
    assert finished.root == root.absolute() and len(finished.index.entries) == N_GOOD + 2
    assert get_source("msd").kind == IMAGE_ONLY


def _write_dataset_json(root: Path, **fields) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "dataset.json").write_text(json.dumps(fields), encoding="utf-8")
    return root


def test_dataset_json_checks(tmp_path: Path) -> None:
    v1 = _write_dataset_json(
        tmp_path / "v1", modality={"0": "CT"}, labels={"0": "background", "1": "liver", "2": "cancer"}
    )
    assert msd.read_dataset_json(v1).labels == {"background": 0, "liver": 1, "cancer": 2}
    labels = {"background": 0, "lesion": 1}
    two = _write_dataset_json(tmp_path / "two", channel_names={"0": "CT", "1": "PET"}, labels=labels)
    with pytest.raises(DataRootError, match="exactly one channel"):
        msd.read_dataset_json(two)
    mri = _write_dataset_json(tmp_path / "mri", channel_names={"0": "T2"}, labels=labels)
    with pytest.raises(DataRootError, match="CT"):
        msd.read_dataset_json(mri)
    region = _write_dataset_json(
        tmp_path / "region", channel_names={"0": "CT"}, labels={"background": 0, "whole": [1, 2]}
    )
    with pytest.raises(DataRootError, match="region-based"):
        msd.read_dataset_json(region)
    with pytest.raises(DataRootError, match="dataset.json"):
        msd.read_dataset_json(tmp_path / "missing")


def test_scan_quarantines_an_image_without_labels_and_a_4d_image_and_serves_the_rest(
    liver_root: Path, tmp_path: Path
) -> None:
    root = tmp_path / "bad"
    shutil.copytree(liver_root, root)
    (root / "labelsTr" / "liver_000.nii.gz").unlink()
    four_d = root / "imagesTr" / "liver_001_0000.nii.gz"
    image = nib.load(four_d)
    volume = np.asarray(image.dataobj)
    nib.save(nib.Nifti1Image(np.stack([volume, volume], axis=-1), image.affine), four_d)
    scan = get_source("msd").scan(root, [])
    reasons = {case: reason for case, _, reason in scan.rejected}
    assert reasons == {
        "liver_000": "no label map labelsTr/liver_000.nii.gz",
        "liver_001": f"image is not 3D: shape {(*volume.shape, 2)} (one CT channel per file, as dataset.json says)",
    }
    assert [r.id for r in scan.records] == [f"liver_{i:03d}" for i in range(2, N_GOOD + 2)]

    dataset = json.loads((root / "dataset.json").read_text(encoding="utf-8"))
    del dataset["labels"]
    (root / "dataset.json").write_text(json.dumps(dataset), encoding="utf-8")
    with pytest.raises(DataRootError, match="'labels' must be a non-empty object"):
        get_source("msd").scan(root, [])
