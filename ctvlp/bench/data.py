"""``make bench-data``: data-loading throughput of the preprocessed cache against COLIPRI-style
on-the-fly preprocessing, measured in the same run on the same phantom volumes.

(a) baseline: per sample, what COLIPRI's released processor does from a NIfTI file: load, RAS+,
    resample to 2 mm (torchio, linear), clamp, rescale to [-1, 1], crop/pad to 160^3.
(b) ours: per sample, a random 160^3 crop of the 2 mm int16 cache (mmap, only the crop is read)
    plus the train-time intensity augmentation (``ImageOnlyVolumeDataset``, level "low").

Volumes are realistic in size (default 512 x 512 x 300 at 0.7 x 0.7 x 1 mm, int16 .nii.gz) and
rendered from the phantom chest scene. Each measurement runs in a fresh subprocess, so its peak RSS
(``ru_maxrss``) is its own. Printed: volumes / s for one worker, the ratio (b) / (a), peak RSS, the
batches / s of a one-worker DataLoader with batch size 1, and the cache-format comparison (one 160^3
crop from the same cached volume stored as uncompressed ``.npy`` read through mmap, the whole
``.npy`` loaded, compressed ``.npz``, and ``.nii.gz``). No pass/fail: the numbers are reported.

The imports of torch, torchio and ``datamodules`` sit inside the measured functions on purpose:
each measurement's subprocess loads only what it uses, so the peak RSS figures compare.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

CROP = 160
TARGET_SPACING = 2.0


def _peak_rss_mb() -> float:
    """This process's peak RSS. VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the parent
    through fork + exec, so a child would report the parent's peak."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return float(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def write_volumes(
    out: Path, n: int, shape: tuple[int, int, int], spacing: tuple[float, float, float]
) -> list[Path]:
    """``n`` chest phantoms of ``shape`` voxels as int16 HU NIfTI files with true headers."""
    from datamodules.phantom.anatomy import sample_habitus
    from datamodules.phantom.geometry import Grid
    from datamodules.phantom.merlin_writer import write_nifti_hu
    from datamodules.phantom.scene import render, sample_chest_case

    paths = []
    for i in range(n):
        path = out / f"bench{i:03d}.nii.gz"
        paths.append(path)
        if path.exists():
            continue
        rng = np.random.default_rng([7, i])
        case = sample_chest_case(rng, sample_habitus(rng))
        grid = Grid(shape, spacing)
        hu = render(case, grid, np.random.default_rng([8, i])).hu
        write_nifti_hu(hu, grid, path, lps=bool(i % 2), offset_storage=False)
    return paths


# ------------------------------------------------------------------------------- measured in children


def _onthefly(paths: list[str], repeats: int) -> dict:
    import torch
    import torchio as tio

    torch.set_num_threads(1)
    transform = tio.Compose(
        [
            tio.ToOrientation("RAS"),
            tio.Resample(TARGET_SPACING, image_interpolation="linear", antialias=False),
            tio.Clamp(-1000, 1000),
            tio.RescaleIntensity(out_min_max=(-1, 1), in_min_max=(-1000, 1000)),
            tio.CropOrPad(CROP, padding_mode="minimum"),
        ]
    )
    times = []
    for _ in range(repeats):
        for path in paths:
            start = time.perf_counter()
            image = transform(tio.ScalarImage(path)).data
            assert image.shape == (1, CROP, CROP, CROP)
            times.append(time.perf_counter() - start)
    return {"seconds": times, "peak_rss_mb": _peak_rss_mb()}


def _entries(cache_root: str):
    from datamodules.cache import CacheIndex

    return CacheIndex.load(Path(cache_root)).entries


def _cached(cache_root: str, samples: int) -> dict:
    import torch

    from datamodules.image_dataset import ImageOnlyVolumeDataset
    from datamodules.transforms import AUGMENTATION_LEVELS

    torch.set_num_threads(1)
    dataset = ImageOnlyVolumeDataset(_entries(cache_root), CROP, True, AUGMENTATION_LEVELS["low"], seed=0)
    dataset[(0, 0)]  # first touch of the files
    times = []
    for k in range(samples):
        start = time.perf_counter()
        sample = dataset[(k % len(dataset), k)]
        assert sample["image"].shape == (1, CROP, CROP, CROP)
        times.append(time.perf_counter() - start)
    return {"seconds": times, "peak_rss_mb": _peak_rss_mb()}


def _loader(cache_root: str, batches: int) -> dict:
    import torch
    from torch.utils.data import DataLoader

    from datamodules.batching import stack_samples
    from datamodules.image_dataset import ImageOnlyVolumeDataset
    from datamodules.samplers import TrainSampler
    from datamodules.transforms import AUGMENTATION_LEVELS

    torch.set_num_threads(1)
    dataset = ImageOnlyVolumeDataset(_entries(cache_root), CROP, True, AUGMENTATION_LEVELS["low"], seed=0)
    sampler = TrainSampler(len(dataset) * (batches + 1), 1, seed=0)  # indices beyond len wrap below

    class Wrapped(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return len(dataset) * (batches + 1)

        def __getitem__(self, key: tuple[int, int]):
            return dataset[(key[0] % len(dataset), key[0])]

    loader = DataLoader(Wrapped(), batch_size=1, sampler=sampler, num_workers=1, collate_fn=stack_samples)
    iterator = iter(loader)
    next(iterator)  # worker start-up is not throughput
    start = time.perf_counter()
    for _ in range(batches):
        next(iterator)
    return {"batches_per_second": batches / (time.perf_counter() - start), "peak_rss_mb": _peak_rss_mb()}


def _formats(cache_root: str, workdir: str, repeats: int) -> dict:
    import nibabel as nib

    from datamodules.cache import read_crop

    entry = _entries(cache_root)[0]
    volume = np.load(entry.file)
    work = Path(workdir)
    np.savez_compressed(work / "volume.npz", ct=volume)
    nib.save(nib.Nifti1Image(volume, np.eye(4)), work / "volume.nii.gz")
    rng = np.random.default_rng(0)

    def crop(a: np.ndarray, s: tuple[int, ...], c: int) -> np.ndarray:
        return np.ascontiguousarray(a[s[0] : s[0] + c, s[1] : s[1] + c, s[2] : s[2] + c])

    readers = {
        "npy (mmap, crop only)": lambda s, c: read_crop(entry, s, (c,) * 3),
        "npy (whole volume)": lambda s, c: crop(np.load(entry.file), s, c),
        "npz (compressed)": lambda s, c: crop(np.load(work / "volume.npz")["ct"], s, c),
        "nii.gz": lambda s, c: crop(np.asarray(nib.load(work / "volume.nii.gz").dataobj), s, c),
    }
    sizes = {
        "npy (mmap, crop only)": entry.file.stat().st_size,
        "npy (whole volume)": entry.file.stat().st_size,
        "npz (compressed)": (work / "volume.npz").stat().st_size,
        "nii.gz": (work / "volume.nii.gz").stat().st_size,
    }
    out: dict[str, dict[str, float]] = {name: {"mb": sizes[name] / 2**20} for name in readers}
    for c in (CROP, 64):
        starts = [
            tuple(int(rng.integers(0, max(0, n - c) + 1)) for n in volume.shape) for _ in range(repeats)
        ]
        for name, read in readers.items():
            times = []
            for s in starts:
                t = time.perf_counter()
                read(s, c)
                times.append(time.perf_counter() - t)
            out[name][f"ms_{c}"] = 1000 * float(np.median(times))
    return {"formats": out, "shape": list(volume.shape)}


def _child(args: argparse.Namespace) -> None:
    if args.child == "onthefly":
        result = _onthefly(args.paths, args.repeats)
    elif args.child == "cached":
        result = _cached(args.cache_root, args.samples)
    elif args.child == "loader":
        result = _loader(args.cache_root, args.samples)
    else:
        result = _formats(args.cache_root, args.workdir, args.repeats)
    print(json.dumps(result))


def _run_child(*argv: str) -> dict:
    out = subprocess.run(
        [sys.executable, "-m", "ctvlp.bench.data", "--child", *argv],
        capture_output=True,
        encoding="utf-8",
        errors="replace",
        check=False,
    )
    if out.returncode != 0:
        raise RuntimeError(f"benchmark child {argv[0]} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------------------------------- the table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--volumes", type=int, default=3, help="phantom volumes (default 3)")
    parser.add_argument(
        "--shape", type=int, nargs=3, default=[512, 512, 300], help="voxels (default 512 512 300)"
    )
    parser.add_argument(
        "--spacing", type=float, nargs=3, default=[0.7, 0.7, 1.0], help="mm (default 0.7 0.7 1)"
    )
    parser.add_argument(
        "--samples", type=int, default=60, help="cached samples / loader batches (default 60)"
    )
    parser.add_argument("--workdir", type=Path, default=None, help="keep the volumes and cache here (reused)")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--paths", nargs="*", default=[], help=argparse.SUPPRESS)
    parser.add_argument("--cache-root", default="", help=argparse.SUPPRESS)
    parser.add_argument("--repeats", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        args.workdir = str(args.workdir)
        _child(args)
        return 0

    from datamodules.cache import cache_path
    from datamodules.preprocess import build_cache
    from datamodules.records import Record

    temporary = args.workdir is None
    workdir = Path(tempfile.mkdtemp(prefix="ctvlp-bench-data-")) if temporary else args.workdir
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        start = time.perf_counter()
        paths = write_volumes(workdir / "nifti", args.volumes, tuple(args.shape), tuple(args.spacing))
        print(
            f"{len(paths)} phantom volumes {args.shape[0]}x{args.shape[1]}x{args.shape[2]} ({time.perf_counter() - start:.0f} s)"
        )
        records = [Record(p.name.split(".")[0], p.name, "train", p, source="bench") for p in paths]
        cache_root = cache_path(workdir / "cache", "bench", TARGET_SPACING, "paper")
        start = time.perf_counter()
        build_cache(records, cache_root, TARGET_SPACING, "paper", label_names=[], workers=1, progress=False)
        build_s = (time.perf_counter() - start) / len(paths)

        a = _run_child("onthefly", "--paths", *map(str, paths), "--repeats", "1")
        b = _run_child("cached", "--cache-root", str(cache_root), "--samples", str(args.samples))
        loader = _run_child("loader", "--cache-root", str(cache_root), "--samples", str(args.samples))
        formats = _run_child(
            "formats", "--cache-root", str(cache_root), "--workdir", str(workdir), "--repeats", "10"
        )
    finally:
        if temporary:
            shutil.rmtree(workdir, ignore_errors=True)

    a_rate = 1.0 / float(np.median(a["seconds"]))
    b_rate = 1.0 / float(np.median(b["seconds"]))
    print(
        f"\nOne worker, 160^3 crops at 2 mm from {args.shape[0]}x{args.shape[1]}x{args.shape[2]} volumes:\n"
    )
    print("| pipeline | volumes / s / worker | median s / sample | peak RSS (MB) |")
    print("|---|---|---|---|")
    print(
        f"| (a) on-the-fly torchio from NIfTI (COLIPRI processor) | {a_rate:.3f} | "
        f"{np.median(a['seconds']):.3f} | {a['peak_rss_mb']:.0f} |"
    )
    print(
        f"| (b) cache: mmap crop + augmentation | {b_rate:.1f} | {np.median(b['seconds']):.4f} | "
        f"{b['peak_rss_mb']:.0f} |"
    )
    print(f"\nratio (b) / (a): {b_rate / a_rate:.0f}x (target >= 30x)")
    print(
        f"DataLoader, 1 worker, batch 1: {loader['batches_per_second']:.1f} batches / s (target >= 4); "
        f"peak RSS {loader['peak_rss_mb']:.0f} MB"
    )
    print(f"one-time cache build: {build_s:.1f} s / volume (paper mode: B-spline + antialiasing, 1 process)")
    shape = "x".join(map(str, formats["shape"]))
    print(f"\nCache format, one random crop of the same {shape} int16 volume (median of 10):\n")
    print("| format | ms / 160^3 crop | ms / 64^3 crop | MB on disk |")
    print("|---|---|---|---|")
    for name, row in formats["formats"].items():
        print(f"| {name} | {row['ms_160']:.1f} | {row['ms_64']:.1f} | {row['mb']:.1f} |")
    print("(zarr / blosc2 are not installed here and were not measured.)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
