"""``ctvlp phantom``: write a synthetic phantom dataset in a real dataset's on-disk layout."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from datamodules.phantom.ct_rate_writer import write_phantom_ct_rate
from datamodules.phantom.image_only_writer import write_phantom_image_only
from datamodules.phantom.inspect_writer import write_phantom_inspect
from datamodules.phantom.merlin_writer import write_phantom_merlin
from datamodules.phantom.msd_writer import write_phantom_msd
from datamodules.phantom.rad_chestct_writer import write_phantom_rad_chestct

PHANTOM_SOURCES = ("ct_rate", "merlin", "rad_chestct", "inspect", "image_only", "msd_liver", "msd_lung")


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "phantom",
        help="write a synthetic phantom dataset (CT-RATE, Merlin, RAD-ChestCT, INSPECT or image-only layout)",
        description=(
            "Write N phantom scans under DIR in the layout of --source: ct_rate (chest CT + reports, "
            "labels, metadata; extra reconstructions and head CTs), merlin (abdomen CT, "
            "reports_final.xlsx, 30-disease CSV), rad_chestct (.npz chest CT + abnormality x location "
            "labels), inspect (CT pulmonary angiograms with emboli, impressions, PE and outcome labels "
            "True/False/Censored, splits, patient mapping; two bad scans to quarantine), "
            "image_only (NLST-style patient/time-point folders, DICOM series and NIfTI) or "
            "msd_liver / msd_lung (segmentation: nnU-Net raw / MSD layout, liver or lung lesions). "
            "Deterministic given the seed; a complete phantom with the same parameters is reused."
        ),
    )
    parser.add_argument(
        "--source", choices=PHANTOM_SOURCES, default="ct_rate", help="layout (default: ct_rate)"
    )
    parser.add_argument("--out", type=Path, required=True, metavar="DIR", help="dataset root to write")
    parser.add_argument(
        "--n",
        type=int,
        default=300,
        metavar="N",
        help="number of scans (image_only: patients) (default: 300)",
    )
    parser.add_argument("--seed", type=int, default=0, metavar="S", help="random seed (default: 0)")
    parser.add_argument("--workers", type=int, default=2, metavar="W", help="parallel processes (default: 2)")
    parser.add_argument(
        "--scale",
        type=float,
        default=1.0,
        help="rad_chestct and inspect: chest size factor (rad_chestct: 1 = life size at 0.8 mm, ~430^3 "
        "voxels; inspect: 1 = life size at ~4 mm, ~90 x 90 x 75 voxels; default 1)",
    )
    parser.add_argument(
        "--bad-cases",
        type=int,
        default=None,
        metavar="K",
        help="inspect only: training scans written broken, a corrupted affine then two channels "
        "(0-2; default 2 when N >= 10, else 0)",
    )
    parser.add_argument(
        "--dicom",
        type=int,
        default=1,
        metavar="K",
        help="image_only only: acquisitions written as DICOM (default 1)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    progress = not args.no_progress
    if args.source == "ct_rate":
        s = write_phantom_ct_rate(args.out, args.n, seed=args.seed, workers=args.workers, progress=progress)
        what = (
            f"phantom CT-RATE at {s.root}: {s.n_scans} scans, {s.n_volumes} volumes "
            f"({s.n_train_volumes} train / {s.n_valid_volumes} valid, {s.n_no_chest} head CTs), "
            f"{s.n_patients} patients"
        )
    elif args.source == "merlin":
        m = write_phantom_merlin(args.out, args.n, seed=args.seed, workers=args.workers, progress=progress)
        what = f"phantom Merlin at {m.root}: {m.n_studies} studies ({m.n_train} train / {m.n_val} val / {m.n_test} test)"
        s = m
    elif args.source == "rad_chestct":
        r = write_phantom_rad_chestct(
            args.out, args.n, seed=args.seed, scale=args.scale, workers=args.workers, progress=progress
        )
        what = (
            f"phantom RAD-ChestCT at {r.root}: {r.n_volumes} volumes ({r.n_train} train / {r.n_val} valid / "
            f"{r.n_test} test), scale {r.scale}"
        )
        s = r
    elif args.source == "inspect":
        p = write_phantom_inspect(
            args.out,
            args.n,
            seed=args.seed,
            scale=args.scale,
            bad_cases=args.bad_cases,
            workers=args.workers,
            progress=progress,
        )
        bad = ", ".join(f"{kind} {sid}" for kind, sid in p.bad_cases.items()) or "none"
        what = (
            f"phantom INSPECT at {p.root}: {p.n_studies} studies of {p.n_patients} patients ({p.n_train} "
            f"train / {p.n_val} valid / {p.n_test} test), {p.n_pe} with PE, bad scans: {bad}, scale {p.scale}"
        )
        s = p
    elif args.source in ("msd_liver", "msd_lung"):
        d = write_phantom_msd(
            args.out, args.n, task=args.source[4:], seed=args.seed, workers=args.workers, progress=progress
        )
        what = f"phantom MSD {d.task} at {d.root}: {d.n_cases} cases, labels {d.labels}"
        s = d
    else:
        i = write_phantom_image_only(
            args.out, args.n, seed=args.seed, n_dicom=args.dicom, workers=args.workers, progress=progress
        )
        what = (
            f"phantom image-only collection at {i.root}: {i.n_patients} patients, {i.n_acquisitions} "
            f"acquisitions, {i.n_series} series ({i.n_dicom_series} DICOM)"
        )
        s = i
    action = "reused" if s.reused else f"wrote in {time.perf_counter() - start:.1f} s"
    print(f"{what}, seed {s.seed}; {action}")
    return 0
