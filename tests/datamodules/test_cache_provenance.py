"""A cache is never served stale: a changed volume, another dataset with the same volume ids, or a
regenerated phantom at the same root is rebuilt; unchanged volumes are reused."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from ctvlp.config.loader import load_experiment
from datamodules.cache import cache_path
from datamodules.cache_provenance import reusable_index
from datamodules.datamodule import ensure_cache
from datamodules.phantom.ct_rate_writer import write_phantom_ct_rate
from datamodules.preprocess import build_cache
from datamodules.records import Record
from datamodules.sources.ct_rate import scan_ct_rate


def _volume_record(folder: Path, rid: str, fill: int) -> Record:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{rid}.nii.gz"
    nib.save(nib.Nifti1Image(np.full((12, 10, 9), fill, dtype=np.int16), np.diag([2.0, 2.0, 2.0, 1.0])), path)
    return Record(id=rid, patient_id=f"p_{rid}", split="train", image_path=path, spacing=(3.0, 3.0, 4.0))


def _mtimes(index) -> dict[str, int]:
    return {e.id: os.stat(e.file).st_mtime_ns for e in index.entries}


def test_a_changed_source_volume_is_rebuilt_and_the_others_reused(tmp_path: Path) -> None:
    records = [_volume_record(tmp_path / "a", rid, fill) for rid, fill in (("v_1", -500), ("v_2", 100))]
    root = tmp_path / "cache"
    first = build_cache(records, root, spacing=6.0, workers=1, progress=False)
    before = _mtimes(first)
    assert np.load(first.entries[0].file).max() == -500

    records[0] = _volume_record(tmp_path / "a", "v_1", 300)  # rewritten in place, same id
    second = build_cache(records, root, spacing=6.0, workers=1, progress=False)
    assert np.load(second.entries[0].file).min() == 300
    assert _mtimes(second)["v_2"] == before["v_2"]  # unchanged: reused

    # The same ids from another folder (another copy of the dataset) are not this cache's volumes.
    other = [_volume_record(tmp_path / "b", rid, 700) for rid in ("v_1", "v_2")]
    third = build_cache(other, root, spacing=6.0, workers=1, progress=False)
    assert all(np.load(e.file).min() == 700 for e in third.entries)

    # A changed HU rescale in the metadata changes the volume even though the file did not change.
    rescaled = [Record(**{**r.__dict__, "hu_intercept": -100.0}) for r in other]
    fourth = build_cache(rescaled, root, spacing=6.0, workers=1, progress=False)
    assert all(np.load(e.file).min() == 600 for e in fourth.entries)


def test_fit_does_not_reuse_a_complete_cache_of_another_dataset(tmp_path: Path) -> None:
    """Two phantoms sharing volume ids (seeds 0 and 1) behind the same cache folder: the second
    root gets its own reports and voxels, exactly as a fresh cache of it would have."""
    first_root, second_root = tmp_path / "first", tmp_path / "second"
    write_phantom_ct_rate(first_root, n=4, seed=0, workers=1, progress=False)
    write_phantom_ct_rate(second_root, n=4, seed=1, workers=1, progress=False)

    def cache_of(root: Path, cache_dir: Path):
        overrides = [f"data.root={root}", f"data.cache_dir={cache_dir}", "data.spacing=12.0"]
        return ensure_cache(load_experiment("colipri_c", "cpu_demo", overrides).data, progress=False)

    shared = tmp_path / "shared_cache"
    first = cache_of(first_root, shared)
    second = cache_of(second_root, shared)
    fresh = cache_of(second_root, tmp_path / "fresh_cache")
    shared_ids = {e.id for e in first.entries} & {e.id for e in second.entries}
    assert shared_ids  # the case that went wrong: the same id, another dataset
    expected = {e.id: e for e in fresh.entries}
    assert {e.id: e.sections for e in second.entries} == {i: e.sections for i, e in expected.items()}
    for entry in second.entries:
        np.testing.assert_array_equal(np.load(entry.file), np.load(expected[entry.id].file))
    # Unchanged since: the complete cache is used as is (no volume rewritten).
    before = _mtimes(second)
    assert _mtimes(cache_of(second_root, shared)) == before


def test_a_cache_built_by_the_preprocess_step_is_trusted_by_fit(tmp_path: Path) -> None:
    """`ctvlp preprocess` (build_cache with the dataset root) stamps the cache, so fit reuses it
    without rescanning or rewriting anything."""
    root = tmp_path / "phantom"
    write_phantom_ct_rate(root, n=3, seed=0, workers=1, progress=False)
    cache_dir = tmp_path / "cache"
    scan = scan_ct_rate(root)
    built = build_cache(
        scan.records, cache_path(cache_dir, "ct_rate", 12.0, "paper"), spacing=12.0, workers=1,
        progress=False, source_root=root,
    )  # fmt: skip
    before = _mtimes(built)
    overrides = [f"data.root={root}", f"data.cache_dir={cache_dir}", "data.spacing=12.0"]
    index = ensure_cache(load_experiment("colipri_c", "cpu_demo", overrides).data, progress=False)
    assert _mtimes(index) == before


def test_reusable_index_says_why_a_cache_cannot_serve(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The one check both DataModules (paired and Uniferum) run before trusting a cache."""
    dataset, root = tmp_path / "dataset", tmp_path / "cache"
    assert reusable_index(root, dataset) is None  # nothing built yet
    records = [_volume_record(dataset, rid, fill) for rid, fill in (("v_1", -500), ("v_2", 100))]
    built = build_cache(records, root, spacing=6.0, workers=1, progress=False, source_root=dataset)
    assert [e.id for e in reusable_index(root, dataset).entries] == [e.id for e in built.entries]

    with caplog.at_level(logging.WARNING, logger="datamodules.cache_provenance"):
        assert reusable_index(root, tmp_path / "another_dataset") is None
        assert "built from another dataset" in caplog.text
        caplog.clear()
        built.entries[1].file.unlink()  # an interrupted build, or a deleted volume
        assert reusable_index(root, dataset) is None
        assert "1 of 2 cached volumes are missing" in caplog.text
