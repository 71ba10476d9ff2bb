"""The torch resampling backend (``paper_torch``) against paper mode, its cache key, and the faster
paper-mode reorientation (bit-identical to the previous code path)."""

from __future__ import annotations

import argparse
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from ctvlp.commands import preprocess as preprocess_command
from ctvlp.config.errors import ConfigError
from datamodules.cache import CacheIndex, cache_path
from datamodules.preprocess import (
    _build_params,
    build_cache,
    cache_interpolation,
    load_hu,
    preprocess_volume_with_affine,
)
from datamodules.records import Record
from datamodules.resample_torch import antialias_sigma, resample_hu

SPACING = (0.7, 0.7, 1.0)
SHAPE = (96, 96, 64)  # 67 x 67 x 64 mm
TARGET = 2.0
BLOB_CENTRE_MM = np.array([12.0, -8.0, 6.0])  # RAS offset from the field-of-view centre
BLOB_RADIUS_MM = 7.0
BLOB_HU = 300.0
# The torch backend runs paper mode's filters (SimpleITK's recursive Gaussian as a matrix, cubic
# B-spline) in float32 matmuls: measured on this phantom, 3 of 34,848 voxels differ, by 1 HU
# (rounding), mean 1e-4 HU. The bounds: every voxel within 1 HU, mean 0.01 HU, the blob's mean 0.1 HU.
MEAN_ABS_HU = 0.01
MAX_ABS_HU = 1
BLOB_MEAN_HU = 0.1


def _phantom(rng: np.random.Generator) -> np.ndarray:
    """A chest-like RAS+ phantom in HU: air, a body ellipse, two lungs, a bone ring, a bright blob
    (a finding), noise."""
    centre = (np.array(SHAPE) - 1) / 2
    x, y, z = ((np.arange(n) - c) * s for n, c, s in zip(SHAPE, centre, SPACING, strict=True))
    x, y, z = np.meshgrid(x, y, z, indexing="ij")
    hu = np.full(SHAPE, -1000.0)
    body = (x / 30) ** 2 + (y / 24) ** 2 < 1
    hu[body] = 40
    hu[body & ((x / 30) ** 2 + (y / 24) ** 2 > 0.85)] = 700  # a bone-like ring
    for side in (-1, 1):
        hu[((x - side * 13) / 10) ** 2 + (y / 15) ** 2 < 1] = -850
    blob = (x - BLOB_CENTRE_MM[0]) ** 2 + (y - BLOB_CENTRE_MM[1]) ** 2 + (z - BLOB_CENTRE_MM[2]) ** 2
    hu[blob < BLOB_RADIUS_MM**2] = BLOB_HU
    hu += rng.normal(0, 15, SHAPE)
    return hu


def _write(path: Path, hu_ras: np.ndarray, lps: bool = False, permute: bool = False) -> Record:
    """The phantom as an int16 NIfTI file, stored RAS+, or LPS (x and y reversed), or with its
    x and y array axes swapped; the record gives the spacing."""
    affine = np.diag([*SPACING, 1.0])
    affine[:3, 3] = -(np.array(SHAPE) - 1) / 2 * np.array(SPACING)
    array = np.rint(hu_ras).astype(np.int16)
    spacing = SPACING
    if lps:
        array = array[::-1, ::-1]
        affine = np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine
    if permute:
        array = array.transpose(1, 0, 2)
        affine = affine[:, [1, 0, 2, 3]]
        spacing = (SPACING[1], SPACING[0], SPACING[2])
    nib.save(nib.Nifti1Image(np.ascontiguousarray(array), affine), path)
    rid = path.name.split(".")[0]
    return Record(rid, f"p_{rid}", "train", path, spacing=spacing, source="test")


@pytest.fixture(scope="module")
def phantom_hu() -> np.ndarray:
    return _phantom(np.random.default_rng(0))


@pytest.fixture(scope="module")
def stored(tmp_path_factory: pytest.TempPathFactory, phantom_hu: np.ndarray) -> dict[str, Record]:
    root = tmp_path_factory.mktemp("resample_torch")
    return {
        "ras": _write(root / "ras.nii.gz", phantom_hu),
        "lps": _write(root / "lps.nii.gz", phantom_hu, lps=True),
        "permuted": _write(root / "permuted.nii.gz", phantom_hu, lps=True, permute=True),
        # within [-1000, 1000]: clamping before resampling changes nothing
        "ras_clipped": _write(root / "ras_clipped.nii.gz", np.clip(phantom_hu, -1000, 1000)),
        "permuted_clipped": _write(
            root / "permuted_clipped.nii.gz", np.clip(phantom_hu, -1000, 1000), lps=True, permute=True
        ),
    }


def _blob_mask(shape: tuple[int, ...], affine: np.ndarray, radius_mm: float) -> np.ndarray:
    index = np.stack(np.meshgrid(*(np.arange(n) for n in shape), indexing="ij"), -1)
    world = index @ affine[:3, :3].T + affine[:3, 3]
    return np.linalg.norm(world - BLOB_CENTRE_MM, axis=-1) < radius_mm


@pytest.mark.parametrize(("kind", "target"), [("lps", TARGET), ("permuted", (1.5, 1.5, 3.0)), ("ras", 0.8)])
def test_torch_backend_matches_paper_mode_within_tolerance(
    stored: dict[str, Record], kind: str, target: float | tuple[float, float, float]
) -> None:
    paper, paper_affine = preprocess_volume_with_affine(stored[kind], target, "paper")
    fast, fast_affine = preprocess_volume_with_affine(stored[kind], target, "paper_torch")
    assert fast.dtype == paper.dtype == np.int16
    assert fast.shape == paper.shape
    np.testing.assert_allclose(fast_affine, paper_affine, atol=1e-9)
    error = np.abs(fast.astype(np.int32) - paper)
    assert error.mean() <= MEAN_ABS_HU, error.mean()
    assert error.max() <= MAX_ABS_HU, error.max()
    # The finding survives: its core keeps its HU in both, within the bound of each other.
    core = _blob_mask(paper.shape, paper_affine, BLOB_RADIUS_MM - 3.0)
    assert core.sum() >= 10
    assert abs(paper[core].mean() - BLOB_HU) < 10
    assert abs(fast[core].mean() - paper[core].mean()) <= BLOB_MEAN_HU


@pytest.mark.parametrize("kind", ["ras_clipped", "permuted_clipped"])
@pytest.mark.parametrize("target", [TARGET, (1.5, 1.5, 3.0), 0.5])
def test_torch_grid_is_torchios_for_any_storage_and_spacing(
    stored: dict[str, Record], kind: str, target: float | tuple[float, float, float]
) -> None:
    """Without antialiasing both are linear interpolation on the same grid: equal up to rounding
    (SimpleITK computes the sample points in world coordinates, in float64). colipri_inference does
    not clamp before resampling, so the phantom is one whose HU are all within [-1000, 1000]."""
    hu, affine = load_hu(stored[kind])
    linear, linear_affine = preprocess_volume_with_affine(stored[kind], target, "colipri_inference")
    ours, ours_affine = resample_hu(
        hu, affine, np.broadcast_to(target, 3), antialias=False, interpolation="linear"
    )
    assert ours.shape == linear.shape
    np.testing.assert_allclose(ours_affine, linear_affine, atol=1e-9)
    assert np.abs(ours.astype(np.int32) - linear).max() <= 1


def test_separable_linear_equals_grid_sample(phantom_hu: np.ndarray) -> None:
    """The axis matrices without antialiasing are trilinear interpolation, as grid_sample does it."""
    affine = np.diag([*SPACING, 1.0])
    hu = np.clip(phantom_hu, -1000, 1000).astype(np.float32)
    ours, out_affine = resample_hu(
        hu.copy(), affine, (TARGET,) * 3, device="cpu", antialias=False, interpolation="linear"
    )
    # Output voxel -> input voxel index, normalized for align_corners=True; grid is (z, y, x)-last.
    index = np.stack(np.meshgrid(*(np.arange(n) for n in ours.shape), indexing="ij"), -1)
    source = (index @ (np.linalg.inv(affine) @ out_affine)[:3, :3].T) + (np.linalg.inv(affine) @ out_affine)[
        :3, 3
    ]
    normalized = 2 * source / (np.array(hu.shape) - 1) - 1
    grid = torch.from_numpy(normalized[..., ::-1].copy()).float()[None]
    sampled = torch.nn.functional.grid_sample(
        torch.from_numpy(hu)[None, None], grid, mode="bilinear", align_corners=True
    )[0, 0]
    expected = np.rint(sampled.numpy()).astype(np.int16)
    assert np.abs(ours.astype(np.int32) - expected).max() <= 1


def test_antialias_sigma_is_torchios() -> None:
    import torchio as tio

    factors = np.array([2.0, 2 / 0.7, 1.0, 0.5])
    expected = tio.Resample._get_sigmas(np.where(factors > 1, factors, np.nan), np.ones(4))
    ours = np.array([antialias_sigma(k) for k in factors])
    np.testing.assert_allclose(ours[:2], expected[:2], rtol=1e-12)
    assert (ours[2:] == 0).all()


@pytest.mark.parametrize("kind", ["ras", "lps", "permuted"])
def test_paper_mode_reorientation_is_bit_identical_to_the_previous_path(
    stored: dict[str, Record], kind: str
) -> None:
    new, new_affine = preprocess_volume_with_affine(stored[kind], (1.5, 1.5, 3.0), "paper")
    old, old_affine = preprocess_volume_with_affine(
        stored[kind], (1.5, 1.5, 3.0), "paper", reorient_first=False
    )
    assert np.array_equal(new, old)
    assert np.array_equal(new_affine, old_affine)


def test_backend_is_part_of_the_cache_key(tmp_path: Path, stored: dict[str, Record]) -> None:
    assert cache_interpolation("paper", "torchio") == "paper"
    assert cache_interpolation("paper", "torch") == "paper_torch"
    assert cache_interpolation("colipri_inference", "torchio") == "colipri_inference"
    with pytest.raises(ValueError, match="torch backend"):
        cache_interpolation("colipri_inference", "torch")
    with pytest.raises(ValueError, match="backend"):
        cache_interpolation("paper", "cupy")
    assert _build_params(TARGET, "paper") != _build_params(TARGET, "paper_torch")
    paper_root = cache_path(tmp_path, "test", TARGET, "paper")
    torch_root = cache_path(tmp_path, "test", TARGET, "paper_torch")
    assert paper_root != torch_root and torch_root.name == "2mm-paper_torch"

    records = [stored["ras"]]
    index = build_cache(records, torch_root, TARGET, "paper_torch", label_names=[], workers=1, progress=False)
    assert index.interpolation == "paper_torch"
    assert CacheIndex.load(torch_root).interpolation == "paper_torch"
    # A paper build refuses the torch cache's folder (build.json), so the two never mix.
    with pytest.raises(ConfigError, match="paper_torch"):
        build_cache(records, torch_root, TARGET, "paper", label_names=[], workers=1, progress=False)


def test_cli_backend_flag(tmp_path: Path) -> None:
    parser = argparse.ArgumentParser()
    preprocess_command.add_parser(parser.add_subparsers(dest="command", required=True))
    argv = ["preprocess", "--root", str(tmp_path), "--cache-dir", str(tmp_path)]
    assert parser.parse_args(argv).backend == "torchio"
    args = parser.parse_args([*argv, "--backend", "torch", "--interpolation", "colipri_inference"])
    assert args.handler(args) == 2  # refused before the dataset is scanned
    with pytest.raises(SystemExit):
        parser.parse_args([*argv, "--backend", "cupy"])
