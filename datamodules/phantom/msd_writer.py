"""Write a synthetic segmentation dataset in the nnU-Net raw / Medical Segmentation Decathlon layout.

Layout under ``out/`` (what :mod:`datamodules.sources.msd` reads, and what ``nnUNetv2_plan_and_
preprocess`` accepts)::

    dataset.json                      nnU-Net v2: channel_names {"0": "CT"}, labels name -> int,
                                      numTraining, file_ending ".nii.gz"
    imagesTr/<task>_<NNN>_0000.nii.gz int16 HU, true header geometry (stored LPS, as scanners do)
    labelsTr/<task>_<NNN>.nii.gz      uint8 label map with the image's header
    phantom_manifest.json             written last: marks a complete phantom

Two tasks:

* ``liver`` (MSD Task03-like): the abdomen of :mod:`datamodules.phantom.abdomen`; labels
  {background 0, liver 1, lesion 2}; 1-3 hypodense lesions (radius 7-14 mm, 40 HU below the liver)
  inside the liver. Liver = the liver ellipsoid where the rendered scan still shows liver (organs
  painted over it are not liver).
* ``lung`` (MSD Task06-like): the chest of :mod:`datamodules.phantom.scene` with 1-3 forced lung
  nodules (:mod:`datamodules.phantom.findings`); labels {background 0, lung 1, lesion 2}. Lung = the
  scene's ``lungs`` mask, lesion = the nodules where they were painted.

The volumes are rendered without noise, the labels read off that clean rendering, then Gaussian
noise (12 HU) is added. Voxel sizes as the Merlin phantom's (3.2-4.2 mm in-plane, 3-5 mm slices):
small volumes, lesions still several voxels wide. Deterministic given the seed.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from datamodules.phantom.abdomen import (
    LIVER,
    STEATOTIC_LIVER,
    AbdomenCase,
    render_abdomen,
    sample_abdomen_case,
)
from datamodules.phantom.anatomy import sample_anatomy, sample_habitus
from datamodules.phantom.findings import NODULE_HU, heart_geometry, place_findings, sample_presence
from datamodules.phantom.geometry import Canvas, Ellipsoid, Grid, Shape, sphere
from datamodules.phantom.merlin_writer import true_affine
from datamodules.phantom.scene import ChestCase, field_of_view, render
from datamodules.phantom.writing import clear_owned, run_jobs, save_nifti

MANIFEST = "phantom_manifest.json"
TASKS = ("liver", "lung")
LABELS = {
    "liver": {"background": 0, "liver": 1, "lesion": 2},
    "lung": {"background": 0, "lung": 1, "lesion": 2},
}
NOISE_HU = 12.0
LESION_CONTRAST = -40.0  # HU relative to the liver
_S_CASE, _S_GRID, _S_NOISE = 41, 42, 43


def _version() -> str:
    h = hashlib.sha256()
    for module in (
        "geometry",
        "anatomy",
        "findings",
        "scene",
        "abdomen",
        "merlin_writer",
        "writing",
        "msd_writer",
    ):
        h.update((Path(__file__).parent / f"{module}.py").read_bytes())
    return h.hexdigest()[:16]


VERSION = _version()


@dataclass(frozen=True)
class CaseJob:
    case_id: str
    root: Path
    case: AbdomenCase | ChestCase
    lesions: tuple[Shape, ...]  # liver: the lesion spheres; lung: the nodules of the case
    grid: Grid
    noise_seed: tuple[int, ...]


@dataclass
class MsdSummary:
    root: Path
    task: str
    n_cases: int
    labels: dict[str, int]
    seed: int
    reused: bool = False


def liver_lesions(case: AbdomenCase, rng: np.random.Generator) -> list[Ellipsoid]:
    """1-3 spheres well inside the liver (rejection-sampled; overlap allowed)."""
    lesions: list[Ellipsoid] = []
    c, s = case.liver.center, case.liver.semi
    for _ in range(int(rng.integers(1, 4))):
        radius = float(rng.uniform(7.0, 14.0))
        for _ in range(200):
            p = tuple(float(c[i] + rng.uniform(-s[i], s[i])) for i in range(3))
            if case.liver.contains(p, margin=radius + 6.0):  # type: ignore[arg-type]
                lesions.append(sphere(p, radius))  # type: ignore[arg-type]
                break
    return lesions


def render_liver(job: CaseJob) -> tuple[np.ndarray, np.ndarray]:
    case = job.case
    assert isinstance(case, AbdomenCase)
    clean = render_abdomen(case, job.grid, np.random.default_rng(0), noise_hu=0.0)
    liver_hu = STEATOTIC_LIVER if "hepatic_steatosis" in case.findings else LIVER
    canvas = Canvas(job.grid, background=0.0)
    labels = np.zeros(job.grid.shape, dtype=np.uint8)
    region = case.liver.region(canvas)
    if region is not None:
        sl, m = region
        labels[sl][m & (clean[sl] == np.float32(liver_hu))] = 1
    for lesion in job.lesions:
        region = lesion.region(canvas)
        if region is None:
            continue
        sl, m = region
        m = m & (labels[sl] > 0)
        labels[sl][m] = 2
        clean[sl][m] = np.float32(liver_hu + LESION_CONTRAST)
    return clean, labels


def sample_lung_case(rng: np.random.Generator) -> ChestCase:
    """A chest case with at least one lung nodule (the presence of the others as the scene's)."""
    habitus = sample_habitus(rng)
    for _ in range(20):  # until a nodule could be placed
        want = sample_presence(rng)
        want["Lung nodule"] = {
            "count": int(rng.integers(1, 4)),
            "side": "bilateral" if rng.random() < 0.3 else ("right" if rng.random() < 0.5 else "left"),
            "zone": "upper" if rng.random() < 0.5 else "lower",
            "size": "large" if rng.random() < 0.5 else "small",
        }
        scale, peri = heart_geometry(want)
        anatomy = sample_anatomy(rng, habitus, heart_scale=scale, pericardium_mm=peri)
        findings = place_findings(rng, anatomy, want)
        nodules = [f for f in findings if f.label == "Lung nodule"]
        if nodules:
            break
    return ChestCase(anatomy, findings)


def render_lung(job: CaseJob) -> tuple[np.ndarray, np.ndarray]:
    assert isinstance(job.case, ChestCase)
    rendered = render(job.case, job.grid, np.random.default_rng(0), noise_hu=0.0)
    clean, lungs = rendered.hu, rendered.masks["lungs"]
    canvas = Canvas(job.grid, background=0.0)
    labels = lungs.astype(np.uint8)
    for nodule in job.lesions:
        region = nodule.region(canvas)
        if region is None:
            continue
        sl, m = region
        labels[sl][m & lungs[sl] & (clean[sl] == np.float32(NODULE_HU))] = 2
    return clean, labels


def write_case(job: CaseJob) -> None:
    clean, labels = (render_liver if isinstance(job.case, AbdomenCase) else render_lung)(job)
    noise = np.random.default_rng(list(job.noise_seed)).standard_normal(clean.shape, dtype=np.float32)
    hu = np.clip(clean + noise * np.float32(NOISE_HU), -1024.0, 3071.0)
    affine = true_affine(job.grid, lps=True)  # stored LPS: the arrays flip x and y
    raw = np.rint(hu[::-1, ::-1, :]).astype(np.int16)
    save_nifti(raw, job.root / "imagesTr" / f"{job.case_id}_0000.nii.gz", affine, (1.0, 0.0))
    save_nifti(
        labels[::-1, ::-1, :].astype(np.uint8), job.root / "labelsTr" / f"{job.case_id}.nii.gz", affine
    )


def dataset_json(task: str, n: int) -> dict:
    return {
        "name": f"Phantom{task.capitalize()}",
        "description": f"ctvlp synthetic {task} lesion phantom (MSD / nnU-Net v2 layout)",
        "reference": "ctvlp datamodules/phantom/msd_writer.py",
        "licence": "CC0 (synthetic)",
        "tensorImageSize": "3D",
        "channel_names": {"0": "CT"},
        "labels": LABELS[task],
        "numTraining": n,
        "file_ending": ".nii.gz",
    }


def _is_complete(out: Path, task: str, n: int, seed: int) -> bool:
    try:
        m = json.loads((out / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return (m.get("version"), m.get("task"), m.get("n"), m.get("seed")) == (VERSION, task, n, seed)


def write_phantom_msd(
    out: Path, n: int, task: str = "liver", seed: int = 0, workers: int = 2, progress: bool = True
) -> MsdSummary:
    """Write ``n`` cases of ``task`` (``liver`` or ``lung``) under ``out``; a complete phantom with the
    same parameters is reused."""
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, not {task!r}")
    if n < 1:
        raise ValueError("n must be >= 1")
    out = Path(out)
    if _is_complete(out, task, n, seed):
        return MsdSummary(out, task, n, dict(LABELS[task]), seed, reused=True)
    (out / MANIFEST).unlink(missing_ok=True)
    clear_owned(out, ("imagesTr", "labelsTr", "dataset.json"))
    jobs = []
    for i in range(n):
        rng = np.random.default_rng([seed, _S_CASE, i])
        case: AbdomenCase | ChestCase
        if task == "liver":
            case = sample_abdomen_case(rng)
            lesions: tuple[Shape, ...] = tuple(liver_lesions(case, rng))
            fov_xy, fov_z = case.fov_xy, case.fov_z
        else:
            case = sample_lung_case(rng)
            lesions = tuple(p.shape for f in case.findings if f.label == "Lung nodule" for p in f.parts)
            fov_xy, fov_z = field_of_view(case)
        grng = np.random.default_rng([seed, _S_GRID, i])
        s_xy, s_z = round(float(grng.uniform(3.2, 4.2)), 3), round(float(grng.uniform(3.0, 5.0)), 2)
        nxy = int(round(fov_xy / s_xy))
        grid = Grid((nxy, nxy, int(round(fov_z / s_z))), (s_xy, s_xy, s_z))
        jobs.append(CaseJob(f"{task}_{i:03d}", out, case, lesions, grid, (seed, _S_NOISE, i)))
    run_jobs(write_case, jobs, workers, progress, f"phantom msd {task}", unit="case")
    (out / "dataset.json").write_text(json.dumps(dataset_json(task, n), indent=1) + "\n", encoding="utf-8")
    manifest = {"version": VERSION, "task": task, "n": n, "seed": seed}
    (out / MANIFEST).write_text(json.dumps(manifest, indent=1), encoding="utf-8")
    return MsdSummary(out, task, n, dict(LABELS[task]), seed)
