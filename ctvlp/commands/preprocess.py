"""``ctvlp preprocess``: build the preprocessed-volume cache of a dataset, once per spacing."""

from __future__ import annotations

import argparse
import os
import sys
from collections import Counter
from pathlib import Path

from datamodules.cache import INTERPOLATIONS, Spacing, as_spacing, cache_path
from datamodules.cache_shards import Shard
from datamodules.label_tables import apply_label_table
from datamodules.mixing import source_cache_name
from datamodules.preprocess import (
    BACKENDS,
    build_cache,
    build_cache_shard,
    cache_interpolation,
    finalize_cache,
    read_quarantine,
)
from datamodules.sources.msd import SOURCE as MSD_SOURCE
from datamodules.sources.msd import finish_msd_cache
from datamodules.sources.registry import SOURCES


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "preprocess",
        help="build the preprocessed volume cache (RAS+, HU int16, isotropic or (x, y, z) spacing)",
        description=(
            "Convert a dataset once into <cache-dir>/<source>/<spacing>mm-<interpolation>/ "
            "(volumes/<id>.npy, index.json, quarantine.csv). Resumable: rerun to finish an interrupted build."
        ),
    )
    parser.add_argument("--source", choices=sorted(SOURCES), default="ct_rate")
    parser.add_argument(
        "--root",
        type=Path,
        required=True,
        help="data root of the source (CT-RATE: the folder with train_fixed/ ...; see docs/data.md)",
    )
    parser.add_argument("--cache-dir", type=Path, default=Path("cache"), help="default: ./cache")
    parser.add_argument(
        "--spacing",
        type=_spacing,
        action="append",
        help="target spacing in mm: one number (isotropic, e.g. 2) or x,y,z in the cache's RAS order "
        "(e.g. 1.5,1.5,3 -> <source>/1.5x1.5x3mm-<interpolation>); repeat for several caches (default: 2)",
    )
    parser.add_argument("--interpolation", choices=INTERPOLATIONS, default="paper")
    parser.add_argument(
        "--backend",
        choices=BACKENDS,
        default="torchio",
        help="resampling backend: torchio (SimpleITK) or torch (paper mode's grid and filters as matmuls, "
        "on CUDA when available: within 1 HU of paper mode, its resampling about 10x faster; paper mode "
        "only; its cache is <spacing>mm-paper_torch, i.e. data.interpolation=paper_torch; see docs/data.md)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=min(8, os.cpu_count() or 1),
        help="parallel processes (each needs ~2 GB for a 512x512x300 CT); default: min(8, cores)",
    )
    parser.add_argument(
        "--labels",
        type=Path,
        help="a label table replacing the source's own labels (as data.labels: e.g. ctvlp annotate's "
        "llm_labels.csv; -1 and empty are unknown)",
    )
    parser.add_argument(
        "--all-reconstructions",
        action="store_true",
        help="keep every reconstruction of an acquisition (CT-RATE; as data.reconstructions=all, the "
        "Uniferum recipe) in <cache-dir>/<source>_all_reconstructions/ instead of one per acquisition",
    )
    sharding = parser.add_mutually_exclusive_group()
    sharding.add_argument(
        "--shard",
        type=_shard,
        metavar="K/N",
        help="convert only shard K of N (1-based; records sorted by id, every N-th) into the same cache; "
        "the last shard to finish writes index.json (a SLURM array: see docs/data.md)",
    )
    sharding.add_argument(
        "--finalize",
        action="store_true",
        help="assemble index.json from the results of a sharded build (names the shards still missing)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(handler=run)


def _spacing(text: str) -> Spacing:
    """``--spacing 2`` or ``--spacing 1.5,1.5,3`` (x, y, z mm)."""
    try:
        return as_spacing(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _shard(text: str) -> Shard:
    """``--shard 3/8``."""
    try:
        return Shard.parse(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def run(args: argparse.Namespace) -> int:
    try:
        interpolation = cache_interpolation(args.interpolation, args.backend)
    except ValueError as error:
        print(f"ctvlp preprocess: error: {error}", file=sys.stderr)
        return 2
    source = SOURCES[args.source]
    label_names = list(source.label_names)
    try:
        scan = source.scan_records(Path(args.root), label_names, args.all_reconstructions)
    except ValueError as error:
        print(f"ctvlp preprocess: error: --all-reconstructions: {error}", file=sys.stderr)
        return 2
    if args.labels is not None:
        scan.records = apply_label_table(scan.records, args.labels, label_names)
    print(f"{args.source}: {len(scan.records)} volumes, {len(scan.rejected)} rejected by the source")
    shard: Shard | None = args.shard
    for spacing in args.spacing or [2.0]:
        root = cache_path(
            Path(args.cache_dir),
            source_cache_name(args.source, args.all_reconstructions),
            spacing,
            interpolation,
        )
        common = {
            "spacing": spacing,
            "interpolation": interpolation,
            "label_names": label_names,
            "rejected": scan.rejected,
            "source_root": Path(args.root),
            "label_table": args.labels,
        }
        if args.finalize:
            index = finalize_cache(scan.records, root, **common)
        elif shard is None:
            index = build_cache(
                scan.records, root, workers=args.workers, progress=not args.no_progress, **common
            )
        else:
            print(f"shard {shard.label}: {len(shard.owns(scan.records))} of {len(scan.records)} volumes")
            outcome = build_cache_shard(
                scan.records, root, shard=shard, workers=args.workers, progress=not args.no_progress, **common
            )
            print(
                f"shard {shard.label} of {root}: {outcome.owned} volumes ({outcome.reused} reused, "
                f"{outcome.built} built), {outcome.quarantined} quarantined"
            )
            if outcome.index is None:
                waiting = ", ".join(f"{k}/{shard.count}" for k in outcome.waiting_for)
                print(
                    f"  waiting for shard(s) {waiting}: the last to finish writes index.json "
                    "(or run this command with --finalize instead of --shard)"
                )
                continue
            index = outcome.index
        if args.source == MSD_SOURCE:  # segmentation: label maps and normalisation statistics
            index = finish_msd_cache(root, Path(args.root)).index
        counts = Counter(e.split for e in index.entries)
        splits = ", ".join(f"{counts[s]} {s}" for s in sorted(counts, key=lambda s: (s != "train", s)))
        quarantined = len(read_quarantine(root))
        print(f"cache {root}: {len(index.entries)} volumes ({splits or 'none'}), {quarantined} quarantined")
        if quarantined:
            print(f"  reasons: {index.quarantine_path}")
    return 0
