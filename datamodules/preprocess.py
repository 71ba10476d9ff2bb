"""One-time cache build: one record -> a canonical int16 volume, and the parallel, resumable builder.

Conversion follows COLIPRI: HU from the record's rescale, RAS+ orientation, resampling with torchio
to an isotropic spacing (or an anisotropic (x, y, z) one, e.g. GreenRFM's 1.5 x 1.5 x 3 mm)
(B-spline + antialiasing for ``"paper"``, the antialiasing filter per axis as torchio sizes it;
linear without antialiasing for ``"colipri_inference"``, exactly the released ``colipri``
processor), clamp to [-1000, 1000], int16. ``"paper_torch"`` is paper mode on the ``torch`` backend
(``datamodules.resample_torch``: the same grid and filters as banded matmuls, on CUDA when
available): 10x faster than SimpleITK's filters, within 1 HU of paper mode; its own cache folder.
"""

from __future__ import annotations

import csv
import json
import logging
import multiprocessing
import os
import re
import time
import traceback
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import SimpleITK as sitk
import torch
import torchio as tio
from tqdm import tqdm

from ctvlp.config.errors import ConfigError
from datamodules.cache import (
    BUILD_NAME,
    DTYPE,
    FORMAT,
    QUARANTINE_NAME,
    VOLUMES_DIR,
    CacheEntry,
    CacheIndex,
    Spacing,
    as_spacing,
    npy_shape,
    spacing_json,
    spacing_triplet,
    volume_relpath,
)
from datamodules.cache_provenance import (
    SOURCES_DIR,
    signature_is_current,
    source_signature,
    write_signature,
)
from datamodules.cache_shards import (
    SHARDS_DIR,
    Shard,
    ShardsIncompleteError,
    assemble_shards,
    check_shards,
    clear_shard_results,
    json_text,
    records_fingerprint,
    shard_counts,
    start_shard,
    unique_tmp,
    write_finished_cache,
    write_shard_result,
)
from datamodules.errors import BadVolumeError
from datamodules.labels import CT_RATE_LABELS
from datamodules.mask_preprocess import (
    cached_mask_organs,
    cached_ts_label_ids,
    masks_complete,
    write_masks,
)
from datamodules.readers import check_affine, check_channels, check_spacing, read_other_format, to_hu
from datamodules.records import Record
from datamodules.resample_torch import ras_orientation, resample_hu

log = logging.getLogger(__name__)

HU_MAX = 1000
# interpolation name -> (torchio image_interpolation, antialias, clamp before resampling too)
INTERPOLATION_SETTINGS: dict[str, tuple[str, bool, bool]] = {
    # The paper's offline preprocessing: B-spline with an antialiasing filter when downsampling. HU are
    # clipped first (the recipe's order) so that B-spline does not ring off out-of-FOV padding values
    # (about -3000 HU), and again after because B-spline overshoots.
    "paper": ("bspline", True, True),
    # The released colipri processor: ToOrientation RAS, Resample linear no antialias, Clamp +-1000.
    "colipri_inference": ("linear", False, False),
    # Paper mode on the torch backend (datamodules/resample_torch.py): the same grid, clamps,
    # antialiasing and B-spline, computed by torch instead of torchio + SimpleITK.
    "paper_torch": ("bspline", True, True),
}
# Resampling backends: "torchio" (torchio + SimpleITK) and "torch". The backend is part of the cache
# key: a torch-built cache is an interpolation of its own ("paper_torch"), so its folder
# (2mm-paper_torch), build.json and index.json differ from paper mode's and the two never mix.
BACKENDS = ("torchio", "torch")
_TORCH_MODES = {"paper": "paper_torch"}
_SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_STALE_TMP_S = 3600.0


# ----------------------------------------------------------------------------------------- one volume


def load_hu(record: Record) -> tuple[np.ndarray, np.ndarray]:
    """Read ``record.image_path`` as float32 HU (X, Y, Z) and its affine, spacing from the record.

    HU = stored value * ``hu_slope`` + ``hu_intercept``. When the record gives a spacing (metadata
    from the dataset's tables, as CT-RATE) the header's scl_slope/scl_inter are ignored like its
    zooms; when ``record.spacing`` is None the header is trusted, its scaling included.
    The affine keeps the header's direction cosines and origin; its voxel sizes become
    ``record.spacing``. Images with more than one channel and corrupted affines (non-finite, a zero
    voxel size, a singular direction matrix) raise :class:`BadVolumeError` (``datamodules.readers``).
    """
    path = Path(record.image_path)
    # RAD-ChestCT .npz and DICOM series folders (datamodules/readers.py); NIfTI continues below.
    other = read_other_format(record)
    if other is not None:
        return other
    try:
        size = path.stat().st_size
    except OSError as error:
        raise BadVolumeError(f"cannot open file: {error}") from error
    if size == 0:
        raise BadVolumeError("zero-byte file")
    try:
        image = nib.load(path)
    except Exception as error:
        raise BadVolumeError(f"unreadable header: {type(error).__name__}: {error}") from error

    shape = tuple(int(s) for s in image.shape)
    check_channels(shape)
    if any(s < 2 for s in shape[:3]):
        raise BadVolumeError(f"degenerate 3D volume (an axis shorter than 2 voxels): shape {shape}")

    trust_header = record.spacing is None
    try:
        proxy = image.dataobj
        if not trust_header and hasattr(proxy, "get_unscaled"):
            raw = np.asarray(proxy.get_unscaled())
        else:
            raw = np.asarray(proxy)
    except Exception as error:
        raise BadVolumeError(f"unreadable or truncated data: {type(error).__name__}: {error}") from error
    if raw.ndim > 3:  # trailing singleton dimensions (X, Y, Z, 1[, 1])
        raw = raw.reshape(raw.shape[:3])
    if raw.dtype.kind not in "iuf" or raw.ndim != 3:
        raise BadVolumeError(f"unsupported voxel type {raw.dtype} / shape {raw.shape}")

    hu = to_hu(raw, record)
    del raw

    affine = np.asarray(image.affine, dtype=np.float64).copy()
    linear = affine[:3, :3]
    zooms = check_affine(affine)
    if trust_header:
        # nibabel silently reads a zero pixdim as 1 mm: check what the header really stores.
        pixdim = _stored_pixdim(path, image)
        if not (np.isfinite(pixdim).all() and (pixdim > 0).all()):
            raise BadVolumeError(
                f"zero, negative or non-finite spacing in the header pixdim {tuple(pixdim.tolist())}"
            )
        spacing = zooms
    else:
        spacing = check_spacing(record.spacing)
    affine[:3, :3] = linear / zooms * spacing  # unit direction cosines (columns) x spacing
    return hu, affine


def _stored_pixdim(path: Path, image: nib.spatialimages.SpatialImage) -> np.ndarray:
    """pixdim[1:4] as written in the file (nibabel's loader replaces zeros by 1)."""
    header_class = type(image.header)
    if not hasattr(header_class, "from_fileobj") or "pixdim" not in image.header:
        return np.ones(3)
    try:
        with nib.openers.ImageOpener(path) as f:
            stored = header_class.from_fileobj(f, check=False)
    except Exception:  # the header already parsed once; keep what nibabel made of it
        return np.asarray(image.header["pixdim"][1:4], dtype=np.float64)
    return np.asarray(stored["pixdim"][1:4], dtype=np.float64)


def cache_interpolation(interpolation: str, backend: str = "torchio") -> str:
    """The cache's interpolation key of ``interpolation`` run by ``backend``: ``("paper", "torch")``
    -> ``"paper_torch"``; the torchio backend keeps the name. ``ValueError`` for a pair without one."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {list(BACKENDS)}, not {backend!r}")
    if backend == "torchio" or interpolation in _TORCH_MODES.values():
        return interpolation
    if interpolation not in _TORCH_MODES:
        raise ValueError(
            f"the torch backend implements {sorted(_TORCH_MODES)} only, not interpolation {interpolation!r}"
        )
    return _TORCH_MODES[interpolation]


def preprocess_volume_with_affine(
    record: Record,
    spacing: Spacing | Sequence[float],
    interpolation: str = "paper",
    reorient_first: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`preprocess_volume` plus the RAS+ affine (voxel index -> world mm) of the result.

    ``reorient_first=False`` runs the torchio backend as it was before the RAS+ reorientation and
    the first clamp moved out of torchio (same output, slower; ``make bench-data``)."""
    if interpolation not in INTERPOLATION_SETTINGS:
        raise ValueError(
            f"interpolation must be one of {list(INTERPOLATION_SETTINGS)}, not {interpolation!r}"
        )
    try:
        target = as_spacing(spacing)
    except ValueError as error:
        raise ValueError(f"target {error}") from None
    image_interpolation, antialias, clamp_first = INTERPOLATION_SETTINGS[interpolation]
    hu, affine = load_hu(record)
    extent = np.array(hu.shape) * np.linalg.norm(affine[:3, :3], axis=0)
    if (extent < np.array(spacing_triplet(target))).any():
        raise BadVolumeError(
            f"field of view {extent.round(2).tolist()} mm is smaller than one {spacing_json(target)} mm voxel"
        )
    if interpolation in _TORCH_MODES.values():
        return resample_hu(hu, affine, spacing_triplet(target))
    if reorient_first:
        # RAS+ here, kept in the array's memory order (nibabel reads NIfTI in Fortran order): torchio's
        # ToOrientation copies a reoriented volume to C order and its SimpleITK conversion transposes
        # it back, two strided copies of the whole float volume. Same voxels, same affine as torchio
        # computes; ToOrientation below then finds the image RAS+ and does nothing.
        transform, ras_affine = ras_orientation(affine, hu.shape)
        if not (transform == [[0, 1], [1, 1], [2, 1]]).all():
            hu = nib.orientations.apply_orientation(hu, transform)
            hu = np.asfortranarray(hu)  # the layout SimpleITK takes without a transposing copy
            affine = ras_affine
        if clamp_first:  # in place: torchio's Clamp allocates a new volume
            np.clip(hu, -HU_MAX, HU_MAX, out=hu)
    image = tio.ScalarImage(tensor=torch.from_numpy(hu)[None], affine=affine)
    del hu
    # copy=False: the image is ours, and deep copies of a 512x512x300 float volume cost seconds.
    steps: list[tio.Transform] = [tio.ToOrientation("RAS", copy=False)]
    if clamp_first and not reorient_first:
        steps.append(tio.Clamp(out_min=-HU_MAX, out_max=HU_MAX, copy=False))
    steps += [
        # torchio takes a number (isotropic, as always) or an (x, y, z) tuple.
        tio.Resample(target, image_interpolation=image_interpolation, antialias=antialias, copy=False),
        tio.Clamp(out_min=-HU_MAX, out_max=HU_MAX, copy=False),
    ]
    out = tio.Compose(steps, copy=False)(image)
    volume = np.rint(out.data[0].numpy()).astype(DTYPE)
    return np.ascontiguousarray(volume), np.asarray(out.affine, dtype=np.float64)


def preprocess_volume(
    record: Record, spacing: Spacing | Sequence[float], interpolation: str = "paper"
) -> np.ndarray:
    """One record -> int16 HU in [-1000, 1000], RAS+, ``spacing`` mm (a number: isotropic; or
    (x, y, z)), shape (X, Y, Z).

    The output grid is torchio's: centred on the input's field of view, ``floor(n * s / spacing)``
    voxels per axis (each axis at its own spacing), axes along R, A, S. Raises
    :class:`BadVolumeError` for unusable inputs.
    """
    return preprocess_volume_with_affine(record, spacing, interpolation)[0]


# ------------------------------------------------------------------------------------------ the builder


def build_cache(
    records: list[Record],
    cache_root: Path,
    spacing: Spacing | Sequence[float],
    interpolation: str = "paper",
    label_names: list[str] = CT_RATE_LABELS,
    workers: int = 2,
    progress: bool = True,
    rejected: Sequence[tuple[str, str, str]] = (),
    source_root: Path | None = None,
    label_table: Path | None = None,
) -> CacheIndex:
    """Convert every record into ``<cache_root>/volumes/<id>.npy`` and write the index.

    Parallel (``workers`` processes; <= 1 runs in-process), resumable (a complete ``.npy`` from an
    earlier run is reused when it was built from the same inputs: ``datamodules.cache_provenance``),
    atomic (temp file + ``os.replace``; ``index.json`` last). Bad volumes and ``rejected`` go to
    ``quarantine.csv``; they never raise. With ``source_root`` (the dataset the records were scanned
    from) the dataset's stamp is written last, so a later complete-cache check can trust the index;
    ``label_table`` (a table the records' labels were taken from) is part of that stamp.
    """
    outcome = _build(
        records,
        cache_root,
        spacing,
        interpolation,
        label_names,
        workers,
        progress,
        rejected,
        source_root,
        label_table,
        shard=None,
    )
    assert outcome.index is not None
    return outcome.index


@dataclass
class ShardOutcome:
    """What one shard did; ``index`` is set when this shard found all results and wrote the index."""

    shard: Shard | None
    owned: int  # records this process converted or reused (after duplicate / bad-id screening)
    total: int  # records of the whole build (after that screening)
    built: int
    reused: int
    quarantined: int  # of the owned records
    index: CacheIndex | None
    waiting_for: list[int] = field(default_factory=list)  # shard indices without a current result


def build_cache_shard(
    records: list[Record],
    cache_root: Path,
    spacing: Spacing | Sequence[float],
    shard: Shard,
    interpolation: str = "paper",
    label_names: list[str] = CT_RATE_LABELS,
    workers: int = 2,
    progress: bool = True,
    rejected: Sequence[tuple[str, str, str]] = (),
    source_root: Path | None = None,
    label_table: Path | None = None,
) -> ShardOutcome:
    """:func:`build_cache` for shard ``K/N`` of ``records`` (``datamodules.cache_shards``): converts
    its share, writes ``shards/<K>-of-<N>.json``, and when every shard has a current result, writes
    ``quarantine.csv`` and ``index.json`` as :func:`build_cache` would. Every shard process must be
    given the same records, parameters and label table."""
    return _build(
        records,
        cache_root,
        spacing,
        interpolation,
        label_names,
        workers,
        progress,
        rejected,
        source_root,
        label_table,
        shard=shard,
    )


def finalize_cache(
    records: list[Record],
    cache_root: Path,
    spacing: Spacing | Sequence[float],
    interpolation: str = "paper",
    label_names: list[str] = CT_RATE_LABELS,
    rejected: Sequence[tuple[str, str, str]] = (),
    source_root: Path | None = None,
    label_table: Path | None = None,
) -> CacheIndex:
    """Assemble ``index.json`` from the shard results of a sharded build of ``records`` (what the
    last shard does by itself). :class:`ShardsIncompleteError` names the missing or stale shards."""
    cache_root = Path(cache_root).absolute()
    spacing = as_spacing(spacing)
    params = _build_params(spacing, interpolation)
    build_file = cache_root / BUILD_NAME
    if not build_file.is_file():
        raise ShardsIncompleteError(f"{cache_root}: no sharded build started there ({BUILD_NAME} missing)")
    _check_params(cache_root, params)
    counts = shard_counts(cache_root)
    if not counts:
        raise ShardsIncompleteError(
            f"{cache_root}: no shard results in {SHARDS_DIR}/; run the shards first "
            "(`ctvlp preprocess ... --shard K/N` for K = 1..N)"
        )
    if len(counts) > 1:
        raise ShardsIncompleteError(
            f"{cache_root}/{SHARDS_DIR} holds results of shardings into {counts} shards; rerun the shards "
            "of one of them (a shard clears the results of other shardings when it starts)"
        )
    unique, screened = _screen(records, rejected)
    fingerprint = records_fingerprint(unique, screened, label_names)
    return assemble_shards(
        cache_root,
        counts[0],
        params,
        fingerprint,
        spacing,
        interpolation,
        label_names,
        source_root,
        label_table,
    )


def _build(
    records: list[Record],
    cache_root: Path,
    spacing: Spacing | Sequence[float],
    interpolation: str,
    label_names: list[str],
    workers: int,
    progress: bool,
    rejected: Sequence[tuple[str, str, str]],
    source_root: Path | None,
    label_table: Path | None,
    shard: Shard | None,
) -> ShardOutcome:
    if interpolation not in INTERPOLATION_SETTINGS:
        raise ValueError(
            f"interpolation must be one of {list(INTERPOLATION_SETTINGS)}, not {interpolation!r}"
        )
    cache_root = Path(cache_root).absolute()
    volumes_dir = cache_root / VOLUMES_DIR
    volumes_dir.mkdir(parents=True, exist_ok=True)
    (cache_root / SOURCES_DIR).mkdir(exist_ok=True)
    spacing = as_spacing(spacing)  # a number, or (x, y, z) mm; [s, s, s] is the isotropic s
    params = _build_params(spacing, interpolation)
    _claim_build(cache_root, params)
    _remove_stale_tmp(volumes_dir)

    unique, screened = _screen(records, rejected)
    fingerprint = ""
    if shard is None:
        mine = unique
    else:
        fingerprint = records_fingerprint(unique, screened, label_names)
        start_shard(cache_root, shard)
        mine = shard.owns(unique)
        log.info(
            "%s: shard %s converts %d of the %d records (sorted by id, round-robin over %d shards)",
            cache_root,
            shard.label,
            len(mine),
            len(unique),
            shard.count,
        )

    shapes: dict[str, tuple[int, int, int]] = {}
    todo: list[tuple[Record, tuple[int, int, int] | None]] = []  # with its current cached shape
    stale = 0
    for record in mine:
        shape = npy_shape(cache_root / volume_relpath(record.id))
        current = shape is not None and len(shape) == 3 and signature_is_current(cache_root, record)
        cached = (shape[0], shape[1], shape[2]) if current else None
        # Organ masks (datamodules/mask_preprocess.py): a volume whose mask file is missing is redone
        # (its cached volume is reused), so a cache built before masks existed gains them.
        if cached is not None and masks_complete(record, cache_root, cached):
            shapes[record.id] = cached
        else:
            stale += shape is not None and not current
            todo.append((record, cached))
    reused = len(shapes)
    if stale:
        log.warning(
            "%s: %d cached volumes were built from other or unrecorded source files (a regenerated or "
            "replaced dataset, another data root, or a cache from an older ctvlp); rebuilding them",
            cache_root,
            stale,
        )

    start = time.perf_counter()
    desc = f"preprocess {cache_root.name}" + ("" if shard is None else f" shard {shard.label}")
    failures: dict[str, str] = {}
    bar = tqdm(total=len(todo), disable=not progress, desc=desc, unit="vol")
    with bar:
        for record, shape, reason in _convert_all(todo, cache_root, spacing, interpolation, workers):
            bar.update(1)
            if shape is None:
                failures[record.id] = reason
                log.warning("quarantined %s (%s): %s", record.id, record.image_path, reason)
            else:
                shapes[record.id] = shape
    elapsed = time.perf_counter() - start

    # Record order, not completion order: the quarantine of a parallel or sharded build is the same
    # file as that of a single-process build.
    position = {r.id: i for i, r in enumerate(unique)}
    entries = [
        (position[r.id], _entry(r, cache_root, shapes[r.id], label_names)) for r in mine if r.id in shapes
    ]
    failed = [(position[r.id], (r.id, str(r.image_path), failures[r.id])) for r in mine if r.id in failures]
    entries.sort(key=lambda item: item[0])
    failed.sort(key=lambda item: item[0])
    built = len(shapes) - reused
    outcome = ShardOutcome(
        shard=shard,
        owned=len(mine),
        total=len(unique),
        built=built,
        reused=reused,
        quarantined=len(failed),
        index=None,
    )
    if shard is None:
        outcome.index = write_finished_cache(
            cache_root,
            spacing,
            interpolation,
            label_names,
            [entry for _, entry in entries],
            [*screened, *(row for _, row in failed)],
            source_root,
            label_table,
        )
        clear_shard_results(cache_root)
        log.info(
            "cache %s: %d entries (%d reused, %d built in %.1f s), %d quarantined",
            cache_root,
            len(entries),
            reused,
            built,
            elapsed,
            len(screened) + len(failed),
        )
        return outcome

    write_shard_result(cache_root, shard, params, fingerprint, screened, entries, failed)
    log.info(
        "cache %s shard %s: %d entries (%d reused, %d built in %.1f s), %d quarantined",
        cache_root,
        shard.label,
        len(entries),
        reused,
        built,
        elapsed,
        len(failed),
    )
    # The last shard to finish assembles; two finishing at once both do, writing the same bytes.
    _, missing, stale_shards = check_shards(cache_root, shard.count, params, fingerprint)
    outcome.waiting_for = sorted(missing + stale_shards)
    if not outcome.waiting_for:
        outcome.index = assemble_shards(
            cache_root,
            shard.count,
            params,
            fingerprint,
            spacing,
            interpolation,
            label_names,
            source_root,
            label_table,
        )
    return outcome


def _screen(
    records: Sequence[Record], rejected: Sequence[tuple[str, str, str]]
) -> tuple[list[Record], list[tuple[str, str, str]]]:
    """(the records to convert, the quarantine rows so far: ``rejected``, duplicate and unusable ids)."""
    quarantine: list[tuple[str, str, str]] = [(str(i), str(p), str(r)) for i, p, r in rejected]
    unique: list[Record] = []
    seen: set[str] = set()
    for record in records:
        if record.id in seen:
            quarantine.append((record.id, str(record.image_path), "duplicate record id"))
            continue
        seen.add(record.id)
        if not _SAFE_ID.match(record.id):
            quarantine.append((record.id, str(record.image_path), "id is not usable as a file name"))
            continue
        unique.append(record)
    return unique, quarantine


def _entry(
    record: Record, cache_root: Path, shape: tuple[int, int, int], label_names: Sequence[str]
) -> CacheEntry:
    return CacheEntry(
        id=record.id,
        patient_id=record.patient_id,
        split=record.split,
        source=record.source,
        file=cache_root / volume_relpath(record.id),
        shape=shape,
        labels=record.label_vector(list(label_names)),
        sections=dict(record.sections),
        masks=cached_mask_organs(record, cache_root, shape),
        ts_labels=cached_ts_label_ids(record, cache_root, shape),
    )


def read_quarantine(cache_root: Path) -> list[tuple[str, str, str]]:
    """The (id, path, reason) rows of ``<cache_root>/quarantine.csv`` (empty if there is none)."""
    path = Path(cache_root) / QUARANTINE_NAME
    if not path.is_file():
        return []
    with open(path, newline="", encoding="utf-8") as f:
        return [(row["id"], row["path"], row["reason"]) for row in csv.DictReader(f)]


# ----------------------------------------------------------------------------------------- internals


def _build_params(spacing: Spacing, interpolation: str) -> dict[str, Any]:
    # An isotropic spacing is written as the number it always was (existing caches are resumed).
    return {"format": FORMAT, "spacing": spacing_json(spacing), "interpolation": interpolation}


def _claim_build(cache_root: Path, params: dict[str, Any]) -> None:
    """Write ``build.json`` once, and refuse to resume a cache folder started with other parameters."""
    path = cache_root / BUILD_NAME
    if not path.is_file():
        # The shards of one build start together: os.link publishes a complete file and fails when
        # another process got there first, so one process writes it and every process checks it.
        tmp = unique_tmp(path)
        try:
            tmp.write_text(json_text(params), encoding="utf-8")
            try:
                os.link(tmp, path)
            except FileExistsError:
                pass
            except OSError:  # no hard links on this file system: the last writer wins, all check below
                os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
    _check_params(cache_root, params)


def _check_params(cache_root: Path, params: dict[str, Any]) -> None:
    with open(cache_root / BUILD_NAME, encoding="utf-8") as f:
        previous = json.load(f)
    if previous != params:
        raise ConfigError(
            f"{cache_root} holds a cache built with {previous}, not {params}; "
            "use another cache folder (see datamodules.cache.cache_path) or delete this one."
        )


def _remove_stale_tmp(volumes_dir: Path) -> None:
    now = time.time()
    for tmp in volumes_dir.glob("*.npy.tmp-*"):
        try:
            if now - tmp.stat().st_mtime > _STALE_TMP_S:
                tmp.unlink()
        except OSError:
            pass


def save_npy_atomic(volume: np.ndarray, target: Path, dtype: np.dtype | type = DTYPE) -> None:
    """``volume`` as ``dtype`` to ``target``.npy through a per-process temporary file and a rename,
    so a reader never sees a half-written file."""
    tmp = target.with_name(f"{target.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            np.save(f, np.ascontiguousarray(volume, dtype=dtype))
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()


def _convert_one(
    record: Record,
    cached: tuple[int, int, int] | None,
    cache_root: Path,
    spacing: Spacing,
    interpolation: str,
) -> tuple[tuple[int, int, int] | None, str]:
    """Runs in a worker: returns (shape, "") or (None, reason). Errors writing the cache do raise.

    ``cached``: the shape of the volume already cached from these inputs (``build_cache`` checked
    it), whose organ masks are all that is missing; ``None`` converts the volume."""
    if cached is not None:
        write_masks(record, cache_root, spacing, cached)
        return cached, ""
    signature = source_signature(record)  # before reading: a file changed meanwhile is redone later
    try:
        volume = preprocess_volume(record, spacing, interpolation)
    except BadVolumeError as error:
        return None, str(error)
    except MemoryError:
        return None, "out of memory while preprocessing"
    except Exception as error:  # a volume that breaks the pipeline must not stop the whole build
        detail = traceback.format_exc(limit=4)
        log.error("unexpected error preprocessing %s:\n%s", record.id, detail)
        return None, f"unexpected error: {type(error).__name__}: {error}"
    save_npy_atomic(volume, cache_root / volume_relpath(record.id))
    write_signature(cache_root, record.id, signature)  # after the volume: a crash between redoes it
    x, y, z = volume.shape
    if record.masks or record.ts_total is not None:  # nearest-neighbour masks beside the volume
        write_masks(record, cache_root, spacing, (x, y, z))
    return (x, y, z), ""


def _init_worker(threads: int) -> None:
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(threads)
    torch.set_num_threads(threads)
    logging.basicConfig(level=logging.WARNING)


def _convert_all(
    todo: list[tuple[Record, tuple[int, int, int] | None]],
    cache_root: Path,
    spacing: Spacing,
    interpolation: str,
    workers: int,
) -> Iterator[tuple[Record, tuple[int, int, int] | None, str]]:
    if workers <= 1 or len(todo) <= 1:
        for record, cached in todo:
            yield (record, *_convert_one(record, cached, cache_root, spacing, interpolation))
        return
    workers = min(workers, len(todo))
    threads = max(1, (os.cpu_count() or 1) // workers)
    # spawn: forking a parent that already runs torch / ITK thread pools can deadlock the children.
    pool = ProcessPoolExecutor(
        max_workers=workers,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=_init_worker,
        initargs=(threads,),
    )
    try:
        futures: dict[Future, Record] = {
            pool.submit(_convert_one, record, cached, cache_root, spacing, interpolation): record
            for record, cached in todo
        }
        for future in as_completed(list(futures)):
            record = futures[future]
            try:
                shape, reason = future.result()
            except OSError:
                raise  # the cache cannot be written (disk full, permissions): not the volume's fault
            except Exception as error:  # e.g. BrokenProcessPool when a worker is killed (out of memory)
                shape, reason = None, f"worker process failed: {type(error).__name__}: {error}"
            yield record, shape, reason
    except BaseException:
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown(wait=True)


__all__ = [
    "BadVolumeError",
    "Shard",
    "ShardOutcome",
    "ShardsIncompleteError",
    "build_cache",
    "build_cache_shard",
    "finalize_cache",
    "load_hu",
    "preprocess_volume",
    "preprocess_volume_with_affine",
    "read_quarantine",
]
