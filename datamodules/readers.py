"""Readers for the volume formats that are not NIfTI: RAD-ChestCT ``.npz`` files and DICOM series,
and the checks every reader shares (NIfTI's :func:`datamodules.preprocess.load_hu` included): the
HU rescale (:func:`to_hu`) and the voxel spacing (:func:`check_spacing`); and NIfTI's own: one
channel (:func:`check_channels`) and a usable affine (:func:`check_affine`).

Each returns what :func:`datamodules.preprocess.load_hu` returns for NIfTI: float32 HU of shape
(X, Y, Z) and the 4x4 affine (voxel index -> RAS+ world mm), or raises
:class:`~datamodules.errors.BadVolumeError` with the reason that goes to ``quarantine.csv``.

RAD-ChestCT ``.npz`` convention (the header carries no geometry)
--------------------------------------------------------------
Array key ``"ct"``: int16 HU, already clipped to [-1000, 1000], 0.8 mm isotropic, stored as a DICOM
slice stack ``ct[slice, row, column]``: slices from superior to inferior (public loaders flip axis 0
before giving it an identity LPS direction), rows from anterior to posterior, columns from patient
right to left. So the RAS+ array is ``ct.transpose(2, 1, 0)[::-1, ::-1, ::-1]``. The spacing comes
from the record (the dataset's 0.8 mm convention, set by the RAD-ChestCT source); the field of
view is centred on the world origin. Values are HU: they are *not* multiplied by 1000 (a units bug
of one public loader).

DICOM series
------------
A record whose ``image_path`` is a folder holds exactly one DICOM series, read with SimpleITK's
GDCM series reader (slices sorted by position, Rescale Slope/Intercept applied, so values are HU).
The geometry is the series' own (LPS in DICOM, converted to RAS+ here).
"""

from __future__ import annotations

import math
import zipfile
import zlib
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from datamodules.errors import BadVolumeError
from datamodules.records import Record

NPZ_KEY = "ct"
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def read_other_format(record: Record) -> tuple[np.ndarray, np.ndarray] | None:
    """(HU, affine) for an ``.npz`` file or a DICOM folder; ``None`` for anything else (NIfTI)."""
    path = Path(record.image_path)
    if path.is_dir():
        return read_dicom_series(record)
    if path.name.endswith(".npz"):
        return read_npz(record)
    return None


def read_npz(record: Record) -> tuple[np.ndarray, np.ndarray]:
    """A RAD-ChestCT ``.npz`` volume in RAS+ with the record's spacing (see the module docstring)."""
    path = Path(record.image_path)
    _check_file(path)
    try:
        with np.load(path, allow_pickle=False) as archive:
            if NPZ_KEY not in archive.files:
                raise BadVolumeError(f"no array {NPZ_KEY!r} in the .npz (arrays: {archive.files})")
            raw = archive[NPZ_KEY]
    except BadVolumeError:
        raise
    except (zipfile.BadZipFile, EOFError, OSError, ValueError, zlib.error) as error:
        raise BadVolumeError(f"unreadable or truncated .npz: {type(error).__name__}: {error}") from error
    _check_shape(raw.shape)
    if raw.dtype.kind not in "iuf":
        raise BadVolumeError(f"unsupported voxel type {raw.dtype}")
    if record.spacing is None:
        raise BadVolumeError(".npz volumes carry no geometry and the record gives no spacing")
    spacing = check_spacing(record.spacing)
    hu = to_hu(raw, record)
    ras = np.ascontiguousarray(hu.transpose(2, 1, 0)[::-1, ::-1, ::-1])
    affine = np.eye(4)
    affine[:3, :3] = np.diag(spacing)
    affine[:3, 3] = -(np.array(ras.shape) - 1) / 2.0 * spacing
    return ras, affine


def read_dicom_series(record: Record) -> tuple[np.ndarray, np.ndarray]:
    """The one DICOM series in the folder ``record.image_path``, as RAS+ HU."""
    folder = Path(record.image_path)
    reader = sitk.ImageSeriesReader()
    series = reader.GetGDCMSeriesIDs(str(folder))
    if not series:
        files = [p for p in folder.iterdir() if p.is_file()]
        if files and all(p.stat().st_size == 0 for p in files):
            raise BadVolumeError("zero-byte file(s): no readable DICOM series in the folder")
        raise BadVolumeError(f"no DICOM series in the folder ({len(files)} files)")
    if len(series) > 1:
        raise BadVolumeError(f"{len(series)} DICOM series in one folder; expected one series per folder")
    empty = sorted(p.name for p in folder.iterdir() if p.is_file() and p.stat().st_size == 0)
    if empty:
        raise BadVolumeError(f"zero-byte file(s) in the DICOM series: {', '.join(empty[:3])}")
    names = reader.GetGDCMSeriesFileNames(str(folder), series[0])
    for name in names:
        _check_file(Path(name))
    if len(names) < 2:
        raise BadVolumeError(f"a DICOM series of {len(names)} slice(s) is not a 3D volume")
    reader.SetFileNames(names)
    reader.MetaDataDictionaryArrayUpdateOn()
    try:
        image = reader.Execute()
    except RuntimeError as error:
        raise BadVolumeError(f"unreadable or truncated DICOM series: {error}".strip()) from error
    _check_slice_positions(reader, len(names))
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise BadVolumeError(
            f"not a 3D scalar volume: {image.GetDimension()}D, {image.GetNumberOfComponentsPerPixel()} components"
        )
    raw = sitk.GetArrayFromImage(image).transpose(2, 1, 0)  # (z, y, x) -> (x, y, z)
    _check_shape(raw.shape)
    hu = to_hu(raw, record)
    direction = np.array(image.GetDirection(), dtype=np.float64).reshape(3, 3)
    spacing = np.array(image.GetSpacing(), dtype=np.float64)
    if record.spacing is not None:
        spacing = np.asarray(record.spacing, dtype=np.float64)
    spacing = check_spacing(tuple(spacing.tolist()))
    lps = np.eye(4)
    lps[:3, :3] = direction * spacing
    lps[:3, 3] = image.GetOrigin()
    affine = LPS_TO_RAS @ lps
    if not np.isfinite(affine).all() or abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        raise BadVolumeError(f"degenerate DICOM geometry:\n{affine}")
    return np.ascontiguousarray(hu), affine


# ----------------------------------------------------------------------------------------- checks


def _check_file(path: Path) -> None:
    try:
        size = path.stat().st_size
    except OSError as error:
        raise BadVolumeError(f"cannot open file: {error}") from error
    if size == 0:
        raise BadVolumeError(f"zero-byte file: {path.name}")


def _check_slice_positions(reader, n: int) -> None:
    """Missing slices show as a gap in Image Position (Patient) along the stack."""
    positions = []
    for k in range(n):
        if not reader.HasMetaDataKey(k, "0020|0032"):
            return
        try:
            positions.append([float(v) for v in reader.GetMetaData(k, "0020|0032").split("\\")])
        except ValueError:
            return
    steps = np.linalg.norm(np.diff(np.asarray(positions), axis=0), axis=1)
    if steps.size and steps.min() > 0 and steps.max() > 1.5 * np.median(steps):
        raise BadVolumeError(
            f"missing DICOM slices: slice gaps from {steps.min():.2f} to {steps.max():.2f} mm"
        )


def _check_shape(shape: tuple[int, ...]) -> None:
    if len(shape) != 3:
        raise BadVolumeError(f"not a 3D volume: shape {tuple(shape)}")
    if any(s < 2 for s in shape):
        raise BadVolumeError(f"degenerate 3D volume (an axis shorter than 2 voxels): shape {tuple(shape)}")


def check_channels(shape: tuple[int, ...]) -> None:
    """A NIfTI image shape must be (X, Y, Z), or (X, Y, Z, 1[, 1 ...]), which reads as (X, Y, Z).
    More than one value per voxel (two channels: (X, Y, Z, 2) or (X, Y, Z, 1, 2), as some INSPECT
    scans store) is no CT volume to resample."""
    if len(shape) < 3:
        raise BadVolumeError(f"not a 3D volume: shape {tuple(shape)}")
    channels = math.prod(shape[3:])
    if channels == 2:
        raise BadVolumeError(f"not a 3D volume: two channels (shape {tuple(shape)})")
    if channels != 1:
        raise BadVolumeError(f"not a 3D volume: {channels} channels or time points (shape {tuple(shape)})")


# |det| of an affine's unit axis vectors: 1 for orthogonal axes, cos(tilt) for a gantry-tilted
# (sheared) grid, 0 when two axes are parallel. Below this the grid is no 3D grid.
MIN_AXIS_VOLUME = 0.1


def check_affine(affine: np.ndarray) -> np.ndarray:
    """The voxel sizes (column norms) of a 4x4 voxel -> world affine, or BadVolumeError("corrupted
    affine ...") when it has non-finite entries, a zero voxel size or a singular direction matrix."""
    affine = np.asarray(affine, dtype=np.float64)
    if not np.isfinite(affine).all():
        raise BadVolumeError(f"corrupted affine (non-finite entries):\n{affine}")
    linear = affine[:3, :3]
    zooms = np.linalg.norm(linear, axis=0)
    if not (zooms > 0).all():
        raise BadVolumeError(
            f"corrupted affine (zero voxel size {tuple(zooms.round(4).tolist())}):\n{affine}"
        )
    axis_volume = abs(float(np.linalg.det(linear / zooms)))
    if axis_volume < MIN_AXIS_VOLUME:
        raise BadVolumeError(
            f"corrupted affine (singular direction matrix: |det| of the unit axes {axis_volume:.3g} "
            f"< {MIN_AXIS_VOLUME}):\n{affine}"
        )
    return zooms


def check_spacing(spacing: tuple[float, ...] | np.ndarray) -> np.ndarray:
    """The voxel spacing (x, y, z) in mm as float64, or BadVolumeError unless three finite,
    positive values."""
    values = np.asarray(spacing, dtype=np.float64)
    if values.shape != (3,) or not (np.isfinite(values).all() and (values > 0).all()):
        raise BadVolumeError(f"zero, negative or non-finite spacing {tuple(values.tolist())}")
    return values


def to_hu(raw: np.ndarray, record: Record) -> np.ndarray:
    """Stored voxel values -> float32 HU (``raw * hu_slope + hu_intercept``, a new array), or
    BadVolumeError for a bad rescale or non-finite voxels."""
    slope, intercept = float(record.hu_slope), float(record.hu_intercept)
    if not (math.isfinite(slope) and math.isfinite(intercept) and slope != 0):
        raise BadVolumeError(f"bad HU rescale slope={slope} intercept={intercept}")
    hu = raw.astype(np.float32, copy=True)
    if slope != 1.0:
        hu *= np.float32(slope)
    if intercept != 0.0:
        hu += np.float32(intercept)
    if not np.isfinite(hu).all():
        raise BadVolumeError("NaN or Inf voxels")
    return hu
