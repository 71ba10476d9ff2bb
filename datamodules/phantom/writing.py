"""What every phantom writer shares: clearing its own earlier output, writing NIfTI files
atomically, and writing volumes in parallel worker processes with a progress bar."""

from __future__ import annotations

import multiprocessing as mp
import os
import shutil
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from tqdm import tqdm


def clear_owned(out: Path, owned: Iterable[str]) -> None:
    """Remove the files and folders a writer owns under ``out`` (nothing else), then make ``out``."""
    for name in owned:
        target = out / name
        if target.is_dir():
            shutil.rmtree(target)
        elif target.exists():
            target.unlink()
    out.mkdir(parents=True, exist_ok=True)


def save_nifti(
    array: np.ndarray,
    path: Path,
    affine: np.ndarray,
    slope_inter: tuple[float | None, float | None] = (None, None),
) -> None:
    """Save ``array`` as NIfTI at ``path`` (a ``.nii.gz``; parents made, written under a temporary
    name, then renamed): ``affine`` as qform and sform (code 1), mm units, and the header's
    scl_slope / scl_inter (``None``: unset)."""
    img = nib.Nifti1Image(np.ascontiguousarray(array), affine)
    img.header.set_slope_inter(*slope_inter)
    img.header.set_xyzt_units("mm", "sec")
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name.replace(".nii.gz", ".tmp.nii.gz"))
    nib.save(img, tmp)
    os.replace(tmp, path)


def run_jobs(
    write: Callable[[Any], Any],
    jobs: Sequence[Any],
    workers: int,
    progress: bool,
    desc: str,
    unit: str = "vol",
    chunksize: int = 2,
) -> None:
    """``write(job)`` for every job, in ``workers`` spawned processes (in-process for one)."""
    bar = tqdm(total=len(jobs), desc=desc, unit=unit, disable=not progress)
    workers = min(workers, len(jobs))
    if workers <= 1:
        for job in jobs:
            write(job)
            bar.update()
    else:
        # spawn, not fork: the writers may run inside a process that already holds torch threads.
        with ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn")) as pool:
            for _ in pool.map(write, jobs, chunksize=chunksize):
                bar.update()
    bar.close()
