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

The one-time cache build is timed per volume too (one process): paper mode as the code ran before its
RAS+ reorientation moved out of torchio (``reorient_first=False``, same output), paper mode now, and
the torch backend (``paper_torch``, ``ctvlp preprocess --backend torch``; on CUDA when available),
with the torch cache's HU error against the paper cache (max and mean absolute HU over all voxels).
``--build-only`` stops after that table.

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

from ctvlp.console import tolerate_ascii_console

CROP = 160
TARGET_SPACING = 2.0


def _peak_rss_mb() -> float:
    """This process's peak RSS. VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the parent
    through fork + exec, so a child would report the parent's peak."""
    try:
        for line in Path("/proc/self/status").read_text(encoding="utf-8").splitlines():
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


# ------------------------------------------------------------------------------------ the cache build


def _build_times(records: list, cache_dir: Path) -> dict:
    """Seconds per volume of each way to build the cache (one process; paper mode built into the
    cache the later measurements read), the reading + HU share, and the torch cache's HU error."""
    from datamodules.cache import cache_path
    from datamodules.preprocess import build_cache, load_hu, preprocess_volume_with_affine

    n = len(records)
    out: dict = {}
    before = []
    start, cpu = time.perf_counter(), time.process_time()
    for record in records:
        volume, _ = preprocess_volume_with_affine(record, TARGET_SPACING, "paper", reorient_first=False)
        np.save(cache_dir.parent / "before.npy", volume)  # what the build writes, for a like timing
        before.append(volume)
    out["paper_before"] = (time.perf_counter() - start) / n
    out["cpu_paper_before"] = (time.process_time() - cpu) / n
    (cache_dir.parent / "before.npy").unlink(missing_ok=True)
    roots = {}
    for mode in ("paper", "paper_torch"):
        roots[mode] = cache_path(cache_dir, "bench", TARGET_SPACING, mode)
        start, cpu = time.perf_counter(), time.process_time()
        build_cache(records, roots[mode], TARGET_SPACING, mode, label_names=[], workers=1, progress=False)
        out[mode] = (time.perf_counter() - start) / n
        out[f"cpu_{mode}"] = (time.process_time() - cpu) / n
    start, cpu = time.perf_counter(), time.process_time()
    for record in records:
        load_hu(record)
    out["read"] = (time.perf_counter() - start) / n
    out["cpu_read"] = (time.process_time() - cpu) / n
    errors = [
        np.abs(np.load(roots["paper_torch"] / "volumes" / f"{r.id}.npy").astype(np.int32) - np.load(p))
        for r in records
        for p in [roots["paper"] / "volumes" / f"{r.id}.npy"]
    ]
    out["same_as_before"] = all(
        np.array_equal(np.load(roots["paper"] / "volumes" / f"{r.id}.npy"), b)
        for r, b in zip(records, before, strict=True)
    )
    out["max_hu"] = max(int(e.max()) for e in errors)
    out["mean_hu"] = float(np.mean([e.mean() for e in errors]))
    out["voxels_off"] = sum(int((e > 0).sum()) for e in errors)
    out["voxels"] = sum(e.size for e in errors)
    return out


def _ratio_without_reading(paper: float, torch_build: float, read: float) -> str:
    """paper / torch after taking the shared read off both, or why not: when the read is most of the
    torch build, the remainder is within the read's own variation (it is timed separately and
    depends on the page cache) and a ratio of it would be noise."""
    rest = torch_build - read
    if rest <= 0.25 * torch_build:
        return "without reading not measurable (the read is most of the torch build)"
    return f"{(paper - read) / rest:.1f}x without reading"


def _print_build(build: dict, shape: list[int], device: str) -> None:
    size = "x".join(map(str, shape))
    read = build["read"]
    print(f"\nOne-time cache build, {size} int16 .nii.gz -> {TARGET_SPACING:g} mm, 1 process (s / volume):\n")
    print("| build | s / volume | without reading + HU | paper / this | CPU s / volume (all threads) |")
    print("|---|---|---|---|---|")
    rows = [
        ("paper, previous code path (torchio reorients)", "paper_before"),
        ("paper (reorientation before torchio, same output)", "paper"),
        (f"torch backend, paper_torch ({device})", "paper_torch"),
    ]
    for name, key in rows:
        seconds = build[key]
        print(
            f"| {name} | {seconds:.2f} | {max(seconds - read, 0.0):.2f} | {build['paper'] / seconds:.1f}x | "
            f"{build['cpu_' + key]:.2f} |"
        )
    same = "bit-identical" if build["same_as_before"] else "DIFFERENT (a bug)"
    print(f"\npaper now vs the previous code path: {same}")
    print(
        f"reading + HU (gzip decode, nibabel; in every row): {read:.2f} s / volume "
        f"({build['cpu_read']:.2f} CPU s)"
    )
    print(
        f"torch vs paper: {build['paper'] / build['paper_torch']:.1f}x end to end, "
        f"{_ratio_without_reading(build['paper'], build['paper_torch'], read)} (target >= 10x); "
        f"in CPU time {build['cpu_paper'] / build['cpu_paper_torch']:.1f}x and "
        f"{_ratio_without_reading(build['cpu_paper'], build['cpu_paper_torch'], build['cpu_read'])}"
    )
    print(
        f"torch vs paper HU error: max {build['max_hu']} HU, mean {build['mean_hu']:.2g} HU "
        f"({build['voxels_off']} of {build['voxels']} voxels differ)"
    )


# ------------------------------------------------------------------------------------------- the table


def main(argv: list[str] | None = None) -> int:
    tolerate_ascii_console()
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
    parser.add_argument(
        "--build-only", action="store_true", help="only the cache build table (paper before/after, torch)"
    )
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
    from datamodules.records import Record
    from datamodules.resample_torch import default_device

    temporary = args.workdir is None
    workdir = Path(tempfile.mkdtemp(prefix="ctvlp-bench-data-")) if temporary else args.workdir
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        start = time.perf_counter()
        paths = write_volumes(workdir / "nifti", args.volumes, tuple(args.shape), tuple(args.spacing))
        size = "x".join(map(str, args.shape))
        print(f"{len(paths)} phantom volumes {size} ({time.perf_counter() - start:.0f} s)")
        records = [Record(p.name.split(".")[0], p.name, "train", p, source="bench") for p in paths]
        shutil.rmtree(workdir / "cache", ignore_errors=True)  # a reused cache would time nothing
        build = _build_times(records, workdir / "cache")
        cache_root = cache_path(workdir / "cache", "bench", TARGET_SPACING, "paper")
        _print_build(build, args.shape, str(default_device()))
        if args.build_only:
            return 0

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
    print(
        f"one-time cache build: {build['paper']:.1f} s / volume (paper mode: B-spline + antialiasing, "
        f"1 process); torch backend {build['paper_torch']:.2f} s / volume"
    )
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
