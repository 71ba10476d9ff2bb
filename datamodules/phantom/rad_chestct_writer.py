"""Write a synthetic "phantom" RAD-ChestCT in the real RAD-ChestCT layout, from the chest scene.

Layout under ``out/`` (what :mod:`datamodules.sources.rad_chestct` reads)::

    volumes/trn00001.npz, val00001.npz, tst00001.npz, ...    array "ct", int16 HU clipped to +-1000
    imgtrain_Abnormality_and_Location_Labels.csv             NoteAcc_DEID + 84 x 52 <abn>*<loc> columns
    imgvalid_Abnormality_and_Location_Labels.csv
    imgtest_Abnormality_and_Location_Labels.csv
    phantom_manifest.json                                    written last: marks a complete phantom

The arrays follow the dataset's convention (``ct[slice, row, column]``, slices superior -> inferior,
rows anterior -> posterior, columns patient right -> left, 0.8 mm isotropic; see
``datamodules/readers.py``). Each case is a chest of :mod:`datamodules.phantom.scene` (the scene the
CT-RATE phantom draws); its CT-RATE findings become RAD-ChestCT abnormality x location cells, with
the location propagated to the side lung and ``lung`` as RAD-ChestCT's labeller does.

``scale``: a real RAD-ChestCT volume at 0.8 mm is ~430^3 voxels. The phantom draws the chest at
``0.8 / scale`` mm and stores it as 0.8 mm, i.e. a chest shrunk by ``scale`` (1.0 = life size).
Tests use ``scale=0.25``; the files follow the real convention whatever the scale.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from datamodules.labels import RAD_CHESTCT_ABNORMALITIES, RAD_CHESTCT_LOCATIONS
from datamodules.phantom.anatomy import sample_habitus
from datamodules.phantom.geometry import Grid
from datamodules.phantom.scene import ChestCase, field_of_view, render, sample_chest_case
from datamodules.phantom.writing import clear_owned, run_jobs
from datamodules.sources import rad_chestct as layout

MANIFEST = "phantom_manifest.json"
VOLUMES_DIR = "volumes"
_OWNED = [VOLUMES_DIR, *(table for table, _ in layout.TABLES.values()), MANIFEST]
_S_CASE, _S_NOISE = 21, 22
LABEL_COLUMNS = [f"{a}*{loc}" for a in RAD_CHESTCT_ABNORMALITIES for loc in RAD_CHESTCT_LOCATIONS]
_DEVICE_CELLS = {
    "central venous catheter": [("catheter_or_port", "svc")],
    "pacemaker": [("pacemaker_or_defib", "heart")],
    "sternotomy wires": [("sternotomy", "chest_wall"), ("hardware", "bone")],
    "nasogastric tube": [("gi_tube", "esophagus")],
}


def _version() -> str:
    h = hashlib.sha256()
    for module in ("geometry", "anatomy", "findings", "scene", "rad_chestct_writer"):
        h.update((Path(__file__).parent / f"{module}.py").read_bytes())
    return h.hexdigest()[:16]


VERSION = _version()


@dataclass(frozen=True)
class NpzJob:
    path: Path
    case: ChestCase
    grid: Grid
    noise_seed: tuple[int, ...]


@dataclass
class RadChestPhantomSummary:
    root: Path
    n_volumes: int
    n_train: int
    n_val: int
    n_test: int
    seed: int
    scale: float
    reused: bool = False


def ras_to_stack(hu_ras: np.ndarray) -> np.ndarray:
    """Canonical RAS+ (x, y, z) HU -> the RAD-ChestCT stack ``ct[slice, row, column]`` (int16, +-1000)."""
    stack = np.asarray(hu_ras)[::-1, ::-1, ::-1].transpose(2, 1, 0)
    return np.ascontiguousarray(np.clip(np.rint(stack), -1000, 1000).astype(np.int16))


def write_npz(hu_ras: np.ndarray, path: Path) -> None:
    """Save as a compressed ``.npz`` with key ``"ct"`` (atomic)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp.npz")
    np.savez_compressed(tmp, ct=ras_to_stack(hu_ras))
    os.replace(tmp, path)


def write_volume(job: NpzJob) -> None:
    hu = render(job.case, job.grid, np.random.default_rng(list(job.noise_seed))).hu
    write_npz(hu, job.path)


def _lung_cells(abnormality: str, side: str, zone: str | None) -> list[tuple[str, str]]:
    sides = ["left", "right"] if side == "bilateral" else [side]
    cells = [(abnormality, "lung")]
    for s in sides:
        cells.append((abnormality, f"{s}_lung"))
        if zone:
            cells.append((abnormality, f"{s}_{'upper' if zone == 'upper' else 'lower'}"))
    return cells


def case_cells(case: ChestCase) -> set[tuple[str, str]]:
    """The (abnormality, location) cells set to 1 for the findings drawn in ``case``."""
    cells: set[tuple[str, str]] = set()
    for finding in case.findings:
        a, label = finding.attrs, finding.label
        side, zone = str(a.get("side", "bilateral")), a.get("zone")
        if label == "Medical material":
            cells.update(_DEVICE_CELLS[a["device"]])
        elif label == "Arterial wall calcification":
            cells.update({("calcification", "aorta"), ("atherosclerosis", "aorta")})
        elif label == "Coronary artery wall calcification":
            cells.update({("calcification", "heart"), ("coronary_artery_disease", "heart")})
        elif label == "Cardiomegaly":
            cells.add(("cardiomegaly", "heart"))
        elif label == "Pericardial effusion":
            cells.add(("pericardial_effusion", "heart"))
        elif label == "Hiatal hernia":
            cells.add(("hernia", "esophagus"))
        elif label == "Lymphadenopathy":
            cells.update({("lymphadenopathy", "mediastinum"), ("lymphadenopathy", "hilum")})
        elif label == "Lung nodule":
            cells.update(_lung_cells("nodule", side, zone))
            if a.get("size") == "large":
                cells.update(_lung_cells("nodulegr1cm", side, zone))
        elif label == "Lung opacity":
            cells.update(_lung_cells("opacity", side, zone))
        elif label == "Consolidation":
            cells.update(_lung_cells("consolidation", side, zone))
        elif label == "Atelectasis":
            cells.update(_lung_cells("atelectasis", side, zone))
        elif label == "Emphysema":
            cells.update(_lung_cells("emphysema", side, None))
        elif label == "Pleural effusion":
            cells.update(_lung_cells("pleural_effusion", side, None))
        elif label == "Pulmonary fibrotic sequela":
            cells.update(_lung_cells("scarring", side, zone))
        elif label == "Peribronchial thickening":
            cells.add(("bronchial_wall_thickening", "airways"))
        elif label == "Bronchiectasis":
            cells.update(_lung_cells("bronchiectasis", side, zone))
        elif label == "Interlobular septal thickening":
            cells.update(_lung_cells("septal_thickening", side, zone))
        elif label == "Mosaic attenuation pattern":
            cells.update(_lung_cells("air_trapping", side, None))
    return cells


def _is_complete(out: Path, n: int, seed: int, scale: float) -> dict | None:
    try:
        m = json.loads((out / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if m.get("version") != VERSION or (m.get("n"), m.get("seed"), m.get("scale")) != (n, seed, scale):
        return None
    return m if sum(1 for _ in (out / VOLUMES_DIR).glob("*.npz")) == n else None


def write_phantom_rad_chestct(
    out: Path, n: int, seed: int = 0, scale: float = 1.0, workers: int = 2, progress: bool = True
) -> RadChestPhantomSummary:
    """Write ``n`` phantom RAD-ChestCT volumes (~60 % train, 20 % valid, 20 % test) under ``out``."""
    out = Path(out)
    if n < 3:
        raise ValueError("n must be >= 3 (one volume per split at least)")
    if not 0 < scale <= 1:
        raise ValueError("scale must be in (0, 1]")
    done = _is_complete(out, n, seed, scale)
    if done is not None:
        return RadChestPhantomSummary(root=out, **done["summary"], seed=seed, scale=scale, reused=True)
    clear_owned(out, _OWNED)

    n_eval = max(1, int(round(0.2 * n)))
    order = np.random.default_rng([seed, 0]).permutation(n)
    split_of = dict.fromkeys(range(n), "train")
    for i in order[:n_eval]:
        split_of[int(i)] = "val"
    for i in order[n_eval : 2 * n_eval]:
        split_of[int(i)] = "test"
    counters = dict.fromkeys(layout.TABLES, 0)
    rows: dict[str, list[list[int | str]]] = {split: [] for split in layout.TABLES}
    jobs: list[NpzJob] = []
    column_index = {c: j for j, c in enumerate(LABEL_COLUMNS)}
    render_spacing = layout.SPACING_MM / scale
    for i in range(n):
        split = split_of[i]
        counters[split] += 1
        rid = f"{layout.TABLES[split][1]}{counters[split]:05d}"
        rng = np.random.default_rng([seed, _S_CASE, i])
        case = sample_chest_case(rng, sample_habitus(rng))
        fov_xy, fov_z = field_of_view(case)
        nxy, nz = int(round(fov_xy / render_spacing)), int(round(fov_z / render_spacing))
        grid = Grid((nxy, nxy, nz), (render_spacing,) * 3)
        jobs.append(NpzJob(out / VOLUMES_DIR / f"{rid}.npz", case, grid, (seed, _S_NOISE, i)))
        values = [0] * len(LABEL_COLUMNS)
        for abnormality, location in case_cells(case):
            values[column_index[f"{abnormality}*{location}"]] = 1
        rows[split].append([rid, *values])

    run_jobs(write_volume, jobs, workers, progress, "phantom RAD-ChestCT")
    for split, (table, _) in layout.TABLES.items():
        pd.DataFrame(rows[split], columns=[layout.ID_COLUMN, *LABEL_COLUMNS]).to_csv(out / table, index=False)
    summary = {
        "n_volumes": n,
        "n_train": counters["train"],
        "n_val": counters["val"],
        "n_test": counters["test"],
    }
    labels = {job.path.stem: sorted(job.case.labels) for job in jobs}
    manifest = {
        "version": VERSION,
        "n": n,
        "seed": seed,
        "scale": scale,
        "summary": summary,
        "ct_rate_labels": labels,
    }
    (out / MANIFEST).write_text(json.dumps(manifest, indent=1), encoding="utf-8")
    return RadChestPhantomSummary(root=out, **summary, seed=seed, scale=scale)
