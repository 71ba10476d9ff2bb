"""Write a synthetic "phantom" Merlin (abdominal CT) dataset in the real Merlin layout.

Layout under ``out/`` (what :mod:`datamodules.sources.merlin` reads)::

    merlin_data/<study_id>.nii.gz            one abdomen volume per study
    reports_final.xlsx                       "study id", "Findings" (whole report), "Split"
    zero_shot_findings_disease_cls.csv       "study id" + the 30 diseases, 1 / 0 / -1
    metadata.csv                             "study id", phase, kVp, slice thickness
    shortened_findings.json                  {study id: {"positive": [...], "negative": [...]}}
    phantom_manifest.json                    written last: marks a complete phantom

Conventions: NIfTI headers are *true* (Merlin's are): the affine has the real spacing, origin and
direction (RAS or LPS storage, chosen per volume), and half of the volumes store ``HU + 1024`` with
``scl_inter = -1024``. Findings drawn in the image (:mod:`datamodules.phantom.abdomen`) are labelled 1
and stated in the report; an absent one is labelled 0 when the report says so and -1 (not mentioned)
otherwise. The other 25 diseases are never drawn: 0 when a negative sentence mentions them, else -1.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from datamodules.labels import MERLIN_LABELS
from datamodules.phantom.abdomen import VISIBLE_FINDINGS, AbdomenCase, render_abdomen, sample_abdomen_case
from datamodules.phantom.geometry import Grid
from datamodules.phantom.writing import clear_owned, run_jobs, save_nifti
from datamodules.sources import merlin as layout

MANIFEST = "phantom_manifest.json"
VOLUMES_DIR = "merlin_data"
_OWNED = [VOLUMES_DIR, layout.REPORTS, layout.LABELS, layout.METADATA, "shortened_findings.json", MANIFEST]
_S_CASE, _S_GRID, _S_NOISE, _S_REPORT = 11, 12, 13, 14


def _version() -> str:
    h = hashlib.sha256()
    for module in ("geometry", "abdomen", "merlin_writer", "writing"):
        h.update((Path(__file__).parent / f"{module}.py").read_bytes())
    return h.hexdigest()[:16]


VERSION = _version()

# disease -> (report section, negative sentence, short negative)
_NEGATIVE: dict[str, tuple[str, str, str]] = {
    "hepatomegaly": ("LIVER AND BILIARY TREE", "The liver is normal in size.", "Normal liver size."),
    "hepatic_steatosis": ("LIVER AND BILIARY TREE", "Normal hepatic attenuation.", "No hepatic steatosis."),
    "biliary_ductal_dilation": (
        "LIVER AND BILIARY TREE",
        "No biliary ductal dilation.",
        "No biliary dilation.",
    ),
    "gallstones": ("GALLBLADDER", "No gallstones.", "No gallstones."),
    "splenomegaly": ("SPLEEN", "The spleen is normal in size.", "Normal spleen size."),
    "pancreatic_atrophy": ("PANCREAS", "No pancreatic atrophy.", "No pancreatic atrophy."),
    "renal_cyst": ("KIDNEYS", "No renal cysts.", "No renal cyst."),
    "hydronephrosis": ("KIDNEYS", "No hydronephrosis.", "No hydronephrosis."),
    "bowel_obstruction": ("GI TRACT", "No evidence of bowel obstruction.", "No bowel obstruction."),
    "appendicitis": ("GI TRACT", "The appendix is normal.", "No appendicitis."),
    "ascites": ("PERITONEUM", "No ascites.", "No ascites."),
    "free_air": ("PERITONEUM", "No free air.", "No free air."),
    "abdominal_aortic_aneurysm": ("VASCULATURE", "No abdominal aortic aneurysm.", "No aortic aneurysm."),
    "lymphadenopathy": ("LYMPH NODES", "No lymphadenopathy.", "No lymphadenopathy."),
    "pleural_effusion": ("LOWER THORAX", "No pleural effusion.", "No pleural effusion."),
    "atelectasis": ("LOWER THORAX", "No atelectasis at the lung bases.", "No atelectasis."),
    "cardiomegaly": ("LOWER THORAX", "The heart is normal in size.", "No cardiomegaly."),
    "hiatal_hernia": ("GI TRACT", "No hiatal hernia.", "No hiatal hernia."),
    "fracture": ("BONES", "No acute fracture.", "No fracture."),
    "osteopenia": ("BONES", "Normal bone mineralization.", "No osteopenia."),
}
_SECTIONS = [
    "LOWER THORAX",
    "LIVER AND BILIARY TREE",
    "GALLBLADDER",
    "SPLEEN",
    "PANCREAS",
    "ADRENAL GLANDS",
    "KIDNEYS",
    "GI TRACT",
    "PERITONEUM",
    "VASCULATURE",
    "LYMPH NODES",
    "BONES",
]
_UNREMARKABLE = ["Unremarkable.", "No acute abnormality.", "Within normal limits."]


@dataclass(frozen=True)
class MerlinVolumeJob:
    path: Path
    case: AbdomenCase
    grid: Grid
    lps: bool
    offset_storage: bool  # store HU + 1024 with scl_inter = -1024
    noise_seed: tuple[int, ...]


@dataclass
class MerlinPhantomSummary:
    root: Path
    n_studies: int
    n_train: int
    n_val: int
    n_test: int
    seed: int
    reused: bool = False


def true_affine(grid: Grid, lps: bool) -> np.ndarray:
    """The real affine of a grid centred on the world origin, stored RAS or LPS."""
    d = np.array([-1.0, -1.0, 1.0]) if lps else np.ones(3)
    spacing = np.array(grid.spacing, dtype=float)
    aff = np.eye(4)
    aff[:3, :3] = np.diag(d * spacing)
    aff[:3, 3] = -d * (np.array(grid.shape, dtype=float) - 1.0) / 2.0 * spacing
    return aff


def write_nifti_hu(hu: np.ndarray, grid: Grid, path: Path, lps: bool, offset_storage: bool) -> None:
    """Save canonical-order HU on ``grid`` as int16 NIfTI with a true header (atomic)."""
    stored = hu[::-1, ::-1, :] if lps else hu
    if offset_storage:
        raw = np.clip(np.rint(stored + 1024.0), -32768, 32767).astype(np.int16)
    else:
        raw = np.clip(np.rint(stored), -32768, 32767).astype(np.int16)
    save_nifti(raw, path, true_affine(grid, lps), (1.0, -1024.0 if offset_storage else 0.0))


def write_volume(job: MerlinVolumeJob) -> None:
    hu = render_abdomen(job.case, job.grid, np.random.default_rng(list(job.noise_seed)))
    write_nifti_hu(hu, job.grid, job.path, job.lps, job.offset_storage)


def merlin_report(
    case: AbdomenCase, rng: np.random.Generator
) -> tuple[str, dict[str, int], list[str], list[str]]:
    """(whole report text, 30 labels as 1/0/-1, short positives, short negatives)."""
    labels = dict.fromkeys(MERLIN_LABELS, -1)
    by_section: dict[str, list[str]] = {name: [] for name in _SECTIONS}
    positive, negative, impressions = [], [], []
    f = case.findings
    if "hepatomegaly" in f:
        cc = f["hepatomegaly"]["craniocaudal_cm"]
        by_section["LIVER AND BILIARY TREE"].append(
            _pick(
                rng,
                [
                    f"The liver is enlarged, measuring {cc} cm craniocaudally.",
                    f"Hepatomegaly, the liver spans {cc} cm.",
                ],
            )
        )
        positive.append("Hepatomegaly.")
        impressions.append("Hepatomegaly")
    if "hepatic_steatosis" in f:
        by_section["LIVER AND BILIARY TREE"].append(
            _pick(
                rng,
                [
                    "Diffuse hypoattenuation of the liver consistent with hepatic steatosis.",
                    "The liver is diffusely low in attenuation, compatible with fatty infiltration.",
                ],
            )
        )
        positive.append("Hepatic steatosis.")
        impressions.append("Hepatic steatosis")
    if "splenomegaly" in f:
        length = f["splenomegaly"]["length_cm"]
        by_section["SPLEEN"].append(
            _pick(
                rng,
                [
                    f"The spleen is enlarged, measuring {length} cm.",
                    f"Splenomegaly with a splenic length of {length} cm.",
                ],
            )
        )
        positive.append("Splenomegaly.")
        impressions.append("Splenomegaly")
    if "renal_cyst" in f:
        cyst = f["renal_cyst"]
        size = round(2 * cyst["radius_mm"] / 10.0, 1)
        by_section["KIDNEYS"].append(
            _pick(
                rng,
                [
                    f"A {size} cm simple cyst in the {cyst['side']} kidney.",
                    f"{cyst['side'].capitalize()} renal cyst measuring {size} cm.",
                ],
            )
        )
        positive.append(f"{cyst['side'].capitalize()} renal cyst.")
        impressions.append(f"{cyst['side'].capitalize()} renal cyst")
    if "ascites" in f:
        t = f["ascites"]["thickness_mm"]
        amount = "Small" if t < 16 else "Moderate" if t < 21 else "Large"
        by_section["PERITONEUM"].append(
            _pick(
                rng,
                [
                    f"{amount} volume ascites.",
                    f"{amount} amount of free fluid in the abdomen, including perihepatic ascites.",
                ],
            )
        )
        positive.append("Ascites.")
        impressions.append(f"{amount} volume ascites")
    for name in f:
        labels[name] = 1
    for name, (section, sentence, short) in _NEGATIVE.items():
        if name in f:
            continue
        p = 0.6 if name in VISIBLE_FINDINGS else 0.25
        if rng.random() < p:
            by_section[section].append(sentence)
            negative.append(short)
            labels[name] = 0
    lines = []
    for section in _SECTIONS:
        body = " ".join(by_section[section]) or _pick(rng, _UNREMARKABLE)
        lines.append(f"{section}: {body}")
    impression = (
        " ".join(f"{i}. {text}." for i, text in enumerate(impressions, start=1))
        if impressions
        else _pick(
            rng, ["No acute abdominopelvic abnormality.", "No acute findings in the abdomen or pelvis."]
        )
    )
    text = "FINDINGS:\n" + "\n".join(lines) + "\n\nIMPRESSION:\n" + impression
    return text, labels, positive, negative


def _pick(rng: np.random.Generator, options: list[str]) -> str:
    return options[int(rng.integers(len(options)))]


def _is_complete(out: Path, n: int, seed: int) -> dict | None:
    try:
        m = json.loads((out / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if m.get("version") != VERSION or m.get("n") != n or m.get("seed") != seed:
        return None
    return m if sum(1 for _ in (out / VOLUMES_DIR).glob("*.nii.gz")) == n else None


def study_id(seed: int, index: int) -> str:
    return "AC" + hashlib.sha1(f"merlin-phantom/{seed}/{index}".encode()).hexdigest()[:8]


def write_phantom_merlin(
    out: Path, n: int, seed: int = 0, workers: int = 2, progress: bool = True
) -> MerlinPhantomSummary:
    """Write ``n`` phantom abdominal studies under ``out`` (deterministic given ``seed``; reused
    when a complete phantom with the same ``(n, seed)`` is there)."""
    out = Path(out)
    if n < 3:
        raise ValueError("n must be >= 3 (one study per split at least)")
    done = _is_complete(out, n, seed)
    if done is not None:
        return MerlinPhantomSummary(root=out, **done["summary"], seed=seed, reused=True)
    clear_owned(out, _OWNED)

    splits = ["train"] * n
    order = np.random.default_rng([seed, 0]).permutation(n)
    n_eval = max(1, int(round(0.2 * n)))
    for i in order[:n_eval]:
        splits[int(i)] = "val"
    for i in order[n_eval : 2 * n_eval]:
        splits[int(i)] = "test"

    jobs: list[MerlinVolumeJob] = []
    reports, label_rows, meta_rows, short = [], [], [], {}
    for i in range(n):
        sid = study_id(seed, i)
        case = sample_abdomen_case(np.random.default_rng([seed, _S_CASE, i]))
        grng = np.random.default_rng([seed, _S_GRID, i])
        s_xy, s_z = round(float(grng.uniform(3.2, 4.2)), 3), round(float(grng.uniform(3.0, 5.0)), 2)
        nxy = int(round(case.fov_xy / s_xy))
        grid = Grid((nxy, nxy, int(round(case.fov_z / s_z))), (s_xy, s_xy, s_z))
        jobs.append(
            MerlinVolumeJob(
                path=out / VOLUMES_DIR / f"{sid}.nii.gz",
                case=case,
                grid=grid,
                lps=bool(grng.random() < 0.5),
                offset_storage=bool(grng.random() < 0.5),
                noise_seed=(seed, _S_NOISE, i),
            )
        )
        text, labels, positive, negative = merlin_report(case, np.random.default_rng([seed, _S_REPORT, i]))
        reports.append({layout.ID_COLUMN: sid, layout.FINDINGS_COLUMN: text, layout.SPLIT_COLUMN: splits[i]})
        label_rows.append({layout.ID_COLUMN: sid, **labels})
        meta_rows.append(
            {
                layout.ID_COLUMN: sid,
                "phase": _pick(grng, ["portal venous", "arterial", "non-contrast"]),
                "kvp": int(grng.choice([100, 120])),
                "slice thickness": s_z,
            }
        )
        short[sid] = {"positive": positive, "negative": negative}

    run_jobs(write_volume, jobs, workers, progress, "phantom Merlin")

    pd.DataFrame(reports).to_excel(out / layout.REPORTS, index=False, engine="openpyxl")
    pd.DataFrame(label_rows, columns=[layout.ID_COLUMN, *MERLIN_LABELS]).to_csv(
        out / layout.LABELS, index=False
    )
    pd.DataFrame(meta_rows).to_csv(out / layout.METADATA, index=False)
    (out / "shortened_findings.json").write_text(json.dumps(short, indent=1), encoding="utf-8")
    summary = {
        "n_studies": n,
        "n_train": splits.count("train"),
        "n_val": splits.count("val"),
        "n_test": splits.count("test"),
    }
    findings = {study_id(seed, i): job.case.findings for i, job in enumerate(jobs)}
    manifest = {"version": VERSION, "n": n, "seed": seed, "summary": summary, "findings": findings}
    (out / MANIFEST).write_text(json.dumps(manifest, indent=1), encoding="utf-8")
    return MerlinPhantomSummary(root=out, **summary, seed=seed)
