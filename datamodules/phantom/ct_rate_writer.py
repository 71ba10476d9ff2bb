"""Write a synthetic "phantom" CT-RATE dataset in the real CT-RATE on-disk layout.

Layout under ``out/`` (the role of CT-RATE's ``dataset/`` folder)::

    train_fixed/train_<pid>/train_<pid>_<scan>/train_<pid>_<scan>_<recon>.nii.gz
    valid_fixed/valid_<pid>/valid_<pid>_<scan>/valid_<pid>_<scan>_<recon>.nii.gz
    radiology_text_reports/{train_reports,validation_reports}.csv
    multi_abnormality_labels/{train,valid}_predicted_labels.csv
    metadata/{train,validation}_metadata.csv
    no_chest_train.txt, no_chest_valid.txt      (head CTs a reader must drop)
    ts_seg/ts_total/{train,valid}_fixed/...     TotalSegmentator-style label maps, one per volume
    ts_seg/ts_body/{train,valid}_fixed/...      (same relative path and voxel grid as the volume)
    finding_masks/{train,valid}_fixed/...       one uint8 label map of the drawn findings per volume
    finding_masks/labels.json                    ({value: CT-RATE label}; datamodules/finding_mask_layout.py)
    shortened_findings.json                      ({VolumeName: {"positive": [...], "negative": [...]}})
    structured_findings.json                     ({VolumeName: {CapPa section: [sentence, ...]}},
                                                  chest CTs; the truth `ctvlp annotate` must match)
    phantom_manifest.json                        (written last: marks a complete phantom)

Geometry and intensity conventions (what a correct reader must do)
-----------------------------------------------------------------
* World frame: RAS+ millimetres, nibabel convention (+x = patient Right, +y = Anterior,
  +z = Superior). The field of view is centred on the world origin.
* **Spacing is only in the metadata CSV** (``XYSpacing`` = ``"[sx, sy]"``, ``ZSpacing``). The NIfTI
  header says 1.0 mm isotropic, which is wrong.
* The header affine's **direction signs are right**: either ``diag(+1, +1, +1)`` (RAS storage) or
  ``diag(-1, -1, +1)`` (LPS storage: array index i grows towards patient Left, j towards
  Posterior). Its translation is the true world position of voxel (0, 0, 0) computed with the
  true spacing, so the true affine is the header affine with each of the three direction columns
  rescaled to the CSV spacing: ``A[:3, :3] = sign(A[:3, :3]) * diag(sx, sy, sz)``. Equivalently,
  stored voxel (i, j, k) of an array of shape (nx, ny, nz) lies at world
  ``(dx * (i - (nx-1)/2) * sx, dy * (j - (ny-1)/2) * sy, (k - (nz-1)/2) * sz)`` with
  ``(dx, dy) = (+1, +1)`` for RAS and ``(-1, -1)`` for LPS storage.
* **Intensities are raw int16**: ``HU = raw * RescaleSlope + RescaleIntercept`` with both from the
  metadata CSV (intercept -1024, -1000 or 0; slope 1, 0.5 or 2). The header's scl_slope/scl_inter
  are unset (nibabel reports slope 1, intercept 0).
* Reconstructions ``_1``/``_2`` of one scan share anatomy, labels and report but differ in
  in-plane matrix (``Rows``/``Columns``); which one is the smaller varies. Keep the smallest.
* Volumes listed in ``no_chest_*.txt`` are head CTs (all labels 0) and must be excluded.
* A few validation scans repeat an earlier validation scan's case and Findings word for word (as
  real CT-RATE has identical Findings): the retrieval protocol keeps one of each.
* Splits are by patient; ~15 % of patients have two scans (``a``, ``b``).
* Organ masks come as CT-RATE ships its TotalSegmentator outputs (``datamodules/totalseg.py``):
  ``ts_seg/ts_total/`` holds one uint8 label map per volume with TotalSegmentator v2 ids (lung lobes
  10-14, heart 51, aorta 52, vertebrae 27-43 by 26 mm level), ``ts_seg/ts_body/`` the body outline
  (1 = body_trunc; TotalSegmentator's ``body`` task, which CT-RATE itself does not ship). Each map
  is stored exactly like its volume: same array orientation (RAS or LPS) and the same lying header.
* Finding masks (``finding_masks/``, stored like the volume and the organ maps): value
  ``FINDING_LABEL_VALUES[label]`` where that finding was painted last (what the voxels show), for
  every drawn label with a spatial extent, Pericardial effusion included; Cardiomegaly (a heart
  size) has none. Head CTs get an empty map.
* Metadata columns are strings where CT-RATE's are: ``PatientAge`` is DICOM-style (``"057Y"``),
  ``ImagePositionPatient`` etc. are list strings. Don't derive geometry from them.

Determinism: every random stream is seeded from ``(seed, stream id, index)``, so the output is
byte-identical for a given seed whatever ``workers`` is. Volumes are rendered in ``workers``
spawned processes (call from under ``if __name__ == "__main__":`` in scripts).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from datamodules.finding_mask_layout import (
    FINDING_MASKS_DIR,
    finding_label_map,
    write_label_names,
)
from datamodules.labels import CT_RATE_LABELS
from datamodules.phantom.anatomy import Habitus, sample_habitus
from datamodules.phantom.findings import DRAWN_LABELS
from datamodules.phantom.geometry import Grid
from datamodules.phantom.reports import Report, chest_report, head_report
from datamodules.phantom.scene import (
    Case,
    ChestCase,
    field_of_view,
    render,
    sample_chest_case,
    sample_head_case,
)
from datamodules.phantom.writing import clear_owned, run_jobs, save_nifti
from datamodules.sources.ct_rate import SPLIT_LAYOUTS
from datamodules.totalseg import (
    AORTA,
    BODY_TRUNC,
    HEART,
    LUNG_LOBES,
    TS_BODY,
    TS_SEG_DIR,
    TS_TOTAL,
    VERTEBRAE,
)

MANIFEST = "phantom_manifest.json"


def _generator_version() -> str:
    """Hash of the phantom generator's source: a cached phantom made by other code is rewritten."""
    h = hashlib.sha256()
    for module in ("geometry", "anatomy", "findings", "scene", "reports", "ct_rate_writer", "writing"):
        h.update((Path(__file__).parent / f"{module}.py").read_bytes())
    return h.hexdigest()[:16]


VERSION = _generator_version()
REPORT_COLUMNS = ["VolumeName", "ClinicalInformation_EN", "Technique_EN", "Findings_EN", "Impressions_EN"]
LABEL_COLUMNS = ["VolumeName", *CT_RATE_LABELS]
METADATA_COLUMNS = [
    "VolumeName",
    "Manufacturer",
    "SeriesDescription",
    "ManufacturerModelName",
    "PatientSex",
    "PatientAge",
    "ReconstructionDiameter",
    "DistanceSourceToDetector",
    "DistanceSourceToPatient",
    "GantryDetectorTilt",
    "TableHeight",
    "RotationDirection",
    "ExposureTime",
    "XRayTubeCurrent",
    "Exposure",
    "FilterType",
    "GeneratorPower",
    "FocalSpots",
    "ConvolutionKernel",
    "PatientPosition",
    "RevolutionTime",
    "SingleCollimationWidth",
    "TotalCollimationWidth",
    "TableSpeed",
    "TableFeedPerRotation",
    "SpiralPitchFactor",
    "DataCollectionCenterPatient",
    "ReconstructionTargetCenterPatient",
    "ExposureModulationType",
    "CTDIvol",
    "ImagePositionPatient",
    "ImageOrientationPatient",
    "SliceThickness",
    "SamplesPerPixel",
    "PhotometricInterpretation",
    "Rows",
    "Columns",
    "XYSpacing",
    "RescaleIntercept",
    "RescaleSlope",
    "RescaleType",
    "NumberofSlices",
    "ZSpacing",
    "StudyDate",
]
_OWNED = [
    "train_fixed",
    "valid_fixed",
    "radiology_text_reports",
    "multi_abnormality_labels",
    "metadata",
    "no_chest_train.txt",
    "no_chest_valid.txt",
    "shortened_findings.json",
    "structured_findings.json",
    TS_SEG_DIR,
    FINDING_MASKS_DIR,
    MANIFEST,
]
# The drawn labels that have voxels of their own (Cardiomegaly only enlarges the heart).
MASKED_LABELS = [label for label in DRAWN_LABELS if label != "Cardiomegaly"]
_SCANNERS = [
    ("SIEMENS", "SOMATOM Definition Edge", ["Br40d", "Bl57d", "I70f"]),
    ("PHILIPS", "Ingenuity CT", ["B", "YA", "L"]),
    ("GE MEDICAL SYSTEMS", "Revolution EVO", ["STANDARD", "LUNG", "BONE"]),
    ("TOSHIBA", "Aquilion ONE", ["FC08", "FC52", "FC86"]),
]
_N_NO_CHEST = {"train": 2, "valid": 2}
# Validation patients whose one scan repeats an earlier validation scan's case (anatomy, findings,
# labels) and Findings text word for word: the identical Findings the retrieval protocol
# de-duplicates (real CT-RATE: 1,551 -> 1,493 pairs). Fewer when there are not enough patients.
_N_DUPLICATE_FINDINGS = {"train": 0, "valid": 2}
# Stream ids mixed into the per-item seeds, so every random stream is independent.
_S_PATIENT, _S_CASE, _S_RECON, _S_NOISE, _S_REPORT, _S_META = 1, 2, 3, 4, 5, 6


@dataclass
class PhantomSummary:
    """What was written. Counts include the extra head CTs where named so."""

    root: Path
    n_scans: int  # chest acquisitions (= n)
    n_volumes: int  # NIfTI files, all reconstructions and the head CTs included (= CSV rows)
    n_patients: int  # patients, head-CT patients included
    n_no_chest: int = 0  # head CT volumes (listed in no_chest_*.txt)
    n_duplicate_findings: int = 0  # chest scans whose Findings repeat an earlier scan's (same split)
    n_train_volumes: int = 0
    n_valid_volumes: int = 0
    seed: int = 0
    reused: bool = False  # True when a complete phantom with the same (n, seed) was found


@dataclass(frozen=True)
class VolumeJob:
    """Everything a worker needs to write one NIfTI file."""

    path: Path
    case: Case
    grid: Grid
    lps: bool
    slope: float
    intercept: float
    noise_seed: tuple[int, ...]
    # TotalSegmentator task folder -> where this volume's label map goes (ts_seg/<task>/<same path>).
    seg_paths: tuple[tuple[str, Path], ...] = ()
    # Where this volume's finding label map goes (finding_masks/<same path>); None: not written.
    finding_mask_path: Path | None = None


@dataclass
class _Scan:
    split: str
    pid: int
    letter: str
    index: int  # global scan index (seeds)
    case: Case
    report: Report
    patient_meta: dict[str, object]
    volumes: list[tuple[str, VolumeJob, dict[str, object]]] = field(default_factory=list)

    @property
    def head(self) -> bool:
        return not isinstance(self.case, ChestCase)


def _rng(seed: int, *key: int) -> np.random.Generator:
    return np.random.default_rng([seed, *key])


def header_affine(grid: Grid, lps: bool) -> np.ndarray:
    """The (lying) header affine: 1 mm zooms, true direction signs, true origin."""
    d = np.array([-1.0, -1.0, 1.0]) if lps else np.ones(3)
    centre = (np.array(grid.shape, dtype=float) - 1.0) / 2.0
    aff = np.eye(4)
    aff[:3, :3] = np.diag(d)
    aff[:3, 3] = -d * centre * np.array(grid.spacing)
    return aff


def totalseg_label_maps(masks: dict[str, np.ndarray], grid: Grid) -> dict[str, np.ndarray]:
    """The phantom's organ masks as TotalSegmentator label maps (uint8, canonical RAS order).

    ``ts_total``: lung lobes (left lung split at its mid height, right lung in thirds), then heart,
    aorta and vertebrae (26 mm levels from T1 at the top of the field of view down to L5) painted
    over them in that order. ``ts_body``: the body outline as body_trunc.
    """
    x, _, z = grid.axes()
    total = np.zeros(grid.shape, dtype=np.uint8)
    lungs = masks.get("lungs")
    if lungs is not None and lungs.any():
        for left, lobes in (
            (True, ("lung_lower_lobe_left", "lung_upper_lobe_left")),
            (False, ("lung_lower_lobe_right", "lung_middle_lobe_right", "lung_upper_lobe_right")),
        ):
            side = lungs & ((x < 0) if left else (x >= 0))[:, None, None]
            slices = np.flatnonzero(side.any(axis=(0, 1)))
            if slices.size == 0:
                continue
            z_lo, z_hi = float(z[slices[0]]), float(z[slices[-1]])
            level = np.floor((z - z_lo) / max(z_hi - z_lo, 1e-3) * len(lobes)).clip(0, len(lobes) - 1)
            ids = np.array([LUNG_LOBES[name] for name in lobes], dtype=np.uint8)[level.astype(int)]
            total = np.where(side, ids[None, None, :], total)
    if "heart" in masks:
        total[masks["heart"]] = HEART
    if "aorta" in masks:
        total[masks["aorta"]] = AORTA
    if "spine" in masks:
        top = VERTEBRAE["vertebrae_T1"]
        index = np.floor((float(z[-1]) - z) / 26.0).astype(int)
        ids = np.maximum(top - index, VERTEBRAE["vertebrae_L5"]).astype(np.uint8)
        total = np.where(masks["spine"], ids[None, None, :], total)
    body = np.zeros(grid.shape, dtype=np.uint8)
    if "body" in masks:
        body[masks["body"]] = BODY_TRUNC
    return {TS_TOTAL: total, TS_BODY: body}


def write_volume(job: VolumeJob) -> None:
    """Render and write one volume with the CT-RATE quirks (raw int16, wrong zooms, LPS/RAS), and
    its TotalSegmentator-style label maps and finding label map stored the same way."""
    rendered = render(job.case, job.grid, np.random.default_rng(list(job.noise_seed)))
    raw = np.rint((rendered.hu - np.float32(job.intercept)) / np.float32(job.slope))
    raw = np.clip(raw, -32768, 32767).astype(np.int16)
    aff = header_affine(job.grid, job.lps)
    label_maps = totalseg_label_maps(rendered.masks, job.grid) if job.seg_paths else {}
    for task, path in job.seg_paths:
        label_map = label_maps[task]
        save_nifti(label_map[::-1, ::-1, :] if job.lps else label_map, path, aff)
    if job.finding_mask_path is not None:
        findings = finding_label_map(rendered.findings, job.grid.shape)
        save_nifti(findings[::-1, ::-1, :] if job.lps else findings, job.finding_mask_path, aff)
    save_nifti(raw[::-1, ::-1, :] if job.lps else raw, job.path, aff)


def _read_manifest(out: Path) -> dict | None:
    try:
        return json.loads((out / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _is_complete(out: Path, n: int, seed: int) -> dict | None:
    m = _read_manifest(out)
    if not m or m.get("version") != VERSION or m.get("n") != n or m.get("seed") != seed:
        return None
    n_files = sum(1 for _ in out.glob("*_fixed/*/*/*.nii.gz"))
    return m if n_files == m.get("n_volumes") else None


def _plan_patients(n: int, rng: np.random.Generator) -> dict[str, list[int | None]]:
    """Scans per patient (None = a head-CT patient), grouped by split, in pid order."""
    counts: list[int] = []
    left = n
    while left > 0:
        k = 2 if left >= 2 and rng.random() < 0.15 else 1
        counts.append(k)
        left -= k
    order = rng.permutation(len(counts))
    n_valid = max(1, int(round(0.2 * len(counts)))) if len(counts) > 1 else 0
    valid_ids = set(order[:n_valid].tolist())
    split: dict[str, list[int | None]] = {"train": [], "valid": []}
    for i, k in enumerate(counts):
        split["valid" if i in valid_ids else "train"].append(k)
    for name, items in split.items():
        items.extend([None] * _N_NO_CHEST[name])
        split[name] = [items[j] for j in rng.permutation(len(items))]
    return split


def _patient_meta(rng: np.random.Generator) -> dict[str, object]:
    return {"PatientSex": "M" if rng.random() < 0.55 else "F", "age": int(rng.integers(25, 86))}


def _grids(case: Case, rng: np.random.Generator, n_recons: int) -> list[Grid]:
    """One grid per reconstruction: same FOV and slices, different in-plane matrix."""
    fov_xy, fov_z = field_of_view(case)
    sz = round(float(rng.uniform(3.0, 5.0)), 2)
    nz = int(round(fov_z / sz))
    s1 = round(float(rng.uniform(2.8, 4.0)), 4)
    spacings = [s1]
    if n_recons == 2:
        s2 = round(s1 * float(rng.uniform(1.12, 1.3)), 4)
        spacings = [s1, s2] if rng.random() < 0.5 else [s2, s1]
    return [Grid((int(round(fov_xy / s)), int(round(fov_xy / s)), nz), (s, s, sz)) for s in spacings]


def _metadata(name: str, scan: _Scan, job: VolumeJob, rng: np.random.Generator) -> dict[str, object]:
    maker, model, kernels = _SCANNERS[int(rng.integers(len(_SCANNERS)))]
    nx, ny, nz = job.grid.shape
    sx, sy, sz = job.grid.spacing
    ma = int(rng.integers(80, 400))
    rot = 0.5
    coll = 0.625 if maker == "GE MEDICAL SYSTEMS" else 0.6
    pitch = round(float(rng.uniform(0.8, 1.5)), 3)
    total = round(coll * 64, 1)
    first = [round(-(nx - 1) / 2 * sx, 3), round(-(ny - 1) / 2 * sy, 3), round(-(nz - 1) / 2 * sz, 3)]
    age = int(scan.patient_meta["age"]) + (1 if scan.letter == "b" else 0)
    return {
        "VolumeName": name,
        "Manufacturer": maker,
        "SeriesDescription": "HEAD" if scan.head else _pick_str(rng, ["THORAX", "CHEST", "TORAKS"]),
        "ManufacturerModelName": model,
        "PatientSex": scan.patient_meta["PatientSex"],
        "PatientAge": f"{age:03d}Y",
        "ReconstructionDiameter": round(nx * sx, 1),
        "DistanceSourceToDetector": 1085.6,
        "DistanceSourceToPatient": 595.0,
        "GantryDetectorTilt": 0.0,
        "TableHeight": round(float(rng.uniform(120.0, 200.0)), 1),
        "RotationDirection": "CW",
        "ExposureTime": int(rot * 1000),
        "XRayTubeCurrent": ma,
        "Exposure": int(ma * rot),
        "FilterType": "FLAT",
        "GeneratorPower": int(ma * 120 / 1000),
        "FocalSpots": "[1.2, 1.2]",
        "ConvolutionKernel": _pick_str(rng, kernels),
        "PatientPosition": "HFS",
        "RevolutionTime": rot,
        "SingleCollimationWidth": coll,
        "TotalCollimationWidth": total,
        "TableSpeed": round(total * pitch / rot, 2),
        "TableFeedPerRotation": round(total * pitch, 2),
        "SpiralPitchFactor": pitch,
        "DataCollectionCenterPatient": "[0.0, 0.0, 0.0]",
        "ReconstructionTargetCenterPatient": "[0.0, 0.0, 0.0]",
        "ExposureModulationType": "XYZ_EC",
        "CTDIvol": round(float(rng.uniform(3.0, 15.0)), 2),
        "ImagePositionPatient": str(first),
        "ImageOrientationPatient": "[1, 0, 0, 0, 1, 0]",
        "SliceThickness": sz,
        "SamplesPerPixel": 1,
        "PhotometricInterpretation": "MONOCHROME2",
        "Rows": ny,
        "Columns": nx,
        "XYSpacing": f"[{sx}, {sy}]",
        "RescaleIntercept": job.intercept,
        "RescaleSlope": job.slope,
        "RescaleType": "HU",
        "NumberofSlices": nz,
        "ZSpacing": sz,
        "StudyDate": 20200101 + int(rng.integers(0, 1100)),
    }


def _pick_str(rng: np.random.Generator, options: list[str]) -> str:
    return options[int(rng.integers(len(options)))]


def _duplicate_sources(split: str, patients: list[int | None]) -> dict[int, int]:
    """Target pid -> source pid of the split's duplicated cases: the last single-scan chest patients
    repeat the first ones (sources come first, so their case exists when the target is planned)."""
    singles = [pid for pid, k in enumerate(patients, start=1) if k == 1]
    count = min(_N_DUPLICATE_FINDINGS[split], len(singles) // 2)
    return dict(zip(singles[len(singles) - count :], singles[:count], strict=True)) if count else {}


def _plan(out: Path, n: int, seed: int) -> list[_Scan]:
    rng = _rng(seed, 0)
    scans: list[_Scan] = []
    patient_index = 0
    for split, patients in _plan_patients(n, rng).items():
        duplicates = _duplicate_sources(split, patients)
        first_scan: dict[int, _Scan] = {}
        for pid, n_scans in enumerate(patients, start=1):
            prng = _rng(seed, _S_PATIENT, patient_index)
            patient_index += 1
            habitus: Habitus = sample_habitus(prng)
            meta = _patient_meta(prng)
            for s in range(n_scans or 1):
                idx = len(scans)
                crng = _rng(seed, _S_CASE, idx)
                case: Case = sample_head_case(crng) if n_scans is None else sample_chest_case(crng, habitus)
                source = first_scan.get(duplicates.get(pid, -1))
                if source is not None:  # drawn above all the same: the other streams stay as they were
                    case = source.case
                n_recons = 1 if n_scans is None or crng.random() >= 0.2 else 2
                grids = _grids(case, crng, n_recons)
                # A duplicate's report draws from its source's stream: the same Findings word for word
                # (the slice thickness only enters the technique line).
                rrng = _rng(seed, _S_REPORT, idx if source is None else source.index)
                if isinstance(case, ChestCase):
                    report = chest_report(case.findings, case.anatomy.contrast, grids[0].spacing[2], rrng)
                else:
                    report = head_report(rrng)
                letter = "ab"[s]
                scan = _Scan(split, pid, letter, idx, case, report, meta)
                for r, grid in enumerate(grids, start=1):
                    vrng = _rng(seed, _S_RECON, idx, r)
                    name = f"{split}_{pid}_{letter}_{r}.nii.gz"
                    relative = Path(f"{split}_fixed") / f"{split}_{pid}" / f"{split}_{pid}_{letter}" / name
                    path = out / relative
                    job = VolumeJob(
                        path=path,
                        case=case,
                        grid=grid,
                        lps=bool(vrng.random() < 0.5),
                        intercept=float(vrng.choice([-1024.0, -1000.0, 0.0], p=[0.5, 0.25, 0.25])),
                        slope=float(vrng.choice([1.0, 0.5, 2.0], p=[0.8, 0.1, 0.1])),
                        noise_seed=(seed, _S_NOISE, idx, r),
                        seg_paths=tuple(
                            (task, out / TS_SEG_DIR / task / relative) for task in (TS_TOTAL, TS_BODY)
                        ),
                        finding_mask_path=out / FINDING_MASKS_DIR / relative,
                    )
                    scan.volumes.append((name, job, _metadata(name, scan, job, _rng(seed, _S_META, idx, r))))
                scans.append(scan)
                first_scan.setdefault(pid, scan)
    return scans


def _write_tables(out: Path, scans: list[_Scan]) -> None:
    # The table locations are the ones the CT-RATE source reads: one declaration of the layout.
    for layout in SPLIT_LAYOUTS:
        reports, labels, metas, heads = [], [], [], []
        for scan in (s for s in scans if s.split == layout.prefix):
            present = scan.case.labels
            for name, _, meta in scan.volumes:
                r = scan.report
                reports.append([name, r.clinical, r.technique, r.findings, r.impressions])
                labels.append([name, *(int(lab in present) for lab in CT_RATE_LABELS)])
                metas.append(meta)
                if scan.head:
                    heads.append(name)
        for table, frame in (
            (layout.reports, pd.DataFrame(reports, columns=REPORT_COLUMNS)),
            (layout.labels, pd.DataFrame(labels, columns=LABEL_COLUMNS)),
            (layout.metadata, pd.DataFrame(metas, columns=METADATA_COLUMNS)),
        ):
            (out / table).parent.mkdir(parents=True, exist_ok=True)
            frame.to_csv(out / table, index=False)
        (out / layout.no_chest).write_text("".join(f"{h}\n" for h in heads), encoding="utf-8")
    short = {
        name: {"positive": s.report.positive, "negative": s.report.negative}
        for s in scans
        for name, _, _ in s.volumes
    }
    (out / "shortened_findings.json").write_text(json.dumps(short, indent=1), encoding="utf-8")
    sections = {name: s.report.sections for s in scans if not s.head for name, _, _ in s.volumes}
    (out / "structured_findings.json").write_text(json.dumps(sections, indent=1), encoding="utf-8")


def write_phantom_ct_rate(
    out: Path, n: int, seed: int = 0, workers: int = 2, progress: bool = True
) -> PhantomSummary:
    """Write ``n`` phantom chest scans (+ reconstructions + a few head CTs) under ``out``.

    Deterministic given ``seed``. Skips all work when ``out`` already holds a complete phantom
    with the same ``(n, seed)``; otherwise removes the phantom's own files there and rewrites them.
    """
    out = Path(out)
    if n < 1:
        raise ValueError("n must be >= 1")
    done = _is_complete(out, n, seed)
    if done is not None:
        return PhantomSummary(root=out, **done["summary"], seed=seed, reused=True)
    clear_owned(out, _OWNED)

    scans = _plan(out, n, seed)
    jobs = [job for scan in scans for _, job, _ in scan.volumes]
    run_jobs(write_volume, jobs, workers, progress, "phantom CT-RATE", chunksize=4)
    _write_tables(out, scans)
    write_label_names(out, MASKED_LABELS)

    n_train = sum(len(s.volumes) for s in scans if s.split == "train")
    chest = [s for s in scans if not s.head]
    summary = {
        "n_scans": sum(1 for s in scans if not s.head),
        "n_volumes": len(jobs),
        "n_patients": len({(s.split, s.pid) for s in scans}),
        "n_no_chest": sum(len(s.volumes) for s in scans if s.head),
        "n_duplicate_findings": len(chest) - len({(s.split, s.report.findings) for s in chest}),
        "n_train_volumes": n_train,
        "n_valid_volumes": len(jobs) - n_train,
    }
    counts = {lab: sum(int(lab in s.case.labels) for s in scans) for lab in CT_RATE_LABELS}
    manifest = {
        "version": VERSION,
        "n": n,
        "seed": seed,
        "n_volumes": len(jobs),
        "summary": summary,
        "label_counts_per_scan": counts,
    }
    (out / MANIFEST).write_text(json.dumps(manifest, indent=1), encoding="utf-8")
    return PhantomSummary(root=out, **summary, seed=seed)
