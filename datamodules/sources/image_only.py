"""Image-only CT collections (NLST style) on disk -> plain records without reports or labels.

Layout under the data root: one folder per patient, below it any folder depth; each *series* (one
reconstruction) is either a NIfTI file or a folder of DICOM files::

    <patient>/<study>/<series>/*.dcm          a DICOM series (read with SimpleITK, geometry from DICOM)
    <patient>/<study>/<series>.nii.gz         a NIfTI series (header geometry and scaling trusted)

The folder that holds a series is its *acquisition* (for NLST: one screening time point). Several
series of one acquisition are reconstructions of the same scan; one is kept, chosen at random with a
fixed seed, as COLIPRI did for NLST (their spacings are similar). A DICOM folder must hold one
series. Record ids are ``<patient>_<study...>_<series>`` with unsafe characters replaced by ``-``.
Everything is in the ``train`` split: the DataModule carves a validation set out by patient.
"""

from __future__ import annotations

import logging
import os
import random
import re
from collections import defaultdict
from pathlib import Path

from datamodules.errors import DataRootError
from datamodules.records import Record
from datamodules.sources.common import Rejected
from datamodules.sources.ct_rate import SourceScan

log = logging.getLogger(__name__)

SOURCE = "image_only"
NIFTI_SUFFIXES = (".nii.gz", ".nii")
DICOM_SUFFIX = ".dcm"
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")

EXPECTED_LAYOUT = """\
Expected an image-only layout under the data root:
  <patient>/<study>/<series>.nii.gz   and/or   <patient>/<study>/<series>/*.dcm (one series per folder)
Run `ctvlp phantom --source image_only --out DIR` for a phantom image-only collection."""


def resolve_root(root: Path | str) -> Path:
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataRootError(
            f"Image-only data root {root} does not exist or is not a folder.\n{EXPECTED_LAYOUT}"
        )
    if not any(p.is_dir() for p in root.iterdir()):
        raise DataRootError(f"Image-only data root {root} has no patient folders.\n{EXPECTED_LAYOUT}")
    return root


def is_dicom_file(path: Path) -> bool:
    """A ``.dcm`` file, or an extension-less file with the DICOM preamble magic."""
    if path.name.lower().endswith(DICOM_SUFFIX):
        return True
    if path.suffix:
        return False
    try:
        with open(path, "rb") as f:
            f.seek(128)
            return f.read(4) == b"DICM"
    except OSError:
        return False


def find_series(root: Path) -> list[Path]:
    """Every NIfTI file and every folder with DICOM files below ``root`` (sorted)."""
    series: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        folder = Path(dirpath)
        dicom = False
        for name in sorted(filenames):
            if name.startswith("."):
                continue
            if name.endswith(NIFTI_SUFFIXES):
                series.append(folder / name)
            elif not dicom and folder != root and is_dicom_file(folder / name):
                dicom = True
        if dicom:
            series.append(folder)
    return sorted(series)


def series_id(root: Path, path: Path) -> str:
    rel = path.relative_to(root)
    name = rel.as_posix()
    for suffix in NIFTI_SUFFIXES:
        name = name.removesuffix(suffix)
    return _UNSAFE.sub("-", name.replace("/", "_")).strip("-_.") or "series"


def scan_image_only(root: Path, label_names: list[str] | None = None, seed: int = 0) -> SourceScan:
    """Scan an image-only collection: one record per acquisition, no reports, no labels."""
    root = resolve_root(root)
    by_acquisition: dict[Path, list[Path]] = defaultdict(list)
    for path in find_series(root):
        by_acquisition[path.parent].append(path)
    records: list[Record] = []
    rejected: list[Rejected] = []
    seen: dict[str, Path] = {}
    dropped = 0
    for acquisition, paths in sorted(by_acquisition.items()):
        rel = acquisition.relative_to(root)
        if not rel.parts:
            for path in paths:
                rejected.append(
                    (series_id(root, path), str(path), "series directly under the root: no patient folder")
                )
            continue
        patient = _UNSAFE.sub("-", rel.parts[0])
        chosen = random.Random(f"{seed}/{rel.as_posix()}").choice(sorted(paths))
        dropped += len(paths) - 1
        rid = series_id(root, chosen)
        if rid in seen:
            rejected.append((rid, str(chosen), f"duplicate id: also the id of {seen[rid]}"))
            continue
        seen[rid] = chosen
        records.append(Record(id=rid, patient_id=patient, split="train", image_path=chosen, source=SOURCE))
    log.info(
        "Image-only: %d acquisitions -> %d records (%d other reconstructions dropped), %d rejected (root %s)",
        len(by_acquisition),
        len(records),
        dropped,
        len(rejected),
        root,
    )
    return SourceScan(records=records, rejected=rejected)
