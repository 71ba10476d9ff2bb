"""Write a synthetic "phantom" INSPECT (CT pulmonary angiograms) in the real INSPECT layout.

Layout under ``out/`` (what :mod:`datamodules.sources.inspect` reads)::

    CTPA/<impression_id>.nii.gz      one CTPA per study: int16 NIfTI with its true header
    Final_impressions.csv            impression_id, impressions
    labels_20250611.tsv              impression_id, pe_positive_nlp + the 7 outcomes (True / False / Censored)
    splits_20250611.tsv              impression_id, split (train / valid / test, one per patient)
    study_mapping_20250611.tsv       impression_id, person_id (a few patients have two studies)
    phantom_manifest.json            written last: marks a complete phantom; what each study shows

**The image.** Each study is the chest of :mod:`datamodules.phantom.scene` (the CT-RATE phantom's
scene, with its findings) as a CTPA: contrast-bright blood, brightest in the pulmonary arteries
(trunk, main, upper and lower lobe arteries, 280-350 HU). A pulmonary embolism is a 20-40 HU
filling defect inside one to three of the main or lower lobe arteries; the impression names where
("Acute pulmonary embolism in the right lower lobe pulmonary artery." / "No pulmonary embolism.").
Pulmonary hypertension shows as an enlarged trunk (33-38 mm instead of 24-29 mm), stated in the
impression; it is likelier with cardiomegaly.

**The outcomes** follow from what the image shows: each study draws a time to death, readmission
and pulmonary hypertension (Weibull, months) whose hazard rises with the visible risk (central or
multiple emboli, pleural effusion, cardiomegaly, an enlarged trunk; readmission only weakly), and a
follow-up that ends early for a quarter of the studies. A horizon is True when the event came first,
False when the follow-up outlasted it, else Censored (more often at 12 months; death censors
readmission and pulmonary hypertension).

**Headers** are true (RAS or LPS storage, half of them HU + 1024 with ``scl_inter = -1024``), as in
:mod:`datamodules.phantom.merlin_writer`. ``scale`` shrinks the chest as RAD-ChestCT's phantom does:
it is drawn at ``spacing / scale`` and stored at ``spacing`` (3.6-4.2 mm in-plane, 3.5-5 mm slices),
so a volume is ~90 x 90 x 75 voxels at ``scale=1`` and tests use ``scale`` ~0.5.

**Bad scans** (``bad_cases``, default 2 when ``n >= 10``): one training study with a corrupted
affine (two equal axis columns: a singular direction matrix) and one stored with two channels, the
two kinds of scan the Uniferum paper dropped; ``ctvlp preprocess`` quarantines them. Their ids are
in the manifest's ``bad_cases``.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from datamodules.labels import INSPECT_LABELS
from datamodules.phantom.anatomy import ChestAnatomy, Habitus, sample_habitus
from datamodules.phantom.findings import Finding, Part
from datamodules.phantom.geometry import Capsule, Grid, Vec3
from datamodules.phantom.merlin_writer import true_affine, write_nifti_hu
from datamodules.phantom.reports import chest_report
from datamodules.phantom.scene import ChestCase, field_of_view, render, sample_chest_case
from datamodules.phantom.writing import clear_owned, run_jobs, save_nifti
from datamodules.sources import inspect as layout
from datamodules.text import split_sentences

MANIFEST = "phantom_manifest.json"
LABELS_TABLE = layout.LABEL_TABLES[0]
SPLITS_TABLE = layout.SPLIT_TABLES[0]
MAPPING_TABLE = layout.MAPPING_TABLES[0]
_OWNED = [layout.VOLUMES_DIR, layout.IMPRESSIONS, LABELS_TABLE, SPLITS_TABLE, MAPPING_TABLE, MANIFEST]
_S_PATIENT, _S_CASE, _S_GRID, _S_NOISE, _S_REPORT, _S_OUTCOME = 31, 32, 33, 34, 35, 36
# The labels as the release's table names them (pe_positive -> pe_positive_nlp).
TABLE_COLUMNS = [layout.LABEL_COLUMNS.get(n, (n,))[0] for n in INSPECT_LABELS]
CORRUPTED_AFFINE, TWO_CHANNELS = "corrupted_affine", "two_channels"
BAD_KINDS = (CORRUPTED_AFFINE, TWO_CHANNELS)

PULMONARY_HU = (280.0, 350.0)  # the CTPA bolus: pulmonary arteries
SYSTEMIC_HU = (180.0, 240.0)  # heart and aorta
CLOT_HU = (20.0, 40.0)
NORMAL_TRUNK_MM, PH_TRUNK_MM = (24.0, 29.0), (33.0, 38.0)
PH_TRUNK_MIN_MM = 30.0
PE_PREVALENCE = 0.4
# Branch -> (where an embolus may sit along it, 0 = proximal .. 1 = distal); the main arteries count
# as central emboli (a higher clot burden).
PE_SITES: dict[str, tuple[float, float]] = {
    "right main": (0.55, 0.75),
    "left main": (0.45, 0.65),
    "right lower lobe": (0.35, 0.6),
    "left lower lobe": (0.35, 0.6),
}
CENTRAL = ("right main", "left main")
VESSEL_MIN_VOX, CLOT_MIN_VOX = 1.6, 0.9  # radii widened to this many voxels on coarse grids
CENSOR_P = 0.25  # share of studies whose follow-up ends before 12 months


def _version() -> str:
    h = hashlib.sha256()
    for module in ("geometry", "anatomy", "findings", "scene", "reports", "writing", "merlin_writer"):
        h.update((Path(__file__).parent / f"{module}.py").read_bytes())
    h.update(Path(__file__).read_bytes())
    return h.hexdigest()[:16]


VERSION = _version()


@dataclass(frozen=True)
class Embolus:
    branch: str
    t: float  # centre along the branch axis (0 proximal .. 1 distal)
    length_mm: float
    radius_mm: float
    hu: float


@dataclass(frozen=True)
class CtpaCase:
    chest: ChestCase  # the scene with contrast-bright blood and its own findings
    trunk_mm: float  # pulmonary trunk diameter
    pulmonary_hu: float
    emboli: tuple[Embolus, ...]

    @property
    def central(self) -> bool:
        return any(e.branch in CENTRAL for e in self.emboli)

    @property
    def hypertension(self) -> bool:
        return self.trunk_mm >= PH_TRUNK_MIN_MM


@dataclass(frozen=True)
class InspectVolumeJob:
    path: Path
    chest: ChestCase  # with the pulmonary arteries and emboli as findings
    grid: Grid  # where the chest is drawn
    stored: Grid  # what the header says (spacing = grid spacing * scale)
    lps: bool
    offset_storage: bool
    noise_seed: tuple[int, ...]
    bad: str | None = None  # CORRUPTED_AFFINE | TWO_CHANNELS


@dataclass
class InspectPhantomSummary:
    root: Path
    n_studies: int
    n_patients: int
    n_train: int
    n_val: int
    n_test: int
    n_pe: int
    bad_cases: dict[str, str]
    seed: int
    scale: float
    reused: bool = False


# ------------------------------------------------------------------------------ pulmonary arteries


def _offset(p: Vec3, dx: float, dy: float, dz: float) -> Vec3:
    return p[0] + dx, p[1] + dy, p[2] + dz


def pulmonary_arteries(an: ChestAnatomy, trunk_mm: float) -> dict[str, Capsule]:
    """The pulmonary trunk and its branches (axis from proximal ``a`` to distal ``b``): out of the
    right ventricle, up and back to a bifurcation below the arch, over the main bronchi to the hila,
    then up to the upper lobes and down into the lower lobes. An enlarged trunk dilates the rest."""
    k, (br, bl) = an.carina, an.bronchi_ends
    hc, hs = an.heart.center, an.heart.semi
    dilation = 1.0 + 0.5 * max(0.0, trunk_mm / np.mean(NORMAL_TRUNK_MM) - 1.0)
    main, lower, upper = 10.0 * dilation, 7.0 * dilation, 5.5 * dilation
    origin = (hc[0] + 0.1 * hs[0], hc[1] + 0.5 * hs[1], hc[2] + 0.5 * hs[2])
    fork = _offset(k, -22.0, 20.0, -8.0)
    right_hilum, left_hilum = _offset(br, 12.0, 8.0, 22.0), _offset(bl, -12.0, 6.0, 22.0)
    return {
        "trunk": Capsule(origin, fork, trunk_mm / 2.0),
        "right main": Capsule(fork, right_hilum, main),
        "left main": Capsule(fork, left_hilum, main),
        "right upper lobe": Capsule(right_hilum, _offset(br, 14.0, 14.0, 62.0), upper),
        "left upper lobe": Capsule(left_hilum, _offset(bl, -14.0, 14.0, 62.0), upper),
        "right lower lobe": Capsule(right_hilum, _offset(br, 18.0, -6.0, -50.0), lower),
        "left lower lobe": Capsule(left_hilum, _offset(bl, -18.0, -6.0, -50.0), lower),
    }


def _along(vessel: Capsule, t: float) -> Vec3:
    a, b = np.asarray(vessel.a), np.asarray(vessel.b)
    p = a + t * (b - a)
    return float(p[0]), float(p[1]), float(p[2])


def _clot(vessel: Capsule, embolus: Embolus) -> Capsule:
    half = embolus.length_mm / 2.0 / math.dist(vessel.a, vessel.b)
    return Capsule(
        _along(vessel, embolus.t - half), _along(vessel, embolus.t + half), embolus.radius_mm, CLOT_MIN_VOX
    )


def ctpa_chest(case: CtpaCase) -> ChestCase:
    """The chest to render: the scene's findings, then the contrast-filled pulmonary arteries, then
    the emboli inside them (painted last; their voxels are ``Rendered.findings["Pulmonary embolism"]``)."""
    vessels = pulmonary_arteries(case.chest.anatomy, case.trunk_mm)
    arteries = Finding(
        "Pulmonary arteries",
        {},
        [Part(replace(v, min_radius_vox=VESSEL_MIN_VOX), case.pulmonary_hu, None) for v in vessels.values()],
    )
    clots = [Part(_clot(vessels[e.branch], e), e.hu, None) for e in case.emboli]
    findings = [*case.chest.findings, arteries]
    if clots:
        findings.append(Finding("Pulmonary embolism", {}, clots))
    return ChestCase(case.chest.anatomy, findings)


def embolus_points(case: CtpaCase, max_spacing: float) -> list[dict[str, Any]]:
    """Per embolus (world mm of the drawn chest): its centre, and the nearest probe point on the axis
    of a pulmonary artery (its own when it is long enough) at least 1.5 voxels clear of every clot:
    contrast-filled blood beside the embolus."""
    if not case.emboli:
        return []
    vessels = pulmonary_arteries(case.chest.anatomy, case.trunk_mm)
    clots = [_clot(vessels[e.branch], e) for e in case.emboli]

    def clearance(p: Vec3) -> float:
        return min(c.distance(p) - max(c.radius, CLOT_MIN_VOX * max_spacing) for c in clots)

    clear = [
        (name, p)
        for name, vessel in vessels.items()
        for p in (_along(vessel, float(t)) for t in np.linspace(0.0, 1.0, 21))
        if clearance(p) >= 1.5 * max_spacing
    ]
    points = []
    for embolus in case.emboli:
        center = _along(vessels[embolus.branch], embolus.t)
        if not clear:
            raise RuntimeError(f"no contrast-filled probe point beside the {embolus.branch} embolus")
        name, probe = min(clear, key=lambda item: math.dist(item[1], center))
        points.append({"branch": embolus.branch, "center": center, "probe": probe, "probe_vessel": name})
    return points


# ------------------------------------------------------------------------------------------ cases


def sample_ctpa_case(rng: np.random.Generator, habitus: Habitus, hypertension: bool) -> CtpaCase:
    """One CTPA study of a patient (``habitus`` and ``hypertension``, an enlarged trunk, are the
    patient's, shared by their studies)."""
    chest = sample_chest_case(rng, habitus)
    anatomy = replace(chest.anatomy, contrast=True, blood_hu=float(rng.uniform(*SYSTEMIC_HU)))
    trunk_mm = float(rng.uniform(*(PH_TRUNK_MM if hypertension else NORMAL_TRUNK_MM)))
    vessels = pulmonary_arteries(anatomy, trunk_mm)
    emboli: list[Embolus] = []
    if rng.random() < PE_PREVALENCE:
        count = int(rng.choice([1, 2, 3], p=[0.6, 0.3, 0.1]))
        for b in sorted(rng.choice(len(PE_SITES), size=count, replace=False)):
            branch = list(PE_SITES)[int(b)]
            vessel = vessels[branch]
            emboli.append(
                Embolus(
                    branch=branch,
                    t=float(rng.uniform(*PE_SITES[branch])),
                    length_mm=float(rng.uniform(14.0, 22.0)),
                    radius_mm=float(rng.uniform(0.55, 0.75)) * vessel.radius,
                    hu=float(rng.uniform(*CLOT_HU)),
                )
            )
    return CtpaCase(
        chest=ChestCase(anatomy, chest.findings),
        trunk_mm=trunk_mm,
        pulmonary_hu=float(rng.uniform(*PULMONARY_HU)),
        emboli=tuple(emboli),
    )


def _artery_list(branches: list[str]) -> str:
    if len(branches) == 1:
        return f"{branches[0]} pulmonary artery"
    return f"{', '.join(branches[:-1])} and {branches[-1]} pulmonary arteries"


def inspect_impression(case: CtpaCase, slice_mm: float, rng: np.random.Generator) -> str:
    """The impression: the PE statement, the trunk when enlarged, then the scene's own findings."""
    items = []
    if case.emboli:
        where = _artery_list([e.branch for e in case.emboli])
        burden = ", with a large clot burden" if case.central or len(case.emboli) > 1 else ""
        items.append(f"Acute pulmonary embolism in the {where}{burden}.")
    else:
        negative = ["No pulmonary embolism.", "No evidence of pulmonary embolism."]
        items.append(negative[int(rng.integers(len(negative)))])
    if case.hypertension:
        items.append(
            f"Enlarged main pulmonary artery measuring {round(case.trunk_mm)} mm, which can be seen "
            "with pulmonary hypertension."
        )
    if case.chest.findings:
        items += split_sentences(chest_report(case.chest.findings, True, slice_mm, rng).impressions)
    if len(items) == 1:
        return items[0]
    return " ".join(f"{i}. {item}" for i, item in enumerate(items, start=1))


def _weibull(rng: np.random.Generator, rate: float, shape: float) -> float:
    """A time (months) with cumulative hazard ``rate * t ** shape``."""
    return float((rng.exponential() / rate) ** (1.0 / shape))


def _status(event: float, end: float, months: int) -> str:
    if event <= min(end, months):
        return "True"
    return "False" if end >= months else "Censored"


def outcomes(case: CtpaCase, rng: np.random.Generator) -> dict[str, str]:
    """The label row (table column -> True / False / Censored) of one study; see the module docstring."""
    labels = case.chest.labels
    risk = (
        0.8 * case.central
        + 0.4 * bool(case.emboli)
        + 1.0 * ("Pleural effusion" in labels)
        + 0.7 * ("Cardiomegaly" in labels)
        + 0.6 * case.hypertension
    )
    death = _weibull(rng, 0.02 * math.exp(risk), 0.6)
    readmission = _weibull(rng, 0.05 * math.exp(0.25 * risk + 0.6 * rng.standard_normal()), 0.8)
    ph_risk = 2.2 * case.hypertension + 0.9 * ("Cardiomegaly" in labels) + 0.5 * case.central
    hypertension = _weibull(rng, 0.01 * math.exp(ph_risk), 1.0)
    follow_up = float(rng.uniform(0.5, 12.0)) if rng.random() < CENSOR_P else math.inf
    alive = min(follow_up, death)
    row = {"pe_positive_nlp": "True" if case.emboli else "False"}
    for months in (1, 6, 12):
        row[f"{months}_month_mortality"] = _status(death, follow_up, months)
    for months in (1, 6, 12):
        row[f"{months}_month_readmission"] = _status(readmission, alive, months)
    row["12_month_PH"] = _status(hypertension, alive, 12)
    return row


# ------------------------------------------------------------------------------------------ files


def write_volume(job: InspectVolumeJob) -> None:
    hu = render(job.chest, job.grid, np.random.default_rng(list(job.noise_seed))).hu
    if job.bad is None:
        write_nifti_hu(hu, job.stored, job.path, job.lps, job.offset_storage)
        return
    stored = hu[::-1, ::-1, :] if job.lps else hu
    raw = np.clip(np.rint(stored), -32768, 32767).astype(np.int16)
    affine = true_affine(job.stored, job.lps)
    if job.bad == TWO_CHANNELS:
        save_nifti(np.stack([raw, raw // 2], axis=-1), job.path, affine)
    else:  # the second axis column repeats the first: no 3D grid
        affine[:3, 1] = affine[:3, 0]
        save_nifti(raw, job.path, affine)


def study_id(seed: int, index: int) -> str:
    return "PE" + hashlib.sha1(f"inspect-phantom/{seed}/{index}".encode()).hexdigest()[:8]


def _patients(n: int) -> list[int]:
    """Patient of each study: the last ``2 * (n // 6)`` studies come in pairs of one patient."""
    pairs = n // 6
    single = n - 2 * pairs
    return [i if i < single else single + (i - single) // 2 for i in range(n)]


def _is_complete(out: Path, n: int, seed: int, scale: float, bad_cases: int) -> dict | None:
    try:
        m = json.loads((out / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    params = (m.get("n"), m.get("seed"), m.get("scale"), m.get("n_bad_cases"))
    if m.get("version") != VERSION or params != (n, seed, scale, bad_cases):
        return None
    return m if sum(1 for _ in (out / layout.VOLUMES_DIR).glob("*.nii.gz")) == n else None


def write_phantom_inspect(
    out: Path,
    n: int,
    seed: int = 0,
    scale: float = 1.0,
    bad_cases: int | None = None,
    workers: int = 2,
    progress: bool = True,
) -> InspectPhantomSummary:
    """Write ``n`` phantom CTPA studies under ``out`` (~60 / 20 / 20 % of the patients train / valid /
    test; deterministic given ``seed``; reused when a complete phantom with the same parameters is
    there). ``bad_cases`` (0-2; default 2 when ``n >= 10``, else 0) of the training studies are
    written with a corrupted affine, then two channels."""
    out = Path(out)
    if n < 4:
        raise ValueError("n must be >= 4 (one patient per split at least)")
    if not 0 < scale <= 1:
        raise ValueError("scale must be in (0, 1]")
    bad_cases = (2 if n >= 10 else 0) if bad_cases is None else int(bad_cases)
    if not 0 <= bad_cases <= len(BAD_KINDS):
        raise ValueError(f"bad_cases must be 0, 1 or 2, not {bad_cases}")
    done = _is_complete(out, n, seed, scale, bad_cases)
    if done is not None:
        return InspectPhantomSummary(root=out, **done["summary"], seed=seed, scale=scale, reused=True)
    clear_owned(out, _OWNED)

    patient_of = _patients(n)
    n_patients = max(patient_of) + 1
    order = np.random.default_rng([seed, 0]).permutation(n_patients)
    n_eval = max(1, int(round(0.2 * n_patients)))
    patient_split = dict.fromkeys(range(n_patients), "train")
    for p in order[:n_eval]:
        patient_split[int(p)] = "valid"
    for p in order[n_eval : 2 * n_eval]:
        patient_split[int(p)] = "test"
    hypertensive = {
        p: bool(np.random.default_rng([seed, _S_PATIENT, p]).random() < 0.2) for p in range(n_patients)
    }
    alone = [
        i
        for i in range(n)
        if patient_split[patient_of[i]] == "train" and patient_of.count(patient_of[i]) == 1
    ]
    if len(alone) < bad_cases:
        raise ValueError(f"n={n} has {len(alone)} single-study training patients, fewer than bad_cases")
    bad_of = dict(zip(alone[len(alone) - bad_cases :], BAD_KINDS, strict=False))

    jobs: list[InspectVolumeJob] = []
    impressions, label_rows, split_rows, mapping_rows = [], [], [], []
    studies: dict[str, Any] = {}
    for i in range(n):
        sid, patient = study_id(seed, i), patient_of[i]
        habitus = sample_habitus(np.random.default_rng([seed, _S_PATIENT, patient, 1]))
        case = sample_ctpa_case(np.random.default_rng([seed, _S_CASE, i]), habitus, hypertensive[patient])
        grng = np.random.default_rng([seed, _S_GRID, i])
        s_xy, s_z = round(float(grng.uniform(3.6, 4.2)), 3), round(float(grng.uniform(3.5, 5.0)), 2)
        fov_xy, fov_z = field_of_view(case.chest)
        render_xy, render_z = s_xy / scale, s_z / scale
        shape = (int(round(fov_xy / render_xy)),) * 2 + (int(round(fov_z / render_z)),)
        grid = Grid(shape, (render_xy, render_xy, render_z))
        jobs.append(
            InspectVolumeJob(
                path=out / layout.VOLUMES_DIR / f"{sid}.nii.gz",
                chest=ctpa_chest(case),
                grid=grid,
                stored=Grid(shape, (s_xy, s_xy, s_z)),
                lps=bool(grng.random() < 0.5),
                offset_storage=bool(grng.random() < 0.5),
                noise_seed=(seed, _S_NOISE, i),
                bad=bad_of.get(i),
            )
        )
        text = inspect_impression(case, s_z, np.random.default_rng([seed, _S_REPORT, i]))
        impressions.append({layout.ID_COLUMN: sid, layout.IMPRESSION_COLUMN: text})
        label_rows.append(
            {layout.ID_COLUMN: sid, **outcomes(case, np.random.default_rng([seed, _S_OUTCOME, i]))}
        )
        split_rows.append({layout.ID_COLUMN: sid, layout.SPLIT_COLUMN: patient_split[patient]})
        mapping_rows.append({layout.ID_COLUMN: sid, layout.PATIENT_COLUMN: str(100001 + patient)})
        emboli = [
            {**p, "center": [scale * c for c in p["center"]], "probe": [scale * c for c in p["probe"]]}
            for p in embolus_points(case, max(grid.spacing))
        ]
        studies[sid] = {
            "patient": str(100001 + patient),
            "split": patient_split[patient],
            "pe": [e.branch for e in case.emboli],
            "emboli_mm": emboli,  # world mm of the stored volume (its header's frame)
            "trunk_mm": round(case.trunk_mm, 1),
            "scene": sorted(case.chest.labels),
        }

    run_jobs(write_volume, jobs, workers, progress, "phantom INSPECT")

    pd.DataFrame(impressions).to_csv(out / layout.IMPRESSIONS, index=False)
    pd.DataFrame(label_rows, columns=[layout.ID_COLUMN, *TABLE_COLUMNS]).to_csv(
        out / LABELS_TABLE, sep="\t", index=False
    )
    pd.DataFrame(split_rows).to_csv(out / SPLITS_TABLE, sep="\t", index=False)
    pd.DataFrame(mapping_rows).to_csv(out / MAPPING_TABLE, sep="\t", index=False)
    splits = [row[layout.SPLIT_COLUMN] for row in split_rows]
    summary = {
        "n_studies": n,
        "n_patients": n_patients,
        "n_train": splits.count("train"),
        "n_val": splits.count("valid"),
        "n_test": splits.count("test"),
        "n_pe": sum(bool(s["pe"]) for s in studies.values()),
        "bad_cases": {kind: study_id(seed, i) for i, kind in bad_of.items()},
    }
    manifest = {
        "version": VERSION,
        "n": n,
        "seed": seed,
        "scale": scale,
        "n_bad_cases": bad_cases,
        "summary": summary,
        "studies": studies,
    }
    (out / MANIFEST).write_text(json.dumps(manifest, indent=1), encoding="utf-8")
    return InspectPhantomSummary(root=out, **summary, seed=seed, scale=scale)
