"""Preprocessing of one volume (geometry, HU, bad inputs) and the cache builder (atomic, resumable)."""

from __future__ import annotations

import csv
import gzip
import math
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from datamodules.cache import CacheIndex, npy_shape, read_volume
from datamodules.labels import CT_RATE_LABELS
from datamodules.preprocess import BadVolumeError, build_cache, preprocess_volume
from datamodules.records import Record

CSV_SPACING = (1.5, 1.5, 3.0)
WRONG_HEADER_ZOOMS = (0.7, 0.7, 5.0)
SHAPE = (40, 40, 20)  # 60 x 60 x 60 mm at CSV_SPACING
ORIGIN_RAS = np.array([-30.0, -20.0, 10.0])  # world RAS mm of voxel (0, 0, 0) of the RAS array
MARKER = (slice(6, 10), slice(26, 30), slice(4, 6))  # off-centre in every axis


def _save(path: Path, array: np.ndarray, affine: np.ndarray) -> Path:
    nib.save(nib.Nifti1Image(array, affine), path)
    return path


def _record(path: Path, spacing=CSV_SPACING, slope=1.0, intercept=0.0, rid: str | None = None) -> Record:
    rid = rid or path.name.split(".")[0]
    return Record(
        id=rid,
        patient_id=f"p_{rid}",
        split="train",
        image_path=path,
        spacing=spacing,
        hu_slope=slope,
        hu_intercept=intercept,
        sections={"findings": f"Findings of {rid}.", "impressions": ""},
        labels={CT_RATE_LABELS[0]: 1.0, CT_RATE_LABELS[1]: 0.0},
    )


def _marker_volume() -> np.ndarray:
    array = np.full(SHAPE, -1000, dtype=np.int16)
    array[MARKER] = 1000
    return array


def _marker_world_ras() -> np.ndarray:
    centre_index = np.array([(s.start + s.stop - 1) / 2 for s in MARKER])
    return ORIGIN_RAS + np.array(CSV_SPACING) * centre_index


def _expected_output_grid(target: float) -> tuple[tuple[int, ...], np.ndarray]:
    """RAS+ output grid: centred on the input field of view, floor(extent / target) voxels."""
    n, s = np.array(SHAPE), np.array(CSV_SPACING)
    size = np.floor(n * s / target).astype(int)
    centre = ORIGIN_RAS + s * (n - 1) / 2
    origin = centre - (size - 1) / 2 * target
    return tuple(size.tolist()), origin


def _centre_of_mass(volume: np.ndarray) -> np.ndarray:
    weights = np.clip(volume.astype(np.float64), 0, None)
    grid = np.indices(volume.shape).reshape(3, -1)
    return (grid * weights.reshape(-1)).sum(axis=1) / weights.sum()


@pytest.mark.parametrize("orientation", ["RAS", "LPS"])
def test_geometry_marker_lands_at_physical_position(tmp_path: Path, orientation: str) -> None:
    ras = _marker_volume()
    if orientation == "RAS":
        array, signs, origin = ras, np.array([1, 1, 1]), ORIGIN_RAS
    else:  # same physical volume stored L->R and A->P flipped: LPS voxel (i, j, k) = RAS voxel (nx-1-i, ny-1-j, k)
        array = np.ascontiguousarray(ras[::-1, ::-1, :])
        signs = np.array([-1, -1, 1])
        origin = ORIGIN_RAS + np.array(CSV_SPACING) * (np.array(SHAPE) - 1) * np.array([1, 1, 0])
    # The header carries wrong voxel sizes (as CT-RATE's do): only the CSV spacing may be used.
    affine = np.diag([*(signs * np.array(WRONG_HEADER_ZOOMS)), 1.0])
    affine[:3, 3] = origin
    path = _save(tmp_path / f"vol_{orientation}.nii.gz", array, affine)

    out = preprocess_volume(_record(path), spacing=3.0)

    expected_shape, out_origin = _expected_output_grid(3.0)
    assert out.dtype == np.int16
    assert out.shape == expected_shape == (20, 20, 20)
    expected_index = (_marker_world_ras() - out_origin) / 3.0
    assert np.abs(_centre_of_mass(out) - expected_index).max() <= 1.0, (_centre_of_mass(out), expected_index)
    assert out.min() >= -1000 and out.max() <= 1000


def test_both_orientations_give_the_same_volume(tmp_path: Path) -> None:
    ras = _marker_volume()
    a_ras = np.diag([*CSV_SPACING, 1.0])
    a_ras[:3, 3] = ORIGIN_RAS
    a_lps = np.diag([-CSV_SPACING[0], -CSV_SPACING[1], CSV_SPACING[2], 1.0])
    a_lps[:3, 3] = ORIGIN_RAS + np.array(CSV_SPACING) * (np.array(SHAPE) - 1) * np.array([1, 1, 0])
    p1 = _save(tmp_path / "a.nii.gz", ras, a_ras)
    p2 = _save(tmp_path / "b.nii.gz", np.ascontiguousarray(ras[::-1, ::-1]), a_lps)
    out1 = preprocess_volume(_record(p1), 3.0, "colipri_inference")
    out2 = preprocess_volume(_record(p2), 3.0, "colipri_inference")
    assert np.abs(out1.astype(int) - out2.astype(int)).max() <= 1


def test_hu_rescale_from_csv_not_header(tmp_path: Path) -> None:
    raw = np.full((12, 12, 12), 200, dtype=np.int16)  # 2 * 200 - 1024 = -624 HU
    raw[:, :6] = 762  # 500 HU
    raw[:, :, 8:] = 1600  # 2176 HU -> clamped to 1000
    image = nib.Nifti1Image(raw, np.diag([5.0, 5.0, 5.0, 1.0]))
    image.header.set_slope_inter(3.0, 7.0)  # must be ignored: the CSV is the truth
    path = tmp_path / "hu.nii.gz"
    nib.save(image, path)
    assert nib.load(path).dataobj.slope == 3.0

    for interpolation in ("colipri_inference", "paper"):
        out = preprocess_volume(
            _record(path, spacing=(2.0, 2.0, 2.0), slope=2.0, intercept=-1024.0), 2.0, interpolation
        )
        assert out.shape == (12, 12, 12)
        assert out[6, 2, 3] == 500
        assert out[6, 9, 3] == -624
        assert out[6, 9, 10] == 1000
        assert out[6, 2, 10] == 1000


def _write_bad_inputs(folder: Path) -> dict[str, Record]:
    affine = np.eye(4)
    good = np.zeros((8, 8, 8), dtype=np.int16)
    bad: dict[str, Record] = {}

    full = _save(
        folder / "truncated.nii.gz",
        np.random.default_rng(0).integers(-1000, 1000, (24,) * 3, dtype=np.int16),
        affine,
    )
    data = full.read_bytes()
    full.write_bytes(data[: len(data) // 2])
    bad["truncated"] = _record(full, spacing=(1.0, 1.0, 1.0))

    zero = folder / "zero_byte.nii.gz"
    zero.touch()
    bad["zero_byte"] = _record(zero, spacing=(1.0, 1.0, 1.0))

    bad["four_d"] = _record(
        _save(folder / "four_d.nii.gz", np.zeros((8, 8, 8, 2), np.int16), affine), spacing=(1.0, 1.0, 1.0)
    )
    bad["two_d"] = _record(
        _save(folder / "two_d.nii.gz", np.zeros((8, 8), np.int16), affine), spacing=(1.0, 1.0, 1.0)
    )
    nan = np.zeros((8, 8, 8), np.float32)
    nan[2, 3, 4] = np.nan
    bad["nan"] = _record(_save(folder / "nan.nii.gz", nan, affine), spacing=(1.0, 1.0, 1.0))
    bad["negative_spacing"] = _record(
        _save(folder / "negative_spacing.nii.gz", good, affine), spacing=(1.0, -1.0, 1.0)
    )
    return bad


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("truncated", "truncated"),
        ("zero_byte", "zero-byte"),
        ("four_d", "not a 3D volume"),
        ("two_d", "not a 3D volume"),
        ("nan", "NaN"),
        ("negative_spacing", "spacing"),
    ],
)
def test_bad_input_raises_bad_volume_error(tmp_path: Path, name: str, reason: str) -> None:
    record = _write_bad_inputs(tmp_path)[name]
    with pytest.raises(BadVolumeError, match=reason):
        preprocess_volume(record, 2.0)


def test_4d_with_trailing_singleton_is_squeezed(tmp_path: Path) -> None:
    path = _save(tmp_path / "singleton.nii.gz", np.zeros((8, 8, 8, 1), np.int16), np.eye(4))
    assert preprocess_volume(_record(path, spacing=(1.0, 1.0, 1.0)), 2.0).shape == (4, 4, 4)


def test_truncated_gzip_is_really_truncated(tmp_path: Path) -> None:
    record = _write_bad_inputs(tmp_path)["truncated"]
    with pytest.raises((EOFError, OSError)), gzip.open(record.image_path) as f:
        f.read()


def _good_records(folder: Path, n: int = 2) -> list[Record]:
    records = []
    rng = np.random.default_rng(1)
    for i in range(n):
        array = rng.integers(-1000, 1000, size=(12 + i, 10, 9), dtype=np.int16)
        path = _save(folder / f"good_{i}.nii.gz", array, np.diag([2.0, 2.0, 2.0, 1.0]))
        records.append(_record(path, spacing=(3.0, 3.0, 4.0)))
    return records


def _quarantine(root: Path) -> dict[str, str]:
    with open(root / "quarantine.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert all(set(r) == {"id", "path", "reason"} for r in rows)
    return {r["id"]: r["reason"] for r in rows}


@pytest.mark.parametrize("workers", [1, 2])
def test_build_cache_quarantines_bad_volumes_and_keeps_the_rest(tmp_path: Path, workers: int) -> None:
    data = tmp_path / "data"
    data.mkdir()
    good = _good_records(data)
    bad = _write_bad_inputs(data)
    records = [good[0], *bad.values(), good[1]]
    root = tmp_path / "cache"

    index = build_cache(
        records,
        root,
        spacing=6.0,
        workers=workers,
        progress=False,
        rejected=[("x_1", "/nowhere", "no row in labels")],
    )

    assert [e.id for e in index.entries] == ["good_0", "good_1"]
    quarantine = _quarantine(root)
    assert set(quarantine) == set(bad) | {"x_1"}
    assert quarantine["x_1"] == "no row in labels"
    assert "zero-byte" in quarantine["zero_byte"] and "NaN" in quarantine["nan"]
    for entry in index.entries:
        assert entry.file == root.absolute() / "volumes" / f"{entry.id}.npy"
        volume = np.load(entry.file, mmap_mode="r")
        assert volume.dtype == np.int16 and volume.flags.c_contiguous and volume.shape == entry.shape
    assert not list((root / "volumes").glob("*.tmp-*"))


def test_build_cache_is_resumable_and_index_round_trips(tmp_path: Path) -> None:
    records = _good_records(tmp_path, n=3)
    root = tmp_path / "cache"
    first = build_cache(records, root, spacing=6.0, workers=1, progress=False)
    mtimes = {e.id: e.file.stat().st_mtime_ns for e in first.entries}

    second = build_cache(records, root, spacing=6.0, workers=1, progress=False)
    assert {e.id: e.file.stat().st_mtime_ns for e in second.entries} == mtimes
    assert second.to_json() == first.to_json()

    # A truncated .npy (a crash mid-write in a non-atomic world) is detected and rebuilt.
    victim = first.entries[1]
    expected = read_volume(victim)
    with open(victim.file, "r+b") as f:
        f.truncate(victim.file.stat().st_size - 100)
    assert npy_shape(victim.file) is None
    third = build_cache(records, root, spacing=6.0, workers=1, progress=False)
    assert victim.file.stat().st_mtime_ns != mtimes[victim.id]
    np.testing.assert_array_equal(read_volume(third.entries[1]), expected)
    for entry in third.entries:
        if entry.id != victim.id:
            assert entry.file.stat().st_mtime_ns == mtimes[entry.id]

    loaded = CacheIndex.load(root)
    assert loaded.to_json() == third.to_json()
    assert loaded.spacing == 6.0 and loaded.interpolation == "paper" and loaded.label_names == CT_RATE_LABELS
    entry = loaded.entries[0]
    assert entry.labels[:2] == [1.0, 0.0] and all(math.isnan(v) for v in entry.labels[2:])
    assert entry.sections == {"findings": "Findings of good_0.", "impressions": ""}
    assert entry.patient_id == "p_good_0" and entry.split == "train" and entry.source == "ct_rate"
    assert loaded.is_complete()


def test_build_cache_refuses_other_parameters_in_the_same_folder(tmp_path: Path) -> None:
    records = _good_records(tmp_path, n=1)
    root = tmp_path / "cache"
    build_cache(records, root, spacing=6.0, workers=1, progress=False)
    with pytest.raises(ValueError, match="another cache folder"):
        build_cache(records, root, spacing=4.0, workers=1, progress=False)


def test_record_without_spacing_trusts_the_header(tmp_path: Path) -> None:
    raw = np.full((10, 10, 10), 1024, dtype=np.int16)
    raw[:5] = 1524
    image = nib.Nifti1Image(raw, np.diag([-2.0, 2.0, 2.0, 1.0]))
    image.header.set_slope_inter(1.0, -1024.0)  # header scaling applies when the header is trusted
    path = tmp_path / "trusted.nii.gz"
    nib.save(image, path)
    out = preprocess_volume(_record(path, spacing=None), 2.0, "colipri_inference")
    assert out.shape == (10, 10, 10)
    # stored L->R flipped: the 500 HU half (array x < 5) is on the right, i.e. high RAS x
    assert out[2, 5, 5] == 0 and out[8, 5, 5] == 500


def test_interpolation_names_agree_with_the_cache_naming() -> None:
    from datamodules.cache import INTERPOLATIONS
    from datamodules.preprocess import INTERPOLATION_SETTINGS

    assert set(INTERPOLATIONS) == set(INTERPOLATION_SETTINGS)


def test_field_of_view_smaller_than_one_voxel_is_bad(tmp_path: Path) -> None:
    path = _save(tmp_path / "thin.nii.gz", np.zeros((8, 8, 2), np.int16), np.eye(4))
    with pytest.raises(BadVolumeError, match="field of view"):
        preprocess_volume(_record(path, spacing=(1.0, 1.0, 1.0)), 3.0)
