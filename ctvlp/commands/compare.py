"""``ctvlp compare SPEC``: train (or reuse) every encoder of a compare spec, score each on the same
splits with the same tasks, add a random baseline per architecture, and write one table, its JSON,
per-label tables, TensorBoard HParams and plots (``docs/compare.md``)."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from ctvlp.compare.pipeline import Comparison
from ctvlp.compare.plots import write_plots
from ctvlp.compare.spec import load_spec
from ctvlp.compare.tables import write_tables
from ctvlp.config.loader import load_experiment
from ctvlp.log_file import log_to_file

log = logging.getLogger(__name__)


def run(args: argparse.Namespace) -> int:
    spec = load_spec(args.spec, profile=args.profile, extra_overrides=args.overrides, launcher=args.launcher)
    runs_dir = (
        Path(args.runs_dir)
        if args.runs_dir
        else Path(load_experiment(spec.encoders[0].experiment or "colipri_c", spec.profile).runs_dir)
    )
    out = runs_dir / "compare" / spec.name
    with log_to_file(out / "compare.log", info_loggers=("ctvlp.compare", __name__)):
        comparison = Comparison(spec, out, device=args.device)
        names = ", ".join(row.name for row in comparison.rows)
        log.info("compare %s (%s): %d encoders (%s); tasks %s; in %s", spec.name, spec.profile or "no profile",
                 len(comparison.rows), names, ", ".join(spec.tasks), out)  # fmt: skip
        log.info("%s is rewritten after every stage", out / "results.md")
        rows = comparison.run(after_each=lambda: write_tables(comparison.rows, spec, out, hparams=False))
        paths = write_tables(rows, spec, out)
        plots = write_plots(rows, spec, out)
    print("\n" + paths["results.md"].read_text(encoding="utf-8"))
    print(f"Table: {paths['results.md']}\nJSON: {paths['results.json']}\nPer label: {paths['per_label.md']}")
    print(
        f"Plots: {', '.join(str(p) for p in plots)}\nTensorBoard HParams: tensorboard --logdir {out / 'tensorboard'}"
    )
    waiting = [
        f"{row.name}/{task}" for row in rows for task, why in row.missing.items() if "SLURM job" in why
    ]
    if waiting:
        print(f"Waiting for SLURM: {', '.join(waiting)}; run the same command again once the jobs end")
    failed = [
        f"{row.name}/{task}"
        for row in rows
        for task, why in row.missing.items()
        if why.startswith(("failed", "training failed"))
    ]
    if failed:
        print(f"Failed jobs: {', '.join(failed)} (their job.log files say why); a re-run retries only them")
    return 1 if failed else 0


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "compare",
        help="train and score several encoders under one protocol (experiments/compare/<NAME>.yaml)",
        description=__doc__,
    )
    parser.add_argument("spec", help="compare spec name (experiments/compare/<NAME>.yaml) or a YAML path")
    parser.add_argument("--profile", default=None, help="profile overlay of every job (overrides the spec's)")
    parser.add_argument("--runs-dir", default=None, help="where compare/<spec>/ goes (default: runs_dir)")
    parser.add_argument(
        "--launcher",
        choices=("local", "slurm"),
        default=None,
        help="override the spec's launcher (default local)",
    )
    parser.add_argument("--device", default="auto", help="evaluation device: auto, cpu, cuda, cuda:1, ...")
    parser.add_argument(
        "overrides", nargs="*", help="dot-list overrides shared by every job (the data, the splits)"
    )
    parser.set_defaults(handler=run)
