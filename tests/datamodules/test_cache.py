"""Cache format: path naming, index loading, partial crop reads."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from datamodules.cache import (
    CacheEntry,
    CacheIndex,
    CacheMissingError,
    cache_path,
    npy_shape,
    read_crop,
    read_volume,
)


def _entry(tmp_path: Path, volume: np.ndarray, vid: str = "v_1") -> CacheEntry:
    (tmp_path / "volumes").mkdir(exist_ok=True)
    file = tmp_path / "volumes" / f"{vid}.npy"
    np.save(file, volume)
    x, y, z = volume.shape
    return CacheEntry(
        id=vid,
        patient_id="p_1",
        split="train",
        source="ct_rate",
        file=file,
        shape=(x, y, z),
        labels=[1.0, math.nan],
        sections={"findings": "Clear lungs."},
    )


def test_cache_path_naming() -> None:
    assert cache_path(Path("cache"), "ct_rate", 2.0, "paper") == Path("cache/ct_rate/2mm-paper")
    assert cache_path(Path("c"), "ct_rate", 0.5, "colipri_inference") == Path(
        "c/ct_rate/0.5mm-colipri_inference"
    )
    assert cache_path(Path("c"), "ct_rate", 1.5, "paper").name == "1.5mm-paper"
    with pytest.raises(ValueError, match="interpolation"):
        cache_path(Path("c"), "ct_rate", 2, "cubic")


@pytest.mark.parametrize(
    ("start", "size"),
    [
        ((0, 0, 0), (7, 9, 11)),  # the whole volume
        ((2, 3, 4), (3, 4, 5)),  # inside
        ((-3, 5, 8), (6, 6, 6)),  # sticks out before x and past y, z
        ((-2, -2, -2), (11, 13, 15)),  # larger than the volume on every side
        ((20, 0, 0), (4, 4, 4)),  # entirely outside
    ],
)
def test_read_crop_equals_padded_slice(
    tmp_path: Path, start: tuple[int, int, int], size: tuple[int, int, int]
) -> None:
    volume = np.random.default_rng(0).integers(-1000, 1001, size=(7, 9, 11), dtype=np.int16)
    entry = _entry(tmp_path, volume)
    pad = 25
    padded = np.pad(volume, pad, constant_values=-1000)
    expected = padded[tuple(slice(s + pad, s + pad + n) for s, n in zip(start, size, strict=True))]

    crop = read_crop(entry, start, size)

    assert crop.dtype == np.int16 and crop.shape == size and crop.flags.c_contiguous
    np.testing.assert_array_equal(crop, expected)
    np.testing.assert_array_equal(read_volume(entry), volume)


def test_index_round_trip_and_completeness(tmp_path: Path) -> None:
    entry = _entry(tmp_path, np.zeros((4, 5, 6), np.int16))
    index = CacheIndex(
        root=tmp_path, spacing=2.0, interpolation="paper", label_names=["a", "b"], entries=[entry]
    )
    index.save()
    data = (tmp_path / "index.json").read_text(encoding="utf-8")
    assert '"file": "volumes/v_1.npy"' in data and "null" in data and "NaN" not in data

    loaded = CacheIndex.load(tmp_path)
    assert loaded.to_json() == index.to_json()
    assert loaded.entries[0].file == entry.file.absolute()
    assert loaded.entries[0].shape == (4, 5, 6)
    assert loaded.entries[0].labels[0] == 1.0 and math.isnan(loaded.entries[0].labels[1])
    assert loaded.split("train") == loaded.entries and loaded.split("test") == []
    assert loaded.is_complete()

    with open(entry.file, "r+b") as f:
        f.truncate(entry.file.stat().st_size - 2)
    assert not loaded.is_complete() and loaded.missing_entries() == loaded.entries
    entry.file.unlink()
    assert not loaded.is_complete(check_sizes=False)


def test_missing_cache_names_the_preprocess_command(tmp_path: Path) -> None:
    with pytest.raises(CacheMissingError, match="ctvlp preprocess"):
        CacheIndex.load(tmp_path / "nothing")


def test_npy_shape_accepts_only_complete_int16_c_order(tmp_path: Path) -> None:
    good = tmp_path / "good.npy"
    np.save(good, np.zeros((3, 4, 5), np.int16))
    assert npy_shape(good) == (3, 4, 5)
    for name, array in [
        ("f32", np.zeros((3, 4, 5), np.float32)),
        ("fortran", np.asfortranarray(np.zeros((3, 4, 5), np.int16))),
    ]:
        np.save(tmp_path / f"{name}.npy", array)
        assert npy_shape(tmp_path / f"{name}.npy") is None
    (tmp_path / "garbage.npy").write_bytes(b"not a npy file")
    assert npy_shape(tmp_path / "garbage.npy") is None
    assert npy_shape(tmp_path / "absent.npy") is None
