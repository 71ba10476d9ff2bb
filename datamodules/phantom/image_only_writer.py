"""Write a synthetic image-only (NLST-style) collection: chest scans as DICOM series and NIfTI files.

Layout under ``out/`` (what :mod:`datamodules.sources.image_only` reads)::

    <pid>/T<k>/<series>/0001.dcm ...       a DICOM series (CT, int16 stored, Rescale Intercept -1024)
    <pid>/T<k>/<series>.nii.gz             a NIfTI series (true header geometry)
    phantom_manifest.json                  written last: marks a complete phantom

Each patient has 1-2 screening time points ``T0``, ``T1`` (acquisitions); about a third of the
acquisitions have a second reconstruction (another in-plane matrix), of which the reader keeps one.
The first ``n_dicom`` acquisitions are written as DICOM series, the rest as NIfTI. The scans are
chests of :mod:`datamodules.phantom.scene`, without reports or labels.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from datamodules.phantom.anatomy import sample_habitus
from datamodules.phantom.geometry import Grid
from datamodules.phantom.merlin_writer import write_nifti_hu
from datamodules.phantom.scene import ChestCase, field_of_view, render, sample_chest_case
from datamodules.phantom.writing import run_jobs

MANIFEST = "phantom_manifest.json"
_S_CASE, _S_NOISE = 31, 32
_UID_ROOT = "1.2.826.0.1.3680043.8.498"


def _version() -> str:
    h = hashlib.sha256()
    for module in (
        "geometry",
        "anatomy",
        "findings",
        "scene",
        "merlin_writer",
        "image_only_writer",
        "writing",
    ):
        h.update((Path(__file__).parent / f"{module}.py").read_bytes())
    return h.hexdigest()[:16]


VERSION = _version()


@dataclass(frozen=True)
class SeriesJob:
    path: Path  # a folder for DICOM, a .nii.gz file otherwise
    case: ChestCase
    grid: Grid
    dicom: bool
    patient: str
    uid: str
    noise_seed: tuple[int, ...]


@dataclass
class ImageOnlySummary:
    root: Path
    n_patients: int
    n_acquisitions: int
    n_series: int
    n_dicom_series: int
    seed: int
    reused: bool = False


def uid(*parts: object) -> str:
    digest = int(hashlib.sha1("/".join(map(str, parts)).encode()).hexdigest()[:15], 16)
    return f"{_UID_ROOT}.{digest}"


def write_dicom_series(hu_ras: np.ndarray, grid: Grid, folder: Path, patient: str, series_uid: str) -> None:
    """Write canonical RAS+ HU on ``grid`` as an axial CT DICOM series, one file per slice.

    Stored unsigned with Rescale Intercept -1024 / Slope 1 (as scanners do); LPS geometry with
    the true spacing and Image Position of every slice. Written to a temporary folder, then renamed.
    """
    lps = np.ascontiguousarray(hu_ras[::-1, ::-1, :], dtype=np.float32)
    image = sitk.GetImageFromArray(lps.transpose(2, 1, 0))  # array (z, y, x)
    sx, sy, sz = grid.spacing
    nx, ny, nz = grid.shape
    image.SetSpacing((float(sx), float(sy), float(sz)))
    image.SetOrigin((-(nx - 1) / 2.0 * sx, -(ny - 1) / 2.0 * sy, -(nz - 1) / 2.0 * sz))
    tmp = folder.with_name(f".{folder.name}.tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    study_uid = series_uid.rsplit(".", 1)[0] + ".1"
    for k in range(nz):
        slice_k = image[:, :, k]
        position = image.TransformIndexToPhysicalPoint((0, 0, k))
        tags = {
            "0008|0060": "CT",
            "0008|0008": "ORIGINAL\\PRIMARY\\AXIAL",
            "0010|0020": patient,
            "0020|000d": study_uid,
            "0020|000e": series_uid,
            "0008|0018": f"{series_uid}.{k + 1}",
            "0020|0013": str(k + 1),
            "0020|0032": "\\".join(f"{v:.4f}" for v in position),
            "0020|0037": "1\\0\\0\\0\\1\\0",
            "0018|0050": f"{sz:.4f}",
            "0028|1052": "-1024",
            "0028|1053": "1",
            "0028|0100": "16",
            "0028|0101": "16",
            "0028|0102": "15",
            "0028|0103": "0",
        }
        for tag, value in tags.items():
            slice_k.SetMetaData(tag, value)
        writer.SetFileName(str(tmp / f"{k + 1:04d}.dcm"))
        writer.Execute(slice_k)
    if folder.exists():
        shutil.rmtree(folder)
    os.replace(tmp, folder)


def write_series(job: SeriesJob) -> None:
    hu = render(job.case, job.grid, np.random.default_rng(list(job.noise_seed))).hu
    np.clip(hu, -1024.0, 3071.0, out=hu)
    if job.dicom:
        write_dicom_series(hu, job.grid, job.path, job.patient, job.uid)
    else:
        write_nifti_hu(hu, job.grid, job.path, lps=True, offset_storage=False)


def _is_complete(out: Path, n: int, seed: int, n_dicom: int) -> dict | None:
    try:
        m = json.loads((out / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if m.get("version") != VERSION or (m.get("n"), m.get("seed"), m.get("n_dicom")) != (n, seed, n_dicom):
        return None
    return m


def write_phantom_image_only(
    out: Path, n: int, seed: int = 0, n_dicom: int = 1, workers: int = 2, progress: bool = True
) -> ImageOnlySummary:
    """Write ``n`` patients (1-2 acquisitions each) under ``out``; deterministic given ``seed``."""
    out = Path(out)
    if n < 1:
        raise ValueError("n must be >= 1")
    done = _is_complete(out, n, seed, n_dicom)
    if done is not None:
        return ImageOnlySummary(root=out, **done["summary"], seed=seed, reused=True)
    if (out / MANIFEST).exists() or out.exists():
        for child in out.iterdir() if out.exists() else []:
            if child.is_dir() and child.name.isdigit():
                shutil.rmtree(child)
        (out / MANIFEST).unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)

    rng = np.random.default_rng([seed, 0])
    jobs: list[SeriesJob] = []
    acquisitions = 0
    for p in range(n):
        patient = f"{100000 + 17 * p + seed % 17:06d}"
        habitus = sample_habitus(np.random.default_rng([seed, 1, p]))
        for t in range(1 + int(rng.random() < 0.5)):
            crng = np.random.default_rng([seed, _S_CASE, p, t])
            case = sample_chest_case(crng, habitus)
            fov_xy, fov_z = field_of_view(case)
            s_z = round(float(crng.uniform(2.5, 4.0)), 2)
            s_xy = round(float(crng.uniform(3.0, 4.0)), 3)
            recons = [s_xy] if crng.random() >= 0.35 else [s_xy, round(s_xy * 1.2, 3)]
            dicom = acquisitions < n_dicom
            acquisitions += 1
            for r, spacing in enumerate(recons, start=1):
                grid = Grid(
                    (int(round(fov_xy / spacing)),) * 2 + (int(round(fov_z / s_z)),), (spacing, spacing, s_z)
                )
                series_uid = uid(seed, p, t, r)
                name = f"{r}-{'LUNG' if r == 1 else 'STANDARD'}-{series_uid[-5:]}"
                folder = out / patient / f"T{t}"
                path = folder / name if dicom else folder / f"{name}.nii.gz"
                jobs.append(
                    SeriesJob(path, case, grid, dicom, patient, series_uid, (seed, _S_NOISE, p, t, r))
                )

    run_jobs(write_series, jobs, workers, progress, "phantom image-only", unit="series")
    summary = {
        "n_patients": n,
        "n_acquisitions": acquisitions,
        "n_series": len(jobs),
        "n_dicom_series": sum(job.dicom for job in jobs),
    }
    manifest = {"version": VERSION, "n": n, "seed": seed, "n_dicom": n_dicom, "summary": summary}
    (out / MANIFEST).write_text(json.dumps(manifest, indent=1), encoding="utf-8")
    return ImageOnlySummary(root=out, **summary, seed=seed)
