"""``ctvlp sweep``: run a star / grid / list sweep from YAML and tabulate its metrics."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ctvlp.config.loader import load_experiment
from ctvlp.sweep.launchers import launch_local, launch_slurm
from ctvlp.sweep.report import collect, markdown
from ctvlp.sweep.spec import expand, load_spec


def run(args: argparse.Namespace) -> int:
    spec = load_spec(args.spec, profile=args.profile, extra_overrides=args.overrides)
    runs = expand(spec)
    base_cfg = load_experiment(spec.base, spec.profile, spec.overrides)
    sweep_dir = Path(args.runs_dir or base_cfg.runs_dir) / "sweeps" / spec.name
    launcher = args.launcher or spec.launcher
    print(f"sweep {spec.name}: {len(runs)} runs ({spec.mode}) of {spec.base} in {sweep_dir}")
    if launcher == "slurm":
        launch_slurm(spec, runs, sweep_dir, base_cfg.trainer.devices, int(base_cfg.trainer.num_nodes))
        print("Jobs submitted; re-run this command once they finish to collect the table.")
        return 0
    status = launch_local(spec, runs, sweep_dir)
    metrics = list(spec.metrics)
    table = collect(sweep_dir, runs, metrics)
    summary = markdown(runs, table, metrics)
    (sweep_dir / "results.md").write_text(summary + "\n", encoding="utf-8")
    (sweep_dir / "results.json").write_text(json.dumps(table, indent=2) + "\n", encoding="utf-8")
    print("\n" + summary)
    print(
        f"\nTable: {sweep_dir / 'results.md'}; compare runs in TensorBoard's HParams tab: tensorboard --logdir {sweep_dir}"
    )
    return 0 if all(not s.startswith("failed") for s in status.values()) else 1


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("sweep", help="run a sweep spec (experiments/sweeps/<NAME>.yaml)")
    parser.add_argument("spec", help="sweep name (experiments/sweeps/<NAME>.yaml) or a YAML path")
    parser.add_argument(
        "--profile", default=None, help="profile overlay for every run (overrides the spec's)"
    )
    parser.add_argument(
        "--launcher", choices=("local", "slurm"), default=None, help="override the spec's launcher"
    )
    parser.add_argument(
        "--runs-dir", default=None, help="where runs/sweeps/<sweep>/ goes (default: runs_dir)"
    )
    parser.add_argument("overrides", nargs="*", help="dot-list overrides shared by every run")
    parser.set_defaults(handler=run)
