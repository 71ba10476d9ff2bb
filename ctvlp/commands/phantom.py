"""``ctvlp phantom``: write a synthetic phantom CT-RATE dataset in the real CT-RATE layout."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from datamodules.phantom.ct_rate_writer import write_phantom_ct_rate


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "phantom",
        help="write a synthetic phantom CT-RATE dataset (volumes, reports, labels, metadata)",
        description=(
            "Write N phantom chest CT scans (plus extra reconstructions and a few head CTs to exclude) "
            "under DIR in the CT-RATE layout (train_fixed/, valid_fixed/, radiology_text_reports/, ...). "
            "Deterministic given the seed; a complete phantom with the same N and seed is reused."
        ),
    )
    parser.add_argument("--out", type=Path, required=True, metavar="DIR", help="dataset root to write")
    parser.add_argument(
        "--n", type=int, default=300, metavar="N", help="number of chest scans (default: 300)"
    )
    parser.add_argument("--seed", type=int, default=0, metavar="S", help="random seed (default: 0)")
    parser.add_argument("--workers", type=int, default=2, metavar="W", help="parallel processes (default: 2)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    s = write_phantom_ct_rate(
        args.out, args.n, seed=args.seed, workers=args.workers, progress=not args.no_progress
    )
    action = "reused" if s.reused else f"wrote in {time.perf_counter() - start:.1f} s"
    print(
        f"phantom CT-RATE at {s.root}: {s.n_scans} scans, {s.n_volumes} volumes "
        f"({s.n_train_volumes} train / {s.n_valid_volumes} valid, {s.n_no_chest} head CTs), "
        f"{s.n_patients} patients, seed {s.seed}; {action}"
    )
    return 0
